"""pina-grid: the Table-1 grid (datasets x epsilon x methods), results table and plots.

  pina-grid --preset=digits --output_dir=runs/grid_digits

Writes `<output_dir>/<dataset>/<method>/eps_<e>/` (one resumable pina-simulate run
each; finished runs are skipped when the grid is started again), then
`results.md`, `results.csv` and `plots/*.png` in `<output_dir>`.
Presets: `digits` (the embedded default; prepares the data itself), `tiny` (a smoke
test in seconds), `paper` (rotated CIFAR-10, rotated Fashion-MNIST, FEMNIST with
10,000 clients; needs the datasets, i.e. internet access, and a large machine).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time

from pipelines import cli  # first: quiet TensorFlow start-up  # isort: skip

from absl import flags  # pylint: disable=g-bad-import-order

from pina_tff import config as config_lib
from pina_tff.errors import PinaError
from pina_tff.runtime import signals
cli.import_keras_quietly()
from pina_tff.models import backbone as _backbone  # noqa: E402  pylint: disable=unused-import,g-import-not-at-top
from pipelines import presets

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "digits", ["digits", "tiny", "paper"], "Grid preset.")
flags.DEFINE_string("output_dir", None, "Grid output directory.")
flags.DEFINE_string("data_dir", None, "Where prepared datasets live (default "
                    "<output_dir>/data); a dataset missing there is prepared first.")
flags.DEFINE_list("methods", None, "Subset of methods (default: all seven).")
flags.DEFINE_list("epsilons", None, "Subset of epsilons, e.g. 2,8,inf.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_enum("progress", "log", ["auto", "bar", "log", "none"], "Per-run progress.")

ALL_METHODS = list(config_lib.METHODS)


def _digits_config():
  return copy.deepcopy(presets.DIGITS_DEFAULTS)


PRESETS = {
    "digits": {"datasets": {"digits": {"num_clients": 100, "num_clusters": 4}},
               "epsilons": [2.0, 8.0, math.inf], "config": _digits_config()},
    "tiny": {"datasets": {"digits": {"num_clients": 24, "num_clusters": 4}},
             "epsilons": [8.0, math.inf],
             "config": dict(_digits_config(), population=24,
                            stage0={"enabled": True, "rounds": 1, "cohort": 8},
                            stage1={"num_sketch_clients": 12, "local_epochs": 1,
                                    "top_k": 8, "kmeans_restarts": 2},
                            stage2={"rounds": 2, "cohort": 8, "warm_rounds": 1,
                                    "aggregator": "ddp"})},
    "paper": {"datasets": {"cifar10": {"num_clients": 10000, "num_clusters": 2},
                           "fashion_mnist": {"num_clients": 10000, "num_clusters": 4},
                           "femnist": {"num_clients": 10000, "num_clusters": 2}},
              "epsilons": [2.0, 8.0, math.inf],
              "config": {"population": 10000, "stage0": {"rounds": 50, "cohort": 1000},
                         "stage1": {"num_sketch_clients": 2000, "top_k": 32},
                         "stage2": {"rounds": 200, "cohort": 1000}}},
}


def eps_dirname(eps: float) -> str:
  return "eps_inf" if math.isinf(eps) else f"eps_{eps:g}"


def ensure_dataset(name: str, spec: dict, data_dir: str, seed: int, log) -> str:
  """Prepared clients of `name` under data_dir (runs pina-prepare's pipeline if absent)."""
  path = os.path.join(data_dir, name)
  if os.path.exists(os.path.join(path, "manifest.json")):
    return path
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  log(f"preparing {name} ({spec['num_clients']} clients) in {path}")
  os.makedirs(data_dir, exist_ok=True)
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      dataset=name, num_clients=spec["num_clients"], num_clusters=spec["num_clusters"],
      output_dir=path, seed=seed))
  return path


class GridInterrupted(Exception):
  """A run of the grid stopped on a signal (after its checkpoint)."""


def run_grid(preset: str, output_dir: str, data_dir=None, methods=None, epsilons=None,
             seed: int = 0, progress: str = "log", log=None) -> list:
  """Runs every (dataset, epsilon, method) cell, then writes the table and plots."""
  from computations import context  # pylint: disable=g-import-not-at-top
  from computations import program  # pylint: disable=g-import-not-at-top
  from pina_tff.reporting import plots  # pylint: disable=g-import-not-at-top
  from pina_tff.reporting import results  # pylint: disable=g-import-not-at-top
  log = log or (lambda m: print(m, file=sys.stderr, flush=True))
  p = PRESETS[preset]
  methods = methods or ALL_METHODS
  for m in methods:
    if m not in ALL_METHODS:
      raise config_lib.ConfigError(f"unknown method {m!r}; valid: {', '.join(ALL_METHODS)}")
  epsilons = epsilons if epsilons is not None else p["epsilons"]
  data_dir = data_dir or os.path.join(output_dir, "data")
  start = time.monotonic()
  with context.tff_context(device="cpu"):
    for dataset, dspec in p["datasets"].items():
      clients_dir = ensure_dataset(dataset, dspec, data_dir, seed, log)
      for eps in epsilons:
        for method in methods:
          run_dir = os.path.join(output_dir, dataset, method, eps_dirname(eps))
          if os.path.exists(os.path.join(run_dir, "summary.json")):
            log(f"skip {run_dir} (done)")
            continue
          cfg_dict = copy.deepcopy(p["config"])
          cfg_dict.update(method=method, num_clusters=dspec["num_clusters"], seed=seed)
          cfg_dict.setdefault("privacy", {})["epsilon"] = eps
          cfg = config_lib.validate(config_lib.from_dict(cfg_dict))
          log(f"run {dataset} {method} eps={eps}")
          done = program.run_simulation(cfg, clients_dir, run_dir,
                                        program.ProgramOptions(progress=progress), log=log)
          if done.get("interrupted"):  # SIGINT / SIGTERM: checkpointed, stop the grid
            raise GridInterrupted(done.get("signal") or 1)
  records = results.collect_runs(output_dir)
  results.write_results_table(records, os.path.join(output_dir, "results.md"),
                              os.path.join(output_dir, "results.csv"))
  pngs = plots.make_all_plots(records, os.path.join(output_dir, "plots"))
  log(f"grid done in {time.monotonic() - start:.0f} s: {len(records)} runs")
  return pngs


def main(argv):
  del argv  # cli.run rejects positional arguments
  try:
    if not FLAGS.output_dir:
      raise config_lib.ConfigError("--output_dir is required")
    eps = [presets.parse_epsilon(e) for e in FLAGS.epsilons] if FLAGS.epsilons else None
    with signals.graceful_stop():
      pngs = run_grid(FLAGS.preset, FLAGS.output_dir, FLAGS.data_dir, FLAGS.methods, eps,
                      FLAGS.seed, FLAGS.progress)
  except PinaError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except GridInterrupted as e:
    signum = e.args[0]
    print(f"stopped by {signals.name(signum)} (checkpoint saved); run the same command "
          "to resume", file=sys.stderr)
    return 128 + signum
  with open(os.path.join(FLAGS.output_dir, "results.md")) as f:
    print(f.read())
  print(f"results: {os.path.join(FLAGS.output_dir, 'results.md')} and results.csv")
  print("plots:\n  " + "\n  ".join(pngs))
  return 0


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
