"""The frozen ViT backbone: keras-cv's legacy ViT (tf.keras / Keras 2).

Two presets:
  * `vit_s16`: ViT-Small/16 at 224x224x3 (12 blocks, width 384, 6 heads, MLP 1536): the
    paper's backbone. Its ImageNet-21k weights cannot be downloaded here; load them from a
    local file with `pina_tff.models.weights.load_backbone_weights`.
  * `digits_tiny`: 8x8x1 digits, patch 2 (16 patches + class token = 17 tokens), width 64,
    4 heads, 3 blocks, MLP 128 [project choice]: pre-trained centrally on the upright public
    split by `pina-pretrain`.
  * `fmnist_vit`: 28x28x1 Fashion-MNIST, patch 4 (49 patches + class token = 50 tokens),
    width 64, 4 heads, 4 blocks, MLP 128 [project choice]: pre-trained centrally on the
    upright public split (10,000 train images no client holds) by `pina-pretrain`.

`backbone_for_dataset` is the one place that says which preset serves which dataset.

Inputs are raw uint8-range images (0..255) as float; `include_rescaling=True` makes
keras-cv divide by 255, then map [0, 1] to [-1, 1]. Dropout is 0 everywhere (the
backbone is frozen and only ever used for inference or LoRA/head training).

The model returns pre-softmax logits (`classifier_activation=None`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import tensorflow as tf
# Imported at module level on purpose: importing keras-cv (which imports keras_core)
# inside an absl `app.run` main breaks tf.keras functional models afterwards
# ("'SymbolicTensor' object has no attribute 'node'"). Entry points import this module at
# their top, before `app.run`.
from keras_cv.src.layers import TransformerEncoder
from keras_cv.src.models.legacy import vit as kcv_vit

from pina_tff.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Architecture of a keras-cv legacy ViT classifier.

  Attributes:
    name: preset name (also the default weights file stem).
    image_shape: (height, width, channels) of the input images; square.
    patch_size: side of the square patches.
    width: model (projection) width d.
    num_layers: number of transformer blocks.
    num_heads: attention heads H (d must be divisible by H).
    mlp_dim: hidden units of each block's MLP.
    num_classes: K, units of the classification head.
    include_rescaling: divide inputs by 255 first (images are uint8 0..255 here).
  """
  name: str
  image_shape: tuple[int, int, int]
  patch_size: int
  width: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_classes: int
  include_rescaling: bool = True

  def __post_init__(self):
    object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
    self.validate()

  def validate(self) -> None:
    problems = []
    h, w = (self.image_shape + (0, 0))[:2]
    if len(self.image_shape) != 3:
      problems.append(f"image_shape must be (height, width, channels), got {self.image_shape}")
    elif h != w:
      problems.append(f"image_shape must be square (keras-cv patching), got {self.image_shape}")
    elif self.patch_size <= 0 or h % self.patch_size:
      problems.append(f"patch_size {self.patch_size} must divide the image side {h}")
    if self.width <= 0 or self.num_heads <= 0 or self.width % self.num_heads:
      problems.append(f"width {self.width} must be divisible by num_heads {self.num_heads}")
    for field in ("num_layers", "mlp_dim", "num_classes"):
      if getattr(self, field) <= 0:
        problems.append(f"{field} must be positive, got {getattr(self, field)}")
    if problems:
      raise ConfigError(f"invalid backbone config {self.name!r}: " + "; ".join(problems))

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def num_patches(self) -> int:
    return (self.image_shape[0] // self.patch_size) ** 2

  @property
  def num_tokens(self) -> int:
    """T: patches plus the class token."""
    return self.num_patches + 1

  @property
  def embedding_shape(self) -> tuple[int, int]:
    """Shape [T, d] of the last block's input (what `pina-embed` caches per example)."""
    return (self.num_tokens, self.width)

  def replace(self, **changes) -> "BackboneConfig":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["image_shape"] = list(self.image_shape)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "BackboneConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise ConfigError(f"unknown backbone config keys {sorted(unknown)}; "
                        f"expected {sorted(fields)}")
    return cls(**dict(d))


