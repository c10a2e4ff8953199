"""Shard-vectorized client work: per-client semantics, sharding invariance, clipping."""
import math

import numpy as np
import pytest
import tensorflow as tf

from pina_tff.models import reduced_tail as rt
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards


def _linear_population(num_clients=12, n=7, d=5, k=3, seed=0):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, n + 1, size=num_clients)
  clients = []
  for i, m in enumerate(sizes):
    clients.append({"x": rng.standard_normal((m, d)).astype(np.float32),
                    "label": rng.integers(0, k, size=m).astype(np.int32),
                    "true_cluster": i % 2})
  return clients


def _params(model, c, seed=1):
  rng = np.random.default_rng(seed)
  return {k: tf.constant(0.3 * rng.standard_normal((c,) + s), tf.float32)
          for k, s in model.param_shapes().items()}


def _manual_sgd(x, y, w, b, lr, batch):
  """Plain per-client minibatch SGD on softmax regression, no shuffling."""
  w, b = w.copy(), b.copy()
  for start in range(0, len(y), batch):
    xb, yb = x[start:start + batch], y[start:start + batch]
    logits = xb @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(yb)), yb] -= 1
    gw, gb = xb.T @ p / len(yb), p.mean(0)
    w, b = w - lr * gw, b - lr * gb
  return w, b


def test_each_client_trains_like_a_plain_sgd_loop():
  model = tm.LinearModel(5, 3)
  clients = _linear_population()
  spec = local.LocalSpec(batch_size=3, learning_rate=0.5, shuffle=False,
                         train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS)
  params = _params(model, 1)
  shard = shards.pack_shard(clients, model.feature_keys, n_max=7, seed=(0, 0))
  update, diag = local.shard_update(model, spec, params, shard)
  want = 0
  for cl in clients:
    w, b = _manual_sgd(cl["x"], cl["label"], params["head_kernel"][0].numpy(),
                       params["head_bias"][0].numpy(), 0.5, 3)
    want = want + np.concatenate([(w - params["head_kernel"][0].numpy()).ravel(),
                                  b - params["head_bias"][0].numpy()])
  np.testing.assert_allclose(update.numpy()[0], want, rtol=1e-4, atol=1e-5)
  assert diag["num_clients"].numpy() == len(clients)
  assert diag["local_steps"].numpy() == sum(math.ceil(len(c["label"]) / 3) for c in clients)


@pytest.mark.parametrize("method", ["fedavg", "ifca", "fedprox", "fednova"])
def test_sharded_equals_one_client_per_shard(method):
  model = tm.LinearModel(5, 3)
  clients = _linear_population(num_clients=8)
  spec = local.LocalSpec(
      num_clusters=1 if method in ("fedavg", "fedprox", "fednova") else 3,
      choose_cluster=method == "ifca", fedprox_mu=0.5 if method == "fedprox" else 0.0,
      normalize_by_steps=method == "fednova", batch_size=2, learning_rate=0.3,
      clip_norm=0.4, local_epochs=2, train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS,
      num_true_clusters=2)
  params = _params(model, spec.num_clusters)
  seeds = [(3, i) for i in range(len(clients))]
  whole = local.shard_update(model, spec, params, shards.pack_shard(
      clients, model.feature_keys, n_max=7, client_seeds=seeds))[0]
  single = sum(local.shard_update(model, spec, params, shards.pack_shard(
      [c], model.feature_keys, n_max=7, client_seeds=[sd]))[0]
               for c, sd in zip(clients, seeds))
  np.testing.assert_allclose(whole.numpy(), single.numpy(), rtol=1e-4, atol=1e-6)


