"""The trainable tail of the ViT, reduced exactly to what the class token needs.

Only LoRA on the last block's value projection W_V and the classification head are
trainable, and the head reads only the class token. The last block's attention
probabilities depend on W_Q, W_K and LN1 only, so they are frozen, and the class
token's output is exactly

    x1 = x_cls + sum_h (z_h (W_V,h + s (A B)_h) + b_V,h) W_O,h + b_O
    x2 = x1 + MLP(LN2(x1));   logits = LN_f(x2) @ W_head + b_head,

with z_h = softmax(q_cls k^T / sqrt(hd))_h . LN1(x) frozen per example. We precompute per
example (once, frozen): `x_base` = x_cls + sum_h (z_h W_V,h + b_V,h) W_O,h + b_O   [d]
and `z`  [H, d]. The LoRA term then costs 2·H·d·r per example plus r·d² per step,
and the MLP dominates. No approximation is made: tests compare against the full block.

Frozen weights use the keys documented in `docs/architecture.md` (numpy or tf float32):
'ln1_gamma','ln1_beta','wq','bq','wk','bk','wv','bv','wo','bo','ln2_gamma','ln2_beta',
'mlp1_w','mlp1_b','mlp2_w','mlp2_b','lnf_gamma','lnf_beta'.
Trainable parameters: {'lora_a': [d, r], 'lora_b': [r, d], 'head_kernel': [d, K],
'head_bias': [K]}, each optionally with one leading axis S (one set per simulated
client of a shard) matching the features' leading axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import tensorflow as tf

TRAINABLE_KEYS = ("lora_a", "lora_b", "head_kernel", "head_bias")
FROZEN_KEYS = ("ln1_gamma", "ln1_beta", "wq", "bq", "wk", "bk", "wv", "bv", "wo",
               "bo", "ln2_gamma", "ln2_beta", "mlp1_w", "mlp1_b", "mlp2_w", "mlp2_b",
               "lnf_gamma", "lnf_beta")


@dataclasses.dataclass(frozen=True)
class TailConfig:
  """Static shape of the tail.

  Attributes:
    width: model width d.
    num_heads: attention heads H (head dim d / H).
    mlp_dim: hidden units m of the block MLP.
    num_classes: K.
    lora_rank: r (PINA uses 1).
    lora_scale: s in W_V + s·A·B ([project choice] 1.0: no alpha/r rescaling).
    ln_epsilon: LayerNorm epsilon of the block norms and the final norm (keras-cv: 1e-6).
  """
  width: int
  num_heads: int
  mlp_dim: int
  num_classes: int
  lora_rank: int = 1
  lora_scale: float = 1.0
  ln_epsilon: float = 1e-6

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def lora_size(self) -> int:
    """Length of vec(A, B): the stage-1 sketch length (768 for ViT-S/16, r = 1)."""
    return 2 * self.width * self.lora_rank

  def frozen_shapes(self) -> dict[str, tuple[int, ...]]:
    """Shape of every frozen tail weight, keyed as in `FROZEN_KEYS`."""
    d, h, hd, m = self.width, self.num_heads, self.head_dim, self.mlp_dim
    return {"ln1_gamma": (d,), "ln1_beta": (d,), "wq": (d, h, hd), "bq": (h, hd),
            "wk": (d, h, hd), "bk": (h, hd), "wv": (d, h, hd), "bv": (h, hd),
            "wo": (h, hd, d), "bo": (d,), "ln2_gamma": (d,), "ln2_beta": (d,),
            "mlp1_w": (d, m), "mlp1_b": (m,), "mlp2_w": (m, d), "mlp2_b": (d,),
            "lnf_gamma": (d,), "lnf_beta": (d,)}

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    d, r, k = self.width, self.lora_rank, self.num_classes
    return {"lora_a": (d, r), "lora_b": (r, d), "head_kernel": (d, k), "head_bias": (k,)}

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(s)) for s in self.param_shapes().values())


def init_lora_a(config: TailConfig, seed: int) -> np.ndarray:
  """A0 ~ N(0, 1/d) from a seed the server knows ([project choice]); shape [d, r]."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((config.width, config.lora_rank)) /
          math.sqrt(config.width)).astype(np.float32)


