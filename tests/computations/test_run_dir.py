"""computations.program.run_dir and pina_tff.runtime: fingerprint, checkpoint fallback, lock,
sweep, output-path checks (in-process, fast)."""
import asyncio
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_federated as tff

from computations.runtime import context
from computations.program import run_dir
from pina_tff import config as config_lib
from pina_tff.errors import ConfigError
from pina_tff.runtime import locks
from pina_tff.runtime import paths
from pina_tff.runtime import sweep


def _cfg(**kw):
  return config_lib.to_dict(config_lib.validate(config_lib.RunConfig(**kw)))


def test_fingerprint_refuses_other_config_and_names_fields(tmp_path):
  log = []
  run_dir.check_fingerprint(str(tmp_path), _cfg(), "d1", False, log.append)
  (tmp_path / "metrics.csv").write_text("key\n1\n")
  run_dir.check_fingerprint(str(tmp_path), _cfg(), "d1", False, log.append)  # same: ok
  other = _cfg(method="fedavg", privacy=config_lib.PrivacyConfig(epsilon=2.0))
  with pytest.raises(ConfigError) as e:
    run_dir.check_fingerprint(str(tmp_path), other, "d1", False, log.append)
  msg = str(e.value)
  assert "method ('pina' -> 'fedavg')" in msg and "privacy.epsilon (8.0 -> 2.0)" in msg
  assert "--restart" in msg and "num_clusters" not in msg
  with pytest.raises(ConfigError, match="data"):
    run_dir.check_fingerprint(str(tmp_path), _cfg(), "d2", False, log.append)
  assert json.loads((tmp_path / "run.json").read_text())["config"]["method"] == "pina"


def test_directory_without_results_is_taken_over(tmp_path):
  run_dir.check_fingerprint(str(tmp_path), _cfg(), "d", False, lambda m: None)
  run_dir.check_fingerprint(str(tmp_path), _cfg(seed=5), "d", False, lambda m: None)
  assert json.loads((tmp_path / "run.json").read_text())["config"]["seed"] == 5


def test_restart_removes_only_program_outputs(tmp_path):
  run_dir.check_fingerprint(str(tmp_path), _cfg(), "d", False, lambda m: None)
  for name in ("metrics.csv", "summary.json", "config.json", "notes.txt"):
    (tmp_path / name).write_text("x")
  (tmp_path / "checkpoints" / "program_state_3").mkdir(parents=True)
  log = []
  run_dir.check_fingerprint(str(tmp_path), _cfg(seed=3), "d", True, log.append)
  assert sorted(os.listdir(tmp_path)) == ["notes.txt", "run.json"]
  assert len(log) == 1 and "removed" in log[0]
  assert json.loads((tmp_path / "run.json").read_text())["config"]["seed"] == 3


def _state(x):
  return collections.OrderedDict(round=np.int32(x), w=np.full((3,), x, np.float32))


def test_unreadable_newest_checkpoint_is_moved_aside(tmp_path):
  with context.tff_context():  # the state manager runs TFF computations
    _check_unreadable_checkpoint(tmp_path)


def _check_unreadable_checkpoint(tmp_path):
  m = tff.program.FileProgramStateManager(str(tmp_path), keep_total=2)
  for v in (1, 2):
    asyncio.run(m.save(_state(v), version=v))
  newest = tmp_path / "program_state_2"
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 16:
      with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
  log = []
  state, version = run_dir.load_latest_readable(m, _state(0), log.append)
  assert version == 1 and int(state["round"]) == 1
  np.testing.assert_array_equal(state["w"], np.ones(3, np.float32))
  assert len(log) == 1 and "program_state_2 is unreadable" in log[0]
  assert [n for n in os.listdir(tmp_path) if n.startswith("program_state_2.unreadable-")]
  asyncio.run(m.save(_state(2), version=2))  # the version can be written again
  assert run_dir.load_latest_readable(m, _state(0), log.append)[1] == 2


def test_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
  code = ("import sys, time; from pina_tff.runtime import locks\n"
          f"with locks.exclusive({str(tmp_path)!r}):\n"
          "  print('held', flush=True); time.sleep(30)\n")
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
  try:
    assert p.stdout.readline().strip() == b"held"
    with pytest.raises(locks.DirectoryInUseError, match=f"in use by pid {p.pid}"):
      with locks.exclusive(str(tmp_path)):
        pass
  finally:
    p.kill()
    p.wait()
    p.stdout.close()
  with locks.exclusive(str(tmp_path)):  # the kernel dropped the dead holder's lock
    pass


