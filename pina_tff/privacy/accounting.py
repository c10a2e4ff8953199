"""Privacy accounting and noise calibration for a PINA run (and the baselines).

Computed with Google's `dp_accounting`: the privacy-loss-distribution (PLD) accountant by
default, the RDP accountant as an option (``privacy.accountant``). Under 'pld' a client
row whose every event is an unsampled Gaussian (the server model, fixed-size cohorts,
stage 1, the local ε's) is composed exactly: K Gaussians with multipliers z_i are one
Gaussian with μ = sqrt(Σ 1/z_i²), and ε(δ) is the analytic Gaussian mechanism's
(Balle & Wang 2018), inverted by bisection and rounded up; rows with Poisson-sampled
events go through dp_accounting's PLD accountant (pessimistic discretization: an upper
bound). Every report also carries the RDP ε beside it (``epsilons_by_accountant``).
Cross-checked in the tests against the closed form computed another way and Microsoft's
independent `prv-accountant`.

**Unit and neighbouring relation (per stage).** The unit is one client (user-level DP).

* Stages 0 and 2 (DP-FedAvg with central or distributed DP, or a secure sum):
  *zero-out* neighbours: the two datasets differ in one client's data being replaced by
  nothing (the client then sends a zero update). A clipped update moves the sum by at
  most the clip S, so ``Gaussian(z)`` with noise std z·S is the per-round mechanism.
  (Add-or-remove does not hold as such: the aggregate divides by the fixed qP.)
* Stage 1 (sketches), against the server: zero-out as well (an empty client's sketch is
  the zero vector), so the sketch is ``Gaussian(z1)`` with sensitivity S1.
* *Local* DP (the reported local ε1 of a sketch, and IFCA+LDP's local ε): any two inputs
  of one client, so a vector clipped to S has sensitivity 2·S: noise std z·S is
  ``Gaussian(z/2)``.

**Two threat models, both computed for every run** (``THREAT_MODELS``):

* ``'release'`` — anyone who sees the released models (not who took part). With Poisson
  sampling (``sampling='poisson'``): stage 0 ``PoissonSampled(q0, Gaussian(z0))``^T0,
  stage 1 ``Gaussian(z1)`` once (the k-means init is post-processing of the sketches,
  which cost their Gaussian once; the fixed-size sketch cohort gets no amplification),
  stage 2 ``PoissonSampled(q2, Gaussian(z2))``^T2. With fixed-size cohorts
  (``sampling='fixed'``) the Poisson bound does not hold: no amplification, as below.
* ``'server'`` — the server, which knows who took part: no amplification. A client that
  took part in K0 stage-0 rounds, sent a sketch (s1 ∈ {0, 1}) and took part in K2 stage-2
  rounds is protected by ``Gaussian(z0)``^K0 ∘ ``Gaussian(z1)``^s1 ∘ ``Gaussian(z2)``^K2.
  The counts come from the run's cohort schedule (``pina_tff.simulation.sampling``,
  known in advance from the seed) and ε is the maximum over the clients (exact: every
  distinct Pareto-maximal (K0, s1, K2) row is accounted, not max K0 and max K2
  separately). Without a seed the upper bound (T0, 1, T2) is used.

IFCA+LDP's stage 2 sends individually noised updates in the clear: ``Gaussian(z2)``^K2
with no amplification under both models.

**Distributed DP.** ``z`` here is always the *effective* Gaussian multiplier; with TFF's
distributed discrete Gaussian the aggregator sets its nominal multiplier so that the
effective one after rounding, z·c/(c + γ√d), equals it (``pina_tff.privacy.ddp``).

**δ.** Default ``default_delta`` (owned by ``pina_tff.config``) = min(1e-5, 1/(10·P)): a mechanism that publishes
one random client's data in full with probability δ per client is (0, δ)-DP, so δ must
be well below 1/P for (ε, δ) to mean anything; δ ≤ 1/(10·P) bounds the expected number
of clients exposed that way by 0.1, and the 1e-5 cap keeps small simulated populations
at the value common in the DP-FL literature.

**Calibration.** Given a target ε, δ and a budget split (fractions of ε per active stage,
default :data:`DEFAULT_BUDGET_SPLIT`, re-normalized over the stages a plan runs), each
stage's multiplier is calibrated with ``dp_accounting.calibrate_dp_mechanism`` for its
share under the chosen threat model; then every z is divided by one common factor,
bisected so that the composed ε of the chosen threat model lies in [(1 − tol)·ε, ε]
(``fit_total='tighten'``, default, tol = 1%): every method in a comparison spends the
same ε. ``fit_total='check'`` only scales the noise up when the composition exceeds ε.
(The search runs on an integer-order RDP accountant, fast and conservative; the final
fit and every reported ε use ``accountant``, 'pld' by default: the tightest valid
bound, so the budget is spent rather than left unused, e.g. the same noise that RDP
calls ε = 2 is 1.83 under PLD for the Fashion-MNIST preset.)
ε = inf means "no DP": every multiplier is 0 and every ε is inf.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import dp_accounting
from dp_accounting.pld import privacy_loss_mechanism
import numpy as np

from pina_tff import config as config_lib
from pina_tff.config import DEFAULT_BUDGET_SPLIT
from pina_tff import method_table
from pina_tff.errors import ConfigError
from pina_tff.simulation import sampling as sampling_lib

STAGES = config_lib.BUDGET_STAGES
ACCOUNTANTS = config_lib.ACCOUNTANTS
THREAT_MODELS = config_lib.THREAT_MODELS
#: Default share of ε per stage (re-normalized over the stages a plan runs).
#: Relative tolerance of the default calibration (achieved ∈ [(1 - tol)·ε, ε]).
DEFAULT_TOLERANCE = 0.01
_Z_LOWER = 1e-3
_PLD_DISCRETIZATION = 1e-3  # PLD grid step (pessimistic rounding: still an upper bound)
#: The accountant of calibration and of every reported ε unless configured otherwise.
DEFAULT_ACCOUNTANT = config_lib.DEFAULT_ACCOUNTANT
#: Integer RDP orders of the fast search accountant (a valid, slightly looser bound;
#: only the calibration search uses it, the reported ε uses ``accountant``).
_FAST_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 256)


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
    population: number of clients P.
    stage0_rounds, stage0_cohort: T0 and the expected cohort of stage 0 (0 rounds = off).
    stage1_enabled: whether sketches are sent (PINA only).
    stage2_rounds, stage2_cohort: T2 and the expected cohort of stage 2.
    stage2_local_dp: IFCA+LDP (individually noised updates, no amplification).
    sampling: 'poisson' or 'fixed' (``pina_tff.simulation.sampling``).
    seed: the run's seed (fixes the cohort schedule); None: counts bounded by T0, T2.
    stage1_clients: how many clients send a sketch (None: possibly every client).
    executions: ((stage, round, times), ...) for every round the server computed more
      than once (a run killed after a round's noisy aggregate and before the checkpoint
      that follows it re-runs the round on resume: `computations.program.program_state.
      ExecutionLog`); stage 1's sketches are ('stage1', 1, times). A round computed n
      times with independent noise is n Gaussians: for a client of its cohort
      Gaussian(z)^n, and under amplification PoissonSampled(q, Gaussian(z/sqrt(n)))
      (the n copies share the one Poisson cohort). Calibration ignores them (the noise
      is fixed before anything runs); :func:`account` counts them.
    stage1_local_dp: whether stage 1's sketches leave the clients locally DP (the
      paper); False for DP Lloyd (`pina_tff.clustering.dp_lloyd`: L steps over a
      secure sum with noise z1·√L each compose to the same Gaussian(z1) against the
      server, but no local ε1 holds).
  """
  population: int
  stage0_rounds: int = 0
  stage0_cohort: int = 0
  stage1_enabled: bool = True
  stage2_rounds: int = 0
  stage2_cohort: int = 0
  stage2_local_dp: bool = False
  sampling: str = "poisson"
  seed: Optional[int] = None
  stage1_clients: Optional[int] = None
  executions: Tuple[Tuple[str, int, int], ...] = ()
  stage1_local_dp: bool = True

  def active_stages(self) -> List[str]:
    out = []
    if self.stage0_rounds > 0:
      out.append("stage0")
    if self.stage1_enabled:
      out.append("stage1")
    if self.stage2_rounds > 0:
      out.append("stage2")
    return out

  def truncated(self, stage: str, rounds_done: int) -> "AccountingPlan":
    """The plan after ``rounds_done`` rounds of ``stage`` (earlier stages complete)."""
    if stage not in STAGES:
      raise ConfigError(f"Unknown stage {stage!r}; expected one of {list(STAGES)}.")
    idx = STAGES.index(stage)
    t0 = self.stage0_rounds if idx > 0 else min(rounds_done, self.stage0_rounds)
    s1 = self.stage1_enabled and (idx > 1 or (idx == 1 and rounds_done > 0))
    t2 = min(rounds_done, self.stage2_rounds) if idx == 2 else 0
    limits = {"stage0": t0, "stage1": 1 if s1 else 0, "stage2": t2}
    return dataclasses.replace(
        self, stage0_rounds=t0, stage1_enabled=s1, stage2_rounds=t2,
        executions=tuple(e for e in self.executions if e[1] <= limits[e[0]]))

  def times_run(self, stage: str) -> Dict[int, int]:
    """{round: times computed} of ``stage``'s rounds computed more than once."""
    return {int(r): int(n) for st, r, n in self.executions if st == stage and n > 1}

  def client_rows(self) -> Tuple[Tuple[int, int, int], ...]:
    """Pareto-maximal (K0, s1, K2) participation rows over the clients."""
    return _client_rows(self.population, self.stage0_rounds, self.stage0_cohort,
                        self.stage1_enabled, self.stage1_clients, self.stage2_rounds,
                        self.stage2_cohort, self.sampling, self.seed,
                        tuple(sorted(self.executions)))

  def max_participations(self) -> Tuple[int, int]:
    """(max K0, max K2) over the clients."""
    rows = self.client_rows()
    return (max(r[0] for r in rows), max(r[2] for r in rows))

  def amplified(self, stage: str, threat_model: str) -> bool:
    """Whether ``stage`` gets Poisson amplification under ``threat_model``."""
    _check_threat_model(threat_model)
    if threat_model == "server" or self.sampling != "poisson" or stage == "stage1":
      return False
    return not (stage == "stage2" and self.stage2_local_dp)

  def stage_events(self, stage: str, noise_multiplier: float, threat_model: str,
                   row: Tuple[int, int, int]) -> List[StageEvent]:
    """``stage``'s events for one client row, rounds computed more than once included:
    unamplified, the row already counts them (a client's K is its number of
    computations); amplified, round r computed n times is PoissonSampled(q,
    Gaussian(z/sqrt(n)))."""
    reps = self.times_run(stage)
    if not reps or not self.amplified(stage, threat_model):
      return [self.stage_event(stage, noise_multiplier, threat_model, row)]
    rounds, cohort = ((self.stage0_rounds, self.stage0_cohort) if stage == "stage0"
                      else (self.stage2_rounds, self.stage2_cohort))
    reps = {r: n for r, n in reps.items() if r <= rounds}
    q = _sampling_probability(cohort, self.population)
    return ([StageEvent(stage, noise_multiplier, rounds - len(reps), q)] +
            [StageEvent(stage, noise_multiplier / math.sqrt(n), 1, q)
             for _, n in sorted(reps.items())])

  def stage_event(self, stage: str, noise_multiplier: float,
                  threat_model: str = "release",
                  row: Optional[Tuple[int, int, int]] = None) -> StageEvent:
    """The :class:`StageEvent` of ``stage`` for one client row (default: the maxima),
    without the amplified rounds computed more than once (:meth:`stage_events`)."""
    if stage not in STAGES:
      raise ConfigError(f"Unknown stage {stage!r}; expected one of {list(STAGES)}.")
    if row is None:
      k0, k2 = self.max_participations()
      row = (k0, 1 if self.stage1_enabled else 0, k2)
    if stage == "stage1":
      return StageEvent(stage, noise_multiplier, row[1] if self.stage1_enabled else 0)
    rounds, cohort, k = ((self.stage0_rounds, self.stage0_cohort, row[0])
                         if stage == "stage0" else
                         (self.stage2_rounds, self.stage2_cohort, row[2]))
    if self.amplified(stage, threat_model):
      return StageEvent(stage, noise_multiplier, rounds,
                        _sampling_probability(cohort, self.population))
    return StageEvent(stage, noise_multiplier, k)

  def events(self, noise_multipliers: Mapping[str, float], threat_model: str,
             row: Tuple[int, int, int]) -> List[StageEvent]:
    return [e for s in self.active_stages()
            for e in self.stage_events(s, noise_multipliers.get(s, 0.0), threat_model,
                                       row)]


