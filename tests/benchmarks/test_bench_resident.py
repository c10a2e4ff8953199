"""pina-bench's resident head path (what pina-simulate runs now) computes the same round
as plain TF, and its last lines parse."""

import re

import numpy as np
import pytest
from absl import flags

from benchmarks import bench


def test_resident_path_equals_plain_tf():
  # Noise 0, no shuffling; shard size 3 for 4 clients leaves a padding slot.
  res = bench.run_head(num_clients=4, rounds=1, shard_size=3, noise=0.0,
                       runtime="simulation", paths=("resident", "plain"))
  w = res["weights"]
  for got, want in zip(w["resident"], w["plain"]):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  _, _, kernel, _ = bench.head_data(4)
  assert np.abs(w["resident"][0] - kernel).max() > 1e-4


def test_head_main_reports_resident_as_ours(capsys):
  flags.FLAGS(["pina-bench", "--clients=3", "--rounds=1", "--runtime=simulation",
               "--paths=resident,plain"])
  try:
    bench.main(["pina-bench", "head"])
  finally:
    flags.FLAGS.unparse_flags()
  lines = capsys.readouterr().out.strip().splitlines()
  assert re.match(r"^head_ratios clients=3 pfl_ms_per_client=nan sharded_path=resident "
                  r"sharded_over_plain=\d+\.\d+ pfl_over_sharded=nan "
                  r"stock_over_sharded=nan$", lines[-2]), lines[-2]
  assert re.match(r"^head clients=3 stock_tff_ms_per_client=nan sharded_ms_per_client="
                  r"\d+\.\d+ plain_tf_ms_per_client=\d+\.\d+$", lines[-1]), lines[-1]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
