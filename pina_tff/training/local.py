"""Shard-vectorized client work: cluster choice, local training, clipping, C-slot update.

One call processes a *shard* of S simulated clients in a single TensorFlow graph. Every
simulated client keeps its own parameters (a leading axis S), its own data, its own
cluster choice, its own clipping and, for IFCA+LDP, its own local noise. So running a
cohort as one shard of M clients or as M shards of one client computes the same sum
(up to float summation order); tests check this.

Shard layout (all padded to fixed N examples per client, mask marks real examples):
  features: model.feature_keys, each [S, N, ...]
  'label' int32 [S, N], 'mask' float32 [S, N], 'client_mask' float32 [S] (0 = padding
  client), 'true_cluster' int32 [S] (-1 unknown; simulation diagnostics only),
  'seed' int64 [S, 2] (each simulated client's 128-bit key, so a client's
  randomness does not depend on which shard carries it; `pina_tff.rng_streams`).

Privacy: this module only clips (per simulated client, to `clip_norm` in L2) and, for
IFCA+LDP, adds local Gaussian noise to every coordinate of every slot. Stage-2 noise
for the other methods is added by the aggregator (`computations/learning/aggregators.py`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import tensorflow as tf

from pina_tff.privacy import norm_bound
from pina_tff import rng_streams
from pina_tff.training import models as tm


@dataclasses.dataclass(frozen=True)
class LocalSpec:
  """What one simulated client does in a round.

  Attributes:
    num_clusters: C, number of cluster models broadcast (1 for FedAvg-type methods).
    local_epochs: E, passes over the client's training examples.
    batch_size: examples per local step.
    learning_rate: client SGD step size.
    clip_norm: L2 bound of each client's update vector (inf: no clipping).
    train_keys: parameters that train locally.
    send_keys: parameters whose change is sent (stage 1: LoRA only; stage 2: all).
    choose_cluster: pick c* = argmin training loss over the C models (IFCA-style).
    true_cluster: train the model of the client's true cluster instead (the oracle;
      simulation only).
    fedprox_mu: FedProx proximal weight mu (0: plain local SGD).
    normalize_by_steps: FedNova: divide the update by the client's local step count
      before clipping (the server multiplies by the expected step count).
    shuffle: reshuffle each client's examples every epoch (stateless, seeded).
    ldp_noise_stddev: IFCA+LDP: std of Gaussian noise added by each client to every
      coordinate of every slot of its clipped update (absolute units, = z * clip).
    num_true_clusters: size of the simulation-only confusion matrix's second axis.
    compute_dtype: 'float32' or 'bfloat16' (`pina_tff.training.precision`, resolved):
      the dtype of the forward and backward passes (cluster choice, local training).
      The master weights, their updates, the deltas, clipping and noise stay float32.
  """
  num_clusters: int = 1
  local_epochs: int = 1
  batch_size: int = 16
  learning_rate: float = 0.1
  clip_norm: float = math.inf
  train_keys: tuple[str, ...] = tm.LORA_KEYS + tm.HEAD_KEYS
  send_keys: tuple[str, ...] = tm.LORA_KEYS + tm.HEAD_KEYS
  choose_cluster: bool = False
  true_cluster: bool = False
  fedprox_mu: float = 0.0
  normalize_by_steps: bool = False
  shuffle: bool = True
  ldp_noise_stddev: float = 0.0
  num_true_clusters: int = 1
  compute_dtype: str = "float32"

  def __post_init__(self):
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"LocalSpec.compute_dtype: expected 'float32' or 'bfloat16' "
                       f"(resolve 'auto' first), found {self.compute_dtype!r}")


def _compute_params(params, dtype):
  """Parameters for the forward pass in ``dtype`` (float32: the same tensors)."""
  return {k: tf.cast(v, dtype) for k, v in params.items()}


def _per_client_ce(logits, labels, mask):
  """Masked mean cross-entropy per client [S] (0 for a client with no examples),
  in float32 whatever the logits' dtype."""
  logits = tf.cast(logits, tf.float32)
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  count = tf.reduce_sum(mask, axis=-1)
  return tf.reduce_sum(ce * mask, axis=-1) / tf.maximum(count, 1.0), count


