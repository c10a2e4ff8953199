"""Run configuration: frozen dataclasses for every stage, validation, (de)serialization.

``validate(cfg)`` raises :class:`pina_tff.errors.ConfigError` with one clear message
per problem (the first one found); it changes nothing. ``resolve(cfg, population)``
is the one place defaults are filled in, once the population is known (the program
calls it with the number of clients the data holds): ``privacy.delta`` =
min(1e-5, 1/(10·P)) when unset (``default_delta``; the reasoning is in
``pina_tff.privacy.accounting``) and ``privacy.budget_split`` = ``DEFAULT_BUDGET_SPLIT``
when unset. δ > 1/P is an error unless ``privacy.allow_delta_above_inverse_population``
is set, in which case it is a warning [project choice]. A finite ε with a noise-free
aggregator (``secure_sum``) is an error, and so is ``ddp_bits`` outside [16, 22].

Files: :func:`load_config` reads JSON (``.json``) or YAML (``.yaml``/``.yml``, needs
pyyaml); unknown keys are rejected with the list of valid ones. ``epsilon`` accepts
``inf``/``"inf"``/``"infinity"`` (no DP). :func:`to_dict` writes ε = inf as the string
``"inf"`` so the dict is valid JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
import warnings
from typing import Any, Dict, Mapping, Optional

from pina_tff import method_table
from pina_tff.simulation import sampling
from pina_tff.errors import ConfigError
from pina_tff.runtime import atomic
from pina_tff.training import precision as precision_lib

METHODS = method_table.METHOD_KEYS  # owner: pina_tff.method_table
# Owned here (the accounting, scaling and aggregator modules import them from config).
AGGREGATORS = ("ddp", "central", "secure_sum")
PRECISIONS = precision_lib.PRECISIONS  # owner: pina_tff.training.precision
SCALINGS = ("none", "min_norm", "normality", "pina")
#: Formulas of the normality phase (`pina_tff.aggregation.scaling.NormalityRule`).
NORMALITY_RULES = ("shrink", "restore", "restore_w", "restore_gated")
#: Stage-1 noise: on every coordinate, or (the paper's literal reading) the kept ones.
NOISE_POSITIONS = ("protected", "released")
STAGE1_CENTROIDS = ("kmeans", "dp_lloyd")
LLOYD_STARTS = ("public", "random")
#: Held-out split that runs evaluate on: 'val' while settings are chosen, 'test' only in
#: the runs of a final table (`pina_tff.simulation.population`).
EVAL_SPLITS = ("val", "test")
ACCOUNTANTS = ("pld", "rdp")
#: Calibration and reporting accountant (docs/privacy.md, "Calibration"): PLD, the
#: tightest valid bound; 'rdp' stays selectable and is always reported beside it.
DEFAULT_ACCOUNTANT = "pld"
THREAT_MODELS = ("server", "release")
NOISE_MODES = ("simulation", "secure")
SAMPLINGS = sampling.SCHEMES  # owner: pina_tff.simulation.sampling
DDP_BITS = (16, 22)
BUDGET_STAGES = ("stage0", "stage1", "stage2")
#: Share of the total ε per stage when ``privacy.budget_split`` is unset (re-normalized
#: over the stages a run has; ``pina_tff.privacy.accounting``).
DEFAULT_BUDGET_SPLIT = {"stage0": 0.1, "stage1": 0.2, "stage2": 0.7}


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """Total (ε, δ), how to spend it, and against whom (see ``pina_tff.privacy``).

  epsilon: total ε (> 0; ``math.inf`` = no DP). delta: total δ in (0, 1); None →
  ``default_delta(P)`` = min(1e-5, 1/(10·P)).
  budget_split: ε share per stage ({'stage0','stage1','stage2'} → fraction); None →
  ``DEFAULT_BUDGET_SPLIT`` (0.1 / 0.2 / 0.7).
  accountant: 'pld' (default: PLD, exact Gaussian composition where no event is
  subsampled; the noise is calibrated so its ε meets the target) or 'rdp' (Rényi DP,
  looser; always reported beside). local_delta: δ1 for the reported local ε1 of the
  sketches (None → delta).
  threat_model: 'server' (default: the server knows who took part; no amplification)
  or 'release' (anyone who sees the released models; amplification by Poisson
  sampling): the ε the noise is calibrated to. Both are reported.
  sampling: cohorts of stages 0 and 2: 'poisson' (default; each client joins with
  probability cohort/P) or 'fixed' (exactly `cohort` clients; no amplification).
  noise_mode: 'simulation' (default: every noise seed derives from the run's seed, runs
  repeat exactly) or 'secure' (noise seeds from os.urandom, never stored).
  """
  epsilon: float = 8.0
  delta: Optional[float] = None
  budget_split: Optional[Dict[str, float]] = None
  accountant: str = DEFAULT_ACCOUNTANT
  local_delta: Optional[float] = None
  allow_delta_above_inverse_population: bool = False
  threat_model: str = "server"
  sampling: str = "poisson"
  noise_mode: str = "simulation"


@dataclasses.dataclass(frozen=True)
class Stage0Config:
  """Head warm-up (DP-FedAvg on the head alone) [project choice, default on]."""
  enabled: bool = True
  rounds: int = 20
  cohort: int = 100
  local_epochs: int = 1
  lr: float = 0.1
  clip: float = 1.0


@dataclasses.dataclass(frozen=True)
class Stage1Config:
  """Sketch-based cluster initialization (local DP).

  train_head: whether the head also trains during the sketching clients' local
  training (the spec allows it; it is never sent). [project choice] False on the
  Fashion-MNIST preset: with 5 examples per client a locally trained head absorbs most
  of the fit and the LoRA change carries less of the rotation (measured in
  docs/results.md).

  spectral_dims: r > 0 runs k-means on the top-r principal components of the noisy
  sketches (server post-processing, free) [project choice, spec stage 1 step 9].
  noise_positions: 'protected' (default: noise on every coordinate, the positions of
  the kept entries are covered by local DP) or 'released' (the literal reading of the
  paper, a labelled ablation: noise on the kept entries only, so their positions are
  released outside ε; refused in secure mode).
  centroid_norm_bound: None (the paper: centroids used as they are) or a bound b > 0:
  each centroid is scaled to norm <= b before it becomes a LoRA offset
  (`pina_tff.clustering.kmeans_init.bound_centroid_norms`) [project choice].
  centroids: 'kmeans' (the paper: locally-DP sketches, server k-means) or 'dp_lloyd'
  (a labelled extension beyond the paper, issue 18: `lloyd_steps` DP Lloyd steps over
  a secure sum with aggregate noise, `pina_tff.clustering.dp_lloyd`; the same ε
  against the server, but the sketches are no longer locally DP).
  lloyd_start: DP Lloyd's first centroids: 'public' (k-means of sketches of
  pseudo-clients made from the upright public split) or 'random' (random offsets).
  public_basis_dims: r > 0 [project choice, spec stage 1 step 9]: each client sends
  clip(V·Δ, S1) + noise, r numbers, in a public basis V (PCA of the sketches of
  public pseudo-clients, `pina_tff.clustering.public_basis`); same local DP; 0: off.
  """
  num_sketch_clients: int = 1000
  local_epochs: int = 5
  lr: float = 0.1
  lora_rank: int = 1
  top_k: int = 32
  clip: float = 1.0
  post_process: bool = True
  kmeans_restarts: int = 10
  train_head: bool = True
  spectral_dims: int = 0
  noise_positions: str = "protected"
  centroid_norm_bound: Optional[float] = None
  centroids: str = "kmeans"
  lloyd_steps: int = 3
  lloyd_start: str = "public"
  public_basis_dims: int = 0


@dataclasses.dataclass(frozen=True)
class Stage2Config:
  """Clustered training with normality-driven aggregation.

  normality_rule: the normality phase's formula, a [project choice]
  (``pina_tff.aggregation.scaling``: 'shrink', 'restore', 'restore_w',
  'restore_gated'). Default 'restore': chosen on the validation split of rotated
  FMNIST (docs/results.md, "Issue 18"); 'shrink' was the first choice.
  restore_max_gain: G, the largest factor a restore rule applies.
  precision: arithmetic of the clients' forward/backward passes, 'float32', 'bfloat16'
  or 'auto' (bfloat16 where the CPU has native bfloat16; `pina_tff.training.precision`:
  deltas, clipping, noise and the server stay float32).
  """
  rounds: int = 200
  cohort: int = 100
  local_epochs: int = 1
  batch_size: int = 16
  client_lr: float = 0.1
  server_lr: float = 1.0
  server_momentum: float = 0.0
  clip: float = 1.0
  warm_rounds: int = 10
  scaling: str = "pina"
  normality_rule: str = "restore"
  restore_max_gain: float = 4.0
  aggregator: str = "ddp"
  ddp_bits: int = 20
  fedprox_mu: float = 0.0
  precision: str = "float32"


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One run. ``model_width`` d sets the sketch size P1 = 2·d·r (ViT-S/16: d = 384).

  eval_split: the clients' held-out examples the run scores ('val' by default; 'test'
  only for the runs of a final table; `pina_tff.simulation.population.split_held_out`).
  """
  method: str = "pina"
  num_clusters: int = 2
  population: int = 10000
  seed: int = 0
  model_width: int = 384
  eval_split: str = "val"
  privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
  stage0: Stage0Config = dataclasses.field(default_factory=Stage0Config)
  stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
  stage2: Stage2Config = dataclasses.field(default_factory=Stage2Config)

  @property
  def sketch_size(self) -> int:
    """Length of one stage-1 sketch: 2 · model width · LoRA rank."""
    return 2 * self.model_width * self.stage1.lora_rank

  @property
  def stage0_rounds(self) -> int:
    """T0: stage-0 rounds that run (0 when stage 0 is off)."""
    return self.stage0.rounds if self.stage0.enabled else 0

  @property
  def stage1_clients(self) -> int:
    """M1: clients that send a stage-1 sketch (at most the population)."""
    return min(self.stage1.num_sketch_clients, self.population)


