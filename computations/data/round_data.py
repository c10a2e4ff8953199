"""Where a round's TFF client values come from: the `RoundDataSource` interface.

The round loop (`computations.program.round_loop`) asks a data source for the values of one
round's cohort; it never packs data itself. Two implementations:

* `ResidentStages` (`'resident'` transport, the default): the population is laid out
  once per process (`computations.data.resident_data`); each round ships only the cohort's
  row numbers and client seeds, and the client computation, built with the source's
  `reader`, gathers its shard itself. Nothing is packed or written per round.
* `PackedRoundData`: the cohort's simulated clients are packed into shards of S
  (`pina_tff.training.shards`) every round and shipped as `tf.data` datasets, either
  reading per-round files (`'file'`, `/dev/shm` when available) or with the data
  serialized inline (`'inline'`).

Both cut the cohort into the same shards, padded with empty shards to the stage's
constant number of TFF clients, with the same per-client seeds, so results do not
depend on the transport (tests/computations/test_resident_data.py).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Protocol, Sequence

from computations.learning import client_work as cw
from computations.data import resident_data
from pina_tff.errors import ConfigError
from pina_tff.runtime import sweep
from pina_tff.simulation import resident
from pina_tff.training import shards as shards_lib

TRANSPORTS = ("resident", "file", "inline")


class RoundDataSource(Protocol):
  """The TFF client values of one round (one value per TFF client, placed @CLIENTS).

  Attributes:
    reader: what the client computations must be built with to read these values
      (`learning_process.build_process(..., reader=...)`); None: the values are the
      packed shards themselves.
  """

  reader: Optional[resident_data.ResidentReader]

  def round_data(self, stage: int, rnd: int, ids: Sequence[int],
                 seeds: Sequence, pad_seeds: Optional[Sequence] = None) -> list:
    """Args: stage (0, 1 or 2), round (1-based; 0 for stage 1), the cohort's client
    indices and each client's stateless seed (same order), and the keys of the
    padding slots in slot order (None: (0, 0)). Returns the list of TFF client
    values."""

  def close(self) -> None:
    """Frees what the source holds (files, memory)."""


@dataclasses.dataclass(frozen=True)
class StageLayout:
  """How one stage's cohort maps onto TFF clients.

  Attributes:
    shard_size: simulated clients per TFF client (S).
    num_shards: TFF clients per round, constant over the stage (None: as many as the
      cohort needs).
  """
  shard_size: int
  num_shards: Optional[int] = None


def pack_round(clients, ids, feature_keys, n_max, shard_size, seeds, file_dir=None,
               num_shards=None, pad_seeds=None) -> list:
  """The round's TFF client datasets: shards of the cohort (file-backed if file_dir),
  padded with empty shards to ``num_shards``; padding slots get ``pad_seeds`` in slot
  order ((0, 0) if None).

  Raises:
    ValueError: the cohort needs more than ``num_shards`` shards.
  """
  datasets = []
  chunks = shards_lib.split_cohort(list(range(len(ids))), shard_size)
  if num_shards is not None:
    if len(chunks) > num_shards:
      raise ValueError(f"a cohort of {len(ids)} needs {len(chunks)} shards > {num_shards}")
    chunks += [[] for _ in range(num_shards - len(chunks))]
  feature_shapes = {k: clients[0][k].shape[1:] for k in feature_keys}
  slot_seeds = resident.slot_keys(seeds[:len(ids)], len(chunks) * shard_size, pad_seeds)
  for i, chunk in enumerate(chunks):
    members = [clients[ids[j]] for j in chunk]
    shard = shards_lib.pack_shard(members, feature_keys, n_max, num_slots=shard_size,
                                  client_seeds=[seeds[j] for j in chunk],
                                  feature_shapes=feature_shapes)
    shard["seed"] = slot_seeds[i * shard_size:(i + 1) * shard_size].copy()
    datasets.append(cw.shard_to_file_dataset(shard, file_dir, f"shard{i:05d}")
                    if file_dir else cw.shard_to_dataset(shard))
  return datasets


class PackedRoundData:
  """`RoundDataSource` packing the cohort's clients into shards every round.

  Args:
    clients: per simulated client, its training arrays ({feature: [n, ...], 'label'}).
    feature_keys: the model's feature keys.
    n_max: largest client size (the shards' static example dimension).
    layouts: {stage: StageLayout}.
    transport: 'file' or 'inline' (see the module docstring).
    in_memory_only: keep shards in memory whatever ``transport`` says (secure noise
      mode: client seeds never touch a file).

  Raises:
    ConfigError: unknown ``transport``.
  """

  reader = None  # the datasets hold the packed shards

  def __init__(self, clients, feature_keys, n_max: int,
               layouts: Mapping[int, StageLayout], transport: str = "file",
               in_memory_only: bool = False):
    if transport not in ("file", "inline"):
      raise ConfigError(f"PackedRoundData: transport must be 'file' or 'inline', found "
                        f"{transport!r}")
    self._clients, self._keys, self._n_max = clients, feature_keys, n_max
    self._layouts = dict(layouts)
    self._file_dir = (sweep.make_shard_dir()
                      if transport == "file" and not in_memory_only else None)

  def round_data(self, stage: int, rnd: int, ids, seeds, pad_seeds=None) -> list:
    del rnd  # the packing is the same every round
    layout = self._layouts[stage]
    return pack_round(self._clients, ids, self._keys, self._n_max, layout.shard_size,
                      seeds, self._file_dir, layout.num_shards, pad_seeds)

  def close(self) -> None:
    if self._file_dir is not None:
      sweep.remove_shard_dir(self._file_dir)
      self._file_dir = None


class ResidentStages:
  """`RoundDataSource` over a resident population (`computations.data.resident_data`).

  Args:
    source: the population's `resident_data.ResidentRoundData` (laid out once per
      population object and process: `resident_data.population_sources`).
    layouts: {stage: StageLayout}.
  """

  def __init__(self, source: resident_data.ResidentRoundData,
               layouts: Mapping[int, StageLayout]):
    self._source = source
    self._layouts = dict(layouts)
    self.reader = source.reader

  def round_data(self, stage: int, rnd: int, ids, seeds, pad_seeds=None) -> list:
    del rnd  # the cohort and seeds say everything
    layout = self._layouts[stage]
    return self._source.round_data(ids, seeds, layout.shard_size, layout.num_shards,
                                   pad_seeds)

  def close(self) -> None:
    """Nothing per run: the layout stays for later runs on the same population (it is
    removed at process exit, or by the start-up sweep after a crash)."""


def check_transport(transport: str) -> None:
  """Raises ConfigError unless `transport` is one of `TRANSPORTS`."""
  if transport not in TRANSPORTS:
    raise ConfigError(f"shard_transport must be one of {TRANSPORTS}, found {transport!r}")
