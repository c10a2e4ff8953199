"""Raw dataset loaders returning NumPy arrays (no rotation, no partition yet).

Every loader returns a `SourceData`: images uint8 [N, height px, width px, channels]
(values 0..255), labels int64 [N], and optionally

* `writer_ids` (str [N]): a natural client partition (FEMNIST writers);
* `is_test` (bool [N]): a train/test split fixed by the source (FEMNIST);
* `public_images` / `public_labels`: an upright held-out split standing in for the
  backbone's public pre-training data (digits only).

Known sources: `digits` (scikit-learn's bundled 8x8 digits, works offline), `cifar10` and
`fashion_mnist` (TensorFlow Datasets, `data_dir=tfds_data_dir`), `femnist` (TFF's federated
EMNIST, 62 classes; TFF is imported only inside that loader).
"""
import dataclasses
from typing import Callable, Dict, Optional

import numpy as np

from pina_tff.errors import ConfigError, DataError


@dataclasses.dataclass
class SourceData:
  """Arrays of one dataset. Shapes: images [N, H, W, C] uint8, labels [N] int64."""
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  writer_ids: Optional[np.ndarray] = None
  is_test: Optional[np.ndarray] = None
  public_images: Optional[np.ndarray] = None
  public_labels: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts of a known dataset.

  Attributes:
    image_shape: [height px, width px, channels].
    num_classes: number of labels.
    num_clusters: C of the paper's setting (rotations, or natural clusters for FEMNIST).
    default_num_clients: P used when `--num_clients` is not given.
    rotated: True if clusters are made by rotating client images; False for natural
      partitions (FEMNIST), whose true cluster is unknown (-1).
  """
  image_shape: tuple
  num_classes: int
  num_clusters: int
  default_num_clients: int
  rotated: bool = True


DATASETS: Dict[str, DatasetInfo] = {
    "digits": DatasetInfo((8, 8, 1), 10, 4, 100),
    "cifar10": DatasetInfo((32, 32, 3), 10, 2, 10_000),
    "fashion_mnist": DatasetInfo((28, 28, 1), 10, 4, 10_000),
    "femnist": DatasetInfo((28, 28, 1), 62, 2, 10_000, rotated=False),
}


def dataset_info(name: str) -> DatasetInfo:
  """DatasetInfo of `name`; ConfigError listing the known datasets otherwise."""
  if name not in DATASETS:
    raise ConfigError(f"--dataset: unknown dataset {name!r}; expected one of "
                      f"{sorted(DATASETS)}")
  return DATASETS[name]


def check_images(images: np.ndarray, name: str, what: str = "images") -> np.ndarray:
  """DataError unless `images` is [N, *image_shape of name]; returns them as uint8."""
  expected = dataset_info(name).image_shape
  images = np.asarray(images)
  if images.ndim != 4 or tuple(images.shape[1:]) != expected:
    raise DataError(f"{name} source: {what} have shape {list(images.shape)}, expected "
                    f"[N, {', '.join(map(str, expected))}]")
  if images.dtype != np.uint8:
    raise DataError(f"{name} source: {what} have dtype {images.dtype}, expected uint8")
  return images


def _to_uint8_unit(x: np.ndarray) -> np.ndarray:
  """Floats in [0, 1] -> uint8 0..255 (rounded)."""
  return np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def load_digits(seed: int = 0, public_fraction: float = 0.2, **unused) -> SourceData:
  """scikit-learn's 1,797 8x8 digits, values 0..16 rescaled to 0..255 (x * 255 / 16).

  A `public_fraction` of the examples (chosen by `seed`, stratified by nothing) is held out
  upright as the public split; the rest are the federated examples.
  """
  from sklearn.datasets import load_digits as sk_load_digits  # pylint: disable=g-import-not-at-top
  d = sk_load_digits()
  images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int64)
  if not 0.0 <= public_fraction < 1.0:
    raise ConfigError(f"public_fraction is {public_fraction}, expected 0 <= x < 1")
  rng = np.random.default_rng([seed, 1])
  order = rng.permutation(len(labels))
  n_public = int(round(public_fraction * len(labels)))
  pub, fed = np.sort(order[:n_public]), np.sort(order[n_public:])
  return SourceData("digits", check_images(images[fed], "digits"), labels[fed], 10,
                    public_images=check_images(images[pub], "digits", "public images"),
                    public_labels=labels[pub])


def _load_tfds(name: str, tfds_data_dir: Optional[str]) -> SourceData:
  """`train` + `test` splits of a TFDS image dataset, concatenated (train first)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = [], []
  try:
    for split in ("train", "test"):
      ds = tfds.load(name, split=split, as_supervised=True, data_dir=tfds_data_dir,
                     download=True)
      for image, label in tfds.as_numpy(ds.batch(4096)):
        images.append(np.asarray(image))
        labels.append(np.asarray(label).astype(np.int64))
  except Exception as e:  # tfds raises many types (network, missing files, checksum)
    first = str(e).splitlines()[0] if str(e) else ""
    raise DataError(f"tfds dataset {name!r} (data_dir={tfds_data_dir!r}) could not be "
                    f"loaded: {type(e).__name__}: {first}; expected a prepared TFDS "
                    "directory or internet access") from None
  images = np.concatenate(images) if images else np.zeros((0,), np.uint8)
  return SourceData(name, check_images(images, name), np.concatenate(labels),
                    dataset_info(name).num_classes)