_SECTIONS = {"privacy": PrivacyConfig, "stage0": Stage0Config, "stage1": Stage1Config,
             "stage2": Stage2Config}


def default_delta(population: int) -> float:
  """Default δ = min(1e-5, 1/(10·P)) (justified in ``pina_tff.privacy.accounting``)."""
  return min(1e-5, 1.0 / (10.0 * population))


def _err(where: str, expected: str, found: Any) -> ConfigError:
  return ConfigError(f"{where}: expected {expected}, found {found!r}.")


def _choice(where: str, value: str, valid) -> None:
  if value not in valid:
    raise ConfigError(f"{where}: unknown value {value!r}; valid values: "
                      f"{', '.join(valid)}.")


def validate(cfg: RunConfig) -> RunConfig:
  """Checks ``cfg`` and returns it unchanged (unset δ is checked as its default).

  The checks run in a fixed order, so the error raised is always the first problem
  of that order: choices, sizes, ε, δ, budget split, rounds and cohorts, clipping
  bounds, sketch, training hyper-parameters, noise sources, then upper bounds.

  Raises:
    ConfigError: the first problem found, naming the field.
  """
  if not isinstance(cfg, RunConfig):
    raise ConfigError(f"expected a RunConfig, found {type(cfg).__name__}.")
  key = _fingerprint(cfg)
  if key is not None and key in _VALIDATED:
    return cfg  # checked already in this process (the CLI, then the program)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _run_checks(cfg)
  for w in caught:  # passed on to the caller's filters
    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  if key is not None and not caught:
    _VALIDATED.add(key)
  return cfg


