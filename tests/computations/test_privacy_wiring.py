"""Which noise multiplier reaches which stage, per method, against the accountant's plan.

For every method: the calibrated report (`pina_tff.privacy.accounting`), the stage specs
built from it (`computations.learning.methods`, as the program builds them), and the reported
epsilon recomputed here from the mechanisms the specs actually run: against the server
with the analytic Gaussian formula over the clients' rows (tests/privacy/references.py),
for the released models (Poisson-sampled events) with dp_accounting's PLD accountant
composing the events written here. No TFF execution. (The program-level check that the program passes
report.z0 / z1 / z2 to these builders is in test_program.py.)
"""
import dataclasses
import math

import dp_accounting
import numpy as np
import pytest

from computations.learning import methods
from pina_tff import config as config_lib
from pina_tff.privacy import accounting
from pina_tff.simulation import sampling
from tests.privacy.references import gaussian_eps

ALL = ("pina", "pina_ri", "ifca", "ifca_ldp", "fedavg", "fedprox", "fednova")
POP, T0, T2, M0, M2 = 2000, 3, 20, 50, 100
CLIP0, CLIP2, EPS = 0.7, 0.4, 8.0


def _cfg(method):
  return config_lib.validate(config_lib.RunConfig(
      method=method, num_clusters=3, population=POP, model_width=16,
      privacy=config_lib.PrivacyConfig(epsilon=EPS, delta=1e-5),
      stage0=config_lib.Stage0Config(rounds=T0, cohort=M0, clip=CLIP0),
      stage1=config_lib.Stage1Config(top_k=4, num_sketch_clients=200),
      stage2=config_lib.Stage2Config(rounds=T2, cohort=M2, clip=CLIP2)))


def _gaussian(z):
  return dp_accounting.GaussianDpEvent(z)


def _compose(events, delta):
  # PLD (the calibrated default), grid 1e-3 with pessimistic rounding, as configured.
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
  acc.compose(dp_accounting.ComposedDpEvent(events))
  return acc.get_epsilon(delta)


def _release_epsilon(method, z0, z1, z2, delta=1e-5):
  """Anyone who sees the released models: stage 0 Poisson(M0/P)-sampled Gaussian(z0)
  x T0; stage 1 (PINA only) one Gaussian(z1); stage 2 Poisson(M/P)-sampled Gaussian(z2)
  x T2, except IFCA+LDP: each client's noised update is seen, Gaussian(z2) x K2 with NO
  amplification (K2 = the worst client's number of stage-2 rounds)."""
  events = [dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(M0 / POP, _gaussian(z0)), T0)]
  if method == "pina":
    events.append(_gaussian(z1))
  if method == "ifca_ldp":
    k2 = sampling.participation_counts(0, 2, T2, POP, M2).max()
    events.append(dp_accounting.SelfComposedDpEvent(_gaussian(z2), int(k2)))
  else:
    events.append(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(M2 / POP, _gaussian(z2)), T2))
  return _compose(events, delta)


def _server_epsilon(method, z0, z1, z2, delta=1e-5):
  """The server, who picks the cohorts: no amplification. Every client's own counts from
  the run's Poisson schedule (seed 0): Gaussian(z0)^K0 o Gaussian(z1)^s1 o Gaussian(z2)^K2,
  maximized over the clients (here by brute force over the distinct rows)."""
  k0 = sampling.participation_counts(0, 0, T0, POP, M0)
  k2 = sampling.participation_counts(0, 2, T2, POP, M2)
  s1 = np.zeros(POP, np.int64)
  if method == "pina":
    s1[sampling.sketch_cohort(0, POP, 200)] = 1
  # A composition of Gaussians is a Gaussian with mu = sqrt(sum K/z^2).
  rho = k0 / z0 ** 2 + s1 / (z1 ** 2 if z1 else math.inf) + k2 / z2 ** 2
  return gaussian_eps(math.sqrt(rho.max()), delta)


@pytest.fixture(scope="module")
def reports():
  # Methods with the same plan share one calibration (it is the slow part).
  by_plan = {}
  for m in ALL:
    plan = accounting.plan_from_config(_cfg(m))
    if plan not in by_plan:
      by_plan[plan] = accounting.calibrate_from_config(_cfg(m))
  return {m: by_plan[accounting.plan_from_config(_cfg(m))] for m in ALL}


@pytest.mark.parametrize("method", ALL)
def test_reported_epsilon_is_the_composition_of_the_run_mechanisms(reports, method):
  r = reports[method]
  assert r.z0 > 0 and r.z2 > 0
  assert (r.z1 > 0) == (method == "pina")
  server = _server_epsilon(method, r.z0, r.z1, r.z2)
  release = _release_epsilon(method, r.z0, r.z1, r.z2)
  # Calibrated to the server (the default threat model), reported under both.
  assert r.threat_model == "server"
  assert r.epsilon_achieved == pytest.approx(server, rel=1e-6)
  assert r.epsilons["server"] == pytest.approx(server, rel=1e-6)
  assert r.epsilons["release"] == pytest.approx(release, rel=1e-6)
  # The whole budget is spent (every method of a column spends the same epsilon).
  assert 0.99 * EPS <= server <= EPS * (1 + 1e-9)
  assert release <= server * (1 + 1e-9)


