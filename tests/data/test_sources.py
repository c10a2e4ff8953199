"""Dataset loaders (pina_tff.data.sources) on offline / generated data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pina_tff.data import sources
from pina_tff.errors import ConfigError, DataError
from tests.data.fakes import make_fake_emnist


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
def test_tfds_sources_through_mock_data(tmp_path, name, shape):
  with tfds.testing.mock_data(num_examples=12):
    src = sources.load_source(name, tfds_data_dir=str(tmp_path))
  assert src.images.shape == (24, *shape)  # train + test
  assert src.images.dtype == np.uint8 and src.labels.dtype == np.int64
  assert src.writer_ids is None and src.public_images is None


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


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
