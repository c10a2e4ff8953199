"""computations.learning.stage1 (the sketch computation the program runs) with z1 > 0, clip != 1.

The same clients are sketched three times from the same seeds: without clipping and
noise (the raw top-k sketch), clipped without noise, and clipped with noise z1. Then
  * clipped = raw * min(1, S1 / ||raw||) exactly, and at most 2k entries are non-zero;
  * noisy - clipped is N(0, (z1 S1)^2) on every coordinate: chi-square bounds on the
    coordinates zeroed by top-k alone and on all coordinates, mean 0, independent
    across clients.
"""
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from computations.learning import client_work as cw
from computations.runtime import context
from computations.learning import learning_process as lp
from computations.learning import stage1
from pina_tff.errors import ConfigError
from pina_tff.models import reduced_tail as rt
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards
from pina_tff.training import sketching

WIDTH, TOP_K, CLIP, Z1 = 8, 2, 0.3, 1.7
NUM_CLIENTS, SHARD, N = 40, 20, 5
R = 3  # public basis dimensions


def _model(rng):
  cfg = rt.TailConfig(width=WIDTH, num_heads=2, mlp_dim=16, num_classes=3)
  frozen = {k: (rng.standard_normal(s) * 0.3 + (1 if k.endswith("gamma") else 0)).astype(
      np.float32) for k, s in cfg.frozen_shapes().items()}
  return cfg, frozen, tm.ViTTailModel(cfg, frozen)


@pytest.fixture(scope="module")
def sketches():
  rng = np.random.default_rng(0)
  cfg, frozen, model = _model(rng)
  clients = []
  for _ in range(NUM_CLIENTS):
    f = rt.reduce_block_input(cfg, frozen, rng.standard_normal((N, 6, WIDTH)).astype(
        np.float32))
    clients.append({"x_base": f["x_base"].numpy(), "z": f["z"].numpy(),
                    "label": rng.integers(0, 3, N).astype(np.int32), "true_cluster": 0})
  init = rt.init_trainable(cfg, lora_seed=0, head_kernel=rng.standard_normal((WIDTH, 3)))
  weights = lp.model_weights({k: v[None] for k, v in init.items()})
  spec = local.LocalSpec(batch_size=N, learning_rate=2.0, local_epochs=2,
                         train_keys=tm.LORA_KEYS + tm.HEAD_KEYS, send_keys=tm.LORA_KEYS)
  data, packed = [], []
  for chunk in shards.split_cohort(list(range(NUM_CLIENTS)), SHARD):
    packed.append(shards.pack_shard([clients[i] for i in chunk], model.feature_keys, N,
                                    num_slots=SHARD, client_seeds=[(9, i) for i in chunk]))
    data.append(cw.shard_to_dataset(packed[-1]))
  out = {}
  with context.tff_context():
    for name, clip, z, kept in (("raw", 1e6, 0.0, False), ("clipped", CLIP, 0.0, False),
                                ("noisy", CLIP, Z1, False), ("literal", CLIP, Z1, True)):
      comp = stage1.build_sketch_computation(model, spec, top_k=TOP_K, clip=clip,
                                             noise_multiplier=z, shard_size=SHARD, n_max=N,
                                             noise_on_kept_only=kept)
      out[name] = stage1.collect_sketches(comp(weights, data)).astype(np.float64)
    # top_k = P1/2 keeps every entry: the raw LoRA change; then a public basis V.
    basis = np.linalg.qr(rng.standard_normal((2 * WIDTH, R)))[0].T
    out["basis"] = basis
    start = {k: tf.constant(v[None]) for k, v in init.items()}
    out["full"] = np.concatenate([sketching.shard_sketches(
        model, spec, start, {k: tf.constant(v) for k, v in p.items()}, top_k=None,
        clip=CLIP)[0].numpy() for p in packed]).astype(np.float64)
    for name, top_k, clip, z, v in (("basis_clean", TOP_K, CLIP, 0.0, basis),
                                    ("basis_noisy", TOP_K, CLIP, Z1, basis)):
      comp = stage1.build_sketch_computation(model, spec, top_k=top_k, clip=clip,
                                             noise_multiplier=z, shard_size=SHARD,
                                             n_max=N, basis=v)
      out[name] = stage1.collect_sketches(comp(weights, data)).astype(np.float64)
  return out


