"""The experiment program: stage 0 -> stage 1 -> stage 2 (or a baseline), resumable.

`run_simulation` is a short sequence of stages. Stages 0 and 2 are the same round loop
(`computations.round_loop.run_rounds`) with different pieces; a round's client values
come from a `computations.round_data.RoundDataSource`; the program state is
`computations.program_state`, metrics go out through `computations.release`, and the
summary is `computations.summary`. What a method is comes from
`pina_tff.method_table`.

Built on `tff.program`: program state (cluster models, finalizer state, stage-1
result, progress) is saved with a `FileProgramStateManager` every N rounds and at
every stage boundary; per-round metrics are released to a `CSVFileReleaseManager`
(`metrics.csv`, which drops rows past the resumed round by itself) and to
TensorBoard (`computations.release.TensorBoardRelease`, which removes them too). Every round's randomness (cohort, client seeds) is a
function of (seed, stage, round), so a run killed at any moment and started again
with the same command continues from its last checkpoint and, where the aggregator
adds no noise (epsilon = inf), ends with exactly the metrics of an uninterrupted run.
Noise (`cfg.privacy.noise_mode`): in 'simulation' mode the local-DP noise (stage-1
sketches, IFCA+LDP) and the central-DP noise are functions of (seed, stage, round), so
with `aggregator='central'` or `'ddp'` two runs with the same seed, and a resumed
run, are identical at any ε. Distributed DP runs as `computations.seeded_ddp` (TFF's
mechanism with every draw keyed: each TFF client's rounding and noise from its
shard's key, the rotation from the round's seed), not TFF's factory, whose rounding
seeds itself from `tf.timestamp()` and whose noise is unseeded. Every slot of every
shard has a key of its own (padding slots too: `_padding_seeds`). In 'secure' mode
every key and seed comes from `os.urandom` and is never written (shards stay in
memory).

Privacy wiring (`docs/privacy.md`): cohorts of stages 0 and 2 follow
`cfg.privacy.sampling` (`pina_tff.simulation.sampling`, Poisson by default), the mean
keeps the fixed denominator qP, and each stage runs a constant number of TFF shards
(enough for its largest cohort; empty shards send zero) so the distributed-DP noise
shares per round stay constant. `summary.json` reports ε under both threat models,
which one the noise was calibrated to, δ, the sampling scheme, every noise multiplier,
the local ε's, the noise mode, and the released metrics that ε does not cover.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import sys
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from computations import aggregators as agg
from computations import finalizers as fin
from computations import learning_process as lp
from computations import methods
from computations import resident_data
from computations import program_state as ps
from computations import release as release_lib
from computations import round_data as rd
from computations import round_loop as loop
from computations import run_dir as run_dir_lib
from computations import stage1 as stage1_lib
from computations import summary as summary_lib
from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff import rng_streams
from pina_tff.clustering import kmeans_init as kmeans_lib
from pina_tff.clustering import metrics as cluster_metrics
from pina_tff.errors import ConfigError
from pina_tff.errors import DataError
from pina_tff.models import reduced_tail as rt
from pina_tff.privacy import accounting
from pina_tff.runtime import atomic
from pina_tff.runtime import signals
from pina_tff.simulation import population as population_lib
from pina_tff.simulation import sampling as sampling_lib
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards as shards_lib

PHASE_STAGE0, PHASE_STAGE1, PHASE_STAGE2, PHASE_DONE = (
    ps.PHASE_STAGE0, ps.PHASE_STAGE1, ps.PHASE_STAGE2, ps.PHASE_DONE)
#: The accountant's stage name of each phase (the execution log's keys).
STAGE_KEYS = {PHASE_STAGE0: "stage0", PHASE_STAGE1: "stage1", PHASE_STAGE2: "stage2"}
UNPROTECTED_METRICS = release_lib.UNPROTECTED_METRICS


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
    shard_transport: 'resident' (default: the population is laid out once per
      process and each round ships only the cohort's row numbers and client seeds;
      the client computation gathers its shard), 'file' (each round's shards are
      packed and written to files that the TFF clients' datasets read) or 'inline'
      (packed and serialized into each round's datasets). Same results whichever;
      see `computations.round_data`. With privacy.noise_mode='secure' packed shards
      stay in memory ('inline'); resident rounds never write client seeds anyway.
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


def _client_seeds(seed: int, stage: int, rnd: int, ids, noise_mode: str = "simulation"
                  ) -> np.ndarray:
  """Each client's 128-bit key int64 [n, 2] (training shuffles and its local-DP noise,
  split into named sub-streams in the graph: `pina_tff.training.local.stream_key`).

  'simulation': `rng_streams.client_keys` of (seed, stage, round, client id), so runs
  repeat; 'secure': 16 bytes of os.urandom per client per round (`secure_keys`), kept
  in memory only.
  """
  if noise_mode == "secure":
    return rng_streams.secure_keys(len(ids))
  return rng_streams.client_keys(seed, stage, rnd, ids)


def _padding_seeds(seed: int, stage: int, rnd: int, n: int,
                   noise_mode: str = "simulation") -> np.ndarray:
  """The 128-bit keys int64 [n, 2] of a round's n padding slots (an empty slot's key
  keys its shard's distributed-DP share when it is the shard's first slot):
  `rng_streams.padding_keys` of (seed, stage, round, slot), or os.urandom (secure)."""
  if noise_mode == "secure":
    return rng_streams.secure_keys(n)
  return rng_streams.padding_keys(seed, stage, rnd, n)


def _noise_seed(cfg, stage: int, rnd: int,
                stream: str = rng_streams.CENTRAL_NOISE) -> np.ndarray:
  """The aggregator seed of a round (central DP's noise seed; `rng_streams.DDP_ROTATION`:
  seeded DDP's rotation seed): from the run seed, or OS entropy (secure)."""
  if cfg.privacy.noise_mode == "secure":
    return agg.random_seed()
  return agg.derived_seed(cfg.seed, stage, rnd, stream)


def _num_shards(cfg, key: int, stage: int, rounds: int, population: int, cohort: int,
                shard_size: int) -> int:
  """TFF clients per round of ``stage``: enough for its largest scheduled cohort
  (``key``: the run's cohort key)."""
  largest = sampling_lib.max_cohort_size(key, stage, rounds, population, cohort,
                                         cfg.privacy.sampling)
  return max(1, math.ceil(max(largest, 1) / shard_size))


class _Evaluator:
  """IFCA-style held-out accuracy over the whole population, in compiled chunks.

  Each client's train loss picks its cluster model (argmin), which is scored on its
  held-out examples of `split` (the oracle: its true cluster's model). A diagnostic
  computed on every client's data, outside ε.

  Args:
    pop: the population.
    num_clusters: models per round.
    resident: read the population's resident layouts (`resident_data`: memory maps,
      no copy) instead of packing it once here.
    split: 'val' or 'test' (`RunConfig.eval_split`).
    score_true: score each client with its true cluster's model (the oracle).
  """

  #: Clients per compiled call: the whole population at once would hold C x P x N
  #: activations (~1 GB for 10,000 ViT-S/16 clients).
  CHUNK = 1024

  def __init__(self, pop: population_lib.Population, num_clusters: int,
               resident: bool = False, split: str = "test", score_true: bool = False):
    held_out = pop.held_out(split)
    if resident:
      train, test = resident_data.population_sources(pop, split)
      self.select, self.test = train.reader.full_arrays(), test.reader.full_arrays()
    else:  # tensors made once (not per call)
      keys, ids = pop.model.feature_keys, list(range(pop.size))
      self.select = {k: tf.constant(v) for k, v in shards_lib.pack_shard(
          [pop.train[i] for i in ids], keys, pop.n_max_train).items()}
      self.test = {k: tf.constant(v) for k, v in shards_lib.pack_shard(
          [held_out[i] for i in ids], keys, pop.n_max_held_out(split)).items()}
    self.true = pop.true_clusters
    model = pop.model

    @tf.function
    def evaluate(params, select, test):
      return local.evaluate_shard(model, params, select, test, score_true=score_true)

    self._fn = evaluate
    self.num_clusters = num_clusters

  def __call__(self, params) -> tuple[float, float]:
    """(test accuracy, clustering accuracy or nan) of the C models `params`."""
    params = {k: tf.constant(v) for k, v in params.items()}
    rows = int(self.select["label"].shape[0])  # resident layouts add a padding row
    correct = total = 0.0
    choices = []
    for a in range(0, rows, self.CHUNK):
      part = slice(a, min(rows, a + self.CHUNK))
      c, t, ch = self._fn(params, {k: v[part] for k, v in self.select.items()},
                          {k: v[part] for k, v in self.test.items()})
      correct, total = correct + float(c), total + float(t)
      choices.append(ch.numpy())
    choice = np.concatenate(choices)[:len(self.true)]
    clus = (cluster_metrics.clustering_accuracy(choice, self.true)
            if self.num_clusters > 1 else float("nan"))
    return correct / max(1.0, total), clus


def write_json_atomic(path: str, obj) -> None:
  """Writes ``obj`` as sorted, indented JSON to ``path`` (`pina_tff.runtime.atomic`);
  NumPy scalars and arrays become numbers and lists."""
  atomic.write_json(path, obj, default=_json_default)


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def calibrate(cfg, cohort_key: Optional[int] = None) -> accounting.PrivacyReport:
  """Noise multipliers for `cfg` (all zero for epsilon = inf) on the cohort schedule of
  ``cohort_key`` (None: ``cfg.seed``)."""
  return accounting.calibrate_from_config(cfg, cohort_key)


def _log_stderr(m: str) -> None:
  print(m, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Everything a run derives once from its config and population."""
  cfg: config_lib.RunConfig
  pop: population_lib.Population
  options: ProgramOptions
  report: accounting.PrivacyReport
  accounting_plan: accounting.AccountingPlan
  num_models: int
  t0: int
  t2: int
  layout0: rd.StageLayout
  layout2: rd.StageLayout
  spec2: lp.ProcessSpec
  #: Key of the cohort schedule: cfg.seed in simulation mode, the secret key of the
  #: run's private state in secure mode (never logged or written elsewhere).
  cohort_key: int = dataclasses.field(default=0, repr=False)

  @property
  def diagnostics(self) -> bool:
    return self.options.simulation_diagnostics

  @property
  def shapes(self) -> dict:
    return self.pop.model.param_shapes()

  def layout_summary(self) -> dict:
    """{'stage0' | 'stage2': (shard size, TFF shards per round)}."""
    return {"stage0": (self.layout0.shard_size, self.layout0.num_shards),
            "stage2": (self.layout2.shard_size, self.layout2.num_shards)}


def _default_shard_size(cfg, key: int, stage: int, rounds: int, population: int,
                        cohort: int) -> int:
  """Shards sized for the stage's largest scheduled (Poisson) cohort, not the expected
  one: a cohort just over the expected size would otherwise fill one more shard of
  mostly padding."""
  largest = sampling_lib.max_cohort_size(key, stage, rounds, population, cohort,
                                         cfg.privacy.sampling)
  return shards_lib.default_shard_size(max(1, largest or cohort))


def _check_oracle(cfg, pop) -> None:
  """ConfigError unless the oracle's population has known true clusters that fit C."""
  if not method_table.get(cfg.method).true_clusters:
    return
  true = np.asarray(pop.true_clusters)
  if true.size == 0 or (true < 0).any() or true.max() >= cfg.num_clusters:
    raise ConfigError(
        f"method 'oracle' trains each client's true cluster: it needs every client's "
        f"cluster known and below num_clusters={cfg.num_clusters}; {pop.dataset!r} has "
        f"{int((true < 0).sum())} unknown and clusters up to {int(true.max(initial=-1))}")


def _make_plan(cfg, pop, options: ProgramOptions, cohort_key: int) -> _Plan:
  """The run's derived quantities: ε calibration, shard layouts, stage-2 spec."""
  rd.check_transport(options.shard_transport)
  _check_oracle(cfg, pop)
  report = calibrate(cfg, cohort_key)
  t0 = cfg.stage0.rounds if cfg.stage0.enabled else 0
  t2 = cfg.stage2.rounds
  shard2 = options.shard_size or _default_shard_size(cfg, cohort_key, 2, t2, pop.size,
                                                     cfg.stage2.cohort)
  shard0 = options.shard_size or _default_shard_size(cfg, cohort_key, 0, t0, pop.size,
                                                     cfg.stage0.cohort)
  layout2 = rd.StageLayout(shard2, _num_shards(cfg, cohort_key, 2, t2, pop.size,
                                               cfg.stage2.cohort, shard2))
  layout0 = rd.StageLayout(shard0, _num_shards(cfg, cohort_key, 0, t0, pop.size,
                                               cfg.stage0.cohort, shard0))
  mean_size = float(np.mean([len(c["label"]) for c in pop.train]))
  expected_steps = cfg.stage2.local_epochs * max(1.0, math.ceil(mean_size /
                                                                cfg.stage2.batch_size))
  spec2 = methods.stage2_spec(cfg, report.z2, shard2, pop.n_max_train,
                              pop.num_true_clusters, expected_steps,
                              options.simulation_diagnostics,
                              num_shards=layout2.num_shards)
  return _Plan(cfg=cfg, pop=pop, options=options, report=report,
               accounting_plan=accounting.plan_from_config(cfg, cohort_key),
               num_models=method_table.num_models(cfg.method, cfg.num_clusters),
               t0=t0, t2=t2, layout0=layout0, layout2=layout2, spec2=spec2,
               cohort_key=cohort_key)


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
  """The stages of one run in a locked run directory."""
  _quiet_logs()
  cfg = _config_for_population(cfg, clients_dir)
  run_dir_lib.check_fingerprint(root_dir, config_lib.to_dict(cfg),
                                run_dir_lib.data_fingerprint(clients_dir),
                                options.restart, log)
  pop = population or population_lib.load_population(clients_dir, cfg.stage1.lora_rank,
                                                     cfg.seed, log)
  if pop.model.config.width != cfg.model_width:
    raise DataError(f"{clients_dir}: the model is {pop.model.config.width} wide, but "
                    f"its manifest's backbone says {cfg.model_width}")
  write_json_atomic(os.path.join(root_dir, "config.json"), config_lib.to_dict(cfg))
  # Secure mode: the cohort schedule's secret key, from (or new in) the run's private
  # state; simulation mode: the seed.
  cohort_key = run_dir_lib.cohort_key(root_dir, cfg.privacy.noise_mode, cfg.seed)
  plan = _make_plan(cfg, pop, options, cohort_key)
  run = _Run(plan, root_dir, log)
  stop = run.execute()
  if stop is not None:
    return stop
  # ε as the server saw it: the calibrated noise accounted with every computation
  # that ran more than once (a round re-run after a kill).
  report = accounting.reaccount(plan.report, run.accounting_plan(),
                                cfg.privacy.local_delta)
  summary = summary_lib.summary(cfg, report, plan.spec2, pop, run.state.values,
                                plan.layout_summary(), plan.shapes, plan.diagnostics)
  write_json_atomic(os.path.join(root_dir, "summary.json"), summary)
  return summary


def _config_for_population(cfg, clients_dir: str):
  """`cfg` validated, with the population and model width the data in `clients_dir`
  has (facts of the data, not settings: `population_lib.data_facts`).

  Raises:
    ConfigError: a cohort larger than that population, or an invalid config.
    DataError: no readable manifest in `clients_dir`.
  """
  config_lib.validate(cfg)
  facts = population_lib.data_facts(clients_dir)
  size = facts.num_clients
  for where, cohort, runs in (("stage2.cohort", cfg.stage2.cohort, True),
                              ("stage0.cohort", cfg.stage0.cohort,
                               cfg.stage0.enabled and cfg.stage0.rounds > 0)):
    if runs and cohort > size:
      raise ConfigError(f"{where}: expected at most the population of {size} clients "
                        f"in {clients_dir}, found {cohort}")
  if facts.model_width != cfg.model_width:
    cfg = dataclasses.replace(cfg, model_width=facts.model_width)
  # The data decides the population and width; defaults (δ) are resolved for it, once.
  return config_lib.resolve(cfg, population=size)


class _Run:
  """One invocation of a run: its state, data, metrics and the three stages.

  Args:
    plan: what the run computes (`_Plan`).
    root_dir: the locked run directory.
    log: progress messages.
  """

  def __init__(self, plan: _Plan, root_dir: str, log: Callable[[str], None]):
    cfg, pop = plan.cfg, plan.pop
    self.plan, self.log = plan, log
    update_size = tm.vector_size(plan.shapes, plan.spec2.local.send_keys)
    self.state = ps.ProgramState(
        root_dir, ps.state_template(plan.shapes, plan.num_models, update_size),
        plan.t0, log)
    st = self.state.values
    if self.state.resumed:
      log(f"resuming from checkpoint: phase {self.state.phase}, round {self.state.round}")
    else:
      st["head_kernel"] = pop.head["head_kernel"].astype(np.float32)
      st["head_bias"] = pop.head["head_bias"].astype(np.float32)
    self.release = release_lib.MetricsRelease(root_dir, cfg.method, plan.num_models,
                                              plan.t0, self.state.wall_s)
    # Every noisy computation the server starts, recorded before it runs (counted in
    # ε when a round runs again after a kill: docs/privacy.md, "Resume").
    self.executions = ps.ExecutionLog(root_dir)
    self.evaluator: Optional[_Evaluator] = None  # made with the data source
    self.rounds_this_call = 0
    self.progress = loop.Progress(plan.options.progress, plan.t0 + plan.t2,
                                  self.state.rounds_done(),
                                  f"{cfg.method} eps={cfg.privacy.epsilon}")
    self.data: Optional[rd.RoundDataSource] = None

  def execute(self) -> Optional[dict]:
    """Runs the stages not done yet; None when finished, else the stop result."""
    self.data = _round_data_source(self.plan, self._sketch_shard_size())
    if self.plan.diagnostics:
      self.evaluator = _Evaluator(
          self.plan.pop, self.plan.num_models, resident=self.data.reader is not None,
          split=self.plan.cfg.eval_split,
          score_true=method_table.get(self.plan.cfg.method).true_clusters)
    try:
      with signals.rounds_running():  # a signal now waits for the end of the round
        for phase, stage in ((PHASE_STAGE0, self._stage0), (PHASE_STAGE1, self._stage1),
                             (PHASE_STAGE2, self._stage2)):
          if self.state.phase == phase:
            stop = stage()
            if stop is not None:
              return stop
      return None
    finally:
      self.progress.close()
      self.data.close()
      self.release.close()

  # ------------------------------------------------------------ between rounds
  def _stop(self, phase: int) -> Optional[dict]:
    """Between rounds: None, or (after a checkpoint if a signal asked) the stop result."""
    signum = signals.requested()
    if signum is None:
      limit = self.plan.options.stop_after_rounds
      return ({"interrupted": True}
              if limit is not None and self.rounds_this_call >= limit else None)
    self.state.save_unless_saved(phase)
    return {"interrupted": True, "signal": signum, "phase": phase,
            "round": self.state.round}

  def _hooks(self, phase: int, total: int) -> loop.RoundHooks:
    def after_round(r: loop.RoundResult) -> None:
      st = self.state.values
      self.rounds_this_call += 1
      st["round"] = np.int32(r.rnd)
      if phase == PHASE_STAGE2 and not math.isnan(r.accuracy):
        st["final_accuracy"] = np.float64(r.accuracy)
        st["final_clustering_accuracy"] = np.float64(r.clustering)
      extra = (f"clu={r.clustering:.2f}"
               if phase == PHASE_STAGE2 and self.plan.num_models > 1 else "")
      self.progress.update(r.stage, r.rnd, r.accuracy, extra)
      if r.rnd % self.plan.options.checkpoint_every == 0 or r.rnd == total:
        self.state.save(phase, r.rnd)

    stage_key = STAGE_KEYS[phase]
    return loop.RoundHooks(stop=lambda: self._stop(phase), release=self.release,
                           after_round=after_round,
                           started=lambda rnd: self.executions.start(stage_key, rnd))

  def accounting_plan(self) -> accounting.AccountingPlan:
    """The run's accounting plan with every computation started so far that ran more
    than once (`computations.program_state.ExecutionLog`)."""
    return dataclasses.replace(self.plan.accounting_plan,
                               executions=self.executions.repeated())

  # ------------------------------------------------------------ round pieces
  def _evaluate(self, total: int, clustering: bool):
    def evaluate(rnd: int, params: dict) -> tuple:
      if not (self.plan.diagnostics and
              loop.due(rnd, total, self.plan.options.eval_every)):
        return loop.nan_pair()
      acc, clus = self.evaluator(params)
      return (acc, clus) if clustering else (acc, float("nan"))
    return evaluate

  def _epsilon(self, stage_key: str, z: float):
    p = self.plan
    def epsilon(rnd: int) -> float:
      if not z > 0:
        return float("inf")
      return accounting.epsilon_spent_after(
          rnd, stage_key, self.accounting_plan(), p.report.noise_multipliers,
          p.report.delta, p.report.accountant, p.report.threat_model)
    return epsilon

  def _measurements(self, with_finalizer: bool):
    diagnostics = self.plan.diagnostics
    def measurements(metrics) -> tuple:
      cwm = metrics["client_work"]
      loss = (float(cwm["loss_sum"]) / max(1.0, float(cwm["num_clients"]))
              if diagnostics else float("nan"))
      nonfinite = float(cwm["num_nonfinite"]) if diagnostics else float("nan")
      if not with_finalizer:
        return loss, None, None, nonfinite
      counts = np.asarray(cwm["cluster_counts"]) if diagnostics else None
      return loss, counts, metrics["finalizer"], nonfinite
    return measurements

  def _round_stage(self, stage: int, total: int, process, spec, cohort: int, keep,
                   z: float) -> loop.RoundStage:
    """The pieces of stage 0 or stage 2 (they differ only in what is passed here)."""
    cfg = self.plan.cfg
    mode = cfg.privacy.noise_mode
    layout = self.plan.layout0 if stage == 0 else self.plan.layout2
    slots = layout.num_shards * layout.shard_size
    stream = (rng_streams.DDP_ROTATION if spec.aggregator.kind == "ddp"
              else rng_streams.CENTRAL_NOISE)
    return loop.RoundStage(
        stage=stage, total_rounds=total, process=process,
        cohort=lambda rnd: sampling_lib.cohort(self.plan.cohort_key, stage, rnd,
                                               self.plan.pop.size,
                                               cohort, cfg.privacy.sampling),
        client_seeds=lambda rnd, ids: _client_seeds(cfg.seed, stage, rnd, ids, mode),
        padding_seeds=lambda rnd, n: _padding_seeds(cfg.seed, stage, rnd, slots - n,
                                                    mode),
        noise_seed=((lambda rnd: _noise_seed(cfg, stage, rnd, stream))
                    if agg.has_noise_seed(spec.aggregator) else None),
        keep=keep, evaluate=self._evaluate(total, clustering=stage == 2),
        epsilon=self._epsilon(f"stage{stage}", z),
        measurements=self._measurements(with_finalizer=stage == 2))

  # ------------------------------------------------------------ stages
  def _stage0(self) -> Optional[dict]:
    """Head warm-up: DP-FedAvg on the head through the same DP aggregator."""
    p, st = self.plan, self.state.values
    if p.t0 > 0:
      spec0 = methods.stage0_spec(p.cfg, p.report.z0, p.layout0.shard_size,
                                  p.pop.n_max_train, p.cfg.stage2.batch_size,
                                  p.diagnostics, num_shards=p.layout0.num_shards)
      proc0 = lp.build_process(p.pop.model, spec0, reader=self.data.reader)
      base = rt.init_trainable(p.pop.model.config, p.cfg.seed, st["head_kernel"],
                               st["head_bias"])
      state = proc0.set_model_weights(proc0.initialize(), lp.model_weights(
          {k: v[None] for k, v in base.items()}))

      def keep(rnd, state):
        del rnd
        w = state.global_model_weights.trainable  # (no extra TFF call per round)
        st["head_kernel"] = np.asarray(w["head_kernel"][0])
        st["head_bias"] = np.asarray(w["head_bias"][0])
        return {k: np.asarray(v) for k, v in w.items()}

      stage = self._round_stage(0, p.t0, proc0, spec0, p.cfg.stage0.cohort, keep,
                                p.report.z0)
      _, stop = loop.run_rounds(stage, state, self.state.round + 1, self.data,
                                self._hooks(PHASE_STAGE0, p.t0))
      if stop is not None:
        return stop
    self.state.save(PHASE_STAGE1, 0)
    return None

  def _stage1(self) -> Optional[dict]:
    """Stage-2 start: sketches + k-means (PINA), random offsets, or one shared model."""
    stop = self._stop(PHASE_STAGE1)
    if stop is not None:
      return stop
    p, st = self.plan, self.state.values
    base = rt.init_trainable(p.pop.model.config, p.cfg.seed, st["head_kernel"],
                             st["head_bias"])
    init = {k: np.repeat(v[None], p.num_models, axis=0) for k, v in base.items()}
    offsets = None
    method = method_table.get(p.cfg.method)
    if method.init == method_table.INIT_STAGE1:
      offsets, acc1, cos1 = self._sketch_init(base)
      st["init_clustering_accuracy"] = np.float64(acc1)
      st["init_centroid_cosine"] = np.float64(cos1)
    elif method.init == method_table.INIT_RANDOM:
      offsets = _random_offsets(p.cfg, p.pop.model.config.lora_size, p.num_models)
    if offsets is not None:
      delta = tm.unflatten(tf.constant(offsets, tf.float32), p.shapes, tm.LORA_KEYS,
                           lead_shape=(p.num_models,))
      for k in tm.LORA_KEYS:
        init[k] = init[k] + delta[k].numpy()
    st["weights"] = _ordered({k: init[k].astype(np.float32) for k in p.shapes}, p.shapes)
    self.state.save(PHASE_STAGE2, 0)
    return None

  def _stage2(self) -> Optional[dict]:
    """Clustered rounds (or the baseline's rounds) from the stage-1 start."""
    p, st = self.plan, self.state.values
    proc = lp.build_process(p.pop.model, p.spec2, reader=self.data.reader)
    state = proc.set_model_weights(proc.initialize(), lp.model_weights(st["weights"]))
    state = state._replace(finalizer=fin.finalizer_state(self.state.round,
                                                         st["velocity"]))

    def keep(rnd, state):
      del rnd
      params = {k: np.asarray(v) for k, v in state.global_model_weights.trainable.items()}
      st["weights"] = _ordered(params, p.shapes)
      st["velocity"] = np.asarray(state.finalizer["velocity"])
      return params

    stage = self._round_stage(2, p.t2, proc, p.spec2, p.cfg.stage2.cohort, keep,
                              p.report.z2)
    _, stop = loop.run_rounds(stage, state, self.state.round + 1, self.data,
                              self._hooks(PHASE_STAGE2, p.t2))
    if stop is not None:
      return stop
    if p.t2 == 0:
      params = {k: np.asarray(v) for k, v in st["weights"].items()}
      acc, clus = self.evaluator(params) if p.diagnostics else loop.nan_pair()
      st["final_accuracy"], st["final_clustering_accuracy"] = acc, clus
    self.state.save(PHASE_DONE, p.t2)
    return None

  # ------------------------------------------------------------ stage 1
  def _sketch_shard_size(self) -> int:
    s1, size = self.plan.cfg.stage1, self.plan.pop.size
    return shards_lib.default_shard_size(min(s1.num_sketch_clients, size))

  def _sketch_init(self, base):
    """Sketches over M1 clients + server k-means. Returns (centroids, k-means accuracy,
    mean matched centroid cosine; both NaN without diagnostics)."""
    p = self.plan
    cfg, pop, s1 = p.cfg, p.pop, p.cfg.stage1
    m1 = min(s1.num_sketch_clients, pop.size)
    ids = sampling_lib.sketch_cohort(p.cohort_key, pop.size, m1)
    spec = local.LocalSpec(num_clusters=1, local_epochs=s1.local_epochs,
                           batch_size=cfg.stage2.batch_size, learning_rate=s1.lr,
                           train_keys=tm.LORA_KEYS + (tm.HEAD_KEYS if s1.train_head
                                                      else ()),
                           send_keys=tm.LORA_KEYS)
    z1 = p.report.z1
    reader = self.data.reader
    # One set of client keys for both passes: the diagnostic pass below must sketch
    # the same local training (in secure mode each call would draw fresh keys).
    seeds = _client_seeds(cfg.seed, 1, 0, ids, cfg.privacy.noise_mode)

    def sketch_results(noise_multiplier: float):
      comp = stage1_lib.build_sketch_computation(
          pop.model, spec, s1.top_k, s1.clip, noise_multiplier, self._sketch_shard_size(),
          pop.n_max_train, reader=reader,
          noise_on_kept_only=s1.noise_positions == "released")
      data = self.data.round_data(1, 0, ids, seeds)
      weights = lp.model_weights({k: v[None] for k, v in base.items()})
      return comp(weights, data)

    noise_on = ("kept entries only: positions released outside epsilon"
                if s1.noise_positions == "released" else "every coordinate")
    self.log(f"stage 1: {m1} clients send sketches (top-k={s1.top_k}, clip={s1.clip}, "
             f"z1={z1:.3f}, noise on {noise_on})")
    self.executions.start("stage1", 1)
    results = sketch_results(z1)
    sketches = stage1_lib.collect_sketches(results)
    if p.diagnostics:
      self.log(f"stage 1: nonfinite_zeroed={stage1_lib.count_nonfinite(results)} "
               "sketch(es) had an inf/NaN entry and were sent as zeros + noise "
               "(simulation diagnostic)")
    centroids, labels = kmeans_lib.kmeans_init(
        sketches, cfg.num_clusters, cfg.seed, n_init=s1.kmeans_restarts,
        post_process_k=s1.top_k if s1.post_process else None,
        spectral_dims=s1.spectral_dims)
    if s1.centroid_norm_bound is not None:
      centroids = kmeans_lib.bound_centroid_norms(centroids, s1.centroid_norm_bound)
    if not p.diagnostics:
      return centroids, float("nan"), float("nan")
    acc = cluster_metrics.clustering_accuracy(labels, pop.true_clusters[ids])
    # Simulation-only diagnostic: the same clients' noise-free sketches (never sent).
    clean = sketches if z1 == 0 else stage1_lib.collect_sketches(sketch_results(0.0))
    cosines = cluster_metrics.centroid_cosines(centroids, clean, pop.true_clusters[ids])
    cosine = float(np.nanmean(cosines)) if np.isfinite(cosines).any() else float("nan")
    self.log(f"stage 1: k-means clustering accuracy on the sketching clients: {acc:.3f}; "
             f"cosine of the centroids to the true clusters' noise-free mean sketches: "
             f"{np.round(cosines, 3).tolist()} (mean {cosine:.3f})")
    return centroids, acc, cosine


def _round_data_source(plan: _Plan, sketch_shard_size: int) -> rd.RoundDataSource:
  """The run's `RoundDataSource` (the one place a data source is chosen), by
  ``options.shard_transport``: resident (laid out once per population and process) or
  packed every round; packed shards stay in memory in secure noise mode (client seeds
  never touch a file)."""
  p = plan
  layouts = {0: p.layout0, 1: rd.StageLayout(sketch_shard_size), 2: p.layout2}
  if p.options.shard_transport == "resident":
    train, _ = resident_data.population_sources(p.pop, p.cfg.eval_split)
    return rd.ResidentStages(train, layouts)
  return rd.PackedRoundData(
      p.pop.train, p.pop.model.feature_keys, p.pop.n_max_train, layouts,
      p.options.shard_transport, in_memory_only=p.cfg.privacy.noise_mode == "secure")


def _random_offsets(cfg, lora_size: int, num_models: int) -> np.ndarray:
  """Random LoRA offsets of the clusters: N(0, (S1/√P1)² I) rows, norm ≈ S1
  [project choice], from the run seed's RANDOM_INIT stream."""
  rng = rng_streams.generator(cfg.seed, rng_streams.RANDOM_INIT)
  scale = cfg.stage1.clip / math.sqrt(lora_size)
  return rng.normal(0, scale, (num_models, lora_size))


def _ordered(params: dict, shapes) -> collections.OrderedDict:
  return collections.OrderedDict((k, params[k]) for k in shapes)


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
