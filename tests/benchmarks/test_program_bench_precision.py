"""pina-bench stage2's program path with the precision option: the whole program
(stage 1, stage-2 TFF rounds) runs at tiny size in float32 and in bfloat16 and
records what ran in summary.json; the FLOP count and the matmul peak."""

import numpy as np
import pytest

from benchmarks import program_bench


def test_stage2_flops_counts_the_tail_by_hand():
  # ViT-S/16: the MLP 2 x 384 x 1536 MACs, head 384 x 10 MACs, LoRA 2 x 6 x 384 MACs
  # per example; M = B W_O 384 x 384 MACs per client and pass; C = 4, E = 5: 14 passes.
  per_example = 2 * (2 * 384 * 1536 + 384 * 10 + 2 * 6 * 384)
  want = 1000 * 14 * (5 * per_example + 2 * 384 * 384)
  assert program_bench.stage2_flops("vit_s16", 1000, 4, 5) == want


def test_matmul_peak_reports_the_tail_shape():
  res = program_bench.matmul_peak("fmnist", "bfloat16", rows=512, reps=1)
  assert res["shape"] == [512, 64, 128] and res["dtype"] == "bfloat16"
  assert res["gflops"] > 0


@pytest.fixture(scope="module")
def runs():
  return {p: program_bench.run(model_name="fmnist", population=60, cohort=20,
                               clusters=2, rounds=1, sketch_clients=20, eval_every=1000,
                               precision=p)
          for p in ("float32", "bfloat16")}


def test_summary_records_what_ran(runs):
  for p, r in runs.items():
    assert r["client_precision"]["requested"] == p
    assert r["client_precision"]["compute_dtype"] == p
    assert len(r["round_s"]) >= 1 and r["flops_per_round"] > 0


def test_the_vit_s16_program_path_runs():
  """The ViT-S/16-feature path of the program benchmark (model width 384): its fake
  manifest must name a 384-wide backbone, or the program refuses the data (it once
  named the FMNIST model's 64 for every model)."""
  r = program_bench.run(model_name="vit_s16", population=24, cohort=8, clusters=2,
                        rounds=1, sketch_clients=8, eval_every=1000)
  assert len(r["round_s"]) >= 1 and r["flops_per_round"] > 0


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
