"""The experiment program: stage 0 -> stage 1 -> stage 2 (or a baseline), resumable.

Built on `tff.program`: program state (cluster models, finalizer state, stage-1
result, progress) is saved with a `FileProgramStateManager` every N rounds and at
every stage boundary; per-round metrics are released to a `CSVFileReleaseManager`
(`metrics.csv`, which drops rows past the resumed round by itself) and a
`TensorBoardReleaseManager`. Every round's randomness (cohort, client seeds) is a
function of (seed, stage, round), so a run killed at any moment and started again
with the same command continues from its last checkpoint and, where the aggregator
adds no noise (epsilon = inf), ends with exactly the metrics of an uninterrupted run.
Noise (`cfg.privacy.noise_mode`): in 'simulation' mode the local-DP noise (stage-1
sketches, IFCA+LDP) and the central-DP noise are functions of (seed, stage, round), so
with `aggregator='central'` two runs with the same seed, and a resumed run, are
identical at any ε. TFF's distributed-DP factory cannot be seeded (TFF 0.87: its
stochastic rounding seeds itself from `tf.timestamp()` at every call, and the discrete
Gaussian noise comes from unseeded tensorflow_probability samplers): with
`aggregator='ddp'` and finite ε a repeated or resumed run is statistically, not
bitwise, the same. In 'secure' mode every noise seed comes from `os.urandom` and is
never written (shards stay in memory).

Privacy wiring (`docs/privacy.md`): cohorts of stages 0 and 2 follow
`cfg.privacy.sampling` (`pina_tff.simulation.sampling`, Poisson by default), the mean
keeps the fixed denominator qP, and each stage runs a constant number of TFF shards
(enough for its largest cohort; empty shards send zero) so the distributed-DP noise
shares per round stay constant. `summary.json` reports ε under both threat models,
which one the noise was calibrated to, δ, the sampling scheme, every noise multiplier,
the local ε's, the noise mode, and the released metrics that ε does not cover.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from scipy import optimize

from computations import aggregators as agg
from computations import client_work as cw
from computations import learning_process as lp
from computations import methods
from computations import resident_data
from computations import run_dir as run_dir_lib
from computations import stage1 as stage1_lib
from pina_tff import config as config_lib
from pina_tff.clustering import kmeans_init as kmeans_lib
from pina_tff.clustering import metrics as cluster_metrics
from pina_tff.errors import ConfigError
from pina_tff.models import reduced_tail as rt
from pina_tff.privacy import accounting
from pina_tff.privacy import ddp as ddp_lib
from pina_tff.runtime import signals
from pina_tff.runtime import sweep
from pina_tff.simulation import population as population_lib
from pina_tff.simulation import sampling as sampling_lib
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards as shards_lib

PHASE_STAGE0, PHASE_STAGE1, PHASE_STAGE2, PHASE_DONE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ProgramOptions:
  """How the program runs (not what it computes).

  Attributes:
    shard_size: simulated clients per TFF client (None: `default_shard_size`).
    checkpoint_every: save program state every this many rounds (and at stage ends).
    eval_every: evaluate test accuracy every this many rounds (and at the end).
    progress: 'auto' (bar on a terminal, log lines otherwise), 'bar', 'log', 'none'.
    stop_after_rounds: stop (as if killed) after this many rounds of this invocation;
      for tests of resume.
    simulation_diagnostics: compute and release the diagnostics that ε does not cover
      (per-cluster counts and mean training loss summed in the clear, accuracies
      computed on every client's data); False turns them all off.
    shard_transport: 'file' (each round's shards are written to files that the TFF
      clients' datasets read: the computation ships file names) or 'inline' (the data
      itself is serialized into each round's datasets). With
      privacy.noise_mode='secure' the shards always stay in memory ('inline').
      'resident' (default): the population is laid out once per run
      (`computations.resident_data`) and each round ships only the cohort's row
      numbers and client seeds; shards are gathered inside the client computation.
      Same results as 'file'/'inline'; client seeds are never written (any noise mode).
    restart: remove what an earlier run wrote into root_dir and start over (otherwise
      a root_dir made by another configuration is an error; see computations/run_dir).
  """
  shard_size: Optional[int] = None
  checkpoint_every: int = 5
  eval_every: int = 1
  progress: str = "auto"
  stop_after_rounds: Optional[int] = None
  simulation_diagnostics: bool = True
  shard_transport: str = "resident"
  restart: bool = False


class _Progress:
  """A progress bar with round, accuracy and ETA on a terminal; log lines otherwise."""

  def __init__(self, mode: str, total: int, done: int, label: str):
    if mode == "auto":
      mode = "bar" if sys.stderr.isatty() else "log"
    self.mode, self.total, self.done, self.label = mode, total, done, label
    self.start = time.monotonic()
    self.bar = None
    if mode == "bar":
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=done, desc=label, unit="round",
                      dynamic_ncols=True)

  def update(self, stage: int, rnd: int, acc: float, extra: str = ""):
    self.done += 1
    if self.bar is not None:
      self.bar.set_postfix_str(f"stage {stage} round {rnd} acc {acc:.3f} {extra}")
      self.bar.update(1)
    elif self.mode == "log":
      elapsed = time.monotonic() - self.start
      left = self.total - self.done
      eta = elapsed / max(1, self.done) * left
      print(f"[{self.label}] stage {stage} round {rnd} ({self.done}/{self.total}) "
            f"acc={acc:.4f} {extra} eta={eta:.0f}s", file=sys.stderr, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


#: Released metrics that ε does not cover (simulation diagnostics), by where they go.
UNPROTECTED_METRICS = {
    "metrics.csv": ["test_accuracy", "clustering_accuracy", "train_loss", "count_*"],
    "summary.json": ["final_accuracy", "clustering_accuracy", "init_clustering_accuracy"],
}
_NOTE_UNPROTECTED = (
    "simulation diagnostics, not covered by epsilon: accuracies are computed on every "
    "client's data; train_loss and the per-cluster counts count_* are summed in the "
    "clear. The norm_*/w_*/scale_* columns are functions of the noised aggregate "
    "(covered).")


def _client_seeds(seed: int, stage: int, rnd: int, ids, noise_mode: str = "simulation"
                  ) -> list:
  """Each client's stateless seed (training shuffles and its local-DP noise).

  'simulation': a function of (seed, stage, round, client id), so runs repeat;
  'secure': drawn from os.urandom for every round, kept in memory only.
  """
  if noise_mode == "secure":
    base = int.from_bytes(os.urandom(4), "little") % (2 ** 31 - 1)
    return [(base, int(i)) for i in ids]
  base = (seed * 1_000_003 + stage * 7_919 + rnd) % (2 ** 31 - 1)
  return [(base, int(i)) for i in ids]


def _noise_seed(cfg, stage: int, rnd: int) -> np.ndarray:
  """Central-DP noise seed of a round: from the run seed, or OS entropy (secure)."""
  if cfg.privacy.noise_mode == "secure":
    return agg.random_seed()
  return agg.derived_seed(cfg.seed, stage, rnd)


def _num_shards(cfg, stage: int, rounds: int, population: int, cohort: int,
                shard_size: int) -> int:
  """TFF clients per round of ``stage``: enough for its largest scheduled cohort."""
  largest = sampling_lib.max_cohort_size(cfg.seed, stage, rounds, population, cohort,
                                         cfg.privacy.sampling)
  return max(1, math.ceil(max(largest, 1) / shard_size))


def _pack_round(clients, ids, feature_keys, n_max, shard_size, seeds, file_dir=None,
                num_shards=None, source=None):
  """The round's TFF client datasets: shards of the cohort (file-backed if file_dir),
  padded with empty shards to ``num_shards``; read from the resident ``source`` if given."""
  if source is not None:  # issue 11: resident population, nothing packed
    return source.round_data(ids, seeds, shard_size, num_shards)
  datasets = []
  chunks = shards_lib.split_cohort(list(range(len(ids))), shard_size)
  if num_shards is not None:
    if len(chunks) > num_shards:
      raise ValueError(f"a cohort of {len(ids)} needs {len(chunks)} shards > {num_shards}")
    chunks += [[] for _ in range(num_shards - len(chunks))]
  feature_shapes = {k: clients[0][k].shape[1:] for k in feature_keys}
  for i, chunk in enumerate(chunks):
    members = [clients[ids[j]] for j in chunk]
    shard = shards_lib.pack_shard(members, feature_keys, n_max, num_slots=shard_size,
                                  client_seeds=[seeds[j] for j in chunk],
                                  feature_shapes=feature_shapes)
    datasets.append(cw.shard_to_file_dataset(shard, file_dir, f"shard{i:05d}")
                    if file_dir else cw.shard_to_dataset(shard))
  return datasets


def _confusion_accuracy(confusion: np.ndarray) -> float:
  """Clustering accuracy from a [C_model, C_true] count matrix (Hungarian matching)."""
  total = confusion.sum()
  if total <= 0:
    return float("nan")
  rows, cols = optimize.linear_sum_assignment(-confusion)
  return float(confusion[rows, cols].sum() / total)


class _Evaluator:
  """IFCA-style test accuracy over the whole population in one compiled graph."""

  def __init__(self, pop: population_lib.Population, num_clusters: int,
               train_source=None, test_source=None):
    keys = pop.model.feature_keys
    ids = list(range(pop.size))
    # issue 11: tensors made once (converting the whole population every call cost
    # 0.05 s (FMNIST) to 0.5 s (ViT-S/16 features) per evaluation); with resident
    # layouts they are the layouts' memory maps (no copy; the padding row has mask 0).
    if train_source is not None and test_source is not None:
      self.select = train_source.reader.full_arrays()
      self.test = test_source.reader.full_arrays()
    else:
      self.select = {k: tf.constant(v) for k, v in shards_lib.pack_shard(
          [pop.train[i] for i in ids], keys, pop.n_max_train).items()}
      self.test = {k: tf.constant(v) for k, v in shards_lib.pack_shard(
          [pop.test[i] for i in ids], keys, pop.n_max_test).items()}
    self.true = pop.true_clusters
    model = pop.model

    @tf.function
    def evaluate(params, select, test):
      return local.evaluate_shard(model, params, select, test)

    self._fn = evaluate
    self.num_clusters = num_clusters

  #: Clients per evaluation call (issue 11): the whole population in one call held
  #: C x P x N activations at once (~1 GB for 10,000 ViT-S/16 clients).
  CHUNK = 1024

  def __call__(self, params) -> tuple[float, float]:
    params = {k: tf.constant(v) for k, v in params.items()}
    rows = int(self.select["label"].shape[0])
    correct = total = 0.0
    choices = []
    for a in range(0, rows, self.CHUNK):
      sl = slice(a, min(rows, a + self.CHUNK))
      c, t, ch = self._fn(params, {k: v[sl] for k, v in self.select.items()},
                          {k: v[sl] for k, v in self.test.items()})
      correct, total = correct + float(c), total + float(t)
      choices.append(ch.numpy())
    acc = correct / max(1.0, total)
    choice = np.concatenate(choices)
    clus = (cluster_metrics.clustering_accuracy(choice[:len(self.true)], self.true)
            if self.num_clusters > 1 else float("nan"))
    return acc, clus


def _state_template(param_shapes, num_clusters, update_size):
  return collections.OrderedDict(
      phase=np.int32(0), round=np.int32(0), elapsed=np.float64(0.0),
      weights=collections.OrderedDict(
          (k, np.zeros((num_clusters,) + tuple(s), np.float32))
          for k, s in param_shapes.items()),
      velocity=np.zeros((num_clusters, update_size), np.float32),
      head_kernel=np.zeros(param_shapes["head_kernel"], np.float32),
      head_bias=np.zeros(param_shapes["head_bias"], np.float32),
      init_clustering_accuracy=np.float64(np.nan),
      final_accuracy=np.float64(np.nan), final_clustering_accuracy=np.float64(np.nan))


def _write_json_atomic(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
  os.replace(tmp, path)


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def _finite_or_str(x: float):
  return "inf" if math.isinf(x) else x


def calibrate(cfg) -> accounting.PrivacyReport:
  """Noise multipliers for `cfg` (all zero for epsilon = inf)."""
  return accounting.calibrate_from_config(cfg)


def _log_stderr(m: str) -> None:
  print(m, file=sys.stderr, flush=True)


def run_simulation(cfg, clients_dir: str, root_dir: str,
                   options: ProgramOptions = ProgramOptions(),
                   log: Callable[[str], None] = _log_stderr,
                   population: Optional[population_lib.Population] = None) -> dict:
  """Runs (or resumes) one simulation; returns the summary also written to
  `<root_dir>/summary.json`, or `{"interrupted": True, "signal": signum or None, ...}`
  when a stop was requested (`pina_tff.runtime.signals`, `stop_after_rounds`).

  `population`: the already loaded `load_population(clients_dir, ...)` to reuse (pina-grid
  loads it once per dataset); None loads it here.

  The caller installs the TFF execution context (`computations.context.tff_context`).
  `root_dir` is locked for the call (one run per directory) and must hold nothing or a
  run of the same configuration (`computations.run_dir`).
  """
  with run_dir_lib.open_run_dir(root_dir, log) as root:
    return _run_locked(cfg, clients_dir, root, options, log, population)


def _run_locked(cfg, clients_dir, root_dir, options, log, population=None) -> dict:
  cfg = config_lib.validate(cfg)
  _quiet_logs()
  size = _manifest_population(clients_dir)
  if cfg.stage2.cohort > size or cfg.stage0.cohort > size:
    raise ConfigError(f"cohort ({cfg.stage2.cohort} / stage-0 {cfg.stage0.cohort}) is "
                      f"larger than the population of {size} clients in {clients_dir}")
  if cfg.population != size:
    # The data decides the population; a delta that was only the default 1/P follows it.
    default_delta = math.isclose(cfg.privacy.delta,
                                 config_lib.default_delta(cfg.population))
    cfg = config_lib.validate(dataclasses.replace(
        cfg, population=size,
        privacy=dataclasses.replace(cfg.privacy,
                                    delta=None if default_delta else cfg.privacy.delta)))
  run_dir_lib.check_fingerprint(root_dir, config_lib.to_dict(cfg),
                                run_dir_lib.data_fingerprint(clients_dir),
                                options.restart, log)
  pop = population or population_lib.load_population(clients_dir, cfg.stage1.lora_rank,
                                                     cfg.seed, log)
  _write_json_atomic(os.path.join(root_dir, "config.json"), config_lib.to_dict(cfg))
  report = calibrate(cfg)
  z0, z1, z2 = report.z0, report.z1, report.z2
  model = pop.model
  tail = model.config
  shapes = model.param_shapes()
  num_clusters = methods.num_model_clusters(cfg)
  t0 = cfg.stage0.rounds if cfg.stage0.enabled else 0
  t2 = cfg.stage2.rounds
  # issue 11: shards sized for the largest scheduled (Poisson) cohort, not the expected
  # one: a cohort just over M used to fill one more, mostly padding, shard.
  shard_size = options.shard_size or shards_lib.default_shard_size(max(
      1, sampling_lib.max_cohort_size(cfg.seed, 2, t2, pop.size, cfg.stage2.cohort,
                                      cfg.privacy.sampling) or cfg.stage2.cohort))
  shard0 = options.shard_size or shards_lib.default_shard_size(max(
      1, sampling_lib.max_cohort_size(cfg.seed, 0, t0, pop.size, cfg.stage0.cohort,
                                      cfg.privacy.sampling) or cfg.stage0.cohort))
  n_max = pop.n_max_train
  mean_size = float(np.mean([len(c["label"]) for c in pop.train]))
  expected_steps = cfg.stage2.local_epochs * max(1.0, math.ceil(mean_size /
                                                                cfg.stage2.batch_size))
  num_shards2 = _num_shards(cfg, 2, t2, pop.size, cfg.stage2.cohort, shard_size)
  num_shards0 = _num_shards(cfg, 0, t0, pop.size, cfg.stage0.cohort, shard0)
  spec2 = methods.stage2_spec(cfg, z2, shard_size, n_max, pop.num_true_clusters,
                              expected_steps, options.simulation_diagnostics,
                              num_shards=num_shards2)
  update_size = tm.vector_size(shapes, spec2.local.send_keys)
  plan = accounting.plan_from_config(cfg)
  secure = cfg.privacy.noise_mode == "secure"
  diagnostics = options.simulation_diagnostics

  manager = tff.program.FileProgramStateManager(os.path.join(root_dir, "checkpoints"),
                                                keep_total=2)
  template = _state_template(shapes, num_clusters, update_size)
  saved, version = run_dir_lib.load_latest_readable(manager, template, log)
  st = saved if saved is not None else template
  if saved is not None:
    log(f"resuming from checkpoint: phase {int(st['phase'])}, round {int(st['round'])}")
  else:
    st["head_kernel"] = pop.head["head_kernel"].astype(np.float32)
    st["head_bias"] = pop.head["head_bias"].astype(np.float32)
  csv_manager = tff.program.CSVFileReleaseManager(os.path.join(root_dir, "metrics.csv"),
                                                  key_fieldname="key")
  tb_manager = tff.program.TensorBoardReleaseManager(os.path.join(root_dir, "tensorboard"))
  nan2 = (float("nan"), float("nan"))
  start_time = time.monotonic() - float(st["elapsed"])
  rounds_this_call = 0
  progress = _Progress(options.progress, t0 + t2,
                       _rounds_done(st, t0), f"{cfg.method} eps={cfg.privacy.epsilon}")

  def save(phase, rnd):
    st["phase"], st["round"] = np.int32(phase), np.int32(rnd)
    st["elapsed"] = np.float64(time.monotonic() - start_time)
    asyncio.run(manager.save(st, version=_rounds_done(st, t0) + 10_000 * phase))

  def release(stage, rnd, acc, clus, loss, eps, counts=None, diag=None):
    row = collections.OrderedDict(
        stage=stage, round=rnd, method=cfg.method, test_accuracy=acc,
        clustering_accuracy=clus, train_loss=loss, epsilon_spent=eps,
        wall_s=time.monotonic() - start_time)
    for c in range(max(num_clusters, 1)):
      row[f"count_{c}"] = float(counts[c]) if counts is not None else float("nan")
      for name, key in (("norm", "norms"), ("w", "w"), ("scale", "scale_factors")):
        row[f"{name}_{c}"] = (float(diag[key][c]) if diag is not None and key in diag
                              else float("nan"))
    key = rnd if stage == 0 else t0 + rnd
    asyncio.run(csv_manager.release(row, key=key))
    asyncio.run(tb_manager.release(
        collections.OrderedDict((k, v) for k, v in row.items() if k != "method"),
        key=key))

  def stop_requested() -> bool:
    return (options.stop_after_rounds is not None and
            rounds_this_call >= options.stop_after_rounds)

  def interrupted(phase: int):
    """Between rounds: None, or (after a checkpoint if a signal asked) the stop result."""
    signum = signals.requested()
    if signum is None:
      return {"interrupted": True} if stop_requested() else None
    if _rounds_done(st, t0) + 10_000 * phase not in (asyncio.run(manager.get_versions())
                                                      or []):
      save(phase, int(st["round"]))
    return {"interrupted": True, "signal": signum, "phase": phase,
            "round": int(st["round"])}

  if options.shard_transport not in ("file", "inline", "resident"):
    raise ConfigError(f"shard_transport must be 'file', 'inline' or 'resident', found "
                      f"{options.shard_transport!r}")
  file_dir = None
  source = test_source = None
  if options.shard_transport == "resident":  # issue 11: lay out once, ship row numbers
    source, test_source = resident_data.population_sources(pop)
  # Secure noise mode: client seeds never touch a file (shards stay in memory).
  elif options.shard_transport == "file" and not secure:
    file_dir = sweep.make_shard_dir()
  evaluator = (_Evaluator(pop, num_clusters, source, test_source)
               if diagnostics else None)
  try:
    # ---------------- stage 0: head warm-up (DP-FedAvg on the head) -------------
    if int(st["phase"]) == PHASE_STAGE0:
      if t0 > 0:
        spec0 = methods.stage0_spec(cfg, z0, shard0, n_max, cfg.stage2.batch_size,
                                    diagnostics, num_shards=num_shards0)
        proc0 = lp.build_process(model, spec0, reader=source and source.reader)
        base = rt.init_trainable(tail, cfg.seed, st["head_kernel"], st["head_bias"])
        state = proc0.set_model_weights(proc0.initialize(), lp.model_weights(
            {k: v[None] for k, v in base.items()}))
        for rnd in range(int(st["round"]) + 1, t0 + 1):
          if stop := interrupted(PHASE_STAGE0):
            return stop
          ids = sampling_lib.cohort(cfg.seed, 0, rnd, pop.size, cfg.stage0.cohort,
                                    cfg.privacy.sampling)
          data = _pack_round(pop.train, ids, model.feature_keys, n_max, shard0,
                             _client_seeds(cfg.seed, 0, rnd, ids, cfg.privacy.noise_mode),
                             file_dir, num_shards0, source)
          if agg.has_noise_seed(spec0.aggregator):
            state = agg.with_noise_seed(state, _noise_seed(cfg, 0, rnd))
          out = proc0.next(state, data)
          state = out.state
          # issue 11: the state is already in Python; get_model_weights would be one
          # more TFF call per round (15-40 ms) returning the same values.
          w = state.global_model_weights.trainable
          st["head_kernel"] = np.asarray(w["head_kernel"][0])
          st["head_bias"] = np.asarray(w["head_bias"][0])
          params = {k: np.asarray(v) for k, v in w.items()}
          acc = (evaluator(params)[0] if diagnostics and _due(rnd, t0, options.eval_every)
                 else float("nan"))
          eps = accounting.epsilon_spent_after(
              rnd, "stage0", plan, report.noise_multipliers, report.delta,
              report.accountant, report.threat_model) if z0 > 0 else float("inf")
          loss = float(out.metrics["client_work"]["loss_sum"]) / max(
              1.0, float(out.metrics["client_work"]["num_clients"])) \
              if diagnostics else float("nan")
          release(0, rnd, acc, float("nan"), loss, eps)
          rounds_this_call += 1
          st["round"] = np.int32(rnd)
          progress.update(0, rnd, acc)
          if rnd % options.checkpoint_every == 0 or rnd == t0:
            save(PHASE_STAGE0, rnd)
      save(PHASE_STAGE1, 0)

    # ---------------- stage 1: sketches + k-means, or the baseline's init -------
    if int(st["phase"]) == PHASE_STAGE1:
      if stop := interrupted(PHASE_STAGE1):
        return stop
      base = rt.init_trainable(tail, cfg.seed, st["head_kernel"], st["head_bias"])
      init = {k: np.repeat(v[None], num_clusters, axis=0) for k, v in base.items()}
      if cfg.method == "pina":
        centroids, acc1 = _stage1(cfg, pop, base, z1, n_max, log, diagnostics, source)
        st["init_clustering_accuracy"] = np.float64(acc1)
        delta = tm.unflatten(tf.constant(centroids), shapes, tm.LORA_KEYS,
                             lead_shape=(num_clusters,))
        for k in tm.LORA_KEYS:
          init[k] = init[k] + delta[k].numpy()
      elif cfg.method in methods.CLUSTERED:
        rng = np.random.default_rng([cfg.seed, 1])
        size = tail.lora_size
        scale = cfg.stage1.clip / math.sqrt(size)  # [project choice] norm ~ S1
        delta = tm.unflatten(tf.constant(rng.normal(0, scale, (num_clusters, size)),
                                         tf.float32), shapes, tm.LORA_KEYS,
                             lead_shape=(num_clusters,))
        for k in tm.LORA_KEYS:
          init[k] = init[k] + delta[k].numpy()
      st["weights"] = collections.OrderedDict((k, init[k].astype(np.float32))
                                              for k in shapes)
      save(PHASE_STAGE2, 0)

    # ---------------- stage 2: clustered rounds / baseline rounds ----------------
    if int(st["phase"]) == PHASE_STAGE2:
      proc = lp.build_process(model, spec2, reader=source and source.reader)
      state = proc.initialize()
      state = proc.set_model_weights(state, lp.model_weights(st["weights"]))
      state = _with_finalizer_state(state, int(st["round"]), st["velocity"])
      params = {k: np.asarray(v) for k, v in st["weights"].items()}
      for rnd in range(int(st["round"]) + 1, t2 + 1):
        if stop := interrupted(PHASE_STAGE2):
          return stop
        ids = sampling_lib.cohort(cfg.seed, 2, rnd, pop.size, cfg.stage2.cohort,
                                  cfg.privacy.sampling)
        data = _pack_round(pop.train, ids, model.feature_keys, n_max, shard_size,
                           _client_seeds(cfg.seed, 2, rnd, ids, cfg.privacy.noise_mode),
                           file_dir, num_shards2, source)
        if agg.has_noise_seed(spec2.aggregator):
          state = agg.with_noise_seed(state, _noise_seed(cfg, 2, rnd))
        out = proc.next(state, data)
        state = out.state
        params = {k: np.asarray(v)
                  for k, v in state.global_model_weights.trainable.items()}
        st["weights"] = collections.OrderedDict((k, params[k]) for k in shapes)
        st["velocity"] = np.asarray(state.finalizer["velocity"])
        acc, clus = (evaluator(params) if diagnostics and _due(rnd, t2, options.eval_every)
                     else nan2)
        eps = (accounting.epsilon_spent_after(
            rnd, "stage2", plan, report.noise_multipliers, report.delta,
            report.accountant, report.threat_model) if z2 > 0 else float("inf"))
        cwm = out.metrics["client_work"]
        counts = np.asarray(cwm["cluster_counts"]) if diagnostics else None
        loss = (float(cwm["loss_sum"]) / max(1.0, float(cwm["num_clients"]))
                if diagnostics else float("nan"))
        release(2, rnd, acc, clus, loss, eps, counts, out.metrics["finalizer"])
        rounds_this_call += 1
        st["round"] = np.int32(rnd)
        if not math.isnan(acc):
          st["final_accuracy"] = np.float64(acc)
          st["final_clustering_accuracy"] = np.float64(clus)
        progress.update(2, rnd, acc, f"clu={clus:.2f}" if num_clusters > 1 else "")
        if rnd % options.checkpoint_every == 0 or rnd == t2:
          save(PHASE_STAGE2, rnd)
      if t2 == 0:
        acc, clus = evaluator(params) if diagnostics else nan2
        st["final_accuracy"], st["final_clustering_accuracy"] = acc, clus
      save(PHASE_DONE, t2)
  finally:
    progress.close()
    if file_dir is not None:
      shutil.rmtree(file_dir, ignore_errors=True)

  privacy_summary = _privacy_summary(cfg, report, spec2, num_shards0, num_shards2,
                                     shard0, shard_size, shapes, diagnostics)
  summary = collections.OrderedDict(
      method=cfg.method, method_name=methods.METHOD_NAMES[cfg.method],
      dataset=pop.dataset, epsilon_target=_finite_or_str(cfg.privacy.epsilon),
      epsilon_achieved=_finite_or_str(report.epsilon_achieved), delta=report.delta,
      noise_multipliers={"z0": z0, "z1": z1, "z2": z2},
      local_epsilon1=(_finite_or_str(report.local_epsilon1)
                      if report.local_epsilon1 is not None else None),
      rounds={"stage0": t0, "stage2": t2}, num_clusters=cfg.num_clusters,
      population=pop.size, cohort=cfg.stage2.cohort, shard_size=shard_size,
      aggregator=spec2.aggregator.kind, scaling=spec2.scaling_mode,
      final_accuracy=float(st["final_accuracy"]),
      clustering_accuracy=(float(st["final_clustering_accuracy"])
                           if pop.num_true_clusters > 1 and num_clusters > 1 else None),
      init_clustering_accuracy=(float(st["init_clustering_accuracy"])
                                if cfg.method == "pina" else None),
      wall_clock_s=float(st["elapsed"]), privacy=report.to_dict(),
      config=config_lib.to_dict(cfg), **privacy_summary)
  _write_json_atomic(os.path.join(root_dir, "summary.json"), summary)
  return summary


def _quiet_logs() -> None:
  """Keeps TensorFlow's INFO chatter (checkpoint assets, autograph) off the terminal."""
  if os.environ.get("PINA_TFF_VERBOSE", "") not in ("", "0"):
    return
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  # CRITICAL: TFF's secure-sum factory trips TensorFlow's "Object was never used"
  # check at ERROR level on every build; real failures still raise exceptions.
  tf.get_logger().setLevel(logging.CRITICAL)
  tf.autograph.set_verbosity(0)
  absl_logging.set_verbosity(absl_logging.FATAL)


def _manifest_population(clients_dir: str) -> int:
  """Number of clients listed in `clients_dir`'s manifest (read before any heavy work)."""
  from pina_tff.data import schema  # pylint: disable=g-import-not-at-top
  from pina_tff.errors import DataError  # pylint: disable=g-import-not-at-top
  path = os.path.join(clients_dir, schema.MANIFEST_NAME)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: not found; expected the output directory of pina-prepare "
                    "or pina-embed") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  clients = manifest.get("clients")
  if not isinstance(clients, list) or not clients:
    raise DataError(f"{path}: expected a non-empty 'clients' list")
  return len(clients)


def _due(rnd: int, total: int, every: int) -> bool:
  return rnd % max(1, every) == 0 or rnd == total


def _rounds_done(st, t0: int) -> int:
  phase, rnd = int(st["phase"]), int(st["round"])
  if phase == PHASE_STAGE0:
    return rnd
  if phase == PHASE_STAGE1:
    return t0
  return t0 + rnd


def _with_finalizer_state(state, rnd: int, velocity):
  """The learning-process state with the finalizer's round and momentum restored."""
  fin = collections.OrderedDict(round=np.int32(rnd),
                                velocity=np.asarray(velocity, np.float32))
  return tff.learning.templates.LearningAlgorithmState(
      global_model_weights=state.global_model_weights, distributor=state.distributor,
      client_work=state.client_work, aggregator=state.aggregator, finalizer=fin)


def _privacy_summary(cfg, report, spec2, num_shards0, num_shards2, shard0, shard2,
                     shapes, diagnostics) -> dict:
  """The privacy fields of summary.json (see the module docstring)."""
  nominal = {}
  for stage, kind, z, clip, shard, n, keys, clusters in (
      ("stage0", cfg.stage2.aggregator, report.z0, cfg.stage0.clip, shard0, num_shards0,
       tm.HEAD_KEYS, 1),
      ("stage2", spec2.aggregator.kind, report.z2, cfg.stage2.clip, shard2, num_shards2,
       spec2.local.send_keys, spec2.local.num_clusters)):
    if kind == "ddp" and z > 0:
      dim = clusters * tm.vector_size(shapes, keys)
      nominal[stage] = ddp_lib.nominal_for_effective(z, clip, shard, n, dim,
                                                     cfg.stage2.ddp_bits)
  p = cfg.privacy
  return dict(
      epsilon_release=_finite_or_str(report.epsilons["release"]),
      epsilon_server=_finite_or_str(report.epsilons["server"]),
      threat_model_calibrated=report.threat_model, sampling=p.sampling,
      noise_mode=p.noise_mode, accountant=report.accountant,
      # Bitwise-repeatable noise: simulation mode, and no finite-ε TFF distributed DP
      # (whose rounding and discrete Gaussian noise cannot be seeded; docs/privacy.md).
      noise_reproducible=(p.noise_mode == "simulation" and not any(
          k == "ddp" and z > 0 for k, z in ((cfg.stage2.aggregator, report.z0),
                                            (spec2.aggregator.kind, report.z2)))),
      local_epsilon1_sensitivity="2*S1 (any two inputs of one client)",
      local_epsilon_ifca_ldp=(_finite_or_str(report.local_epsilon2)
                              if report.local_epsilon2 is not None else None),
      max_participations=report.max_participations,
      ddp_nominal_noise_multipliers=nominal,
      tff_shards_per_round={"stage0": num_shards0, "stage2": num_shards2},
      simulation_diagnostics=diagnostics,
      released_outside_epsilon=(dict(UNPROTECTED_METRICS, note=_NOTE_UNPROTECTED)
                                if diagnostics else {}))


def _stage1(cfg, pop, base, z1, n_max, log, diagnostics=True, source=None):
  """Sketch computation over M1 clients + server k-means. Returns (centroids, acc)."""
  s1 = cfg.stage1
  m1 = min(s1.num_sketch_clients, pop.size)
  ids = sampling_lib.sketch_cohort(cfg.seed, pop.size, m1)
  model = pop.model
  shard_size = shards_lib.default_shard_size(m1)
  spec = local.LocalSpec(num_clusters=1, local_epochs=s1.local_epochs,
                         batch_size=cfg.stage2.batch_size, learning_rate=s1.lr,
                         train_keys=tm.LORA_KEYS + (tm.HEAD_KEYS if s1.train_head else ()),
                         send_keys=tm.LORA_KEYS)
  comp = stage1_lib.build_sketch_computation(model, spec, s1.top_k, s1.clip, z1,
                                             shard_size, n_max,
                                             reader=source and source.reader)
  data = _pack_round(pop.train, ids, model.feature_keys, n_max, shard_size,
                     _client_seeds(cfg.seed, 1, 0, ids, cfg.privacy.noise_mode),
                     source=source)
  weights = lp.model_weights({k: v[None] for k, v in base.items()})
  log(f"stage 1: {m1} clients send sketches (top-k={s1.top_k}, clip={s1.clip}, z1={z1:.3f})")
  sketches = stage1_lib.collect_sketches(comp(weights, data))
  post_k = s1.top_k if s1.post_process else None
  centroids, labels = kmeans_lib.kmeans_init(sketches, cfg.num_clusters, cfg.seed,
                                             n_init=s1.kmeans_restarts,
                                             post_process_k=post_k)
  if not diagnostics:
    return centroids, float("nan")
  acc = cluster_metrics.clustering_accuracy(labels, pop.true_clusters[ids])
  log(f"stage 1: k-means clustering accuracy on the sketching clients: {acc:.3f}")
  return centroids, acc
