"""The cohort schedule is Poisson sampling: rate q, independent across clients and rounds.

Statistical tests with fixed seeds (deterministic); each one fails on a planted bug:
fixed-size cohorts (cohort-size variance 0, negative pairwise correlation), sticky
cohorts (correlation across rounds), a wrong rate.
"""
import numpy as np
import pytest
from scipy import stats

from pina_tff.errors import ConfigError
from pina_tff.simulation import sampling

P, M, T = 200, 50, 1500  # q = 0.25
Q = M / P
ALPHA = 1e-4


def _poisson_checks(x: np.ndarray, q: float):
  """p-values of: rate, cohort-size variance, round-to-round and pairwise correlation."""
  t, p = x.shape
  n = x.size
  k = x.sum()
  p_rate = 2 * stats.norm.sf(abs(k - n * q) / np.sqrt(n * q * (1 - q)))
  sizes = x.sum(axis=1)
  chi2 = ((sizes - p * q) ** 2).sum() / (p * q * (1 - q))
  p_size = 2 * min(stats.chi2.sf(chi2, t), stats.chi2.cdf(chi2, t))
  xc = x.astype(float) - q
  var = q * (1 - q)
  lag = (xc[1:] * xc[:-1]).sum() / ((t - 1) * p * var)  # ~ N(0, 1/((t-1)p))
  p_lag = 2 * stats.norm.sf(abs(lag) * np.sqrt((t - 1) * p))
  # Pairwise (client i, client i+1) correlation within rounds.
  pair = (xc[:, 1:] * xc[:, :-1]).sum() / (t * (p - 1) * var)
  p_pair = 2 * stats.norm.sf(abs(pair) * np.sqrt(t * (p - 1)))
  return dict(rate=p_rate, size=p_size, lag=p_lag, pair=p_pair)


def test_poisson_schedule_has_rate_q_and_independent_inclusions():
  x = sampling.schedule(seed=3, stage=2, rounds=T, population=P, expected_size=M)
  pv = _poisson_checks(x, Q)
  assert min(pv.values()) > ALPHA, pv
  # Per-client counts follow Binomial(T, q) (chi-square over binned counts).
  counts = x.sum(axis=0)
  assert abs(counts.mean() - T * Q) < 4 * np.sqrt(T * Q * (1 - Q) / P)


def test_fixed_size_sampling_fails_the_poisson_checks():
  x = sampling.schedule(seed=3, stage=2, rounds=T, population=P, expected_size=M,
                        scheme="fixed")
  pv = _poisson_checks(x, Q)
  assert pv["rate"] > ALPHA  # right rate ...
  assert pv["size"] < ALPHA  # ... but no cohort-size variance
  assert (x.sum(axis=1) == M).all()


def test_sticky_or_wrong_rate_schedules_fail_the_checks():
  rng = np.random.default_rng(0)
  x = sampling.schedule(seed=3, stage=2, rounds=T, population=P, expected_size=M)
  sticky = x.copy()
  keep = rng.random(sticky.shape) < 0.2
  sticky[1:][keep[1:]] = sticky[:-1][keep[1:]]  # 20 % of entries copy the last round
  assert _poisson_checks(sticky, Q)["lag"] < ALPHA
  wrong = sampling.schedule(seed=3, stage=2, rounds=T, population=P, expected_size=M + 3)
  assert _poisson_checks(wrong, Q)["rate"] < ALPHA


def test_schedule_is_a_function_of_seed_stage_round():
  a = sampling.cohort(1, 2, 7, 100, 30)
  assert np.array_equal(a, sampling.cohort(1, 2, 7, 100, 30))
  assert not np.array_equal(a, sampling.cohort(1, 2, 8, 100, 30))
  assert not np.array_equal(a, sampling.cohort(1, 0, 7, 100, 30))
  assert np.array_equal(sampling.cohort(1, 2, 7, 100, 100), np.arange(100))  # q = 1
  counts = sampling.participation_counts(1, 2, 20, 100, 30)
  sched = sampling.schedule(1, 2, 20, 100, 30)
  assert np.array_equal(counts, sched.sum(axis=0))
  assert sampling.max_cohort_size(1, 2, 20, 100, 30) == sched.sum(axis=1).max()


@pytest.mark.parametrize("args", [(10, 0, "poisson"), (10, 11, "poisson"),
                                  (10, 5, "bernoulli")])
def test_bad_arguments(args):
  p, m, scheme = args
  with pytest.raises(ConfigError):
    sampling.cohort(0, 2, 1, p, m, scheme)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
