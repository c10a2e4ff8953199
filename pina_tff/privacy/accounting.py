"""Privacy accounting and noise calibration for a PINA run (and the baselines).

Everything is computed with Google's `dp_accounting` library: the RDP accountant by
default (``accountant='rdp'``), the PLD accountant as an option (``accountant='pld'``).
Neighbouring relation: add-or-remove one client (user-level DP, the client is the unit).

Composition against the (untrusted) server for one run:

* stage 0 (head warm-up, DP-FedAvg):   ``PoissonSampled(q0, Gaussian(z0))`` x T0,
  with q0 = cohort0 / P;
* stage 1 (sketches, local DP):         ``Gaussian(z1)`` once. No amplification by
  sampling: the server sees who sent a sketch, and every client sends at most one;
* stage 2 (clustered training):         ``PoissonSampled(q2, Gaussian(z2))`` x T2,
  with q2 = M / P.

**Approximation (stage 0 and stage 2 with distributed DP).** TFF's
``tff.learning.ddp_secure_aggregator`` adds *distributed discrete Gaussian* noise over
secure aggregation (each client adds a share of discrete Gaussian noise to its
integer-quantized, randomly rotated update; the sum carries the total noise). We account
for it as the *continuous* Gaussian mechanism with the same noise multiplier
z = (total noise stddev) / (L2 clip). That is the standard approximation used for DDP
(Kairouz et al. 2021, "The Distributed Discrete Gaussian Mechanism"): it is accurate when
the quantization granularity is fine (many bits, ``ddp_bits`` ≥ ~16) so that the
discrete Gaussian's scale is large compared with 1; it ignores the small extra
sensitivity from rounding and modular clipping (which the DDP factory bounds by its
``beta``/``k_stddevs`` settings). The aggregator must therefore be built so that its
*effective* continuous noise multiplier equals the z reported here.

**IFCA+LDP** (the paper's ablation): every participating client sends its own noised
update in the clear, so the server sees who participated and there is no amplification
by subsampling: ``Gaussian(z)`` composed K times, K = the maximum number of rounds in
which one client takes part (``max_participations``; with a fixed cohort schedule this is
known from the schedule, its upper bound is T2).

**Calibration.** Given a target total (ε, δ) and a budget split (fractions of ε per
active stage, default :data:`DEFAULT_BUDGET_SPLIT` = {stage0: 0.1, stage1: 0.2,
stage2: 0.7}, re-normalized over the stages a plan actually runs), each stage's noise
multiplier is calibrated with ``dp_accounting.calibrate_dp_mechanism`` so that the stage
alone is (share·ε, δ)-DP. The composed total is then computed with the accountant (RDP
composition across stages is usually tighter than the sum of the shares) and checked:
if it exceeds the target (possible because the per-stage optima sit at different RDP
orders), all shares are scaled down by bisection until the composed ε ≤ target
(``fit_total='check'``, the default, as the spec asks). With ``fit_total='tighten'``
[project choice, option] the shares are instead scaled *up* (or down) by bisection so the
composed total uses the budget, within ``total_tolerance``, never above it.
ε = inf means "no DP": every noise multiplier is 0 and the achieved ε is inf.

The local ε1 of the sketches is Gaussian(z1) alone at δ1 (``local_delta``, default δ);
it is reported in :class:`PrivacyReport`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import dp_accounting

from pina_tff.errors import ConfigError

STAGES = ("stage0", "stage1", "stage2")
ACCOUNTANTS = ("rdp", "pld")
#: Default share of ε per stage (re-normalized over the stages a plan runs).
DEFAULT_BUDGET_SPLIT = {"stage0": 0.1, "stage1": 0.2, "stage2": 0.7}
#: Lower end of the noise-multiplier search (z = 0 has ε = inf under RDP/PLD).
_Z_LOWER = 1e-3
_PLD_DISCRETIZATION = 1e-3  # PLD grid step (pessimistic rounding: still an upper bound)


@dataclasses.dataclass(frozen=True)
class StageEvent:
  """One accounted stage: Gaussian(z), optionally Poisson-subsampled, self-composed.

  ``sampling_probability`` = None (or 1.0) means no amplification by subsampling.
  """
  name: str
  noise_multiplier: float
  count: int
  sampling_probability: Optional[float] = None

  def dp_event(self) -> dp_accounting.DpEvent:
    if self.count <= 0:
      return dp_accounting.NoOpDpEvent()
    if self.noise_multiplier <= 0:
      return dp_accounting.NonPrivateDpEvent()
    event = dp_accounting.GaussianDpEvent(float(self.noise_multiplier))
    q = self.sampling_probability
    if q is not None and q < 1.0:
      event = dp_accounting.PoissonSampledDpEvent(float(q), event)
    if self.count > 1:
      event = dp_accounting.SelfComposedDpEvent(event, int(self.count))
    return event


@dataclasses.dataclass(frozen=True)
class AccountingPlan:
  """What a run does that costs privacy (independent of the noise multipliers).

  Attributes:
    population: number of clients P (sampling probabilities are cohort / P).
    stage0_rounds, stage0_cohort: T0 and the expected cohort of stage 0 (0 rounds = off).
    stage1_enabled: whether sketches are sent (PINA: yes; PINA+RI and baselines: no).
    stage2_rounds, stage2_cohort: T2 and the expected cohort M of stage 2.
    stage2_local_dp: True for IFCA+LDP (individually noised updates, no amplification).
    stage2_max_participations: K for ``stage2_local_dp`` (None → T2, the upper bound).
  """
  population: int
  stage0_rounds: int = 0
  stage0_cohort: int = 0
  stage1_enabled: bool = True
  stage2_rounds: int = 0
  stage2_cohort: int = 0
  stage2_local_dp: bool = False
  stage2_max_participations: Optional[int] = None

  def active_stages(self) -> List[str]:
    out = []
    if self.stage0_rounds > 0:
      out.append("stage0")
    if self.stage1_enabled:
      out.append("stage1")
    if self.stage2_rounds > 0:
      out.append("stage2")
    return out

  def stage_event(self, stage: str, noise_multiplier: float,
                  rounds: Optional[int] = None) -> StageEvent:
    """The :class:`StageEvent` of ``stage`` (``rounds`` overrides its round count)."""
    if stage == "stage0":
      count = self.stage0_rounds if rounds is None else rounds
      return StageEvent(stage, noise_multiplier, count,
                        _sampling_probability(self.stage0_cohort, self.population))
    if stage == "stage1":
      count = (1 if self.stage1_enabled else 0) if rounds is None else min(rounds, 1)
      return StageEvent(stage, noise_multiplier, count, None)
    if stage == "stage2":
      if self.stage2_local_dp:
        k = self.stage2_max_participations
        k = self.stage2_rounds if k is None else k
        count = k if rounds is None else min(rounds, k)
        return StageEvent(stage, noise_multiplier, count, None)
      count = self.stage2_rounds if rounds is None else rounds
      return StageEvent(stage, noise_multiplier, count,
                        _sampling_probability(self.stage2_cohort, self.population))
    raise ConfigError(f"Unknown stage {stage!r}; expected one of {list(STAGES)}.")


def _sampling_probability(cohort: int, population: int) -> float:
  if population <= 0:
    raise ConfigError(f"population must be > 0 for accounting, found {population}.")
  if cohort > population:
    raise ConfigError(
        f"cohort ({cohort}) is larger than the population ({population}).")
  return float(cohort) / float(population)


@dataclasses.dataclass(frozen=True)
class PrivacyReport:
  """Result of a calibration (or of accounting fixed noise multipliers)."""
  epsilon_target: float
  epsilon_achieved: float
  delta: float
  accountant: str
  noise_multipliers: Dict[str, float]
  stage_epsilons: Dict[str, float]
  stage_epsilon_targets: Dict[str, float]
  budget_split: Dict[str, float]
  local_epsilon1: Optional[float]
  local_delta1: Optional[float]
  plan: Dict[str, Any]

  @property
  def z0(self) -> float:
    return self.noise_multipliers.get("stage0", 0.0)

  @property
  def z1(self) -> float:
    return self.noise_multipliers.get("stage1", 0.0)

  @property
  def z2(self) -> float:
    return self.noise_multipliers.get("stage2", 0.0)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def make_accountant(accountant: str = "rdp") -> dp_accounting.PrivacyAccountant:
  """A fresh accountant: 'rdp' (default) or 'pld'."""
  if accountant == "rdp":
    return dp_accounting.rdp.RdpAccountant()
  if accountant == "pld":
    return dp_accounting.pld.PLDAccountant(
        value_discretization_interval=_PLD_DISCRETIZATION)
  raise ConfigError(
      f"Unknown accountant {accountant!r}; expected one of {list(ACCOUNTANTS)}.")


def _check_delta(delta: float) -> None:
  if not 0.0 < delta < 1.0:
    raise ConfigError(f"delta must be in (0, 1), found {delta}.")


def epsilon_for(stages: Sequence[StageEvent], delta: float,
                accountant: str = "rdp") -> float:
  """ε at ``delta`` of the composition of ``stages`` (inf if any stage has z = 0)."""
  _check_delta(delta)
  events = [s.dp_event() for s in stages]
  events = [e for e in events if not isinstance(e, dp_accounting.NoOpDpEvent)]
  if not events:
    return 0.0
  if any(isinstance(e, dp_accounting.NonPrivateDpEvent) for e in events):
    return math.inf
  acc = make_accountant(accountant)
  acc.compose(dp_accounting.ComposedDpEvent(events))
  return float(acc.get_epsilon(delta))


def local_epsilon(noise_multiplier: float, delta: float,
                  accountant: str = "rdp") -> float:
  """ε of one Gaussian(z) release (the stage-1 sketch) at ``delta``."""
  return epsilon_for([StageEvent("stage1", noise_multiplier, 1)], delta, accountant)


def ifca_ldp_epsilon(noise_multiplier: float, max_participations: int, delta: float,
                     accountant: str = "rdp") -> float:
  """IFCA+LDP: Gaussian(z) composed over K participations, no amplification."""
  return epsilon_for([StageEvent("stage2", noise_multiplier, max_participations)],
                     delta, accountant)


def _calibrate_stage(event_of_z, target_epsilon: float, delta: float,
                     accountant: str) -> float:
  """Smallest z with ε(event_of_z(z)) ≤ target_epsilon (brentq within a bracket).

  RDP: bracket search upward from [1e-3, 1]. PLD: the RDP answer z_rdp is an upper
  bound (RDP is looser), so PLD searches in [z_rdp / 4, z_rdp] (a tiny z would make
  the PLD grid explode).
  """
  if math.isinf(target_epsilon):
    return 0.0
  if target_epsilon <= 0:
    raise ConfigError(f"a stage's target epsilon must be > 0, found {target_epsilon}.")

  def run(acc_name, bracket, tol):
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(acc_name),
        lambda z: event_of_z(z).dp_event(),
        target_epsilon, delta, bracket_interval=bracket, tol=tol))

  z_rdp = run("rdp", dp_accounting.LowerEndpointAndGuess(_Z_LOWER, 1.0), 1e-5)
  if accountant == "rdp":
    return z_rdp
  z_low = z_rdp / 4.0
  eps_low = epsilon_for([event_of_z(z_low)], delta, "pld")
  if eps_low <= target_epsilon:  # PLD much tighter than RDP: widen downwards
    z_low = max(z_rdp / 32.0, _Z_LOWER)
  try:
    return run("pld", dp_accounting.ExplicitBracketInterval(z_low, z_rdp), 1e-4)
  except ValueError:
    return z_rdp  # no bracket: the RDP value is a valid (conservative) answer


def resolve_budget_split(plan: AccountingPlan,
                         budget_split: Optional[Mapping[str, float]] = None
                         ) -> Dict[str, float]:
  """The split restricted to the plan's active stages, re-normalized to sum 1."""
  split = dict(DEFAULT_BUDGET_SPLIT if budget_split is None else budget_split)
  unknown = sorted(set(split) - set(STAGES))
  if unknown:
    raise ConfigError(f"budget_split has unknown stage(s) {unknown}; "
                      f"expected keys among {list(STAGES)}.")
  active = plan.active_stages()
  missing = [s for s in active if split.get(s, 0.0) <= 0.0]
  if missing:
    raise ConfigError(f"budget_split gives no positive share to active stage(s) "
                      f"{missing} (split: {split}).")
  total = sum(split[s] for s in active)
  return {s: split[s] / total for s in active}