@functools.lru_cache(maxsize=64)
def _client_rows(population, t0, m0, s1_enabled, m1, t2, m2, scheme, seed,
                 executions=()):
  """Pareto-maximal rows of (K0, s1, K2): each client's number of computations it
  took part in per stage (a round computed n times counts n)."""
  extra = {"stage0": {}, "stage1": {}, "stage2": {}}
  for st, r, n in executions:
    if n > 1:
      extra[st][int(r)] = int(n) - 1
  extra["stage0"] = {r: n for r, n in extra["stage0"].items() if r <= t0}
  extra["stage2"] = {r: n for r, n in extra["stage2"].items() if r <= t2}
  n1 = 1 + sum(extra["stage1"].values()) if s1_enabled else 0
  if seed is None:
    return ((t0 + sum(extra["stage0"].values()), n1, t2 + sum(extra["stage2"].values())),)
  k0 = (sampling_lib.participation_counts(seed, 0, t0, population, m0, scheme)
        if t0 > 0 else np.zeros(population, np.int64))
  k2 = (sampling_lib.participation_counts(seed, 2, t2, population, m2, scheme)
        if t2 > 0 else np.zeros(population, np.int64))
  for k, stage, m in ((k0, 0, m0), (k2, 2, m2)):
    for r, n in extra[f"stage{stage}"].items():
      k[sampling_lib.cohort(seed, stage, r, population, m, scheme)] += n
  s1 = np.zeros(population, np.int64)
  if s1_enabled:
    if m1 is None or m1 >= population:
      s1[:] = n1
    else:
      s1[sampling_lib.sketch_cohort(seed, population, m1)] = n1
  rows = sorted(set(zip(k0.tolist(), s1.tolist(), k2.tolist())), reverse=True)
  pareto = []
  for r in rows:
    if not any(all(p[i] >= r[i] for i in range(3)) for p in pareto):
      pareto.append(r)
  return tuple(pareto)