def init_trainable(config: TailConfig, lora_seed: int, head_kernel=None,
                   head_bias=None) -> dict[str, np.ndarray]:
  """Initial trainable parameters: A0 from `lora_seed`, B0 = 0, the given head (or zeros)."""
  d, r, k = config.width, config.lora_rank, config.num_classes
  return {
      "lora_a": init_lora_a(config, lora_seed),
      "lora_b": np.zeros((r, d), np.float32),
      "head_kernel": (np.zeros((d, k), np.float32) if head_kernel is None
                      else np.asarray(head_kernel, np.float32)),
      "head_bias": (np.zeros((k,), np.float32) if head_bias is None
                    else np.asarray(head_bias, np.float32)),
  }


def _layer_norm(x, gamma, beta, eps):
  mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta


def _gelu(x):
  # keras-cv's TransformerEncoder calls keras.activations.gelu(approximate=True).
  return tf.nn.gelu(x, approximate=True)


def check_frozen(frozen: Mapping[str, np.ndarray], config: TailConfig) -> None:
  """Raises ValueError naming missing keys or wrong shapes of the frozen tail weights."""
  problems = []
  for key, shape in config.frozen_shapes().items():
    if key not in frozen:
      problems.append(f"{key}: missing")
    elif tuple(np.shape(frozen[key])) != shape:
      problems.append(f"{key}: expected {shape}, found {tuple(np.shape(frozen[key]))}")
  if problems:
    raise ValueError("frozen tail weights do not fit the tail config: " +
                     "; ".join(problems))


def reduce_block_input(config: TailConfig, frozen: Mapping[str, np.ndarray],
                       x_seq) -> dict[str, tf.Tensor]:
  """Reduces last-block inputs [N, T, d] to frozen features {'x_base': [N, d], 'z': [N, H, d]}.

  Exact (no approximation): see the module docstring. Runs once per example.
  """
  f = {k: tf.convert_to_tensor(frozen[k], tf.float32) for k in FROZEN_KEYS}
  x_seq = tf.convert_to_tensor(x_seq, tf.float32)
  h = _layer_norm(x_seq, f["ln1_gamma"], f["ln1_beta"], config.ln_epsilon)
  q_cls = tf.einsum("nd,dhe->nhe", h[:, 0], f["wq"]) + f["bq"]
  q_cls = q_cls / math.sqrt(config.head_dim)
  k = tf.einsum("ntd,dhe->nthe", h, f["wk"]) + f["bk"]
  probs = tf.nn.softmax(tf.einsum("nhe,nthe->nht", q_cls, k), axis=-1)
  z = tf.einsum("nht,ntd->nhd", probs, h)
  v_base = tf.einsum("nhd,dhe->nhe", z, f["wv"]) + f["bv"]
  x_base = x_seq[:, 0] + tf.einsum("nhe,hed->nd", v_base, f["wo"]) + f["bo"]
  return {"x_base": x_base, "z": z}


