"""Stage-1 sketch mechanism (local DP), in TensorFlow, plus server post-processing.

A client's sketch is the change of its LoRA parameters, vec(A − A0, B − B0) (size
P1 = 2·d·r). The mechanism (spec, stage 1, steps 4-5):

1. :func:`sparsify_top_k`: keep the k largest positive and the k largest negative
   entries, zero the rest;
2. :func:`clip_l2`: clip to L2 norm S1;
3. :func:`add_gaussian_noise`: add N(0, (z1·S1)²) to **every** coordinate, zeros
   included, so the positions of the kept entries are protected as well.

Every function works inside ``tf.function`` and on a batch with a leading client axis
([S, P1]); the noise uses stateless RNG (``tf.random.stateless_normal`` with a seed
tensor of shape [2], int32/int64), so the same seed gives the same sketch.
``k`` must be a Python int (it fixes shapes). :func:`keep_top_2k_magnitudes` is the
optional server-side post-processing (numpy; free under DP).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pina_tff.errors import ConfigError
from pina_tff.privacy import norm_bound


def validate_top_k(k: int, size: int) -> None:
  """Raises ConfigError unless 1 ≤ k ≤ size / 2 (k positive + k negative entries)."""
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise ConfigError(f"sketch top_k must be an int, found {type(k).__name__} {k!r}.")
  if k < 1 or 2 * k > size:
    raise ConfigError(
        f"sketch top_k must be in [1, P1/2] = [1, {size // 2}] for a sketch of size "
        f"P1={size}, found top_k={k}.")


def _top_k_mask(values: tf.Tensor, k: int) -> tf.Tensor:
  """Boolean mask of the k largest entries along the last axis (exactly k)."""
  size = values.shape[-1]
  _, idx = tf.math.top_k(values, k=k, sorted=False)
  return tf.reduce_any(tf.one_hot(idx, size, on_value=True, off_value=False,
                                  dtype=tf.bool), axis=-2)


def sparsify_top_k(v: tf.Tensor, k: int) -> tf.Tensor:
  """Keeps the k largest positive and the k largest negative entries of ``v``.

  Along the last axis; fewer are kept where ``v`` has fewer than k positive (negative)
  entries. Ties are broken by ``tf.math.top_k`` (lowest index first), so never more
  than k of each sign are kept.
  """
  v = tf.convert_to_tensor(v)
  size = v.shape[-1]
  if size is None:
    raise ConfigError("sparsify_top_k needs a static last dimension (sketch size).")
  validate_top_k(k, int(size))
  pos_mask = tf.logical_and(_top_k_mask(v, k), v > 0)
  neg_mask = tf.logical_and(_top_k_mask(-v, k), v < 0)
  return tf.where(tf.logical_or(pos_mask, neg_mask), v, tf.zeros_like(v))


def clip_l2(v: tf.Tensor, clip: float) -> tf.Tensor:
  """Scales each vector (last axis) to L2 norm ≤ ``clip``; zero vectors stay zero.

  The bound holds exactly for float32 vectors (`norm_bound.enforce_norm_bound`
  corrects the ones the scaling leaves an ulp above ``clip``): the sketches'
  sensitivity 2·S1 holds bit for bit."""
  v = tf.convert_to_tensor(v)
  bound = float(clip)
  clip = tf.cast(clip, v.dtype)
  norm = tf.norm(v, axis=-1, keepdims=True)
  factor = tf.minimum(tf.ones_like(norm), tf.math.divide_no_nan(clip, norm))
  factor = tf.where(norm > 0, factor, tf.ones_like(norm))
  if v.dtype != tf.float32:
    return v * factor
  return norm_bound.enforce_norm_bound(v * factor, bound)


def add_gaussian_noise(v: tf.Tensor, stddev, seed) -> tf.Tensor:
  """Adds N(0, stddev²) independently to every coordinate of ``v`` (zeros included).

  ``seed``: shape-[2] integer tensor for ``tf.random.stateless_normal``.
  """
  v = tf.convert_to_tensor(v)
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  noise = tf.random.stateless_normal(tf.shape(v), seed=seed, dtype=v.dtype)
  return v + tf.cast(stddev, v.dtype) * noise


def make_sketch(delta_vec: tf.Tensor, k: int, clip: float, noise_multiplier: float,
                seed) -> tf.Tensor:
  """The noisy sketch: noise(clip(sparsify(delta_vec, k), clip), z·clip, seed)."""
  if clip <= 0:
    raise ConfigError(f"sketch clip S1 must be > 0, found {clip}.")
  if noise_multiplier < 0:
    raise ConfigError(f"sketch noise multiplier must be >= 0, found {noise_multiplier}.")
  clipped = clip_l2(sparsify_top_k(delta_vec, k), clip)
  return add_gaussian_noise(clipped, noise_multiplier * clip, seed)


def keep_top_2k_magnitudes(noisy: np.ndarray, k: int) -> np.ndarray:
  """Server post-processing: keep the 2k largest |entries| of each sketch (last axis).

  Works on [P1] or [M1, P1]; returns a new float array. Free under DP.
  """
  x = np.asarray(noisy)
  size = x.shape[-1]
  validate_top_k(k, size)
  keep = min(2 * k, size)
  idx = np.argpartition(-np.abs(x), keep - 1, axis=-1)[..., :keep]
  out = np.zeros_like(x)
  np.put_along_axis(out, idx, np.take_along_axis(x, idx, axis=-1), axis=-1)
  return out


def scale_rows_to_norm(rows: np.ndarray, bound: float) -> np.ndarray:
  """NumPy, server side: each row (last axis) scaled to L2 norm <= ``bound``,
  directions kept, zero rows left zero; float64. (The clients' clip is `clip_l2`.)"""
  x = np.asarray(rows, np.float64)
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x * np.minimum(1.0, np.divide(bound, norms, out=np.ones_like(norms),
                                       where=norms > 0))