def _sampling_probability(cohort: int, population: int) -> float:
  if population <= 0:
    raise ConfigError(f"population must be > 0 for accounting, found {population}.")
  if cohort > population:
    raise ConfigError(
        f"cohort ({cohort}) is larger than the population ({population}).")
  return float(cohort) / float(population)


def _check_threat_model(threat_model: str) -> None:
  if threat_model not in THREAT_MODELS:
    raise ConfigError(f"unknown threat model {threat_model!r}; valid: "
                      f"{', '.join(THREAT_MODELS)}.")


@dataclasses.dataclass(frozen=True)
class PrivacyReport:
  """Result of a calibration (or of accounting fixed noise multipliers).

  ``epsilon_achieved`` is ε under ``threat_model`` (the one calibrated) and
  ``accountant``; ``epsilons`` has both threat models ('server', 'release') under
  ``accountant``; ``epsilons_by_accountant`` has both threat models under every
  accountant ({'pld': {...}, 'rdp': {...}}): the RDP ε reported beside the PLD one. ``local_epsilon1``: the sketches' local
  ε1 (sensitivity 2·S1); ``local_epsilon2``: IFCA+LDP's local ε (2·S2, K2 rounds).
  """
  epsilon_target: float
  epsilon_achieved: float
  delta: float
  accountant: str
  threat_model: str
  epsilons: Dict[str, float]
  noise_multipliers: Dict[str, float]
  stage_epsilons: Dict[str, float]
  stage_epsilon_targets: Dict[str, float]
  budget_split: Dict[str, float]
  local_epsilon1: Optional[float]
  local_delta1: Optional[float]
  local_epsilon2: Optional[float]
  max_participations: Dict[str, int]
  plan: Dict[str, Any]
  epsilons_by_accountant: Dict[str, Dict[str, float]] = dataclasses.field(
      default_factory=dict)

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