#: Canonical JSON of every config `validate` passed without a warning in this
#: process: a config handed on by several layers (pina-simulate, pina-grid, the
#: program's `resolve`) is checked once. Equal values, equal verdict.
_VALIDATED: set = set()


def _fingerprint(cfg: RunConfig) -> Optional[str]:
  """The config's canonical JSON, or None if it cannot be written (then no memo)."""
  try:
    return json.dumps(to_dict(cfg), sort_keys=True, allow_nan=True)
  except (TypeError, ValueError):
    return None


def _run_checks(cfg: RunConfig) -> None:
  """`validate`'s checks, in its order."""
  _check_stage_choices(cfg)
  _check_stage_bounds(cfg)
  _check_privacy_choices(cfg.privacy)
  _check_sizes(cfg)
  _check_epsilon(cfg.privacy.epsilon)
  delta = _check_delta(cfg)
  _check_local_delta(cfg, delta)
  _check_budget_split(cfg.privacy.budget_split)
  _check_rounds(cfg)
  _check_cohorts(cfg)
  _check_clips(cfg)
  _check_sketch(cfg)
  _check_training(cfg)
  _check_noise_sources(cfg)
  _check_ranges(cfg)


def _check_stage_choices(cfg: RunConfig) -> None:
  """Names chosen from fixed lists (method, stage-2 options, eval split, stage-1 noise
  positions); 'released' noise positions are refused in secure mode."""
  s1, s2 = cfg.stage1, cfg.stage2
  _choice("method", cfg.method, METHODS)
  _choice("stage2.aggregator", s2.aggregator, AGGREGATORS)
  _choice("stage2.scaling", s2.scaling, SCALINGS)
  _choice("stage2.normality_rule", s2.normality_rule, NORMALITY_RULES)
  _choice("stage2.precision", s2.precision, PRECISIONS)
  _choice("eval_split", cfg.eval_split, EVAL_SPLITS)
  _choice("stage1.noise_positions", s1.noise_positions, NOISE_POSITIONS)
  if s1.noise_positions == "released" and cfg.privacy.noise_mode == "secure":
    raise ConfigError("stage1.noise_positions: 'released' sends the positions of the "
                      "kept sketch entries outside the local-DP guarantee; it is a "
                      "labelled ablation and is refused with privacy.noise_mode="
                      "'secure'.")
  _check_dp_lloyd(s1)


