"""Raw dataset loaders returning NumPy arrays (no rotation, no partition yet).

Every loader returns a `SourceData`: images uint8 [N, height px, width px, channels]
(values 0..255), labels int64 [N], and optionally

* `writer_ids` (str [N]): a natural client partition (FEMNIST writers);
* `is_test` (bool [N]): a train/test split fixed by the source (FEMNIST);
* `public_images` / `public_labels`: an upright held-out split standing in for the
  backbone's public pre-training data (digits, fashion_mnist); no client holds it.

Known sources: `digits` (scikit-learn's bundled 8x8 digits, works offline), `cifar10`
(TensorFlow Datasets, `data_dir=tfds_data_dir`), `fashion_mnist` (the four original IDX
files from `source_dir`, else from Debian's package `dataset-fashion-mnist` found in
FASHION_MNIST_SEARCH_DIRS, else TensorFlow Datasets), `femnist` (TFF's federated EMNIST,
62 classes; TFF is imported only inside that loader).
"""
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from pina_tff import rng_streams
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
  origin: Optional[str] = None  # where the arrays came from (recorded in the manifest)


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
  rng = np.random.default_rng([seed, rng_streams.PUBLIC_SPLIT])
  order = rng.permutation(len(labels))
  n_public = int(round(public_fraction * len(labels)))
  pub, fed = np.sort(order[:n_public]), np.sort(order[n_public:])
  return SourceData("digits", check_images(images[fed], "digits"), labels[fed], 10,
                    public_images=check_images(images[pub], "digits", "public images"),
                    public_labels=labels[pub])


