"""Reads prepared data (`pina-clients/1`, `pina-embeddings/1`) back into NumPy arrays.

All records are read once with `tf.data.TFRecordDataset` + batched `tf.io.parse_example`
and grouped in NumPy, so 10,000 clients load in seconds. Everything is checked against
the manifest: a missing or corrupt shard, a payload of the wrong size, a record count
that differs, a client listed but absent (or present but not listed) -> DataError naming
the file and what was expected.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from pina_tff.data import schema
from pina_tff.errors import DataError

_BATCH = 4096


@dataclasses.dataclass
class ClientDataset:
  """Prepared clients in memory.

  `inputs` are images uint8 [N, H, W, C] (`pina-clients/1`) or embeddings [N, T, d]
  (`pina-embeddings/1`); records are grouped per client, train before test:
  client i's train examples are rows `train_slices[i]`, its test examples `test_slices[i]`.
  """
  directory: str
  manifest: Dict[str, Any]
  client_ids: List[str]
  clusters: np.ndarray              # int64 [num_clients], -1 if unknown
  inputs: np.ndarray
  labels: np.ndarray                # int64 [N]
  train_slices: List[slice]
  test_slices: List[slice]
  public: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (inputs, labels), digits only

  def __post_init__(self):
    self._index = {c: i for i, c in enumerate(self.client_ids)}

  @property
  def num_clients(self) -> int:
    return len(self.client_ids)

  def index_of(self, client_id: str) -> int:
    try:
      return self._index[client_id]
    except KeyError:
      raise KeyError(f"unknown client_id {client_id!r}") from None

  def train(self, client_id: str) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of the client's train split."""
    s = self.train_slices[self.index_of(client_id)]
    return self.inputs[s], self.labels[s]

  def test(self, client_id: str) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of the client's test split."""
    s = self.test_slices[self.index_of(client_id)]
    return self.inputs[s], self.labels[s]

  def cluster(self, client_id: str) -> int:
    return int(self.clusters[self.index_of(client_id)])


def _payload_spec(manifest: Dict[str, Any]):
  if manifest["format"] == schema.EMBEDDINGS_FORMAT:
    return "embedding", list(manifest["embedding_shape"]), np.dtype(manifest["embedding_dtype"])
  return "image", list(manifest["image_shape"]), np.dtype(np.uint8)


def read_records(path: str, payload_key: str, shape: List[int], dtype) -> Dict[str, np.ndarray]:
  """Every record of one TFRecord file as arrays: client_id, split (bytes), payload
  [n, *shape], label, cluster. DataError naming `path` if missing, corrupt or mis-shaped."""
  if not tf.io.gfile.exists(path):
    raise DataError(f"{path}: shard file missing")
  spec = schema.feature_spec(payload_key)
  parts: Dict[str, list] = {k: [] for k in spec}
  try:
    ds = tf.data.TFRecordDataset(path).batch(_BATCH).map(
        lambda r: tf.io.parse_example(r, spec))
    for batch in ds.as_numpy_iterator():
      for k in spec:
        parts[k].append(batch[k])
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"{path}: corrupt shard ({msg[:200]}); expected TFRecords of "
                    f"tf.train.Example with {sorted(spec)}") from None
  out = {k: (np.concatenate(v) if v else np.zeros((0,), object)) for k, v in parts.items()}
  payloads = out[payload_key]
  item = int(np.prod(shape)) * np.dtype(dtype).itemsize
  sizes = np.fromiter((len(b) for b in payloads), dtype=np.int64, count=len(payloads))
  bad = np.flatnonzero(sizes != item)
  if len(bad):
    raise DataError(f"{path}: record {bad[0]}: {payload_key} has {sizes[bad[0]]} bytes; "
                    f"expected {item} bytes ({np.dtype(dtype).name} of shape {shape})")
  out[payload_key] = np.frombuffer(b"".join(payloads), dtype=dtype).reshape([len(payloads)]
                                                                            + list(shape))
  out["label"] = out["label"].astype(np.int64)
  out["cluster"] = out["cluster"].astype(np.int64)
  return out


def load_clients(directory: str, expected_format: Optional[str] = schema.CLIENTS_FORMAT
                 ) -> ClientDataset:
  """Reads a prepared directory, validated against its manifest (see module docstring)."""
  manifest = schema.read_manifest(directory, expected_format)
  manifest_path = os.path.join(directory, schema.MANIFEST_NAME)
  spec = _payload_spec(manifest)
  clients = manifest["clients"]
  client_ids = [c["client_id"] for c in clients]
  inputs, labels, keys = _read_shards(directory, manifest, manifest_path, spec)
  train_slices, test_slices = _client_slices(manifest, manifest_path, keys)
  public = _read_public(directory, manifest, manifest_path, spec)
  return ClientDataset(directory, manifest, client_ids,
                       np.array([c["cluster"] for c in clients], np.int64), inputs, labels,
                       train_slices, test_slices, public)


