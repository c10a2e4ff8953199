"""DP Lloyd steps over a secure sum (stage 1, `stage1.centroids='dp_lloyd'`).

A labelled extension beyond the paper (`pina_tff.clustering.dp_lloyd` states the
mechanism and its privacy). The federated computation broadcasts the current C
centroids; each TFF client (a shard of S sketching clients) assigns each of its
clients' clipped sketches (which never left the device: `float32[S, P1]@CLIENTS`) to
the nearest centroid and sums the C-slot contributions (x, γ) of its clients; the
shards' values reach the server only through the aggregator (`computations.learning.
aggregators`: seeded distributed DP over a secure sum by default), so the type
signature's only CLIENTS→SERVER movement is that noisy sum `float32[C, P1 + 1]@SERVER`.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.learning import aggregators as agg
from computations.learning import seeded_ddp
from pina_tff.clustering import dp_lloyd


def client_type(shard_size: int, sketch_size: int):
  """What a TFF client holds for a step: its shard's clipped sketches, which slots
  are real clients, and its int64[2] distributed-DP key."""
  return tff.StructType([
      ("sketch", tff.TensorType(np.float32, (shard_size, sketch_size))),
      ("client_mask", tff.TensorType(np.float32, (shard_size,))),
      ("key", seeded_ddp.KEY_TYPE)])


def shard_contribution(centroids, sketch, client_mask, clip: float):
  """Sum over a shard's real clients of their C-slot contributions: float32
  [C, P1 + 1], slot c = (Σ x, γ·count) over the clients whose nearest centroid is c."""
  d2 = (tf.reduce_sum(sketch * sketch, 1, keepdims=True)
        - 2.0 * tf.matmul(sketch, centroids, transpose_b=True)
        + tf.reduce_sum(centroids * centroids, 1)[None, :])
  onehot = tf.one_hot(tf.argmin(d2, axis=1), tf.shape(centroids)[0], dtype=sketch.dtype)
  onehot = onehot * client_mask[:, None]
  sums = tf.matmul(onehot, sketch, transpose_a=True)
  counts = tf.reduce_sum(onehot, 0)[:, None] * (dp_lloyd.COUNT_WEIGHT * clip)
  return tf.concat([sums, counts], axis=1)


def build_lloyd_step(*, num_clusters: int, sketch_size: int, shard_size: int, clip: float,
                     aggregator: agg.AggregatorSpec):
  """One DP Lloyd step as a federated computation.

  Args:
    num_clusters: C.
    sketch_size: P1.
    shard_size: S, sketching clients per TFF client.
    clip: S1 (each sketch's L2 bound; the aggregator's clip is √2·S1 per client).
    aggregator: `methods.stage1_lloyd_aggregator`'s spec.

  Returns:
    (step, initial aggregator state): step is (aggregator state@SERVER, centroids
    float32[C, P1]@SERVER, client data@CLIENTS) -> noisy slot sums float32[C, P1 + 1]
    @SERVER. Privacy: the aggregator's noise, std z·√2·S1 per coordinate.
  """
  value_type = tff.TensorType(np.float32, (num_clusters, sketch_size + 1))
  process = agg.build_cslot_aggregator(aggregator).create(value_type, seeded_ddp.KEY_TYPE)
  centroid_type = tff.TensorType(np.float32, (num_clusters, sketch_size))
  data_type = client_type(shard_size, sketch_size)

  @tff.tensorflow.computation(centroid_type, data_type)
  def contribute(centroids, data):
    value = shard_contribution(centroids, data["sketch"], data["client_mask"], clip)
    return collections.OrderedDict(value=value, key=data["key"])

  @tff.federated_computation(process.initialize.type_signature.result,
                             tff.FederatedType(centroid_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def lloyd_step(state, centroids, data):
    out = tff.federated_map(contribute, (tff.federated_broadcast(centroids), data))
    return process.next(state, out.value, out.key).result

  return lloyd_step, process.initialize()
