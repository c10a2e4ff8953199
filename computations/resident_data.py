"""Round data from a resident population: TFF ships row numbers, shards are gathered
inside the client computation.

`ResidentRoundData` is a round data source: `round_data(ids, seeds, shard_size,
num_shards)` returns one `tf.data.Dataset` per TFF client, as `process.next` takes
them, with the same element type as a packed shard
(`client_work.shard_element_type`). The dataset's graph holds only that shard's row
numbers [S] and client seeds [S, 2] (a few KB); its map function memory-maps the
layout's array files (`tf.raw_ops.ImmutableConst`, which maps a file read-only without
copying) and gathers the rows, so the only per-round copy of example data is the
gather itself, done by the TFF worker that runs the client. Nothing is packed or
written per round. The files must stay in place while rounds run; a worker on another
machine needs them at the same path.

Equivalence: the gathered shard equals `shards.pack_shard` of the same clients with
the same seeds, bit for bit (tests/computations/test_resident_data.py), so results do
not depend on the transport. Privacy: identical to packed shards: the same cohorts,
the same per-client seeds (shipped with the rows, never written to the layout), and
the same constant number of TFF clients per round (empty shards are all padding rows,
which contribute zero).
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from pina_tff.simulation import resident


class ResidentRoundData:
  """Round data source over a `pina_tff.simulation.resident.Layout`."""

  def __init__(self, layout: resident.Layout):
    self.layout = layout
    specs = [(k, tf.as_dtype(np.dtype(d)), list(s)) for k, (d, s) in layout.arrays.items()]
    paths = {k: layout.path(k) for k in layout.arrays}
    pad_row = layout.pad_row
    feature_keys = layout.feature_keys

    def read(element):
      rows = element["rows"]
      full = {k: tf.raw_ops.ImmutableConst(dtype=dtype, shape=shape,
                                           memory_region_name=paths[k])
              for k, dtype, shape in specs}
      out = collections.OrderedDict()
      for k in feature_keys:
        out[k] = tf.gather(full[k], rows)
      out["label"] = tf.gather(full["label"], rows)
      out["mask"] = tf.gather(full["mask"], rows)
      out["client_mask"] = tf.cast(tf.not_equal(rows, pad_row), tf.float32)
      out["true_cluster"] = tf.gather(full["true_cluster"], rows)
      out["seed"] = element["seed"]
      return out

    self._read = read

  def shard_dataset(self, rows: np.ndarray, seeds: np.ndarray) -> tf.data.Dataset:
    """One TFF client's dataset: a single shard element gathered from `rows` [S]."""
    element = collections.OrderedDict(rows=tf.constant(np.asarray(rows, np.int32)),
                                      seed=tf.constant(np.asarray(seeds, np.int32)))
    return tf.data.Dataset.from_tensors(element).map(self._read)

  def round_data(self, ids: Sequence[int], seeds: Sequence, shard_size: int,
                 num_shards: Optional[int] = None, *, stage: Optional[int] = None,
                 rnd: Optional[int] = None) -> list:
    """The round's TFF client datasets: the cohort `ids` (population indices) cut into
    consecutive shards of `shard_size`, padded with empty shards to `num_shards`
    (`resident.shard_rows`); `seeds[j]` is client `ids[j]`'s seed. `stage` and
    `rnd` are accepted for the round-data-source interface and not used: everything a
    round depends on is in `ids` and `seeds`."""
    del stage, rnd
    return [self.shard_dataset(rows, sd) for rows, sd in
            resident.shard_rows(self.layout, ids, seeds, shard_size, num_shards)]


def from_population(clients, feature_keys, n_max: int, directory: str,
                    feature_shapes=None) -> ResidentRoundData:
  """Lays out `clients` in `directory` (`resident.write_layout`) and returns the
  round data source reading it."""
  return ResidentRoundData(resident.write_layout(clients, feature_keys, n_max, directory,
                                                 feature_shapes=feature_shapes))
