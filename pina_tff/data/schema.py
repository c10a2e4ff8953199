"""On-disk schema of prepared data: TFRecord `tf.train.Example` records and `manifest.json`.

Two formats share one manifest layout (see docs/architecture.md, "File formats"):

* `pina-clients/1` (written by `pina-prepare`): each record holds `client_id` (bytes),
  `split` (bytes, `train`/`test`), `image` (bytes: raw uint8, C-order, shape
  `manifest["image_shape"]` = [height px, width px, channels]), `label` (int64) and
  `cluster` (int64, -1 if unknown).
* `pina-embeddings/1` (written by `pina-embed`): the same fields, but `embedding`
  (raw bytes, C-order, dtype `manifest["embedding_dtype"]`, shape
  `manifest["embedding_shape"]` = [tokens, width]) replaces `image`.

Records are serialized with `deterministic=True`, so the same content gives the same bytes.
Manifests are written with sorted keys, so the same content gives the same file.
"""
import json
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from pina_tff.errors import DataError

CLIENTS_FORMAT = "pina-clients/1"
EMBEDDINGS_FORMAT = "pina-embeddings/1"
MANIFEST_NAME = "manifest.json"
PUBLIC_CLIENT_ID = "public"
SPLITS = ("train", "test")
UNKNOWN_CLUSTER = -1

# Keys every manifest carries, whatever the format.
_COMMON_KEYS = ("format", "dataset", "num_clients", "num_clusters", "num_classes", "seed",
                "label_known_clusters", "shards", "clients")
_FORMAT_KEYS = {
    CLIENTS_FORMAT: ("rotations_deg", "image_shape"),
    EMBEDDINGS_FORMAT: ("embedding_shape", "embedding_dtype"),
}
EMBEDDING_DTYPES = ("float16", "float32")


def shard_name(index: int, num_shards: int, prefix: str = "clients") -> str:
  """Deterministic shard file name, e.g. `clients-00000-of-00002.tfrecord`."""
  return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


# --------------------------------------------------------------------------- records
def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _encode(client_id: str, split: str, payload_key: str, payload: bytes, label: int,
            cluster: int) -> bytes:
  if split not in SPLITS and client_id != PUBLIC_CLIENT_ID:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  example = tf.train.Example(features=tf.train.Features(feature={
      "client_id": _bytes(client_id.encode("utf-8")),
      "split": _bytes(split.encode("utf-8")),
      payload_key: _bytes(payload),
      "label": _int64(label),
      "cluster": _int64(cluster),
  }))
  return example.SerializeToString(deterministic=True)


