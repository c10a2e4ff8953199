"""The program's privacy wiring end to end on a tiny digits population: both threat
models and the noise settings in summary.json, a seeded (simulation-mode) DP run that a
resumed run repeats exactly, secure-mode seeds, and the diagnostics switch."""
import csv
import json
import math

import numpy as np
import pytest

from computations.learning import aggregators as agg
from computations.runtime import context
from computations.program import program
from pina_tff import config as config_lib
from pina_tff.privacy import accounting
from pina_tff.simulation import sampling
from computations.program import seeds

NUM_CLIENTS = 24  # tests/conftest.py: DIGITS_CLIENTS
SEED = 0  # tests/conftest.py: the shared population's cache is built for seed 0


@pytest.fixture(scope="module")
def clients_dir(digits_clients_dir):
  """The session's shared tiny digits population (tests/conftest.py)."""
  return digits_clients_dir


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _cfg(t0=1, t2=2, **privacy):
  return config_lib.RunConfig(
      method="fedavg", num_clusters=1, population=NUM_CLIENTS, seed=SEED, model_width=64,
      privacy=config_lib.PrivacyConfig(**{"epsilon": 8.0, **privacy}),
      stage0=config_lib.Stage0Config(enabled=t0 > 0, rounds=t0, cohort=10, clip=0.5),
      stage1=config_lib.Stage1Config(num_sketch_clients=20, top_k=8),
      stage2=config_lib.Stage2Config(rounds=t2, cohort=10, batch_size=16, clip=0.5,
                                     aggregator="central"))


def _opts(**kw):
  return program.ProgramOptions(shard_size=4, checkpoint_every=1, progress="none", **kw)


def _rows(root):
  with open(root / "metrics.csv", newline="") as f:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def run_a(clients_dir, tff_ctx, tmp_path_factory):
  root = tmp_path_factory.mktemp("a")
  program.run_simulation(_cfg(), clients_dir, str(root), _opts(), log=lambda m: None)
  return root


def test_summary_reports_both_threat_models_and_noise_settings(run_a):
  s = json.loads((run_a / "summary.json").read_text())
  cfg = config_lib.validate(_cfg())
  plan = accounting.plan_from_config(cfg)
  zs = {"stage0": s["noise_multipliers"]["z0"], "stage1": 0.0,
        "stage2": s["noise_multipliers"]["z2"]}
  assert s["threat_model_calibrated"] == "server"
  assert 0.99 * 8.0 <= s["epsilon_server"] <= 8.0
  assert s["epsilon_server"] == pytest.approx(
      accounting.run_epsilon(plan, zs, s["delta"], "server"))
  assert s["epsilon_release"] == pytest.approx(
      accounting.run_epsilon(plan, zs, s["delta"], "release"))
  assert s["epsilon_release"] < s["epsilon_server"]
  # The release ε never appears without the condition it needs.
  assert "holds only if the seed is secret" in s["epsilon_release_condition"]
  assert s["delta"] == min(1e-5, 1 / (10 * NUM_CLIENTS))
  assert (s["sampling"], s["noise_mode"]) == ("poisson", "simulation")
  assert s["noise_reproducible"] is True  # central DP, seeded
  # Constant shard count: enough for the largest Poisson cohort of each stage.
  big2 = sampling.max_cohort_size(SEED, 2, 2, NUM_CLIENTS, 10)
  assert s["tff_shards_per_round"]["stage2"] == math.ceil(big2 / 4)
  assert "train_loss" in s["released_outside_epsilon"]["metrics.csv"]


def test_seeded_dp_run_resumed_equals_uninterrupted(run_a, clients_dir, tff_ctx,
                                                    tmp_path):
  root_b = tmp_path / "b"
  assert program.run_simulation(_cfg(), clients_dir, str(root_b),
                                _opts(stop_after_rounds=2),
                                log=lambda m: None) == {"interrupted": True}
  program.run_simulation(_cfg(), clients_dir, str(root_b), _opts(), log=lambda m: None)
  rows_a, rows_b = _rows(run_a), _rows(root_b)
  assert len(rows_a) == 3 and rows_b == rows_a
  a = json.loads((run_a / "summary.json").read_text())
  b = json.loads((root_b / "summary.json").read_text())
  assert b["final_accuracy"] == a["final_accuracy"]
  # Same seed, same run (central DP at eps = 8): the whole summary but wall-clock time.
  a.pop("wall_clock_s"), b.pop("wall_clock_s")
  assert b == a


def test_diagnostics_off_releases_nothing_outside_epsilon(clients_dir, tff_ctx, tmp_path):
  root = tmp_path / "c"
  s = program.run_simulation(_cfg(t0=0, t2=1), clients_dir, str(root),
                             _opts(simulation_diagnostics=False), log=lambda m: None)
  assert s["released_outside_epsilon"] == {} and s["simulation_diagnostics"] is False
  (row,) = _rows(root)
  for key in ("test_accuracy", "clustering_accuracy", "train_loss", "count_0"):
    assert math.isnan(float(row[key])), key
  assert math.isnan(s["final_accuracy"])


def test_noise_seeds_simulation_vs_secure():
  sim = config_lib.validate(_cfg())
  sec = config_lib.validate(_cfg(noise_mode="secure"))
  assert np.array_equal(seeds.noise_seed(sim, 2, 5), seeds.noise_seed(sim, 2, 5))
  assert not np.array_equal(seeds.noise_seed(sim, 2, 5), seeds.noise_seed(sim, 2, 6))
  assert not np.array_equal(seeds.noise_seed(sec, 2, 5), seeds.noise_seed(sec, 2, 5))
  ids = [0, 1, 2]
  sim_keys = seeds.client_keys(3, 1, 0, ids)
  assert np.array_equal(sim_keys, seeds.client_keys(3, 1, 0, ids))
  a = seeds.client_keys(3, 1, 0, ids, "secure")
  b = seeds.client_keys(3, 1, 0, ids, "secure")
  assert not np.array_equal(a, b) and not np.array_equal(a, sim_keys)
  assert agg.derived_seed(3, 2, 5).dtype == np.int64


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
