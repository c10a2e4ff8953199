"""pina_tff.privacy.discrete_gaussian: the seeded exact sampler of N_Z(0, σ²).

References computed here, not by the module: the pmf exp(−y²/2σ²)/Σ_k exp(−k²/2σ²)
summed over |k| ≤ 60σ; its variance and fourth moment from the same sums. Checks:
Pearson's chi-square of 200,000 draws against that pmf (cells with expected count
≥ 5, the tails pooled), the total-variation distance between the empirical and exact
pmfs (below 3·sqrt(cells/N), a bound on E[TV] times 3 of the multinomial), the
sample variance within 6 standard deviations (sqrt((μ4 − v²)/N)), and the
documented failure probability of 128 proposals.
"""
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from pina_tff.privacy import discrete_gaussian as dg

N = 200_000


def _exact(sigma):
  k = np.arange(-int(60 * sigma) - 5, int(60 * sigma) + 6)
  w = np.exp(-k.astype(np.float64) ** 2 / (2 * sigma ** 2))
  return k, w / w.sum()


def _draw(sigma, key=(3, 4), n=N):
  return dg.sample(tf.constant(key, tf.int64), [n], sigma).numpy()


@pytest.mark.parametrize("sigma", [1.0, 2.5, 12.0])
def test_empirical_pmf_matches_the_exact_pmf(sigma):
  x = _draw(sigma)
  k, p = _exact(sigma)
  assert x.min() >= k[0] and x.max() <= k[-1]  # nothing outside ±60σ
  counts = np.bincount(x - k[0], minlength=len(k)).astype(np.float64)
  expected = N * p
  keep = expected >= 5
  lo, hi = k[keep].min(), k[keep].max()
  obs = np.concatenate([[counts[k < lo].sum()], counts[keep], [counts[k > hi].sum()]])
  exp = np.concatenate([[expected[k < lo].sum()], expected[keep],
                        [expected[k > hi].sum()]])
  chi2 = float(np.sum((obs - exp) ** 2 / exp))
  dof = len(obs) - 1
  assert stats.chi2.sf(chi2, dof) > 1e-6, (chi2, dof)
  tv = 0.5 * float(np.sum(np.abs(counts / N - p)))
  assert tv < 3 * math.sqrt(keep.sum() / N), tv


@pytest.mark.parametrize("sigma", [1.0, 2.5, 12.0, 4086.0])
def test_variance_is_the_exact_variance(sigma):
  x = _draw(sigma).astype(np.float64)
  k, p = _exact(sigma)
  var = float(np.sum(k ** 2.0 * p))
  mu4 = float(np.sum(k ** 4.0 * p))
  assert dg.variance(sigma) == pytest.approx(var, rel=1e-12)
  assert abs(x.mean()) < 6 * math.sqrt(var / N)
  assert abs(np.mean(x ** 2) - var) < 6 * math.sqrt((mu4 - var ** 2) / N)


def test_a_function_of_the_key_only():
  a = _draw(3.0, (7, 8), 1000)
  np.testing.assert_array_equal(a, _draw(3.0, (7, 8), 1000))
  for key in ((7, 9), (8, 8), (7 + 2 ** 62, 8)):  # either word, the top bits too
    assert np.mean(a == _draw(3.0, key, 1000)) < 0.3  # P(equal) ~ 0.13 per element


def test_failure_probability_of_the_proposal_budget():
  """An element is 0 after 128 rejected proposals; the acceptance probability (checked
  against a Monte Carlo of the proposal and test in NumPy) makes that below 1e-40."""
  for sigma in (1.0, 1.5, 3.0, 100.0, 1e4):
    a = dg.acceptance_probability(sigma)
    assert a > 0.54 and dg.failure_probability(sigma) < 1e-40
  rng = np.random.default_rng(0)
  sigma, t = 2.0, dg.laplace_scale(2.0)
  g = rng.geometric(1 - math.exp(-1 / t), size=(2, 400_000)) - 1
  y = g[0] - g[1]
  accept = rng.random(y.size) < np.exp(-(np.abs(y) - sigma ** 2 / t) ** 2 / (2 * sigma ** 2))
  a = dg.acceptance_probability(sigma)
  assert abs(accept.mean() - a) < 6 * math.sqrt(a * (1 - a) / y.size)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
