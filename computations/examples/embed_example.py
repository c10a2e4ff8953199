"""Our DP pieces inside TFF's own learning algorithms (the example of docs/embedding.md).

Two ways to embed them, both on a small keras model with TFF's own client work:

1. `build_fed_avg_with_cslot_aggregator`: TFF's `tff.learning.algorithms
   .build_weighted_fed_avg` with our DP C-slot aggregator as ``model_aggregator=``.
   TFF's client work, distributor and server optimizer; our aggregator clips each
   client's update to S2, sums with DP noise (distributed DP over secure aggregation,
   or central DP) and divides by the fixed expected cohort M.
2. `build_composed_process`: `tff.learning.templates.compose_learning_process` with
   TFF's model-delta client work, our aggregator, and our normality-scaling finalizer
   (`computations.learning.finalizers.build_scaling_finalizer`) behind a small adapter
   (`adapt_scaling_finalizer`): TFF's keras weights are a list and its update is
   (initial - trained) as a structure; our finalizer works on {name: [C, ...]} models
   and a flat (trained - initial) aggregate [C, P] (here C = 1).

Privacy: what the server sees of the clients is the noised sum the aggregator
releases (placed @SERVER); everything after it (scaling, server step) is
post-processing. The example's data are synthetic (a Gaussian mixture).
"""

from __future__ import annotations

import collections
from typing import Callable, List

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.learning import aggregators as agg
from computations.learning import finalizers as fin

INPUT_DIM, NUM_CLASSES = 4, 3