def _check_dp_lloyd(s1: Stage1Config) -> None:
  """DP Lloyd's choices; it replaces the locally-DP sketch and its server k-means, so
  the options of those (released positions, spectral step) do not combine with it."""
  _choice("stage1.centroids", s1.centroids, STAGE1_CENTROIDS)
  _choice("stage1.lloyd_start", s1.lloyd_start, LLOYD_STARTS)
  if not (isinstance(s1.lloyd_steps, int) and 1 <= s1.lloyd_steps <= 100):
    raise _err("stage1.lloyd_steps", "an integer in [1, 100]", s1.lloyd_steps)
  if s1.centroids == "dp_lloyd" and s1.noise_positions == "released":
    raise ConfigError("stage1.centroids='dp_lloyd' sends no sketch in the clear, so "
                      "stage1.noise_positions='released' has no meaning with it; use "
                      "'protected'.")
  if not (isinstance(s1.public_basis_dims, int) and s1.public_basis_dims >= 0):
    raise _err("stage1.public_basis_dims", "an integer >= 0", s1.public_basis_dims)
  if s1.public_basis_dims and (s1.centroids == "dp_lloyd"
                               or s1.noise_positions == "released"):
    raise ConfigError("stage1.public_basis_dims > 0 sends coordinates in a public basis "
                      "(no private positions, no sketch for DP Lloyd); it combines with "
                      "neither stage1.centroids='dp_lloyd' nor "
                      "stage1.noise_positions='released'.")
  if s1.centroids == "dp_lloyd" and s1.spectral_dims:
    raise ConfigError("stage1.spectral_dims is a step before the server's k-means of "
                      "noisy sketches; stage1.centroids='dp_lloyd' runs no such "
                      "k-means: set spectral_dims=0.")


def _check_stage_bounds(cfg: RunConfig) -> None:
  """Stage-1 centroid norm bound and spectral dims, stage-2 restore gain G."""
  s1, s2 = cfg.stage1, cfg.stage2
  if s1.centroid_norm_bound is not None and not (
      s1.centroid_norm_bound > 0 and math.isfinite(s1.centroid_norm_bound)):
    raise _err("stage1.centroid_norm_bound", "a finite bound > 0 or null",
               s1.centroid_norm_bound)
  if s1.spectral_dims < 0:
    raise _err("stage1.spectral_dims", "an integer >= 0", s1.spectral_dims)
  if not 1 <= s2.restore_max_gain <= 1e3:
    raise _err("stage2.restore_max_gain", "a value in [1, 1000]", s2.restore_max_gain)


def _check_privacy_choices(p: PrivacyConfig) -> None:
  """Accountant, threat model, sampling scheme and noise mode."""
  _choice("privacy.accountant", p.accountant, ACCOUNTANTS)
  _choice("privacy.threat_model", p.threat_model, THREAT_MODELS)
  _choice("privacy.sampling", p.sampling, SAMPLINGS)
  _choice("privacy.noise_mode", p.noise_mode, NOISE_MODES)


def _check_sizes(cfg: RunConfig) -> None:
  """Population, number of clusters C and model width d are >= 1."""
  if cfg.population < 1:
    raise _err("population", "an integer >= 1", cfg.population)
  if cfg.num_clusters < 1:
    raise _err("num_clusters (C)", "an integer >= 1", cfg.num_clusters)
  if cfg.model_width < 1:
    raise _err("model_width", "an integer >= 1", cfg.model_width)


