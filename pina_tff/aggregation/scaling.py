"""Normality-driven scaling of the C cluster aggregates (spec stage 2, step 6).

Server-side post-processing of the DP aggregate u ([C, P], one row per cluster
model), so it has no privacy cost. Modes (config ``Stage2Config.scaling``):

* ``'none'``: identity (plain DP-IFCA);
* ``'min_norm'``: every u_c rescaled to norm min_j ‖u_j‖;
* ``'normality'``: the normality phase, whose formula is a [project choice]
  (:class:`NormalityRule`, ``Stage2Config.normality_rule``); W_c is the Shapiro-Wilk
  statistic of u_c's coordinates (fixed-seed subsample of ≤ 5,000 coordinates, see
  :mod:`pina_tff.aggregation.normality`): W near 1 = indistinguishable from Gaussian
  noise, low W = structure;
* ``'pina'``: ``'min_norm'`` while t < T_w (``warm_rounds``), ``'normality'`` after.

Normality rules (spec stage 2, step 6: the scaling exists because clusters chosen by
few clients get aggregates of reduced magnitude; it "restores the intended ℓ2 norm"):

* ``'shrink'`` (the first choice, kept as an ablation): norm R · (1 − W_c) /
  max_j (1 − W_j), R = max_j ‖u_j‖. Shrinks every noise-like aggregate.
* ``'restore'``: restores each cluster towards its fair share, by as much as its
  aggregate is signal. With σ the known per-coordinate noise std of u (z·S/M, public)
  and d coordinates, the signal norm is estimated as s_c = √max(‖u_c‖² − dσ², 0) and
  the signal fraction as ρ_c = s_c² / ‖u_c‖². The fair-share signal norm is
  s̄ = mean_j s_j (signal norms grow with the clients that chose the cluster, so their
  mean is what a cluster with M/C clients would carry); the gain is
  g_c = clip(s̄ / s_c, 1, G) (G = ``max_gain``) and the factor
  f_c = 1 + ρ_c (g_c − 1). So f_c ≥ 1 always (never below plain IFCA), f_c ≈ 1 for a
  mostly-noise aggregate, and without noise (σ = 0) f_c = g_c.
* ``'restore_w'``: as 'restore', with the signal fraction read from W instead:
  ρ_c = (1 − W_c) / max_j (1 − W_j).
* ``'restore_gated'``: as 'restore' with weight 4 ρ_c (1 − ρ_c) instead of ρ_c: it
  acts only where signal and noise are of one size and vanishes as the noise vanishes
  (σ = 0 → f_c = 1) and for pure noise.

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

import dataclasses
import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from pina_tff.aggregation import normality
from pina_tff.config import NORMALITY_RULES
from pina_tff.config import SCALINGS as SCALING_MODES
from pina_tff.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class NormalityRule:
  """The normality phase's formula (module docstring) and the public facts it uses.

  Attributes:
    name: one of :data:`pina_tff.config.NORMALITY_RULES` (default 'shrink', which
      reads no noise std; the program passes ``Stage2Config.normality_rule``).
    noise_std: per-coordinate standard deviation of the noise in the aggregate u, in
      parameter units (z·S/M for central and distributed DP; 0 without noise). A
      public parameter of the mechanism, so using it costs no privacy.
    max_gain: G, the largest factor a restore rule applies (>= 1).
  """
  name: str = "shrink"
  noise_std: float = 0.0
  max_gain: float = 4.0

  def __post_init__(self):
    if self.name not in NORMALITY_RULES:
      raise ConfigError(f"Unknown normality rule {self.name!r}; expected one of "
                        f"{list(NORMALITY_RULES)}.")
    if not (self.noise_std >= 0 and math.isfinite(self.noise_std)):
      raise ConfigError(f"normality rule noise_std: expected a finite value >= 0, "
                        f"found {self.noise_std!r}.")
    if not (self.max_gain >= 1 and math.isfinite(self.max_gain)):
      raise ConfigError(f"stage2.restore_max_gain: expected a finite value >= 1, "
                        f"found {self.max_gain!r}.")


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


def _shrink_targets(norms, w):
  r = tf.reduce_max(norms)
  d = tf.maximum(1.0 - w, tf.zeros_like(w))
  dmax = tf.reduce_max(d)
  return tf.where(dmax > 0, r * tf.math.divide_no_nan(d, dmax), norms)


def _w_structure(w):
  """(1 − W_c) / max_j (1 − W_j) in [0, 1]; zeros when no slot has structure."""
  d = tf.maximum(1.0 - w, tf.zeros_like(w))
  return tf.math.divide_no_nan(d, tf.reduce_max(d))


def _restore_targets(norms, w, rule: NormalityRule, num_params: int):
  """Target norms f_c ‖u_c‖ of the restore rules (module docstring)."""
  noise_energy = tf.cast(num_params * rule.noise_std ** 2, norms.dtype)
  signal2 = tf.maximum(tf.square(norms) - noise_energy, tf.zeros_like(norms))
  signal = tf.sqrt(signal2)
  rho = tf.math.divide_no_nan(signal2, tf.square(norms))
  if rule.name == "restore_w":
    weight = _w_structure(w)
  elif rule.name == "restore_gated":
    weight = 4.0 * rho * (1.0 - rho)
  else:
    weight = rho
  g_max = tf.cast(rule.max_gain, norms.dtype)
  gain = tf.where(signal > 0, tf.math.divide_no_nan(tf.reduce_mean(signal), signal),
                  tf.fill(tf.shape(norms), g_max))
  gain = tf.clip_by_value(gain, 1.0, g_max)
  return norms * (1.0 + weight * (gain - 1.0))


def _normality_targets(norms, w, rule: NormalityRule, num_params: int):
  if rule.name == "shrink":
    return _shrink_targets(norms, w)
  return _restore_targets(norms, w, rule, num_params)


def scale_cluster_aggregates(
    u: tf.Tensor, mode: str, round_num=1, warm_rounds: int = 0,
    w_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    ignore_zero_slots: bool = True, max_n: int = normality.MAX_SAMPLE,
    seed: int = 0, rule: Optional[NormalityRule] = None
) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
  """Scales each row of ``u`` [C, P] by ``mode``.

  Args:
    u: the aggregate, one row per cluster model (static P).
    mode: one of :data:`SCALING_MODES`.
    round_num: 1-based stage-2 round t (Python int or scalar tensor).
    warm_rounds: T_w for mode 'pina' (min_norm while t < T_w).
    w_fn: f(u [C, P]) -> W [C]; default ``normality.make_shapiro_w_fn(P, max_n, seed)``.
    ignore_zero_slots: see module docstring.
    rule: the normality phase's formula. Default ``NormalityRule()``: 'shrink', the
      only rule that needs no noise std; runs pass the config's rule (default
      'restore', chosen on validation) with their aggregator's noise std.

  Returns:
    (scaled u [C, P], diagnostics {'norms', 'w', 'target_norms', 'scale_factors'},
    each [C], in u's dtype).
  """
  _check_mode(mode)
  rule = rule or NormalityRule()
  u = tf.convert_to_tensor(u)
  num_params = int(u.shape[-1])
  if w_fn is None:
    w_fn = normality.make_shapiro_w_fn(int(u.shape[-1]), max_n, seed)
  norms = tf.norm(u, axis=-1)
  w = tf.cast(w_fn(u), u.dtype)
  if mode == "none":
    targets = norms
  elif mode == "min_norm":
    targets = _min_norm_targets(norms, ignore_zero_slots)
  elif mode == "normality":
    targets = _normality_targets(norms, w, rule, num_params)
  else:
    warm = tf.less(tf.cast(round_num, tf.int64), tf.cast(warm_rounds, tf.int64))
    targets = tf.where(warm, _min_norm_targets(norms, ignore_zero_slots),
                       _normality_targets(norms, w, rule, num_params))
  factors = _factors_to_target(norms, targets)
  if mode == "none":
    factors = tf.ones_like(norms)
  scaled = u * factors[:, tf.newaxis]
  return scaled, {"norms": norms, "w": w, "target_norms": targets,
                  "scale_factors": factors}


def make_scaling_fn(num_params: int, mode: str, warm_rounds: int = 0,
                    max_n: int = normality.MAX_SAMPLE, seed: int = 0,
                    ignore_zero_slots: bool = True,
                    rule: Optional[NormalityRule] = None):
  """Returns f(u [C, num_params], round_num) -> (scaled u, diagnostics)."""
  _check_mode(mode)
  w_fn = normality.make_shapiro_w_fn(num_params, max_n, seed)

  def fn(u, round_num):
    return scale_cluster_aggregates(u, mode, round_num, warm_rounds, w_fn,
                                    ignore_zero_slots, rule=rule)

  return fn


def scale_cluster_aggregates_np(u: np.ndarray, mode: str, round_num: int = 1,
                                warm_rounds: int = 0,
                                ignore_zero_slots: bool = True,
                                max_n: int = normality.MAX_SAMPLE, seed: int = 0,
                                rule: Optional[NormalityRule] = None
                                ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """NumPy reference of :func:`scale_cluster_aggregates` (W from scipy's formula;
  the restore rules computed cluster by cluster)."""
  _check_mode(mode)
  rule = rule or NormalityRule()
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
    if rule.name != "shrink":
      return _restore_targets_np(norms, w, rule, u.shape[-1])
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


def _restore_targets_np(norms, w, rule: NormalityRule, num_params: int) -> np.ndarray:
  """Reference of the restore rules, one cluster at a time."""
  signals = [math.sqrt(max(n * n - num_params * rule.noise_std ** 2, 0.0)) for n in norms]
  fair = sum(signals) / len(signals)
  structure = [max(1.0 - x, 0.0) for x in w]
  top = max(structure)
  targets = []
  for n, s, st in zip(norms, signals, structure):
    if n == 0:
      targets.append(0.0)
      continue
    rho = s * s / (n * n)
    weight = {"restore": rho, "restore_gated": 4.0 * rho * (1.0 - rho),
              "restore_w": st / top if top > 0 else 0.0}[rule.name]
    gain = min(max(fair / s, 1.0), rule.max_gain) if s > 0 else rule.max_gain
    targets.append(n * (1.0 + weight * (gain - 1.0)))
  return np.asarray(targets)
