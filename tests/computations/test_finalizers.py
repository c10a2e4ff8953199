"""computations.learning.finalizers (the stage-2 server step, run by TFF) vs a NumPy reference.

A fixed [C, P] aggregate goes through the real TFF FinalizerProcess for every scaling
mode, with server lr != 1, momentum != 0, a FedNova-style multiplier != 1, a restored
state (round k, non-zero velocity) and rounds on both sides of the warm boundary. The
reference is written here from the method spec, with scipy.stats.shapiro for W.
"""
import collections

import numpy as np
import pytest
import scipy.stats

from computations.runtime import context
from computations.learning import client_work as cw
from computations.learning import finalizers
from computations.learning import learning_process as lp
from pina_tff.aggregation import scaling
from pina_tff.training import models as tm

C, DIM, K = 4, 12, 3
MODEL = tm.LinearModel(DIM, K)
KEYS = MODEL.param_keys                      # (head_kernel, head_bias)
P = DIM * K + K                              # 39 parameters per cluster
LR, MOMENTUM, MULT, WARM = 0.7, 0.6, 2.5, 3
START_ROUND = 1                              # restored: rounds t = 2 (warm), 3, 4


@pytest.fixture(scope="module", autouse=True)
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _aggregates(seed):
  """C rows with distinct norms and shapes: Gaussian, heavy-tailed, sparse, zero."""
  rng = np.random.default_rng(seed)
  u = np.zeros((C, P), np.float32)
  u[0] = 0.3 * rng.standard_normal(P)
  u[1] = 0.05 * rng.standard_t(1.5, P)
  u[2, rng.choice(P, 5, replace=False)] = rng.uniform(0.05, 0.2, 5)   # a small cluster
  u[3] = 0.0                                  # an unused slot stays zero
  return u


SIGMA, GMAX = 0.02, 2.5   # restore rules: per-coordinate noise std, gain cap


def _reference_restore(norms, w, rule):
  """The restore rules from the spec's purpose, written out with plain loops."""
  sig = np.sqrt(np.maximum(norms ** 2 - P * SIGMA ** 2, 0.0))
  fair = sig.sum() / C
  structure = np.maximum(1.0 - w, 0.0)
  out = norms.copy()
  for c in range(C):
    if norms[c] == 0:
      continue
    rho = sig[c] ** 2 / norms[c] ** 2
    weight = {"restore": rho, "restore_gated": 4 * rho * (1 - rho),
              "restore_w": structure[c] / structure.max()}[rule]
    gain = GMAX if sig[c] == 0 else min(max(fair / sig[c], 1.0), GMAX)
    out[c] = norms[c] * (1 + weight * (gain - 1))
  return out


def _reference_scale(u, mode, t, rule="shrink"):
  u = u.astype(np.float64)
  norms = np.linalg.norm(u, axis=1)
  pos = norms > 0
  w = np.ones(C)
  for c in np.flatnonzero(pos):
    w[c] = scipy.stats.shapiro(u[c]).statistic
  if mode == "pina":
    mode = "min_norm" if t < WARM else "normality"
  if mode == "none":
    targets = norms
  elif mode == "min_norm":
    targets = np.full(C, norms[pos].min())
  elif rule != "shrink":
    targets = _reference_restore(norms, w, rule)
  else:
    d = 1.0 - w
    targets = norms.max() * d / d.max()
  factors = np.where(pos, targets / np.where(pos, norms, 1.0), 1.0)
  return u * factors[:, None], w


def _flat(params):
  return np.concatenate([np.asarray(params[k]).reshape(C, -1) for k in KEYS], axis=1)


@pytest.mark.parametrize("mode,rule", [
    ("none", "shrink"), ("min_norm", "shrink"), ("normality", "shrink"), ("pina", "shrink"),
    ("pina", "restore"), ("normality", "restore_w"), ("normality", "restore_gated")])
