"""Backbone presets and keras-cv ViT structure."""
import numpy as np
import pytest
import tensorflow as tf

from pina_tff.errors import ConfigError, DataError
from pina_tff.models import backbone as bb
from pina_tff.models import lora
from pina_tff.models import split


def test_digits_tiny_builds_and_outputs_logits():
  cfg = bb.get_config("digits_tiny")
  assert cfg.embedding_shape == (17, 64)
  model = bb.build_vit(cfg)
  x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.float32)
  logits = model(x).numpy()
  assert logits.shape == (3, 10)
  assert not np.allclose(logits.sum(-1), 1.0)  # pre-softmax
  assert len(bb.transformer_blocks(model)) == 3
  assert split.build_prefix(model)(x).shape == (3, 17, 64)


def test_fmnist_vit_preset():
  cfg = bb.get_config("fmnist_vit")
  assert cfg.image_shape == (28, 28, 1) and cfg.embedding_shape == (50, 64)  # 7 x 7 + 1
  model = bb.build_vit(cfg)
  assert len(bb.transformer_blocks(model)) == 4
  assert bb.transformer_blocks(model)[-1].num_heads == 4
  x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.float32)
  assert model(x).shape == (2, 10)
  assert split.build_prefix(model)(x).shape == (2, 50, 64)


def test_backbone_for_dataset():
  assert bb.backbone_for_dataset("digits") == "digits_tiny"
  assert bb.backbone_for_dataset("fashion_mnist") == "fmnist_vit"
  with pytest.raises(ConfigError, match="no backbone preset for dataset 'cifar10'"):
    bb.backbone_for_dataset("cifar10")


def test_vit_s16_structure():
  cfg = bb.get_config("vit_s16")
  model = bb.build_vit(cfg)
  blocks = bb.transformer_blocks(model)
  assert len(blocks) == 12
  assert blocks[-1].project_dim == 384
  assert tuple(blocks[-1].attn._value_dense.kernel.shape) == (384, 6, 64)  # pylint: disable=protected-access
  assert cfg.embedding_shape == (197, 384)
  lm = lora.build_lora_model(model, rank=1, seed=0)
  assert lora.sketch_size(lm) == 768
  x = np.zeros((1, 224, 224, 3), np.float32)
  assert split.build_prefix(model)(x).shape == (1, 197, 384)
  tail_cfg, frozen = split.extract_tail_weights(lm)
  assert (tail_cfg.width, tail_cfg.num_heads, tail_cfg.mlp_dim) == (384, 6, 1536)
  assert frozen["wo"].shape == (6, 64, 384)


def test_invalid_configs_raise_config_error():
  with pytest.raises(ConfigError, match="patch_size"):
    bb.get_config("digits_tiny", patch_size=3)
  with pytest.raises(ConfigError, match="divisible"):
    bb.get_config("digits_tiny", num_heads=5)
  with pytest.raises(ConfigError, match="unknown backbone"):
    bb.get_config("resnet")


def test_config_json_roundtrip_and_image_check():
  cfg = bb.get_config("digits_tiny")
  assert bb.BackboneConfig.from_json(cfg.to_json()) == cfg
  with pytest.raises(DataError, match=r"\[28, 28, 1\].*digits_tiny.*\[8, 8, 1\]"):
    bb.check_images_shape(cfg, (5, 28, 28, 1))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
