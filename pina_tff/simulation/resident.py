"""A resident population: every client's training arrays laid out once, read by row.

The shard packer (`pina_tff.training.shards.pack_shard`) copies a cohort's examples
into fresh arrays every round. A resident layout instead writes the whole population
once, in the shard layout of `pina_tff.training.local` with a leading client axis:
one raw (headerless, C-order, native byte order) array file per key, row i = client i,
plus one extra last row that is the padding client (zero features, label 0, mask 0,
true_cluster -1). A round then needs only the cohort's row numbers and client seeds;
the arrays are gathered where the shard is used (`computations/data/resident_data.py`
gathers them inside the TFF client computation from a memory-mapped file;
`read_shard` below is the NumPy reader, used for tests and plain-NumPy callers).

Files in `<directory>`:
  layout.json       {"format": "pina-resident/1", "num_clients": P, "n_max": N,
                     "feature_keys": [...], "fingerprint": sha256 of the arrays,
                     "arrays": {key: {"file", "dtype", "shape": [P + 1, ...]}}}
  <key>.bin         raw array of that shape and dtype.

Privacy: the layout holds the clients' training data only (what the packer would put
into shards); client seeds never enter it (they travel with each round's row numbers).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
from typing import Mapping, Optional, Sequence

import numpy as np

from pina_tff.errors import DataError
from pina_tff.training import shards

FORMAT = "pina-resident/1"
LAYOUT_NAME = "layout.json"


@dataclasses.dataclass(frozen=True)
class Layout:
  """An opened resident layout (see the module docstring).

  Attributes:
    directory: where the files are.
    num_clients: P; row P of every array is the padding client.
    n_max: padded examples per client.
    feature_keys: the model's feature keys (the arrays also hold 'label', 'mask',
      'true_cluster').
    arrays: key -> (numpy dtype name, full shape [P + 1, ...]), in shard-key order.
    fingerprint: sha256 (hex) of the arrays' bytes, in key order.
  """
  directory: str
  num_clients: int
  n_max: int
  feature_keys: tuple
  arrays: Mapping[str, tuple]
  fingerprint: str

  @property
  def pad_row(self) -> int:
    """Row number of the padding client (= num_clients)."""
    return self.num_clients

  def path(self, key: str) -> str:
    return os.path.join(self.directory, f"{key}.bin")

  def memmaps(self) -> dict:
    """key -> read-only np.memmap of the whole array [P + 1, ...]."""
    return {k: np.memmap(self.path(k), dtype=np.dtype(d), mode="r", shape=tuple(s))
            for k, (d, s) in self.arrays.items()}


def array_specs(feature_keys: Sequence[str], feature_shapes: Mapping[str, tuple],
                n_max: int, num_clients: int, dtype=np.float32) -> dict:
  """key -> (dtype name, shape [P + 1, ...]) of a layout, in shard-key order."""
  rows = num_clients + 1
  specs = collections.OrderedDict()
  for k in feature_keys:
    specs[k] = (np.dtype(dtype).name, (rows, n_max) + tuple(feature_shapes[k]))
  specs["label"] = ("int32", (rows, n_max))
  specs["mask"] = ("float32", (rows, n_max))
  specs["true_cluster"] = ("int32", (rows,))
  return specs


def _fill(clients, feature_keys, n_max, arrays) -> None:
  """Writes every client's (first n_max) examples into row i of `arrays`."""
  shards.write_client_rows(arrays, clients, feature_keys, n_max)
  # the padding row; everything else of it stays 0
  arrays["true_cluster"][len(clients)] = shards.UNKNOWN_CLUSTER


def _digest(arrays) -> str:
  h = hashlib.sha256()
  for k, a in arrays.items():
    h.update(k.encode())
    h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data)
  return h.hexdigest()


def write_layout(clients: Sequence[Mapping[str, np.ndarray]], feature_keys, n_max: int,
                 directory: str, feature_shapes: Optional[Mapping[str, tuple]] = None,
                 dtype=np.float32) -> Layout:
  """Lays out `clients` (dicts of feature arrays [n_i, ...], 'label' [n_i], optional
  'true_cluster') in `directory` (created; replaced if it holds an older layout).

  Written into `<directory>.tmp-<pid>` and renamed, so a reader never sees half a
  layout. Clients with more than `n_max` examples keep their first `n_max` (as
  `pack_shard` does)."""
  if not clients:
    raise DataError(f"{directory}: a resident layout needs at least one client")
  feature_keys = tuple(feature_keys)
  if feature_shapes is None:
    feature_shapes = {k: clients[0][k].shape[1:] for k in feature_keys}
  specs = array_specs(feature_keys, feature_shapes, n_max, len(clients), dtype)
  tmp = f"{directory.rstrip(os.sep)}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  arrays = collections.OrderedDict(
      (k, np.memmap(os.path.join(tmp, f"{k}.bin"), dtype=np.dtype(d), mode="w+",
                    shape=s)) for k, (d, s) in specs.items())
  _fill(clients, feature_keys, n_max, arrays)
  fingerprint = _digest(arrays)
  for a in arrays.values():
    a.flush()
  del arrays
  meta = {"format": FORMAT, "num_clients": len(clients), "n_max": int(n_max),
          "feature_keys": list(feature_keys), "fingerprint": fingerprint,
          "arrays": {k: {"file": f"{k}.bin", "dtype": d, "shape": list(s)}
                     for k, (d, s) in specs.items()}}
  with open(os.path.join(tmp, LAYOUT_NAME), "w") as f:
    json.dump(meta, f, indent=1)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)
  return open_layout(directory)


