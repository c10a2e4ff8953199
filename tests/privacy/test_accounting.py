"""pina_tff.privacy.accounting checked against references computed another way:
closed-form Gaussian compositions (analytic Gaussian mechanism, Balle & Wang 2018),
Microsoft's independent `prv-accountant`, and the cohort schedule counted by hand.
"""
import dataclasses
import math

import numpy as np
import pytest
from prv_accountant.privacy_random_variables import (GaussianMechanism,
                                                     PoissonSubsampledGaussianMechanism)

from pina_tff import config as config_lib
from pina_tff.errors import ConfigError
from pina_tff.privacy import accounting as acc
from pina_tff.simulation import sampling
from tests.privacy.references import gaussian_eps, prv_eps, worst_row_eps

PLAN = acc.AccountingPlan(population=200, stage0_rounds=5, stage0_cohort=40,
                          stage1_enabled=True, stage2_rounds=20, stage2_cohort=50,
                          seed=7, stage1_clients=200)


def test_server_model_is_the_worst_clients_gaussian_composition():
  zs = {"stage0": 3.0, "stage1": 2.5, "stage2": 4.0}
  delta = 1e-5
  k0 = sampling.participation_counts(7, 0, 5, 200, 40)
  k2 = sampling.participation_counts(7, 2, 20, 200, 50)
  rho = k0 / 9.0 + 1 / 6.25 + k2 / 16.0  # Σ K/z² per client (sketch: every client)
  want = gaussian_eps(math.sqrt(rho.max()), delta)
  got_pld = acc.run_epsilon(PLAN, zs, delta, "server", "pld")
  got_rdp = acc.run_epsilon(PLAN, zs, delta, "server", "rdp")
  assert got_pld == pytest.approx(want, rel=0.01) and got_pld >= want - 1e-6
  assert want <= got_rdp <= 1.25 * want  # RDP is a valid, looser bound
  # The worst client is not (max K0, max K2) unless one client has both.
  assert PLAN.max_participations() == (k0.max(), k2.max())


def test_an_epsilon_below_one_is_reported_as_it_is():
  """Much noise: the run spends ε < 1, and that is what is reported (the maximum over
  the client rows has no floor)."""
  zs = {"stage0": 30.0, "stage1": 25.0, "stage2": 40.0}
  delta = 1e-5
  k0 = sampling.participation_counts(7, 0, 5, 200, 40)
  k2 = sampling.participation_counts(7, 2, 20, 200, 50)
  rho = k0 / 900.0 + 1 / 625.0 + k2 / 1600.0
  want = gaussian_eps(math.sqrt(rho.max()), delta)
  assert want < 0.5
  assert acc.run_epsilon(PLAN, zs, delta, "server", "pld") == pytest.approx(want, rel=0.01)


def test_a_stage_in_which_nobody_took_part_gets_no_noise():
  """Server model, calibrated to the realized participation: with an expected cohort
  of 1 in 1,000 for one round, seed 5's Poisson draw picks nobody in stage 0, so stage
  0 releases nothing about anyone: z0 = 0, ε0 = 0, and stage 2's noise is what its
  own share of the budget needs."""
  plan = acc.AccountingPlan(population=1000, stage0_rounds=1, stage0_cohort=1,
                            stage1_enabled=False, stage2_rounds=3, stage2_cohort=50,
                            seed=5)
  assert plan.max_participations()[0] == 0
  r = acc.calibrate_noise_multipliers(4.0, 1e-6, plan)
  assert r.noise_multipliers["stage0"] == 0.0 and r.stage_epsilons["stage0"] == 0.0
  assert r.noise_multipliers["stage2"] > 0


def test_a_run_that_releases_nothing_spends_zero_even_without_noise():
  plan = acc.AccountingPlan(population=100, stage0_rounds=0, stage0_cohort=0,
                            stage1_enabled=False, stage2_rounds=0, stage2_cohort=10)
  assert plan.active_stages() == []
  r = acc.calibrate_noise_multipliers(math.inf, 1e-5, plan)
  assert r.epsilon_achieved == 0.0 and r.epsilons == {"server": 0.0, "release": 0.0}


