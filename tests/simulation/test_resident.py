"""The resident layout's NumPy reader against the shard packer on the original
population arrays: random cohorts, clients longer than n_max, padded and empty shards."""
import os

import numpy as np
import pytest

from pina_tff.errors import DataError
from pina_tff.simulation import resident
from pina_tff.training import shards

SIZES = [3, 1, 5, 2, 7, 4, 6, 2, 3, 5, 1]   # 7 > N_MAX: truncated like pack_shard
N_MAX = 6
KEYS = ("x_base", "z")


def _clients(seed=0):
  rng = np.random.default_rng(seed)
  return [{"x_base": rng.normal(size=(n, 4)).astype(np.float32),
           "z": rng.normal(size=(n, 2, 4)).astype(np.float32),
           "label": rng.integers(0, 10, n).astype(np.int32),
           "true_cluster": int(i % 3)} for i, n in enumerate(SIZES)]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  clients = _clients()
  return clients, resident.write_layout(clients, KEYS, N_MAX,
                                        str(tmp_path_factory.mktemp("r") / "layout"))


def _packed_round(clients, ids, seeds, shard_size, num_shards):
  """What computations.data.round_data.pack_round puts into each TFF client's shard."""
  chunks = shards.split_cohort(list(range(len(ids))), shard_size)
  chunks += [[] for _ in range(num_shards - len(chunks))]
  shapes = {k: clients[0][k].shape[1:] for k in KEYS}
  return [shards.pack_shard([clients[ids[j]] for j in c], KEYS, N_MAX,
                            num_slots=shard_size, client_seeds=[seeds[j] for j in c],
                            feature_shapes=shapes) for c in chunks]


@pytest.mark.parametrize("trial", range(6))
def test_reader_equals_packer_on_random_cohorts(layout, trial):
  clients, lay = layout
  rng = np.random.default_rng(100 + trial)
  m = int(rng.integers(0, len(clients) + 1))   # includes the empty cohort
  ids = [int(i) for i in rng.choice(len(clients), m, replace=False)]
  seeds = [(int(rng.integers(1, 1000)), int(i)) for i in ids]
  shard_size = int(rng.integers(1, 5))
  num_shards = -(-m // shard_size) + int(rng.integers(0, 3))   # extra empty shards
  got = resident.shard_rows(lay, ids, seeds, shard_size, num_shards)
  want = _packed_round(clients, ids, seeds, shard_size, num_shards)
  assert len(got) == len(want) == num_shards
  for (rows, sd), w in zip(got, want):
    g = resident.read_shard(lay, rows, sd)
    assert list(g) == list(w)   # same keys, same order
    for k in w:
      assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, k
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_padding_row_is_an_empty_client(layout):
  _, lay = layout
  (rows, sd), = resident.shard_rows(lay, [], [], 3, num_shards=1)
  assert rows.tolist() == [lay.pad_row] * 3 and not sd.any()
  g = resident.read_shard(lay, rows, sd)
  assert not g["mask"].any() and not g["client_mask"].any()
  assert not g["x_base"].any() and (g["true_cluster"] == -1).all()


def test_layout_reopens_and_bad_inputs_are_errors(layout, tmp_path):
  _, lay = layout
  again = resident.open_layout(lay.directory)
  assert again == lay
  with pytest.raises(ValueError, match="needs 2 shards > 1"):
    resident.shard_rows(lay, [0, 1, 2], [(0, 0)] * 3, 2, num_shards=1)
  with pytest.raises(ValueError, match="client ids must be in"):
    resident.shard_rows(lay, [lay.pad_row], [(0, 0)], 2)
  with pytest.raises(DataError, match="not found"):
    resident.open_layout(str(tmp_path))
  # a truncated array file is refused
  bad = tmp_path / "bad"
  lay2 = resident.write_layout(_clients(1)[:3], KEYS, N_MAX, str(bad))
  with open(lay2.path("z"), "r+b") as f:
    f.truncate(8)
  with pytest.raises(DataError, match="z.bin: 8 bytes, expected"):
    resident.open_layout(str(bad))


def test_rewrite_replaces_an_older_layout(tmp_path):
  d = str(tmp_path / "l")
  a = resident.write_layout(_clients(0), KEYS, N_MAX, d)
  b = resident.write_layout(_clients(1), KEYS, N_MAX, d)
  assert a.fingerprint != b.fingerprint
  assert sorted(os.listdir(tmp_path)) == ["l"]   # no temporary directory left
  np.testing.assert_array_equal(
      resident.read_shard(b, np.array([0]), np.zeros((1, 2)))["x_base"][0, :SIZES[0]],
      _clients(1)[0]["x_base"])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
