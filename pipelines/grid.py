"""pina-grid: the Table-1 grid (datasets x epsilon x methods x seeds), table and plots.

  pina-grid --preset=digits --output_dir=runs/grid_digits
  pina-grid --preset=fmnist --output_dir=runs/grid_fmnist --data_dir=data

Runs every cell as one resumable pina-simulate run in
`<output_dir>/<dataset>/<method>/eps_<e>/seed_<s>/` (finished runs are skipped when the
grid is started again; a run of the older layout `<dataset>/<method>/eps_<e>/` with the
same seed counts as finished), then writes `results.md`, `results.csv`, `plots/*.png`
and `grid.json` (start/end time, command line, git commit, per-run wall clock, seeds and
the best baselines picked) in `<output_dir>`.

Seeds. Pass 1 runs every cell with each seed of --seeds (default: --seed). Pass 2 (a
preset's `extra_seeds`, unless --noextra_seeds) runs the extra seeds for PINA, PINA+RI
and the BEST BASELINE at the extra-seed epsilons. Best-baseline rule: among FedAvg,
FedProx, FedNova, IFCA and IFCA+LDP, the method whose finished run with the base seed
(the first of --seeds) has the highest final test accuracy at that dataset and ε; a tie
goes to the first in that order (`pina_tff.reporting.results.best_baseline`).

Population. Each dataset's population (cached embeddings reduced to tail features) is
loaded ONCE for the whole grid and shared by every run on it (loading 10,000 Fashion-MNIST
clients takes ~90 s). `load_population`'s seed only seeds the backbone pre-training when
no backbone is cached in the dataset directory yet; the cache is then built once, with
the grid's base seed, and reused by every run whatever its seed (as separate runs
would reuse it), so sharing does not change any run's result.

Presets: `digits` (the embedded default; prepares the data itself), `tiny` (a smoke
test in seconds), `fmnist` (rotated Fashion-MNIST, 10,000 clients, C = 4, extra seeds
1 and 2 at ε = 2 and 8), `fmnist_demo` (2,000 Fashion-MNIST clients prepared as
`fashion_mnist_2k`), `paper` (rotated CIFAR-10, rotated Fashion-MNIST, FEMNIST with
10,000 clients; needs the datasets and a large machine). The Fashion-MNIST presets
prepare from Debian's IDX files (`scripts/ensure_fmnist.sh`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time

from absl import flags

from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff.reporting import results as results_lib
from pina_tff.runtime import atomic
from pina_tff.runtime import signals
from pipelines import cli
from pipelines import presets
from pipelines import startup

FLAGS = flags.FLAGS

ALL_METHODS = list(config_lib.METHODS)
PINA_METHODS = method_table.keys_where(pina_scaling=True)


def _digits_config():
  return presets.for_population(presets.DIGITS_DEFAULTS, 100)


def _fmnist_config(population: int = 10000):
  return presets.for_population(presets.FMNIST_DEFAULTS, population)


# datasets: {key: {num_clients, num_clusters, source}}; the key names the prepared
# directory and the grid's subdirectory, `source` (default: the key) is the dataset
# pina-prepare builds. extra_seeds: {seeds, epsilons} of pass 2 (see the module doc).
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
    "fmnist": {"datasets": {"fashion_mnist": {"num_clients": 10000, "num_clusters": 4}},
               "epsilons": [2.0, 8.0, math.inf],
               "extra_seeds": {"seeds": [1, 2], "epsilons": [2.0, 8.0]},
               "config": _fmnist_config(10000),
               "chosen_on": presets.FMNIST_CHOSEN_ON},
    "fmnist_demo": {"datasets": {"fashion_mnist_2k": {"source": "fashion_mnist",
                                                      "num_clients": 2000,
                                                      "num_clusters": 4}},
                    # [project choice] the two DP columns only, so that `make demo`
                    # (data, backbone, 14 runs) stays within 20 minutes on 2 cores.
                    "epsilons": [2.0, 8.0], "config": _fmnist_config(2000)},
    # The regime map (docs/results.md): where does clustering under DP get hard? The
    # FMNIST settings on populations of other sizes and cluster counts (2,000 clients
    # hold 25 training examples each); the 10,000-client C = 4 cell is `fmnist`, its
    # partial-participation cell `fmnist` with METHOD@poisson1k.
    "regimes": {"datasets": {
        "fashion_mnist_c2": {"source": "fashion_mnist", "num_clients": 10000,
                             "num_clusters": 2},
        "fashion_mnist_2k": {"source": "fashion_mnist", "num_clients": 2000,
                             "num_clusters": 4},
        "fashion_mnist_2k_c2": {"source": "fashion_mnist", "num_clients": 2000,
                                "num_clusters": 2}},
        "epsilons": [2.0, 8.0, math.inf], "config": presets.FMNIST_DEFAULTS,
        "chosen_on": presets.FMNIST_CHOSEN_ON},
    "paper": {"datasets": {"cifar10": {"num_clients": 10000, "num_clusters": 2},
                           "fashion_mnist": {"num_clients": 10000, "num_clusters": 4},
                           "femnist": {"num_clients": 10000, "num_clusters": 2}},
              "epsilons": [2.0, 8.0, math.inf],
              "config": {"population": 10000, "stage0": {"rounds": 50, "cohort": 1000},
                         "stage1": {"num_sketch_clients": 2000, "top_k": 32},
                         "stage2": {"rounds": 200, "cohort": 1000}}},
}

flags.DEFINE_enum("preset", "digits", list(PRESETS), "Grid preset.")
flags.DEFINE_string("output_dir", None, "Grid output directory.")
flags.DEFINE_string("data_dir", None, "Where prepared datasets live (default "
                    "<output_dir>/data); a dataset missing there is prepared first.")
flags.DEFINE_list("methods", None, "Subset of methods (default: all of them); "
                  "METHOD@VARIANT runs a method with one of the VARIANTS' settings, "
                  "e.g. pina@restore or pina@sketch_all+restore (run directory <method>@<variant>).")
flags.DEFINE_list("epsilons", None, "Subset of epsilons, e.g. 2,8,inf.")
flags.DEFINE_list("datasets", None, "Subset of the preset's datasets, e.g. "
                  "fashion_mnist_c2,fashion_mnist_2k (regimes).")
flags.DEFINE_integer("seed", 0, "Seed of every run (when --seeds is not given).")
flags.DEFINE_list("seeds", None, "Seeds of pass 1, e.g. 0,1,2: every cell runs with "
                  "each; the first is the base seed of the best-baseline pick.")
flags.DEFINE_bool("extra_seeds", True, "Run the preset's extra seeds (pass 2) for "
                  "PINA, PINA+RI and the best baseline.")
flags.DEFINE_enum("eval_split", config_lib.RunConfig.eval_split,
                  list(config_lib.EVAL_SPLITS),
                  "Held-out split every run scores: 'val' (for choosing settings) or "
                  "'test' (only for the runs of a final table).")
flags.DEFINE_multi_string("set", [], "Config override for every run, KEY.PATH=VALUE with "
                          "a JSON value, e.g. --set=stage2.normality_rule='\"restore\"' "
                          "or --set=stage2.restore_max_gain=2 (repeatable).")
flags.DEFINE_enum("progress", "log", ["auto", "bar", "log", "none"], "Per-run progress.")


#: Named setting variants for METHOD@VARIANT cells (`--methods=pina@restore`): the
#: normality-phase rules and scaling ablations of the rule study (docs/results.md).
VARIANTS = {
    "shrink": {"stage2": {"normality_rule": "shrink"}},
    "restore": {"stage2": {"normality_rule": "restore"}},
    "restore_w": {"stage2": {"normality_rule": "restore_w"}},
    "restore_gated": {"stage2": {"normality_rule": "restore_gated"}},
    "none": {"stage2": {"scaling": "none"}},
    "min_norm": {"stage2": {"scaling": "min_norm"}},
    "normality": {"stage2": {"scaling": "normality"}},
    # stage-1 signal variants (spec stage 1, step 9); presets.ALL = the dataset's
    # population (resolved by presets.for_population), "C" = its number of clusters
    "sketch_all": {"stage1": {"num_sketch_clients": presets.ALL}},
    "spectral": {"stage1": {"spectral_dims": "C"}},
    "literal": {"stage1": {"noise_positions": "released"}},
    "bound": {"stage1": {"centroid_norm_bound": 1.0}},
    # a public basis of r = 8 directions (PCA of public pseudo-clients' LoRA changes)
    "basis8": {"stage1": {"public_basis_dims": 8}},
    # a labelled extension beyond the paper: 3 DP Lloyd steps over a secure sum from
    # k-means of public pseudo-clients' sketches (pina_tff.clustering.dp_lloyd)
    "dplloyd": {"stage1": {"centroids": "dp_lloyd", "lloyd_steps": 3,
                           "lloyd_start": "public"}},
    # partial participation: Poisson cohorts of 1,000 expected clients, 3x the rounds
    "poisson1k": {"stage2": {"cohort": 1000, "rounds": 45}},
}


def variant_settings(variant, num_clients: int, num_clusters: int) -> dict:
  """The config settings of a variant label ('a' or 'a+b+...') for a dataset of
  `num_clients` clients and `num_clusters` clusters ("C" becomes the cluster count,
  population-relative fields go through `presets.for_population`)."""
  out: dict = {}
  for name in (variant.split("+") if variant else []):
    _merge(out, copy.deepcopy(VARIANTS[name]))
  for section in out.values():
    for key, value in list(section.items()):
      if value == "C":
        section[key] = num_clusters
  out = presets.for_population(out, num_clients)
  del out["population"]  # the dataset's: set by the preset's own for_population
  return out


def split_method(label: str) -> tuple:
  """'pina@restore' -> ('pina', 'restore'); 'ifca' -> ('ifca', None).

  Raises:
    ConfigError: an unknown method or variant."""
  method, _, variant = str(label).partition("@")
  if method not in ALL_METHODS:
    raise config_lib.ConfigError(f"unknown method {method!r}; valid: {', '.join(ALL_METHODS)}")
  for name in (variant.split("+") if variant else []):
    if name not in VARIANTS:
      raise config_lib.ConfigError(f"unknown variant {name!r} in {label!r}; valid: "
                                   f"{', '.join(VARIANTS)} (combine with '+')")
  return method, (variant or None)


def _merge(base: dict, extra: dict) -> dict:
  for k, v in extra.items():
    if isinstance(v, dict):
      _merge(base.setdefault(k, {}), v)
    else:
      base[k] = v
  return base


def parse_overrides(items) -> dict:
  """{('stage2', 'normality_rule'): 'restore', ...} from KEY.PATH=VALUE strings (VALUE
  is JSON; a bare word is taken as a string).

  Raises:
    ConfigError: an item without '='."""
  out = {}
  for item in items or []:
    key, sep, text = str(item).partition("=")
    if not sep or not key:
      raise config_lib.ConfigError(f"--set: expected KEY.PATH=VALUE, found {item!r}")
    try:
      value = json.loads(text)
    except ValueError:
      value = text
    out[tuple(key.split("."))] = value
  return out


def apply_overrides(cfg_dict: dict, overrides: dict) -> dict:
  """`cfg_dict` with every override set (`presets.set_field`)."""
  for path, value in overrides.items():
    presets.set_field(cfg_dict, path, value)
  return cfg_dict


def eps_dirname(eps: float) -> str:
  return "eps_inf" if math.isinf(eps) else f"eps_{eps:g}"


def run_dir_for(output_dir: str, dataset: str, method: str, eps: float, seed: int) -> str:
  """`<output_dir>/<dataset>/<method>/eps_<e>/seed_<s>`."""
  return os.path.join(output_dir, dataset, method, eps_dirname(eps), f"seed_{seed}")


def finished_run(run_dir: str, seed: int):
  """The directory holding the finished run of this cell and seed, or None.

  `run_dir` (the seed_<s> layout) if it has a summary.json; else the older layout's
  parent `eps_<e>` directory if its summary.json was written with this seed.
  """
  if os.path.exists(os.path.join(run_dir, "summary.json")):
    return run_dir
  old = os.path.dirname(run_dir)
  if os.path.exists(os.path.join(old, "summary.json")):
    if results_lib.load_run(old).seed == seed:
      return old
  return None


def ensure_dataset(name: str, spec: dict, data_dir: str, seed: int, log) -> str:
  """Prepared clients of `name` under data_dir (runs pina-prepare's pipeline for
  spec['source'] (default: name) with spec['num_clients'] clients if absent)."""
  path = os.path.join(data_dir, name)
  if os.path.exists(os.path.join(path, "manifest.json")):
    return path
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  source = spec.get("source", name)
  log(f"preparing {name} ({source}, {spec['num_clients']} clients) in {path}")
  os.makedirs(data_dir, exist_ok=True)
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      dataset=source, num_clients=spec["num_clients"], num_clusters=spec["num_clusters"],
      output_dir=path, seed=seed))
  return path


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
  """HEAD of the checkout this file is in ('-dirty' appended with uncommitted changes);
  None outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=20, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "-uno"],
                           capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("-dirty" if dirty else "") if head else None


