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


def test_unknown_mode_raises():
  with pytest.raises(ConfigError, match="min_norm"):
    scaling.scale_cluster_aggregates(tf.zeros([2, 10]), "bogus")


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
