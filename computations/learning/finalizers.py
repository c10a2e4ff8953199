"""Normality-driven scaling + server optimizer as a `FinalizerProcess`.

Input: the cluster models (ModelWeights, trainable {k: [C, ...]}) and the aggregate
u = (sum of clipped C-slot updates + noise) / M, float32 [C, P]. Steps, all on the
server and all post-processing of a DP output (no privacy cost):
  1. scale each row u_c (mode none / min_norm / normality / pina; see
     `pina_tff.aggregation.scaling`), with Shapiro-Wilk computed in TensorFlow so this
     runs in TFF's C++ runtime (which cannot call SciPy; matched to scipy in tests);
  2. multiply by `update_multiplier` (FedNova: expected local steps tau_eff);
  3. server SGD with momentum per cluster: v <- mu v + u;  theta_c <- theta_c + lr v.
Parameters not in `update_keys` (e.g. LoRA during the stage-0 head warm-up) are kept.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from pina_tff.aggregation import scaling
from pina_tff.training import models as tm


def build_scaling_finalizer(weights_type, *, param_shapes, update_keys, num_clusters: int,
                            scaling_mode: str = "pina", warm_rounds: int = 0,
                            server_learning_rate: float = 1.0,
                            server_momentum: float = 0.0,
                            update_multiplier: float = 1.0,
                            normality_max_n: int = 5000, normality_seed: int = 0,
                            normality_rule: scaling.NormalityRule | None = None
                            ) -> tff.learning.templates.FinalizerProcess:
  """FinalizerProcess applying normality-driven scaling and a server SGD(M) step.

  Post-processing of the DP aggregate only: no privacy cost, whatever the arguments.
  Usable alone as ``finalizer=`` of `tff.learning.templates.compose_learning_process`
  (see docs/embedding.md).

  Args:
    weights_type: TFF type of the cluster models (a ``ModelWeights`` whose trainable
      values have a leading cluster axis C; `client_work.cluster_weights_type`).
    param_shapes: {parameter key: shape of one model's parameter} (without C).
    update_keys: the parameters the aggregate updates, in its flattening order; the
      others are kept as they are.
    num_clusters: C, rows of the aggregate.
    scaling_mode: 'none', 'min_norm', 'normality' or 'pina'
      (`pina_tff.aggregation.scaling.make_scaling_fn`).
    warm_rounds: rounds of the min-norm warm phase (modes 'pina').
    server_learning_rate: server step size (dimensionless).
    server_momentum: server momentum mu in [0, 1) (v <- mu v + u).
    update_multiplier: factor on the scaled aggregate (FedNova: expected local steps).
    normality_max_n: largest number of coordinates the Shapiro-Wilk test looks at.
    normality_seed: seed of the coordinate subsample when P > normality_max_n.
    normality_rule: the normality phase's formula (`scaling.NormalityRule`; default
      'shrink'); its noise std is a public parameter of the mechanism.

  Returns:
    A FinalizerProcess with state {round: int32, velocity: float32 [C, P]}, taking the
    aggregate float32 [C, P] at the server; measurements per round: norms,
    Shapiro-Wilk W, target norms and scale factors of each cluster's aggregate
    (float32 [C] each), and the round number.

  Raises:
    ValueError: an unknown ``scaling_mode`` (from the scaling module).
  """
  update_keys = tuple(update_keys)
  num_params = tm.vector_size(param_shapes, update_keys)
  scale_fn = scaling.make_scaling_fn(num_params, scaling_mode, warm_rounds,
                                     max_n=normality_max_n, seed=normality_seed,
                                     rule=normality_rule)
  update_type = tff.TensorType(np.float32, (num_clusters, num_params))

  @tff.tensorflow.computation()
  def init_state():
    return collections.OrderedDict(
        round=tf.constant(0, tf.int32),
        velocity=tf.zeros((num_clusters, num_params), tf.float32))

  state_type = init_state.type_signature.result
  apply = _server_step(
      scale_fn, (state_type, weights_type, update_type), param_shapes, update_keys,
      num_clusters, server_learning_rate, server_momentum, update_multiplier)
  return _federated(init_state, apply, state_type, weights_type, update_type)


def _federated(init_state, apply, state_type, weights_type, update_type
               ) -> tff.learning.templates.FinalizerProcess:
  """The FinalizerProcess running ``init_state`` and ``apply`` at the server."""

  @tff.federated_computation()
  def init_fn():
    return tff.federated_eval(init_state, tff.SERVER)

  @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER),
                             tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(update_type, tff.SERVER))
  def next_fn(state, weights, update):
    out = tff.federated_map(apply, (state, weights, update))
    return tff.templates.MeasuredProcessOutput(out[0], out[1], out[2])

  return tff.learning.templates.FinalizerProcess(init_fn, next_fn)


def _server_step(scale_fn, types, param_shapes, update_keys, num_clusters: int,
                 learning_rate: float, momentum: float, multiplier: float):
  """The server's step as a TF computation (state, weights, aggregate) ->
  (state, weights, measurements): scale, multiply, momentum, apply to update_keys."""

  @tff.tensorflow.computation(*types)
  def apply(state, weights, update):
    round_num = state["round"] + 1
    scaled, diag = scale_fn(update, round_num)
    velocity = momentum * state["velocity"] + scaled * multiplier
    deltas = tm.unflatten(velocity, param_shapes, update_keys, lead_shape=(num_clusters,))
    trainable = collections.OrderedDict(
        (k, v + learning_rate * deltas[k] if k in deltas else v)
        for k, v in weights.trainable.items())
    new_weights = tff.learning.models.ModelWeights(trainable=trainable,
                                                   non_trainable=weights.non_trainable)
    measurements = collections.OrderedDict(
        round=round_num, **{k: tf.cast(v, tf.float32) for k, v in sorted(diag.items())})
    new_state = collections.OrderedDict(round=round_num, velocity=velocity)
    return new_state, new_weights, measurements

  return apply


def finalizer_state(round_num: int, velocity) -> collections.OrderedDict:
  """The finalizer's state after ``round_num`` rounds with momentum ``velocity``.

  Args:
    round_num: rounds already applied (the next round is ``round_num + 1``; the
      normality scaling's warm phase counts them).
    velocity: float32 [C, P] server momentum.

  Returns:
    The state `build_scaling_finalizer`'s process keeps (to restore a resumed run).
  """
  return collections.OrderedDict(round=np.int32(round_num),
                                 velocity=np.asarray(velocity, np.float32))
