"""Models the shard-vectorized client work can train.

A model here is a pure function of (parameters, features): parameters may carry a
leading client axis S, so one graph trains S simulated clients at once, each with its
own copy. Two models:

* `ViTTailModel`: the reduced ViT-S tail (LoRA on the last W_V + head), see
  `pina_tff.models.reduced_tail`. Features {'x_base': [.., N, d], 'z': [.., N, H, d]}.
* `LinearModel`: a linear classifier on fixed features {'x': [.., N, d]} (the benchmark's
  "head workload" and the stage-0 head warm-up on frozen embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import tensorflow as tf

from pina_tff.models import reduced_tail as rt

LORA_KEYS = ("lora_a", "lora_b")
HEAD_KEYS = ("head_kernel", "head_bias")


class ViTTailModel:
  """Reduced ViT tail with LoRA rank r on the last value projection and a linear head."""

  def __init__(self, config: rt.TailConfig, frozen: Mapping[str, np.ndarray]):
    rt.check_frozen(frozen, config)
    self.config = config
    self._frozen_np = {k: np.asarray(frozen[k], np.float32) for k in rt.FROZEN_KEYS}

  @property
  def frozen(self) -> dict[str, np.ndarray]:
    """The frozen tail weights {name: float32 array} (copies)."""
    return {k: v.copy() for k, v in self._frozen_np.items()}

  @property
  def param_keys(self) -> tuple[str, ...]:
    return rt.TRAINABLE_KEYS

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    return self.config.param_shapes()

  @property
  def feature_keys(self) -> tuple[str, ...]:
    return ("x_base", "z")

  def feature_shapes(self) -> dict[str, tuple[int, ...]]:
    c = self.config
    return {"x_base": (c.width,), "z": (c.num_heads, c.width)}

  def _frozen(self, dtype=tf.float32):
    """The frozen weights as constants (created inside whichever graph is being
    traced): matrices and biases in ``dtype``, LayerNorm parameters float32 (the
    LayerNorms run in float32 whatever the precision)."""
    dtype = tf.as_dtype(dtype)
    return {k: tf.constant(v, dtype=tf.float32 if k.startswith("ln") else dtype)
            for k, v in self._frozen_np.items()}

  def compute_features(self, features, dtype):
    """Features for arithmetic in ``dtype``: `z` (and a precomputed `head_input`) cast,
    `x_base` (the residual stream, added in float32) kept as it is."""
    return {k: v if k == "x_base" else tf.cast(v, dtype) for k, v in features.items()}

  def _compute_dtype(self, features):
    return features["head_input" if "head_input" in features else "z"].dtype

  def precompute(self, params, features, train_keys):
    """Folds parameters that will not train into the features (done once per client)."""
    if any(k in train_keys for k in LORA_KEYS):
      return features
    head_input = rt.block_output(self.config, self._frozen(self._compute_dtype(features)),
                                 params["lora_a"], params["lora_b"], features)
    return {"head_input": head_input}

  def logits(self, params, features):
    """Logits in the features' compute dtype (float32 features: float32 throughout)."""
    if "head_input" in features:
      h = features["head_input"]
    else:
      h = rt.block_output(self.config, self._frozen(self._compute_dtype(features)),
                          params["lora_a"], params["lora_b"], features)
    return rt.head_logits(params["head_kernel"], params["head_bias"], h)


@dataclasses.dataclass(frozen=True)
class LinearModel:
  """Linear classifier logits = x W + b on fixed features {'x': [.., N, d]}."""
  input_dim: int
  num_classes: int

  @property
  def param_keys(self) -> tuple[str, ...]:
    return HEAD_KEYS

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    return {"head_kernel": (self.input_dim, self.num_classes),
            "head_bias": (self.num_classes,)}

  @property
  def feature_keys(self) -> tuple[str, ...]:
    return ("x",)

  def feature_shapes(self) -> dict[str, tuple[int, ...]]:
    return {"x": (self.input_dim,)}

  def compute_features(self, features, dtype):
    """Features for arithmetic in ``dtype`` (the head's matmul)."""
    return {k: tf.cast(v, dtype) for k, v in features.items()}

  def precompute(self, params, features, train_keys):
    del params, train_keys
    return features

  def logits(self, params, features):
    return rt.head_logits(params["head_kernel"], params["head_bias"], features["x"])


def flatten(params: Mapping[str, tf.Tensor], keys, lead_dims: int = 0) -> tf.Tensor:
  """Concatenates params[keys] into one vector per leading index: [*lead, P]."""
  parts = []
  for k in keys:
    t = tf.convert_to_tensor(params[k])
    lead = tf.shape(t)[:lead_dims]
    parts.append(tf.reshape(t, tf.concat([lead, [-1]], 0)))
  return tf.concat(parts, axis=-1)


def unflatten(vec: tf.Tensor, shapes: Mapping[str, tuple[int, ...]], keys,
              lead_shape=()) -> dict[str, tf.Tensor]:
  """Inverse of `flatten` for the given keys and parameter shapes."""
  out, start = {}, 0
  for k in keys:
    size = int(np.prod(shapes[k]))
    out[k] = tf.reshape(vec[..., start:start + size], list(lead_shape) + list(shapes[k]))
    start += size
  return out


def vector_size(shapes: Mapping[str, tuple[int, ...]], keys) -> int:
  """Length P of the flattened vector of `keys`."""
  return int(sum(int(np.prod(shapes[k])) for k in keys))
