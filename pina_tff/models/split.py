"""Split of the ViT into a frozen prefix and the trainable tail.

* prefix: a keras Model images -> input of the LAST transformer block, [N, T, d]. It is
  run once per example by `pina-embed`, whose cache feeds every later stage.
* tail: the last block (LN1 -> MHA with W_V + s·A B -> residual -> LN2 -> MLP with
  gelu(approximate=True), as keras-cv does -> residual) -> final LayerNorm -> class
  token -> head. `tail_logits_full` computes it in plain TF from numpy weights extracted
  by `extract_tail_weights` (frozen) and a trainable dict
  {'lora_a' [d, r], 'lora_b' [r, d], 'head_kernel' [d, K], 'head_bias' [K]}.
  `pina_tff.models.reduced_tail` computes the same logits on CLS-only features.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf

from pina_tff.models import backbone as bb
from pina_tff.models import lora as lora_lib

FROZEN_KEYS = ("ln1_gamma", "ln1_beta", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo",
               "ln2_gamma", "ln2_beta", "mlp1_w", "mlp1_b", "mlp2_w", "mlp2_b",
               "lnf_gamma", "lnf_beta")


def last_block(model: tf.keras.Model):
  """The last keras-cv TransformerEncoder of a backbone or of a LoRA model."""
  lora_blocks = [l for l in model.layers if isinstance(l, lora_lib.LoRAValueBlock)]
  if lora_blocks:
    return lora_blocks[-1].block
  blocks = bb.transformer_blocks(model)
  if not blocks:
    raise ValueError(f"{model.name} has no TransformerEncoder blocks")
  return blocks[-1]


def _last_block_layer(model):
  lora_blocks = [l for l in model.layers if isinstance(l, lora_lib.LoRAValueBlock)]
  return lora_blocks[-1] if lora_blocks else bb.transformer_blocks(model)[-1]


def build_prefix(model: tf.keras.Model) -> tf.keras.Model:
  """images [N, h, w, c] -> last block input [N, T, d] (shares the model's variables)."""
  prefix = tf.keras.Model(model.input, _last_block_layer(model).input,
                          name=model.name + "_prefix")
  prefix.trainable = False
  return prefix


def extract_tail_weights(model: tf.keras.Model):
  """(TailConfig, frozen) of the model's tail; frozen values are float32 numpy arrays.

  frozen keys (d = width, H heads, hd = d/H, m = MLP dim): 'ln1_gamma','ln1_beta' [d];
  'wq','wk','wv' [d,H,hd]; 'bq','bk','bv' [H,hd]; 'wo' [H,hd,d]; 'bo' [d];
  'ln2_gamma','ln2_beta' [d]; 'mlp1_w' [d,m]; 'mlp1_b' [m]; 'mlp2_w' [m,d]; 'mlp2_b' [d];
  'lnf_gamma','lnf_beta' [d] (the LayerNorm after the last block). The head (trainable)
  comes from `extract_head_weights`; a LoRA model's A, B from `lora.lora_weights`.
  For a LoRA model, `wv` is the frozen base W_V (without s·A B).
  """
  from pina_tff.models.reduced_tail import TailConfig  # pylint: disable=g-import-not-at-top
  blk = last_block(model)
  attn = blk.attn
  lnf = bb.final_layer_norm(model)
  head = bb.head_layer(model)
  f32 = lambda v: np.asarray(v.numpy(), np.float32)  # noqa: E731
  # pylint: disable=protected-access
  frozen = {
      "ln1_gamma": f32(blk.layer_norm1.gamma), "ln1_beta": f32(blk.layer_norm1.beta),
      "wq": f32(attn._query_dense.kernel), "bq": f32(attn._query_dense.bias),
      "wk": f32(attn._key_dense.kernel), "bk": f32(attn._key_dense.bias),
      "wv": f32(attn._value_dense.kernel), "bv": f32(attn._value_dense.bias),
      "wo": f32(attn._output_dense.kernel), "bo": f32(attn._output_dense.bias),
      "ln2_gamma": f32(blk.layer_norm2.gamma), "ln2_beta": f32(blk.layer_norm2.beta),
      "mlp1_w": f32(blk.dense1.kernel), "mlp1_b": f32(blk.dense1.bias),
      "mlp2_w": f32(blk.dense2.kernel), "mlp2_b": f32(blk.dense2.bias),
      "lnf_gamma": f32(lnf.gamma), "lnf_beta": f32(lnf.beta),
  }
  # pylint: enable=protected-access
  eps = {blk.layer_norm1.epsilon, blk.layer_norm2.epsilon, lnf.epsilon}
  if len(eps) != 1:
    raise ValueError(f"tail LayerNorms use different epsilons {sorted(eps)}")
  lora_blocks = [l for l in model.layers if isinstance(l, lora_lib.LoRAValueBlock)]
  config = TailConfig(
      width=int(blk.project_dim), num_heads=int(blk.num_heads), mlp_dim=int(blk.mlp_dim),
      num_classes=int(head.units),
      lora_rank=lora_blocks[0].rank if lora_blocks else 1,
      lora_scale=lora_blocks[0].lora_scale if lora_blocks else 1.0,
      ln_epsilon=float(eps.pop()))
  return config, frozen


def extract_head_weights(model: tf.keras.Model) -> dict[str, np.ndarray]:
  """{'head_kernel': [d, K], 'head_bias': [K]} (float32 numpy)."""
  head = bb.head_layer(model)
  return {"head_kernel": np.asarray(head.kernel.numpy(), np.float32),
          "head_bias": np.asarray(head.bias.numpy(), np.float32)}


def _layer_norm(x, gamma, beta, eps):
  mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta


def tail_block_full(frozen: Mapping[str, tf.Tensor], lora_a, lora_b, x_seq, num_heads: int,
                    ln_eps: float = 1e-6, lora_scale: float = 1.0) -> tf.Tensor:
  """The last block on all tokens: [N, T, d] -> [N, T, d] (before the final LayerNorm)."""
  f = {k: tf.convert_to_tensor(frozen[k], tf.float32) for k in FROZEN_KEYS}
  x_seq = tf.convert_to_tensor(x_seq, tf.float32)
  d = f["wq"].shape[0]
  hd = d // num_heads
  h = _layer_norm(x_seq, f["ln1_gamma"], f["ln1_beta"], ln_eps)
  wv = f["wv"] + tf.reshape(lora_scale * tf.matmul(tf.convert_to_tensor(lora_a, tf.float32),
                                                   tf.convert_to_tensor(lora_b, tf.float32)),
                            [d, num_heads, hd])
  q = (tf.einsum("ntd,dhe->nthe", h, f["wq"]) + f["bq"]) / math.sqrt(hd)
  k = tf.einsum("ntd,dhe->nthe", h, f["wk"]) + f["bk"]
  v = tf.einsum("ntd,dhe->nthe", h, wv) + f["bv"]
  probs = tf.nn.softmax(tf.einsum("nthe,nshe->nhts", q, k), axis=-1)
  o = tf.einsum("nhts,nshe->nthe", probs, v)
  x1 = x_seq + tf.einsum("nthe,hed->ntd", o, f["wo"]) + f["bo"]
  y = _layer_norm(x1, f["ln2_gamma"], f["ln2_beta"], ln_eps)
  y = tf.nn.gelu(tf.einsum("ntd,dm->ntm", y, f["mlp1_w"]) + f["mlp1_b"], approximate=True)
  y = tf.einsum("ntm,md->ntd", y, f["mlp2_w"]) + f["mlp2_b"]
  return x1 + y


def tail_logits_full(frozen: Mapping[str, tf.Tensor], trainable: Mapping[str, tf.Tensor],
                     x_seq, num_heads: int, ln_eps: float = 1e-6,
                     lora_scale: float = 1.0) -> tf.Tensor:
  """Logits [N, K] of the tail on last-block inputs x_seq [N, T, d] (all tokens, exact)."""
  out = tail_block_full(frozen, trainable["lora_a"], trainable["lora_b"], x_seq, num_heads,
                        ln_eps=ln_eps, lora_scale=lora_scale)
  cls = _layer_norm(out[:, 0], tf.convert_to_tensor(frozen["lnf_gamma"], tf.float32),
                    tf.convert_to_tensor(frozen["lnf_beta"], tf.float32), ln_eps)
  return (tf.matmul(cls, tf.convert_to_tensor(trainable["head_kernel"], tf.float32)) +
          tf.convert_to_tensor(trainable["head_bias"], tf.float32))


def initial_trainable(model: tf.keras.Model, rank: int = 1, seed: int = 0) -> dict:
  """Trainable dict at LoRA init for `model`'s head: A0 from `seed`, B0 = 0."""
  blk = last_block(model)
  d = int(blk.project_dim)
  out = {"lora_a": lora_lib.init_lora_a(d, rank, seed),
         "lora_b": np.zeros((rank, d), np.float32)}
  out.update(extract_head_weights(model))
  return out
