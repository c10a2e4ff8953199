"""Start-up sweep: removes what processes that died (e.g. by SIGKILL) left behind.

Only names this project writes are touched, and only when the pid in the name is dead:
`<anything>.tmp-<pid>` files and directories (atomic writers of prepare, embed, pretrain
and the program) and `pina-shards-<pid>-*` shard directories of the round loop.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Callable, Optional

_TMP = re.compile(r".+\.tmp-(\d+)$")
SHARD_PREFIX = "pina-shards-"
_SHARDS = re.compile(re.escape(SHARD_PREFIX) + r"(\d+)-.+$")


def pid_alive(pid: int) -> bool:
  """True if a process with id `pid` exists (zombies count as dead)."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  with contextlib.suppress(OSError):
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  return True


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(OSError):
      os.remove(path)


def sweep_dead_tmp(directory: str, log: Optional[Callable[[str], None]] = None,
                   stem: Optional[str] = None) -> list:
  """Removes `*.tmp-<pid>` entries of dead pids directly inside `directory` (only
  `<stem>.tmp-<pid>` when `stem` is given: the temp copies of one output)."""
  removed = []
  with contextlib.suppress(OSError):
    for name in os.listdir(directory):
      m = _TMP.match(name)
      if stem is not None and not name.startswith(stem + ".tmp-"):
        continue
      if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
        _remove(os.path.join(directory, name))
        removed.append(name)
  if removed and log is not None:
    log(f"removed {len(removed)} temporary file(s) of dead processes in {directory}")
  return removed


def shard_base_dir() -> str:
  """Where the round loop puts its shard directories (/dev/shm when writable)."""
  shm = "/dev/shm"
  if os.path.isdir(shm) and os.access(shm, os.W_OK):
    return shm
  return tempfile.gettempdir()


def make_shard_dir() -> str:
  """A fresh shard directory named after this process (so a sweep can tell it is ours)."""
  return tempfile.mkdtemp(prefix=f"{SHARD_PREFIX}{os.getpid()}-", dir=shard_base_dir())


def sweep_dead_shard_dirs(base: Optional[str] = None) -> list:
  """Removes `pina-shards-<pid>-*` directories of dead pids in `base`."""
  base = base or shard_base_dir()
  removed = []
  with contextlib.suppress(OSError):
    for name in os.listdir(base):
      m = _SHARDS.match(name)
      if m and not pid_alive(int(m.group(1))):
        _remove(os.path.join(base, name))
        removed.append(name)
  return removed
