"""The Beam prepare job end to end on the local runner (pina_tff.data.beam_prepare)."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pina_tff.data import beam_prepare
from pina_tff.data import partition
from pina_tff.data import readers
from pina_tff.data import schema
from pina_tff.data import sources
from pina_tff.errors import ConfigError
from tests.data.fakes import make_fake_emnist


def _prepare(out, **kw):
  kw.setdefault("dataset", "digits")
  kw.setdefault("num_clients", 20)
  return beam_prepare.prepare(beam_prepare.PrepareConfig(output_dir=str(out), **kw))


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("prep") / "digits"
  _prepare(out, num_shards=3, seed=0)
  return out


def _files(d):
  return {f: (d / f).read_bytes() for f in sorted(os.listdir(d))}


def test_digits_end_to_end(digits_dir):
  m = json.loads((digits_dir / "manifest.json").read_text())
  assert m["format"] == "pina-clients/1" and m["num_clients"] == 20
  assert [s["path"] for s in m["shards"]] == [
      f"clients-0000{i}-of-00003.tfrecord" for i in range(3)]
  assert m["rotations_deg"] == [0, 90, 180, 270] and m["image_shape"] == [8, 8, 1]
  assert sorted(os.listdir(digits_dir)) == sorted(
      ["manifest.json", "public.tfrecord"] + [s["path"] for s in m["shards"]])
  ds = readers.load_clients(str(digits_dir))
  assert ds.num_clients == 20 and len(ds.labels) == sum(s["num_records"] for s in m["shards"])
  assert ds.public[0].shape == (m["public"]["num_records"], 8, 8, 1)
  # No temporary directory left next to the output.
  assert not [p for p in os.listdir(digits_dir.parent) if ".tmp-" in p]


def test_rotation_and_labels_match_the_source(digits_dir):
  src = sources.load_source("digits", seed=0)
  plans, _ = partition.make_plan(src, 20, 4, seed=0)
  ds = readers.load_clients(str(digits_dir))
  for p in plans:
    assert ds.cluster(p.client_id) == p.cluster
    x, y = ds.train(p.client_id)
    np.testing.assert_array_equal(x, np.rot90(src.images[p.train_idx], p.cluster, axes=(1, 2)))
    np.testing.assert_array_equal(y, src.labels[p.train_idx])
    x, y = ds.test(p.client_id)
    np.testing.assert_array_equal(x, np.rot90(src.images[p.test_idx], p.cluster, axes=(1, 2)))
  # The public split is upright and unchanged.
  np.testing.assert_array_equal(ds.public[0], src.public_images)
  np.testing.assert_array_equal(ds.public[1], src.public_labels)


def test_same_seed_gives_identical_bytes(digits_dir, tmp_path):
  _prepare(tmp_path / "again", num_shards=3, seed=0)
  assert _files(tmp_path / "again") == _files(digits_dir)
  _prepare(tmp_path / "other", num_shards=3, seed=1)
  assert _files(tmp_path / "other") != _files(digits_dir)


def test_crash_mid_run_publishes_nothing(tmp_path, monkeypatch):
  def boom(kv, directory):
    raise RuntimeError("simulated worker crash")
  monkeypatch.setattr(beam_prepare, "_write_shard", boom)
  out = tmp_path / "crash"
  with pytest.raises(Exception, match="simulated worker crash"):
    _prepare(out)
  assert not out.exists()
  assert os.listdir(tmp_path) == []


def test_crash_in_driver_after_pipeline_publishes_nothing(tmp_path, monkeypatch):
  def boom(directory, manifest):
    raise OSError("disk full")
  monkeypatch.setattr(schema, "write_manifest", boom)
  with pytest.raises(OSError, match="disk full"):
    _prepare(tmp_path / "crash")
  assert os.listdir(tmp_path) == []


def test_existing_output_needs_overwrite(digits_dir, tmp_path):
  out = tmp_path / "out"
  _prepare(out, num_clients=10)
  with pytest.raises(ConfigError, match="already exists.*--overwrite"):
    _prepare(out, num_clients=12)
  assert json.loads((out / "manifest.json").read_text())["num_clients"] == 10
  _prepare(out, num_clients=12, overwrite=True)
  assert json.loads((out / "manifest.json").read_text())["num_clients"] == 12
  other = tmp_path / "not_prepared"
  other.mkdir()
  (other / "precious.txt").write_text("keep me")
  with pytest.raises(ConfigError, match="no manifest.json"):
    _prepare(other, overwrite=True)
  assert (other / "precious.txt").exists()


@pytest.mark.parametrize("flag, value, match", [
    ("dataset", "mnist", "unknown dataset"), ("num_clients", 0, "--num_clients"),
    ("num_clusters", 3, "--num_clusters is 3"), ("test_fraction", 1.5, "--test_fraction"),
    ("num_clients", 10_000, "expected 1..359"), ("num_shards", -1, "--num_shards")])
def test_bad_flags_are_config_errors(tmp_path, flag, value, match):
  with pytest.raises(ConfigError, match=match):
    _prepare(tmp_path / "x", **{flag: value})
  assert os.listdir(tmp_path) == []


def test_cifar10_mock_end_to_end(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    m = _prepare(tmp_path / "c", dataset="cifar10", num_clients=10)
  assert m["rotations_deg"] == [0, 180] and m["public"] is None
  ds = readers.load_clients(str(tmp_path / "c"))
  assert ds.inputs.shape == (80, 32, 32, 3) and set(ds.clusters) <= {0, 1}


def test_femnist_fake_end_to_end(tmp_path, monkeypatch):
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  train_cd, test_cd, train, _ = make_fake_emnist(num_writers=6)
  monkeypatch.setattr(tff.simulation.datasets.emnist, "load_data",
                      lambda only_digits=True, cache_dir=None: (train_cd, test_cd))
  m = _prepare(tmp_path / "f", dataset="femnist", num_clients=4)
  assert m["num_clusters"] == 2 and m["label_known_clusters"] is False
  assert m["rotations_deg"] == []
  ds = readers.load_clients(str(tmp_path / "f"))
  assert set(ds.clusters) == {-1} and set(ds.client_ids) <= set(train)
  w = ds.client_ids[0]
  np.testing.assert_array_equal(ds.train(w)[0][..., 0],
                                np.rint(train[w]["pixels"] * 255).astype(np.uint8))
  assert len(ds.test(w)[1]) == 2



@pytest.mark.parametrize("num_clusters", [2, 4])
def test_fashion_mnist_public_split_and_client_test_split(tmp_path, num_clusters):
  """Checked from the files alone: every record is traced back to its source image by
  the markers `write_fake_fashion_mnist` puts in row 0 (after undoing the rotation)."""
  from tests.data.fakes import write_fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  arrays = write_fake_fashion_mnist(str(tmp_path / "idx"), num_train=60, num_test=10)
  (tr_x, tr_y), (te_x, te_y) = arrays["train"], arrays["test"]
  out = tmp_path / "fm"
  m = _prepare(out, dataset="fashion_mnist", num_clients=10, num_clusters=num_clusters,
               source_dir=str(tmp_path / "idx"), public_size=20, seed=2)
  assert m["public"] == {"path": "public.tfrecord", "num_records": 20}
  assert m["public_split"]["num_records"] == 20 and not m["public_split"]["held_by_clients"]
  assert m["test_split"] == "source" and "test_fraction" not in m
  assert m["source"] == f"idx:{tmp_path / 'idx'}"
  assert m["rotations_deg"] == [k * 360 // num_clusters for k in range(num_clusters)]
  ds = readers.load_clients(str(out))
  pub_x, pub_y = ds.public
  pub_ids = pub_x[:, 0, 0, 0].astype(int) + 256 * pub_x[:, 0, 1, 0]
  np.testing.assert_array_equal(pub_x[..., 0], tr_x[pub_ids])  # upright, unchanged
  np.testing.assert_array_equal(pub_y, tr_y[pub_ids])
  seen_train, seen_test = [], []
  for cid in ds.client_ids:
    k = ds.cluster(cid) * (4 // num_clusters)  # quarter turns of this client's rotation
    x, y = ds.train(cid)
    up = np.rot90(x, -k, axes=(1, 2))[..., 0]
    ids = up[:, 0, 0].astype(int) + 256 * up[:, 0, 1]
    np.testing.assert_array_equal(up, tr_x[ids])
    np.testing.assert_array_equal(y, tr_y[ids])
    seen_train += ids.tolist()
    x, y = ds.test(cid)
    assert len(y) == 1 and len(ds.train(cid)[1]) == 4
    up = np.rot90(x, -k, axes=(1, 2))[..., 0]
    ids = up[:, 0, 2].astype(int) - 1
    np.testing.assert_array_equal(up, te_x[ids])  # test images carry the client's rotation
    np.testing.assert_array_equal(y, te_y[ids])
    seen_test += ids.tolist()
  assert sorted(seen_train + pub_ids.tolist()) == list(range(60))  # disjoint, complete
  assert sorted(seen_test) == list(range(10))
  assert len(set(ds.clusters.tolist())) >= 2  # several rotations were exercised


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