def cluster_losses(model, cluster_params, features, labels, mask,
                   compute_dtype=tf.float32) -> tf.Tensor:
  """Training loss of every client under every cluster model: [S, C] (float32; the
  forward passes in ``compute_dtype``)."""
  num_clusters = int(cluster_params[model.param_keys[0]].shape[0])
  features = model.compute_features(features, compute_dtype)
  losses = []
  for c in range(num_clusters):
    params_c = _compute_params({k: v[c] for k, v in cluster_params.items()},
                               compute_dtype)
    loss, _ = _per_client_ce(model.logits(params_c, features), labels, mask)
    losses.append(loss)
  return tf.stack(losses, axis=-1)


def stream_key(seed, stream: int):
  """Sub-key ``stream`` of a client key int64[2]: the ``stream``-th int64 pair of the
  Philox stream keyed by all 128 bits of ``seed`` (``stateless_split``), so two
  streams of one client, or of two clients, never share a key by arithmetic
  (`pina_tff.rng_streams`)."""
  seed = tf.cast(seed, tf.int64)
  return tf.random.experimental.stateless_split(seed, stream + 1)[stream]


def per_client_uniform(seeds, shape, stream):
  """Uniform [S, *shape], client s drawn from sub-stream ``stream`` of its key seeds[s]."""
  return tf.map_fn(
      lambda sd: tf.random.stateless_uniform(shape, seed=stream_key(sd, stream)),
      tf.cast(seeds, tf.int64), fn_output_signature=tf.float32)


def per_client_normal(seeds, shape, stream, stddev):
  """Gaussian N(0, stddev^2) [S, *shape], client s drawn from sub-stream ``stream`` of
  its own key seeds[s] (int64 [S, 2], 128 bits)."""
  return tf.map_fn(
      lambda sd: tf.random.stateless_normal(shape, seed=stream_key(sd, stream),
                                            stddev=stddev),
      tf.cast(seeds, tf.int64), fn_output_signature=tf.float32)


def epoch_permutations(mask, epochs, shuffle, seeds):
  """Per-epoch example orders [E, S, N]; padding examples always go last."""
  n = tf.shape(mask)[1]
  base = tf.broadcast_to(tf.cast(tf.range(n), tf.float32), tf.shape(mask))
  perms = []
  for e in range(epochs):
    if shuffle:
      keys = per_client_uniform(seeds, [mask.shape[1]],
                                rng_streams.EPOCH_SHUFFLE + e)
    else:
      keys = base / tf.cast(n, tf.float32)
    perms.append(tf.argsort(keys + 2.0 * (1.0 - mask), axis=-1, stable=True))
  return tf.stack(perms)


def local_train(model, spec: LocalSpec, init_params, features, labels, mask, seed):
  """Runs E epochs of minibatch SGD for every client of the shard at once.

  Returns (final_params {k: [S, ...]}, local_steps [S] float): a step is counted for a
  client only when its minibatch holds at least one real example.

  Precision (`spec.compute_dtype`): the trained parameters are float32 master weights;
  each step casts them to the compute dtype for the forward pass (features likewise,
  once), the loss is float32, and the gradient (back through the cast, in float32) is
  applied to the float32 weights. So the returned parameters, and every delta taken
  from them, are float32.
  """
  compute_dtype = tf.as_dtype(spec.compute_dtype)
  features = model.compute_features(features, compute_dtype)
  n = int(labels.shape[1])
  batch, batches_per_epoch = _batch_layout(n, spec.batch_size)
  features, labels, mask = _pad_examples(features, labels, mask,
                                         batches_per_epoch * batch - n)
  # One minibatch per epoch holds every example: its loss (a masked mean) does not
  # depend on the order, so no permutation is drawn (exactly the same steps, and no
  # per-client RNG loop over the shard).
  full_batch = batches_per_epoch == 1
  perms = (None if full_batch else
           epoch_permutations(mask, spec.local_epochs, spec.shuffle, seed))
  train_keys = [k for k in model.param_keys if k in spec.train_keys]
  frozen = {k: v for k, v in init_params.items() if k not in train_keys}
  total_steps = spec.local_epochs * batches_per_epoch
  s = tf.shape(labels)[0]
  sgd_step = _sgd_step(model, spec, compute_dtype, init_params, frozen, train_keys, s)

  def body(t, params, steps):
    epoch, b = t // batches_per_epoch, t % batches_per_epoch
    if full_batch:
      fb, lb, mb = features, labels, mask
    else:
      fb, lb, mb = _minibatch(perms, epoch, b, batch, features, labels, mask)
    new, has_data = sgd_step(params, fb, lb, mb)
    return t + 1, new, steps + has_data

  params0 = {k: tf.identity(init_params[k]) for k in train_keys}
  _, final, steps = tf.while_loop(
      lambda t, *_: t < total_steps, body,
      (tf.constant(0), params0, tf.zeros([s], tf.float32)))
  return dict(frozen, **final), steps