def make_accountant(accountant: str = DEFAULT_ACCOUNTANT) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant: 'pld' (default) or 'rdp'."""
  if accountant == "rdp":
    return dp_accounting.rdp.RdpAccountant()
  if accountant == "pld":
    return dp_accounting.pld.PLDAccountant(
        value_discretization_interval=_PLD_DISCRETIZATION)
  if accountant == "rdp_fast":  # internal: calibration search only
    return dp_accounting.rdp.RdpAccountant(list(_FAST_ORDERS))
  raise ConfigError(
      f"Unknown accountant {accountant!r}; expected one of {list(ACCOUNTANTS)}.")


def _check_delta(delta: float) -> None:
  if not 0.0 < delta < 1.0:
    raise ConfigError(f"delta must be in (0, 1), found {delta}.")


def gaussian_delta(mu: float, epsilon: float) -> float:
  """δ(ε) of a Gaussian mechanism with sensitivity/std = ``mu``: the analytic Gaussian
  mechanism (Balle & Wang 2018, Theorem 8), Φ(μ/2 − ε/μ) − e^ε·Φ(−μ/2 − ε/μ), as
  dp_accounting's ``GaussianPrivacyLoss`` evaluates it (log-space second term)."""
  loss = privacy_loss_mechanism.GaussianPrivacyLoss(1.0 / mu, sensitivity=1.0)
  return float(loss.get_delta_for_epsilon(float(epsilon)))


