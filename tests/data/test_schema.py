"""Record encode/decode and manifest validation (pina_tff.data.schema)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pina_tff.data import readers
from pina_tff.data import schema
from pina_tff.errors import DataError


def _clients_manifest(**over):
  m = {"format": schema.CLIENTS_FORMAT, "dataset": "digits", "num_clients": 2,
       "num_clusters": 4, "rotations_deg": [0, 90, 180, 270], "image_shape": [8, 8, 1],
       "num_classes": 10, "seed": 0, "label_known_clusters": True,
       "shards": [{"path": "clients-00000-of-00001.tfrecord", "num_records": 5}],
       "clients": [{"client_id": "c00000", "cluster": 1, "num_train": 2, "num_test": 1,
                    "shard": 0},
                   {"client_id": "c00001", "cluster": 0, "num_train": 1, "num_test": 1,
                    "shard": 0}],
       "public": None}
  m.update(over)
  return m


def test_client_example_roundtrip_is_deterministic():
  img = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
  a = schema.encode_client_example("c00007", "test", img, 3, 2)
  b = schema.encode_client_example("c00007", "test", img.copy(), 3, 2)
  assert a == b
  out = schema.decode_client_example(a, [8, 8, 1])
  assert out["client_id"] == "c00007" and out["split"] == "test"
  assert out["label"] == 3 and out["cluster"] == 2
  np.testing.assert_array_equal(out["image"], img)
  # The tf.io spec parses the same record.
  parsed = tf.io.parse_single_example(a, schema.feature_spec("image"))
  assert parsed["client_id"].numpy() == b"c00007"


def test_encode_rejects_non_uint8_image():
  with pytest.raises(ValueError, match="uint8"):
    schema.encode_client_example("c0", "train", np.zeros((8, 8, 1), np.float32), 0, 0)


def test_embedding_example_roundtrip():
  emb = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
  rec = schema.encode_embedding_example("c1", "train", emb, 4, -1, dtype="float16")
  out = schema.decode_embedding_example(rec, [5, 16], "float16")
  assert out["embedding"].dtype == np.float16
  np.testing.assert_allclose(out["embedding"], emb, rtol=1e-3, atol=1e-3)
  with pytest.raises(DataError, match="160 bytes, expected 320"):
    schema.decode_embedding_example(rec, [5, 16], "float32")


def test_manifest_write_read_is_stable(tmp_path):
  m = _clients_manifest()
  with tf.io.TFRecordWriter(str(tmp_path / m["shards"][0]["path"])) as w:
    pass
  schema.write_manifest(str(tmp_path), m)
  text = (tmp_path / "manifest.json").read_text()
  assert json.loads(text) == m
  schema.write_manifest(str(tmp_path), json.loads(text))
  assert (tmp_path / "manifest.json").read_text() == text
  assert schema.read_manifest(str(tmp_path)) == m


@pytest.mark.parametrize("change, message", [
    ({"format": "pina-clients/9"}, "expected 'pina-clients/1'"),
    ({"num_clients": 3}, "num_clients is 3 but 2 clients are listed"),
    ({"image_shape": [8, 8]}, "expected \\[height, width, channels\\]"),
    ({"shards": [{"path": "clients-00000-of-00001.tfrecord", "num_records": 6}]},
     "lists num_records=6 but its clients hold 5"),
])
def test_manifest_validation_names_file_and_expectation(tmp_path, change, message):
  (tmp_path / "manifest.json").write_text(json.dumps(_clients_manifest(**change)))
  with pytest.raises(DataError, match=message) as e:
    schema.read_manifest(str(tmp_path))
  assert "manifest.json" in str(e.value)


def test_manifest_missing_and_not_json(tmp_path):
  with pytest.raises(DataError, match="manifest not found"):
    schema.read_manifest(str(tmp_path))
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(DataError, match="not valid JSON"):
    schema.read_manifest(str(tmp_path))


def test_manifest_names_missing_shard(tmp_path):
  schema.write_manifest(str(tmp_path), _clients_manifest())
  with pytest.raises(DataError, match="clients-00000-of-00001.tfrecord: shard file missing"):
    schema.read_manifest(str(tmp_path))


def test_embeddings_format_reuses_manifest_and_reader(tmp_path):
  """The embedding job's layout: same manifest, `embedding` payload, load_embeddings."""
  rng = np.random.default_rng(1)
  shape = [3, 4]
  m = _clients_manifest(format=schema.EMBEDDINGS_FORMAT, embedding_shape=shape,
                        embedding_dtype="float32", backbone={"name": "vit_s16"},
                        weights_file="w.npz", weights_sha256="0" * 64)
  del m["rotations_deg"], m["image_shape"]
  rows = [("c00000", "train"), ("c00000", "train"), ("c00000", "test"),
          ("c00001", "train"), ("c00001", "test")]
  embs = rng.normal(size=(5, *shape)).astype(np.float32)
  with tf.io.TFRecordWriter(str(tmp_path / m["shards"][0]["path"])) as w:
    for (cid, split), e in zip(rows, embs):
      w.write(schema.encode_embedding_example(cid, split, e, 1, 0))
  schema.write_manifest(str(tmp_path), m)
  ds = readers.load_embeddings(str(tmp_path))
  x, y = ds.train("c00000")
  np.testing.assert_array_equal(x, embs[:2])
  np.testing.assert_array_equal(ds.test("c00001")[0], embs[4:])
  with pytest.raises(DataError, match="expected 'pina-clients/1'"):
    readers.load_clients(str(tmp_path))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
