"""Round data from a resident population: TFF ships row numbers, shards are gathered
inside the client computation.

`ResidentRoundData` is a round data source: `round_data(ids, seeds, shard_size,
num_shards)` returns one `tf.data.Dataset` per TFF client, as `process.next` takes
them. Each dataset holds one element, that shard's row numbers [S] and client seeds
[S, 2] (a few KB, no functions to trace or instantiate). The client computation,
built with the source's `ResidentReader`, gathers the shard from the layout's array
files, which enter its graph as `tf.raw_ops.ImmutableConst` (a read-only memory map of
the file, no copy): the only per-round copy of example data is the gather itself,
done by the TFF worker that runs the client. Nothing is packed or written per round.
The files must stay in place while rounds run; a worker on another machine needs them
at the same path.

Equivalence: the gathered shard equals `shards.pack_shard` of the same clients with
the same seeds, bit for bit (tests/computations/test_resident_data.py), so results do
not depend on the transport. Privacy: identical to packed shards: the same cohorts,
the same per-client seeds (shipped with the rows, never written to the layout), and
the same constant number of TFF clients per round (empty shards are all padding rows,
which contribute zero).
"""

from __future__ import annotations

import atexit
import collections
import os
import itertools
import threading
import weakref
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from pina_tff.simulation import resident


class ResidentReader:
  """Turns a resident shard element {rows int32[S], seed int64[S, 2]} into the shard
  dict of `client_work.shard_element_type` (inside a TF/TFF computation).

  The layout's arrays enter the graph as `ImmutableConst` ops: read-only memory maps of
  the files, made when the computation's kernels are built, so a round copies only
  the gathered rows."""

  def __init__(self, layout: resident.Layout):
    self.layout = layout
    self._specs = [(k, tf.as_dtype(np.dtype(d)), list(s))
                   for k, (d, s) in layout.arrays.items()]

  def element_type(self, shard_size: int):
    """TFF type of one resident element (what each TFF client's dataset holds)."""
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    return collections.OrderedDict(
        rows=tff.TensorType(np.int32, (shard_size,)),
        seed=tff.TensorType(np.int64, (shard_size, 2)))

  def full_arrays(self) -> collections.OrderedDict:
    """Every array of the layout as a tensor [P + 1, ...] backed by the file's memory
    map (no copy; eager). Row P is the padding client (mask 0)."""
    return collections.OrderedDict(
        (k, tf.raw_ops.ImmutableConst(dtype=dtype, shape=shape,
                                      memory_region_name=self.layout.path(k)))
        for k, dtype, shape in self._specs)

  def read(self, element) -> collections.OrderedDict:
    """The shard (features, 'label', 'mask', 'client_mask', 'true_cluster', 'seed')."""
    rows = tf.convert_to_tensor(element["rows"], tf.int32)
    full = {k: tf.raw_ops.ImmutableConst(dtype=dtype, shape=shape,
                                         memory_region_name=self.layout.path(k))
            for k, dtype, shape in self._specs}
    out = collections.OrderedDict()
    for k in self.layout.feature_keys:
      out[k] = tf.gather(full[k], rows)
    out["label"] = tf.gather(full["label"], rows)
    out["mask"] = tf.gather(full["mask"], rows)
    out["client_mask"] = tf.cast(tf.not_equal(rows, self.layout.pad_row), tf.float32)
    out["true_cluster"] = tf.gather(full["true_cluster"], rows)
    out["seed"] = tf.convert_to_tensor(element["seed"], tf.int64)
    return out


class ResidentRoundData:
  """Round data source over a `pina_tff.simulation.resident.Layout`.

  Its datasets hold row numbers and seeds only; the computations that consume them
  must be built with `self.reader` (`learning_process.build_process(...,
  reader=...)`, `stage1.build_sketch_computation(..., reader=...)`)."""

  def __init__(self, layout: resident.Layout):
    self.layout = layout
    self.reader = ResidentReader(layout)

  @staticmethod
  def shard_dataset(rows: np.ndarray, seeds: np.ndarray) -> tf.data.Dataset:
    """One TFF client's dataset: the single element {rows [S], seed [S, 2]}."""
    return tf.data.Dataset.from_tensors(collections.OrderedDict(
        rows=tf.constant(np.asarray(rows, np.int32)),
        seed=tf.constant(np.asarray(seeds, np.int64))))

  def round_data(self, ids: Sequence[int], seeds: Sequence, shard_size: int,
                 num_shards: Optional[int] = None, pad_seeds: Optional[Sequence] = None,
                 *, stage: Optional[int] = None, rnd: Optional[int] = None) -> list:
    """The round's TFF client datasets: the cohort `ids` (population indices) cut into
    consecutive shards of `shard_size`, padded with empty shards to `num_shards`
    (`resident.shard_rows`); `seeds[j]` is client `ids[j]`'s seed, `pad_seeds` the
    padding slots' keys in slot order. `stage` and `rnd` are accepted for the
    round-data-source interface and not used: everything a round depends on is in
    `ids` and the seeds."""
    del stage, rnd
    return [self.shard_dataset(rows, sd) for rows, sd in
            resident.shard_rows(self.layout, ids, seeds, shard_size, num_shards,
                                pad_seeds)]


def from_population(clients, feature_keys, n_max: int, directory: str,
                    feature_shapes=None) -> ResidentRoundData:
  """Lays out `clients` in `directory` (`resident.write_layout`) and returns the
  round data source reading it."""
  return ResidentRoundData(resident.write_layout(clients, feature_keys, n_max, directory,
                                                 feature_shapes=feature_shapes))


_lock = threading.Lock()
_process_dir: Optional[str] = None
_by_population: dict = {}   # id(pop) -> (weakref to pop, root, {'train'|split: source})
_counter = itertools.count()


def _layout_root() -> str:
  """This process's layout directory (`pina-shards-<pid>-*`, /dev/shm when available;
  removed at exit, or by the start-up sweep if the process died)."""
  global _process_dir
  if _process_dir is None:
    from pina_tff.runtime import sweep  # pylint: disable=g-import-not-at-top
    _process_dir = sweep.make_shard_dir()
    atexit.register(sweep.remove_shard_dir, _process_dir)
  return _process_dir


def population_sources(pop, split: str = "test") -> tuple:
  """(train, held-out `split`) round data sources of a
  `pina_tff.simulation.population.Population` ('val' or 'test'), each laid out once
  per population object and process and reused by later runs on it (pina-grid runs
  every method on one loaded population). Reusing the same files matters beyond the
  time saved: TensorFlow caches kernels, and with them the memory maps, by file name,
  so a fresh layout per run would keep every earlier run's maps."""
  with _lock:
    hit = _by_population.get(id(pop))
    if hit is None or hit[0]() is not pop:
      hit = (weakref.ref(pop), os.path.join(_layout_root(), f"population-{next(_counter)}"),
             {})
      _by_population[id(pop)] = hit
    _, root, sources = hit
    keys = pop.model.feature_keys
    if "train" not in sources:
      sources["train"] = from_population(pop.train, keys, pop.n_max_train,
                                         os.path.join(root, "train"))
    if split not in sources:
      sources[split] = from_population(pop.held_out(split), keys,
                                       pop.n_max_held_out(split), os.path.join(root, split))
    return sources["train"], sources[split]