class _GridRecord:
  """grid.json: every invocation of the grid on this output_dir (a restart appends one),
  rewritten atomically after each run so that a killed grid keeps its record."""

  def __init__(self, output_dir: str, entry: dict):
    self.path = os.path.join(output_dir, results_lib.GRID_JSON)
    self.previous = (results_lib.read_grid_info(output_dir) or {}).get("invocations", [])
    self.entry = entry
    self.t0 = time.monotonic()

  def write(self, end: bool = False) -> dict:
    self.entry["wall_s"] = round(time.monotonic() - self.t0, 3)
    if end:
      self.entry["end"] = _utc_now()
    info = {"invocations": self.previous + [self.entry],
            "wall_clock_s": round(sum(i.get("wall_s") or 0.0 for i in self.previous)
                                  + self.entry["wall_s"], 3)}
    atomic.write_json(self.path, info, indent=1, sort_keys=False, make_dirs=True)
    return info


def _eta(done_walls: list, remaining: int) -> str:
  if not done_walls:
    return "ETA unknown"
  s = int(round(sum(done_walls) / len(done_walls) * remaining))
  return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class GridInterrupted(Exception):
  """A run of the grid stopped on a signal (after its checkpoint)."""


@dataclasses.dataclass
class GridPlan:
  """The cells of one grid invocation, resolved from the preset and the arguments.

  seeds: pass-1 seeds (seeds[0] is the base seed). extra_seeds, extra_epsilons,
  extra_methods: pass 2 (the PINA methods, plus the best baseline when has_baseline:
  a baseline is among the methods)."""
  preset: dict
  methods: list
  epsilons: list
  seeds: list
  extra_seeds: list
  extra_epsilons: list
  extra_methods: list
  has_baseline: bool

  @property
  def base_seed(self) -> int:
    return self.seeds[0]

  def total(self) -> int:
    """Cells of the whole grid, every pass-2 cell counted (a dataset and ε without a
    best baseline has fewer)."""
    per_dataset = len(self.seeds) * len(self.epsilons) * len(self.methods) + len(
        self.extra_seeds) * len(self.extra_epsilons) * (len(self.extra_methods)
                                                        + int(self.has_baseline))
    return per_dataset * len(self.preset["datasets"])


