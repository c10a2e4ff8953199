"""Stage-2 rounds as pina-simulate runs them: `computations.program.program.run_simulation` on a
synthetic population of reduced-tail features, with per-round times and a profile.

The population has the shapes of a real one (FMNIST model: width 64, 4 heads, MLP 128;
ViT-S/16: width 384, 6 heads, MLP 1536; 5 training and 1 test example per client, as
the embedded Fashion-MNIST population) but random features and random frozen tail
weights: times do not depend on the values. The program runs stage 1 (PINA sketches,
k-means) once and then the stage-2 rounds; a round's time is the difference of
consecutive `wall_s` in metrics.csv (everything the program does between two rounds:
cohort, round data, the TFF round, reading the models back, evaluation if due,
accounting, metrics release, checkpoints). The first stage-2 round (tracing) is
reported separately.
"""

from __future__ import annotations

import collections
import cProfile
import csv
import io
import json
import math
import os
import pstats
import statistics
import tempfile
import time

import numpy as np

MODELS = {
    # name: (width, heads, mlp_dim, classes)
    "fmnist": (64, 4, 128, 10),
    "vit_s16": (384, 6, 1536, 10),
}


#: What the per-round profile lists (regex over "file:line(function)"): our round loop's
#: parts and TFF's computation calls.
PROFILE_FILTER = (r"program.py|resident_data.py|accounting.py:\d+\(epsilon_spent|"
                  r"sampling.py:\d+\(cohort|computation_impl.py:\d+\(__call__|"
                  r"release_manager.py:\d+\(release|program_state_manager.py:\d+\(save|"
                  r"learning_process.py|_client_seeds")


def stage2_flops(model_name: str, cohort: int, clusters: int, local_epochs: int,
                 examples: int = 5, lora_rank: int = 1) -> float:
  """Floating-point operations of the clients' arithmetic in one stage-2 round of
  ``cohort`` clients (multiply-add = 2): per client, C forward passes to choose a
  cluster and E local epochs of forward + backward (the backward of the frozen MLP
  needs only the input gradient: about one forward), i.e. (C + 2E) forwards of its
  examples. A forward of one example: the MLP 2·(2·d·m), the head 2·d·K, the rank-r
  LoRA path 4·H·d·r; plus, per client and pass, M = B·W_O (2·r·d²)."""
  width, heads, mlp, classes = MODELS[model_name]
  per_example = 4 * width * mlp + 2 * width * classes + 4 * heads * width * lora_rank
  per_pass = examples * per_example + 2 * lora_rank * width * width
  return float(cohort * (clusters + 2 * local_epochs) * per_pass)