def _load_tfds_splits(name: str, tfds_data_dir: Optional[str], extra_hint: str = ""
                      ) -> List[Tuple[np.ndarray, np.ndarray]]:
  """[(images, labels) of `train`, (images, labels) of `test`] of a TFDS image dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = []
  try:
    for split in ("train", "test"):
      ds = tfds.load(name, split=split, as_supervised=True, data_dir=tfds_data_dir,
                     download=True)
      images, labels = [], []
      for image, label in tfds.as_numpy(ds.batch(4096)):
        images.append(np.asarray(image))
        labels.append(np.asarray(label).astype(np.int64))
      out.append((np.concatenate(images) if images else np.zeros((0,), np.uint8),
                  np.concatenate(labels) if labels else np.zeros((0,), np.int64)))
  except Exception as e:  # tfds raises many types (network, missing files, checksum)
    first = str(e).splitlines()[0] if str(e) else ""
    raise DataError(f"tfds dataset {name!r} (data_dir={tfds_data_dir!r}) could not be "
                    f"loaded: {type(e).__name__}: {first}; expected a prepared TFDS "
                    f"directory or internet access{extra_hint}") from None
  return out


def _load_tfds(name: str, tfds_data_dir: Optional[str]) -> SourceData:
  """`train` + `test` splits of a TFDS image dataset, concatenated (train first)."""
  (tr_x, tr_y), (te_x, te_y) = _load_tfds_splits(name, tfds_data_dir)
  images = np.concatenate([tr_x, te_x]) if len(tr_x) or len(te_x) else tr_x
  return SourceData(name, check_images(images, name), np.concatenate([tr_y, te_y]),
                    dataset_info(name).num_classes, origin="tfds")


def load_cifar10(tfds_data_dir: Optional[str] = None, **unused) -> SourceData:
  """CIFAR-10 via tfds, 60,000 images [32, 32, 3] uint8."""
  return _load_tfds("cifar10", tfds_data_dir)


# ------------------------------------------------------------------ Fashion-MNIST
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Where Debian's package `dataset-fashion-mnist` puts the files (`dpkg -L`).
FASHION_MNIST_SEARCH_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"
DEFAULT_PUBLIC_SIZE = 10_000


def _idx_file(directory: str, name: str) -> Optional[str]:
  """`<directory>/<name>` (gzip) or the same name without `.gz` (plain), if present."""
  for cand in (name, name[:-len(".gz")]):
    path = os.path.join(directory, cand)
    if os.path.isfile(path):
      return path
  return None


def find_fashion_mnist_files(source_dir: Optional[str] = None) -> Optional[Dict[str, str]]:
  """Paths of the four Fashion-MNIST IDX files, keyed like FASHION_MNIST_FILES.

  With `source_dir`, the files must be there (DataError naming the missing ones and the
  apt command otherwise). Without it, the first of FASHION_MNIST_SEARCH_DIRS holding all
  four is used; None if none does (the caller falls back to tfds).
  """
  dirs = [source_dir] if source_dir else list(FASHION_MNIST_SEARCH_DIRS)
  for d in dirs:
    found = {k: _idx_file(d, v) for k, v in FASHION_MNIST_FILES.items()}
    if all(found.values()):
      return found
    if source_dir:
      missing = [FASHION_MNIST_FILES[k] for k, v in found.items() if v is None]
      raise DataError(f"--source_dir {source_dir}: missing Fashion-MNIST IDX file(s) "
                      f"{', '.join(missing)}; expected the four files "
                      f"{', '.join(FASHION_MNIST_FILES.values())} (gzip or plain). Install "
                      f"them with `{FASHION_MNIST_APT}` (they land in "
                      f"{FASHION_MNIST_SEARCH_DIRS[0]}) or point --source_dir at a copy")
  return None


def read_fashion_mnist_files(files: Dict[str, str], max_items: Optional[int] = None
                             ) -> List[Tuple[np.ndarray, np.ndarray]]:
  """[(train images uint8 [N, 28, 28, 1], labels int64 [N]), (test ...)] from IDX files.

  DataError naming the file if one is corrupt or its shape/dtype/labels do not fit.
  """
  from pina_tff.data import idx  # pylint: disable=g-import-not-at-top
  out = []
  for split in ("train", "test"):
    ipath, lpath = files[f"{split}_images"], files[f"{split}_labels"]
    images = idx.read_idx(ipath, max_items)
    labels = idx.read_idx(lpath, max_items)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
      raise DataError(f"{ipath}: IDX array is {images.dtype} of shape {list(images.shape)}; "
                      "expected uint8 [N, 28, 28]")
    if labels.ndim != 1 or len(labels) != len(images):
      raise DataError(f"{lpath}: IDX array has shape {list(labels.shape)}; expected [N] "
                      f"with N = {len(images)} as in {ipath}")
    if len(labels) and labels.max() > 9:
      raise DataError(f"{lpath}: labels span {labels.min()}..{labels.max()}, expected 0..9")
    out.append((images[..., None], labels.astype(np.int64)))
  return out


def split_public(name: str, train: Tuple[np.ndarray, np.ndarray],
                 test: Tuple[np.ndarray, np.ndarray], public_size: int, seed: int,
                 origin: Optional[str] = None) -> SourceData:
  """Source of a dataset with a fixed train/test split and an upright public split.

  `public_size` train examples, chosen by a permutation seeded with [seed, 1], form the
  public split (no client holds them). The federated examples are the remaining train
  examples (`is_test` False) followed by every test example (`is_test` True); the
  partition deals both to clients separately, so each client's test examples come from
  the held-out test split.
  """
  (tr_x, tr_y), (te_x, te_y) = train, test
  if not 0 <= public_size < len(tr_y):
    raise ConfigError(f"--public_size is {public_size}; the {name} train split has "
                      f"{len(tr_y)} examples, expected 0 <= x < {len(tr_y)}")
  order = np.random.default_rng([seed, rng_streams.PUBLIC_SPLIT]).permutation(len(tr_y))
  pub, fed = np.sort(order[:public_size]), np.sort(order[public_size:])
  images = check_images(np.concatenate([tr_x[fed], te_x]), name)
  is_test = np.concatenate([np.zeros(len(fed), bool), np.ones(len(te_y), bool)])
  return SourceData(name, images, np.concatenate([tr_y[fed], te_y]),
                    dataset_info(name).num_classes, is_test=is_test,
                    public_images=check_images(tr_x[pub], name, "public images"),
                    public_labels=tr_y[pub], origin=origin)


def load_fashion_mnist(seed: int = 0, source_dir: Optional[str] = None,
                       public_size: int = DEFAULT_PUBLIC_SIZE,
                       tfds_data_dir: Optional[str] = None, **unused) -> SourceData:
  """Fashion-MNIST (60,000 train + 10,000 test images [28, 28, 1] uint8, 10 classes).

  Reads the IDX files from `source_dir`, else from Debian's package location, else
  through tfds. Then `split_public`: `public_size` upright train images are the public
  split; clients hold the other train images as train examples and the 10,000 test
  images as test examples.
  """
  files = find_fashion_mnist_files(source_dir)
  if files is not None:
    train, test = read_fashion_mnist_files(files)
    origin = f"idx:{os.path.dirname(os.path.abspath(files['train_images']))}"
  else:
    hint = (f"; or install the IDX files offline with `{FASHION_MNIST_APT}` (not found in "
            f"{', '.join(FASHION_MNIST_SEARCH_DIRS)}) or pass --source_dir")
    train, test = _load_tfds_splits("fashion_mnist", tfds_data_dir, hint)
    origin = "tfds"
  return split_public("fashion_mnist", train, test, public_size, seed, origin)


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
                tff_cache_dir: Optional[str] = None, **kwargs) -> SourceData:
  """Loads dataset `name` (ConfigError if unknown) and checks its image shape (DataError).

  `kwargs` go to the loader (digits: public_fraction; fashion_mnist: source_dir,
  public_size).
  """
  info = dataset_info(name)
  src = LOADERS[name](seed=seed, tfds_data_dir=tfds_data_dir, tff_cache_dir=tff_cache_dir,
                      **kwargs)
  check_images(src.images, name)
  if len(src.labels) != len(src.images):
    raise DataError(f"{name} source: {len(src.images)} images but {len(src.labels)} labels")
  if len(src.labels) and (src.labels.min() < 0 or src.labels.max() >= info.num_classes):
    raise DataError(f"{name} source: labels span {src.labels.min()}..{src.labels.max()}, "
                    f"expected 0..{info.num_classes - 1}")
  return src