def grid_plan(preset: str, methods, epsilons, seed: int, seeds,
               extra_seeds: bool, datasets=None) -> GridPlan:
  """The `GridPlan` of `run_grid`'s arguments (defaults from the preset;
  ``datasets``: a subset of the preset's datasets).

  Raises:
    ConfigError: an unknown preset, dataset, method or variant, or a repeated seed."""
  if preset not in PRESETS:
    raise config_lib.ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  p = PRESETS[preset]
  if datasets:
    unknown = [d for d in datasets if d not in p["datasets"]]
    if unknown:
      raise config_lib.ConfigError(f"--datasets: {unknown} not in preset {preset!r}; "
                                   f"valid: {', '.join(p['datasets'])}")
    p = {**p, "datasets": {d: p["datasets"][d] for d in datasets}}
  methods = methods or ALL_METHODS
  for m in methods:
    split_method(m)
  epsilons = epsilons if epsilons is not None else p["epsilons"]
  seeds = [int(s) for s in (seeds if seeds else [seed])]
  if len(set(seeds)) != len(seeds):
    raise config_lib.ConfigError(f"--seeds must not repeat a seed, found {seeds}")
  extra = p.get("extra_seeds") if extra_seeds else None
  return GridPlan(
      preset=p, methods=methods, epsilons=epsilons, seeds=seeds,
      extra_seeds=[s for s in (extra or {}).get("seeds", []) if s not in seeds],
      extra_epsilons=[e for e in (extra or {}).get("epsilons", []) if e in epsilons],
      extra_methods=[m for m in PINA_METHODS if m in methods],
      has_baseline=any(m in results_lib.BASELINES for m in methods))