def _check_epsilon(eps: Any) -> None:
  """The total ε is a number > 0 (inf = no DP)."""
  if not isinstance(eps, (int, float)) or isinstance(eps, bool) or math.isnan(eps):
    raise _err("privacy.epsilon", "a number > 0 or inf", eps)
  if eps <= 0:
    raise _err("privacy.epsilon", "a value > 0 (inf = no DP)", eps)


def _check_delta(cfg: RunConfig) -> float:
  """The total δ (its default where unset) in (0, 1) and at most 1/P (or a warning
  when allowed), and δ1 in (0, 1) when set; returns the total δ."""
  p = cfg.privacy
  delta = p.delta
  if delta is None:
    delta = default_delta(cfg.population)
  if not 0.0 < delta < 1.0:
    raise _err("privacy.delta", "a value in (0, 1)", delta)
  if delta > 1.0 / cfg.population:
    msg = (f"privacy.delta: expected at most 1/population = "
           f"{1.0 / cfg.population:.3g}, found {delta}.")
    if not p.allow_delta_above_inverse_population:
      raise ConfigError(msg + " Set privacy.allow_delta_above_inverse_population "
                        "to accept it.")
    warnings.warn(msg)
  if p.local_delta is not None and not 0.0 < p.local_delta < 1.0:
    raise _err("privacy.local_delta", "a value in (0, 1)", p.local_delta)
  return delta


def _check_local_delta(cfg: RunConfig, delta: float) -> None:
  """δ1 of the local ε1 of the M1 sketches is below 1/M1 (a δ1 ≥ 1/M1 allows
  publishing one sketch in the clear; docs/privacy.md, "δ")."""
  m1 = max(1, cfg.stage1_clients)
  local_delta = delta if cfg.privacy.local_delta is None else cfg.privacy.local_delta
  if method_table.get(cfg.method).uses_stage1 and not local_delta < 1.0 / m1:
    raise ConfigError(
        f"privacy.local_delta: expected less than 1/num_sketch_clients = 1/{m1} "
        f"(the local guarantee of the sketches), found {local_delta}.")


def _check_budget_split(split: Optional[Dict[str, float]]) -> None:
  """Known stages, non-negative ε shares with a positive sum (None: the default)."""
  if split is None:
    return
  unknown = sorted(set(split) - set(BUDGET_STAGES))
  if unknown:
    raise ConfigError(f"privacy.budget_split: unknown stage(s) {unknown}; valid "
                      f"keys: {', '.join(BUDGET_STAGES)}.")
  bad = {k: v for k, v in split.items() if not v >= 0}
  if bad:
    raise _err("privacy.budget_split", "non-negative shares", bad)
  if sum(split.values()) <= 0:
    raise _err("privacy.budget_split", "shares with a positive sum", split)


def _check_rounds(cfg: RunConfig) -> None:
  """Round counts (stage 0, stage 2, warm rounds) are >= 0."""
  s0, s2 = cfg.stage0, cfg.stage2
  for where, value in (("stage0.rounds", s0.rounds), ("stage2.rounds", s2.rounds),
                       ("stage2.warm_rounds", s2.warm_rounds)):
    if value < 0:
      raise _err(where, "an integer >= 0", value)


def _check_cohorts(cfg: RunConfig) -> None:
  """Cohort sizes are >= 1 and, for a stage that runs, at most the population; pina
  needs at least C sketches."""
  s0, s1, s2 = cfg.stage0, cfg.stage1, cfg.stage2
  stage0_runs = s0.enabled and s0.rounds > 0
  stage1_runs = method_table.get(cfg.method).uses_stage1
  for where, value, runs in (("stage0.cohort", s0.cohort, stage0_runs),
                             ("stage1.num_sketch_clients", s1.num_sketch_clients,
                              stage1_runs),
                             ("stage2.cohort", s2.cohort, True)):
    if value < 1:
      raise _err(where, "an integer >= 1", value)
    if runs and value > cfg.population:
      raise ConfigError(f"{where}: expected at most the population "
                        f"({cfg.population}), found {value}.")
  if stage1_runs and s1.num_sketch_clients < cfg.num_clusters:
    raise ConfigError(f"stage1.num_sketch_clients: expected at least num_clusters "
                      f"({cfg.num_clusters}) sketches, found {s1.num_sketch_clients}.")