def test_finalizer_matches_numpy_reference(mode, rule):
  rng = np.random.default_rng(5)
  params = {k: rng.standard_normal((C,) + s).astype(np.float32)
            for k, s in MODEL.param_shapes().items()}
  velocity = (0.1 * rng.standard_normal((C, P))).astype(np.float32)
  proc = finalizers.build_scaling_finalizer(
      cw.cluster_weights_type(MODEL, C), param_shapes=MODEL.param_shapes(),
      update_keys=KEYS, num_clusters=C, scaling_mode=mode, warm_rounds=WARM, server_learning_rate=LR,
      server_momentum=MOMENTUM, update_multiplier=MULT,
      normality_rule=scaling.NormalityRule(rule, noise_std=SIGMA, max_gain=GMAX))
  state = collections.OrderedDict(round=np.int32(START_ROUND), velocity=velocity)
  weights = lp.model_weights(params)
  theta, v = _flat(params).astype(np.float64), velocity.astype(np.float64)
  for i, t in enumerate(range(START_ROUND + 1, START_ROUND + 4)):
    u = _aggregates(seed=i)
    out = proc.next(state, weights, u)
    state, weights = out.state, out.result
    scaled, w = _reference_scale(u, mode, t, rule)
    v = MOMENTUM * v + MULT * scaled
    theta = theta + LR * v
    assert int(out.measurements["round"]) == t == int(state["round"])
    np.testing.assert_allclose(out.measurements["w"], w, rtol=0, atol=2e-5)
    np.testing.assert_allclose(out.measurements["norms"],
                               np.linalg.norm(u.astype(np.float64), axis=1), rtol=1e-5)
    np.testing.assert_allclose(state["velocity"], v, rtol=1e-4, atol=1e-5,
                               err_msg=f"round {t}")
    np.testing.assert_allclose(_flat(weights.trainable), theta, rtol=1e-4, atol=1e-5,
                               err_msg=f"round {t}")


def test_reference_modes_really_differ_on_these_aggregates():
  # Guards the test above against an aggregate on which the modes coincide.
  u = _aggregates(0)
  outs = {m: _reference_scale(u, m, WARM)[0] for m in ("none", "min_norm", "normality")}
  assert not np.allclose(outs["none"], outs["min_norm"])
  assert not np.allclose(outs["none"], outs["normality"])
  assert not np.allclose(outs["min_norm"], outs["normality"])
  np.testing.assert_allclose(_reference_scale(u, "pina", WARM - 1)[0], outs["min_norm"])
  np.testing.assert_allclose(_reference_scale(u, "pina", WARM)[0], outs["normality"])
  restored = {r: _reference_scale(u, "normality", WARM, r)[0]
              for r in ("restore", "restore_w", "restore_gated")}
  for r, out in restored.items():   # each rule acts here, and differently
    assert not np.allclose(out, outs["none"]), r
    assert not np.allclose(out, outs["normality"]), r
  assert not np.allclose(restored["restore"], restored["restore_w"])
  assert not np.allclose(restored["restore"], restored["restore_gated"])


def test_parameters_outside_update_keys_are_kept():
  # Stage 0 updates the head only: here only head_bias moves.
  rng = np.random.default_rng(1)
  params = {k: rng.standard_normal((1,) + s).astype(np.float32)
            for k, s in MODEL.param_shapes().items()}
  proc = finalizers.build_scaling_finalizer(
      cw.cluster_weights_type(MODEL, 1), param_shapes=MODEL.param_shapes(),
      update_keys=("head_bias",), num_clusters=1, scaling_mode="none",
      server_learning_rate=LR)
  u = np.array([[0.5, -1.0, 2.0]], np.float32)
  out = proc.next(proc.initialize(), lp.model_weights(params), u)
  np.testing.assert_array_equal(out.result.trainable["head_kernel"],
                                params["head_kernel"])
  np.testing.assert_allclose(out.result.trainable["head_bias"],
                             params["head_bias"] + LR * u, rtol=1e-6)
  assert int(out.state["round"]) == 1


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
