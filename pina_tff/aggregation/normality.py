"""Shapiro-Wilk W statistic in pure TensorFlow (matches ``scipy.stats.shapiro``).

The stage-2 normality-driven scaling runs inside a TFF server computation, whose C++
worker cannot call back into Python/scipy. So the coefficients ``a`` for a sample size n
are precomputed once in numpy, exactly as scipy's ``swilk`` (Royston 1992, algorithm
AS R94):

* m_i = Φ⁻¹((i − 3/8) / (n + 1/4)), i = 1..n/2 (lower half; the rest by antisymmetry);
* a_n, a_{n−1} (the largest coefficients) from Royston's polynomials in u = 1/√n,
  the middle ones m_i / √(Σm² corrected) so that Σ a² = 1; n = 3: a = (−√½, 0, √½).

Then, in TF (``tf.sort``), W(x) = (Σ a_i x_(i))² / Σ (x_i − x̄)², which equals swilk's
squared correlation between the sorted data and the coefficients (Σ a = 0, Σ a² = 1).
A constant (e.g. all-zero) sample has no defined W: we return W = 1 ("no structure") —
scipy returns 1 too, with a warning.

The slot vectors are long (P ≫ 5,000), so W is computed on a fixed subsample of at most
``max_n`` = 5,000 coordinates whose indices are drawn once, in numpy, from a seed
(:func:`subsample_indices`) — the same coordinates every round.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from scipy.special import ndtri

from pina_tff.errors import ConfigError

MAX_SAMPLE = 5000
_C1 = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_C2 = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)


def _poly(coeffs, x: float) -> float:
  return float(sum(c * x ** i for i, c in enumerate(coeffs)))


@functools.lru_cache(maxsize=64)
def _swilk_coefficients_cached(n: int) -> np.ndarray:
  half = n // 2
  a_half = np.zeros(half, dtype=np.float64)  # a for the upper half, positive
  if n == 3:
    a_half[0] = np.sqrt(0.5)
  else:
    i = np.arange(1, half + 1, dtype=np.float64)
    m = -ndtri((i - 0.375) / (n + 0.25))  # positive: m for the upper half
    summ2 = 2.0 * np.sum(m ** 2)
    ssumm2 = np.sqrt(summ2)
    rsn = 1.0 / np.sqrt(n)
    a1 = _poly(_C1, rsn) + m[0] / ssumm2
    if n > 5:
      a2 = _poly(_C2, rsn) + m[1] / ssumm2
      fac = np.sqrt((summ2 - 2.0 * m[0] ** 2 - 2.0 * m[1] ** 2)
                    / (1.0 - 2.0 * a1 ** 2 - 2.0 * a2 ** 2))
      a_half[1] = a2
      a_half[2:] = m[2:] / fac
    else:
      fac = np.sqrt((summ2 - 2.0 * m[0] ** 2) / (1.0 - 2.0 * a1 ** 2))
      a_half[1:] = m[1:] / fac
    a_half[0] = a1
  full = np.zeros(n, dtype=np.float64)
  full[:half] = -a_half          # smallest order statistics: negative weights
  full[n - half:] = a_half[::-1]  # largest: positive weights
  full.setflags(write=False)
  return full


def swilk_coefficients(n: int) -> np.ndarray:
  """The full antisymmetric coefficient vector a (length n, ascending order stats)."""
  if int(n) < 3:
    raise ConfigError(f"Shapiro-Wilk needs at least 3 values, found n={n}.")
  return _swilk_coefficients_cached(int(n)).copy()


def subsample_indices(size: int, max_n: int = MAX_SAMPLE, seed: int = 0) -> np.ndarray:
  """Sorted indices of a fixed-seed subsample of min(size, max_n) coordinates."""
  if size < 3:
    raise ConfigError(f"Shapiro-Wilk needs vectors of at least 3 values, found {size}.")
  if size <= max_n:
    return np.arange(size, dtype=np.int64)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(size, size=max_n, replace=False)).astype(np.int64)


def shapiro_w(x: tf.Tensor, coefficients: Optional[np.ndarray] = None) -> tf.Tensor:
  """W statistic of each vector along the last axis of ``x`` ([n] or [..., n]).

  Computed in float64. Returns 1 for constant vectors.
  """
  x = tf.cast(tf.convert_to_tensor(x), tf.float64)
  n = x.shape[-1]
  if n is None:
    raise ConfigError("shapiro_w needs a static last dimension.")
  a = tf.constant(swilk_coefficients(n) if coefficients is None else coefficients,
                  dtype=tf.float64)
  xs = tf.sort(x, axis=-1)
  centered = xs - tf.reduce_mean(xs, axis=-1, keepdims=True)
  ssq = tf.reduce_sum(tf.square(centered), axis=-1)
  num = tf.square(tf.reduce_sum(a * centered, axis=-1))
  w = tf.math.divide_no_nan(num, ssq)
  return tf.where(ssq > 0, tf.minimum(w, tf.ones_like(w)), tf.ones_like(w))


def make_shapiro_w_fn(size: int, max_n: int = MAX_SAMPLE, seed: int = 0
                      ) -> Callable[[tf.Tensor], tf.Tensor]:
  """Returns f(u [..., size]) -> W [...] on a fixed-seed subsample of coordinates."""
  idx = subsample_indices(size, max_n, seed)
  coeffs = swilk_coefficients(idx.size)
  idx_t = tf.constant(idx)
  full = idx.size == size

  def fn(u: tf.Tensor) -> tf.Tensor:
    u = tf.convert_to_tensor(u)
    sample = u if full else tf.gather(u, idx_t, axis=-1)
    return shapiro_w(sample, coeffs)

  return fn


def shapiro_w_np(x: np.ndarray) -> np.ndarray:
  """NumPy reference of :func:`shapiro_w` (last axis)."""
  x = np.asarray(x, dtype=np.float64)
  a = swilk_coefficients(x.shape[-1])
  xs = np.sort(x, axis=-1)
  centered = xs - xs.mean(axis=-1, keepdims=True)
  ssq = np.sum(centered ** 2, axis=-1)
  num = np.sum(a * centered, axis=-1) ** 2
  with np.errstate(invalid="ignore", divide="ignore"):
    w = np.where(ssq > 0, np.minimum(num / np.where(ssq > 0, ssq, 1.0), 1.0), 1.0)
  return w
