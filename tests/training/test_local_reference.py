"""pina_tff.training.local vs NumPy references: FedProx's gradient, FedNova's Δ/steps,
clipping of every method as `computations.learning.methods` wires it (clip != 1), and IFCA-style
evaluation (argmin loss). Plain TensorFlow, no TFF."""
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from computations.learning import methods
from pina_tff import config as config_lib
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards

D, K = 4, 3
MODEL = tm.LinearModel(D, K)
HEAD = dict(train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS)


def _clients(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [{"x": rng.standard_normal((n, D)).astype(np.float32),
           "label": rng.integers(0, K, n).astype(np.int32), "true_cluster": 0}
          for n in sizes]


def _params(c, seed=1, scale=0.5):
  rng = np.random.default_rng(seed)
  return {k: tf.constant(scale * rng.standard_normal((c,) + s), tf.float32)
          for k, s in MODEL.param_shapes().items()}


def _softmax_grad(x, y, w, b):
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  return x.T @ p / len(y), p.mean(0)


def _sgd(x, y, w0, b0, lr, batch, epochs, mu=0.0):
  """Per-client minibatch SGD (no shuffling) on CE + mu/2 ||theta - theta0||^2."""
  w, b, steps = w0.astype(np.float64), b0.astype(np.float64), 0
  for _ in range(epochs):
    for s in range(0, len(y), batch):
      gw, gb = _softmax_grad(x[s:s + batch], y[s:s + batch], w, b)
      gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
      w, b, steps = w - lr * gw, b - lr * gb, steps + 1
  return np.concatenate([(w - w0).ravel(), b - b0]), steps


def _clip(v, c):
  n = np.linalg.norm(v)
  return v * min(1.0, c / n) if n > 0 else v


def test_fedprox_step_follows_the_gradient_of_loss_plus_proximal_term():
  clients = _clients([6, 6, 4])
  mu, lr = 3.0, 0.4
  spec = local.LocalSpec(batch_size=6, learning_rate=lr, local_epochs=3, shuffle=False,
                         fedprox_mu=mu, **HEAD)
  params = _params(1)
  update, _ = local.shard_update(MODEL, spec, params, shards.pack_shard(
      clients, MODEL.feature_keys, n_max=6, seed=(0, 0)))
  w0, b0 = params["head_kernel"][0].numpy(), params["head_bias"][0].numpy()
  want = sum(_sgd(c["x"], c["label"], w0, b0, lr, 6, 3, mu)[0] for c in clients)
  np.testing.assert_allclose(update.numpy()[0], want, rtol=1e-4, atol=1e-5)
  # The proximal term matters at these settings (guards against a vacuous check).
  plain = sum(_sgd(c["x"], c["label"], w0, b0, lr, 6, 3)[0] for c in clients)
  assert np.abs(plain - want).max() > 1e-2


def test_fedprox_gradient_matches_gradient_tape_of_the_objective():
  # One client, two full-batch steps: the second step sees theta != theta0.
  (client,) = _clients([5], seed=3)
  mu, lr = 2.0, 0.3
  params = _params(1, seed=4)
  spec = local.LocalSpec(batch_size=5, learning_rate=lr, local_epochs=2, shuffle=False,
                         fedprox_mu=mu, **HEAD)
  update, _ = local.shard_update(MODEL, spec, params, shards.pack_shard(
      [client], MODEL.feature_keys, n_max=5, seed=(0, 0)))
  theta0 = {k: tf.Variable(v[0]) for k, v in params.items()}
  theta = {k: tf.Variable(v[0]) for k, v in params.items()}
  x, y = tf.constant(client["x"]), tf.constant(client["label"])
  for _ in range(2):
    with tf.GradientTape() as tape:
      logits = x @ theta["head_kernel"] + theta["head_bias"]
      ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
      prox = sum(tf.reduce_sum((theta[k] - theta0[k]) ** 2) for k in theta)
      obj = ce + 0.5 * mu * prox
    grads = tape.gradient(obj, theta)
    for k in theta:
      theta[k].assign_sub(lr * grads[k])
  want = np.concatenate([(theta[k] - theta0[k]).numpy().ravel() for k in tm.HEAD_KEYS])
  np.testing.assert_allclose(update.numpy()[0], want, rtol=1e-4, atol=1e-6)


def test_fednova_sends_clipped_delta_over_local_steps():
  sizes = [9, 2, 5, 7]
  clients = _clients(sizes, seed=2)
  lr, batch, epochs, clip = 0.5, 2, 2, 0.3
  spec = local.LocalSpec(batch_size=batch, learning_rate=lr, local_epochs=epochs,
                         shuffle=False, normalize_by_steps=True, clip_norm=clip, **HEAD)
  params = _params(1)
  update, diag = local.shard_update(MODEL, spec, params, shards.pack_shard(
      clients, MODEL.feature_keys, n_max=9, seed=(0, 0)))
  w0, b0 = params["head_kernel"][0].numpy(), params["head_bias"][0].numpy()
  want, total_steps, clipped = 0.0, 0, 0
  for c in clients:
    delta, steps = _sgd(c["x"], c["label"], w0, b0, lr, batch, epochs)
    assert steps == epochs * math.ceil(len(c["label"]) / batch)
    normalized = delta / steps
    clipped += np.linalg.norm(normalized) > clip
    want = want + _clip(normalized, clip)
    total_steps += steps
  np.testing.assert_allclose(update.numpy()[0], want, rtol=1e-4, atol=1e-6)
  assert float(diag["local_steps"]) == total_steps
  assert 0 < clipped < len(clients)  # both regimes occur


def _cfg(method, clip):
  return config_lib.validate(config_lib.RunConfig(
      method=method, num_clusters=2, population=2000, model_width=16,
      stage1=config_lib.Stage1Config(top_k=4),
      stage2=config_lib.Stage2Config(cohort=8, local_epochs=2, batch_size=3,
                                     client_lr=2.0, clip=clip, fedprox_mu=0.1)))


@pytest.mark.parametrize("method", ["pina", "pina_ri", "ifca", "ifca_ldp", "fedavg",
                                    "fedprox", "fednova"])
@pytest.mark.parametrize("clip", [0.02, 7.5])
def test_every_method_clips_each_client_to_its_clip(method, clip):
  """One client per shard: the slot's norm is min(||Δ'||, clip) exactly (Δ' = what the
  method sends before clipping), with the method's LocalSpec from `methods` (z2 = 0)."""
  cfg = _cfg(method, clip)
  spec = dataclasses.replace(methods.stage2_spec(cfg, z2=0.0, shard_size=1, n_max=6, num_true_clusters=1).local, **HEAD,
                             shuffle=False)
  unclipped = dataclasses.replace(spec, clip_norm=math.inf)
  params = _params(spec.num_clusters, scale=0.2)
  for i, c in enumerate(_clients([6, 3, 5], seed=7)):
    shard = shards.pack_shard([c], MODEL.feature_keys, n_max=6, client_seeds=[(1, i)])
    got, diag = local.shard_update(MODEL, spec, params, shard)
    raw, _ = local.shard_update(MODEL, unclipped, params, shard)
    raw_norm = np.linalg.norm(raw.numpy())
    assert raw_norm > 0
    np.testing.assert_allclose(np.linalg.norm(got.numpy()), min(raw_norm, clip),
                               rtol=1e-5)
    np.testing.assert_allclose(got.numpy(), raw.numpy() * min(1.0, clip / raw_norm),
                               rtol=1e-5, atol=1e-7)
    assert float(diag["num_clipped"]) == float(raw_norm > clip)


def test_diagnostics_count_real_clients_only_with_padding_slots():
  """Cluster counts and the confusion matrix (-> reported clustering accuracy) from
  a shard with padding slots and one client of unknown true cluster."""
  clients = _clients([4, 2, 5, 3, 1], seed=5)
  true = [0, 1, 1, -1, 0]
  for c, t in zip(clients, true):
    c["true_cluster"] = t
  spec = local.LocalSpec(num_clusters=3, choose_cluster=True, batch_size=2,
                         learning_rate=0.1, clip_norm=0.5, num_true_clusters=2, **HEAD)
  params = _params(3, seed=8, scale=1.5)
  shard = shards.pack_shard(clients, MODEL.feature_keys, n_max=5, num_slots=8,
                            seed=(2, 0))
  _, diag = local.shard_update(MODEL, spec, params, shard)
  losses = local.cluster_losses(MODEL, params, {"x": tf.constant(shard["x"])},
                                tf.constant(shard["label"]), tf.constant(shard["mask"]))
  choice = np.argmin(losses.numpy(), axis=1)[:len(clients)]
  counts = np.bincount(choice, minlength=3)
  confusion = np.zeros((3, 2))
  for c, t in zip(choice, true):
    if t >= 0:
      confusion[c, t] += 1
  np.testing.assert_array_equal(diag["cluster_counts"].numpy(), counts)
  np.testing.assert_array_equal(diag["confusion"].numpy(), confusion)
  assert float(diag["num_clients"]) == len(clients)
  assert float(diag["num_examples"]) == sum(len(c["label"]) for c in clients)


def _eval_clients(rng, n, centers):
  """Three clients per center, with n, n-1, n-2 examples (so shards carry padding)."""
  out = []
  for c in range(len(centers)):
    for j in range(3):
      x = rng.standard_normal((n - j, D)).astype(np.float32)
      y = np.argmax(x @ centers[c], axis=1).astype(np.int32)
      out.append({"x": x, "label": y, "true_cluster": c})
  return out


def test_evaluation_picks_the_lowest_loss_cluster_and_scores_on_test_data():
  rng = np.random.default_rng(11)
  centers = [rng.standard_normal((D, K)) * 3 for _ in range(3)]
  params = {"head_kernel": tf.constant(np.stack(centers), tf.float32),
            "head_bias": tf.constant(rng.standard_normal((3, K)) * 0.1, tf.float32)}
  train = _eval_clients(rng, 6, centers)
  test = _eval_clients(rng, 4, centers)
  # Swap a few clients' test labels so accuracy is not trivially 1.
  test[0]["label"] = (test[0]["label"] + 1) % K
  select = shards.pack_shard(train, MODEL.feature_keys, n_max=6, seed=(0, 0))
  tst = shards.pack_shard(test, MODEL.feature_keys, n_max=4, seed=(0, 0))
  correct, total, choice = local.evaluate_shard(MODEL, params, select, tst)
  w, b = params["head_kernel"].numpy(), params["head_bias"].numpy()
  want_correct, want_choice = 0, []
  for tr, te in zip(train, test):
    losses = []
    for c in range(3):
      z = tr["x"] @ w[c] + b[c]
      z = z - z.max(1, keepdims=True)
      logp = z - np.log(np.exp(z).sum(1, keepdims=True))
      losses.append(-logp[np.arange(len(tr["label"])), tr["label"]].mean())
    best = int(np.argmin(losses))
    assert sorted(losses)[0] < sorted(losses)[1] - 1e-3
    want_choice.append(best)
    want_correct += int(np.sum(np.argmax(te["x"] @ w[best] + b[best], 1) == te["label"]))
  np.testing.assert_array_equal(choice.numpy(), want_choice)
  assert len(set(want_choice)) == 3
  n_test = sum(len(t["label"]) for t in test)
  assert float(correct) == want_correct and float(total) == n_test
  assert want_correct < n_test



@pytest.mark.parametrize("shuffle", [False, True])
def test_epoch_order_keeps_real_examples_first_and_padding_last(shuffle):
  # Clients with 1..6 real examples of N = 6 (the rest is padding); the minibatches
  # must never feed a padding slot before a real one.
  n = 6
  mask = np.array([[1.0] * k + [0.0] * (n - k) for k in range(1, n + 1)], np.float32)
  seeds = np.stack([np.zeros(n), np.arange(n)], 1).astype(np.int32)
  perms = local.epoch_permutations(tf.constant(mask), 3, shuffle, tf.constant(seeds)
                                    ).numpy()
  for e in range(3):
    for s, k in enumerate(range(1, n + 1)):
      order = perms[e, s]
      assert sorted(order.tolist()) == list(range(n))
      assert set(order[:k].tolist()) == set(range(k)), (e, s, order)
      if not shuffle:
        assert order.tolist() == list(range(n))  # the stored order, unshuffled


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