def gaussian_epsilon(mu: float, delta: float) -> float:
  """The smallest ε (rounded up, relative error ≤ 1e-9) with ``gaussian_delta(mu, ε) ≤
  delta``: the exact ε of a Gaussian mechanism, or of any composition of Gaussians
  with μ = sqrt(Σ 1/z_i²) (a composition of Gaussians is a Gaussian)."""
  _check_delta(delta)
  if mu <= 0:
    return 0.0
  if gaussian_delta(mu, 0.0) <= delta:
    return 0.0
  lo, hi = 0.0, 1.0
  while gaussian_delta(mu, hi) > delta:  # δ(ε) decreases in ε
    lo, hi = hi, 2.0 * hi
    if hi > 1e6:
      raise ArithmeticError(f"no finite epsilon at delta={delta} for mu={mu}")
  while hi - lo > 1e-9 * max(hi, 1e-6):
    mid = 0.5 * (lo + hi)
    if gaussian_delta(mu, mid) > delta:
      lo = mid
    else:
      hi = mid
  return hi


def _unsampled_gaussian_mu(stages: Sequence[StageEvent]) -> Optional[float]:
  """μ = sqrt(Σ count/z²) when every stage is an unsampled Gaussian with z > 0 (the
  composition is then exactly Gaussian(1/μ)); None otherwise."""
  rho = 0.0
  for s in stages:
    if s.count <= 0:
      continue
    q = s.sampling_probability
    if s.noise_multiplier <= 0 or (q is not None and q < 1.0):
      return None
    rho += s.count / float(s.noise_multiplier) ** 2
  return math.sqrt(rho)


def epsilon_for(stages: Sequence[StageEvent], delta: float,
                accountant: str = DEFAULT_ACCOUNTANT) -> float:
  """ε at ``delta`` of the composition of ``stages`` (inf if any stage has z = 0).

  'pld': exact (:func:`gaussian_epsilon`) when no stage is subsampled, else
  dp_accounting's PLD accountant. 'rdp' ('rdp_fast'): dp_accounting's RDP accountant.
  """
  _check_delta(delta)
  events = [s.dp_event() for s in stages]
  events = [e for e in events if not isinstance(e, dp_accounting.NoOpDpEvent)]
  if not events:
    return 0.0
  if any(isinstance(e, dp_accounting.NonPrivateDpEvent) for e in events):
    return math.inf
  if accountant == "pld":
    mu = _unsampled_gaussian_mu(stages)
    if mu is not None:
      return gaussian_epsilon(mu, delta)
  acc = make_accountant(accountant)
  acc.compose(dp_accounting.ComposedDpEvent(events))
  return float(acc.get_epsilon(delta))


def run_epsilon(plan: AccountingPlan, noise_multipliers: Mapping[str, float],
                delta: float, threat_model: str, accountant: str = DEFAULT_ACCOUNTANT) -> float:
  """ε of the whole plan under ``threat_model``: the maximum over the client rows."""
  _check_threat_model(threat_model)
  if not plan.active_stages():
    return 0.0
  seen, worst = set(), 0.0
  for row in plan.client_rows():
    events = tuple(plan.events(noise_multipliers, threat_model, row))
    if events in seen:
      continue
    seen.add(events)
    worst = max(worst, epsilon_for(events, delta, accountant))
  return worst


def local_epsilon(noise_multiplier: float, delta: float, accountant: str = DEFAULT_ACCOUNTANT,
                  count: int = 1) -> float:
  """Local ε of ``count`` releases of a vector clipped to S with noise std z·S.

  Local DP covers any two inputs of one client: sensitivity 2·S, i.e. Gaussian(z/2).
  """
  if count <= 0:
    return 0.0
  return epsilon_for([StageEvent("local", noise_multiplier / 2.0, count)], delta,
                     accountant)


def _calibrate_stage(event_of_z, target_epsilon: float, delta: float,
                     accountant: str) -> float:
  """Smallest z with ε(event_of_z(z)) ≤ target_epsilon (brentq within a bracket).

  The calibration passes accountant 'rdp_fast' (integer orders): the search is fast
  and the answer conservative; :func:`_fit_common_factor` then fits the real one.
  """
  if math.isinf(target_epsilon):
    return 0.0
  if target_epsilon <= 0:
    raise ConfigError(f"a stage's target epsilon must be > 0, found {target_epsilon}.")
  if event_of_z(1.0).count <= 0:
    return 0.0

  def run(acc_name, bracket, tol):
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(acc_name),
        lambda z: event_of_z(z).dp_event(),
        target_epsilon, delta, bracket_interval=bracket, tol=tol))

  return run(accountant, dp_accounting.LowerEndpointAndGuess(_Z_LOWER, 1.0), 1e-6)


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


