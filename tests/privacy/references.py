"""Privacy references computed without pina_tff.privacy.accounting (for the tests).

`gaussian_eps`: the analytic Gaussian mechanism's ε(δ) (Balle & Wang 2018, Theorem 8)
written from the formula with SciPy's normal CDF and brentq; a composition of Gaussians
with multipliers z_i is the Gaussian with μ = sqrt(Σ 1/z_i²), so one function covers
every unsampled composition. `worst_row_eps`: the server model's ε, the maximum of
`gaussian_eps` over the clients' participation rows counted from the schedule.
`prv_eps`: Microsoft's independent `prv-accountant` (for Poisson-sampled compositions).
"""
import math

import numpy as np
from prv_accountant import PRVAccountant
from scipy import optimize, stats


def gaussian_eps(mu: float, delta: float) -> float:
  """Exact ε(δ) of a Gaussian mechanism with sensitivity/std = mu (Balle & Wang)."""
  def d(eps):
    return (stats.norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta)
  if d(0.0) <= 0:
    return 0.0
  return optimize.brentq(d, 0.0, 500.0, xtol=1e-12)


def worst_row_eps(counts_and_zs, delta: float) -> float:
  """max over clients of gaussian_eps(sqrt(Σ_s K_s/z_s²)); ``counts_and_zs`` is a list of
  (per-client count array, z) pairs, one per stage."""
  rho = sum(np.asarray(k, np.float64) / (z * z) for k, z in counts_and_zs)
  return gaussian_eps(math.sqrt(float(np.max(rho))), delta)


def prv_eps(events, delta):
  """prv-accountant's (lower, estimate, upper) ε of [(prv, count), ...]."""
  a = PRVAccountant(prvs=[e for e, _ in events], max_self_compositions=[k for _, k in events],
                    eps_error=0.05, delta_error=delta * 1e-3)
  return a.compute_epsilon(delta=delta, num_self_compositions=[k for _, k in events])
