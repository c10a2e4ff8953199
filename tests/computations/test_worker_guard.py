"""worker_binary processes die with their parent even when it is SIGKILLed."""
import pytest
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent("""
    import time
    from computations.runtime.context import tff_context
    from computations.runtime import worker_guard
    with tff_context(device="cpu", num_workers=2, runtime="worker") as ctx:
      print("WORKERS", *ctx.worker_pids, flush=True)
      print("GUARD", worker_guard.guard_pid(), flush=True)
      time.sleep(120)
""")


def _alive(pid):
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def test_workers_die_after_parent_sigkill():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_ROOT)
  proc = subprocess.Popen([sys.executable, "-c", _SCRIPT], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env, cwd=_ROOT)
  workers, guard = [], None
  try:
    line = proc.stdout.readline().decode()
    assert line.startswith("WORKERS"), line
    workers = [int(x) for x in line.split()[1:]]
    guard_text = proc.stdout.readline().decode().split()[1]
    guard = int(guard_text) if guard_text != "None" else None
    assert len(workers) == 2 and all(_alive(w) for w in workers)
    # Own session: a terminal's Ctrl-C (sent to the parent's process group) misses them.
    assert all(os.getpgid(w) != os.getpgid(proc.pid) for w in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # The guard stops the workers, then exits itself (give both time on a busy machine).
    deadline = time.monotonic() + 20
    while (any(_alive(w) for w in workers) or (guard is not None and _alive(guard))) \
        and time.monotonic() < deadline:
      time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "orphaned worker_binary"
    assert guard is not None and not _alive(guard)
  finally:
    for pid in workers + ([guard] if guard else []):
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
      proc.kill()
    proc.stdout.close()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
