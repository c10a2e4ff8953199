"""pina-simulate (python -m pipelines.simulate) rejects bad flags with one clear
`error: ...` line on stderr, exit code 2 and no Python traceback.

Every case runs pina-simulate's own `run()` (strict flag parsing, one-line errors) in one
driver process (`_cli_driver.py`: one TensorFlow import for all cases); one case also
goes through the real entry point (`python -m`, absl's app.run) to check the exit status
and the absence of a traceback end to end.

The defaults: flags and a --config file are laid over one base, the preset
(`test_one_base_of_defaults`).
"""
import json
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


def check_one_base_of_defaults(tmp_dir):
  """Run in its own process by `test_one_base_of_defaults` (pipelines.simulate and
  pipelines.grid define flags of the same name, so no test process imports both):
  with neither flags nor --config, build_config gives the data's preset; a field set
  by a --config file is the same config as that field set by its flag; a default a
  flag's help states is that preset value."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from pina_tff import config as config_lib  # pylint: disable=g-import-not-at-top
  from pipelines import presets  # pylint: disable=g-import-not-at-top
  from pipelines import simulate  # pylint: disable=g-import-not-at-top
  facts = types.SimpleNamespace(dataset="digits", num_clients=NUM_CLIENTS, model_width=64)
  given = {f: None for _, f in simulate.FLAG_FIELDS}
  given.update(epsilon=None, preset=None, config=None)

  def build(**over):
    return simulate.build_config(types.SimpleNamespace(**{**given, **over}), facts)

  base = build()
  preset = presets.for_population(presets.DIGITS_DEFAULTS, NUM_CLIENTS)
  assert base == config_lib.validate(config_lib.from_dict({**preset, "model_width": 64}))
  path = os.path.join(tmp_dir, "rounds.json")
  with open(path, "w") as f:
    json.dump({"stage2": {"rounds": 7}, "privacy": {"epsilon": 2}}, f)
  by_file = build(config=path)
  by_flags = build(rounds=7, epsilon="2")
  assert by_file == by_flags == dataclasses.replace(
      base, stage2=dataclasses.replace(base.stage2, rounds=7),
      privacy=dataclasses.replace(base.privacy, epsilon=2.0))
  fields = simulate.FLAG_FIELDS + ((("privacy", "epsilon"), "epsilon"),)
  stated = 0
  for path, flag in fields:
    if "default" in flags.FLAGS[flag].help and flag != "delta":  # delta: a rule
      value = base
      for key in path:
        value = getattr(value, key)
      text = f"{value:g}" if isinstance(value, float) else str(value)
      assert f"default {text}" in flags.FLAGS[flag].help, (flag, text)
      stated += 1
  assert stated >= 8, stated


def test_one_base_of_defaults(tmp_path):
  code = ("import sys\nfrom tests.pipelines import test_simulate_cli as t\n"
          "t.check_one_base_of_defaults(sys.argv[1])\n")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=_ROOT,
                        env=cli_driver.env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
