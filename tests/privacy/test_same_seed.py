"""Same seed, same run at a finite ε (issue 19, item 5), end to end on the shared tiny
digits population.

Two runs of PINA at ε = 8 with `aggregator='ddp'` (the seeded distributed DP,
`computations.learning.seeded_ddp`, in stages 0 and 2, and the local-DP sketches of stage 1)
and the same seed write identical `metrics.csv` and `summary.json` files apart from
the wall-clock fields (`wall_s`, `wall_clock_s`); a run with another seed gives other
metrics. The same for IFCA+LDP (each client's local-DP noise from its key). (Central
DP: tests/privacy/test_program_privacy.py; the seeded DDP against TFF's and its keys:
tests/privacy/test_seeded_ddp.py.)

The runs read the population's embeddings directory directly, so a run with another
seed does not rebuild the shared backbone cache (which is keyed by the seed).
"""
import csv
import json
import math

import pytest

from computations.runtime import context
from computations.program import program
from pina_tff import config as config_lib
from pina_tff.simulation import population

WALL_CLOCK_SUMMARY = ("wall_clock_s",)
WALL_CLOCK_METRICS = ("wall_s",)


@pytest.fixture(scope="module")
def embeddings_dir(digits_clients_dir):
  # Built (once, under its lock) for seed 0, as every test on the shared population.
  return population.ensure_embeddings(digits_clients_dir, 0)


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _cfg(seed=0, method="pina"):
  return config_lib.RunConfig(
      method=method, num_clusters=2, population=24, seed=seed, model_width=64,
      privacy=config_lib.PrivacyConfig(epsilon=8.0),
      stage0=config_lib.Stage0Config(enabled=True, rounds=1, cohort=10, clip=0.5),
      stage1=config_lib.Stage1Config(num_sketch_clients=20, top_k=8),
      stage2=config_lib.Stage2Config(rounds=2, cohort=10, batch_size=16, clip=0.5,
                                     aggregator="ddp", warm_rounds=1))


@pytest.fixture(scope="module")
def run(embeddings_dir, tff_ctx, tmp_path_factory):
  """run(name, **cfg) -> (metrics rows without wall clock, summary without it)."""
  del tff_ctx
  done = {}

  def get(name, **kw):
    if name not in done:
      root = tmp_path_factory.mktemp(name)
      program.run_simulation(_cfg(**kw), embeddings_dir, str(root),
                             program.ProgramOptions(shard_size=4, progress="none"),
                             log=lambda m: None)
      with open(root / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in WALL_CLOCK_METRICS}
                for r in csv.DictReader(f)]
      summary = json.loads((root / "summary.json").read_text())
      assert all(k in summary for k in WALL_CLOCK_SUMMARY)
      done[name] = (rows, {k: v for k, v in summary.items()
                           if k not in WALL_CLOCK_SUMMARY})
    return done[name]

  return get


def test_same_seed_gives_identical_metrics_and_summary(run):
  rows_a, summary_a = run("a")
  rows_b, summary_b = run("b")
  assert len(rows_a) == 3 and rows_a == rows_b
  assert summary_a == summary_b
  assert summary_a["noise_reproducible"] is True
  assert 0.99 * 8.0 <= summary_a["epsilon_server"] <= 8.0
  z = summary_a["noise_multipliers"]
  assert min(z["z0"], z["z1"], z["z2"]) > 0  # noise in every stage
  assert summary_a["aggregator"] == "ddp"
  assert set(summary_a["ddp_nominal_noise_multipliers"]) == {"stage0", "stage2"}
  assert not math.isnan(float(rows_a[-1]["train_loss"]))


def test_another_seed_gives_other_metrics(run):
  rows_a, summary_a = run("a")
  rows_c, summary_c = run("seed1", seed=1)
  assert len(rows_c) == len(rows_a)
  # The mean training loss is a float of the cohort's models: equal only by chance.
  assert [r["train_loss"] for r in rows_c] != [r["train_loss"] for r in rows_a]
  assert summary_c["config"]["seed"] == 1 and summary_a["config"]["seed"] == 0
  assert summary_c["noise_reproducible"] is True


def test_local_dp_same_seed_gives_identical_metrics_and_summary(run):
  """IFCA+LDP: every client adds its own Gaussian noise (local DP) from its key;
  the same seed repeats it exactly, another seed does not."""
  rows_a, summary_a = run("ldp_a", method="ifca_ldp")
  rows_b, summary_b = run("ldp_b", method="ifca_ldp")
  rows_c, _ = run("ldp_seed1", method="ifca_ldp", seed=1)
  assert rows_a == rows_b and summary_a == summary_b
  assert summary_a["noise_reproducible"] is True
  assert summary_a["noise_multipliers"]["z2"] > 0
  assert summary_a["local_epsilon_ifca_ldp"] not in (None, "inf")
  assert [r["train_loss"] for r in rows_c] != [r["train_loss"] for r in rows_a]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
