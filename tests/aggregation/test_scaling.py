"""Normality-driven scaling rules of the cluster aggregates."""
import numpy as np
import pytest
import tensorflow as tf

from pina_tff.aggregation import scaling
from pina_tff.errors import ConfigError

P = 6000


def _aggregate(seed=0):
  """Slot 0: sparse signal + small noise; slot 1: pure Gaussian noise; slot 2: zeros."""
  rng = np.random.default_rng(seed)
  u = np.zeros((3, P), np.float32)
  idx = rng.choice(P, 60, replace=False)
  u[0, idx] = rng.choice([-1.0, 1.0], 60) * 0.5
  u[0] += 0.005 * rng.normal(size=P)
  u[1] = 0.02 * rng.normal(size=P)
  return u


def test_normality_shrinks_noise_and_keeps_structure():
  u = _aggregate()
  out, d = scaling.scale_cluster_aggregates(tf.constant(u), "normality")
  norms = np.linalg.norm(u, axis=1)
  out_n = np.linalg.norm(out.numpy(), axis=1)
  r = norms.max()
  assert out_n[0] == pytest.approx(r, rel=1e-4)           # structured: full norm R
  assert out_n[1] < 0.05 * r                               # pure noise: shrunk
  assert out_n[2] == 0.0 and np.all(np.isfinite(out.numpy()))
  w = d["w"].numpy()
  assert w[0] < 0.5 and w[1] > 0.99 and w[2] == 1.0


def test_min_norm_equalizes_nonzero_norms():
  u = _aggregate()
  u[1] *= 3.0
  out, d = scaling.scale_cluster_aggregates(tf.constant(u), "min_norm")
  out_n = np.linalg.norm(out.numpy(), axis=1)
  m = np.linalg.norm(u[:2], axis=1).min()
  np.testing.assert_allclose(out_n[:2], [m, m], rtol=1e-5)
  assert out_n[2] == 0.0 and np.all(np.isfinite(out.numpy()))


def test_none_is_identity_and_pina_switches_at_warm_rounds():
  u = tf.constant(_aggregate())
  out, d = scaling.scale_cluster_aggregates(u, "none")
  np.testing.assert_array_equal(out.numpy(), u.numpy())
  fn = tf.function(scaling.make_scaling_fn(P, "pina", warm_rounds=5))
  warm, _ = fn(u, tf.constant(4))
  late, _ = fn(u, tf.constant(5))
  mn, _ = scaling.scale_cluster_aggregates(u, "min_norm")
  nm, _ = scaling.scale_cluster_aggregates(u, "normality")
  np.testing.assert_allclose(warm.numpy(), mn.numpy(), rtol=1e-6)
  np.testing.assert_allclose(late.numpy(), nm.numpy(), rtol=1e-6)
  # The NumPy reference (used by the finalizer and program tests) switches at the
  # same round.
  for rnd, want in ((4, mn), (5, nm)):
    ref, _ = scaling.scale_cluster_aggregates_np(u.numpy(), "pina", rnd, warm_rounds=5)
    np.testing.assert_allclose(ref, want.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", scaling.SCALING_MODES)
def test_all_zero_aggregate_no_nan_and_matches_numpy_reference(mode):
  z = np.zeros((2, 50), np.float32)
  out, d = scaling.scale_cluster_aggregates(tf.constant(z), mode, round_num=1,
                                            warm_rounds=3)
  assert np.all(out.numpy() == 0)
  for v in d.values():
    assert np.all(np.isfinite(v.numpy()))
  for size in (1.0, 1e-3):  # also aggregates of norm < 1 (real updates often are)
    u = _aggregate(1) * np.float32(size)
    out, d = scaling.scale_cluster_aggregates(tf.constant(u), mode, round_num=2,
                                              warm_rounds=3)
    ref, dref = scaling.scale_cluster_aggregates_np(u, mode, round_num=2, warm_rounds=3)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-7 * size)
    np.testing.assert_allclose(d["scale_factors"].numpy(), dref["scale_factors"],
                               rtol=1e-4)


def _clusters(counts, sigma, d=2000, seed=0):
  """u_c = (sum of n_c aligned-ish client updates) / M + N(0, sigma^2): signal norm
  grows with the count, as a C-slot aggregate's does."""
  rng = np.random.default_rng(seed)
  m = float(sum(counts))
  rows = []
  for n in counts:
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    rows.append(n / m * 0.5 * direction + sigma * rng.normal(size=d))
  return np.asarray(rows, np.float32)


RESTORE_RULES = ("restore", "restore_w", "restore_gated")


