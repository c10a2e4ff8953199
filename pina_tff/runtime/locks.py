"""Exclusive directory locks (`fcntl.flock` on a lock file inside the directory).

The kernel drops a flock when its holder dies, even by SIGKILL, so a lock is never
stale; the pid written into the file only names the holder in messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Callable, Iterator, Optional

from pina_tff.errors import PinaError

LOCK_NAME = ".lock"


class DirectoryInUseError(PinaError):
  """Another live process holds the lock of a directory."""


def _holder(path: str) -> str:
  with contextlib.suppress(OSError, ValueError):
    with open(path) as f:
      return str(int(f.read().strip() or "0"))
  return "?"


@contextlib.contextmanager
def exclusive(directory: str, what: str = "run directory", wait: bool = False,
              log: Optional[Callable[[str], None]] = None) -> Iterator[str]:
  """Holds `<directory>/.lock` for the `with` block (creating `directory`).

  Args:
    directory: the directory to lock.
    what: how messages name it ('run directory', 'cache').
    wait: block until the holder finishes (one log line) instead of failing.
    log: where the waiting message goes.

  Yields:
    The lock file's path.

  Raises:
    DirectoryInUseError: not `wait` and another process holds the lock
      ("<what> in use by pid N").
  """
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise OSError(e.errno, e.strerror, path) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if not wait:
        raise DirectoryInUseError(
            f"{what} in use by pid {_holder(path)}: {directory}") from None
      if log is not None:
        log(f"waiting for pid {_holder(path)}, which is building {what} {directory}")
      while True:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
          break
        except BlockingIOError:
          time.sleep(0.2)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:  # e.g. ENOSPC: name the file
      raise OSError(e.errno, e.strerror, path) from None
    yield path
  finally:
    os.close(fd)  # releases the flock
