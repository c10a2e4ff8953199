"""The one atomic writer: `<path>.tmp-<pid>` then rename, so readers never see half a
file and a killed writer leaves only a temp file that `pina_tff.runtime.sweep` removes."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional


def write_text(path: str, text: str, make_dirs: bool = False, durable: bool = False,
               mode: Optional[int] = None) -> str:
  """Writes ``text`` to ``path`` atomically; returns ``path``.

  Args:
    path: the file to write (replaced if it exists).
    text: its whole content (written with newline='' : no newline translation).
    make_dirs: create the parent directory first.
    durable: fsync the file and its directory before returning (on disk even if the
      machine, not only the process, dies right after).
    mode: permission bits of the new file (created with them: never wider, even
      for a moment); None: the process umask.
  """
  if make_dirs:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
  fd = os.open(tmp, flags, 0o666 if mode is None else mode)
  if mode is not None:
    os.fchmod(fd, mode)  # the umask masks O_CREAT's mode; an old tmp keeps its own
  with open(fd, "w", encoding="utf-8", newline="") as f:
    f.write(text)
    if durable:
      f.flush()
      os.fsync(f.fileno())
  os.replace(tmp, path)
  if durable:
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
      os.fsync(dfd)
    finally:
      os.close(dfd)
  return path


def write_json(path: str, obj: Any, indent: int = 2, sort_keys: bool = True,
               default: Optional[Callable[[Any], Any]] = None, newline: bool = False,
               make_dirs: bool = False, durable: bool = False,
               mode: Optional[int] = None) -> str:
  """Writes ``obj`` as JSON to ``path`` atomically; returns ``path``.

  Args:
    path, make_dirs: as in `write_text`.
    obj: a JSON-serializable object (``default`` converts the rest).
    indent, sort_keys, default: as in `json.dumps`.
    newline: end the file with a newline.
    durable, mode: as in `write_text`.
  """
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
  return write_text(path, text + ("\n" if newline else ""), make_dirs, durable, mode)