def _new_record(output_dir: str, preset: str, plan: GridPlan, command, eval_split: str,
                overrides) -> _GridRecord:
  """This invocation's grid.json entry (start time, command line, git commit, plan)."""
  return _GridRecord(output_dir, {
      "start": _utc_now(), "end": None, "wall_s": 0.0,
      "command": command or (f"run_grid(preset={preset!r}, output_dir={output_dir!r}, "
                             f"seeds={plan.seeds})"),
      "git_commit": git_commit(), "preset": preset, "seeds": plan.seeds,
      "methods": list(plan.methods), "epsilons": [results_lib.epsilon_token(e)
                                                  for e in plan.epsilons],
      "extra_seeds": {"seeds": plan.extra_seeds,
                      "epsilons": [results_lib.epsilon_token(e)
                                   for e in plan.extra_epsilons]},
      "eval_split": eval_split,
      "overrides": {".".join(k): v for k, v in (overrides or {}).items()},
      "chosen_on": plan.preset.get("chosen_on", {}),
      "best_baselines": {}, "population_load_s": {}, "runs": []})


def _cell_config(plan: GridPlan, dspec: dict, method: str, eps: float, seed: int,
                 eval_split: str, overrides) -> config_lib.RunConfig:
  """The validated config of one cell: the preset's config for the dataset's
  population, the method and its variant, ε, the seed and the overrides."""
  # population-relative fields ('all', 'up to N') for this dataset's population
  cfg_dict = presets.for_population(plan.preset["config"], dspec["num_clients"])
  base_method, variant = split_method(method)
  cfg_dict.update(method=base_method, num_clusters=dspec["num_clusters"], seed=seed,
                  eval_split=eval_split)
  _merge(cfg_dict, variant_settings(variant, dspec["num_clients"], dspec["num_clusters"]))
  cfg_dict.setdefault("privacy", {})["epsilon"] = eps
  apply_overrides(cfg_dict, overrides or {})
  return config_lib.validate(config_lib.from_dict(cfg_dict))