@pytest.mark.parametrize("rule", RESTORE_RULES)
@pytest.mark.parametrize("sigma", [0.0, 2e-4, 2e-3])
def test_restore_rules_match_the_per_cluster_reference(rule, sigma):
  u = _clusters([5000, 1500, 800, 2700], sigma)
  r = scaling.NormalityRule(rule, noise_std=sigma, max_gain=3.0)
  out, d = scaling.scale_cluster_aggregates(tf.constant(u), "normality", rule=r)
  ref, dref = scaling.scale_cluster_aggregates_np(u, "normality", rule=r)
  np.testing.assert_allclose(d["scale_factors"].numpy(), dref["scale_factors"],
                             rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(out.numpy(), ref, rtol=2e-4, atol=1e-7)
  f = d["scale_factors"].numpy()
  assert np.all(f >= 1.0 - 1e-6) and np.all(f <= 3.0 + 1e-5)   # never below IFCA


def test_restore_without_noise_brings_small_clusters_to_the_fair_share():
  counts = [5000, 1500, 800, 2700]
  u = _clusters(counts, 0.0)
  r = scaling.NormalityRule("restore", noise_std=0.0, max_gain=10.0)
  out, d = scaling.scale_cluster_aggregates(tf.constant(u), "normality", rule=r)
  norms = np.linalg.norm(u, axis=1)
  fair = norms.mean()                      # = what M/C clients would carry here
  out_n = np.linalg.norm(out.numpy(), axis=1)
  for c in range(4):
    assert out_n[c] == pytest.approx(max(norms[c], fair), rel=1e-4)
  # the gain cap
  r2 = scaling.NormalityRule("restore", noise_std=0.0, max_gain=1.5)
  _, d2 = scaling.scale_cluster_aggregates(tf.constant(u), "normality", rule=r2)
  np.testing.assert_allclose(d2["scale_factors"].numpy(),
                             np.clip(fair / norms, 1.0, 1.5), rtol=1e-4)


def test_restore_leaves_pure_noise_alone_and_gated_vanishes_without_noise():
  sigma = 1e-3
  rng = np.random.default_rng(3)
  noise_only = (sigma * rng.normal(size=(2, 4000))).astype(np.float32)
  signal = _clusters([9000, 1000], 0.0, d=4000)
  u = np.concatenate([signal[:1] + noise_only[:1] * 0.01, noise_only[1:]])
  r = scaling.NormalityRule("restore", noise_std=sigma, max_gain=4.0)
  _, d = scaling.scale_cluster_aggregates(tf.constant(u), "normality", rule=r)
  f = d["scale_factors"].numpy()
  assert f[0] == pytest.approx(1.0, abs=1e-4)     # the big cluster is above fair share
  assert f[1] < 1.15                               # mostly noise: ~IFCA (within chance)
  gated = scaling.NormalityRule("restore_gated", noise_std=0.0, max_gain=4.0)
  _, dg = scaling.scale_cluster_aggregates(tf.constant(_clusters([9000, 1000], 0.0)),
                                           "normality", rule=gated)
  np.testing.assert_allclose(dg["scale_factors"].numpy(), [1.0, 1.0], atol=1e-6)


def test_shrink_rule_is_the_default_and_pina_switches_to_the_rule_after_warm_up():
  u = _clusters([5000, 1500, 800, 2700], 2e-4)
  a, _ = scaling.scale_cluster_aggregates(tf.constant(u), "normality")
  b, _ = scaling.scale_cluster_aggregates(tf.constant(u), "normality",
                                          rule=scaling.NormalityRule("shrink"))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  r = scaling.NormalityRule("restore", noise_std=2e-4, max_gain=4.0)
  warm, dw = scaling.scale_cluster_aggregates(tf.constant(u), "pina", round_num=1,
                                              warm_rounds=2, rule=r)
  later, dl = scaling.scale_cluster_aggregates(tf.constant(u), "pina", round_num=2,
                                               warm_rounds=2, rule=r)
  norms = np.linalg.norm(u, axis=1)
  np.testing.assert_allclose(np.linalg.norm(warm.numpy(), axis=1), norms.min(), rtol=1e-4)
  assert np.all(dl["scale_factors"].numpy() >= 1.0 - 1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "bogus"}, "restore"), ({"name": "restore", "max_gain": 0.5}, "max_gain"),
    ({"name": "restore", "noise_std": float("nan")}, "noise_std")])
def test_bad_rule_is_a_config_error(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    scaling.NormalityRule(**kwargs)


def test_unknown_mode_raises():
  with pytest.raises(ConfigError, match="min_norm"):
    scaling.scale_cluster_aggregates(tf.zeros([2, 10]), "bogus")


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
