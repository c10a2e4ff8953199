"""Resident round data (shards gathered inside the client computation) against packed
shards: the same element, the same TFF round, the same program run.

* The reader's shard (what the client computation gathers from the dataset's row
  numbers) equals `pack_shard` of the same clients and seeds, key for key and bit for
  bit, with a padded shard and an empty (all-padding) shard, with the packed dtypes
  and static shapes.
* One round of the composed TFF process (C = 2, loss-based cluster choice, clipping
  active, noise off) built with the reader on resident datasets gives the same new
  models as the plain process on packed shards.
* The program at epsilon = inf on the shared digits population (stage 0, PINA stage 1,
  stage 2 with momentum) writes the same metrics and summary with
  shard_transport='resident' as with 'file'.
"""
import csv
import math

import numpy as np
import pytest

from computations.learning import aggregators as agg
from computations.learning import client_work as cw
from computations.runtime import context
from computations.learning import learning_process as lp
from computations.program import program
from computations.data import resident_data
from pina_tff import config as config_lib
from pina_tff.simulation import resident
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards
from tests.computations import _fl_helpers as h
from pina_tff.errors import ConfigError

DIM, K, C = 5, 3, 2
SIZES = [5, 7, 3, 6, 4, 8, 2, 5, 1, 6]
N_MAX = 7   # the 8-example client is truncated, as pack_shard does
CLIP = 0.5


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


@pytest.fixture(scope="module")
def population(tmp_path_factory):
  clients = h.make_clients(SIZES, DIM, K, seed=3, true_clusters=[i % C for i in range(len(SIZES))])
  source = resident_data.from_population(clients, ("x",), N_MAX,
                                         str(tmp_path_factory.mktemp("res") / "layout"))
  return clients, source


def _packed(clients, ids, seeds, shard_size, num_shards):
  chunks = shards.split_cohort(list(range(len(ids))), shard_size)
  chunks += [[] for _ in range(num_shards - len(chunks))]
  return [shards.pack_shard([clients[ids[j]] for j in c], ("x",), N_MAX,
                            num_slots=shard_size, client_seeds=[seeds[j] for j in c],
                            feature_shapes={"x": (DIM,)}) for c in chunks]


IDS = [7, 2, 9, 5, 0, 3, 8]           # 7 clients, shards of 3: 3 + 3 + 1(+2 padding)
SEEDS = [(11, i) for i in IDS]


def test_element_equals_the_packed_shard(population):
  clients, source = population
  data = source.round_data(IDS, SEEDS, 3, num_shards=4)   # the 4th shard is empty
  want = _packed(clients, IDS, SEEDS, 3, 4)
  assert len(data) == 4
  for ds, w in zip(data, want):
    got = source.reader.read(ds.get_single_element())
    assert list(got) == list(w)
    packed_spec = cw.shard_to_dataset(w).element_spec
    assert {k: (v.dtype, tuple(v.shape)) for k, v in got.items()} == {
        k: (v.dtype, tuple(v.shape)) for k, v in packed_spec.items()}
    for k in w:
      np.testing.assert_array_equal(got[k].numpy(), w[k], err_msg=k)


def _process(shard_size, num_shards, reader=None):
  model = tm.LinearModel(DIM, K)
  spec = lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=C, local_epochs=2, batch_size=2,
                            learning_rate=0.5, clip_norm=CLIP, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS, choose_cluster=True, shuffle=True,
                            num_true_clusters=C),
      aggregator=agg.AggregatorSpec(kind="central", noise_multiplier=0.0, clip_norm=CLIP,
                                    expected_clients=len(IDS), shard_size=shard_size,
                                    num_shards=num_shards),
      shard_size=shard_size, n_max=N_MAX, scaling_mode="none", server_learning_rate=1.0)
  return lp.build_process(model, spec, reader=reader)


def test_tff_round_from_resident_equals_packed(population, tff_ctx):
  clients, source = population
  rng = np.random.default_rng(4)
  params = {"head_kernel": rng.normal(size=(C, DIM, K)).astype(np.float32),
            "head_bias": rng.normal(size=(C, K)).astype(np.float32)}
  packed = [cw.shard_to_dataset(s) for s in _packed(clients, IDS, SEEDS, 3, 4)]
  want = h.run_rounds(_process(3, 4), params, packed)
  process = _process(3, 4, source.reader)
  got = h.run_rounds(process, params, source.round_data(IDS, SEEDS, 3, 4))
  moved = False
  for k in params:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    moved |= not np.allclose(got[k], params[k])
  assert moved
  # Control: other seeds for the same clients change the round (shuffles differ).
  other = h.run_rounds(process, params,
                       source.round_data(IDS, [(12, i) for i in IDS], 3, 4))
  assert not all(np.array_equal(other[k], want[k]) for k in params)


def _cfg():
  return config_lib.RunConfig(
      method="pina", num_clusters=3, population=24, seed=0, model_width=64,
      privacy=config_lib.PrivacyConfig(epsilon=math.inf),
      stage0=config_lib.Stage0Config(enabled=True, rounds=1, cohort=8, lr=0.1, clip=0.7),
      stage1=config_lib.Stage1Config(num_sketch_clients=20, local_epochs=1, lr=0.5,
                                     top_k=8, clip=0.6, kmeans_restarts=2),
      stage2=config_lib.Stage2Config(rounds=2, cohort=10, batch_size=16, client_lr=0.3,
                                     clip=0.4, server_lr=0.8, server_momentum=0.5,
                                     warm_rounds=1, scaling="pina",
                                     aggregator="central"))


def _run(clients_dir, root, transport):
  summary = program.run_simulation(
      _cfg(), clients_dir, str(root),
      program.ProgramOptions(shard_size=4, progress="none", shard_transport=transport),
      log=lambda m: None)
  with open(root / "metrics.csv", newline="") as f:
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]
  return summary, rows


def test_program_resident_equals_file(digits_clients_dir, tff_ctx, tmp_path):
  s_file, r_file = _run(digits_clients_dir, tmp_path / "file", "file")
  s_res, r_res = _run(digits_clients_dir, tmp_path / "resident", "resident")
  assert len(r_res) == 3 and r_res == r_file
  for key in ("final_accuracy", "clustering_accuracy", "init_clustering_accuracy"):
    assert s_res[key] == s_file[key], key
  assert not math.isnan(s_res["final_accuracy"])


def test_layout_is_made_once_per_population_object():
  from pina_tff.simulation import population as population_lib
  from benchmarks import program_bench
  pop = program_bench.synthetic_population("fmnist", 6, 2)
  train, test = resident_data.population_sources(pop)
  again = resident_data.population_sources(pop)
  assert again[0] is train and again[1] is test
  other = population_lib.Population(**{**pop.__dict__})
  assert resident_data.population_sources(other)[0].layout.directory != train.layout.directory
  rows, sd = resident.shard_rows(test.layout, [5, 0], [(1, 5), (1, 0)], 3)[0]
  got = test.reader.read({"rows": rows, "seed": sd})
  np.testing.assert_array_equal(got["z"].numpy()[0, :1], pop.test[5]["z"])
  assert got["client_mask"].numpy().tolist() == [1, 1, 0]


def test_unknown_transport_is_an_error(digits_clients_dir, tmp_path):
  with pytest.raises(ConfigError, match="shard_transport must be"):
    program.run_simulation(_cfg(), digits_clients_dir, str(tmp_path),
                           program.ProgramOptions(progress="none", shard_transport="x"),
                           log=lambda m: None)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