def test_release_model_matches_prv_accountant_poisson_compositions():
  zs = {"stage0": 1.2, "stage1": 2.0, "stage2": 0.9}
  delta = 1e-5
  lo, est, hi = prv_eps([(PoissonSubsampledGaussianMechanism(0.2, 1.2), 5),
                         (GaussianMechanism(2.0), 1),
                         (PoissonSubsampledGaussianMechanism(0.25, 0.9), 20)], delta)
  pld = acc.run_epsilon(PLAN, zs, delta, "release", "pld")
  rdp = acc.run_epsilon(PLAN, zs, delta, "release", "rdp")
  assert pld >= lo and pld == pytest.approx(est, rel=0.03)
  assert rdp >= lo and rdp <= 1.3 * hi
  # Release (amplified) is below server (not amplified) for the same noise.
  assert rdp < acc.run_epsilon(PLAN, zs, delta, "server", "rdp")


def test_fixed_size_sampling_gets_no_amplification():
  fixed = acc.AccountingPlan(**{**PLAN.__dict__, "sampling": "fixed"})
  zs = {"stage0": 1.2, "stage1": 2.0, "stage2": 0.9}
  k0, k2 = fixed.max_participations()
  assert k2 == sampling.participation_counts(7, 2, 20, 200, 50, "fixed").max()
  release = acc.run_epsilon(fixed, zs, 1e-5, "release", "pld")
  assert release == pytest.approx(acc.run_epsilon(fixed, zs, 1e-5, "server", "pld"))
  assert release > 2 * acc.run_epsilon(PLAN, zs, 1e-5, "release", "pld")


def test_local_epsilon_uses_sensitivity_two_clip():
  # noise std z·S on a vector clipped to S: any two inputs differ by 2·S.
  z = 3.0
  assert acc.local_epsilon(z, 1e-5, "pld") == pytest.approx(
      gaussian_eps(2.0 / z, 1e-5), rel=0.01)
  lo, est, _ = prv_eps([(GaussianMechanism(z / 2), 4)], 1e-5)
  assert acc.local_epsilon(z, 1e-5, "pld", count=4) == pytest.approx(est, rel=0.03)
  r = acc.calibrate_noise_multipliers(8.0, 1e-5, PLAN)
  assert r.local_epsilon1 == pytest.approx(acc.local_epsilon(r.z1, 1e-5))
  assert r.local_epsilon1 > acc.epsilon_for([acc.StageEvent("s", r.z1, 1)], 1e-5) * 1.8


@pytest.mark.parametrize("threat_model,method", [
    ("server", "pina"), ("server", "pina_ri"), ("server", "fedavg"),
    ("server", "ifca_ldp"), ("release", "pina"), ("release", "ifca_ldp")])
def test_every_method_spends_the_whole_target(threat_model, method):
  target, delta = 4.0, 1e-5
  plan = acc.AccountingPlan(**{**PLAN.__dict__, "stage1_enabled": method == "pina",
                               "stage2_local_dp": method == "ifca_ldp"})
  r = acc.calibrate_noise_multipliers(target, delta, plan, threat_model=threat_model)
  assert r.accountant == "pld"
  assert 0.99 * target <= r.epsilon_achieved <= target
  assert r.epsilon_achieved == pytest.approx(
      acc.run_epsilon(plan, r.noise_multipliers, delta, threat_model, "pld"))
  # RDP, reported beside, is a valid looser bound on the same noise.
  assert r.epsilons_by_accountant["pld"] == r.epsilons
  assert r.epsilons_by_accountant["rdp"][threat_model] > r.epsilon_achieved
  z = r.noise_multipliers
  if threat_model == "server" or method == "ifca_ldp" and plan.stage0_rounds == 0:
    # Every event is an unsampled Gaussian: the reference is the closed form.
    k0 = sampling.participation_counts(7, 0, 5, 200, 40)
    k2 = sampling.participation_counts(7, 2, 20, 200, 50)
    stages = [(k0, z["stage0"]), (k2, z["stage2"])]
    if method == "pina":
      stages.append((np.ones(200), z["stage1"]))
    assert r.epsilon_achieved == pytest.approx(worst_row_eps(stages, delta), rel=1e-6)
  assert r.epsilons[threat_model] == r.epsilon_achieved
  other = "release" if threat_model == "server" else "server"
  if method == "ifca_ldp" and plan.stage0_rounds == 0:
    assert r.epsilons[other] == pytest.approx(r.epsilon_achieved)
  elif threat_model == "server":
    assert r.epsilons["release"] < r.epsilon_achieved
  else:
    assert r.epsilons["server"] > r.epsilon_achieved


