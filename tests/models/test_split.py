"""Prefix + plain-TF tail equals the keras model; reduced tail equals the full tail."""
import numpy as np
import pytest

from pina_tff.models import backbone as bb
from pina_tff.models import lora
from pina_tff.models import reduced_tail as rt
from pina_tff.models import split


@pytest.fixture(scope="module")
def lora_model():
  model = bb.build_vit(bb.get_config("digits_tiny"))
  return model, lora.build_lora_model(model, rank=2, seed=1)


def _images(n=9, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1)).astype(np.float32)


def test_frozen_keys_and_shapes(lora_model):
  _, lm = lora_model
  cfg, frozen = split.extract_tail_weights(lm)
  assert set(frozen) == set(rt.FROZEN_KEYS) == set(split.FROZEN_KEYS)
  assert all(v.dtype == np.float32 for v in frozen.values())
  rt.check_frozen(frozen, cfg)
  assert (cfg.width, cfg.num_heads, cfg.mlp_dim, cfg.num_classes) == (64, 4, 128, 10)
  assert cfg.lora_rank == 2 and cfg.ln_epsilon == 1e-6
  head = split.extract_head_weights(lm)
  assert head["head_kernel"].shape == (64, 10) and head["head_bias"].shape == (10,)


def test_prefix_then_tail_equals_model(lora_model):
  model, lm = lora_model
  x = _images()
  seq = split.build_prefix(model)(x)
  assert seq.shape == (9, 17, 64)
  cfg, frozen = split.extract_tail_weights(lm)
  trainable = split.initial_trainable(lm, rank=2, seed=1)
  np.testing.assert_array_equal(trainable["lora_a"], lora.lora_weights(lm)["lora_a"])
  ref = model(x).numpy()
  np.testing.assert_allclose(split.tail_logits_full(frozen, trainable, seq, 4).numpy(), ref,
                             rtol=1e-4, atol=1e-5)
  # Random nonzero LoRA: compare with the keras LoRA model.
  rng = np.random.default_rng(2)
  a, b = rng.normal(0, 0.3, (64, 2)), rng.normal(0, 0.3, (2, 64))
  lora.set_lora_weights(lm, a, b)
  try:
    got_keras = lm(x).numpy()
    trainable.update(lora.lora_weights(lm))
    got = split.tail_logits_full(frozen, trainable, seq, 4, ln_eps=cfg.ln_epsilon).numpy()
    assert np.abs(got_keras - ref).max() > 1e-2  # LoRA really changes the logits
    np.testing.assert_allclose(got, got_keras, rtol=1e-4, atol=1e-5)
    # The reduced (CLS-only) tail gives the same logits.
    feats = rt.reduce_block_input(cfg, frozen, seq)
    red = rt.tail_logits_reduced(cfg, rt.frozen_to_tensors(frozen), trainable, feats).numpy()
    np.testing.assert_allclose(red, got, rtol=1e-4, atol=1e-5)
  finally:
    lora.set_lora_weights(lm, a * 0 + lora.init_lora_a(64, 2, 1), np.zeros((2, 64)))


def test_lora_scale_is_applied(lora_model):
  model, _ = lora_model
  lm = lora.build_lora_model(model, rank=1, seed=4, lora_scale=0.5)
  rng = np.random.default_rng(5)
  lora.set_lora_weights(lm, rng.normal(0, 0.3, (64, 1)), rng.normal(0, 0.3, (1, 64)))
  x = _images(4)
  cfg, frozen = split.extract_tail_weights(lm)
  assert cfg.lora_scale == 0.5
  trainable = {**lora.lora_weights(lm), **split.extract_head_weights(lm)}
  got = split.tail_logits_full(frozen, trainable, split.build_prefix(lm)(x), 4,
                               lora_scale=0.5).numpy()
  np.testing.assert_allclose(got, lm(x).numpy(), rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
