"""SIGINT / SIGTERM: stop after the current round, or at once when no round runs.

Inside `graceful_stop()`, while the rounds run (`rounds_running()`, entered by the
program around its stages), the first SIGINT or SIGTERM only records the signal (the
handler raises nothing, so it cannot be swallowed inside a C callback); the round loop
polls `requested()` between rounds, checkpoints and returns. Outside the rounds
(start-up, imports, pre-training, embedding, loading the population) there is nothing
to checkpoint, and a signal stops the process at once (`exit_now`): one line on stderr
and exit code 128 + signum, with no traceback (it does not raise, so nothing can
swallow it or print an "Exception ignored" block from a gRPC callback). A second
signal during the rounds stops at once the same way. What a stop at once leaves behind
is what a SIGKILL leaves: workers are killed by their guard (`computations/
worker_guard.py`), temporary files and shard directories are swept by the next start,
and the run resumes from its last checkpoint.

`install_exit_now_handlers()` puts the stop-at-once handler in place for a whole
console-script process from its start (`pipelines.startup.prepare()`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

_STOP: dict = {"signum": None, "rounds": False}
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def requested() -> Optional[int]:
  """The signal number that asked the program to stop, or None."""
  return _STOP["signum"]


def name(signum: int) -> str:
  return signal.Signals(signum).name


def exit_now(signum: int, message: str) -> None:
  """Prints `message` as one line on stderr and ends the process with 128 + signum
  (no cleanup handlers run; see the module doc)."""
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  with contextlib.suppress(Exception):
    os.write(2, (message + "\n").encode())
  os._exit(128 + signum)  # pylint: disable=protected-access


def _stop_now(signum, frame) -> None:  # pylint: disable=unused-argument
  exit_now(signum, f"stopped by {name(signum)} (no round was running: nothing to save); "
           "run the same command to resume")


def install_exit_now_handlers() -> None:
  """SIGINT and SIGTERM stop the process at once with one line (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, _stop_now)


@contextlib.contextmanager
def rounds_running() -> Iterator[None]:
  """Inside `graceful_stop`: the first signal waits for the end of the current round."""
  before = _STOP["rounds"]
  _STOP["rounds"] = True
  try:
    yield
  finally:
    _STOP["rounds"] = before


@contextlib.contextmanager
def graceful_stop(log: Callable[[str], None] = lambda m: print(m, file=sys.stderr,
                                                                flush=True)
                  ) -> Iterator[None]:
  """Turns SIGINT/SIGTERM into a stop request for the rounds of the `with` block, and
  into a stop at once elsewhere in it (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _STOP["signum"] = None

  def handler(signum, frame):  # pylint: disable=unused-argument
    if _STOP["signum"] is not None:
      exit_now(signum, f"stopped by {name(signum)} again: stopping now; run the same "
               "command to resume from the last checkpoint")
    if not _STOP["rounds"]:
      _stop_now(signum, frame)
    _STOP["signum"] = signum
    log(f"{name(signum)}: stopping after the current round (send it again to stop now)")

  old = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    _STOP["signum"] = None
