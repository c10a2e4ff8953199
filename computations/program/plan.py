"""What a run computes, derived once from its config and population: the `Plan`
(noise calibration, cohort key, shard layouts of every stage, stage-2 spec), and how
the program runs it (`ProgramOptions`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from computations.data import resident_data
from computations.data import round_data as rd
from computations.learning import learning_process as lp
from computations.learning import methods
from computations.runtime import context
from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff.errors import ConfigError
from pina_tff.privacy import accounting
from pina_tff.simulation import population as population_lib
from pina_tff.simulation import sampling as sampling_lib
from pina_tff.training import shards as shards_lib


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
      see `computations.data.round_data`. With privacy.noise_mode='secure' packed shards
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


def calibrate(cfg, cohort_key: Optional[int] = None) -> accounting.PrivacyReport:
  """Noise multipliers for `cfg` (all zero for epsilon = inf) on the cohort schedule of
  ``cohort_key`` (None: ``cfg.seed``)."""
  return accounting.calibrate_from_config(cfg, cohort_key)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything a run derives once from its config and population (`make_plan`).

  t0, t2 (properties): rounds of stages 0 and 2; layout0/1/2: shard layout of each stage (stage 1:
  the sketching clients); spec2: the stage-2 process spec."""
  cfg: config_lib.RunConfig
  pop: population_lib.Population
  options: ProgramOptions
  report: accounting.PrivacyReport
  accounting_plan: accounting.AccountingPlan
  num_models: int
  layout0: rd.StageLayout
  layout1: rd.StageLayout
  layout2: rd.StageLayout
  spec2: lp.ProcessSpec
  #: Whether the installed runtime runs secure-sum intrinsics (one simulation service).
  secure_sums: bool
  #: Key of the cohort schedule: cfg.seed in simulation mode, the secret key of the
  #: run's private state in secure mode (never logged or written elsewhere).
  cohort_key: int = dataclasses.field(default=0, repr=False)

  @property
  def t0(self) -> int:
    """T0: stage-0 rounds that run (`RunConfig.stage0_rounds`)."""
    return self.cfg.stage0_rounds

  @property
  def t2(self) -> int:
    """T2: stage-2 rounds."""
    return self.cfg.stage2.rounds

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


def stage_layout(cfg, key: int, stage: int, rounds: int, population: int, cohort: int,
                 shard_size: Optional[int] = None) -> rd.StageLayout:
  """Shard size and TFF clients per round of ``stage`` (0 or 2), both sized for its
  largest scheduled cohort (``key``: the run's cohort key), not the expected one: a
  cohort just over the expected size would otherwise fill one more shard of mostly
  padding. ``shard_size``: a fixed size instead of the default."""
  largest = sampling_lib.max_cohort_size(key, stage, rounds, population, cohort,
                                         cfg.privacy.sampling)
  size = shard_size or shards_lib.default_shard_size(max(1, largest or cohort))
  return rd.StageLayout(size, max(1, math.ceil(max(largest, 1) / size)))


def check_oracle(cfg, pop) -> None:
  """ConfigError unless the oracle's population has known true clusters that fit C."""
  if not method_table.get(cfg.method).true_clusters:
    return
  true = np.asarray(pop.true_clusters)
  if true.size == 0 or (true < 0).any() or true.max() >= cfg.num_clusters:
    raise ConfigError(
        f"method 'oracle' trains each client's true cluster: it needs every client's "
        f"cluster known and below num_clusters={cfg.num_clusters}; {pop.dataset!r} has "
        f"{int((true < 0).sum())} unknown and clusters up to {int(true.max(initial=-1))}")


def make_plan(cfg, pop, options: ProgramOptions, cohort_key: int) -> Plan:
  """The run's derived quantities: ε calibration, shard layouts, stage-2 spec.

  ``cfg`` is resolved for ``pop`` (`config_for_population`); ``cohort_key`` keys the
  cohort schedule (the seed, or secure mode's secret key)."""
  rd.check_transport(options.shard_transport)
  check_oracle(cfg, pop)
  # Asked once, of the context the caller installed; every builder gets the answer.
  secure_sums = context.secure_sums_supported()
  report = calibrate(cfg, cohort_key)
  layout0 = stage_layout(cfg, cohort_key, 0, cfg.stage0_rounds, pop.size,
                         cfg.stage0.cohort, options.shard_size)
  layout2 = stage_layout(cfg, cohort_key, 2, cfg.stage2.rounds, pop.size,
                         cfg.stage2.cohort, options.shard_size)
  layout1 = rd.StageLayout(shards_lib.default_shard_size(cfg.stage1_clients))
  mean_size = float(np.mean([len(c["label"]) for c in pop.train]))
  expected_steps = cfg.stage2.local_epochs * max(1.0, math.ceil(mean_size /
                                                                cfg.stage2.batch_size))
  spec2 = methods.stage2_spec(cfg, z2=report.z2, shard_size=layout2.shard_size,
                              n_max=pop.n_max_train,
                              num_true_clusters=pop.num_true_clusters,
                              expected_local_steps=expected_steps,
                              diagnostics=options.simulation_diagnostics,
                              num_shards=layout2.num_shards,
                              secure_sums=secure_sums)
  return Plan(cfg=cfg, pop=pop, options=options, report=report,
              accounting_plan=accounting.plan_from_config(cfg, cohort_key),
              num_models=method_table.num_models(cfg.method, cfg.num_clusters),
              layout0=layout0, layout1=layout1, layout2=layout2,
              spec2=spec2, secure_sums=secure_sums, cohort_key=cohort_key)


def config_for_population(cfg, clients_dir: str):
  """`cfg` validated, with the population and model width the data in `clients_dir`
  has (facts of the data, not settings: `population_lib.data_facts`).

  Raises:
    ConfigError: a cohort larger than that population, or an invalid config.
    DataError: no readable manifest in `clients_dir`.
  """
  facts = population_lib.data_facts(clients_dir)
  size = facts.num_clients
  for where, cohort, runs in (("stage2.cohort", cfg.stage2.cohort, True),
                              ("stage0.cohort", cfg.stage0.cohort,
                               cfg.stage0_rounds > 0)):
    if runs and cohort > size:
      raise ConfigError(f"{where}: expected at most the population of {size} clients "
                        f"in {clients_dir}, found {cohort}")
  if facts.model_width != cfg.model_width:
    cfg = dataclasses.replace(cfg, model_width=facts.model_width)
  # The data decides the population and width; defaults (δ) are resolved for it, once.
  return config_lib.resolve(cfg, population=size)


def round_data_source(plan: Plan) -> rd.RoundDataSource:
  """The run's `RoundDataSource` (the one place a data source is chosen), by
  ``options.shard_transport``: resident (laid out once per population and process) or
  packed every round; packed shards stay in memory in secure noise mode (client seeds
  never touch a file)."""
  p = plan
  layouts = {0: p.layout0, 1: p.layout1, 2: p.layout2}
  if p.options.shard_transport == "resident":
    train, _ = resident_data.population_sources(p.pop, p.cfg.eval_split)
    return rd.ResidentStages(train, layouts)
  return rd.PackedRoundData(
      p.pop.train, p.pop.model.feature_keys, p.pop.n_max_train, layouts,
      p.options.shard_transport, in_memory_only=p.cfg.privacy.noise_mode == "secure")