PRESETS: dict[str, BackboneConfig] = {
    "vit_s16": BackboneConfig(name="vit_s16", image_shape=(224, 224, 3), patch_size=16,
                              width=384, num_layers=12, num_heads=6, mlp_dim=1536,
                              num_classes=10, include_rescaling=True),
    "digits_tiny": BackboneConfig(name="digits_tiny", image_shape=(8, 8, 1), patch_size=2,
                                  width=64, num_layers=3, num_heads=4, mlp_dim=128,
                                  num_classes=10, include_rescaling=True),
    "fmnist_vit": BackboneConfig(name="fmnist_vit", image_shape=(28, 28, 1), patch_size=4,
                                 width=64, num_layers=4, num_heads=4, mlp_dim=128,
                                 num_classes=10, include_rescaling=True),
}

# Backbone preset pre-trained on each dataset's public split (pina-pretrain, and the
# automatic pre-train + embed of `population.ensure_embeddings`).
DATASET_BACKBONES: dict[str, str] = {
    "digits": "digits_tiny",
    "fashion_mnist": "fmnist_vit",
}


def backbone_for_dataset(dataset: str) -> str:
  """Name of the backbone preset for prepared data of `dataset` (ConfigError if none)."""
  if dataset not in DATASET_BACKBONES:
    raise ConfigError(f"no backbone preset for dataset {dataset!r}; expected one of "
                      f"{sorted(DATASET_BACKBONES)} (or embed with pina-embed --weights "
                      f"--backbone)")
  return DATASET_BACKBONES[dataset]


def get_config(name: str, **overrides) -> BackboneConfig:
  """A preset by name, optionally with fields replaced (e.g. num_classes, image_shape)."""
  if name not in PRESETS:
    raise ConfigError(f"unknown backbone {name!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def build_vit(config: BackboneConfig, name: str | None = None) -> tf.keras.Model:
  """Builds keras-cv's legacy `ViT` for `config` with random weights and logits output.

  For `vit_s16` this is exactly keras-cv's `ViTS16(include_top=True,
  classifier_activation=None)` (same MODEL_CONFIGS entry, dropout 0).
  """
  config.validate()
  return kcv_vit.ViT(
      include_rescaling=config.include_rescaling,
      include_top=True,
      input_shape=config.image_shape,
      num_classes=config.num_classes,
      patch_size=config.patch_size,
      transformer_layer_num=config.num_layers,
      num_heads=config.num_heads,
      mlp_dropout=0.0,
      attention_dropout=0.0,
      # keras-cv's TransformerEncoder uses gelu(approximate=True) only if it is given
      # exactly this function object.
      activation=tf.keras.activations.gelu,
      project_dim=config.width,
      mlp_dim=config.mlp_dim,
      classifier_activation=None,
      name=name or config.name,
  )


# ---- structure accessors (shared by lora.py / split.py) ----


def transformer_blocks(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
  """The keras-cv TransformerEncoder layers of `model`, in order."""
  return [l for l in model.layers if isinstance(l, TransformerEncoder)]


def final_layer_norm(model: tf.keras.Model) -> tf.keras.layers.LayerNormalization:
  """The LayerNormalization applied after the last block."""
  lns = [l for l in model.layers if isinstance(l, tf.keras.layers.LayerNormalization)]
  if len(lns) != 1:
    raise ValueError(f"expected one top-level LayerNormalization in {model.name}, "
                     f"found {len(lns)}")
  return lns[0]


def head_layer(model: tf.keras.Model) -> tf.keras.layers.Dense:
  """The classification head (the last Dense layer of the model)."""
  dense = [l for l in model.layers if isinstance(l, tf.keras.layers.Dense)]
  if not dense:
    raise ValueError(f"{model.name} has no classification head (include_top=False?)")
  return dense[-1]


def check_images_shape(config: BackboneConfig, shape, where: str = "input") -> None:
  """Raises DataError when images of `shape` ([..., h, w, c]) do not fit the backbone."""
  from pina_tff.errors import DataError  # pylint: disable=g-import-not-at-top
  got = tuple(int(v) for v in tuple(shape)[-3:])
  if got != tuple(config.image_shape):
    raise DataError(f"{where}: images have shape {list(got)} but backbone "
                    f"{config.name!r} expects {list(config.image_shape)} "
                    f"(pick the backbone that matches the prepared data, or re-prepare it)")
