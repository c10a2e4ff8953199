"""Graceful stop on SIGINT / SIGTERM.

Inside `graceful_stop()` the first SIGINT or SIGTERM only records the signal (the
handler raises nothing, so it cannot be swallowed inside a C callback); the round loop
polls `requested()` between rounds, checkpoints and returns. A second signal stops at
once with exit code 128 + signum.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

_STOP: dict = {"signum": None}
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def requested() -> Optional[int]:
  """The signal number that asked the program to stop, or None."""
  return _STOP["signum"]


def name(signum: int) -> str:
  return signal.Signals(signum).name


@contextlib.contextmanager
def graceful_stop(log: Callable[[str], None] = lambda m: print(m, file=sys.stderr,
                                                                flush=True)
                  ) -> Iterator[None]:
  """Turns SIGINT/SIGTERM into a stop request for the `with` block (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _STOP["signum"] = None

  def handler(signum, frame):  # pylint: disable=unused-argument
    if _STOP["signum"] is not None:
      raise SystemExit(128 + signum)
    _STOP["signum"] = signum
    log(f"{name(signum)}: stopping after the current round (send it again to stop now)")

  old = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    _STOP["signum"] = None
