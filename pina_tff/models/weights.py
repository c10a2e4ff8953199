"""Saving and loading backbone weights from a local keras h5 file (`*.weights.h5`).

Files are written by `model.save_weights(path, save_format="h5")` (Keras 2 layout: one
group per top-level layer, attribute `weight_names`). Keras 2 matches the file's layers
to the model's by topological order (layer names are auto-numbered by keras-cv and differ
between processes), so before loading we compare the file's layers with the model's
layers that own weights, position by position, and raise `WeightsError` naming the file
and every mismatched layer (missing/extra layers, weight counts, shapes).

ViT-S/16 ImageNet-21k weights cannot be downloaded here: users supply a local file, e.g.
keras-cv's ViTS16 h5 (with or without the top; pass `skip_head=True` to keep the model's
own head when the file's head has another number of classes, or none).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow as tf

from pina_tff.errors import WeightsError


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def save_backbone_weights(model: tf.keras.Model, path: str) -> str:
  """Writes `model`'s weights to `path` (h5) via `<path>.tmp-<pid>` + rename; returns path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    model.save_weights(tmp, save_format="h5")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _decode(v):
  return v.decode("utf8") if isinstance(v, bytes) else str(v)


def read_h5_layers(path: str) -> list[tuple[str, list[np.ndarray]]]:
  """[(layer name, [weight arrays])] for the file's layers that own weights, in order."""
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightsError(f"weights file {path!r} is not a readable keras h5 file "
                       f"(expected one written by model.save_weights(..., "
                       f"save_format='h5')): {e}") from e
  with f:
    group = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in group.attrs:
      raise WeightsError(f"weights file {path!r} has no 'layer_names' attribute: not a "
                         f"keras h5 weights file")
    layers = []
    for name in (_decode(n) for n in group.attrs["layer_names"]):
      g = group[name]
      weight_names = [_decode(n) for n in g.attrs.get("weight_names", [])]
      if weight_names:
        layers.append((name, [np.asarray(g[w]) for w in weight_names]))
    return layers


def _model_layers(model):
  return [l for l in model.layers if l.weights]


def check_weights_file(model: tf.keras.Model, path: str, skip_head: bool = False):
  """Returns the (file layer, model layer) pairs to load; raises WeightsError on mismatch."""
  if not os.path.exists(path):
    raise WeightsError(f"weights file {path!r} not found (expected a keras h5 file for "
                       f"backbone {model.name!r})")
  file_layers = read_h5_layers(path)
  model_layers = _model_layers(model)
  if skip_head:
    model_layers = model_layers[:-1]
    if len(file_layers) == len(model_layers) + 1:
      file_layers = file_layers[:-1]  # the file's own head, ignored
  problems = []
  n = max(len(file_layers), len(model_layers))
  for i in range(n):
    fl = file_layers[i] if i < len(file_layers) else None
    ml = model_layers[i] if i < len(model_layers) else None
    if fl is None:
      problems.append(f"#{i} model layer {ml.name!r}: missing from the file")
      continue
    if ml is None:
      problems.append(f"#{i} file layer {fl[0]!r}: no such layer in the model")
      continue
    fshapes = [tuple(a.shape) for a in fl[1]]
    mshapes = [tuple(w.shape) for w in ml.weights]
    if fshapes != mshapes:
      problems.append(f"#{i} model layer {ml.name!r} weight shapes {mshapes} != file "
                      f"layer {fl[0]!r} {fshapes}")
  if problems:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"]
                             if len(problems) > 20 else [])
    raise WeightsError(
        f"weights file {path!r} does not fit model {model.name!r} "
        f"({len(file_layers)} layers with weights in the file, {len(model_layers)} in the "
        f"model{', head skipped' if skip_head else ''}); mismatched layers:\n  " +
        "\n  ".join(shown))
  return list(zip(file_layers, model_layers))


def load_backbone_weights(model: tf.keras.Model, path: str, skip_head: bool = False) -> str:
  """Loads `path` into `model` after checking every layer fits; returns the file's sha256.

  With `skip_head`, the model's head (its last layer with weights) keeps its values and a
  head in the file (one extra trailing layer) is ignored.
  """
  pairs = check_weights_file(model, path, skip_head=skip_head)
  for (_, arrays), layer in pairs:
    layer.set_weights(arrays)
  return sha256_file(path)