class _GridRunner:
  """Runs the cells of one grid invocation (one pina-simulate run each, finished ones
  skipped) and records each in grid.json."""

  def __init__(self, plan: GridPlan, record: _GridRecord, output_dir: str,
               progress: str, eval_split: str, overrides, log):
    self.plan, self.record, self.output_dir = plan, record, output_dir
    self.progress, self.eval_split, self.overrides, self.log = (
        progress, eval_split, overrides, log)
    self.total = plan.total()
    self.i = 0
    self.walls = []

  def run_dataset(self, dataset: str, dspec: dict, data_dir: str) -> None:
    """Pass 1 (every seed, ε and method), then pass 2 (extra seeds) on one dataset."""
    clients_dir = ensure_dataset(dataset, dspec, data_dir, self.plan.base_seed, self.log)
    pops = {}  # (clients_dir, lora_rank) -> Population, loaded at the first run
    for s in self.plan.seeds:
      for eps in self.plan.epsilons:
        for method in self.plan.methods:
          self.run_cell(dataset, dspec, clients_dir, pops, method, eps, s)
    if self.plan.extra_seeds and self.plan.extra_epsilons:
      self._extra_seed_pass(dataset, dspec, clients_dir, pops)

  def _extra_seed_pass(self, dataset: str, dspec: dict, clients_dir: str, pops) -> None:
    """The extra seeds for the PINA methods and each ε's best baseline (picked on the
    base seed's finished runs, recorded in grid.json)."""
    plan, base_seed = self.plan, self.plan.base_seed
    base = [r for r in results_lib.collect_runs(os.path.join(self.output_dir, dataset))
            if r.seed == base_seed]
    picks = self.record.entry["best_baselines"].setdefault(dataset, {})
    for eps in plan.extra_epsilons:
      best = results_lib.best_baseline(
          base, None, eps, seed=base_seed,
          baselines=[m for m in results_lib.BASELINES if m in plan.methods])
      picks[results_lib.epsilon_token(eps)] = best
      self.log(f"best baseline at {dataset} eps={results_lib.epsilon_token(eps)} (seed "
               f"{base_seed}): {best}")
      if best is None and plan.has_baseline:
        self.total -= len(plan.extra_seeds)
      for s in plan.extra_seeds:
        for method in plan.extra_methods + ([best] if best else []):
          self.run_cell(dataset, dspec, clients_dir, pops, method, eps, s)

  def run_cell(self, dataset, dspec, clients_dir, pops, method, eps, s) -> None:
    """One (dataset, method, ε, seed) cell: skipped when finished, else simulated."""
    self.i += 1
    run_dir = run_dir_for(self.output_dir, dataset, method, eps, s)
    entry = {"dataset": dataset, "method": method, "epsilon": results_lib.epsilon_token(eps),
             "seed": s, "run_dir": os.path.relpath(run_dir, self.output_dir)}
    done = finished_run(run_dir, s)
    if done is not None:
      self.log(f"[{self.i}/{self.total}] skip {done} (done)")
      self.record.entry["runs"].append(dict(
          entry, run_dir=os.path.relpath(done, self.output_dir), status="skipped",
          wall_s=None))
      self.record.write()
      return
    cfg = _cell_config(self.plan, dspec, method, eps, s, self.eval_split, self.overrides)
    population = self._population(dataset, clients_dir, pops, cfg.stage1.lora_rank)
    self.log(f"[{self.i}/{self.total}] run {dataset} {method} "
             f"eps={results_lib.epsilon_token(eps)} seed={s} "
             f"({_eta(self.walls, self.total - self.i + 1)})")
    self._simulate(cfg, clients_dir, run_dir, population, entry)

  def _population(self, dataset: str, clients_dir: str, pops, lora_rank: int):
    """The dataset's population for ``lora_rank``, loaded once for the grid."""
    from pina_tff.simulation import population as population_lib  # pylint: disable=g-import-not-at-top
    key = (clients_dir, lora_rank)
    if key not in pops:
      t = time.monotonic()
      self.log(f"loading the {dataset} population once for the grid (backbone cache "
               f"seed {self.plan.base_seed})")
      pops[key] = population_lib.load_population(clients_dir, lora_rank,
                                                 self.plan.base_seed, self.log)
      self.record.entry["population_load_s"][dataset] = round(time.monotonic() - t, 3)
    return pops[key]

  def _simulate(self, cfg, clients_dir: str, run_dir: str, population, entry) -> None:
    """Runs one cell's simulation and records its wall clock.

    Raises:
      GridInterrupted: the run stopped on SIGINT / SIGTERM (after its checkpoint)."""
    from computations.program import program  # pylint: disable=g-import-not-at-top
    t = time.monotonic()
    done = program.run_simulation(cfg, clients_dir, run_dir,
                                  program.ProgramOptions(progress=self.progress),
                                  log=self.log, population=population)
    if (done or {}).get("interrupted"):  # SIGINT / SIGTERM: checkpointed, stop the grid
      self.record.write()
      raise GridInterrupted(done.get("signal") or 1)
    wall = time.monotonic() - t
    self.walls.append(wall)
    self.record.entry["runs"].append(dict(entry, status="ran", wall_s=round(wall, 3)))
    self.record.write()