def test_sweep_removes_only_dead_pids_entries(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / f"out.tmp-{dead.pid}").mkdir()
  (tmp_path / f"out.tmp-{os.getpid()}").mkdir()
  (tmp_path / "keep.txt").write_text("x")
  (tmp_path / f"{sweep.SHARD_PREFIX}{dead.pid}-abc").mkdir()
  (tmp_path / f"{sweep.SHARD_PREFIX}{os.getpid()}-abc").mkdir()
  sweep.sweep_dead_tmp(str(tmp_path))
  sweep.sweep_dead_shard_dirs(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["keep.txt", f"out.tmp-{os.getpid()}", f"{sweep.SHARD_PREFIX}{os.getpid()}-abc"])


def test_sweep_keeps_a_shard_dir_whose_owner_lock_is_held(tmp_path, monkeypatch):
  """A live owner in another PID namespace (e.g. a Bazel sandbox sharing /dev/shm)
  looks dead by pid; its owner lock keeps the directory (once a grid lost its resident
  population that way)."""
  monkeypatch.setattr(sweep, "shard_base_dir", lambda: str(tmp_path))
  monkeypatch.setattr(sweep, "pid_alive", lambda pid: False)  # every pid "looks dead"
  held = sweep.make_shard_dir()  # this process holds its owner lock
  released = sweep.make_shard_dir()
  assert sweep.holds_owner_lock(released)
  sweep.release_owner_lock(released)  # as if its owner had died: the lock is gone
  removed = sweep.sweep_dead_shard_dirs()
  assert removed == [os.path.basename(released)]
  assert os.path.isdir(held) and not os.path.exists(released)
  sweep.remove_shard_dir(held)
  assert not os.path.exists(held)
  assert not sweep.holds_owner_lock(held)


def test_output_paths(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ConfigError, match="is a file"):
    paths.check_output_dir(str(f), "--root_dir")
  with pytest.raises(ConfigError, match="which is a file"):
    paths.check_output_dir(str(f / "a" / "b"), "--root_dir")
  with pytest.raises(ConfigError, match="is a directory"):
    paths.check_output_file(str(tmp_path), "--output")
  assert paths.check_output_dir(str(tmp_path / "new" / "dir"), "--root_dir")
  if os.geteuid() != 0:  # root may write anywhere
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ConfigError, match="not writable"):
      paths.check_output_dir(str(ro / "run"), "--root_dir")


def test_secure_cohort_key_is_owner_only_private_state(tmp_path):
  """Simulation mode: the seed, nothing written. Secure mode: 128 bits of OS entropy in
  private/cohort_key (0700 / 0600 even under umask 0), the same key on resume, another
  key in another run directory; a readable key file or checkpoints without a key are
  one ConfigError."""
  sim = tmp_path / "sim"
  sim.mkdir()
  assert run_dir.cohort_key(str(sim), "simulation", 7) == 7
  assert not (sim / run_dir.PRIVATE).exists()
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir()
  b.mkdir()
  old = os.umask(0)
  try:
    key = run_dir.cohort_key(str(a), "secure", 7)
  finally:
    os.umask(old)
  path = a / run_dir.PRIVATE / run_dir.COHORT_KEY_NAME
  assert os.stat(path).st_mode & 0o777 == 0o600
  assert os.stat(path.parent).st_mode & 0o777 == 0o700
  assert key.bit_length() > 64 and key < 2 ** 128
  assert int(path.read_text(), 16) == key
  assert run_dir.cohort_key(str(a), "secure", 7) == key  # resume: the same cohorts
  assert run_dir.cohort_key(str(b), "secure", 7) != key
  assert run_dir.PRIVATE in run_dir.PROGRAM_OUTPUTS  # --restart removes it
  os.chmod(path, 0o644)
  with pytest.raises(ConfigError, match="owner-only"):
    run_dir.cohort_key(str(a), "secure", 7)
  c = tmp_path / "c"
  (c / run_dir.CHECKPOINTS / "program_state_1").mkdir(parents=True)
  with pytest.raises(ConfigError, match="cannot be reproduced"):
    run_dir.cohort_key(str(c), "secure", 7)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