def open_layout(directory: str) -> Layout:
  """Opens the layout in `directory`; DataError if it is missing, of another format,
  or a file has the wrong size."""
  path = os.path.join(directory, LAYOUT_NAME)
  try:
    with open(path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: not found; expected a resident layout "
                    "(pina_tff.simulation.resident.write_layout)") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  if meta.get("format") != FORMAT:
    raise DataError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
  arrays = collections.OrderedDict()
  for k, a in meta["arrays"].items():
    shape = tuple(int(s) for s in a["shape"])
    arrays[k] = (a["dtype"], shape)
    want = int(np.prod(shape)) * np.dtype(a["dtype"]).itemsize
    file = os.path.join(directory, a["file"])
    have = os.path.getsize(file) if os.path.exists(file) else -1
    if have != want:
      raise DataError(f"{file}: {have} bytes, expected {want} ({a['dtype']} {list(shape)})")
  return Layout(directory=directory, num_clients=int(meta["num_clients"]),
                n_max=int(meta["n_max"]), feature_keys=tuple(meta["feature_keys"]),
                arrays=arrays, fingerprint=meta["fingerprint"])


def shard_rows(layout_or_pad_row, ids: Sequence[int], seeds: Sequence, shard_size: int,
               num_shards: Optional[int] = None, pad_seeds: Optional[Sequence] = None
               ) -> list:
  """The round's shards as (rows int32 [S], seeds int64 [S, 2]) pairs.

  The cohort is cut into consecutive shards of `shard_size` (as
  `pina_tff.training.shards.split_cohort`); each shard's free slots get the padding
  row and seed (0, 0), or the next of `pad_seeds` (padding slots in slot order);
  with `num_shards`, empty shards (all padding) are appended up to that many (a
  constant number of TFF clients per round; ValueError if the cohort needs more).
  `seeds[j]` is the seed of `ids[j]`.
  """
  pad = (layout_or_pad_row.pad_row if isinstance(layout_or_pad_row, Layout)
         else int(layout_or_pad_row))
  if shard_size < 1:
    raise ValueError(f"shard size must be >= 1, got {shard_size}")
  ids = np.asarray(ids, np.int64).reshape(-1)
  seeds = np.asarray(seeds, np.int64).reshape(-1, 2)
  if len(seeds) != len(ids):
    raise ValueError(f"{len(ids)} client ids but {len(seeds)} seeds")
  if len(ids) and (ids.min() < 0 or ids.max() >= pad):
    raise ValueError(f"client ids must be in [0, {pad}), found {ids.min()}..{ids.max()}")
  count = -(-len(ids) // shard_size)
  if num_shards is not None:
    if count > num_shards:
      raise ValueError(f"a cohort of {len(ids)} needs {count} shards > {num_shards}")
    count = num_shards
  slot_seeds = slot_keys(seeds, count * shard_size, pad_seeds)
  out = []
  for j in range(count):
    part = slice(j * shard_size, (j + 1) * shard_size)
    rows = np.full((shard_size,), pad, np.int32)
    chunk = ids[part]
    rows[:len(chunk)] = chunk
    out.append((rows, slot_seeds[part].copy()))
  return out


def slot_keys(seeds: Sequence, num_slots: int, pad_seeds: Optional[Sequence] = None
              ) -> np.ndarray:
  """int64 [num_slots, 2]: the cohort's ``seeds`` in its slots, then ``pad_seeds`` in
  the padding slots (slot order; missing ones are (0, 0))."""
  out = np.zeros((int(num_slots), 2), np.int64)
  seeds = np.asarray(seeds, np.int64).reshape(-1, 2)
  out[:len(seeds)] = seeds
  if pad_seeds is not None:
    pad = np.asarray(pad_seeds, np.int64).reshape(-1, 2)[:num_slots - len(seeds)]
    out[len(seeds):len(seeds) + len(pad)] = pad
  return out


def read_shard(layout: Layout, rows: np.ndarray, seeds: np.ndarray,
               arrays: Optional[Mapping[str, np.ndarray]] = None) -> dict:
  """NumPy reader: the shard dict of `pack_shard` (features, 'label', 'mask',
  'client_mask', 'true_cluster', 'seed') for row numbers `rows` [S]."""
  arrays = arrays if arrays is not None else layout.memmaps()
  rows = np.asarray(rows, np.int64)
  out = collections.OrderedDict()
  for k in layout.feature_keys:
    out[k] = np.asarray(arrays[k][rows])
  out["label"] = np.asarray(arrays["label"][rows])
  out["mask"] = np.asarray(arrays["mask"][rows])
  out["client_mask"] = (rows != layout.pad_row).astype(np.float32)
  out["true_cluster"] = np.asarray(arrays["true_cluster"][rows])
  out["seed"] = np.asarray(seeds, np.int64).reshape(len(rows), 2)
  return out
