"""LoRA on the last block's W_V: identity at init, only LoRA + head trainable."""
import numpy as np
import pytest
import tensorflow as tf

from pina_tff.models import backbone as bb
from pina_tff.models import lora
from pina_tff.models import reduced_tail as rt


def _images(n=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1)).astype(np.float32)


def test_identity_at_init_is_exact():
  model = bb.build_vit(bb.get_config("digits_tiny"))
  x = _images()
  ref = model(x).numpy()
  lm = lora.build_lora_model(model, rank=2, seed=7)
  np.testing.assert_array_equal(lm(x).numpy(), ref)
  w = lora.lora_weights(lm)
  assert w["lora_a"].shape == (64, 2) and w["lora_b"].shape == (2, 64)
  assert not w["lora_b"].any() and w["lora_a"].std() > 0


def test_lora_a_init_is_server_known_and_matches_reduced_tail():
  a = lora.init_lora_a(64, 1, seed=3)
  np.testing.assert_array_equal(a, lora.init_lora_a(64, 1, seed=3))
  np.testing.assert_array_equal(a, rt.init_lora_a(rt.TailConfig(64, 4, 128, 10), 3))
  assert abs(a.std() - 1 / 8) < 0.05


def test_only_lora_and_head_are_trainable_and_get_gradients():
  model = bb.build_vit(bb.get_config("digits_tiny"))
  lm = lora.build_lora_model(model, rank=1, seed=0)
  head = bb.head_layer(lm)
  blk = lora.find_lora_block(lm)
  expected = {id(v) for v in (blk.lora_a, blk.lora_b, head.kernel, head.bias)}
  assert {id(v) for v in lm.trainable_variables} == expected
  assert len(lm.weights) == len(model.weights) + 2
  # Nonzero B so that A gets a gradient too.
  lora.set_lora_weights(lm, lora.lora_weights(lm)["lora_a"], np.full((1, 64), 0.1))
  x, y = _images(8), np.arange(8) % 10
  # Training watches the model's trainable variables only (keras freezes at layer level:
  # tf.Variable.trainable stays True, so a default tape would watch frozen ones too).
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(lm.trainable_variables)
    loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        y, lm(x, training=True), from_logits=True))
  grads = tape.gradient(loss, lm.weights)
  for v, g in zip(lm.weights, grads):
    if id(v) in expected:
      assert g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0, v.name
    else:
      assert g is None, v.name
  # A keras fit step changes exactly the trainable variables.
  before = [v.numpy().copy() for v in lm.weights]
  lm.compile(optimizer=tf.keras.optimizers.SGD(0.1),
             loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  lm.fit(x, y, epochs=1, batch_size=8, verbose=0)
  for v, b in zip(lm.weights, before):
    assert (not np.array_equal(v.numpy(), b)) == (id(v) in expected), v.name


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
