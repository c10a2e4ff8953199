"""pina-simulate (python -m pipelines.simulate) rejects bad flags with one clear
`error: ...` line on stderr, exit code 2 and no Python traceback.

Every case runs pina-simulate's own `run()` (strict flag parsing, one-line errors) in one
driver process (`_cli_driver.py`: one TensorFlow import for all cases); one case also
goes through the real entry point (`python -m`, absl's app.run) to check the exit status
and the absence of a traceback end to end.
"""
import subprocess
import sys

import pytest

from tests.pipelines import _cli_driver as cli_driver

_ROOT = cli_driver.ROOT
NUM_CLIENTS = 24  # tests/conftest.py: DIGITS_CLIENTS

# name -> (flags, words the error line must contain); '{clients}' is the tiny dataset.
CASES = {
    "negative_epsilon": (["--epsilon=-1", "--clients_dir={clients}"], ["epsilon"]),
    "non_numeric_epsilon": (["--epsilon=abc", "--clients_dir={clients}"], ["epsilon", "abc"]),
    "cohort_above_population": (["--cohort=30", "--clients_dir={clients}"],
                                ["cohort", str(NUM_CLIENTS)]),
    "zero_clusters": (["--num_clusters=0", "--clients_dir={clients}"], ["num_clusters"]),
    "huge_top_k": (["--top_k=10000", "--clients_dir={clients}"], ["top_k", "10000"]),
    "zero_clip": (["--clip=0", "--clients_dir={clients}"], ["clip"]),
    "infinite_clip": (["--clip=inf", "--clients_dir={clients}"], ["clip", "finite"]),
    "ddp_bits_out_of_range": (["--ddp_bits=12", "--clients_dir={clients}"],
                              ["ddp_bits", "12"]),
    "tiny_epsilon": (["--epsilon=1e-3", "--cohort=10", "--sketch_clients=20",
                      "--rounds=2", "--stage0_rounds=1", "--clients_dir={clients}"],
                     # 24 clients: calibration succeeds (z ~ 1e5), DDP cannot reach it.
                     ["distributed DP", "noise multiplier"]),
    "missing_clients_dir": ([], ["--clients_dir"]),
    "clients_dir_does_not_exist": (["--clients_dir={missing}"], ["not found"]),
    "malformed_worker_address": (["--worker_addresses=10.0.0.1:8000,nohost",
                                  "--clients_dir={clients}"],
                                 ["--worker_addresses", "nohost"]),
    "workers_and_addresses": (["--workers=2", "--worker_addresses=10.0.0.1:8000",
                               "--clients_dir={clients}"],
                              ["--workers", "--worker_addresses"]),
    "unexpected_argument": (["--clients_dir={clients}", "extra"], ["unexpected", "extra"]),
}
# Also checked through the console-script entry point (`python -m`, absl's app.run).
_ENTRY_CASES = ["cohort_above_population"]


def _argv(name, clients, base):
  spec = CASES[name]
  args = [f.format(clients=clients, missing=base / "no_such_dir") for f in spec[0]]
  return ["--progress=none", f"--root_dir={base / ('run_' + name)}"] + args


@pytest.fixture(scope="module")
def results(digits_clients_dir, tmp_path_factory):
  base = tmp_path_factory.mktemp("simulate_cli")
  cases = {name: ["pipelines.simulate", _argv(name, digits_clients_dir, base)]
           for name in CASES}
  return cli_driver.drive(cases, base, timeout=300)


def _check(name, rc, stdout, stderr):
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "Traceback" not in stdout
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, stderr[-3000:]
  for word in CASES[name][1]:
    assert word in errors[0], errors[0]
  assert rc == 2, (rc, stderr[-3000:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_flag_gives_one_clear_error(results, name):
  _check(name, *results[name])


@pytest.mark.parametrize("name", _ENTRY_CASES)
def test_entry_point_exits_2_without_traceback(digits_clients_dir, tmp_path, name):
  cmd = [sys.executable, "-m", "pipelines.simulate"] + _argv(name, digits_clients_dir,
                                                             tmp_path)
  proc = subprocess.run(cmd, cwd=_ROOT, env=cli_driver.env(), capture_output=True, text=True,
                        timeout=300)
  _check(name, proc.returncode, proc.stdout, proc.stderr)
  assert not (tmp_path / f"run_{name}" / "summary.json").exists()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
