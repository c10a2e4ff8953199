"""tff.simulation.datasets.ClientData over prepared data (computations.client_data)."""
import numpy as np
import pytest
import tensorflow as tf

from computations import client_data
from pina_tff.data import beam_prepare
from pina_tff.data import readers
from pina_tff.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp("cd") / "digits"
  beam_prepare.prepare(beam_prepare.PrepareConfig(dataset="digits", output_dir=str(out),
                                                  num_clients=12, num_shards=2))
  return str(out)


def _all(ds):
  return next(iter(ds.batch(1000).as_numpy_iterator()))


def test_client_ids_and_element_type(prepared):
  train, test = client_data.make_train_test(prepared)
  ref = readers.load_clients(prepared)
  assert train.client_ids == ref.client_ids == test.client_ids
  spec = train.element_type_structure
  assert spec["image"] == tf.TensorSpec([8, 8, 1], tf.uint8)
  assert spec["label"] == tf.TensorSpec([], tf.int64)


@pytest.mark.parametrize("validate", [True, False])
def test_datasets_match_the_reader_eager_and_in_graph(prepared, validate):
  train, test = client_data.make_train_test(prepared, validate=validate)
  ref = readers.load_clients(prepared)
  graph_fn = tf.function(train.serializable_dataset_fn)  # the serializable (file) path
  for cid in ref.client_ids[:4]:
    for cd, (x, y) in ((train, ref.train(cid)), (test, ref.test(cid))):
      b = _all(cd.create_tf_dataset_for_client(cid))
      np.testing.assert_array_equal(b["image"], x)
      np.testing.assert_array_equal(b["label"], y)
    b = _all(graph_fn(tf.constant(cid)))
    np.testing.assert_array_equal(b["image"], ref.train(cid)[0])


def test_dataset_computation_builds(prepared):
  train = client_data.make_client_data(prepared, "train", validate=False)
  assert "image=uint8[8,8,1]" in str(train.dataset_computation.type_signature)


def test_errors(prepared, tmp_path):
  with pytest.raises(ConfigError, match="split is 'valid'"):
    client_data.make_client_data(prepared, "valid")
  with pytest.raises(DataError, match="manifest not found"):
    client_data.make_client_data(str(tmp_path))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
