"""Backbone weights: h5 round trip, and WeightsError naming the file and layers."""
import os

import numpy as np
import pytest

from pina_tff.errors import WeightsError
from pina_tff.models import backbone as bb
from pina_tff.models import weights as wl


def _x():
  return np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  model = bb.build_vit(bb.get_config("digits_tiny"))
  path = str(tmp_path_factory.mktemp("w") / "digits_tiny.weights.h5")
  wl.save_backbone_weights(model, path)
  return model, path


def test_round_trip(saved):
  model, path = saved
  other = bb.build_vit(bb.get_config("digits_tiny"))
  assert not np.allclose(other(_x()), model(_x()))
  sha = wl.load_backbone_weights(other, path)
  assert sha == wl.sha256_file(path) and len(sha) == 64
  np.testing.assert_array_equal(other(_x()).numpy(), model(_x()).numpy())
  assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp-" in f]


def test_missing_file(tmp_path):
  model = bb.build_vit(bb.get_config("digits_tiny"))
  path = str(tmp_path / "nope.weights.h5")
  with pytest.raises(WeightsError, match="nope.weights.h5.*not found"):
    wl.load_backbone_weights(model, path)


def test_not_h5(tmp_path):
  path = tmp_path / "junk.weights.h5"
  path.write_text("hello")
  with pytest.raises(WeightsError, match="junk.weights.h5"):
    wl.load_backbone_weights(bb.build_vit(bb.get_config("digits_tiny")), str(path))


def test_wrong_shapes_name_the_layers(saved):
  _, path = saved
  wide = bb.build_vit(bb.get_config("digits_tiny", width=32, num_heads=4, num_layers=2))
  with pytest.raises(WeightsError) as e:
    wl.load_backbone_weights(wide, path)
  msg = str(e.value)
  assert path in msg
  assert "patching_and_embedding" in msg and "transformer_encoder" in msg
  assert "missing" in msg or "no such layer" in msg  # 2 blocks in the model, 3 in the file


def test_skip_head_keeps_own_head(saved):
  model, path = saved
  twelve = bb.build_vit(bb.get_config("digits_tiny", num_classes=12))
  with pytest.raises(WeightsError, match="dense"):
    wl.load_backbone_weights(twelve, path)
  head_before = bb.head_layer(twelve).kernel.numpy().copy()
  wl.load_backbone_weights(twelve, path, skip_head=True)
  np.testing.assert_array_equal(bb.head_layer(twelve).kernel.numpy(), head_before)
  np.testing.assert_array_equal(bb.final_layer_norm(twelve).gamma.numpy(),
                                bb.final_layer_norm(model).gamma.numpy())


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