def _read_shards(directory: str, manifest: Dict[str, Any], manifest_path: str, spec):
  """(inputs, labels, keys) of every client shard, sorted by (client, split, shard,
  position); keys int64 [N, 3] = (client index, 1 for test, position in the shard)."""
  index = {c["client_id"]: i for i, c in enumerate(manifest["clients"])}
  inputs, labels, order_keys = [], [], []
  for s_idx, shard in enumerate(manifest["shards"]):
    x, y, k = _read_shard(directory, manifest, manifest_path, spec, index, s_idx, shard)
    inputs.append(x)
    labels.append(y)
    order_keys.append(k)
  inputs = np.concatenate(inputs)
  labels = np.concatenate(labels)
  keys = np.concatenate(order_keys)
  shard_no = np.concatenate([np.full(len(k), i) for i, k in enumerate(order_keys)])
  order = np.lexsort((keys[:, 2], shard_no, keys[:, 1], keys[:, 0]))
  return inputs[order], labels[order], keys[order]


def _read_shard(directory: str, manifest: Dict[str, Any], manifest_path: str, spec,
                index: Dict[str, int], s_idx: int, shard: Dict[str, Any]):
  """(inputs, labels, order keys) of shard ``s_idx``, checked against the manifest:
  record count, known clients, each client in its listed shard, known splits."""
  key, shape, dtype = spec
  clients = manifest["clients"]
  path = os.path.join(directory, shard["path"])
  rec = read_records(path, key, shape, dtype)
  n = len(rec["label"])
  if n != shard["num_records"]:
    raise DataError(f"{path}: holds {n} records; expected {shard['num_records']} as "
                    f"{manifest_path} lists")
  ids = rec["client_id"]
  cidx = np.fromiter((index.get(c.decode("utf-8"), -1) for c in ids), np.int64, count=n)
  if n and cidx.min() < 0:
    bad = ids[int(np.argmin(cidx))].decode("utf-8")
    raise DataError(f"{path}: holds records of client {bad!r}, which {manifest_path} does "
                    "not list")
  expected_shard = np.array([clients[i]["shard"] for i in cidx], np.int64)
  if n and np.any(expected_shard != s_idx):
    i = int(cidx[np.flatnonzero(expected_shard != s_idx)[0]])
    raise DataError(f"{path}: holds records of client {clients[i]['client_id']!r}; "
                    f"expected them in shard {clients[i]['shard']} as {manifest_path} "
                    "lists")
  is_test = rec["split"] == b"test"
  if n and not np.all(is_test | (rec["split"] == b"train")):
    raise DataError(f"{path}: a record has split not in {list(schema.SPLITS)}")
  return rec[key], rec["label"], np.stack([cidx, is_test.astype(np.int64),
                                           np.arange(n, dtype=np.int64)], 1)


def _client_slices(manifest: Dict[str, Any], manifest_path: str, keys):
  """Each client's train and test slices of the sorted records, checked against the
  manifest's per-client counts (every listed client holds at least one record)."""
  clients = manifest["clients"]
  n_train = np.bincount(keys[keys[:, 1] == 0, 0], minlength=len(clients))
  n_test = np.bincount(keys[keys[:, 1] == 1, 0], minlength=len(clients))
  train_slices, test_slices = [], []
  start = 0
  for i, c in enumerate(clients):
    if n_train[i] + n_test[i] == 0:
      raise DataError(f"{manifest_path}: lists client {c['client_id']!r}, but shard "
                      f"{manifest['shards'][c['shard']]['path']} holds no record of it")
    if (n_train[i], n_test[i]) != (c["num_train"], c["num_test"]):
      raise DataError(f"{manifest_path}: client {c['client_id']!r} lists "
                      f"{c['num_train']} train / {c['num_test']} test examples; the shards "
                      f"hold {n_train[i]} / {n_test[i]}")
    train_slices.append(slice(start, start + int(n_train[i])))
    test_slices.append(slice(start + int(n_train[i]), start + int(n_train[i] + n_test[i])))
    start += int(n_train[i] + n_test[i])
  return train_slices, test_slices


def _read_public(directory: str, manifest: Dict[str, Any], manifest_path: str, spec):
  """(inputs, labels) of the public split, record count checked; None without one."""
  if not manifest.get("public"):
    return None
  key, shape, dtype = spec
  path = os.path.join(directory, manifest["public"]["path"])
  rec = read_records(path, key, shape, dtype)
  if len(rec["label"]) != manifest["public"]["num_records"]:
    raise DataError(f"{path}: holds {len(rec['label'])} records; expected "
                    f"{manifest['public']['num_records']} as {manifest_path} lists")
  return rec[key], rec["label"]


def load_embeddings(directory: str) -> ClientDataset:
  """`load_clients` for a `pina-embeddings/1` directory (inputs = embeddings [N, T, d])."""
  return load_clients(directory, schema.EMBEDDINGS_FORMAT)
