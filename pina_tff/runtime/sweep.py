"""Start-up sweep: removes what processes that died (e.g. by SIGKILL) left behind.

Only names this project writes are touched, and only when the pid in the name is dead:
`<anything>.tmp-<pid>` files and directories (atomic writers of prepare, embed, pretrain
and the program) and `pina-shards-<pid>-*` shard directories of the round loop.

A shard directory is also removed only if nobody holds its owner lock: the process that
made it keeps `<dir>/.owner.lock` flock-ed until it exits. A pid alone is not enough
where PID namespaces differ but /dev/shm is shared (a Bazel linux-sandbox test, a
container with the host's IPC): there a live owner's pid looks dead, and its resident
population was once swept away in the middle of a grid.
"""

from __future__ import annotations

import contextlib
import fcntl
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


OWNER_LOCK = ".owner.lock"
_owner_fds: dict = {}  # shard dir -> fd of its flock-ed owner lock (held until exit)


def make_shard_dir() -> str:
  """A fresh shard directory named after this process (so a sweep can tell it is ours),
  holding an owner lock that this process keeps until it exits."""
  path = tempfile.mkdtemp(prefix=f"{SHARD_PREFIX}{os.getpid()}-", dir=shard_base_dir())
  fd = os.open(os.path.join(path, OWNER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  fcntl.flock(fd, fcntl.LOCK_EX)
  _owner_fds[path] = fd
  return path


def remove_shard_dir(path: str) -> None:
  """Removes a shard directory this process made and releases its owner lock."""
  shutil.rmtree(path, ignore_errors=True)
  release_owner_lock(path)


def release_owner_lock(path: str) -> None:
  """Releases this process's owner lock of shard directory ``path`` (kept on disk): a
  sweep may then remove it, as after its owner's death."""
  fd = _owner_fds.pop(path, None)
  if fd is not None:
    with contextlib.suppress(OSError):
      os.close(fd)


def holds_owner_lock(path: str) -> bool:
  """Whether this process holds the owner lock of shard directory ``path``."""
  return path in _owner_fds


def _owner_holds_lock(path: str) -> bool:
  """True if some live process holds `path`'s owner lock (whatever its PID namespace)."""
  try:
    fd = os.open(os.path.join(path, OWNER_LOCK), os.O_RDWR)
  except OSError:
    return False  # no lock file (or gone): the pid decides
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  finally:
    os.close(fd)  # also drops the lock we may just have taken
  return False


def sweep_dead_shard_dirs(base: Optional[str] = None) -> list:
  """Removes `pina-shards-<pid>-*` directories of dead pids in `base` whose owner lock
  nobody holds."""
  base = base or shard_base_dir()
  removed = []
  with contextlib.suppress(OSError):
    for name in os.listdir(base):
      m = _SHARDS.match(name)
      path = os.path.join(base, name)
      if m and not pid_alive(int(m.group(1))) and not _owner_holds_lock(path):
        _remove(path)
        removed.append(name)
  return removed