def _local_epsilons(plan, zs, local_delta, accountant):
  eps1 = (local_epsilon(zs["stage1"], local_delta, accountant,
                        count=max(r[1] for r in plan.client_rows()))
          if plan.stage1_enabled and plan.stage1_local_dp else None)
  eps2 = None
  if plan.stage2_local_dp and plan.stage2_rounds > 0:
    eps2 = local_epsilon(zs["stage2"], local_delta, accountant,
                         count=plan.max_participations()[1])
  return eps1, eps2


def account(plan: AccountingPlan, noise_multipliers: Mapping[str, float], delta: float,
            threat_model: str = "server", accountant: str = DEFAULT_ACCOUNTANT,
            local_delta: Optional[float] = None,
            epsilon_target: float = math.nan) -> PrivacyReport:
  """A :class:`PrivacyReport` for fixed (effective) noise multipliers."""
  _check_delta(delta)
  _check_threat_model(threat_model)
  zs = {s: float(noise_multipliers.get(s, 0.0)) for s in STAGES}
  local_delta = delta if local_delta is None else local_delta
  active = plan.active_stages()
  by_acc = {a: {m: run_epsilon(plan, zs, delta, m, a) for m in THREAT_MODELS}
            for a in ACCOUNTANTS}
  eps = by_acc.get(accountant) or {m: run_epsilon(plan, zs, delta, m, accountant)
                                   for m in THREAT_MODELS}
  stage_eps = {s: 0.0 for s in STAGES}
  for s in active:
    stage_eps[s] = max(epsilon_for(plan.stage_events(s, zs[s], threat_model, row),
                                   delta, accountant) for row in plan.client_rows())
  eps1, eps2 = _local_epsilons(plan, zs, local_delta, accountant)
  k0, k2 = plan.max_participations()
  return PrivacyReport(
      epsilon_target=float(epsilon_target), epsilon_achieved=eps[threat_model],
      delta=float(delta), accountant=accountant, threat_model=threat_model,
      epsilons=eps, noise_multipliers=zs, stage_epsilons=stage_eps,
      stage_epsilon_targets={s: math.nan for s in STAGES},
      budget_split=resolve_budget_split(plan, None) if active else {},
      local_epsilon1=eps1, local_delta1=local_delta if eps1 is not None else None,
      local_epsilon2=eps2, max_participations={"stage0": k0, "stage2": k2},
      plan=dataclasses.asdict(plan), epsilons_by_accountant=by_acc)


def calibrate_noise_multipliers(target_epsilon: float, delta: float,
                                plan: AccountingPlan,
                                budget_split: Optional[Mapping[str, float]] = None,
                                accountant: str = DEFAULT_ACCOUNTANT,
                                local_delta: Optional[float] = None,
                                fit_total: str = "tighten",
                                total_tolerance: float = DEFAULT_TOLERANCE,
                                threat_model: str = "server") -> PrivacyReport:
  """Calibrates z0, z1, z2 so ``threat_model``'s ε uses the target (ε, δ).

  The run is then user-level (ε, δ)-DP against ``threat_model`` with the achieved ε
  (≤ target; see the module docstring). Inactive stages get z = 0 and ε = 0.

  Args:
    target_epsilon: total ε of the run (> 0; inf = no DP).
    delta: total δ in (0, 1).
    plan: the :class:`AccountingPlan`.
    budget_split: share of ε per stage (default :data:`DEFAULT_BUDGET_SPLIT`).
    accountant: 'pld' (default, :data:`DEFAULT_ACCOUNTANT`) or 'rdp'.
    local_delta: δ of the reported local ε's (default ``delta``).
    fit_total: 'tighten' (default: achieved ∈ [(1 - tol)·ε, ε]) or 'check'.
    total_tolerance: relative tolerance of 'tighten'.
    threat_model: 'server' (default) or 'release': the ε the noise is calibrated to.
  """
  _check_calibration_args(target_epsilon, delta, accountant, fit_total, threat_model)
  local_delta = delta if local_delta is None else local_delta
  plan = dataclasses.replace(plan, executions=())  # fixed before anything runs
  split = resolve_budget_split(plan, budget_split)
  max_participations = plan.max_participations()
  if math.isinf(target_epsilon):
    return _no_dp_report(plan, split, delta, accountant, threat_model, local_delta,
                         max_participations)
  tol = total_tolerance if fit_total == "tighten" else 1.0
  report = _calibrated_report(target_epsilon, delta, plan, split, accountant,
                              local_delta, tol, threat_model)
  return dataclasses.replace(
      report, budget_split=split,
      stage_epsilon_targets={s: (split[s] * target_epsilon if s in split else 0.0)
                             for s in STAGES})