def test_sketch_is_top_k_then_clipped(sketches):
  raw, clipped = sketches["raw"], sketches["clipped"]
  assert raw.shape == (NUM_CLIENTS, 2 * WIDTH)
  assert np.all(np.count_nonzero(raw, axis=1) <= 2 * TOP_K)
  norms = np.linalg.norm(raw, axis=1)
  assert np.all(norms > 0)
  assert np.sum(norms > CLIP) >= NUM_CLIENTS // 2, "the clip should bind for most"
  want = raw * np.minimum(1.0, CLIP / norms)[:, None]
  np.testing.assert_allclose(clipped, want, rtol=1e-5, atol=1e-7)
  assert np.all(np.linalg.norm(clipped, axis=1) <= CLIP * (1 + 1e-5))


def _chi2_ok(values, sigma):
  n = values.size
  stat = float(np.sum(values ** 2) / sigma ** 2)
  lo, hi = scipy.stats.chi2.ppf([1e-6, 1 - 1e-6], n)
  return lo < stat < hi, (stat, lo, hi, n)


def test_noise_on_zeroed_coordinates_has_std_z1_times_clip(sketches):
  clipped, noisy = sketches["clipped"], sketches["noisy"]
  zeroed = clipped == 0
  assert zeroed.sum() >= NUM_CLIENTS * (2 * WIDTH - 2 * TOP_K)
  ok, info = _chi2_ok(noisy[zeroed], Z1 * CLIP)
  assert ok, info


def test_literal_ablation_noises_the_kept_entries_only_with_the_same_draws(sketches):
  """noise_positions='released': zeros stay exactly zero (their positions are in the
  clear), and the kept entries get the very noise the protected sketch draws there."""
  clipped, noisy, literal = sketches["clipped"], sketches["noisy"], sketches["literal"]
  kept = clipped != 0
  np.testing.assert_array_equal(literal[~kept], 0.0)
  np.testing.assert_allclose(literal[kept], noisy[kept], rtol=1e-6, atol=1e-7)
  ok, info = _chi2_ok((literal - clipped)[kept], Z1 * CLIP)
  assert ok, info


def test_noise_on_every_coordinate_is_independent_of_the_sketch(sketches):
  noise = sketches["noisy"] - sketches["clipped"]
  ok, info = _chi2_ok(noise, Z1 * CLIP)
  assert ok, info
  # Per-client draws differ (own seed per client) and are uncorrelated across clients.
  assert len({tuple(np.round(r, 6)) for r in noise}) == NUM_CLIENTS
  # The mean of the 780 pairwise correlations (16 coordinates each) is ~ N(0, 0.01²)
  # for independent draws; a component shared by the clients would move it to its share.
  corr = np.corrcoef(noise)[np.triu_indices(NUM_CLIENTS, 1)]
  assert abs(corr.mean()) < 0.1, corr.mean()
  assert abs(noise.mean()) < 6 * Z1 * CLIP / np.sqrt(noise.size)


def test_public_basis_sketch_is_the_clipped_projection_plus_noise(sketches):
  """stage1.public_basis_dims: each client sends clip(V·Δ, S1) + N(0, (z1·S1)² I_r),
  Δ the raw LoRA change (no sparsification): checked against the raw changes of the
  same clients and seeds (plain TF, outside TFF) projected and clipped here, and the
  noise by chi-square over the r coordinates."""
  full, v = sketches["full"], sketches["basis"]
  clean, noisy = sketches["basis_clean"], sketches["basis_noisy"]
  assert clean.shape == noisy.shape == (NUM_CLIENTS, R)
  y = full @ v.T
  want = y * np.minimum(1.0, CLIP / np.linalg.norm(y, axis=1))[:, None]
  assert np.sum(np.linalg.norm(y, axis=1) > CLIP) >= 5, "the clip should bind for some"
  np.testing.assert_allclose(clean, want, rtol=1e-4, atol=1e-6)
  ok, info = _chi2_ok(noisy - clean, Z1 * CLIP)
  assert ok, info


def test_top_k_up_to_half_the_sketch_is_accepted():
  # P1 = 2 * WIDTH: k = P1 / 2 keeps every entry (k positive + k negative) and is valid.
  _, _, model = _model(np.random.default_rng(0))
  spec = local.LocalSpec(train_keys=tm.LORA_KEYS + tm.HEAD_KEYS, send_keys=tm.LORA_KEYS)
  with context.tff_context():
    stage1.build_sketch_computation(model, spec, top_k=WIDTH, clip=CLIP,
                                    noise_multiplier=Z1, shard_size=1, n_max=N)
    with pytest.raises(ConfigError, match="top_k"):
      stage1.build_sketch_computation(model, spec, top_k=WIDTH + 1, clip=CLIP,
                                      noise_multiplier=Z1, shard_size=1, n_max=N)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