def _check_clips(cfg: RunConfig) -> None:
  """Clipping bounds (L2 norms of the per-client updates) are finite and > 0."""
  for where, value in (("stage0.clip", cfg.stage0.clip),
                       ("stage1.clip (S1)", cfg.stage1.clip),
                       ("stage2.clip (S2)", cfg.stage2.clip)):
    if not (value > 0 and math.isfinite(value)):
      raise _err(where, "a finite clipping bound > 0", value)


def _check_sketch(cfg: RunConfig) -> None:
  """LoRA rank r >= 1, 1 <= top_k <= P1/2, k-means restarts >= 1."""
  s1 = cfg.stage1
  if s1.lora_rank < 1:
    raise _err("stage1.lora_rank", "an integer >= 1", s1.lora_rank)
  half = cfg.sketch_size // 2
  if s1.top_k < 1 or s1.top_k > half:
    raise ConfigError(
        f"stage1.top_k: expected 1 <= top_k <= P1/2 = {half} (sketch size P1 = "
        f"2*model_width*lora_rank = {cfg.sketch_size}), found {s1.top_k}.")
  if s1.kmeans_restarts < 1:
    raise _err("stage1.kmeans_restarts", "an integer >= 1", s1.kmeans_restarts)


def _check_training(cfg: RunConfig) -> None:
  """Epochs and batch size >= 1, learning rates > 0, momentum in [0, 1), FedProx μ
  >= 0, and the distributed-DP bit width in DDP_BITS."""
  s0, s1, s2 = cfg.stage0, cfg.stage1, cfg.stage2
  for where, value in (("stage0.local_epochs", s0.local_epochs),
                       ("stage1.local_epochs", s1.local_epochs),
                       ("stage2.local_epochs", s2.local_epochs),
                       ("stage2.batch_size", s2.batch_size)):
    if value < 1:
      raise _err(where, "an integer >= 1", value)
  for where, value in (("stage0.lr", s0.lr), ("stage1.lr", s1.lr),
                       ("stage2.client_lr", s2.client_lr),
                       ("stage2.server_lr", s2.server_lr)):
    if not value > 0:
      raise _err(where, "a learning rate > 0", value)
  if not 0.0 <= s2.server_momentum < 1.0:
    raise _err("stage2.server_momentum", "a value in [0, 1)", s2.server_momentum)
  if s2.fedprox_mu < 0:
    raise _err("stage2.fedprox_mu", "a value >= 0", s2.fedprox_mu)
  if not DDP_BITS[0] <= s2.ddp_bits <= DDP_BITS[1]:
    raise _err("stage2.ddp_bits", f"an integer in [{DDP_BITS[0]}, {DDP_BITS[1]}] "
               "(TFF accepts at most 22; below 16 the Gaussian accounting of the "
               "distributed discrete Gaussian does not hold)", s2.ddp_bits)


def _check_noise_sources(cfg: RunConfig) -> None:
  """A finite ε needs an aggregator whose noise holds it: not the noise-free
  'secure_sum' (except ifca_ldp without stage 0, whose clients add their own noise)."""
  eps = cfg.privacy.epsilon
  if cfg.stage2.aggregator == "secure_sum" and math.isfinite(eps):
    if cfg.method != "ifca_ldp" or cfg.stage0_rounds > 0:
      raise ConfigError(
          f"stage2.aggregator: 'secure_sum' adds no noise, so privacy.epsilon={eps} "
          "cannot hold; use 'ddp' or 'central', or privacy.epsilon=inf.")


#: Upper bounds of numeric fields [project choice]: beyond them a run fails deep in
#: TensorFlow / the accountant (overflow to inf or NaN, int32 shapes, a rounds x
#: population cohort schedule) instead of here, with one line.
MAX_SEED = 2 ** 31 - 1
MAX_ROUNDS = 10_000
MAX_LOCAL_EPOCHS = 1_000
MAX_INT = 2 ** 31 - 1
MAX_LEARNING_RATE = 1e3
MAX_CLIP = 1e6
MAX_FEDPROX_MU = 1e3
MAX_EPSILON = 1e6