def _check_calibration_args(target_epsilon: float, delta: float, accountant: str,
                            fit_total: str, threat_model: str) -> None:
  """δ in (0, 1), a known threat model, ε > 0 (or inf), fit_total and accountant."""
  _check_delta(delta)
  _check_threat_model(threat_model)
  if not target_epsilon > 0:
    raise ConfigError(f"target epsilon must be > 0 (or inf), found {target_epsilon}.")
  if fit_total not in ("check", "tighten"):
    raise ConfigError(f"fit_total must be 'check' or 'tighten', found {fit_total!r}.")
  make_accountant(accountant)  # validates the name


def _no_dp_report(plan: AccountingPlan, split: Dict[str, float], delta: float,
                  accountant: str, threat_model: str, local_delta: float,
                  max_participations: Tuple[int, int]) -> PrivacyReport:
  """The report of ε = inf (no DP): every z is 0, every active stage's ε is inf."""
  active = list(split)
  k0, k2 = max_participations
  inf_or_0 = math.inf if active else 0.0
  return PrivacyReport(
      epsilon_target=math.inf, epsilon_achieved=inf_or_0, delta=delta,
      accountant=accountant, threat_model=threat_model,
      epsilons={m: inf_or_0 for m in THREAT_MODELS},
      noise_multipliers={s: 0.0 for s in STAGES},
      stage_epsilons={s: (math.inf if s in active else 0.0) for s in STAGES},
      stage_epsilon_targets={s: (math.inf if s in active else 0.0) for s in STAGES},
      budget_split=split,
      local_epsilon1=math.inf if plan.stage1_enabled and plan.stage1_local_dp else None,
      local_delta1=local_delta if plan.stage1_enabled and plan.stage1_local_dp else None,
      local_epsilon2=(math.inf if plan.stage2_local_dp and plan.stage2_rounds > 0
                      else None),
      max_participations={"stage0": k0, "stage2": k2}, plan=dataclasses.asdict(plan),
      epsilons_by_accountant={a: {m: inf_or_0 for m in THREAT_MODELS}
                              for a in ACCOUNTANTS})


def _calibrate_all(plan: AccountingPlan, split: Dict[str, float], target_epsilon: float,
                   delta: float, threat_model: str):
  """Each active stage's z for its share split[s]·ε alone (fast RDP search), and the
  composed ε of those z (fast RDP): (zs, ε)."""
  zs = {s: 0.0 for s in STAGES}
  for s in split:
    zs[s] = _calibrate_stage(lambda z, s=s: plan.stage_event(s, z, threat_model),
                             split[s] * target_epsilon, delta, "rdp_fast")
  return zs, run_epsilon(plan, zs, delta, threat_model, "rdp_fast")


def _calibrated_report(target_epsilon: float, delta: float, plan: AccountingPlan,
                       split: Dict[str, float], accountant: str, local_delta: float,
                       tol: float, threat_model: str) -> PrivacyReport:
  """The report of the z that make ``threat_model``'s composed ε (``accountant``) lie
  in [(1 - tol)·ε, ε] (tol = 1: at most ε).

  Raises:
    ConfigError: dp_accounting's numerics gave out (e.g. ε = 1e-3).
  """
  try:
    zs, _ = _calibrate_all(plan, split, target_epsilon, delta, threat_model)
    # One common factor on every z fits the total: first with the fast (conservative)
    # accountant, then with the real one (a few evaluations from a close start).
    zs = _fit_common_factor(plan, zs, delta, threat_model, "rdp_fast", target_epsilon,
                            tol / 2)
    zs = _fit_common_factor(plan, zs, delta, threat_model, accountant, target_epsilon,
                            tol)
    return account(plan, zs, delta, threat_model, accountant, local_delta,
                   epsilon_target=float(target_epsilon))
  except (ValueError, ArithmeticError) as e:
    # dp_accounting's numerics give out for very small targets (e.g. ε = 1e-3: a
    # "negative Renyi divergence" from rounding at z in the thousands).
    raise ConfigError(
        f"privacy.epsilon: cannot calibrate noise for ε={target_epsilon:g} at "
        f"δ={delta:g} ({accountant} accountant: {e}); use a larger epsilon.") from e