def encode_client_example(client_id: str, split: str, image: np.ndarray, label: int,
                          cluster: int) -> bytes:
  """Serializes one `pina-clients/1` record.

  Args:
    client_id: client name (`public` for the held-out public split).
    split: `train` or `test`.
    image: uint8 array [height px, width px, channels], values 0..255.
    label: class index.
    cluster: true cluster (rotation index), -1 if unknown.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"image must be uint8 [H, W, C], got {image.dtype} {image.shape}")
  return _encode(client_id, split, "image", np.ascontiguousarray(image).tobytes(), label,
                 cluster)


def encode_embedding_example(client_id: str, split: str, embedding: np.ndarray, label: int,
                             cluster: int, dtype: str = "float32") -> bytes:
  """Serializes one `pina-embeddings/1` record; `embedding` [tokens, width] is cast to dtype."""
  if dtype not in EMBEDDING_DTYPES:
    raise ValueError(f"dtype must be one of {EMBEDDING_DTYPES}, got {dtype!r}")
  data = np.ascontiguousarray(np.asarray(embedding, dtype=dtype))
  return _encode(client_id, split, "embedding", data.tobytes(), label, cluster)


def _decode(record: bytes, payload_key: str) -> Dict[str, Any]:
  example = tf.train.Example.FromString(record)
  f = example.features.feature
  try:
    return {
        "client_id": f["client_id"].bytes_list.value[0].decode("utf-8"),
        "split": f["split"].bytes_list.value[0].decode("utf-8"),
        payload_key: f[payload_key].bytes_list.value[0],
        "label": int(f["label"].int64_list.value[0]),
        "cluster": int(f["cluster"].int64_list.value[0]),
    }
  except (KeyError, IndexError) as e:
    raise DataError(f"record lacks field {e}; expected client_id, split, {payload_key}, "
                    "label, cluster") from None


def decode_payload(data: bytes, shape: Sequence[int], dtype, what: str = "record") -> np.ndarray:
  """Raw bytes -> array of `shape`/`dtype`; DataError (naming `what`) if the size differs."""
  dtype = np.dtype(dtype)
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise DataError(f"{what}: payload has {len(data)} bytes, expected {expected} "
                    f"({dtype.name} of shape {list(shape)})")
  return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_client_example(record: bytes, image_shape: Sequence[int]) -> Dict[str, Any]:
  """Parses one `pina-clients/1` record (slow path, one at a time) into python/numpy values."""
  out = _decode(record, "image")
  out["image"] = decode_payload(out["image"], image_shape, np.uint8, "image")
  return out


def decode_embedding_example(record: bytes, embedding_shape: Sequence[int],
                             dtype: str) -> Dict[str, Any]:
  """Parses one `pina-embeddings/1` record into python/numpy values."""
  out = _decode(record, "embedding")
  out["embedding"] = decode_payload(out["embedding"], embedding_shape, dtype, "embedding")
  return out


def feature_spec(payload_key: str = "image") -> Dict[str, tf.io.FixedLenFeature]:
  """`tf.io.parse_example` spec of both formats (`payload_key` is `image` or `embedding`)."""
  return {
      "client_id": tf.io.FixedLenFeature([], tf.string),
      "split": tf.io.FixedLenFeature([], tf.string),
      payload_key: tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64),
      "cluster": tf.io.FixedLenFeature([], tf.int64),
  }


def payload_key_for(fmt: str) -> str:
  """`image` for `pina-clients/1`, `embedding` for `pina-embeddings/1`."""
  return "embedding" if fmt == EMBEDDINGS_FORMAT else "image"


# -------------------------------------------------------------------------- manifest
def write_manifest(directory: str, manifest: Mapping[str, Any]) -> str:
  """Validates `manifest` (structure only) and writes `<directory>/manifest.json`."""
  path = os.path.join(directory, MANIFEST_NAME)
  validate_manifest(manifest, path, manifest.get("format"))
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(dumps_manifest(manifest))
  return path


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
  """JSON text with sorted keys, one top-level key per line and one list entry (shard,
  client) per line, so a 10,000-client manifest stays readable and diffable."""
  items = sorted(manifest.items())
  lines = ["{"]
  for i, (key, value) in enumerate(items):
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
      body = "[\n" + ",\n".join("  " + json.dumps(v, sort_keys=True) for v in value) + "\n ]"
    else:
      body = json.dumps(value, sort_keys=True)
    lines.append(f" {json.dumps(key)}: {body}" + ("," if i < len(items) - 1 else ""))
  lines.append("}")
  return "\n".join(lines) + "\n"


def read_manifest(directory: str, expected_format: Optional[str] = CLIENTS_FORMAT
                  ) -> Dict[str, Any]:
  """Reads and validates `<directory>/manifest.json` (structure + shard files exist)."""
  path = os.path.join(directory, MANIFEST_NAME)
  if not tf.io.gfile.exists(path):
    raise DataError(f"{path}: manifest not found; expected a directory written by "
                    f"{'pina-prepare' if expected_format != EMBEDDINGS_FORMAT else 'pina-embed'}")
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      manifest = json.loads(f.read())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e}); expected a {expected_format} manifest"
                    ) from None
  validate_manifest(manifest, path, expected_format)
  check_files(directory, manifest)
  return manifest


def _need(cond: bool, path: str, msg: str):
  if not cond:
    raise DataError(f"{path}: {msg}")


def validate_manifest(manifest: Any, path: str, expected_format: Optional[str]) -> None:
  """Structural checks; DataError naming `path` and the expectation on the first problem."""
  _need(isinstance(manifest, dict), path, "expected a JSON object")
  fmt = manifest.get("format")
  if expected_format is not None:
    _need(fmt == expected_format, path, f"format is {fmt!r}, expected {expected_format!r}")
  _need(fmt in _FORMAT_KEYS, path, f"format is {fmt!r}, expected one of {list(_FORMAT_KEYS)}")
  for key in _COMMON_KEYS + _FORMAT_KEYS[fmt]:
    _need(key in manifest, path, f"missing key {key!r}")
  shape_key = "image_shape" if fmt == CLIENTS_FORMAT else "embedding_shape"
  shape = manifest[shape_key]
  _need(isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape), path,
        f"{shape_key} is {shape!r}, expected a list of positive ints")
  if fmt == CLIENTS_FORMAT:
    _need(len(shape) == 3, path, f"image_shape is {shape}, expected [height, width, channels]")
  else:
    _need(manifest["embedding_dtype"] in EMBEDDING_DTYPES, path,
          f"embedding_dtype is {manifest['embedding_dtype']!r}, expected one of "
          f"{list(EMBEDDING_DTYPES)}")
  shards = manifest["shards"]
  _need(isinstance(shards, list) and shards, path, "shards: expected a non-empty list")
  for s in shards:
    _need(isinstance(s, dict) and isinstance(s.get("path"), str)
          and isinstance(s.get("num_records"), int) and s["num_records"] >= 0, path,
          f"shard entry {s!r}: expected {{'path': str, 'num_records': int >= 0}}")
  clients = manifest["clients"]
  _need(isinstance(clients, list), path, "clients: expected a list")
  _need(len(clients) == manifest["num_clients"], path,
        f"num_clients is {manifest['num_clients']} but {len(clients)} clients are listed")
  seen = set()
  per_shard = [0] * len(shards)
  for c in clients:
    _need(isinstance(c, dict) and all(k in c for k in
                                      ("client_id", "cluster", "num_train", "num_test", "shard")),
          path, f"client entry {c!r}: expected client_id, cluster, num_train, num_test, shard")
    _need(c["client_id"] not in seen, path, f"client {c['client_id']!r} listed twice")
    seen.add(c["client_id"])
    _need(isinstance(c["shard"], int) and 0 <= c["shard"] < len(shards), path,
          f"client {c['client_id']!r}: shard {c['shard']!r}, expected 0..{len(shards) - 1}")
    per_shard[c["shard"]] += c["num_train"] + c["num_test"]
  for i, s in enumerate(shards):
    _need(per_shard[i] == s["num_records"], path,
          f"shard {s['path']} lists num_records={s['num_records']} but its clients hold "
          f"{per_shard[i]} examples")
  public = manifest.get("public")
  if public is not None:
    _need(isinstance(public, dict) and isinstance(public.get("path"), str)
          and isinstance(public.get("num_records"), int), path,
          f"public is {public!r}, expected {{'path': str, 'num_records': int}}")


def data_files(manifest: Mapping[str, Any]) -> Iterable[str]:
  """Relative paths of every record file the manifest names (shards, then public)."""
  for s in manifest["shards"]:
    yield s["path"]
  if manifest.get("public"):
    yield manifest["public"]["path"]


def check_files(directory: str, manifest: Mapping[str, Any]) -> None:
  """DataError if a shard or public file named in the manifest is missing."""
  for rel in data_files(manifest):
    full = os.path.join(directory, rel)
    if not tf.io.gfile.exists(full):
      raise DataError(f"{full}: shard file missing; expected it because "
                      f"{os.path.join(directory, MANIFEST_NAME)} lists it")
