"""The discrete Gaussian N_Z(0, σ²), sampled from a 128-bit key with stateless TF ops.

The seeded distributed DP (`computations.learning.seeded_ddp`) adds this noise on every TFF
client. tensorflow_privacy's sampler (the one TFF's distributed DP uses) draws from
stateful, unseeded generators, so a run cannot repeat it; this one is a function of
(key, shape, σ) only.

Method: Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy"
(2020), Algorithm 3, vectorized with a fixed budget of proposals per element:

  t = floor(σ) + 1; propose Y = G1 − G2 with G1, G2 i.i.d. geometric,
  P(G ≥ k) = exp(−k/t), so P(Y = y) ∝ exp(−|y|/t) (discrete Laplace);
  accept Y with probability exp(−(|Y| − σ²/t)² / (2σ²)).

Accepted values have exactly the law P(y) ∝ exp(−y²/(2σ²)) (the acceptance
probability is the ratio of the two pmfs up to a constant, and at most 1). Draws:
G = floor(−t·log(1 − U)) and the acceptance test U' < p, with U, U' uniform float64
(`tf.random.stateless_uniform`, 2^-53 resolution) keyed by
``stateless_split(key, MAX_PROPOSALS)[i]`` for proposal i (every sub-key keeps 128
bits; ``stateless_fold_in`` would keep 64). So the only departures from the exact law
are float64 rounding of the probabilities (relative 1e-16) and the truncation of the
proposals at −log(2^-53)·t ≈ 36.7·t (the discrete Gaussian's mass beyond 36σ is below
1e-280).

Failure: an element whose MAX_PROPOSALS proposals are all rejected is set to 0. The
acceptance probability is a(σ) ≥ 0.54 for σ ≥ 1 (0.76 for large σ;
:func:`acceptance_probability`), so this happens with probability (1 − a)^128 ≤ 1e-43
per element (:func:`failure_probability`); the sampler's law is within that total
variation distance of N_Z(0, σ²) per element, negligible against any δ used here.
The loop stops as soon as every element is accepted (typically after ~log(n)/1.4
rounds); later proposals could not change an accepted element, so the result is the
same as with all 128 rounds.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

#: Proposals drawn per element at most (see the module docstring).
MAX_PROPOSALS = 128


def laplace_scale(sigma: float) -> int:
  """t = floor(σ) + 1, the discrete Laplace scale of the proposals."""
  return int(math.floor(sigma)) + 1


def _support(sigma: float, t: int, tail: float = 40.0) -> np.ndarray:
  half = int(math.ceil(tail * max(sigma, t))) + 2
  return np.arange(-half, half + 1)


def pmf(sigma: float, values) -> np.ndarray:
  """Exact pmf of N_Z(0, σ²) at integer ``values`` (normalized over ±40σ, NumPy)."""
  grid = _support(sigma, 0)
  norm = float(np.sum(np.exp(-grid.astype(np.float64) ** 2 / (2.0 * sigma ** 2))))
  v = np.asarray(values, np.float64)
  return np.exp(-v ** 2 / (2.0 * sigma ** 2)) / norm


def variance(sigma: float) -> float:
  """Exact variance of N_Z(0, σ²) (slightly below σ² for small σ)."""
  grid = _support(sigma, 0)
  return float(np.sum(grid.astype(np.float64) ** 2 * pmf(sigma, grid)))


def acceptance_probability(sigma: float) -> float:
  """Exact probability that one proposal is accepted (NumPy)."""
  t = laplace_scale(sigma)
  y = _support(sigma, t).astype(np.float64)
  q = math.exp(-1.0 / t)
  lap = (1.0 - q) / (1.0 + q) * q ** np.abs(y)
  return float(np.sum(lap * np.exp(-(np.abs(y) - sigma ** 2 / t) ** 2
                                   / (2.0 * sigma ** 2))))


def failure_probability(sigma: float, proposals: int = MAX_PROPOSALS) -> float:
  """Probability that an element's ``proposals`` proposals are all rejected."""
  return (1.0 - acceptance_probability(sigma)) ** proposals


def sample(key, shape, sigma: float, proposals: int = MAX_PROPOSALS) -> tf.Tensor:
  """int64 samples of N_Z(0, σ²) of ``shape``, a function of (key, shape, σ) only.

  Args:
    key: int64[2] stateless seed (all 128 bits are used).
    shape: static output shape.
    sigma: σ > 0 (Python float).
    proposals: proposals per element at most (failure: the element is 0).
  """
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, found {sigma}")
  n = int(np.prod(shape))
  t = float(laplace_scale(sigma))
  center, two_var = sigma ** 2 / t, 2.0 * sigma ** 2
  keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), proposals)

  def body(i, out, done):
    u = tf.random.stateless_uniform([3, n], seed=keys[i], dtype=tf.float64)
    g = tf.floor(-t * tf.math.log1p(-u[:2]))  # two geometric draws, P(G >= k) = e^(-k/t)
    y = g[0] - g[1]
    accept = u[2] < tf.exp(-tf.square(tf.abs(y) - center) / two_var)
    out = tf.where(accept & ~done, y, out)
    return i + 1, out, done | accept

  def cond(i, out, done):
    del out
    return (i < proposals) & ~tf.reduce_all(done)

  _, out, _ = tf.while_loop(cond, body, (tf.constant(0), tf.zeros([n], tf.float64),
                                         tf.zeros([n], tf.bool)))
  return tf.reshape(tf.cast(out, tf.int64), shape)