def load_cifar10(tfds_data_dir: Optional[str] = None, **unused) -> SourceData:
  """CIFAR-10 via tfds, 60,000 images [32, 32, 3] uint8."""
  return _load_tfds("cifar10", tfds_data_dir)


def load_fashion_mnist(tfds_data_dir: Optional[str] = None, **unused) -> SourceData:
  """Fashion-MNIST via tfds, 70,000 images [28, 28, 1] uint8."""
  return _load_tfds("fashion_mnist", tfds_data_dir)


def _client_data_arrays(client_data, name: str):
  """Iterates a `tff.simulation.datasets.ClientData` into (images, labels, writer_ids)."""
  images, labels, writers = [], [], []
  for cid in sorted(client_data.client_ids):
    ds = client_data.create_tf_dataset_for_client(cid)
    batch = next(iter(ds.batch(1 << 30).as_numpy_iterator()), None)
    if batch is None:
      continue
    pixels = np.asarray(batch["pixels"])
    if pixels.ndim == 3:
      pixels = pixels[..., None]
    images.append(_to_uint8_unit(pixels))
    labels.append(np.asarray(batch["label"]).astype(np.int64))
    writers.append(np.full(len(pixels), cid, dtype=object))
  if not images:
    raise DataError(f"{name} source: no examples found in the TFF client data")
  return np.concatenate(images), np.concatenate(labels), np.concatenate(writers)


def load_femnist(tff_cache_dir: Optional[str] = None, **unused) -> SourceData:
  """TFF's federated EMNIST (62 classes), natural writer partition and split.

  Pixels (floats in [0, 1], TFF's convention) become uint8 round(x * 255), shape
  [28, 28, 1]. The true cluster of a writer is unknown.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  try:
    train, test = tff.simulation.datasets.emnist.load_data(only_digits=False,
                                                           cache_dir=tff_cache_dir)
  except Exception as e:  # download / cache errors of any kind
    raise DataError(f"federated EMNIST (cache_dir={tff_cache_dir!r}) could not be loaded: "
                    f"{type(e).__name__}: {e}; expected internet access or a filled cache"
                    ) from None
  tr_x, tr_y, tr_w = _client_data_arrays(train, "femnist")
  te_x, te_y, te_w = _client_data_arrays(test, "femnist")
  images = check_images(np.concatenate([tr_x, te_x]), "femnist")
  return SourceData("femnist", images, np.concatenate([tr_y, te_y]), 62,
                    writer_ids=np.concatenate([tr_w, te_w]),
                    is_test=np.concatenate([np.zeros(len(tr_y), bool), np.ones(len(te_y), bool)]))


LOADERS: Dict[str, Callable[..., SourceData]] = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "fashion_mnist": load_fashion_mnist,
    "femnist": load_femnist,
}


def load_source(name: str, seed: int = 0, tfds_data_dir: Optional[str] = None,
                tff_cache_dir: Optional[str] = None) -> SourceData:
  """Loads dataset `name` (ConfigError if unknown) and checks its image shape (DataError)."""
  info = dataset_info(name)
  src = LOADERS[name](seed=seed, tfds_data_dir=tfds_data_dir, tff_cache_dir=tff_cache_dir)
  check_images(src.images, name)
  if len(src.labels) != len(src.images):
    raise DataError(f"{name} source: {len(src.images)} images but {len(src.labels)} labels")
  if len(src.labels) and (src.labels.min() < 0 or src.labels.max() >= info.num_classes):
    raise DataError(f"{name} source: labels span {src.labels.min()}..{src.labels.max()}, "
                    f"expected 0..{info.num_classes - 1}")
  return src
