"""PINA stage 2 and every baseline as one composed `LearningProcess`.

Composition follows TFF's own algorithms (`tff.learning.algorithms.build_*`):
  distributor  tff.learning.templates.build_broadcast_process (all C models)
  client work  computations.learning.client_work.build_shard_client_work
  aggregator   computations.learning.aggregators.build_cslot_aggregator (DDP by default)
  finalizer    computations.learning.finalizers.build_scaling_finalizer
Each piece is usable alone in another TFF stack.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.learning import aggregators as agg
from computations.learning import client_work as cw
from computations.learning import finalizers as fin
from pina_tff.aggregation import scaling
from pina_tff.training import local


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
  """Everything that shapes one composed learning process.

  Attributes:
    local: what each simulated client does (`pina_tff.training.local.LocalSpec`).
    aggregator: how updates reach the server (`computations.learning.aggregators.AggregatorSpec`).
    shard_size, n_max: static shape of one TFF client's shard.
    scaling_mode, warm_rounds: normality-driven scaling (see `pina_tff.aggregation`).
    normality_rule: the normality phase's formula and the noise std it may read.
    server_learning_rate, server_momentum: server SGD(M) per cluster.
    update_multiplier: FedNova's tau_eff (1 otherwise).
    simulation_diagnostics: report simulation-only per-cluster counts and confusion.
    packed_diagnostics: sum them as one packed vector (default; the same sums bit for
      bit, `client_work.DiagnosticsPacking`); False: tensor by tensor (reference).
  """
  local: local.LocalSpec
  aggregator: agg.AggregatorSpec
  shard_size: int
  n_max: int
  scaling_mode: str = "none"
  warm_rounds: int = 0
  normality_rule: scaling.NormalityRule = scaling.NormalityRule()
  server_learning_rate: float = 1.0
  server_momentum: float = 0.0
  update_multiplier: float = 1.0
  simulation_diagnostics: bool = True
  packed_diagnostics: bool = True


def build_process(model, spec: ProcessSpec, *,
                  reader=None) -> tff.learning.templates.LearningProcess:
  """Composes the learning process of one stage (stage 0, or stage 2 of any method).

  Args:
    model: the tail model (`pina_tff.training.models`), which knows its parameter and
      feature shapes.
    spec: what shapes the process (`ProcessSpec`; see `computations.learning.methods`).
    reader: a resident-population reader (`computations.data.resident_data`): each TFF
      client's dataset then holds only row numbers and seeds, and the client
      computation gathers its shard; None: the dataset holds the packed shard.

  Returns:
    A `tff.learning.templates.LearningProcess` (broadcast of all C models, the
    sharded client work, the C-slot DP aggregator, the scaling finalizer). Initial
    weights are zeros: set them with `process.set_model_weights`.

  Raises:
    ValueError: an invalid aggregator spec or scaling mode.
  """
  num_clusters = spec.local.num_clusters
  weights_type = cw.cluster_weights_type(model, num_clusters)
  shapes = model.param_shapes()

  @tff.tensorflow.computation()
  def initial_weights():
    return tff.learning.models.ModelWeights(
        trainable=collections.OrderedDict(
            (k, tf.zeros((num_clusters,) + tuple(s), tf.float32)) for k, s in shapes.items()),
        non_trainable=())

  distributor = tff.learning.templates.build_broadcast_process(weights_type)
  work = cw.build_shard_client_work(model, spec.local, shard_size=spec.shard_size,
                                    n_max=spec.n_max,
                                    simulation_diagnostics=spec.simulation_diagnostics,
                                    reader=reader,
                                    packed_diagnostics=spec.packed_diagnostics)
  update_type = work.next.type_signature.result.result.member.update
  weight_type = work.next.type_signature.result.result.member.update_weight
  aggregator = agg.build_cslot_aggregator(spec.aggregator).create(update_type, weight_type)
  finalizer = fin.build_scaling_finalizer(
      weights_type, param_shapes=shapes, update_keys=spec.local.send_keys,
      num_clusters=num_clusters, scaling_mode=spec.scaling_mode, warm_rounds=spec.warm_rounds,
      server_learning_rate=spec.server_learning_rate,
      server_momentum=spec.server_momentum, update_multiplier=spec.update_multiplier,
      normality_rule=spec.normality_rule)
  return tff.learning.templates.compose_learning_process(
      initial_weights, distributor, work, aggregator, finalizer)


def model_weights(params: dict) -> tff.learning.models.ModelWeights:
  """Wraps {k: [C, ...]} numpy cluster parameters as ModelWeights for set_model_weights."""
  return tff.learning.models.ModelWeights(
      trainable=collections.OrderedDict(
          (k, np.asarray(v, np.float32)) for k, v in params.items()),
      non_trainable=())