def reaccount(report: PrivacyReport, plan: AccountingPlan,
              local_delta: Optional[float] = None) -> PrivacyReport:
  """``report``'s calibrated noise accounted on ``plan`` (e.g. with the rounds the
  server computed more than once): every ε recomputed, the target, split and
  per-stage targets kept. ``local_delta``: δ of the local ε's (None: ``delta``)."""
  new = account(plan, report.noise_multipliers, report.delta, report.threat_model,
                report.accountant, local_delta, epsilon_target=report.epsilon_target)
  return dataclasses.replace(new, budget_split=report.budget_split,
                             stage_epsilon_targets=report.stage_epsilon_targets)


def _fit_common_factor(plan, zs, delta, threat_model, accountant, target, tol):
  """zs / t with t bisected so the real accountant's ε ∈ [(1 - tol)·target, target]."""
  def f(t):
    zt = {s: z / t for s, z in zs.items()}
    return zt, run_epsilon(plan, zt, delta, threat_model, accountant)

  def good(e):
    return (1 - tol) * target <= e <= target

  best, e = f(1.0)
  if good(e):
    return best
  if e > target:
    lo, hi = 1.0, 1.0
    while e > target:
      lo /= 1.05
      best, e = f(lo)
    if good(e):
      return best
  else:
    lo, hi = 1.0, 1.0
    while e <= target:
      if good(e):
        return best
      lo = hi
      hi *= 1.05
      zt, e = f(hi)
      if e <= target:
        best = zt
  for _ in range(40):
    mid = 0.5 * (lo + hi)
    zt, e = f(mid)
    if e <= target:
      lo, best = mid, zt
      if good(e):
        break
    else:
      hi = mid
  return best


def epsilon_spent_after(rounds_done: int, stage: str, plan: AccountingPlan,
                        noise_multipliers: Mapping[str, float], delta: float,
                        accountant: str = DEFAULT_ACCOUNTANT,
                        threat_model: str = "server") -> float:
  """ε spent once ``rounds_done`` rounds of ``stage`` are done (per-round reporting).

  Stages before ``stage`` (in the order stage0, stage1, stage2) count as complete;
  later ones as not started. For stage1, ``rounds_done`` ≥ 1 means "sketches sent".
  Server model: each client's participations in the rounds done so far.
  """
  if rounds_done < 0:
    raise ConfigError(f"rounds_done must be >= 0, found {rounds_done}.")
  return run_epsilon(plan.truncated(stage, rounds_done), noise_multipliers, delta,
                     threat_model, accountant)


def plan_from_config(cfg, cohort_key: Optional[int] = None) -> AccountingPlan:
  """The :class:`AccountingPlan` of a validated :class:`pina_tff.config.RunConfig`.

  Stage 1 runs only for methods whose table entry uses it (PINA;
  ``num_sketch_clients`` clients); stage 0 when enabled with T0 > 0; methods with local
  noise (IFCA+LDP) account stage 2 as local DP (``pina_tff.method_table``). The cohort schedule
  is the one the program draws with ``cfg.privacy.sampling`` from ``cohort_key``: the
  secure-mode run's secret cohort key, or (None) ``cfg.seed``.
  """
  s0, s2 = cfg.stage0, cfg.stage2
  method = method_table.get(cfg.method)
  t0 = cfg.stage0_rounds
  return AccountingPlan(
      population=cfg.population,
      stage0_rounds=t0, stage0_cohort=s0.cohort if t0 > 0 else 0,
      stage1_enabled=method.uses_stage1,
      stage2_rounds=s2.rounds, stage2_cohort=s2.cohort,
      stage2_local_dp=method.local_noise,
      sampling=cfg.privacy.sampling,
      seed=int(cfg.seed if cohort_key is None else cohort_key),
      stage1_clients=cfg.stage1_clients,
      stage1_local_dp=cfg.stage1.centroids != "dp_lloyd")


def calibrate_from_config(cfg, cohort_key: Optional[int] = None,
                          **kwargs) -> PrivacyReport:
  """:func:`calibrate_noise_multipliers` for a RunConfig (defaults resolved by
  ``pina_tff.config.resolve`` unless already resolved); ``cohort_key`` as in
  :func:`plan_from_config`."""
  if not config_lib.is_resolved(cfg):
    cfg = config_lib.resolve(cfg)
  p = cfg.privacy
  return calibrate_noise_multipliers(
      p.epsilon, p.delta, plan_from_config(cfg, cohort_key), p.budget_split,
      p.accountant,
      local_delta=p.local_delta, threat_model=p.threat_model, **kwargs)
