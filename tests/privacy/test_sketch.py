"""Tests of the stage-1 sketch mechanism (sparsify, clip, noise on every coordinate)."""
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from pina_tff.errors import ConfigError
from pina_tff.privacy import sketch


def _np_expected_sparsify(v, k):
  out = np.zeros_like(v)
  pos = np.where(v > 0)[0]
  neg = np.where(v < 0)[0]
  keep_p = pos[np.argsort(-v[pos])[:k]]
  keep_n = neg[np.argsort(v[neg])[:k]]
  out[keep_p] = v[keep_p]
  out[keep_n] = v[keep_n]
  return out


def test_sparsify_keeps_k_largest_of_each_sign_batched_and_in_tf_function():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(5, 40)).astype(np.float32)
  v[1] = np.abs(v[1])          # no negatives
  v[2, :] = -np.abs(v[2, :]); v[2, 3] = 0.5  # one positive only
  f = tf.function(lambda x: sketch.sparsify_top_k(x, 4))
  out = f(tf.constant(v)).numpy()
  for i in range(5):
    np.testing.assert_array_equal(out[i], _np_expected_sparsify(v[i], 4))
    assert (out[i] > 0).sum() <= 4 and (out[i] < 0).sum() <= 4
  assert (out[1] < 0).sum() == 0 and (out[1] > 0).sum() == 4
  assert (out[2] > 0).sum() == 1 and (out[2] < 0).sum() == 4
  np.testing.assert_array_equal(sketch.sparsify_top_k(v[0], 4).numpy(), out[0])


def test_clip_l2():
  v = tf.constant([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
  out = sketch.clip_l2(v, 1.0).numpy()
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-6)


def test_clip_l2_bound_holds_exactly_in_float32():
  """Scaling by clip/norm in float32 leaves about half of the clipped sketches an ulp
  above S1 (computed here by the plain scaling, the reference); clip_l2 must leave
  none above, in float64 norms of its float32 entries, and change the others by at
  most a few ulp. Sketch shapes: [S, 2 d] and one vector."""
  rng = np.random.default_rng(7)
  for clip in (1.0, 0.7, 3.3):
    v = (rng.normal(size=(4000, 128)) * rng.uniform(0.5, 20, size=(4000, 1))
         ).astype(np.float32)
    plain = v * np.minimum(1.0, np.float32(clip) / np.linalg.norm(v, axis=-1,
                                                                     keepdims=True))
    plain = plain.astype(np.float32)
    over_plain = np.linalg.norm(plain.astype(np.float64), axis=-1) > np.float32(clip)
    assert over_plain.sum() > 100  # the bug this guards against is real
    out = sketch.clip_l2(tf.constant(v), clip).numpy()
    norms = np.linalg.norm(out.astype(np.float64), axis=-1)
    assert (norms <= np.float32(clip)).all(), norms.max() - clip
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-7)
    one = sketch.clip_l2(tf.constant(v[0]), clip).numpy()
    assert np.linalg.norm(one.astype(np.float64)) <= np.float32(clip)


def test_noise_has_calibrated_variance_on_every_coordinate_including_zeros():
  p, k, clip, z, n = 32, 3, 2.0, 0.7, 20000
  rng = np.random.default_rng(1)
  delta = rng.normal(size=p).astype(np.float32) * 3
  clipped = sketch.clip_l2(sketch.sparsify_top_k(delta, k), clip).numpy()
  assert (clipped > 0).sum() <= k and (clipped < 0).sum() <= k
  assert (clipped == 0).sum() >= p - 2 * k
  batch = tf.constant(np.tile(delta, (n, 1)))
  out = tf.function(lambda b: sketch.make_sketch(b, k, clip, z, tf.constant([7, 11])))(
      batch).numpy().astype(np.float64)
  noise = out - clipped[None, :]
  sigma2 = (z * clip) ** 2
  var = noise.var(axis=0, ddof=1)
  # (n-1) s^2 / sigma^2 ~ chi2(n-1); two-sided, Bonferroni over p coordinates.
  alpha = 1e-3 / p
  lo = scipy.stats.chi2.ppf(alpha / 2, n - 1) / (n - 1) * sigma2
  hi = scipy.stats.chi2.ppf(1 - alpha / 2, n - 1) / (n - 1) * sigma2
  assert np.all((var > lo) & (var < hi)), (var, lo, hi)
  assert np.all(np.abs(noise.mean(axis=0)) < 5 * np.sqrt(sigma2 / n))
  # Zero coordinates before noise are noisy after (positions protected).
  assert np.all(np.abs(out[:, clipped == 0]).max(axis=0) > 0)


def test_noise_is_deterministic_per_seed():
  v = tf.zeros([10])
  a = sketch.add_gaussian_noise(v, 1.0, tf.constant([1, 2])).numpy()
  b = sketch.add_gaussian_noise(v, 1.0, tf.constant([1, 2])).numpy()
  c = sketch.add_gaussian_noise(v, 1.0, tf.constant([1, 3])).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


@pytest.mark.parametrize("k", [0, -1, 6])
def test_bad_k_raises(k):
  with pytest.raises(ConfigError):
    sketch.sparsify_top_k(tf.zeros([10]), k)
  with pytest.raises(ConfigError):
    sketch.keep_top_2k_magnitudes(np.zeros(10), k)


def test_keep_top_2k_magnitudes():
  x = np.array([[0.1, -5.0, 0.2, 3.0, -0.3, 0.05],
                [1.0, 2.0, 3.0, -4.0, 0.0, 0.0]])
  out = sketch.keep_top_2k_magnitudes(x, 1)
  np.testing.assert_array_equal(out, [[0, -5.0, 0, 3.0, 0, 0], [0, 0, 3.0, -4.0, 0, 0]])
  # one sketch ([P1], as the docstring allows) gives the same row
  np.testing.assert_array_equal(sketch.keep_top_2k_magnitudes(x[0], 1), out[0])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
