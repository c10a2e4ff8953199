"""Client work of stages 0 and 2 (and every baseline) as a `ClientWorkProcess`.

Each TFF client holds one dataset with a single element: a shard of S simulated
clients (layout in `pina_tff.training.local`). The work of the shard is one graph:
loss-based cluster choice, local training, per-client clipping, the C-slot update
(slot c* holds clip(Δ), all other slots zero), summed over the shard.

The update leaves the client only through the aggregator. Optional simulation
diagnostics (per-cluster counts, confusion with the true clusters, losses) are summed
with `federated_sum`; they exist only in simulation and are off when
`simulation_diagnostics=False` (then the server learns nothing but the aggregate).
"""

from __future__ import annotations

import collections
import os
from typing import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from pina_tff import rng_streams
from pina_tff.training import local
from pina_tff.training import shards as shards_lib


def cluster_weights_type(model, num_clusters: int):
  """TFF type of the C cluster models: ModelWeights(trainable={k: [C, ...]}, ())."""
  trainable = collections.OrderedDict(
      (k, tff.TensorType(np.float32, (num_clusters,) + tuple(s)))
      for k, s in model.param_shapes().items())
  return tff.types.to_type(
      tff.learning.models.ModelWeights(trainable=trainable, non_trainable=()))


def shard_element_type(model, shard_size: int, n_max: int, feature_dtype=np.float32):
  """TFF type of one shard (the single element of a TFF client's dataset), from the
  one shard layout (`pina_tff.training.shards.shard_layout`)."""
  layout = shards_lib.shard_layout(model.feature_shapes(), shard_size, n_max,
                                   feature_dtype)
  return collections.OrderedDict((k, tff.TensorType(dtype, shape))
                                 for k, (shape, dtype) in layout.items())


def shard_to_dataset(shard: Mapping) -> tf.data.Dataset:
  """A TFF client's input: a dataset with the packed shard as its only element."""
  return tf.data.Dataset.from_tensors(collections.OrderedDict(
      (k, tf.convert_to_tensor(v)) for k, v in shard.items()))


def shard_to_file_dataset(shard: Mapping, directory: str, name: str) -> tf.data.Dataset:
  """Like `shard_to_dataset`, but the arrays go to files in `directory` and the dataset
  reads them, so the serialized dataset that TFF ships each round holds file names, not
  the data (49 MB per 1,000 head-workload clients otherwise; see benchmarks/results.md).
  Same element type. The files must stay until the computation has run."""
  paths = collections.OrderedDict()
  specs = {}
  for k, v in shard.items():
    arr = np.ascontiguousarray(v)
    paths[k] = os.path.join(directory, f"{name}.{k}.tensor")
    tmp = f"{paths[k]}.tmp-{os.getpid()}"
    tf.io.write_file(tmp, tf.io.serialize_tensor(tf.convert_to_tensor(arr)))
    os.replace(tmp, paths[k])
    specs[k] = (tf.as_dtype(arr.dtype), arr.shape)

  def read(p):
    return collections.OrderedDict(
        (k, tf.ensure_shape(tf.io.parse_tensor(tf.io.read_file(p[k]), specs[k][0]),
                            specs[k][1])) for k in paths)

  return tf.data.Dataset.from_tensors(
      collections.OrderedDict((k, tf.constant(v)) for k, v in paths.items())).map(read)


def client_data_type(model, shard_size: int, n_max: int, reader=None,
                     feature_dtype=np.float32):
  """TFF type of a TFF client's dataset: packed shards, or the elements `reader`
  (e.g. `computations.data.resident_data.ResidentReader`) turns into shards."""
  if reader is not None:
    return tff.SequenceType(reader.element_type(shard_size))
  return tff.SequenceType(shard_element_type(model, shard_size, n_max, feature_dtype))


def read_shard(dataset, reader=None):
  """The shard of a TFF client's single-element dataset (inside a computation)."""
  element = dataset.get_single_element()
  return reader.read(element) if reader is not None else element


def ddp_key(shard) -> tf.Tensor:
  """The shard's int64[2] distributed-DP key (see `build_shard_client_work`)."""
  return local.stream_key(shard["seed"][0], rng_streams.DDP_SHARE)


