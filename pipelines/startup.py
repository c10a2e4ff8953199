"""Quiet start-up of a console script: call `prepare()` first, before TensorFlow loads.

Every entry point calls `prepare()` explicitly before it imports anything heavy:
`pipelines.entry` (the console scripts of setup.py) calls it before it imports the
entry module, and each entry module's `run()` (what `python -m pipelines.X` and the
Bazel binaries run) calls it before its own heavy imports; the entry modules import
nothing heavy at their top (tests/pipelines/test_cli_help.py checks both, with a clean
environment), so no order of their imports can undo it. Unless verbose
(`pina_tff.runtime.verbosity`: `--verbose` or PINA_TFF_VERBOSE=1), `prepare()` sets
TF_CPP_MIN_LOG_LEVEL=3 (no cuDNN / oneDNN / TensorRT lines) and quiets Python's
import-time library warnings; with `keras=True` it imports keras-core without its
"Using TensorFlow backend" line on stdout. In a console-script process it also makes
SIGINT / SIGTERM stop at once with one line (`pina_tff.runtime.signals`; the round loop
later waits for the end of the current round instead).

Importing this module imports nothing heavy (the standard library and
`pina_tff.runtime`); `prepare(keras=True)` imports keras.
"""

from __future__ import annotations

import os
import sys

from pina_tff.runtime import signals
from pina_tff.runtime import verbosity


def prepare(keras: bool = False) -> None:
  """Sets the environment and logging of a quiet start-up (not if verbose); call it
  before TensorFlow is imported. Idempotent.

  Args:
    keras: then import keras-core quietly and keras-cv (`pina_tff.models.backbone`), as
      scripts that build keras models must before absl's main runs (see
      pina_tff/models/backbone.py).
  """
  if _is_console_script():
    signals.install_exit_now_handlers()
  if verbosity.requested(sys.argv):
    os.environ[verbosity.ENV] = "1"  # what the library and its worker services read
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger().setLevel(logging.ERROR)  # import-time library warnings
  if keras:
    import_keras_quietly()
    import importlib  # pylint: disable=g-import-not-at-top
    importlib.import_module("pina_tff.models.backbone")


def import_keras_quietly() -> None:
  """Imports keras-core without its "Using TensorFlow backend" line on stdout (unless
  verbose)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  if verbosity.requested(sys.argv):
    import keras_core  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return
  with contextlib.redirect_stdout(io.StringIO()):
    import keras_core  # noqa: F401,F811  pylint: disable=g-import-not-at-top,unused-import


def _is_console_script() -> bool:
  """True in a process started as a pina-* script, `python -m pipelines.X` or a Bazel
  binary of pipelines/ (not in a test or driver that calls an entry point's `run()`)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name.split(".")[0] in ("pipelines", "benchmarks"):
    return True
  prog = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  package = os.path.dirname(prog)
  return (os.path.basename(prog).startswith("pina-") or
          (os.path.basename(package) in ("pipelines", "benchmarks") and
           os.path.isdir(os.path.join(os.path.dirname(package), "pina_tff"))))