def block_output(config: TailConfig, frozen: Mapping[str, tf.Tensor], lora_a, lora_b,
                 features: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Final-normed class-token representation [..., N, d] (the head's input).

  `lora_a` [..., d, r] and `lora_b` [..., r, d] may carry a leading client axis S that
  matches features [S, N, ...]; without it they are shared by all examples.

  Precision: the matmuls run in the dtype of ``features['z']`` (float32, or bfloat16
  for `pina_tff.training.precision`); the residual stream (`x_base` plus the block's
  outputs) and both LayerNorms stay float32 and the result has z's dtype. With
  float32 z every cast below is the identity (`tf.cast` returns its input).
  """
  h, hd = config.num_heads, config.head_dim
  z, x_base = features["z"], features["x_base"]
  dt = tf.as_dtype(z.dtype)
  wo = _as(frozen["wo"], dt)
  lora_a, lora_b = tf.cast(lora_a, dt), tf.cast(lora_b, dt)
  lora_b_heads = tf.reshape(lora_b, tf.concat([tf.shape(lora_b)[:-1], [h, hd]], 0))
  # M[r, h, d] = sum_e B[r, h, e] W_O[h, e, d]: the rank-r LoRA path through W_O.
  m = tf.einsum("...rhe,hed->...rhd", lora_b_heads, wo) * config.lora_scale
  za = tf.einsum("...nhd,...dr->...nhr", z, lora_a)
  x1 = tf.cast(x_base, tf.float32) + tf.cast(tf.einsum("...nhr,...rhd->...nd", za, m),
                                             tf.float32)
  y = tf.cast(_layer_norm(x1, frozen["ln2_gamma"], frozen["ln2_beta"],
                          config.ln_epsilon), dt)
  y = _gelu(_dense(y, _as(frozen["mlp1_w"], dt)) + _as(frozen["mlp1_b"], dt))
  y = _dense(y, _as(frozen["mlp2_w"], dt)) + _as(frozen["mlp2_b"], dt)
  return tf.cast(_layer_norm(x1 + tf.cast(y, tf.float32), frozen["lnf_gamma"],
                             frozen["lnf_beta"], config.ln_epsilon), dt)


def _dense(x, w):
  """x [..., k] @ w [k, m] -> [..., m]: the shared (frozen) MLP weights applied to
  every client's examples. In bfloat16 as one 2-D `tf.matmul` over all rows (oneDNN's
  bfloat16 GEMM: 2-3x TF's `Einsum`, which does not reach it); float32 keeps the
  `Einsum` it always ran (bit for bit the results before the precision option)."""
  if x.dtype != tf.bfloat16:
    return tf.einsum("...nd,dm->...nm", x, w)
  k, m = int(w.shape[0]), int(w.shape[1])
  lead = tf.shape(x)[:-1]
  out = tf.matmul(tf.reshape(x, [-1, k]), w)
  return tf.reshape(out, tf.concat([lead, [m]], 0))


def _as(x, dtype):
  """``x`` as a tensor of ``dtype`` (a float32 tensor given for float32 is returned
  as it is; numpy float32 weights become constants, then cast)."""
  if not isinstance(x, tf.Tensor):
    x = tf.convert_to_tensor(x, tf.float32)
  return tf.cast(x, dtype)


def head_logits(head_kernel, head_bias, head_input) -> tf.Tensor:
  """Logits [..., N, K] from the head input [..., N, d]; params may carry a leading S axis.
  Computed in the head input's dtype (the parameters are cast to it)."""
  dt = tf.as_dtype(head_input.dtype) if isinstance(head_input, tf.Tensor) else None
  if dt is not None:
    head_kernel, head_bias = tf.cast(head_kernel, dt), tf.cast(head_bias, dt)
  return (tf.einsum("...nd,...dk->...nk", head_input, head_kernel) +
          tf.expand_dims(head_bias, -2))


def tail_logits_reduced(config: TailConfig, frozen: Mapping[str, tf.Tensor],
                        trainable: Mapping[str, tf.Tensor],
                        features: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Logits [..., N, K] of the tail on reduced features (see module docstring)."""
  out = block_output(config, frozen, trainable["lora_a"], trainable["lora_b"], features)
  return head_logits(trainable["head_kernel"], trainable["head_bias"], out)


def frozen_to_tensors(frozen: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
  """The frozen weights as float32 constants (shared by every client and cluster)."""
  return {k: tf.constant(np.asarray(frozen[k], np.float32)) for k in FROZEN_KEYS}
