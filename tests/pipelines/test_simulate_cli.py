"""pina-simulate (python -m pipelines.simulate) rejects bad flags with one clear
`error: ...` line on stderr, exit code 2 and no Python traceback."""
import os
import subprocess
import sys
import time

import pytest

from pina_tff.data import beam_prepare

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLIENTS = 12

# name -> (flags, words the error line must contain); '{clients}' is the tiny dataset.
CASES = {
    "negative_epsilon": (["--epsilon=-1", "--clients_dir={clients}"], ["epsilon"]),
    "non_numeric_epsilon": (["--epsilon=abc", "--clients_dir={clients}"], ["epsilon", "abc"]),
    "cohort_above_population": (["--cohort=20", "--clients_dir={clients}"],
                                ["cohort", str(NUM_CLIENTS)]),
    "zero_clusters": (["--num_clusters=0", "--clients_dir={clients}"], ["num_clusters"]),
    "huge_top_k": (["--top_k=10000", "--clients_dir={clients}"], ["top_k", "10000"]),
    "zero_clip": (["--clip=0", "--clients_dir={clients}"], ["clip"]),
    "missing_clients_dir": ([], ["--clients_dir"]),
    "clients_dir_does_not_exist": (["--clients_dir={missing}"], ["not found"]),
    "workers_with_secure_sums": (["--workers=2", "--clients_dir={clients}"],
                                 ["--workers", "central"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  base = tmp_path_factory.mktemp("simulate_cli")
  clients = base / "digits"
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      output_dir=str(clients), dataset="digits", num_clients=NUM_CLIENTS, num_shards=1,
      seed=0))
  env = dict(os.environ, PYTHONPATH=_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PINA_TFF_VERBOSE", None)
  commands = {}
  for name, (flags, _) in CASES.items():
    args = [f.format(clients=clients, missing=base / "no_such_dir") for f in flags]
    args.append(f"--root_dir={base / ('run_' + name)}")
    commands[name] = [sys.executable, "-m", "pipelines.simulate", "--progress=none"] + args
  # Two at a time (each pays the TensorFlow import); the slow one (it pre-trains and
  # embeds the tiny dataset before it knows the population) first.
  order = ["cohort_above_population"] + [n for n in commands
                                          if n != "cohort_above_population"]
  out, running = {}, {}
  deadline = time.monotonic() + 300
  try:
    while order or running:
      while order and len(running) < 2:
        name = order.pop(0)
        # Files, not pipes: a chatty child never blocks on a full pipe.
        logs = (open(base / f"{name}.out", "w"), open(base / f"{name}.err", "w"))
        running[name] = subprocess.Popen(commands[name], cwd=_ROOT, env=env,
                                         stdout=logs[0], stderr=logs[1])
        for f in logs:
          f.close()
      name = next(iter(running))
      for n, p in running.items():
        if p.poll() is not None:
          name = n
          break
      else:
        if time.monotonic() > deadline:
          raise TimeoutError(f"pina-simulate did not exit: {sorted(running)}")
        time.sleep(0.2)
        continue
      p = running.pop(name)
      out[name] = (p.wait(), (base / f"{name}.out").read_text(),
                   (base / f"{name}.err").read_text())
  finally:
    for p in running.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_flag_gives_one_clear_error(results, name):
  rc, stdout, stderr = results[name]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "Traceback" not in stdout
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, stderr[-3000:]
  for word in CASES[name][1]:
    assert word in errors[0], errors[0]
  assert rc == 2, (rc, stderr[-3000:])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