def test_default_delta_is_well_below_one_over_population():
  assert config_lib.default_delta(100) == 1e-5
  assert config_lib.default_delta(10 ** 6) == 1e-7
  for pop in (10 ** 4, 10 ** 6):
    cfg = config_lib.resolve(config_lib.RunConfig(population=pop))
    assert cfg.privacy.delta <= 1 / (10 * pop) and cfg.privacy.delta <= 1e-5


def test_infinite_epsilon_means_no_noise():
  r = acc.calibrate_noise_multipliers(math.inf, 1e-5, PLAN)
  assert r.noise_multipliers == {"stage0": 0.0, "stage1": 0.0, "stage2": 0.0}
  assert math.isinf(r.epsilon_achieved) and math.isinf(r.epsilons["release"])


def test_epsilon_spent_after_is_monotone_and_ends_at_total():
  zs = {"stage0": 1.0, "stage1": 3.0, "stage2": 0.8}
  for tm in acc.THREAT_MODELS:
    if tm == "release":
      e = [acc.epsilon_spent_after(2, "stage0", PLAN, zs, 1e-5, threat_model=tm),
           acc.epsilon_spent_after(20, "stage2", PLAN, zs, 1e-5, threat_model=tm)]
      assert e[0] < e[1] == pytest.approx(acc.run_epsilon(PLAN, zs, 1e-5, tm))
      continue
    e = [acc.epsilon_spent_after(0, "stage0", PLAN, zs, 1e-5, threat_model=tm),
         acc.epsilon_spent_after(2, "stage0", PLAN, zs, 1e-5, threat_model=tm),
         acc.epsilon_spent_after(1, "stage1", PLAN, zs, 1e-5, threat_model=tm),
         acc.epsilon_spent_after(10, "stage2", PLAN, zs, 1e-5, threat_model=tm),
         acc.epsilon_spent_after(20, "stage2", PLAN, zs, 1e-5, threat_model=tm)]
    assert e[0] == 0.0 and all(a < b for a, b in zip(e, e[1:]))
    assert e[-1] == pytest.approx(acc.run_epsilon(PLAN, zs, 1e-5, tm))


