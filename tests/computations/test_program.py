"""computations.program end to end on a tiny prepared digits population.

An uninterrupted run and an interrupted + resumed run (epsilon = inf, so the result is
deterministic) must end with exactly the same metrics, and metrics.csv must hold one
row per round. A short DP run checks the privacy report.
"""
import csv
import json
import math

import pytest

from computations import context
from computations import program
from pina_tff import config as config_lib
from pina_tff.data import beam_prepare

NUM_CLIENTS = 24
T0, T2 = 2, 4
SUMMARY_KEYS = {"method", "dataset", "epsilon_target", "epsilon_achieved", "delta",
                "noise_multipliers", "rounds", "final_accuracy", "clustering_accuracy",
                "wall_clock_s"}


@pytest.fixture(scope="module")
def clients_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("program") / "digits"
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      output_dir=str(out), dataset="digits", num_clients=NUM_CLIENTS, num_shards=1,
      seed=0))
  return str(out)


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _cfg(method="pina", epsilon=math.inf, t0=T0, t2=T2):
  return config_lib.RunConfig(
      method=method, num_clusters=4, population=NUM_CLIENTS, seed=0, model_width=64,
      privacy=config_lib.PrivacyConfig(epsilon=epsilon),
      stage0=config_lib.Stage0Config(enabled=True, rounds=t0, cohort=10, lr=0.1, clip=1.0),
      stage1=config_lib.Stage1Config(num_sketch_clients=20, local_epochs=1, lr=0.5,
                                     top_k=8, clip=1.0, kmeans_restarts=2),
      stage2=config_lib.Stage2Config(rounds=t2, cohort=10, batch_size=16, client_lr=0.1,
                                     clip=1.0, warm_rounds=1, scaling="pina",
                                     aggregator="ddp"))


def _opts(**kw):
  return program.ProgramOptions(shard_size=5, checkpoint_every=1, progress="none", **kw)


def _rows(root):
  with open(root / "metrics.csv", newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(clients_dir, tff_ctx, tmp_path_factory):
  root = tmp_path_factory.mktemp("run_a")
  summary = program.run_simulation(_cfg(), clients_dir, str(root), _opts(),
                                   log=lambda m: None)
  return root, summary


def test_uninterrupted_run_writes_summary_and_one_row_per_round(uninterrupted):
  root, summary = uninterrupted
  on_disk = json.loads((root / "summary.json").read_text())
  assert SUMMARY_KEYS <= set(on_disk), SUMMARY_KEYS - set(on_disk)
  assert on_disk["method"] == "pina" and on_disk["dataset"] == "digits"
  assert on_disk["epsilon_target"] == "inf"
  assert on_disk["rounds"] == {"stage0": T0, "stage2": T2}
  assert 0.0 <= on_disk["final_accuracy"] <= 1.0
  assert 0.0 <= on_disk["clustering_accuracy"] <= 1.0
  assert on_disk["final_accuracy"] == summary["final_accuracy"]
  rows = _rows(root)
  keys = [int(r["key"]) for r in rows]
  assert keys == list(range(1, T0 + T2 + 1)), keys
  assert [(int(r["stage"]), int(r["round"])) for r in rows] == (
      [(0, r) for r in range(1, T0 + 1)] + [(2, r) for r in range(1, T2 + 1)])


def test_interrupted_then_resumed_run_matches_exactly(uninterrupted, clients_dir,
                                                      tff_ctx, tmp_path):
  root_a, summary_a = uninterrupted
  root_b = tmp_path / "run_b"
  partial = program.run_simulation(_cfg(), clients_dir, str(root_b),
                                   _opts(stop_after_rounds=3), log=lambda m: None)
  assert partial == {"interrupted": True}
  assert not (root_b / "summary.json").exists()
  assert len(_rows(root_b)) == 3
  summary_b = program.run_simulation(_cfg(), clients_dir, str(root_b), _opts(),
                                     log=lambda m: None)
  assert summary_b["final_accuracy"] == summary_a["final_accuracy"]
  assert summary_b["clustering_accuracy"] == summary_a["clustering_accuracy"]
  assert summary_b["init_clustering_accuracy"] == summary_a["init_clustering_accuracy"]
  rows_a, rows_b = _rows(root_a), _rows(root_b)
  keys_b = [int(r["key"]) for r in rows_b]
  assert keys_b == list(range(1, T0 + T2 + 1)), f"duplicate or missing rows: {keys_b}"
  skip = {"wall_s"}
  strip = lambda rows: [{k: v for k, v in r.items() if k not in skip} for r in rows]
  assert strip(rows_b) == strip(rows_a)


def test_dp_baseline_reports_finite_epsilon(clients_dir, tff_ctx, tmp_path):
  summary = program.run_simulation(_cfg("ifca_ldp", epsilon=8.0, t0=1, t2=2), clients_dir,
                                   str(tmp_path / "ldp"), _opts(), log=lambda m: None)
  on_disk = json.loads((tmp_path / "ldp" / "summary.json").read_text())
  assert SUMMARY_KEYS <= set(on_disk)
  eps = on_disk["epsilon_achieved"]
  assert isinstance(eps, float) and math.isfinite(eps) and 0 < eps <= 8.0 + 1e-6, eps
  assert on_disk["method"] == "ifca_ldp"
  assert on_disk["noise_multipliers"]["z2"] > 0
  assert len(_rows(tmp_path / "ldp")) == 1 + 2


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
