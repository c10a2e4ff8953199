"""Central pre-training of the `digits_tiny` ViT on the upright public split.

Stands in for the ImageNet-21k pre-training of ViT-S/16: the public split of prepared
digits data (`public.tfrecord`, upright, client_id `public`) is shuffled with `seed`, a
held-out fraction (default 20 %) is kept aside, and the whole ViT (backbone + head) is
trained with Adam and sparse softmax cross-entropy on the rest. Writes
`<output>` (keras h5 weights) and `<output minus .weights.h5>.json` (config, accuracy).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf

from pina_tff.data import schema
from pina_tff.errors import DataError
from pina_tff.models import backbone as bb
from pina_tff.models import weights as weights_lib


def load_public_split(clients_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """(images uint8 [N, h, w, c], labels int64 [N], manifest) of the public split."""
  manifest = schema.read_manifest(clients_dir, schema.CLIENTS_FORMAT)
  public = manifest.get("public")
  if not public:
    raise DataError(f"{os.path.join(clients_dir, schema.MANIFEST_NAME)}: no 'public' split; "
                    f"pre-training needs prepared data with an upright public split "
                    f"(digits)")
  path = os.path.join(clients_dir, public["path"])
  shape = manifest["image_shape"]
  images, labels = [], []
  for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
    ex = schema.decode_client_example(rec, shape)
    images.append(ex["image"])
    labels.append(ex["label"])
  if not images:
    raise DataError(f"{path}: public split is empty")
  return np.stack(images), np.asarray(labels, np.int64), manifest


def pretrain(images: np.ndarray, labels: np.ndarray, config: bb.BackboneConfig,
             epochs: int = 30, seed: int = 0, batch_size: int = 32,
             learning_rate: float = 1e-3, holdout_fraction: float = 0.2,
             verbose: int = 0) -> tuple[tf.keras.Model, dict[str, Any]]:
  """Trains a fresh ViT of `config` on (images, labels); returns (model, report)."""
  bb.check_images_shape(config, images.shape, "public split")
  tf.keras.utils.set_random_seed(seed)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(images))
  n_hold = int(round(holdout_fraction * len(images)))
  hold, train = order[:n_hold], order[n_hold:]
  x = images.astype(np.float32)
  model = bb.build_vit(config)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  t0 = time.time()
  hist = model.fit(x[train], labels[train], batch_size=batch_size, epochs=epochs,
                   shuffle=True, verbose=verbose)
  train_s = time.time() - t0
  report = {
      "backbone": config.to_json(),
      "epochs": epochs, "seed": seed, "batch_size": batch_size,
      "learning_rate": learning_rate,
      "num_train": int(len(train)), "num_holdout": int(n_hold),
      "train_accuracy": float(hist.history["accuracy"][-1]),
      "train_seconds": train_s,
  }
  if n_hold:
    logits = model.predict(x[hold], batch_size=256, verbose=0)
    report["holdout_accuracy"] = float(np.mean(np.argmax(logits, -1) == labels[hold]))
  return model, report


def default_output(clients_dir: str, config: bb.BackboneConfig) -> str:
  return os.path.join(clients_dir, "backbone", f"{config.name}.weights.h5")


def report_path(weights_path: str) -> str:
  stem = weights_path[:-len(".weights.h5")] if weights_path.endswith(".weights.h5") else \
      os.path.splitext(weights_path)[0]
  return stem + ".json"


def run_pretrain(clients_dir: str, output: str | None = None, epochs: int = 30,
                 seed: int = 0, backbone: str = "digits_tiny", **kwargs) -> dict[str, Any]:
  """Loads the public split, trains, writes weights + json (tmp then rename)."""
  images, labels, manifest = load_public_split(clients_dir)
  config = bb.get_config(backbone, image_shape=tuple(manifest["image_shape"]),
                         num_classes=int(manifest["num_classes"]))
  model, report = pretrain(images, labels, config, epochs=epochs, seed=seed, **kwargs)
  output = output or default_output(clients_dir, config)
  weights_lib.save_backbone_weights(model, output)
  report["weights_file"] = os.path.abspath(output)
  report["weights_sha256"] = weights_lib.sha256_file(output)
  report["clients_dir"] = os.path.abspath(clients_dir)
  rpath = report_path(output)
  tmp = f"{rpath}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, rpath)
  report["report_file"] = rpath
  return report
