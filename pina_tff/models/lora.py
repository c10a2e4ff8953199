"""LoRA of rank r on the value projection W_V of the LAST attention layer of the ViT.

    W_V' = W_V + reshape(s · A B, [d, H, hd]),   A [d, r], B [r, d]

[project choice] A0 ~ N(0, 1/d), drawn with `numpy.random.default_rng(seed)` from a seed
the server knows (the same draw as `pina_tff.models.reduced_tail.init_lora_a`); B0 = 0,
so the wrapped model equals the backbone exactly at init. s = `lora_scale` (default 1.0,
no alpha/r rescaling). The column index of A B is split into heads as h · hd + e, the
layout of keras' EinsumDense value kernel [d, H, hd].

`build_lora_model` rebuilds the last keras-cv TransformerEncoder as `LoRAValueBlock`,
which calls the original block's own sublayers (LayerNorms, the MultiHeadAttention's
query/key/value/output EinsumDenses and `_compute_attention`, the MLP Denses) in the same
order as `TransformerEncoder.call` / `MultiHeadAttention.call` do, adding only the LoRA
term to the value projection. Only A, B and the classification head are trainable; every
other variable is frozen (`trainable=False`). The LoRA model SHARES its variables with the
backbone it wraps (training its head changes the backbone's head).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from pina_tff.models import backbone as bb


def init_lora_a(width: int, rank: int, seed: int) -> np.ndarray:
  """A0 [d, r] ~ N(0, 1/d) from `numpy.random.default_rng(seed)` ([project choice])."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((width, rank)) / math.sqrt(width)).astype(np.float32)


class LoRAValueBlock(tf.keras.layers.Layer):
  """A keras-cv TransformerEncoder whose value projection carries a rank-r LoRA."""

  def __init__(self, block, rank: int = 1, seed: int = 0, lora_scale: float = 1.0,
               **kwargs):
    kwargs.setdefault("name", "lora_" + block.name)
    super().__init__(**kwargs)
    if rank <= 0:
      raise ValueError(f"LoRA rank must be positive, got {rank}")
    self.block = block
    self.rank = int(rank)
    self.seed = int(seed)
    self.lora_scale = float(lora_scale)
    self.width = int(block.project_dim)
    self.num_heads = int(block.num_heads)
    self.head_dim = self.width // self.num_heads
    self.lora_a = self.add_weight(
        name="lora_a", shape=(self.width, self.rank), dtype=tf.float32,
        initializer=tf.constant_initializer(init_lora_a(self.width, self.rank, self.seed)),
        trainable=True)
    self.lora_b = self.add_weight(
        name="lora_b", shape=(self.rank, self.width), dtype=tf.float32,
        initializer="zeros", trainable=True)

  def delta_value_kernel(self) -> tf.Tensor:
    """s · A B reshaped to the value kernel layout [d, H, hd]."""
    return tf.reshape(self.lora_scale * tf.matmul(self.lora_a, self.lora_b),
                      [self.width, self.num_heads, self.head_dim])

  def call(self, inputs, training=None):
    blk = self.block
    attn = blk.attn
    x = blk.layer_norm1(inputs)
    query = attn._query_dense(x)  # pylint: disable=protected-access
    key = attn._key_dense(x)  # pylint: disable=protected-access
    value = attn._value_dense(x)  # pylint: disable=protected-access
    value = value + tf.einsum("btd,dhe->bthe", x, self.delta_value_kernel())
    out, _ = attn._compute_attention(query, key, value, None, training)  # pylint: disable=protected-access
    out = attn._output_dense(out)  # pylint: disable=protected-access
    x = out + inputs
    y = blk.layer_norm2(x)
    y = blk.dense1(y)
    if blk.activation == tf.keras.activations.gelu:
      y = blk.activation(y, approximate=True)
    else:
      y = blk.activation(y)
    y = blk.dense2(y)
    return x + y


def find_lora_block(model: tf.keras.Model) -> LoRAValueBlock:
  layers = [l for l in model.layers if isinstance(l, LoRAValueBlock)]
  if len(layers) != 1:
    raise ValueError(f"expected one LoRAValueBlock in {model.name}, found {len(layers)}")
  return layers[0]


def build_lora_model(backbone: tf.keras.Model, rank: int = 1, seed: int = 0,
                     lora_scale: float = 1.0) -> tf.keras.Model:
  """images -> logits, with LoRA on the last block's W_V; only LoRA and head trainable.

  Freezes every backbone layer except the head (shared variables; see module docstring).
  """
  blocks = bb.transformer_blocks(backbone)
  if not blocks:
    raise ValueError(f"{backbone.name} has no TransformerEncoder blocks")
  last = blocks[-1]
  head = bb.head_layer(backbone)
  final_ln = bb.final_layer_norm(backbone)
  for layer in backbone.layers:
    layer.trainable = layer is head
  lora_block = LoRAValueBlock(last, rank=rank, seed=seed, lora_scale=lora_scale)
  last.trainable = False  # tracked inside the LoRA block too
  x = lora_block(last.input)
  x = final_ln(x)
  logits = head(x[:, 0])
  return tf.keras.Model(backbone.input, logits, name=backbone.name + "_lora")


def lora_weights(model: tf.keras.Model) -> dict[str, np.ndarray]:
  """{'lora_a': [d, r], 'lora_b': [r, d]} of a LoRA model, as float32 numpy."""
  blk = find_lora_block(model)
  return {"lora_a": blk.lora_a.numpy().astype(np.float32),
          "lora_b": blk.lora_b.numpy().astype(np.float32)}


def set_lora_weights(model: tf.keras.Model, lora_a, lora_b) -> None:
  blk = find_lora_block(model)
  blk.lora_a.assign(np.asarray(lora_a, np.float32))
  blk.lora_b.assign(np.asarray(lora_b, np.float32))


def sketch_size(model: tf.keras.Model) -> int:
  """len(vec(A, B)) = 2·d·r (768 for ViT-S/16 with r = 1)."""
  blk = find_lora_block(model)
  return int(np.prod(blk.lora_a.shape) + np.prod(blk.lora_b.shape))
