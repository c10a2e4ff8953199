"""Which noise multiplier reaches which stage, per method, against the accountant's plan.

For every method: the calibrated report (`pina_tff.privacy.accounting`), the stage specs
built from it (`computations.methods`, as the program builds them), and the reported
epsilon recomputed here directly with dp_accounting from the mechanisms the specs
actually run. No TFF execution. (The program-level check that the program passes
report.z0 / z1 / z2 to these builders is in test_program.py.)
"""
import dataclasses
import math

import dp_accounting
import pytest

from computations import methods
from pina_tff import config as config_lib
from pina_tff.privacy import accounting

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


def _expected_epsilon(method, z0, z1, z2, delta=1e-5):
  """The mechanisms each method runs, from the spec's privacy section:
  stage 0 Poisson(M0/P)-sampled Gaussian(z0) x T0; stage 1 (PINA only) one Gaussian(z1)
  (local DP, no amplification); stage 2 Poisson(M/P)-sampled Gaussian(z2) x T2, except
  IFCA+LDP: Gaussian(z2) x T2 with NO amplification (the server sees who sent).
  [adapt here when the accounting model changes, e.g. LDP sensitivity 2S]"""
  events = [dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(M0 / POP, _gaussian(z0)), T0)]
  if method == "pina":
    events.append(_gaussian(z1))
  if method == "ifca_ldp":
    events.append(dp_accounting.SelfComposedDpEvent(_gaussian(z2), T2))
  else:
    events.append(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(M2 / POP, _gaussian(z2)), T2))
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.ComposedDpEvent(events))
  return acc.get_epsilon(delta)


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
  want = _expected_epsilon(method, r.z0, r.z1, r.z2)
  assert r.epsilon_achieved == pytest.approx(want, rel=1e-6)
  assert want <= EPS * (1 + 1e-9)
  # Each active stage was calibrated to its share of the budget (same common scale).
  active = [s for s in ("stage0", "stage1", "stage2") if r.budget_split.get(s)]
  ratios = [r.stage_epsilon_targets[s] / (r.budget_split[s] * EPS) for s in active]
  assert 0 < ratios[0] <= 1 and ratios == pytest.approx([ratios[0]] * len(active))
  for s in active:
    assert r.stage_epsilons[s] == pytest.approx(r.stage_epsilon_targets[s], rel=1e-3)


def test_ifca_ldp_gets_no_amplification_by_sampling(reports):
  r = reports["ifca_ldp"]
  # The same z with sampling amplification would claim a much smaller epsilon:
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(M2 / POP, _gaussian(r.z2)), T2))
  amplified = acc.get_epsilon(1e-5)
  alone = accounting.ifca_ldp_epsilon(r.z2, T2, 1e-5)
  assert amplified < 0.5 * alone
  assert r.stage_epsilons["stage2"] == pytest.approx(alone, rel=1e-6)
  # Without amplification the LDP baseline needs far more noise than central DP.
  assert r.z2 > 2 * reports["ifca"].z2


@pytest.mark.parametrize("method", ALL)
def test_stage_specs_carry_the_reported_noise(reports, method):
  r, cfg = reports[method], _cfg(method)
  spec0 = methods.stage0_spec(cfg, r.z0, 10, 5, 16)
  spec2 = methods.stage2_spec(cfg, r.z2, 10, 5, 1)
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
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(M0 / POP, _gaussian(r.z0)), T0))
  assert r.epsilon_achieved == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
  assert r.epsilon_achieved == pytest.approx(EPS, rel=0.05)  # the whole budget


def test_plan_of_a_run_without_stage0_and_default_delta():
  cfg = _cfg("fedavg")
  raw = dataclasses.replace(
      cfg, privacy=config_lib.PrivacyConfig(epsilon=EPS, delta=None),
      stage0=dataclasses.replace(cfg.stage0, enabled=False))
  plan = accounting.plan_from_config(raw)
  assert (plan.stage0_rounds, plan.stage0_cohort) == (0, 0)
  assert plan.active_stages() == ["stage2"]
  # An unvalidated config (delta None) is accounted at delta = 1/P, like validate().
  r = accounting.calibrate_from_config(raw)
  assert r.delta == 1.0 / POP == config_lib.validate(raw).privacy.delta
  assert r.budget_split == {"stage2": 1.0} and r.z0 == 0.0


def test_epsilon_inf_means_no_noise_anywhere():
  cfg = _cfg("pina")
  cfg = config_lib.validate(config_lib.RunConfig(**{
      **{f: getattr(cfg, f) for f in ("method", "num_clusters", "population",
                                      "model_width", "stage0", "stage1", "stage2")},
      "privacy": config_lib.PrivacyConfig(epsilon=math.inf)}))
  r = accounting.calibrate_from_config(cfg)
  assert (r.z0, r.z1, r.z2) == (0.0, 0.0, 0.0) and math.isinf(r.epsilon_achieved)
  assert methods.stage2_spec(cfg, r.z2, 10, 5, 1).aggregator.kind == "secure_sum"


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
