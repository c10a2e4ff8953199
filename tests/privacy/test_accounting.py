"""Tests of pina_tff.privacy.accounting against dp_accounting used directly."""
import math

import dp_accounting
import pytest

from pina_tff.errors import ConfigError
from pina_tff.privacy import accounting as acc

PLAN = acc.AccountingPlan(population=1000, stage0_rounds=5, stage0_cohort=50,
                          stage1_enabled=True, stage2_rounds=30, stage2_cohort=40)


def _hand_rdp(z0, z1, z2, delta, plan=PLAN):
  a = dp_accounting.rdp.RdpAccountant()
  a.compose(dp_accounting.PoissonSampledDpEvent(
      plan.stage0_cohort / plan.population, dp_accounting.GaussianDpEvent(z0)),
      plan.stage0_rounds)
  a.compose(dp_accounting.GaussianDpEvent(z1))
  a.compose(dp_accounting.PoissonSampledDpEvent(
      plan.stage2_cohort / plan.population, dp_accounting.GaussianDpEvent(z2)),
      plan.stage2_rounds)
  return a.get_epsilon(delta)


def test_epsilon_for_matches_hand_built_rdp_composition():
  zs = {"stage0": 1.1, "stage1": 3.0, "stage2": 0.9}
  got = acc.epsilon_for([PLAN.stage_event(s, z) for s, z in zs.items()], 1e-3)
  assert got == pytest.approx(_hand_rdp(1.1, 3.0, 0.9, 1e-3), rel=1e-9)


def test_epsilon_for_pld_matches_hand_built_pld():
  ev = [acc.StageEvent("stage2", 1.0, 10, 0.05), acc.StageEvent("stage1", 4.0, 1)]
  got = acc.epsilon_for(ev, 1e-4, accountant="pld")
  a = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
  a.compose(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.0)), 10)
  a.compose(dp_accounting.GaussianDpEvent(4.0))
  assert got == pytest.approx(a.get_epsilon(1e-4), rel=1e-6)


def test_calibration_hits_each_share_and_total_below_target():
  target, delta = 4.0, 1e-3
  split = {"stage0": 0.1, "stage1": 0.2, "stage2": 0.7}
  r = acc.calibrate_noise_multipliers(target, delta, PLAN, split)
  for s, share in split.items():
    assert r.stage_epsilons[s] == pytest.approx(share * target, rel=1e-3)
    assert r.stage_epsilons[s] <= share * target + 1e-9
  indep = _hand_rdp(r.z0, r.z1, r.z2, delta)
  assert r.epsilon_achieved == pytest.approx(indep, rel=1e-9)
  assert r.epsilon_achieved <= target
  # local ε1 is Gaussian(z1) alone.
  a = dp_accounting.rdp.RdpAccountant()
  a.compose(dp_accounting.GaussianDpEvent(r.z1))
  assert r.local_epsilon1 == pytest.approx(a.get_epsilon(delta), rel=1e-9)
  d = r.to_dict()
  assert d["accountant"] == "rdp" and d["noise_multipliers"]["stage2"] == r.z2


def test_tighten_uses_the_budget_without_exceeding_it():
  plan = acc.AccountingPlan(population=1000, stage1_enabled=True, stage2_rounds=10,
                            stage2_cohort=50)
  r = acc.calibrate_noise_multipliers(2.0, 1e-3, plan, fit_total="tighten",
                                      total_tolerance=0.02)
  assert 0.98 * 2.0 <= r.epsilon_achieved <= 2.0
  assert r.epsilon_achieved == pytest.approx(
      acc.epsilon_for([plan.stage_event("stage1", r.z1),
                       plan.stage_event("stage2", r.z2)], 1e-3), rel=1e-9)


def test_infinite_epsilon_means_no_noise():
  r = acc.calibrate_noise_multipliers(math.inf, 1e-3, PLAN)
  assert r.noise_multipliers == {"stage0": 0.0, "stage1": 0.0, "stage2": 0.0}
  assert math.isinf(r.epsilon_achieved)


def test_pina_ri_plan_has_no_stage1():
  plan = acc.AccountingPlan(population=1000, stage1_enabled=False, stage2_rounds=10,
                            stage2_cohort=50)
  r = acc.calibrate_noise_multipliers(3.0, 1e-3, plan)
  assert r.z1 == 0.0 and r.local_epsilon1 is None
  assert r.budget_split == {"stage2": 1.0}
  assert r.stage_epsilons["stage2"] == pytest.approx(3.0, rel=1e-3)


def test_ifca_ldp_has_no_amplification():
  z = acc.calibrate_ifca_ldp(8.0, 1e-3, max_participations=5)
  a = dp_accounting.rdp.RdpAccountant()
  a.compose(dp_accounting.GaussianDpEvent(z), 5)
  assert a.get_epsilon(1e-3) == pytest.approx(8.0, rel=1e-3)
  assert acc.ifca_ldp_epsilon(z, 5, 1e-3) == pytest.approx(a.get_epsilon(1e-3))
  # With subsampling amplification the same z would cost much less.
  sub = acc.epsilon_for([acc.StageEvent("s", z, 5, 0.05)], 1e-3)
  assert sub < 0.5 * a.get_epsilon(1e-3)


def test_epsilon_spent_after_is_monotone_and_ends_at_total():
  zs = {"stage0": 1.0, "stage1": 3.0, "stage2": 0.8}
  e0 = acc.epsilon_spent_after(0, "stage0", PLAN, zs, 1e-3)
  e1 = acc.epsilon_spent_after(2, "stage0", PLAN, zs, 1e-3)
  e2 = acc.epsilon_spent_after(1, "stage1", PLAN, zs, 1e-3)
  e3 = acc.epsilon_spent_after(10, "stage2", PLAN, zs, 1e-3)
  e4 = acc.epsilon_spent_after(30, "stage2", PLAN, zs, 1e-3)
  assert e0 == 0.0 and e0 < e1 < e2 < e3 < e4
  assert e4 == pytest.approx(_hand_rdp(1.0, 3.0, 0.8, 1e-3), rel=1e-9)


@pytest.mark.parametrize("kwargs", [dict(delta=0.0), dict(delta=1.5),
                                    dict(accountant="foo"),
                                    dict(budget_split={"stage9": 1.0}),
                                    dict(budget_split={"stage0": 1.0})])
def test_bad_inputs_raise_config_error(kwargs):
  args = dict(target_epsilon=2.0, delta=1e-3, plan=PLAN)
  args.update(kwargs)
  with pytest.raises(ConfigError):
    acc.calibrate_noise_multipliers(**args)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