def _check_ranges(cfg: RunConfig) -> None:
  """Finite numbers and upper bounds (the lower bounds are checked in `validate`)."""
  p, s0, s1, s2 = cfg.privacy, cfg.stage0, cfg.stage1, cfg.stage2
  if not 0 <= cfg.seed <= MAX_SEED:
    raise _err("seed", f"an integer in [0, {MAX_SEED}]", cfg.seed)
  if cfg.num_clusters > cfg.population:
    raise _err("num_clusters (C)", f"at most the population ({cfg.population})",
               cfg.num_clusters)
  if math.isfinite(p.epsilon) and p.epsilon > MAX_EPSILON:
    raise _err("privacy.epsilon", f"a value in (0, {MAX_EPSILON:g}] or inf (no DP)",
               p.epsilon)
  ints = (("population", cfg.population, MAX_INT), ("model_width", cfg.model_width,
                                                    MAX_INT),
          ("stage0.rounds", s0.rounds, MAX_ROUNDS), ("stage2.rounds", s2.rounds,
                                                     MAX_ROUNDS),
          ("stage2.warm_rounds", s2.warm_rounds, MAX_ROUNDS),
          ("stage0.cohort", s0.cohort, MAX_INT),
          ("stage1.num_sketch_clients", s1.num_sketch_clients, MAX_INT),
          ("stage0.local_epochs", s0.local_epochs, MAX_LOCAL_EPOCHS),
          ("stage1.local_epochs", s1.local_epochs, MAX_LOCAL_EPOCHS),
          ("stage2.local_epochs", s2.local_epochs, MAX_LOCAL_EPOCHS),
          ("stage2.batch_size", s2.batch_size, MAX_INT),
          ("stage1.kmeans_restarts", s1.kmeans_restarts, MAX_LOCAL_EPOCHS))
  for where, value, most in ints:
    if value > most:
      raise _err(where, f"an integer of at most {most}", value)
  floats = (("stage0.lr", s0.lr, 0.0, MAX_LEARNING_RATE),
            ("stage1.lr", s1.lr, 0.0, MAX_LEARNING_RATE),
            ("stage2.client_lr", s2.client_lr, 0.0, MAX_LEARNING_RATE),
            ("stage2.server_lr", s2.server_lr, 0.0, MAX_LEARNING_RATE),
            ("stage0.clip", s0.clip, 0.0, MAX_CLIP),
            ("stage1.clip (S1)", s1.clip, 0.0, MAX_CLIP),
            ("stage2.clip (S2)", s2.clip, 0.0, MAX_CLIP))
  for where, value, low, high in floats:
    if not (math.isfinite(value) and low < value <= high):
      raise _err(where, f"a finite value in ({low:g}, {high:g}]", value)
  if not (math.isfinite(s2.fedprox_mu) and 0.0 <= s2.fedprox_mu <= MAX_FEDPROX_MU):
    raise _err("stage2.fedprox_mu", f"a finite value in [0, {MAX_FEDPROX_MU:g}]",
               s2.fedprox_mu)
  if p.budget_split is not None:
    bad = {k: v for k, v in p.budget_split.items() if not math.isfinite(v)}
    if bad:
      raise _err("privacy.budget_split", "finite shares", bad)


def is_resolved(cfg: RunConfig) -> bool:
  """Whether ``cfg`` has every default filled in (`resolve` was applied)."""
  return cfg.privacy.delta is not None and cfg.privacy.budget_split is not None


def resolve(cfg: RunConfig, population: Optional[int] = None) -> RunConfig:
  """``cfg`` for ``population`` clients, validated, with every default filled in.

  The one place defaults are resolved: δ = ``default_delta(P)`` and the budget split
  = ``DEFAULT_BUDGET_SPLIT`` where unset. Idempotent for the same population; a δ or
  split given explicitly is kept.

  Args:
    cfg: a RunConfig (unset δ / budget split allowed).
    population: the number of clients the data holds (None: ``cfg.population``).

  Raises:
    ConfigError: ``cfg`` is invalid for that population.
  """
  if population is not None and population != cfg.population:
    cfg = dataclasses.replace(cfg, population=int(population))
  p = validate(cfg).privacy
  return dataclasses.replace(cfg, privacy=dataclasses.replace(
      p, delta=default_delta(cfg.population) if p.delta is None else p.delta,
      budget_split=dict(DEFAULT_BUDGET_SPLIT if p.budget_split is None
                        else p.budget_split)))


#: Spellings of ε = ∞ (no DP) accepted in configs, flags and summaries (any case).
INFINITY_SPELLINGS = ("inf", "+inf", "infinity", ".inf", "\u221e")


