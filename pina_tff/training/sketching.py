"""Stage 1's local work in plain TF: a shard of clients' clipped LoRA sketches.

One owner for what a sketching client computes before any noise: train LoRA (and the
head, locally only, if the spec says so) for E1 epochs from the shared start, take
Δ = vec(A − A0, B − B0), keep the top-k positive and top-k negative entries, clip to
L2 norm S1. Used inside the TFF client computation (`computations.learning.stage1`)
and by the server on public pseudo-clients (`public_sketches`: public data only, no
privacy cost).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from pina_tff.privacy import sketch as sk
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards


def shard_sketches(model, spec: local.LocalSpec, start: Mapping[str, tf.Tensor], shard,
                   *, top_k: Optional[int], clip: float, basis=None):
  """Clipped sketches of a shard's clients, before noise.

  Args:
    model: the tail model.
    spec: the local training (E1, lr, batch, which keys train).
    start: {parameter: [1, ...]}: the stage-1 starting point (A0, B0 = 0, the head).
    shard: the packed shard (features, 'label', 'mask', 'seed' [S, 2]).
    top_k: k kept positive and k kept negative entries; None: the raw Δ, neither
      sparsified nor clipped (server-side public data only).
    clip: S1.
    basis: None, or a public basis V float [r, P1] with orthonormal rows
      (`pina_tff.clustering.public_basis`): the sketch is then clip(V·Δ, S1), r numbers,
      with no sparsification (the basis is public: there are no private positions).

  Returns:
    (sketches float32 [S, P1] (or [S, r] with a basis) with L2 norm <= S1 each,
    nonfinite float32 [S]: 1 where a client's Δ had an inf/NaN entry and was zeroed).
  """
  s = tf.shape(shard["label"])[0]
  features = {k: tf.cast(shard[k], tf.float32) for k in model.feature_keys}
  init = {k: tf.repeat(v, s, axis=0) for k, v in start.items()}
  feats = model.precompute(init, features, spec.train_keys)
  final, _ = local.local_train(model, spec, init, feats, shard["label"], shard["mask"],
                               tf.cast(shard["seed"], tf.int64))
  delta = tm.flatten({k: final[k] - init[k] for k in tm.LORA_KEYS}, tm.LORA_KEYS,
                     lead_dims=1)
  delta, nonfinite = local.zero_nonfinite_rows(delta)
  if basis is not None:
    v = tf.constant(np.asarray(basis, np.float32))
    return sk.clip_l2(tf.matmul(delta, v, transpose_b=True), clip), nonfinite
  if top_k is None:
    return delta, nonfinite
  return sk.clip_l2(sk.sparsify_top_k(delta, top_k), clip), nonfinite


def public_sketches(model, spec: local.LocalSpec, start: Mapping[str, np.ndarray],
                    parts: Sequence[Mapping[str, np.ndarray]], *, top_k: Optional[int],
                    clip: float, seed: int = 0, chunk: int = 1000) -> np.ndarray:
  """The server's noise-free sketches of public pseudo-clients ``parts`` (layout of
  `Population.train`): float64 [len(parts), P1], each of L2 norm <= S1 (``top_k=None``:
  the raw LoRA changes, unclipped). Public data only: no privacy cost. ``start``:
  {parameter: array [...]} (no leading axis); ``seed``: keys the pseudo-clients'
  local shuffles."""
  if not parts:
    return np.zeros((0, tm.vector_size(model.param_shapes(), tm.LORA_KEYS)))
  n_max = max(len(p["label"]) for p in parts)
  start_t = {k: tf.constant(np.asarray(v, np.float32)[None]) for k, v in start.items()}

  @tf.function
  def run(shard):
    return shard_sketches(model, spec, start_t, shard, top_k=top_k, clip=clip)[0]

  out = []
  for ids in shards.split_cohort(list(range(len(parts))), chunk):
    shard = shards.pack_shard([parts[i] for i in ids], model.feature_keys, n_max,
                              client_seeds=[(seed, i) for i in ids])
    out.append(run({k: tf.constant(v) for k, v in shard.items()}).numpy()[:len(ids)])
  return np.concatenate(out).astype(np.float64)