def test_clipping_is_per_client_and_slots_follow_choice():
  model = tm.LinearModel(5, 3)
  clients = _linear_population(num_clients=6)
  spec = local.LocalSpec(num_clusters=3, choose_cluster=True, batch_size=4,
                         learning_rate=5.0, clip_norm=0.01, train_keys=tm.HEAD_KEYS,
                         send_keys=tm.HEAD_KEYS, num_true_clusters=2)
  params = _params(model, 3)
  shard = shards.pack_shard(clients, model.feature_keys, n_max=7, seed=(0, 0))
  update, diag = local.shard_update(model, spec, params, shard)
  counts = diag["cluster_counts"].numpy()
  norms = np.linalg.norm(update.numpy(), axis=1)
  assert counts.sum() == 6 and diag["num_clipped"].numpy() == 6
  # Each slot is a sum of counts[c] vectors of norm exactly clip (big lr): norm <= count*clip.
  assert np.all(norms <= counts * 0.01 + 1e-6)
  assert np.all((norms > 0) == (counts > 0))
  assert diag["confusion"].numpy().sum() == 6


def test_oracle_trains_the_true_cluster_and_is_scored_with_it():
  """Each client's clipped update lands in its TRUE cluster's slot, equal to training
  that cluster's model alone (reference: the one-model update of the same client)."""
  model = tm.LinearModel(5, 3)
  clients = _linear_population(num_clients=6)          # true clusters 0,1,0,1,0,1
  params = _params(model, 2)
  spec = local.LocalSpec(num_clusters=2, true_cluster=True, batch_size=4,
                         learning_rate=0.7, clip_norm=0.3, shuffle=False,
                         train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS,
                         num_true_clusters=2)
  shard = shards.pack_shard(clients, model.feature_keys, n_max=7, seed=(0, 0))
  update, diag = local.shard_update(model, spec, params, shard)
  one = local.LocalSpec(num_clusters=1, batch_size=4, learning_rate=0.7, clip_norm=0.3,
                        shuffle=False, train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS)
  for c in range(2):
    members = [cl for cl in clients if cl["true_cluster"] == c]
    ref, _ = local.shard_update(model, one, {k: v[c:c + 1] for k, v in params.items()},
                                shards.pack_shard(members, model.feature_keys, n_max=7,
                                                  seed=(0, 0)))
    np.testing.assert_allclose(update.numpy()[c], ref.numpy()[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(diag["confusion"].numpy(), [[3, 0], [0, 3]])
  # scoring: with score_true the true cluster's model scores; the choice stays by loss
  sel = shards.pack_shard(clients, model.feature_keys, n_max=7)
  _, _, by_loss = local.evaluate_shard(model, params, sel, sel)
  correct_true, total, choice = local.evaluate_shard(model, params, sel, sel,
                                                     score_true=True)
  np.testing.assert_array_equal(choice.numpy(), by_loss.numpy())
  want = 0
  for cl in clients:
    c = cl["true_cluster"]
    logits = cl["x"] @ params["head_kernel"][c].numpy() + params["head_bias"][c].numpy()
    want += int((logits.argmax(1) == cl["label"]).sum())
  assert float(correct_true) == want and float(total) == sum(len(c["label"]) for c in clients)


def test_per_client_model_accuracy_scores_every_client_with_every_model():
  """Column c of the per-client table is `evaluate_shard`'s score of that one client
  with model c (reference: one call per client and model, the true cluster set to c
  and score_true); the choice is `evaluate_shard`'s."""
  model = tm.LinearModel(5, 3)
  clients = _linear_population(num_clients=9, seed=3)
  held_out = _linear_population(num_clients=9, seed=4)
  params = _params(model, 3, seed=5)
  sel = shards.pack_shard(clients, model.feature_keys, n_max=7)
  test = shards.pack_shard(held_out, model.feature_keys, n_max=7)
  choice, correct, count = local.per_client_model_accuracy(model, params, sel, test)
  _, _, want_choice = local.evaluate_shard(model, params, sel, test)
  np.testing.assert_array_equal(choice.numpy(), want_choice.numpy())
  assert correct.shape == (9, 3)
  for i in range(9):
    one_test = {k: v[i:i + 1] for k, v in test.items()}
    for c in range(3):
      one_sel = {k: v[i:i + 1] for k, v in sel.items()}
      one_sel["true_cluster"] = np.array([c], np.int32)
      want, total, _ = local.evaluate_shard(model, params, one_sel, one_test,
                                            score_true=True)
      assert float(correct[i, c]) == float(want)
      assert float(count[i]) == float(total) == len(held_out[i]["label"])
  chosen = correct.numpy()[np.arange(9), choice.numpy()].sum()
  assert chosen == float(local.evaluate_shard(model, params, sel, test)[0])


def _vit_tail(seed, num_clients, n=5):
  """(model, clients with n examples each, params [1, ...]) of a small ViT tail."""
  rng = np.random.default_rng(seed)
  cfg = rt.TailConfig(width=8, num_heads=2, mlp_dim=16, num_classes=3)
  frozen = {k: (rng.standard_normal(s) * 0.3 + (1 if k.endswith("gamma") else 0)).astype(
      np.float32) for k, s in cfg.frozen_shapes().items()}
  model = tm.ViTTailModel(cfg, frozen)
  clients = []
  for _ in range(num_clients):
    f = rt.reduce_block_input(cfg, frozen, rng.standard_normal((n, 6, 8)).astype(np.float32))
    clients.append({"x_base": f["x_base"].numpy(), "z": f["z"].numpy(),
                    "label": rng.integers(0, 3, n).astype(np.int32), "true_cluster": 0})
  init = rt.init_trainable(cfg, lora_seed=0, head_kernel=rng.standard_normal((8, 3)))
  return model, clients, {k: tf.constant(v[None]) for k, v in init.items()}


def test_vit_tail_trains_only_lora_and_head_per_client():
  model, clients, params = _vit_tail(0, 4)
  shard = shards.pack_shard(clients, model.feature_keys, n_max=5, seed=(0, 0))
  spec = local.LocalSpec(batch_size=5, learning_rate=0.5)
  update, _ = local.shard_update(model, spec, params, shard)
  vec = update.numpy()[0]
  p_lora_a = 8
  # B starts at zero, so A's gradient is zero at the first step, but B moves.
  assert np.allclose(vec[:p_lora_a], 0.0)
  assert np.abs(vec[p_lora_a:p_lora_a + 8]).max() > 0
  # head-only training leaves LoRA untouched and uses the precomputed head input.
  spec0 = local.LocalSpec(batch_size=5, learning_rate=0.5, train_keys=tm.HEAD_KEYS,
                          send_keys=tm.HEAD_KEYS)
  update0, _ = local.shard_update(model, spec0, params, shard)
  assert update0.shape == (1, 8 * 3 + 3)


def test_padding_inside_local_training_keeps_image_shaped_features():
  """Rank-4 features (the ViT tail's z: [S, N, heads, width]): when the batch does not
  divide N, local training pads the examples axis itself; the update must equal the
  one from a shard packed with that padding already (padding rows are masked)."""
  model, clients, params = _vit_tail(3, 3)
  spec = local.LocalSpec(batch_size=2, learning_rate=0.5, local_epochs=2)
  updates = []
  for n_max in (5, 6):  # 5: padded to 6 inside local training; 6: packed so
    shard = shards.pack_shard(clients, model.feature_keys, n_max=n_max, seed=(0, 0))
    assert shard["z"].ndim == 4  # [S, N, heads, width]
    updates.append(local.shard_update(model, spec, params, shard)[0].numpy())
  assert np.abs(updates[1]).max() > 0
  np.testing.assert_allclose(updates[0], updates[1], rtol=1e-5, atol=1e-6)


def test_ldp_noise_has_the_configured_variance_on_every_coordinate():
  model = tm.LinearModel(4, 2)
  clients = [{"x": np.zeros((1, 4), np.float32), "label": np.zeros(1, np.int32),
              "true_cluster": 0} for _ in range(400)]
  spec = local.LocalSpec(num_clusters=2, batch_size=1, learning_rate=0.0, clip_norm=1.0,
                         train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS,
                         ldp_noise_stddev=0.5)
  params = _params(model, 2)
  shard = shards.pack_shard(clients, model.feature_keys, n_max=1, seed=(4, 2))
  update, _ = local.shard_update(model, spec, params, shard)
  # Sum of 400 clients' independent noise: variance 400 * 0.25 = 100 per coordinate.
  v = update.numpy().ravel()
  assert v.size == 2 * 10
  var = np.mean(v ** 2)
  assert 100 * 0.45 < var < 100 * 1.8, var


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
