"""Workers die with their parent, even when the parent is killed with SIGKILL.

TFF starts `worker_binary` processes that outlive a parent killed without a chance to
clean up (they are re-parented to init and keep their memory). `watch(pid)` hands each
worker's pid to one small guard process per parent, over a pipe that only the parent
holds: when the parent dies for any reason the kernel closes the pipe, the guard reads
end-of-file and SIGKILLs every worker it was told about that is still the same process
(same start time in /proc). Workers and the guard run in their own sessions, so a
terminal's Ctrl-C reaches only the parent, which stops them in order itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
from typing import Optional

_GUARD_CODE = r"""
import os, signal, sys
watched = {}
for line in sys.stdin:
    parts = line.split()
    if len(parts) == 2:
        watched[int(parts[0])] = parts[1]
for pid, start in watched.items():
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
"""

_lock = threading.Lock()
_guard: dict = {"proc": None, "owner": None}


def start_time(pid: int) -> Optional[str]:
  """The process's start time (clock ticks since boot) from /proc, or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _guard_process() -> Optional[subprocess.Popen]:
  proc = _guard["proc"]
  if proc is not None and _guard["owner"] == os.getpid() and proc.poll() is None:
    return proc
  if not os.path.isdir("/proc"):
    return None
  proc = subprocess.Popen([sys.executable, "-S", "-c", _GUARD_CODE],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True,
                          close_fds=True)
  _guard["proc"], _guard["owner"] = proc, os.getpid()
  if not _guard.get("atexit"):
    atexit.register(_close_guard)
    _guard["atexit"] = True
  return proc


def watch(pid: int) -> None:
  """Makes sure process `pid` is SIGKILLed when this process dies (Linux; best effort)."""
  start = start_time(pid)
  if start is None:
    return
  with _lock:
    proc = _guard_process()
    if proc is None:
      return
    with contextlib.suppress(OSError, ValueError):
      proc.stdin.write(f"{pid} {start}\n".encode())
      proc.stdin.flush()


def _close_guard() -> None:
  """At exit: end-of-file for the guard (it kills any worker still running), reap it."""
  proc = _guard["proc"]
  if proc is None or _guard["owner"] != os.getpid():
    return
  with contextlib.suppress(Exception):
    proc.stdin.close()
    proc.wait(timeout=5)



def guard_pid() -> Optional[int]:
  """Pid of this process's guard, if one runs."""
  proc = _guard["proc"]
  return proc.pid if proc is not None and proc.poll() is None else None