def parse_epsilon(value: Any, where: str = "privacy.epsilon") -> Any:
  """The one ε parser: a string ('inf', 'infinity', '∞', '8', ...) -> float; other
  values are returned unchanged (``validate`` checks them).

  Raises:
    ConfigError: a string that is neither a number nor a spelling of infinity (the
      message names ``where``).
  """
  if isinstance(value, str):
    if value.strip().lower() in INFINITY_SPELLINGS:
      return math.inf
    try:
      return float(value)
    except ValueError:
      raise _err(where, "a number or 'inf'", value) from None
  return value


def _type_name(tp) -> str:
  return {int: "an integer", float: "a number", bool: "true or false",
          str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_type(path: str, tp, value: Any) -> Any:
  """`value` if it has the field type `tp` (ints accepted for floats); ConfigError."""
  origin = typing.get_origin(tp)
  if origin is typing.Union:  # Optional[X]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
      return None
    return _check_type(path, args[0], value)
  if origin in (dict, Dict) or tp in (dict, Dict):
    if not isinstance(value, Mapping):
      raise _err(path, "a mapping", value)
    key_t, val_t = (typing.get_args(tp) or (str, float))
    return {_check_type(f"{path} key", key_t, k): _check_type(f"{path}.{k}", val_t, v)
            for k, v in value.items()}
  if tp is bool:
    ok = isinstance(value, bool)
  elif tp is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif tp is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif tp is str:
    ok = isinstance(value, str)
  else:
    ok = True
  if not ok:
    raise _err(path, _type_name(tp), value)
  return value


def _build(cls, data: Mapping[str, Any], where: str):
  """`cls(**data)` with every value checked against the field's declared type."""
  if not isinstance(data, Mapping):
    raise _err(where or "config", "a mapping of keys to values", data)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(data) - set(fields))
  if unknown:
    raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid keys: "
                      f"{', '.join(fields)}.")
  kwargs = {}
  for key, value in data.items():
    path = f"{where}.{key}" if where else key
    if cls is RunConfig and key in _SECTIONS:
      value = _build(_SECTIONS[key], value or {}, path)
    else:
      if cls is PrivacyConfig and key == "epsilon":
        value = parse_epsilon(value, path)
      value = _check_type(path, hints[key], value)
    kwargs[key] = value
  return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> RunConfig:
  """Builds a RunConfig from nested dicts (missing keys take defaults; not validated)."""
  return _build(RunConfig, data, "")


def to_dict(cfg: RunConfig) -> Dict[str, Any]:
  """Nested plain dict (JSON-safe: ε = inf is written as "inf")."""
  d = dataclasses.asdict(cfg)
  if math.isinf(d["privacy"]["epsilon"]):
    d["privacy"]["epsilon"] = "inf"
  return d


def read_config_dict(path: str) -> Dict[str, Any]:
  """The raw nested dict of a JSON (``.json``) or YAML (``.yaml``/``.yml``) config file
  (not type-checked or validated: `from_dict` and `validate` do that).

  Raises:
    ConfigError: unreadable file, unknown extension, parse error, or pyyaml missing.
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".json", ".yaml", ".yml"):
    raise ConfigError(f"{path}: expected a .json, .yaml or .yml file, found "
                      f"extension {ext!r}.")
  try:
    with open(path, "r", encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise ConfigError(f"cannot read config file {path}: {e}") from None
  if ext == ".json":
    parse, errors = json.loads, (ValueError,)
  else:
    try:
      import yaml  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConfigError(f"{path}: YAML config needs pyyaml (pip install pyyaml), "
                        "or use a .json file.") from None
    parse, errors = yaml.safe_load, (yaml.YAMLError, ValueError)
  try:
    return parse(text) or {}
  except errors as e:
    raise ConfigError(f"{path}: cannot parse config: {e}") from None


def load_config(path: str) -> RunConfig:
  """Reads a JSON or YAML file into a validated RunConfig (defaults not resolved).

  Raises:
    ConfigError: as `read_config_dict`, or an invalid value (the message names
      ``path`` and the field).
  """
  data = read_config_dict(path)
  try:
    return validate(from_dict(data))
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None


def save_config(cfg: RunConfig, path: str) -> None:
  """Writes ``to_dict(cfg)`` as JSON (tmp file + rename)."""
  atomic.write_json(path, to_dict(cfg))