def calibrate_noise_multipliers(target_epsilon: float, delta: float,
                                plan: AccountingPlan,
                                budget_split: Optional[Mapping[str, float]] = None,
                                accountant: str = "rdp",
                                local_delta: Optional[float] = None,
                                fit_total: str = "check",
                                total_tolerance: float = 0.01) -> PrivacyReport:
  """Calibrates z0, z1, z2 for a total (ε, δ) split between the active stages.

  See the module docstring for the procedure. Inactive stages get z = 0 and ε = 0.

  Args:
    target_epsilon: total ε of the run (> 0; inf = no DP).
    delta: total δ in (0, 1); each stage is calibrated at this δ.
    plan: the :class:`AccountingPlan`.
    budget_split: share of ε per stage (default :data:`DEFAULT_BUDGET_SPLIT`).
    accountant: 'rdp' (default) or 'pld'.
    local_delta: δ1 for the reported local ε1 of the sketches (default ``delta``).
    fit_total: 'check' (default) or 'tighten' (see module docstring).
    total_tolerance: relative tolerance of 'tighten' (achieved ≥ (1 - tol)·target).
  """
  _check_delta(delta)
  if not target_epsilon > 0:
    raise ConfigError(f"target epsilon must be > 0 (or inf), found {target_epsilon}.")
  if fit_total not in ("check", "tighten"):
    raise ConfigError(f"fit_total must be 'check' or 'tighten', found {fit_total!r}.")
  make_accountant(accountant)  # validates the name
  local_delta = delta if local_delta is None else local_delta
  split = resolve_budget_split(plan, budget_split)
  active = list(split)
  plan_dict = dataclasses.asdict(plan)

  if math.isinf(target_epsilon):
    zs = {s: 0.0 for s in STAGES}
    return PrivacyReport(
        epsilon_target=math.inf, epsilon_achieved=math.inf if active else 0.0,
        delta=delta, accountant=accountant, noise_multipliers=zs,
        stage_epsilons={s: (math.inf if s in active else 0.0) for s in STAGES},
        stage_epsilon_targets={s: (math.inf if s in active else 0.0) for s in STAGES},
        budget_split=split,
        local_epsilon1=math.inf if "stage1" in active else None,
        local_delta1=local_delta if "stage1" in active else None, plan=plan_dict)

  def calibrate_all(scale: float):
    zs = {s: 0.0 for s in STAGES}
    for s in active:
      zs[s] = _calibrate_stage(lambda z, s=s: plan.stage_event(s, z),
                               scale * split[s] * target_epsilon, delta, accountant)
    total = epsilon_for([plan.stage_event(s, zs[s]) for s in active], delta,
                        accountant)
    return zs, total

  scale = 1.0
  zs, total = calibrate_all(scale)
  if total > target_epsilon or (
      fit_total == "tighten" and total < (1 - total_tolerance) * target_epsilon):
    # Bisection on the common scale of the shares: composed ε is increasing in it.
    if total > target_epsilon:
      lo, hi, best = 0.0, 1.0, None
    else:
      lo, hi, best = 1.0, target_epsilon / max(total, 1e-12), (scale, zs, total)
      hi /= 1.25
      while True:  # find an upper end that overshoots
        hi *= 1.25
        zs_h, tot_h = calibrate_all(hi)
        if tot_h > target_epsilon or hi > 1e3:
          break
        lo, best = hi, (hi, zs_h, tot_h)
    for _ in range(40):
      mid = 0.5 * (lo + hi)
      zs_m, tot_m = calibrate_all(mid)
      if tot_m <= target_epsilon:
        lo, best = mid, (mid, zs_m, tot_m)
        if fit_total == "check" or tot_m >= (1 - total_tolerance) * target_epsilon:
          break
      else:
        hi = mid
    if best is None:
      raise ConfigError(
          f"could not calibrate noise for epsilon={target_epsilon}, delta={delta} "
          f"with plan {plan_dict}.")
    scale, zs, total = best

  stage_eps = {s: 0.0 for s in STAGES}
  targets = {s: 0.0 for s in STAGES}
  for s in active:
    stage_eps[s] = epsilon_for([plan.stage_event(s, zs[s])], delta, accountant)
    targets[s] = scale * split[s] * target_epsilon
  eps1 = (local_epsilon(zs["stage1"], local_delta, accountant)
          if "stage1" in active else None)
  return PrivacyReport(
      epsilon_target=float(target_epsilon), epsilon_achieved=float(total),
      delta=float(delta), accountant=accountant, noise_multipliers=zs,
      stage_epsilons=stage_eps, stage_epsilon_targets=targets, budget_split=split,
      local_epsilon1=eps1, local_delta1=local_delta if eps1 is not None else None,
      plan=plan_dict)