def test_ifca_ldp_gets_no_amplification_by_sampling(reports):
  r = reports["ifca_ldp"]
  # The same z with sampling amplification would claim a much smaller epsilon:
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(M2 / POP, _gaussian(r.z2)), T2))
  amplified = acc.get_epsilon(1e-5)
  k2 = int(sampling.participation_counts(0, 2, T2, POP, M2).max())
  # Against the server: Gaussian(z2) composed over the busiest client's K rounds.
  alone = gaussian_eps(math.sqrt(k2) / r.z2, 1e-5)
  assert amplified < 0.5 * alone
  assert r.stage_epsilons["stage2"] == pytest.approx(alone, rel=1e-6)
  assert r.epsilons["release"] >= alone * (1 - 1e-9)  # no amplification there either
  # Against the server neither gets amplification (same z); an observer of the
  # released models gets amplification from IFCA's Poisson-sampled sums only.
  assert r.z2 == pytest.approx(reports["ifca"].z2, rel=1e-6)
  assert reports["ifca"].epsilons["release"] < 0.5 * r.epsilons["release"]


@pytest.mark.parametrize("method", ALL)
def test_stage_specs_carry_the_reported_noise(reports, method):
  r, cfg = reports[method], _cfg(method)
  spec0 = methods.stage0_spec(cfg, z0=r.z0, shard_size=10, n_max=5)
  spec2 = methods.stage2_spec(cfg, z2=r.z2, shard_size=10, n_max=5, num_true_clusters=1)
  # Noise std per coordinate = z * (the clip the accountant's Gaussian assumes).
  assert spec0.aggregator.central_stddev == pytest.approx(r.z0 * CLIP0)
  assert spec0.local.clip_norm == CLIP0
  if method == "ifca_ldp":
    assert spec2.local.ldp_noise_stddev == pytest.approx(r.z2 * CLIP2)
    assert spec2.aggregator.central_stddev == 0.0
  else:
    assert spec2.aggregator.central_stddev == pytest.approx(r.z2 * CLIP2)
    assert spec2.local.ldp_noise_stddev == 0.0
  assert spec2.local.clip_norm == CLIP2


@pytest.mark.parametrize("method", ["pina_ri", "ifca_ldp"])
def test_a_stage_with_no_rounds_costs_nothing_and_gets_no_noise(method):
  cfg = _cfg(method)
  cfg = config_lib.validate(dataclasses.replace(
      cfg, stage2=dataclasses.replace(cfg.stage2, rounds=0)))
  r = accounting.calibrate_from_config(cfg)
  assert r.budget_split == {"stage0": 1.0}
  assert r.z2 == 0.0 and r.z1 == 0.0 and r.stage_epsilons["stage2"] == 0.0
  k0 = int(sampling.participation_counts(0, 0, T0, POP, M0).max())
  assert r.epsilon_achieved == pytest.approx(gaussian_eps(math.sqrt(k0) / r.z0, 1e-5),
                                             rel=1e-6)
  assert r.epsilon_achieved == pytest.approx(EPS, rel=0.05)  # the whole budget


def test_plan_of_a_run_without_stage0_and_default_delta():
  cfg = _cfg("fedavg")
  raw = dataclasses.replace(
      cfg, privacy=config_lib.PrivacyConfig(epsilon=EPS, delta=None),
      stage0=dataclasses.replace(cfg.stage0, enabled=False))
  plan = accounting.plan_from_config(raw)
  assert (plan.stage0_rounds, plan.stage0_cohort) == (0, 0)
  assert plan.active_stages() == ["stage2"]
  # An unvalidated config (delta None) is accounted at the default delta, like validate().
  r = accounting.calibrate_from_config(raw)
  assert r.delta == config_lib.default_delta(POP) == config_lib.resolve(raw).privacy.delta
  assert r.delta == min(1e-5, 1 / (10 * POP))
  assert r.budget_split == {"stage2": 1.0} and r.z0 == 0.0


def test_epsilon_inf_means_no_noise_anywhere():
  cfg = _cfg("pina")
  cfg = config_lib.validate(config_lib.RunConfig(**{
      **{f: getattr(cfg, f) for f in ("method", "num_clusters", "population",
                                      "model_width", "stage0", "stage1", "stage2")},
      "privacy": config_lib.PrivacyConfig(epsilon=math.inf)}))
  r = accounting.calibrate_from_config(cfg)
  assert (r.z0, r.z1, r.z2) == (0.0, 0.0, 0.0) and math.isinf(r.epsilon_achieved)
  assert methods.stage2_spec(cfg, z2=r.z2, shard_size=10, n_max=5, num_true_clusters=1).aggregator.kind == "secure_sum"


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
