"""Normality-driven scaling of the C cluster aggregates (spec stage 2, step 6).

Server-side post-processing of the DP aggregate u ([C, P], one row per cluster
model), so it has no privacy cost. Modes (config ``Stage2Config.scaling``):

* ``'none'``: identity (plain DP-IFCA);
* ``'min_norm'``: every u_c rescaled to norm min_j ‖u_j‖;
* ``'normality'``: [project choice of formula, from the spec] u_c rescaled to norm
  R · (1 − W_c) / max_j (1 − W_j), with R = max_j ‖u_j‖ and W_c the Shapiro-Wilk
  statistic of u_c's coordinates (fixed-seed subsample of ≤ 5,000 coordinates, see
  :mod:`pina_tff.aggregation.normality`). W near 1 = indistinguishable from Gaussian
  noise → shrunk; low W = structure → kept near R;
* ``'pina'``: ``'min_norm'`` while t < T_w (``warm_rounds``), ``'normality'`` after.

Round numbers t are the spec's 1-based stage-2 rounds.

Guards (no NaN, documented choices):
* a slot with zero norm stays zero (its scale factor is reported as 1);
* min_norm takes the minimum over slots with non-zero norm [project choice:
  ``ignore_zero_slots=True``; with False, a zero slot zeroes all slots as the literal
  formula says]; if all slots are zero nothing changes;
* normality: if max_j (1 − W_j) = 0 (every slot constant or perfectly Gaussian) the
  aggregate is left unchanged.

:func:`scale_cluster_aggregates` is TF (usable inside ``tf.function`` / a TFF server
computation; ``round_num`` may be a tensor); :func:`scale_cluster_aggregates_np` is the
numpy reference used by the tests.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from pina_tff.aggregation import normality
from pina_tff.config import SCALINGS as SCALING_MODES
from pina_tff.errors import ConfigError


def _check_mode(mode: str) -> None:
  if mode not in SCALING_MODES:
    raise ConfigError(
        f"Unknown scaling mode {mode!r}; expected one of {list(SCALING_MODES)}.")


def _factors_to_target(norms, target):
  """target/norm where norm > 0, else 1 (zero slots stay zero)."""
  pos = norms > 0
  return tf.where(pos, tf.math.divide_no_nan(target, norms), tf.ones_like(norms))


def _min_norm_targets(norms, ignore_zero_slots: bool):
  pos = norms > 0
  if ignore_zero_slots:
    big = tf.fill(tf.shape(norms), tf.constant(np.inf, norms.dtype))
    m = tf.reduce_min(tf.where(pos, norms, big))
    m = tf.where(tf.reduce_any(pos), m, tf.zeros_like(m))
  else:
    m = tf.reduce_min(norms)
  any_pos = tf.reduce_any(pos)
  return tf.where(any_pos, tf.fill(tf.shape(norms), m), norms)


def _normality_targets(norms, w):
  r = tf.reduce_max(norms)
  d = tf.maximum(1.0 - w, tf.zeros_like(w))
  dmax = tf.reduce_max(d)
  return tf.where(dmax > 0, r * tf.math.divide_no_nan(d, dmax), norms)


def scale_cluster_aggregates(
    u: tf.Tensor, mode: str, round_num=1, warm_rounds: int = 0,
    w_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    ignore_zero_slots: bool = True, max_n: int = normality.MAX_SAMPLE,
    seed: int = 0) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
  """Scales each row of ``u`` [C, P] by ``mode``.

  Args:
    u: the aggregate, one row per cluster model (static P).
    mode: one of :data:`SCALING_MODES`.
    round_num: 1-based stage-2 round t (Python int or scalar tensor).
    warm_rounds: T_w for mode 'pina' (min_norm while t < T_w).
    w_fn: f(u [C, P]) -> W [C]; default ``normality.make_shapiro_w_fn(P, max_n, seed)``.
    ignore_zero_slots: see module docstring.

  Returns:
    (scaled u [C, P], diagnostics {'norms', 'w', 'target_norms', 'scale_factors'},
    each [C], in u's dtype).
  """
  _check_mode(mode)
  u = tf.convert_to_tensor(u)
  if w_fn is None:
    w_fn = normality.make_shapiro_w_fn(int(u.shape[-1]), max_n, seed)
  norms = tf.norm(u, axis=-1)
  w = tf.cast(w_fn(u), u.dtype)
  if mode == "none":
    targets = norms
  elif mode == "min_norm":
    targets = _min_norm_targets(norms, ignore_zero_slots)
  elif mode == "normality":
    targets = _normality_targets(norms, w)
  else:
    warm = tf.less(tf.cast(round_num, tf.int64), tf.cast(warm_rounds, tf.int64))
    targets = tf.where(warm, _min_norm_targets(norms, ignore_zero_slots),
                       _normality_targets(norms, w))
  factors = _factors_to_target(norms, targets)
  if mode == "none":
    factors = tf.ones_like(norms)
  scaled = u * factors[:, tf.newaxis]
  return scaled, {"norms": norms, "w": w, "target_norms": targets,
                  "scale_factors": factors}


def make_scaling_fn(num_params: int, mode: str, warm_rounds: int = 0,
                    max_n: int = normality.MAX_SAMPLE, seed: int = 0,
                    ignore_zero_slots: bool = True):
  """Returns f(u [C, num_params], round_num) -> (scaled u, diagnostics)."""
  _check_mode(mode)
  w_fn = normality.make_shapiro_w_fn(num_params, max_n, seed)

  def fn(u, round_num):
    return scale_cluster_aggregates(u, mode, round_num, warm_rounds, w_fn,
                                    ignore_zero_slots)

  return fn


def scale_cluster_aggregates_np(u: np.ndarray, mode: str, round_num: int = 1,
                                warm_rounds: int = 0,
                                ignore_zero_slots: bool = True,
                                max_n: int = normality.MAX_SAMPLE, seed: int = 0
                                ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """NumPy reference of :func:`scale_cluster_aggregates` (W from scipy's formula)."""
  _check_mode(mode)
  u = np.asarray(u, dtype=np.float64)
  idx = normality.subsample_indices(u.shape[-1], max_n, seed)
  w = normality.shapiro_w_np(u[:, idx])
  norms = np.linalg.norm(u, axis=-1)
  pos = norms > 0

  def min_norm():
    if not pos.any():
      return norms.copy()
    m = norms[pos].min() if ignore_zero_slots else norms.min()
    return np.full_like(norms, m)

  def normal():
    d = np.maximum(1.0 - w, 0.0)
    if d.max() <= 0:
      return norms.copy()
    return norms.max() * d / d.max()

  if mode == "none":
    targets = norms.copy()
  elif mode == "min_norm":
    targets = min_norm()
  elif mode == "normality":
    targets = normal()
  else:
    targets = min_norm() if round_num < warm_rounds else normal()
  factors = np.ones_like(norms)
  factors[pos] = targets[pos] / norms[pos]
  return u * factors[:, None], {"norms": norms, "w": w, "target_norms": targets,
                                "scale_factors": factors}