def keras_model_fn() -> tff.learning.models.VariableModel:
  """A small keras classifier (4 -> 8 -> 3) as a TFF VariableModel (seeded
  initializers: every process built from it starts from the same weights)."""
  keras_model = tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(INPUT_DIM,)),
      tf.keras.layers.Dense(8, activation="relu",
                            kernel_initializer=tf.keras.initializers.GlorotUniform(1)),
      tf.keras.layers.Dense(NUM_CLASSES,
                            kernel_initializer=tf.keras.initializers.GlorotUniform(2))])
  spec = (tf.TensorSpec([None, INPUT_DIM], tf.float32), tf.TensorSpec([None], tf.int32))
  return tff.learning.models.from_keras_model(
      keras_model, input_spec=spec,
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def example_client_data(num_clients: int, examples: int = 12, seed: int = 0
                        ) -> List[tf.data.Dataset]:
  """Synthetic client datasets: class k is a Gaussian around the k-th basis vector."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_clients):
    y = rng.integers(0, NUM_CLASSES, examples).astype(np.int32)
    x = (np.eye(INPUT_DIM, dtype=np.float32)[y] * 2.0
         + rng.normal(0, 0.5, (examples, INPUT_DIM)).astype(np.float32))
    out.append(tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
  return out


def aggregator_spec(kind: str = "ddp", noise_multiplier: float = 0.5,
                    clip_norm: float = 1.0, cohort: int = 4) -> agg.AggregatorSpec:
  """Our aggregator for a cohort of ``cohort`` TFF clients of one simulated client each
  (S = 1): noise std noise_multiplier·clip_norm on the sum, denominator M = cohort."""
  return agg.AggregatorSpec(kind=kind, noise_multiplier=noise_multiplier,
                            clip_norm=clip_norm, expected_clients=cohort, shard_size=1,
                            num_shards=cohort)


def build_fed_avg_with_cslot_aggregator(spec: agg.AggregatorSpec
                                        ) -> tff.learning.templates.LearningProcess:
  """TFF's weighted FedAvg with our DP aggregator as ``model_aggregator``."""
  return tff.learning.algorithms.build_weighted_fed_avg(
      keras_model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
      model_aggregator=agg.build_cslot_aggregator(spec))


def adapt_scaling_finalizer(weights_type, update_type, scaling_mode: str = "pina",
                            warm_rounds: int = 1, server_learning_rate: float = 1.0,
                            server_momentum: float = 0.0
                            ) -> tff.learning.templates.FinalizerProcess:
  """Our normality-scaling finalizer for a TFF keras model (list weights, TFF update).

  Args:
    weights_type: TFF type of the model weights (`weights_type_from_model`).
    update_type: TFF type of the aggregate (a structure like the trainable weights,
      TFF's sign: initial - trained).
    scaling_mode, warm_rounds, server_learning_rate, server_momentum: as in
      `computations.learning.finalizers.build_scaling_finalizer`.

  Returns:
    A FinalizerProcess taking (state, weights, aggregate) @SERVER.
  """
  trainable = list(weights_type.trainable)
  keys = tuple(f"w{i}" for i in range(len(trainable)))
  shapes = collections.OrderedDict((k, tuple(t.shape)) for k, t in zip(keys, trainable))
  ours_type = tff.types.to_type(tff.learning.models.ModelWeights(
      trainable=collections.OrderedDict(
          (k, tff.TensorType(np.float32, (1,) + s)) for k, s in shapes.items()),
      non_trainable=()))
  ours = fin.build_scaling_finalizer(
      ours_type, param_shapes=shapes, update_keys=keys, num_clusters=1,
      scaling_mode=scaling_mode, warm_rounds=warm_rounds,
      server_learning_rate=server_learning_rate, server_momentum=server_momentum)
  to_ours, to_vector, from_ours = _weight_maps(weights_type, update_type, ours_type, keys)
  state_type = ours.initialize.type_signature.result

  @tff.federated_computation(state_type, tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(update_type, tff.SERVER))
  def next_fn(state, weights, update):
    out = ours.next(state, tff.federated_map(to_ours, weights),
                    tff.federated_map(to_vector, update))
    return tff.templates.MeasuredProcessOutput(
        out.state, tff.federated_map(from_ours, (weights, out.result)),
        out.measurements)

  return tff.learning.templates.FinalizerProcess(ours.initialize, next_fn)


def _weight_maps(weights_type, update_type, ours_type, keys):
  """TF computations between TFF's keras weights / update and our layout."""

  @tff.tensorflow.computation(weights_type)
  def to_ours(w):
    return tff.learning.models.ModelWeights(
        trainable=collections.OrderedDict((k, v[None]) for k, v in zip(keys, w.trainable)),
        non_trainable=())

  @tff.tensorflow.computation(update_type)
  def to_vector(u):
    # TFF's update is initial - trained; ours is trained - initial, flattened [1, P].
    return -tf.concat([tf.reshape(t, [-1]) for t in tf.nest.flatten(u)], 0)[None]

  @tff.tensorflow.computation(weights_type, ours_type)
  def from_ours(w, new):
    return tff.learning.models.ModelWeights(
        trainable=[new.trainable[k][0] for k in keys], non_trainable=w.non_trainable)

  return to_ours, to_vector, from_ours


def build_composed_process(spec: agg.AggregatorSpec, scaling_mode: str = "pina",
                           warm_rounds: int = 1
                           ) -> tff.learning.templates.LearningProcess:
  """TFF's distributor and model-delta client work + our aggregator + our finalizer."""
  weights_type = tff.learning.models.weights_type_from_model(keras_model_fn)

  @tff.tensorflow.computation()
  def initial_weights():
    return tff.learning.models.ModelWeights.from_model(keras_model_fn())

  distributor = tff.learning.templates.build_broadcast_process(weights_type)
  work = tff.learning.templates.build_model_delta_client_work(
      keras_model_fn, tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES)
  result = work.next.type_signature.result.result.member
  aggregator = agg.build_cslot_aggregator(spec).create(result.update,
                                                       result.update_weight)
  finalizer = adapt_scaling_finalizer(weights_type, aggregator.next.type_signature
                                      .result.result.member, scaling_mode, warm_rounds)
  return tff.learning.templates.compose_learning_process(
      initial_weights, distributor, work, aggregator, finalizer)


def run(process: tff.learning.templates.LearningProcess, rounds: int = 2,
        num_clients: int = 4, log: Callable[[str], None] = print) -> list:
  """Runs ``rounds`` rounds on synthetic clients; returns the process outputs.

  The caller installs the TFF context (`computations.runtime.context.tff_context`).
  """
  state = process.initialize()
  data = example_client_data(num_clients)
  outputs = []
  for rnd in range(1, rounds + 1):
    out = process.next(state, data)
    state = out.state
    outputs.append(out)
    log(f"round {rnd}: client loss {out.metrics['client_work']['train']['loss']:.4f}")
  return outputs


if __name__ == "__main__":
  from computations.runtime import context  # pylint: disable=g-import-not-at-top
  with context.tff_context():
    run(build_fed_avg_with_cslot_aggregator(aggregator_spec()))
    run(build_composed_process(aggregator_spec()))