@pytest.mark.parametrize("mu", [0.1, 0.37, 1.0, 2.5, 6.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_exact_gaussian_epsilon_is_the_analytic_gaussian_mechanism(mu, delta):
  want = gaussian_eps(mu, delta)
  got = acc.gaussian_epsilon(mu, delta)
  assert want <= got <= want * (1 + 1e-8) + 1e-12  # rounded up, never below
  # T identical Gaussians of multiplier z are one Gaussian of multiplier z/sqrt(T):
  # the 'pld' path composes exactly; dp_accounting's discretized PLD accountant
  # (a different computation: the fast path does not apply to a sampled event, so
  # force it with q = 1 - 1e-12) is a pessimistic upper bound within 1 %.
  z, t = 3.0, 9
  want_t = gaussian_eps(math.sqrt(t) / z, delta)
  assert acc.epsilon_for([acc.StageEvent("s", z, t)], delta, "pld") == pytest.approx(
      want_t, rel=1e-8)
  pld = acc.epsilon_for([acc.StageEvent("s", z, t, 1 - 1e-12)], delta, "pld")
  assert want_t * (1 - 1e-6) <= pld <= want_t * 1.01


def _fmnist(epsilon, **privacy):
  from pipelines import presets
  data = presets.for_population(presets.FMNIST_DEFAULTS, 10000)
  data["privacy"] = {"epsilon": epsilon, **privacy}
  return config_lib.resolve(config_lib.validate(config_lib.from_dict(data)))


@pytest.mark.parametrize("epsilon", [2.0, 8.0])
def test_fmnist_preset_spends_its_target_under_pld(epsilon):
  """The FMNIST preset (10,000 clients, full participation, 15 stage-2 rounds, 2,000
  sketches; server model): the calibrated noise's ε, recomputed with the analytic
  Gaussian formula over the clients' rows, is within 1 % below the target. The RDP
  calibration (the former default) leaves part of the budget unused under PLD."""
  cfg = _fmnist(epsilon)
  assert cfg.privacy.accountant == "pld"
  r = acc.calibrate_from_config(cfg)
  delta = cfg.privacy.delta
  s1 = np.zeros(10000)
  s1[sampling.sketch_cohort(0, 10000, 2000)] = 1
  k2 = sampling.participation_counts(0, 2, 15, 10000, 10000)
  assert (k2 == 15).all()  # full participation
  want = worst_row_eps([(s1, r.z1), (k2, r.z2)], delta)
  assert want == pytest.approx(gaussian_eps(math.sqrt(1 / r.z1 ** 2 + 15 / r.z2 ** 2),
                                            delta), rel=1e-9)
  assert r.epsilon_achieved == pytest.approx(want, rel=1e-6)
  assert 0.99 * epsilon <= want <= epsilon * (1 + 1e-6)
  assert r.epsilons_by_accountant["rdp"]["server"] > 1.05 * r.epsilon_achieved
  # 'rdp' stays selectable: it spends the target under RDP with more noise, which
  # PLD (here exact) says spends less than the target.
  rr = acc.calibrate_from_config(_fmnist(epsilon, accountant="rdp"))
  assert rr.accountant == "rdp" and 0.99 * epsilon <= rr.epsilon_achieved <= epsilon
  assert rr.z1 > r.z1 and rr.z2 > r.z2
  assert rr.epsilons_by_accountant["pld"]["server"] == pytest.approx(
      gaussian_eps(math.sqrt(1 / rr.z1 ** 2 + 15 / rr.z2 ** 2), delta), rel=1e-6)
  assert rr.epsilons_by_accountant["pld"]["server"] < 0.95 * epsilon


def test_release_calibration_spends_the_target_per_prv_accountant():
  """Release model with Poisson sampling (no closed form): the PLD-calibrated noise is
  within about 1 % of the target according to Microsoft's prv-accountant."""
  target, delta = 3.0, 1e-5
  r = acc.calibrate_noise_multipliers(target, delta, PLAN, threat_model="release")
  assert 0.99 * target <= r.epsilon_achieved <= target
  lo, est, hi = prv_eps([(PoissonSubsampledGaussianMechanism(0.2, r.z0), 5),
                         (GaussianMechanism(r.z1), 1),
                         (PoissonSubsampledGaussianMechanism(0.25, r.z2), 20)], delta)
  assert lo <= r.epsilon_achieved and est == pytest.approx(target, rel=0.02)
  assert r.epsilons_by_accountant["rdp"]["release"] > r.epsilon_achieved


def test_rounds_computed_twice_are_counted_for_every_client_of_their_cohort():
  """A round the server computed twice (kill between its aggregate and the checkpoint,
  then resume) is two Gaussians for each client of its cohort (server model), and
  PoissonSampled(q, Gaussian(z/sqrt(2))) under amplification; the sketches computed
  three times are Gaussian(z1)^3. References: the closed form over the clients' rows,
  and prv-accountant."""
  zs = {"stage0": 3.0, "stage1": 2.5, "stage2": 4.0}
  delta = 1e-5
  plan = acc.AccountingPlan(**{**PLAN.__dict__, "executions": (
      ("stage2", 3, 2), ("stage2", 17, 2), ("stage0", 2, 2), ("stage1", 1, 3))})
  k0 = sampling.participation_counts(7, 0, 5, 200, 40)
  k2 = sampling.participation_counts(7, 2, 20, 200, 50)
  k0[sampling.cohort(7, 0, 2, 200, 40)] += 1
  k2[sampling.cohort(7, 2, 3, 200, 50)] += 1
  k2[sampling.cohort(7, 2, 17, 200, 50)] += 1
  want = worst_row_eps([(k0, 3.0), (3 * np.ones(200), 2.5), (k2, 4.0)], delta)
  got = acc.run_epsilon(plan, zs, delta, "server", "pld")
  assert got == pytest.approx(want, rel=1e-6)
  assert got > acc.run_epsilon(PLAN, zs, delta, "server", "pld")
  # Release model: prv-accountant on the same mechanisms.
  zr = {"stage0": 1.2, "stage1": 2.0, "stage2": 0.9}
  lo, est, _ = prv_eps([(PoissonSubsampledGaussianMechanism(0.2, 1.2), 4),
                        (PoissonSubsampledGaussianMechanism(0.2, 1.2 / math.sqrt(2)), 1),
                        (GaussianMechanism(2.0 / math.sqrt(3)), 1),
                        (PoissonSubsampledGaussianMechanism(0.25, 0.9), 18),
                        (PoissonSubsampledGaussianMechanism(0.25, 0.9 / math.sqrt(2)), 2)],
                       delta)
  rel = acc.run_epsilon(plan, zr, delta, "release", "pld")
  assert rel >= lo and rel == pytest.approx(est, rel=0.03)
  assert rel > acc.run_epsilon(PLAN, zr, delta, "release", "pld")
  # Per round: a repeat counts from its round on; calibration ignores repeats (the
  # noise is fixed before anything runs); reaccount counts them.
  assert (acc.epsilon_spent_after(2, "stage2", plan, zs, delta) ==
          pytest.approx(acc.epsilon_spent_after(2, "stage2", dataclasses.replace(
              plan, executions=(("stage0", 2, 2), ("stage1", 1, 3))), zs, delta)))
  assert plan.truncated("stage2", 5).executions == (
      ("stage2", 3, 2), ("stage0", 2, 2), ("stage1", 1, 3))
  r = acc.calibrate_noise_multipliers(4.0, delta, plan)
  assert r.noise_multipliers == acc.calibrate_noise_multipliers(4.0, delta, PLAN
                                                                ).noise_multipliers
  again = acc.reaccount(r, plan)
  assert again.noise_multipliers == r.noise_multipliers
  assert again.epsilon_achieved == pytest.approx(
      acc.run_epsilon(plan, r.noise_multipliers, delta, "server"))
  assert again.epsilon_achieved > 4.0 >= r.epsilon_achieved
  assert again.local_epsilon1 == pytest.approx(acc.local_epsilon(r.z1, delta, count=3))


@pytest.mark.parametrize("kwargs", [dict(delta=0.0), dict(delta=1.5),
                                    dict(accountant="foo"), dict(threat_model="x"),
                                    dict(budget_split={"stage9": 1.0}),
                                    dict(budget_split={"stage0": 1.0})])
def test_bad_inputs_raise_config_error(kwargs):
  args = dict(target_epsilon=2.0, delta=1e-5, plan=PLAN)
  args.update(kwargs)
  with pytest.raises(ConfigError):
    acc.calibrate_noise_multipliers(**args)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
