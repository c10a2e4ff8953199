"""Stage 1 of PINA: locally-DP LoRA sketches, computed per simulated client.

The federated computation broadcasts the stage-1 starting point (A0, B0 = 0, the
warmed-up head) and returns each TFF client's shard of sketches *at CLIENTS*: the
sketches leave the devices in the clear, protected by local DP only, and the type
signature says so (`float32[S, P1]@CLIENTS`). The server-side k-means
(`pina_tff.clustering.kmeans_init`) runs in the Python program on the collected
sketches.

Per simulated client: train LoRA (and the head, locally only) for E1 epochs, take
Δ = vec(A − A0, B − B0), keep the top-k positive and top-k negative entries, clip to
L2 norm S1, add N(0, (z1·S1)²) to every coordinate (zeros included), from the
client's own stateless seed. Privacy: (ε1, δ1)-local DP per client, z1 calibrated by
`pina_tff.privacy.accounting`.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.learning import client_work as cw
from pina_tff import rng_streams
from pina_tff.privacy import sketch as sk
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import sketching


def build_sketch_computation(model, spec: local.LocalSpec, *, top_k: int, clip: float,
                             noise_multiplier: float, shard_size: int, n_max: int,
                             reader=None, noise_on_kept_only: bool = False,
                             basis=None):
  """Federated computation (weights@SERVER, shards@CLIENTS) -> sketches@CLIENTS.

  Args:
    model: the tail model.
    spec: local training (E1, lr, batch); its train_keys should include LoRA; the
      sketch covers LoRA only (`models.LORA_KEYS`).
    top_k: k largest positive and k most negative entries kept.
    clip: S1, L2 bound of each sparsified sketch.
    noise_multiplier: z1; each client adds N(0, (z1·S1)²) per coordinate itself
      (local DP: the sketches leave the clients already noised).
    shard_size, n_max: the shard layout (S clients of at most N examples).
    reader: see `client_work.build_shard_client_work` (None: packed shards).
    noise_on_kept_only: the paper's literal reading, a labelled ablation: noise only
      on the kept (non-zero) entries, so the positions of the kept entries are released
      outside local DP (`stage1.noise_positions='released'`).
    basis: None (the paper's sketch) or a public basis V [r, P1] (orthonormal rows,
      computed from public data only; `stage1.public_basis_dims`): each client sends
      clip(V·Δ, S1) + N(0, (z1·S1)² I_r), r numbers; the same (ε1, δ1)-local DP.

  Returns:
    A federated computation whose result per TFF client is
    OrderedDict(sketch=float32[S, P1] (float32[S, r] with a basis),
    client_mask=float32[S]), placed @CLIENTS.

  Raises:
    ConfigError: top_k out of [1, P1/2] (`pina_tff.privacy.sketch.validate_top_k`).
  """
  weights_type = cw.cluster_weights_type(model, 1)
  data_type = cw.client_data_type(model, shard_size, n_max, reader)
  size = tm.vector_size(model.param_shapes(), tm.LORA_KEYS)
  sk.validate_top_k(top_k, size)
  if basis is not None:
    size = int(np.shape(basis)[0])

  @tff.tensorflow.computation(weights_type, data_type)
  def client_sketch(weights, dataset):
    shard = cw.read_shard(dataset, reader)
    clipped, nonfinite = sketching.shard_sketches(model, spec, weights.trainable, shard,
                                                  top_k=top_k, clip=clip, basis=basis)
    noise = local.per_client_normal(shard["seed"], [size], rng_streams.SKETCH_NOISE,
                                     noise_multiplier * clip)
    if noise_on_kept_only:
      noise = noise * tf.cast(tf.not_equal(clipped, 0.0), noise.dtype)
    return collections.OrderedDict(sketch=clipped + noise,
                                   client_mask=shard["client_mask"],
                                   nonfinite=nonfinite * shard["client_mask"])

  @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def sketch_round(weights, data):
    return tff.federated_map(client_sketch, (tff.federated_broadcast(weights), data))

  return sketch_round


def collect_sketches(results) -> np.ndarray:
  """Concatenates the per-TFF-client results into [num_real_clients, P1]."""
  rows = []
  for r in results:
    mask = np.asarray(r["client_mask"]) > 0
    rows.append(np.asarray(r["sketch"])[mask])
  return np.concatenate(rows, axis=0)


def count_nonfinite(results) -> int:
  """Real clients whose sketch delta had an inf or NaN entry (sent as zeros + noise)."""
  return int(sum(float(np.sum(np.asarray(r["nonfinite"]))) for r in results))