def matmul_peak(model_name: str, dtype: str, rows: int = 25000, reps: int = 5) -> dict:
  """GFLOP/s of one plain TF matmul of the tail MLP's shape, [rows x d] x [d x m], in
  ``dtype`` (the machine's attainable peak for that shape: median of ``reps``)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  width, _, mlp, _ = MODELS[model_name]
  rng = np.random.default_rng(0)
  a = tf.cast(tf.constant(rng.standard_normal((rows, width), dtype=np.float32)), dtype)
  b = tf.cast(tf.constant(rng.standard_normal((width, mlp), dtype=np.float32)), dtype)
  fn = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
  fn().numpy()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn().numpy()
    times.append(time.perf_counter() - t0)
  # The reduction's cost (rows x m adds) is left in: it is < 1/d of the matmul's.
  sec = statistics.median(times)
  return {"dtype": dtype, "shape": [rows, width, mlp], "seconds": sec,
          "gflops": 2.0 * rows * width * mlp / sec / 1e9}


def random_frozen(config, seed: int = 0) -> dict[str, np.ndarray]:
  """The 18 frozen tail arrays of `config`, random (LayerNorm gammas 1, betas 0)."""
  from pina_tff.models import reduced_tail as rt  # pylint: disable=g-import-not-at-top
  d = config.width
  rng = np.random.default_rng(seed)
  shapes = config.frozen_shapes()
  out = {}
  for k in rt.FROZEN_KEYS:
    if k.endswith("_gamma"):
      out[k] = np.ones((d,), np.float32)
    elif k.endswith("_beta"):
      out[k] = np.zeros((d,), np.float32)
    else:
      fan_in = shapes[k][0] if len(shapes[k]) > 1 else 1
      scale = 1.0 / math.sqrt(fan_in) if len(shapes[k]) > 1 else 0.02
      out[k] = (scale * rng.standard_normal(shapes[k])).astype(np.float32)
  rt.check_frozen(out, config)
  return out


def synthetic_population(model_name: str, population: int, clusters: int,
                         train_examples: int = 5, test_examples: int = 1, seed: int = 1):
  """A `pina_tff.simulation.population.Population` of random features (float32)."""
  from pina_tff.models import reduced_tail as rt  # pylint: disable=g-import-not-at-top
  from pina_tff.simulation import population as population_lib  # pylint: disable=g-import-not-at-top
  from pina_tff.training import models as tm  # pylint: disable=g-import-not-at-top
  width, heads, mlp, classes = MODELS[model_name]
  config = rt.TailConfig(width=width, num_heads=heads, mlp_dim=mlp, num_classes=classes)
  rng = np.random.default_rng(seed)
  true = rng.integers(0, clusters, population)

  def split(n):
    x = rng.standard_normal((population, n, width), dtype=np.float32)
    z = 0.1 * rng.standard_normal((population, n, heads, width), dtype=np.float32)
    y = rng.integers(0, classes, (population, n)).astype(np.int32)
    return [{"x_base": x[i], "z": z[i], "label": y[i], "true_cluster": int(true[i])}
            for i in range(population)]

  head = {"head_kernel": (0.05 * rng.standard_normal((width, classes))).astype(np.float32),
          "head_bias": np.zeros((classes,), np.float32)}
  return population_lib.Population(
      dataset=f"synthetic-{model_name}", model=tm.ViTTailModel(config, random_frozen(config)),
      head=head, train=split(train_examples), test=split(test_examples),
      true_clusters=true.astype(np.int64), num_true_clusters=clusters)


def fake_clients_dir(directory: str, population: int, clusters: int = 4,
                     width: int = 64) -> str:
  """An embeddings manifest naming `population` clients (the program reads the
  population size from it; the data itself is passed in as a `Population`)."""
  from pina_tff.models import backbone as bb  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  # the backbone the program reads the model width from (a fact of the data)
  name = {64: "fmnist_vit", 384: "vit_s16"}.get(width, "fmnist_vit")
  backbone = bb.get_config(name, width=width).to_json()
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump({"format": "pina-embeddings/1", "dataset": "synthetic", "backbone": backbone,
               "num_clients": population, "num_clusters": clusters, "num_classes": 10,
               "seed": 0, "label_known_clusters": True,
               "shards": [{"path": "unused.tfrecord", "num_records": 6 * population}],
               "embedding_shape": [2, width], "embedding_dtype": "float32",
               "clients": [{"client_id": f"c{i:06d}", "cluster": i % clusters,
                            "num_train": 5, "num_test": 1, "shard": 0}
                           for i in range(population)]}, f)
  open(os.path.join(directory, "unused.tfrecord"), "wb").close()  # listed, never read
  return directory


def run_config(population: int, cohort: int, clusters: int, rounds: int,
               epsilon: float, aggregator: str, sketch_clients: int,
               precision: str = "float32"):
  """The Fashion-MNIST preset's stage 2 (5 local epochs, batch 16, DDP, 'pina'
  scaling) with the given cohort, C, rounds and ε; stage 0 off; a small stage 1."""
  from pina_tff import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.RunConfig(
      method="pina", num_clusters=clusters, population=population, seed=0,
      # The synthetic population has train and test splits only (no 'val').
      eval_split="test",
      privacy=config_lib.PrivacyConfig(epsilon=epsilon),
      stage0=config_lib.Stage0Config(enabled=False, rounds=0, cohort=cohort),
      stage1=config_lib.Stage1Config(num_sketch_clients=min(sketch_clients, population),
                                     local_epochs=1, lr=1.0, top_k=16, clip=1.0,
                                     train_head=False, kmeans_restarts=1),
      stage2=config_lib.Stage2Config(rounds=rounds, cohort=cohort, local_epochs=5,
                                     batch_size=16, client_lr=1.0, server_lr=10.0,
                                     server_momentum=0.0, clip=1.0, warm_rounds=2,
                                     scaling="pina", aggregator=aggregator,
                                     fedprox_mu=0.1, precision=precision))


def round_times(metrics_csv: str) -> list[float]:
  """Seconds of each stage-2 round (differences of wall_s; the first has no
  predecessor and is measured from the end of stage 1, so it includes tracing)."""
  with open(metrics_csv, newline="") as f:
    walls = [float(r["wall_s"]) for r in csv.DictReader(f) if r["stage"] == "2"]
  return [b - a for a, b in zip(walls, walls[1:])]


class _PartTimers:
  """Times the parts of the program's round loop by wrapping them (restored on exit).

  Parts: 'round_data' (cohort -> TFF client datasets), 'evaluate' (test accuracy
  over the whole population), 'epsilon' (accounting), 'release' (metrics.csv +
  TensorBoard), 'checkpoint' (program state). What is left of a round is TFF's
  `process.next` plus reading the models back ('tff_and_rest')."""

  def __init__(self):
    self.calls = {}
    self._undo = []

  def _wrap(self, owner, name, part, is_async=False):
    orig = getattr(owner, name)
    calls = self.calls.setdefault(part, [])
    if is_async:
      async def timed(*a, **k):
        t0 = time.perf_counter()
        try:
          return await orig(*a, **k)
        finally:
          calls.append(time.perf_counter() - t0)
    else:
      def timed(*a, **k):
        t0 = time.perf_counter()
        try:
          return orig(*a, **k)
        finally:
          calls.append(time.perf_counter() - t0)
    setattr(owner, name, timed)
    self._undo.append((owner, name, orig))

  def __enter__(self):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    from computations.data import round_data  # pylint: disable=g-import-not-at-top
    from computations.program import evaluation  # pylint: disable=g-import-not-at-top
    from computations.program import logic  # pylint: disable=g-import-not-at-top
    from computations.program import release  # pylint: disable=g-import-not-at-top
    self._wrap(round_data.PackedRoundData, "round_data", "round_data")
    self._wrap(round_data.ResidentStages, "round_data", "round_data")
    self._wrap(evaluation.Evaluator, "__call__", "evaluate")
    self._wrap(logic.accounting, "epsilon_spent_after", "epsilon")
    self._wrap(tff.program.CSVFileReleaseManager, "release", "release", True)
    self._wrap(release.TensorBoardRelease, "release", "release", True)
    self._wrap(tff.program.FileProgramStateManager, "save", "checkpoint", True)
    from tensorflow_federated.python.core.impl.computation import computation_impl  # pylint: disable=g-import-not-at-top
    orig_call = computation_impl.ConcreteComputation.__call__
    tff_calls = self.calls.setdefault("tff_calls", [])

    def timed_call(comp, *a, **k):
      t0 = time.perf_counter()
      try:
        return orig_call(comp, *a, **k)
      finally:
        result = str(comp.type_signature.result)
        tff_calls.append(("next" if "metrics" in result else result[:30],
                          time.perf_counter() - t0))
    computation_impl.ConcreteComputation.__call__ = timed_call
    self._undo.append((computation_impl.ConcreteComputation, "__call__", orig_call))
    return self

  def __exit__(self, *exc):
    for owner, name, orig in reversed(self._undo):
      setattr(owner, name, orig)

  def per_round(self, rounds: int, per_round_calls: dict, skip_last: int = 0) -> dict:
    """Median seconds per round of each part over `rounds` rounds that end
    `skip_last` rounds before the last one."""
    out = {}
    named = collections.defaultdict(list)
    for name, dt in self.calls.get("tff_calls", []):
      named[name].append(dt)
    if len(named.get("next", [])) > rounds + skip_last:
      nexts_s = named["next"][:len(named["next"]) - skip_last]
      out["tff_next"] = statistics.median(nexts_s[-rounds:])
      # Other TFF calls (reading the models back) of the timed rounds.
      calls = self.calls["tff_calls"]
      nexts = [i for i, (name, _) in enumerate(calls) if name == "next"]
      first = nexts[-rounds - skip_last]
      end = nexts[-skip_last] if skip_last else len(calls)
      out["tff_other_calls"] = sum(dt for name, dt in calls[first:end]
                                   if name != "next") / rounds
    for part, calls in self.calls.items():
      if part == "tff_calls":
        continue
      k = per_round_calls.get(part, 1)
      if len(calls) < (rounds + 1 + skip_last) * k:  # not every round (eval_every > 1)
        continue
      calls = calls[:len(calls) - skip_last * k]
      tail = calls[-rounds * k:]
      sums = [sum(tail[i:i + k]) for i in range(0, len(tail), k)]
      out[part] = statistics.median(sums) if sums else 0.0
    return out


def run(model_name: str = "fmnist", population: int = 10000, cohort: int = 1000,
        clusters: int = 4, rounds: int = 3, epsilon: float = 8.0, aggregator: str = "ddp",
        transport: str = "resident", eval_every: int = 1, diagnostics: bool = True,
        profile: bool = False, sketch_clients: int = 200, shard_size: int = 0,
        profile_lines: int = 25, precision: str = "float32") -> dict:
  """Runs the program once (stage 1 + `rounds` + 1 stage-2 rounds); returns times."""
  from computations.program import program  # pylint: disable=g-import-not-at-top
  from computations.runtime.context import tff_context  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  pop = synthetic_population(model_name, population, clusters)
  res = {"model": model_name, "population": population, "cohort": cohort,
         "clusters": clusters, "epsilon": epsilon, "aggregator": aggregator,
         "transport": transport, "eval_every": eval_every, "diagnostics": diagnostics,
         "precision": precision, "make_population_s": time.perf_counter() - t0}
  cfg = run_config(population, cohort, clusters, rounds + 1, epsilon, aggregator,
                   sketch_clients, precision)
  opts = program.ProgramOptions(shard_size=shard_size or None, checkpoint_every=5,
                                eval_every=eval_every, progress="none",
                                simulation_diagnostics=diagnostics,
                                shard_transport=transport)
  with tempfile.TemporaryDirectory(prefix="pina-bench-prog-") as tmp:
    clients_dir = fake_clients_dir(os.path.join(tmp, "clients"), population,
                                   width=pop.model.config.width)
    root = os.path.join(tmp, "run")
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    with tff_context(runtime="simulation"), _PartTimers() as timers:
      if prof:
        prof.enable()
      summary = program.run_simulation(cfg, clients_dir, root, opts, log=lambda m: None,
                                       population=pop)
      if prof:
        prof.disable()
    res["run_s"] = time.perf_counter() - t0
    times = round_times(os.path.join(root, "metrics.csv"))
    skip_last = 0
    if eval_every > 1 and len(times) > 1:
      times, skip_last = times[:-1], 1  # the last round always evaluates
  res["round_s"] = times
  res["median_round_s"] = statistics.median(times) if times else math.nan
  saves = timers.calls.pop("checkpoint", [])
  parts = timers.per_round(len(times), {"release": 2}, skip_last)
  parts["rest"] = res["median_round_s"] - sum(parts.values())
  res["parts_s"] = parts
  if "evaluate" not in parts and timers.calls.get("evaluate"):
    res["evaluate_s_per_call"] = statistics.median(timers.calls["evaluate"])
  # Checkpoints are saved every 5 rounds and at stage ends, outside the timed rounds
  # here: seconds per save.
  res["checkpoint_s_per_save"] = statistics.median(saves) if saves else math.nan
  res["shard_size"] = summary["shard_size"]
  res["tff_shards"] = summary["tff_shards_per_round"]["stage2"]
  res["final_accuracy"] = summary["final_accuracy"]
  res["client_precision"] = summary["client_precision"]
  res["flops_per_round"] = stage2_flops(model_name, cohort, clusters,
                                        cfg.stage2.local_epochs)
  if prof:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    stats.print_stats(PROFILE_FILTER, profile_lines)
    res["profile"] = out.getvalue()
  return res