def _batch_layout(n: int, batch_size: int):
  """(examples per minibatch, minibatches per epoch) for N examples per client.

  A client never holds more than N examples, so a batch larger than N trains exactly
  like a batch of N; capping it avoids computing padding rows."""
  batch = min(batch_size, max(1, n))
  return batch, max(1, -(-n // batch))


def _pad_examples(features, labels, mask, pad: int):
  """Features, labels and mask with ``pad`` padding examples appended on axis 1."""
  if pad == 0:
    return features, labels, mask
  features = {k: tf.pad(v, [[0, 0], [0, pad]] + [[0, 0]] * (v.shape.rank - 2))
              for k, v in features.items()}
  labels = tf.pad(labels, [[0, 0], [0, pad]])
  mask = tf.pad(mask, [[0, 0], [0, pad]])
  return features, labels, mask


def _minibatch(perms, epoch, b, batch: int, features, labels, mask):
  """Minibatch ``b`` of epoch ``epoch``: every client's examples in its own order."""
  idx = tf.gather(perms, epoch)[:, b * batch:(b + 1) * batch]
  fb = {k: tf.gather(v, idx, batch_dims=1) for k, v in features.items()}
  lb = tf.gather(labels, idx, batch_dims=1)
  mb = tf.gather(mask, idx, batch_dims=1)
  return fb, lb, mb


def _sgd_step(model, spec: LocalSpec, compute_dtype, init_params, frozen, train_keys, s):
  """One SGD step of every client: ``step(params, fb, lb, mb)`` -> (new trained params,
  float [S] 1.0 where the client's minibatch held a real example)."""

  def step(params, fb, lb, mb):
    with tf.GradientTape() as tape:
      tape.watch(params)
      full = _compute_params(dict(frozen, **params), compute_dtype)
      loss, count = _per_client_ce(model.logits(full, fb), lb, mb)
      has_data = tf.cast(count > 0, tf.float32)
      if spec.fedprox_mu > 0:
        prox = tf.add_n([
            tf.reduce_sum(tf.reshape(tf.square(params[k] - init_params[k]), [s, -1]), -1)
            for k in train_keys])
        loss = loss + 0.5 * spec.fedprox_mu * prox * has_data
      total = tf.reduce_sum(loss)
    grads = tape.gradient(total, params)
    new = {k: params[k] - spec.learning_rate * grads[k] for k in train_keys}
    return new, has_data

  return step


def zero_nonfinite_rows(vectors):
  """Rows [S, P] with any inf or NaN entry replaced by zeros, before clipping.

  Clipping alone does not bound them: inf·0 is NaN, and a NaN norm compares false
  (so TFF 0.87's zeroing aggregator lets a NaN update through). Returns (clean rows,
  float [S] 1.0 where a row was zeroed)."""
  finite = tf.reduce_all(tf.math.is_finite(vectors), axis=-1)
  # The rows pass as they are when all are finite (the usual case: no [S, P] select).
  clean = tf.cond(tf.reduce_all(finite), lambda: vectors,
                  lambda: tf.where(finite[:, None], vectors, tf.zeros_like(vectors)))
  return clean, 1.0 - tf.cast(finite, vectors.dtype)


def clip_rows(vectors, clip_norm):
  """Scales each row [S, P] to L2 norm at most `clip_norm`; returns (clipped, norms).

  The bound holds exactly, not up to rounding:
  `pina_tff.privacy.norm_bound.enforce_norm_bound` corrects the rows
  that the float32 scaling leaves an ulp or two above it."""
  norms = tf.norm(vectors, axis=-1)
  if math.isinf(clip_norm):
    return vectors, norms
  factor = tf.minimum(1.0, clip_norm / tf.maximum(norms, 1e-12))
  return norm_bound.enforce_norm_bound(vectors * factor[:, None], clip_norm), norms


def shard_update(model, spec: LocalSpec, cluster_params: Mapping[str, tf.Tensor],
                 shard: Mapping[str, tf.Tensor]):
  """Client work of one shard: returns (update_sum [C, P], diagnostics dict).

  `update_sum` = sum over the shard's real clients of one_hot(c*) ⊗ clip(Δ) (+ local
  noise on all C·P coordinates for IFCA+LDP). Diagnostics are simulation-only sums:
  cluster counts [C], confusion [C, num_true_clusters], pre-training loss, clients,
  examples, clipped clients and local steps.
  """
  shard = {k: tf.convert_to_tensor(v) for k, v in shard.items()}
  cluster_params = {k: tf.convert_to_tensor(v, tf.float32)
                    for k, v in cluster_params.items()}
  compute_dtype = tf.as_dtype(spec.compute_dtype)
  features = model.compute_features(
      {k: tf.cast(shard[k], tf.float32) for k in model.feature_keys}, compute_dtype)
  labels, mask = shard["label"], shard["mask"]
  client_mask = shard["client_mask"]
  seed = tf.cast(shard["seed"], tf.int64)
  s = tf.shape(labels)[0]
  choice, chosen_loss = _choose_clusters(model, spec, cluster_params, features, labels,
                                         mask, shard["true_cluster"], s, compute_dtype)
  init = {k: tf.gather(v, choice) for k, v in cluster_params.items()}
  work_features = model.precompute(_compute_params(init, compute_dtype), features,
                                   spec.train_keys)
  if chosen_loss is None:
    chosen_loss, _ = _per_client_ce(
        model.logits(_compute_params(init, compute_dtype), work_features), labels, mask)
  final, steps = local_train(model, spec, init, work_features, labels, mask, seed)
  delta = _client_deltas(spec, init, final, steps)
  delta, nonfinite = zero_nonfinite_rows(delta)
  clipped, norms = clip_rows(delta, spec.clip_norm)
  onehot, slots = _cluster_slots(spec, choice, client_mask, clipped, seed)
  diagnostics = _shard_diagnostics(spec, shard["true_cluster"], onehot, chosen_loss,
                                   mask, client_mask, norms, nonfinite, steps)
  return tf.reduce_sum(slots, axis=0), diagnostics


def _choose_clusters(model, spec: LocalSpec, cluster_params, features, labels, mask,
                     true_cluster, s, compute_dtype):
  """Each client's cluster c* (int32 [S]) and, when chosen by loss, its pre-training
  loss under c* (float32 [S]; None otherwise): the oracle's true cluster, the argmin
  of the training losses (IFCA), or 0 (one model). ``s``: S, the shard's clients."""
  num_clusters = spec.num_clusters
  if spec.true_cluster and num_clusters > 1:
    return true_choice(true_cluster, num_clusters), None
  if spec.choose_cluster and num_clusters > 1:
    losses = cluster_losses(model, cluster_params, features, labels, mask,
                            compute_dtype)
    choice = tf.argmin(losses, axis=-1, output_type=tf.int32)
    return choice, tf.reduce_min(losses, axis=-1)
  return tf.zeros([s], tf.int32), None


def _client_deltas(spec: LocalSpec, init, final, steps):
  """Flattened changes [S, P] of the sent parameters (FedNova: divided by the
  client's local step count), before clipping."""
  delta = tm.flatten({k: final[k] - init[k] for k in spec.send_keys}, spec.send_keys,
                     lead_dims=1)
  if spec.normalize_by_steps:
    delta = delta / tf.maximum(steps, 1.0)[:, None]
  return delta


def _cluster_slots(spec: LocalSpec, choice, client_mask, clipped, seed):
  """(one_hot(c*) [S, C] of the real clients, slots [S, C, P]): each clipped update in
  its cluster's slot; IFCA+LDP adds each client's local Gaussian noise (std
  ``spec.ldp_noise_stddev``, absolute units) to all C·P coordinates, so the client's
  whole message is locally DP."""
  num_clusters = spec.num_clusters
  onehot = tf.one_hot(choice, num_clusters) * client_mask[:, None]
  slots = onehot[:, :, None] * clipped[:, None, :]
  if spec.ldp_noise_stddev > 0:
    noise = per_client_normal(seed, [num_clusters, int(slots.shape[-1])],
                              rng_streams.LDP_NOISE,
                              spec.ldp_noise_stddev)
    slots = slots + noise * client_mask[:, None, None]
  return onehot, slots


def _shard_diagnostics(spec: LocalSpec, true, onehot, chosen_loss, mask, client_mask,
                       norms, nonfinite, steps):
  """Simulation-only sums over the shard's real clients (see `shard_update`)."""
  known = tf.cast(true >= 0, tf.float32) * client_mask
  true_onehot = tf.one_hot(tf.maximum(true, 0), spec.num_true_clusters) * known[:, None]
  n_examples = tf.reduce_sum(mask, axis=-1)
  clip_hit = (tf.cast(norms > spec.clip_norm, tf.float32)
              if not math.isinf(spec.clip_norm) else tf.zeros_like(norms))
  return {
      "cluster_counts": tf.reduce_sum(onehot, axis=0),
      "confusion": tf.einsum("sc,st->ct", onehot, true_onehot),
      "loss_sum": tf.reduce_sum(chosen_loss * client_mask),
      "num_clients": tf.reduce_sum(client_mask),
      "num_examples": tf.reduce_sum(n_examples * client_mask),
      "num_clipped": tf.reduce_sum(clip_hit * client_mask),
      "num_nonfinite": tf.reduce_sum(nonfinite * client_mask),
      "local_steps": tf.reduce_sum(steps * client_mask),
  }


def true_choice(true_cluster, num_clusters: int):
  """The oracle's choice: the true cluster (int32 [S]); unknown (-1, padding) -> 0."""
  return tf.clip_by_value(tf.cast(true_cluster, tf.int32), 0, num_clusters - 1)


def evaluate_shard(model, cluster_params, select, test, score_true: bool = False):
  """IFCA-style evaluation: each client picks the model with the lowest loss on its
  `select` data (its training split), then is scored on its `test` data.

  With `score_true` (the oracle) the client is scored with its true cluster's model
  (`select['true_cluster']`); the returned choice stays the loss-based one.

  Returns sums: correct predictions, test examples, and the chosen clusters [S].
  """
  select, test, cluster_params = _eval_tensors(select, test, cluster_params)
  num_clusters = int(cluster_params[model.param_keys[0]].shape[0])
  choice = _loss_choice(model, cluster_params, select)
  scored = (true_choice(select["true_cluster"], num_clusters)
            if score_true and num_clusters > 1 else choice)
  correct = _client_correct(model, cluster_params, scored, test)
  return tf.reduce_sum(correct), tf.reduce_sum(test["mask"]), choice


def per_client_model_accuracy(model, cluster_params, select, test):
  """Every client's held-out correct predictions under EVERY cluster model, with the
  loss-based choice `evaluate_shard` makes (a simulation diagnostic).

  Column c is scored exactly as `evaluate_shard` scores a client whose model is c, so
  ``correct[s, choice[s]]`` summed is its correct count.

  Returns:
    (choice int32 [S]: argmin of the `select` losses (0 with one model);
     correct float32 [S, C]: `test` examples model c classifies right;
     count float32 [S]: `test` examples).
  """
  select, test, cluster_params = _eval_tensors(select, test, cluster_params)
  num_clusters = int(cluster_params[model.param_keys[0]].shape[0])
  choice = _loss_choice(model, cluster_params, select)
  every = [_client_correct(model, cluster_params, tf.fill(tf.shape(choice), c), test)
           for c in range(num_clusters)]
  return choice, tf.stack(every, axis=-1), tf.reduce_sum(test["mask"], axis=-1)


def _eval_tensors(select, test, cluster_params):
  """`select`, `test` and the cluster parameters (float32) as tensors."""
  return ({k: tf.convert_to_tensor(v) for k, v in select.items()},
          {k: tf.convert_to_tensor(v) for k, v in test.items()},
          {k: tf.convert_to_tensor(v, tf.float32) for k, v in cluster_params.items()})


def _loss_choice(model, cluster_params, select):
  """Each client's model with the lowest loss on its `select` data (int32 [S]; 0 with
  one model)."""
  num_clusters = int(cluster_params[model.param_keys[0]].shape[0])
  if num_clusters == 1:
    return tf.zeros([tf.shape(select["label"])[0]], tf.int32)
  feats_sel = {k: tf.cast(select[k], tf.float32) for k in model.feature_keys}
  losses = cluster_losses(model, cluster_params, feats_sel, select["label"],
                          select["mask"])
  return tf.argmin(losses, axis=-1, output_type=tf.int32)


def _client_correct(model, cluster_params, scored, test):
  """Correct predictions per client (float32 [S]) on its `test` data, client s scored
  with model ``scored[s]``."""
  params = {k: tf.gather(v, scored) for k, v in cluster_params.items()}
  logits = model.logits(params, {k: tf.cast(test[k], tf.float32)
                                 for k in model.feature_keys})
  pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
  return tf.reduce_sum(tf.cast(tf.equal(pred, test["label"]), tf.float32) * test["mask"],
                       axis=-1)
