"""The pre-training / embedding cache inside a prepared `clients_dir`: lock, key, check.

`pina-simulate` on raw prepared data pre-trains a backbone (`<clients_dir>/backbone/`)
and embeds every example (`<clients_dir>/embeddings/`) once. This module makes that
cache safe to share:

* one builder at a time: `build_lock` holds `<clients_dir>/.lock` (flock; a second run
  waits, with one log line, then finds the cache built);
* keyed by what built it: the SHA-256 of the source `manifest.json`, the backbone config
  and the pre-training seed (`cache_key`), recorded next to the weights
  (`<weights>.key.json`) and in the embeddings (`embeddings/cache_key.json`, with the
  weights' SHA-256); a cache with another key is rebuilt, never reused;
* verified when loaded: the weights' SHA-256 must equal the one the embeddings recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Callable, Iterator, Mapping, Optional

from pina_tff.data import schema
from pina_tff.errors import DataError
from pina_tff.runtime import atomic
from pina_tff.runtime import locks

KEY_NAME = "cache_key.json"


def source_sha256(clients_dir: str) -> str:
  """SHA-256 of the prepared data's manifest.json (it lists every shard and client)."""
  with open(os.path.join(clients_dir, schema.MANIFEST_NAME), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def cache_key(clients_dir: str, backbone_config: Mapping[str, Any], seed: int) -> dict:
  """What a cached backbone and its embeddings were built from."""
  return {"source_manifest_sha256": source_sha256(clients_dir),
          "backbone": dict(backbone_config), "seed": int(seed)}


def weights_key_path(weights_file: str) -> str:
  return weights_file + ".key.json"


def _read(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write(path: str, obj: Mapping[str, Any]) -> None:
  atomic.write_json(path, obj, indent=1)


@contextlib.contextmanager
def build_lock(clients_dir: str, log: Optional[Callable[[str], None]] = None
               ) -> Iterator[None]:
  """Holds the cache lock of `clients_dir` (waits for another builder); no lock where
  `clients_dir` is read-only (nothing can be built there then)."""
  if not os.access(clients_dir, os.W_OK):
    yield
    return
  with locks.exclusive(clients_dir, "the cache of", wait=True, log=log):
    yield


def weights_current(weights_file: str, key: Mapping[str, Any]) -> bool:
  """True if `weights_file` exists and was pre-trained for `key`."""
  return os.path.exists(weights_file) and _read(weights_key_path(weights_file)) == dict(key)


def record_weights(weights_file: str, key: Mapping[str, Any]) -> None:
  """Marks `weights_file` as pre-trained for `key`."""
  _write(weights_key_path(weights_file), key)


def embeddings_current(emb_dir: str, key: Mapping[str, Any], weights_sha256: str) -> bool:
  """True if `emb_dir` holds complete embeddings of `key` made with these weights."""
  if not os.path.exists(os.path.join(emb_dir, schema.MANIFEST_NAME)):
    return False
  return _read(os.path.join(emb_dir, KEY_NAME)) == {"key": dict(key),
                                                     "weights_sha256": weights_sha256}


def record_embeddings(emb_dir: str, key: Mapping[str, Any], weights_sha256: str) -> None:
  _write(os.path.join(emb_dir, KEY_NAME), {"key": dict(key),
                                           "weights_sha256": weights_sha256})


def verify_weights(weights_file: str, expected_sha256: Optional[str], sha256_file,
                   where: str) -> None:
  """DataError unless `weights_file`'s SHA-256 is the one recorded at embedding time."""
  if not expected_sha256:
    return
  if not os.path.exists(weights_file):
    raise DataError(f"{where}: weights file {weights_file} not found")
  got = sha256_file(weights_file)
  if got != expected_sha256:
    raise DataError(f"{where}: weights file {weights_file} changed since the embeddings "
                    f"were made (sha256 {got[:12]}..., recorded {expected_sha256[:12]}...); "
                    "embed again with these weights")
