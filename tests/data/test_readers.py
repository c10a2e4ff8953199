"""Reading prepared data back, and every way it can be broken (pina_tff.data.readers)."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pina_tff.data import beam_prepare
from pina_tff.data import readers
from pina_tff.data import schema
from pina_tff.errors import DataError

SHARD0 = "clients-00000-of-00002.tfrecord"
SHARD1 = "clients-00001-of-00002.tfrecord"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp("readers") / "digits"
  beam_prepare.prepare(beam_prepare.PrepareConfig(dataset="digits", output_dir=str(out),
                                                  num_clients=20, num_shards=2))
  return out


@pytest.fixture
def copy(prepared, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(prepared, out)
  return out


def _records(path):
  return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _write(path, records):
  with tf.io.TFRecordWriter(str(path)) as w:
    for r in records:
      w.write(r)


def _manifest(d):
  return json.loads((d / "manifest.json").read_text())


def test_load_clients_groups_per_client(prepared):
  ds = readers.load_clients(str(prepared))
  m = _manifest(prepared)
  for c in m["clients"]:
    x, y = ds.train(c["client_id"])
    assert x.shape == (c["num_train"], 8, 8, 1) and x.dtype == np.uint8
    assert len(ds.test(c["client_id"])[1]) == c["num_test"]
    assert ds.cluster(c["client_id"]) == c["cluster"]
  # Same content as the slow one-record decoder.
  first = schema.decode_client_example(_records(prepared / SHARD0)[0], [8, 8, 1])
  np.testing.assert_array_equal(ds.train(first["client_id"])[0][0], first["image"])


def test_missing_shard(copy):
  os.remove(copy / SHARD1)
  with pytest.raises(DataError, match=f"{SHARD1}: shard file missing"):
    readers.load_clients(str(copy))


@pytest.mark.parametrize("how", ["flip", "truncate", "garbage"])
def test_corrupt_shard(copy, how):
  path = copy / SHARD0
  data = bytearray(path.read_bytes())
  if how == "flip":
    data[len(data) // 2] ^= 0xFF
  elif how == "truncate":
    data = data[:len(data) - 7]
  else:
    data = bytearray(b"this is not a tfrecord file at all" * 3)
  path.write_bytes(bytes(data))
  with pytest.raises(DataError, match=f"{SHARD0}: corrupt shard"):
    readers.load_clients(str(copy))


def test_wrong_image_shape_in_manifest(copy):
  m = _manifest(copy)
  m["image_shape"] = [8, 8, 3]
  (copy / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(DataError, match=f"{SHARD0}: record 0: image has 64 bytes; "
                     r"expected 192 bytes \(uint8 of shape \[8, 8, 3\]\)"):
    readers.load_clients(str(copy))


def test_wrong_image_shape_in_a_record(copy):
  recs = _records(copy / SHARD1)
  ex = schema.decode_client_example(recs[3], [8, 8, 1])
  recs[3] = schema.encode_client_example(ex["client_id"], ex["split"],
                                         np.zeros((4, 4, 1), np.uint8), ex["label"], 0)
  _write(copy / SHARD1, recs)
  with pytest.raises(DataError, match=f"{SHARD1}: record 3: image has 16 bytes"):
    readers.load_clients(str(copy))


def test_shard_record_count_differs_from_manifest(copy):
  _write(copy / SHARD0, _records(copy / SHARD0)[:-1])
  with pytest.raises(DataError, match=f"{SHARD0}: holds .* records; expected .* as "
                     ".*manifest.json lists"):
    readers.load_clients(str(copy))


def test_manifest_inconsistent_with_itself(copy):
  m = _manifest(copy)
  m["clients"][0]["num_train"] += 1
  (copy / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(DataError, match="manifest.json: shard .* lists num_records="):
    readers.load_clients(str(copy))


def test_client_listed_but_absent(copy):
  """Shard 0 has the right count, but client c00000's records belong to c00001."""
  recs = _records(copy / SHARD0)
  out = []
  for r in recs:
    ex = schema.decode_client_example(r, [8, 8, 1])
    cid = "c00001" if ex["client_id"] == "c00000" else ex["client_id"]
    out.append(schema.encode_client_example(cid, ex["split"], ex["image"], ex["label"],
                                            ex["cluster"]))
  _write(copy / SHARD0, out)
  with pytest.raises(DataError, match="manifest.json: lists client 'c00000', but shard "
                     f"{SHARD0} holds no record of it"):
    readers.load_clients(str(copy))


def test_records_of_an_unlisted_client(copy):
  recs = _records(copy / SHARD1)
  ex = schema.decode_client_example(recs[0], [8, 8, 1])
  recs[0] = schema.encode_client_example("intruder", ex["split"], ex["image"], ex["label"], 0)
  _write(copy / SHARD1, recs)
  with pytest.raises(DataError, match=f"{SHARD1}: holds records of client 'intruder'"):
    readers.load_clients(str(copy))


def test_client_in_the_wrong_shard(copy):
  m = _manifest(copy)
  moved = next(c for c in m["clients"] if c["shard"] == 0)
  moved["shard"] = 1
  n = moved["num_train"] + moved["num_test"]
  m["shards"][0]["num_records"] -= n
  m["shards"][1]["num_records"] += n
  (copy / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(DataError, match=f"{SHARD0}: holds .* records; expected"):
    readers.load_clients(str(copy))


def test_missing_public_file(copy):
  os.remove(copy / "public.tfrecord")
  with pytest.raises(DataError, match="public.tfrecord: shard file missing"):
    readers.load_clients(str(copy))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
