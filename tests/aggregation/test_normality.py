"""Shapiro-Wilk W in TensorFlow matches scipy.stats.shapiro."""
import warnings

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from pina_tff.aggregation import normality
from pina_tff.errors import ConfigError


def _sample(kind, n, rng):
  if kind == "gauss":
    return rng.normal(size=n)
  if kind == "uniform":
    return rng.uniform(-1, 1, size=n)
  # structured/sparse: ~10% large entries over tiny noise
  return (np.where(rng.uniform(size=n) < 0.1, 5 * rng.normal(size=n), 0.0)
          + 0.01 * rng.normal(size=n))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 11, 20, 50, 200, 1001, 5000])
@pytest.mark.parametrize("kind", ["gauss", "uniform", "sparse"])
def test_w_matches_scipy(n, kind):
  x = _sample(kind, n, np.random.default_rng(n))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = scipy.stats.shapiro(x).statistic
  got = float(normality.shapiro_w(tf.constant(x, tf.float32)))
  assert got == pytest.approx(expected, abs=1e-5)
  assert float(normality.shapiro_w_np(x)) == pytest.approx(expected, abs=1e-5)


def test_coefficients_antisymmetric_unit_norm():
  for n in (3, 5, 6, 101, 5000):
    a = normality.swilk_coefficients(n)
    assert a.sum() == pytest.approx(0.0, abs=1e-12)
    assert (a ** 2).sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(a, -a[::-1])


def test_batched_subsampled_fn_in_tf_function():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(3, 12000)).astype(np.float32)
  u[1] = _sample("sparse", 12000, rng)
  fn = normality.make_shapiro_w_fn(12000, max_n=5000, seed=4)
  w = tf.function(fn)(tf.constant(u)).numpy()
  idx = normality.subsample_indices(12000, 5000, 4)
  assert idx.size == 5000 and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(idx, normality.subsample_indices(12000, 5000, 4))
  for c in range(3):
    assert w[c] == pytest.approx(scipy.stats.shapiro(u[c, idx]).statistic, abs=1e-5)
  assert w[1] < 0.8 < w[0]


def test_constant_vector_gives_one_and_small_n_errors():
  assert float(normality.shapiro_w(tf.zeros([10]))) == 1.0
  with pytest.raises(ConfigError):
    normality.swilk_coefficients(2)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