def _write_outputs(output_dir: str, record: _GridRecord, log) -> list:
  """Closes grid.json, writes results.md / results.csv and the plots; returns the
  plot paths."""
  from pina_tff.reporting import plots  # pylint: disable=g-import-not-at-top
  info = record.write(end=True)
  records = results_lib.collect_runs(output_dir)
  results_lib.write_results_table(records, os.path.join(output_dir, "results.md"),
                                  os.path.join(output_dir, "results.csv"), grid_info=info)
  pngs = plots.make_all_plots(records, os.path.join(output_dir, "plots"))
  log(f"grid done in {record.entry['wall_s']:.0f} s ({len(records)} runs in the table; "
      f"whole grid {info['wall_clock_s']:.0f} s over {len(info['invocations'])} "
      f"invocation(s))")
  return pngs


def run_grid(preset: str, output_dir: str, data_dir=None, methods=None, epsilons=None,
             seed: int = 0, progress: str = "log", log=None, seeds=None,
             extra_seeds: bool = True, command: str | None = None,
             eval_split: str = "val", overrides: dict | None = None,
             datasets=None) -> list:
  """Runs every (dataset, ε, method, seed) cell, then writes the table, plots, grid.json.

  Args:
    seeds: seeds of pass 1 (every cell); default [seed]. seeds[0] is the base seed.
    extra_seeds: run the preset's `extra_seeds` pass (PINA, PINA+RI and the best
      baseline at the preset's extra-seed epsilons; see the module docstring).
    command: the command line recorded in grid.json (default: this Python call).
    eval_split: the held-out split every run scores ('val' or 'test').
    overrides: {('section', 'key'): value} set in every run's config (`--set`).
    datasets: a subset of the preset's datasets (default: all).
  Returns the written plot paths.
  """
  from computations.runtime import context  # pylint: disable=g-import-not-at-top
  log = log or (lambda m: print(m, file=sys.stderr, flush=True))
  plan = grid_plan(preset, methods, epsilons, seed, seeds, extra_seeds, datasets)
  data_dir = data_dir or os.path.join(output_dir, "data")
  record = _new_record(output_dir, preset, plan, command, eval_split, overrides)
  record.write()
  runner = _GridRunner(plan, record, output_dir, progress, eval_split, overrides, log)
  with context.tff_context(device="cpu"):
    for dataset, dspec in plan.preset["datasets"].items():
      runner.run_dataset(dataset, dspec, data_dir)
  return _write_outputs(output_dir, record, log)