def calibrate_ifca_ldp(target_epsilon: float, delta: float, max_participations: int,
                       accountant: str = "rdp") -> float:
  """Noise multiplier z of IFCA+LDP: Gaussian(z) × K is (ε, δ)-DP (0 if ε = inf)."""
  _check_delta(delta)
  if not target_epsilon > 0:
    raise ConfigError(f"target epsilon must be > 0 (or inf), found {target_epsilon}.")
  return _calibrate_stage(
      lambda z: StageEvent("stage2", z, max_participations), target_epsilon, delta,
      accountant)


def epsilon_spent_after(rounds_done: int, stage: str, plan: AccountingPlan,
                        noise_multipliers: Mapping[str, float], delta: float,
                        accountant: str = "rdp") -> float:
  """ε spent once ``rounds_done`` rounds of ``stage`` are done (per-round reporting).

  Stages before ``stage`` (in the order stage0, stage1, stage2) count as complete;
  later ones as not started. For stage1, ``rounds_done`` ≥ 1 means "sketches sent".
  """
  if stage not in STAGES:
    raise ConfigError(f"Unknown stage {stage!r}; expected one of {list(STAGES)}.")
  if rounds_done < 0:
    raise ConfigError(f"rounds_done must be >= 0, found {rounds_done}.")
  idx = STAGES.index(stage)
  events = []
  for s in STAGES[:idx]:
    if s in plan.active_stages():
      events.append(plan.stage_event(s, noise_multipliers.get(s, 0.0)))
  if stage in plan.active_stages() and rounds_done > 0:
    events.append(plan.stage_event(stage, noise_multipliers.get(stage, 0.0),
                                   rounds=rounds_done))
  return epsilon_for(events, delta, accountant)