def build_shard_client_work(model, spec: local.LocalSpec, *, shard_size: int, n_max: int,
                            simulation_diagnostics: bool = True,
                            feature_dtype=np.float32,
                            reader=None, packed_diagnostics: bool = True
                            ) -> tff.learning.templates.ClientWorkProcess:
  """ClientWorkProcess running `pina_tff.training.local.shard_update` per TFF client.

  Args:
    model: the tail model.
    spec: what each simulated client does (`pina_tff.training.local.LocalSpec`).
    shard_size, n_max: the shard layout (S clients of at most N examples).
    simulation_diagnostics: sum the simulation-only diagnostics into the measurements
      (in the clear: not covered by ε).
    feature_dtype: dtype of the shard features.

  Result: ClientResult(update=float32[C, P] (sum over the shard of C-slot clipped
  updates), update_weight=int64[2]: the shard's 128-bit key for the seeded distributed
  DP (`computations.learning.seeded_ddp`: its rounding and noise), sub-stream
  `rng_streams.DDP_SHARE` of the key of the shard's first slot (every slot has a key
  of its own, padding included, when the round loop gives `padding_seeds`). The other
  aggregators ignore the weight (the mean's denominator is the public M); the key
  stays at the client. Measurements: summed simulation diagnostics, or empty. With `reader`,
  each TFF client's dataset holds what the reader turns into the shard (row numbers
  of a resident population) instead of the shard itself. With `packed_diagnostics`
  (default) the diagnostics travel to the server as one float32 vector and are
  unpacked there (`DiagnosticsPacking`): the same sums bit for bit and the same
  measurement type, at one tensor per client instead of eight in TFF's runtime;
  False sums them tensor by tensor (the reference path).
  """
  weights_type = cluster_weights_type(model, spec.num_clusters)
  data_type = client_data_type(model, shard_size, n_max, reader, feature_dtype)

  packing = DiagnosticsPacking() if packed_diagnostics else None

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(weights, dataset):
    shard = read_shard(dataset, reader)
    update, diag = local.shard_update(model, spec, weights.trainable, shard)
    result = tff.learning.templates.ClientResult(update=update,
                                                 update_weight=ddp_key(shard))
    diag = collections.OrderedDict(sorted(diag.items()))
    return result, (packing.pack(diag) if packing else diag)

  return _client_work_process(client_update, weights_type, data_type,
                              simulation_diagnostics, packing)


def _client_work_process(client_update, weights_type, data_type,
                         simulation_diagnostics: bool, packing=None
                         ) -> tff.learning.templates.ClientWorkProcess:
  """The ClientWorkProcess around `client_update` (result, diagnostics): the
  diagnostics summed at the server (unpacked there with `packing`), or none."""
  unpack = packing.unpack_computation() if packing and simulation_diagnostics else None

  @tff.federated_computation()
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, data):
    out = tff.federated_map(client_update, (weights, data))
    result = out[0]
    if simulation_diagnostics and unpack is not None:
      measurements = tff.federated_map(unpack, tff.federated_sum(out[1]))
    elif simulation_diagnostics:
      measurements = tff.federated_sum(out[1])
    else:
      measurements = tff.federated_value((), tff.SERVER)
    return tff.templates.MeasuredProcessOutput(state, result, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


class DiagnosticsPacking:
  """The client's float32 diagnostics {name: tensor} as one flat float32 vector, and
  back at the server.

  TFF's runtime sums a structure tensor by tensor (one accumulate and one transfer
  per tensor and client); the packed vector is summed in one. The sum of the
  concatenation is the concatenation of the sums (elementwise float32 additions in
  the same client order), so the unpacked sums equal the per-tensor sums bit for bit.
  The layout is recorded when the client computation is traced (`pack`), before
  `unpack_computation` is built.
  """

  def __init__(self):
    self.layout: list[tuple[str, tuple[int, ...]]] = []

  def pack(self, diag) -> tf.Tensor:
    """Inside the client computation: the values of ``diag`` (float32), flattened and
    concatenated in its order; records their names and shapes."""
    self.layout = [(k, tuple(v.shape.as_list())) for k, v in diag.items()]
    for k, v in diag.items():
      if v.dtype != tf.float32 or not v.shape.is_fully_defined():
        raise TypeError(f"diagnostic {k!r}: packing needs a float32 tensor of static "
                        f"shape, found {v.dtype.name} {v.shape}")
    return tf.concat([tf.reshape(v, [-1]) for v in diag.values()], axis=0)

  def unpack_computation(self):
    """The TF computation float32[total] -> OrderedDict {name: tensor} of `layout`."""
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in self.layout]
    layout = list(self.layout)

    @tff.tensorflow.computation(tff.TensorType(np.float32, (sum(sizes),)))
    def unpack(flat):
      parts = tf.split(flat, sizes) if len(sizes) > 1 else [flat]
      return collections.OrderedDict(
          (k, tf.reshape(p, shape)) for (k, shape), p in zip(layout, parts))

    return unpack
