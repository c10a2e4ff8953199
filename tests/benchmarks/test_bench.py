"""Fast checks of pina-bench: the head benchmark's output format, and that its three
paths (stock TFF, sharded TFF, plain TF) compute the same round when noise is 0."""

import re

import numpy as np
import pytest
from absl import flags

from benchmarks import bench

LAST_LINE = re.compile(r"^head clients=4 stock_tff_ms_per_client=\d+\.\d+ "
                       r"sharded_ms_per_client=\d+\.\d+ plain_tf_ms_per_client=\d+\.\d+$")


@pytest.fixture(scope="module")
def head_run():
  # Noise 0 and no shuffling: every path is deterministic. Shard size 3 for 4 clients
  # leaves a padding slot in the second shard, which must not change the sum.
  return bench.run_head(num_clients=4, rounds=1, shard_size=3, noise=0.0,
                        runtime="simulation",
                        paths=("stock", "sharded", "sharded_file", "sharded_program", "plain"))


def test_three_paths_give_same_weights(head_run):
  w = head_run["weights"]
  assert set(w) == {"stock", "sharded", "sharded_file", "sharded_program", "plain"}
  for name in ("sharded", "sharded_file", "sharded_program", "plain"):
    for got, want in zip(w[name], w["stock"]):
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)
  _, _, kernel, _ = bench.head_data(4)
  assert np.abs(w["stock"][0] - kernel).max() > 1e-4  # the round did move the model


def test_head_main_last_line(capsys):
  flags.FLAGS(["pina-bench", "--clients=4", "--rounds=1", "--runtime=simulation",
               "--paths=stock,sharded,plain"])
  try:
    bench.main(["pina-bench", "head"])
  finally:
    flags.FLAGS.unparse_flags()
  lines = capsys.readouterr().out.strip().splitlines()
  assert LAST_LINE.match(lines[-1]), lines[-1]


def test_unknown_subcommand():
  from pina_tff.errors import ConfigError  # one `error:` line, exit 2 under cli.run
  with pytest.raises(ConfigError, match=r"head \| stage2 \| embed"):
    bench.main(["pina-bench", "nope"])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