def plan_from_config(cfg) -> AccountingPlan:
  """The :class:`AccountingPlan` of a :class:`pina_tff.config.RunConfig`.

  Stage 1 runs only for method 'pina'. Stage 0 runs when enabled with T0 > 0.
  'ifca_ldp' accounts stage 2 as local DP with K = T2 (upper bound).
  """
  s0, s2 = cfg.stage0, cfg.stage2
  t0 = s0.rounds if s0.enabled else 0
  return AccountingPlan(
      population=cfg.population,
      stage0_rounds=t0, stage0_cohort=s0.cohort if t0 > 0 else 0,
      stage1_enabled=cfg.method == "pina",
      stage2_rounds=s2.rounds, stage2_cohort=s2.cohort,
      stage2_local_dp=cfg.method == "ifca_ldp",
      stage2_max_participations=None)


def calibrate_from_config(cfg, **kwargs) -> PrivacyReport:
  """:func:`calibrate_noise_multipliers` for a validated RunConfig."""
  p = cfg.privacy
  delta = p.delta if p.delta is not None else 1.0 / cfg.population
  return calibrate_noise_multipliers(
      p.epsilon, delta, plan_from_config(cfg), p.budget_split, p.accountant,
      local_delta=getattr(p, "local_delta", None), **kwargs)
