"""Dataset loaders (pina_tff.data.sources) on offline / generated data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pina_tff.data import sources
from pina_tff.errors import ConfigError, DataError
from tests.data.fakes import make_fake_emnist, write_fake_fashion_mnist


def test_digits_shapes_values_and_public_split():
  src = sources.load_source("digits", seed=0)
  assert src.images.dtype == np.uint8 and src.images.shape[1:] == (8, 8, 1)
  assert src.labels.dtype == np.int64
  assert src.images.max() == 255 and src.images.min() == 0
  n_pub, n_fed = len(src.public_labels), len(src.labels)
  assert n_pub + n_fed == 1797 and n_pub == round(0.2 * 1797)
  # Fixed by seed, different for another seed.
  again = sources.load_source("digits", seed=0)
  np.testing.assert_array_equal(again.public_images, src.public_images)
  other = sources.load_source("digits", seed=1)
  assert not np.array_equal(other.public_labels, src.public_labels)


def test_digits_rescaling_matches_sklearn():
  from sklearn.datasets import load_digits
  raw = load_digits().images
  src = sources.load_digits(seed=0, public_fraction=0.0)
  np.testing.assert_array_equal(src.images[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*cifar10.*digits"):
    sources.load_source("mnist")


def test_wrong_image_shape_is_a_data_error():
  with pytest.raises(DataError, match=r"shape \[3, 8, 8\], expected \[N, 8, 8, 1\]"):
    sources.check_images(np.zeros((3, 8, 8), np.uint8), "digits")
  with pytest.raises(DataError, match="dtype float32, expected uint8"):
    sources.check_images(np.zeros((3, 8, 8, 1), np.float32), "digits")


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)),
                                         ("fashion_mnist", (28, 28, 1))])
def test_tfds_sources_through_mock_data(tmp_path, name, shape, monkeypatch):
  monkeypatch.setattr(sources, "FASHION_MNIST_SEARCH_DIRS", (str(tmp_path / "none"),))
  with tfds.testing.mock_data(num_examples=12):
    src = sources.load_source(name, tfds_data_dir=str(tmp_path), public_size=0)
  assert src.images.shape == (24, *shape)  # train + test
  assert src.images.dtype == np.uint8 and src.labels.dtype == np.int64
  assert src.writer_ids is None
  assert src.public_images is None or len(src.public_images) == 0


def test_tfds_wrong_shape_from_source(tmp_path, monkeypatch):
  """A source that yields the wrong image shape is a DataError naming the dataset."""
  monkeypatch.setitem(sources.DATASETS, "cifar10",
                      sources.DatasetInfo((28, 28, 3), 10, 2, 10_000))
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(DataError, match="cifar10 source: images have shape"):
      sources.load_source("cifar10", tfds_data_dir=str(tmp_path))


def test_femnist_through_fake_tff_loader(monkeypatch):
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  train_cd, test_cd, train, test = make_fake_emnist()
  calls = []

  def fake_load_data(only_digits=True, cache_dir=None):
    calls.append((only_digits, cache_dir))
    return train_cd, test_cd
  monkeypatch.setattr(tff.simulation.datasets.emnist, "load_data", fake_load_data)
  src = sources.load_source("femnist", tff_cache_dir="/cache")
  assert calls == [(False, "/cache")]
  assert src.images.shape == (6 * 7, 28, 28, 1) and src.num_classes == 62
  assert src.is_test.sum() == 12 and len(set(src.writer_ids)) == 6
  w = "f0000_00"
  sel = (src.writer_ids == w) & ~src.is_test
  np.testing.assert_array_equal(
      src.images[sel][..., 0], np.rint(train[w]["pixels"] * 255).astype(np.uint8))
  np.testing.assert_array_equal(src.labels[sel], train[w]["label"])


# ------------------------------------------------------------------ Fashion-MNIST


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx_dir_public_split(tmp_path, compress):
  arrays = write_fake_fashion_mnist(str(tmp_path), num_train=40, num_test=12,
                                    compress=compress)
  (tr_x, tr_y), (te_x, te_y) = arrays["train"], arrays["test"]
  src = sources.load_source("fashion_mnist", seed=5, source_dir=str(tmp_path),
                            public_size=10)
  assert src.origin == f"idx:{tmp_path}"
  # Reference: the same seeded permutation written out here.
  order = np.random.default_rng([5, 1]).permutation(40)
  pub, fed = np.sort(order[:10]), np.sort(order[10:])
  np.testing.assert_array_equal(src.public_images[..., 0], tr_x[pub])
  np.testing.assert_array_equal(src.public_labels, tr_y[pub])
  assert src.images.shape == (30 + 12, 28, 28, 1) and src.labels.dtype == np.int64
  np.testing.assert_array_equal(src.is_test, [False] * 30 + [True] * 12)
  np.testing.assert_array_equal(src.images[:30, ..., 0], tr_x[fed])
  np.testing.assert_array_equal(src.images[30:, ..., 0], te_x)
  np.testing.assert_array_equal(src.labels, np.concatenate([tr_y[fed], te_y]))
  # No federated example is a public one (train ids are in pixel [0, 0]).
  fed_ids = set(src.images[:30, 0, 0, 0].tolist())
  assert len(fed_ids) == 30 and not fed_ids & set(src.public_images[:, 0, 0, 0].tolist())


def test_fashion_mnist_found_in_package_dir_without_source_dir(tmp_path, monkeypatch):
  write_fake_fashion_mnist(str(tmp_path / "pkg"), num_train=20, num_test=4)
  monkeypatch.setattr(sources, "FASHION_MNIST_SEARCH_DIRS",
                      (str(tmp_path / "none"), str(tmp_path / "pkg")))
  src = sources.load_fashion_mnist(seed=0, public_size=5)
  assert src.origin == f"idx:{tmp_path / 'pkg'}" and len(src.public_labels) == 5


def test_fashion_mnist_falls_back_to_tfds(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "FASHION_MNIST_SEARCH_DIRS", (str(tmp_path / "none"),))
  with tfds.testing.mock_data(num_examples=12):
    src = sources.load_source("fashion_mnist", tfds_data_dir=str(tmp_path), public_size=4)
  assert src.origin == "tfds"
  assert src.images.shape == (8 + 12, 28, 28, 1) and src.public_images.shape == (4, 28, 28, 1)
  assert src.is_test.sum() == 12


def test_fashion_mnist_tfds_failure_mentions_apt(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "FASHION_MNIST_SEARCH_DIRS", (str(tmp_path / "none"),))
  monkeypatch.setattr(tfds, "load", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
    sources.load_fashion_mnist(tfds_data_dir=str(tmp_path))


def test_fashion_mnist_missing_files_in_source_dir(tmp_path):
  write_fake_fashion_mnist(str(tmp_path), num_train=8, num_test=2)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataError) as e:
    sources.load_fashion_mnist(source_dir=str(tmp_path), public_size=2)
  msg = str(e.value)
  assert f"--source_dir {tmp_path}: missing Fashion-MNIST IDX file(s) " \
         "t10k-labels-idx1-ubyte.gz;" in msg
  assert "apt-get install dataset-fashion-mnist" in msg


def test_fashion_mnist_bad_files(tmp_path):
  write_fake_fashion_mnist(str(tmp_path), num_train=8, num_test=2)
  labels = tmp_path / "train-labels-idx1-ubyte.gz"
  data = labels.read_bytes()
  labels.write_bytes(data[:len(data) - 6])  # truncated gzip stream
  with pytest.raises(DataError, match=f"{labels}: (corrupt|truncated) IDX file"):
    sources.load_fashion_mnist(source_dir=str(tmp_path), public_size=2)
  from pina_tff.data import idx  # pylint: disable=g-import-not-at-top
  idx.write_idx(str(labels), np.zeros(7, np.uint8))  # 7 labels for 8 images
  with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: IDX array has shape "
                     r"\[7\]; expected \[N\] with N = 8"):
    sources.load_fashion_mnist(source_dir=str(tmp_path), public_size=2)
  with pytest.raises(ConfigError, match="--public_size is 8; the fashion_mnist train split "
                     "has 8 examples"):
    write_fake_fashion_mnist(str(tmp_path), num_train=8, num_test=2)
    sources.load_fashion_mnist(source_dir=str(tmp_path), public_size=8)


_PKG = sources.FASHION_MNIST_SEARCH_DIRS[0]


@pytest.mark.skipif(sources.find_fashion_mnist_files() is None,
                    reason=f"Debian package dataset-fashion-mnist not installed (no IDX files "
                           f"in {_PKG}); `make data` installs it")
def test_real_fashion_mnist_package():
  from pina_tff.data import idx  # pylint: disable=g-import-not-at-top
  files = sources.find_fashion_mnist_files()
  dims = {k: idx.read_idx_header(p) for k, p in files.items()}
  assert dims["train_images"] == (np.dtype(np.uint8), (60000, 28, 28))
  assert dims["test_images"] == (np.dtype(np.uint8), (10000, 28, 28))
  tr_x = idx.read_idx(files["train_images"], max_items=64)[..., None]
  tr_y = idx.read_idx(files["train_labels"])
  te_y = idx.read_idx(files["test_labels"])
  # The published dataset is balanced: 6,000 / 1,000 examples of each of 10 classes.
  np.testing.assert_array_equal(np.bincount(tr_y), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(te_y), [1000] * 10)
  # First labels of the published files (Fashion-MNIST README: 9 = ankle boot, ...).
  np.testing.assert_array_equal(tr_y[:5], [9, 0, 0, 3, 0])
  np.testing.assert_array_equal(te_y[:5], [9, 2, 1, 1, 6])
  assert tr_x.shape == (64, 28, 28, 1) and tr_x.max() == 255 and tr_x.min() == 0
  # The reader's slice equals the loader's full read of the same file.
  head = sources.read_fashion_mnist_files(files, max_items=64)
  np.testing.assert_array_equal(head[0][0], tr_x)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
