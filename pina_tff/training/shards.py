"""Packing simulated clients into fixed-shape shards and cohorts into shards.

A shard is a dict of arrays with a leading client axis S and a padded example axis N
(see `pina_tff.training.local`). All shards of one computation share S and N, because
a TFF computation has one fixed client type.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Mapping, Sequence

import numpy as np

#: Value a shard's per-slot 'true_cluster' holds for empty slots and unknown clusters.
UNKNOWN_CLUSTER = -1


def shard_layout(feature_shapes: Mapping[str, tuple], num_slots: int, n_max: int,
                 feature_dtype=np.float32) -> "collections.OrderedDict[str, tuple]":
  """The one shard layout: {key: (shape, NumPy dtype)}, in element order.

  Read by `pack_shard` (the NumPy arrays) and by
  `computations.learning.client_work.shard_element_type` (the TFF type), so both always agree.

  Args:
    feature_shapes: {feature key: shape of one example's feature}.
    num_slots: simulated clients per shard (S).
    n_max: padded examples per client (N).
    feature_dtype: dtype of the features.
  """
  layout = collections.OrderedDict(
      (k, ((num_slots, n_max) + tuple(s), feature_dtype))
      for k, s in feature_shapes.items())
  layout["label"] = ((num_slots, n_max), np.int32)
  layout["mask"] = ((num_slots, n_max), np.float32)
  layout["client_mask"] = ((num_slots,), np.float32)
  layout["true_cluster"] = ((num_slots,), np.int32)
  layout["seed"] = ((num_slots, 2), np.int64)
  return layout


def pack_shard(clients: Sequence[Mapping[str, np.ndarray]], feature_keys, n_max: int,
               num_slots: int | None = None, seed=(0, 0), client_seeds=None,
               feature_shapes: Mapping[str, tuple] | None = None,
               dtype=np.float32) -> dict[str, np.ndarray]:
  """Packs clients (dicts of feature arrays [n_i, ...], 'label' [n_i], optional
  'true_cluster') into one shard padded to `num_slots` clients and `n_max` examples.

  Clients with more than `n_max` examples keep their first `n_max` (the caller picks
  n_max from the population; `shard_plan` never truncates). Per-client RNG seeds are
  `client_seeds[i]` if given, else (seed[0], seed[1] + i).
  """
  num_slots = len(clients) if num_slots is None else num_slots
  if num_slots < len(clients):
    raise ValueError(f"{len(clients)} clients do not fit a shard of {num_slots} slots")
  if feature_shapes is None:
    feature_shapes = {k: clients[0][k].shape[1:] for k in feature_keys}
  layout = shard_layout({k: feature_shapes[k] for k in feature_keys}, num_slots, n_max,
                        dtype)
  out = {k: np.zeros(shape, dt) for k, (shape, dt) in layout.items()}
  out["true_cluster"][:] = UNKNOWN_CLUSTER
  write_client_rows(out, clients, feature_keys, n_max)
  for i in range(len(clients)):
    out["client_mask"][i] = 1.0
    out["seed"][i] = client_seeds[i] if client_seeds is not None else (seed[0], seed[1] + i)
  return out


def write_client_rows(arrays, clients: Sequence[Mapping[str, np.ndarray]], feature_keys,
                      n_max: int) -> None:
  """Writes client i's first `n_max` examples (features, 'label', 'mask' = 1) and its
  'true_cluster' (UNKNOWN_CLUSTER if absent) into row i of `arrays`, in place.

  The one row writer of the in-memory shards (`pack_shard`) and of the resident
  population's files (`pina_tff.simulation.resident`).
  """
  for i, cl in enumerate(clients):
    n = min(len(cl["label"]), n_max)
    for k in feature_keys:
      arrays[k][i, :n] = cl[k][:n]
    arrays["label"][i, :n] = cl["label"][:n]
    arrays["mask"][i, :n] = 1.0
    arrays["true_cluster"][i] = int(cl.get("true_cluster", UNKNOWN_CLUSTER))


def default_shard_size(cohort: int, cores: int | None = None) -> int:
  """Simulated clients per TFF client: one shard per core, at most 1,024 clients each.

  Fewer TFF clients means less per-client executor overhead (~10 ms each in stock TFF);
  one shard per core lets the C++ runtime run shards in parallel.
  """
  cores = cores or os.cpu_count() or 1
  return max(1, min(1024, math.ceil(cohort / cores)))


def split_cohort(cohort_ids: Sequence[int], shard_size: int) -> list[list[int]]:
  """Cuts a cohort into consecutive shards of at most `shard_size` clients."""
  if shard_size < 1:
    raise ValueError(f"shard size must be >= 1, got {shard_size}")
  ids = list(cohort_ids)
  return [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]