def main(argv):
  del argv  # cli.run rejects positional arguments
  try:
    if not FLAGS.output_dir:
      raise config_lib.ConfigError("--output_dir is required")
    eps = [presets.parse_epsilon(e) for e in FLAGS.epsilons] if FLAGS.epsilons else None
    seeds = None
    if FLAGS.seeds:
      try:
        seeds = [int(x) for x in FLAGS.seeds]
      except ValueError:
        raise config_lib.ConfigError(
            f"--seeds must be integers separated by commas, found {FLAGS.seeds}") from None
    for name, values in (("--seed", [FLAGS.seed]), ("--seeds", seeds or [])):
      bad = [v for v in values if not 0 <= v <= config_lib.MAX_SEED]
      if bad:
        raise config_lib.ConfigError(f"{name}: expected integers in [0, "
                                     f"{config_lib.MAX_SEED}], found {bad[0]}")
    with signals.graceful_stop():
      pngs = run_grid(FLAGS.preset, FLAGS.output_dir, FLAGS.data_dir, FLAGS.methods, eps,
                      FLAGS.seed, FLAGS.progress, seeds=seeds,
                      extra_seeds=FLAGS.extra_seeds,
                      command="pina-grid " + shlex.join(sys.argv[1:]),
                      eval_split=FLAGS.eval_split, overrides=parse_overrides(FLAGS.set),
                      datasets=FLAGS.datasets)
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
  """Entry point of `python -m pipelines.grid`, the Bazel binary and pina-grid
  (`pipelines.entry.grid`)."""
  startup.prepare(keras=True)  # before TensorFlow, keras and absl's main
  cli.run(main)


if __name__ == "__main__":
  run()
