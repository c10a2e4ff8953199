"""benchmarks.fixed_cost (issue 22 item 3) runs at tiny size: the process before the
fixed-cost cuts and the process pina-simulate builds now give the same state and
metrics every round, bit for bit, and every path is timed."""

import pytest

from benchmarks import fixed_cost


def test_fixed_cost_before_and_after_agree_and_are_timed():
  res = fixed_cost.run(num_clients=6, rounds=2)
  assert res["identical"] is True
  assert all(len(v) == 2 and min(v) > 0 for v in res["round_s"].values())
  assert set(res["median_s"]) == {"before", "after", "plain"}
  assert res["before_over_after"] > 0


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
