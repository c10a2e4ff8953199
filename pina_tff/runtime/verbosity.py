"""The one rule of "verbose": show TensorFlow / keras / TFF logs instead of hiding them.

Verbose when `--verbose` (or `--verbose=true` / `--verbose=1`) is on the command line
before any `--`, or when the environment variable PINA_TFF_VERBOSE is set to anything
but '' or '0'. A console script that sees `--verbose` sets PINA_TFF_VERBOSE=1
(`pipelines.startup.prepare`), so the library code and the worker services it starts
only need to read the environment: `requested()` with no argument.

Standard library only (no TensorFlow): entry points call it before the heavy imports.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

#: The environment variable that turns verbose on (anything but '' or '0').
ENV = "PINA_TFF_VERBOSE"
#: The command-line flag that turns verbose on (defined by `pipelines.cli`).
FLAG = "--verbose"
_FLAG_SPELLINGS = (FLAG, FLAG + "=true", FLAG + "=1")


def requested(argv: Optional[Sequence[str]] = None,
              environ: Optional[Mapping[str, str]] = None) -> bool:
  """True if `argv` (a command line; None: look at the environment only) holds
  `--verbose` before any `--`, or PINA_TFF_VERBOSE in `environ` (default os.environ)
  is set to anything but '' or '0'."""
  if argv is not None:
    argv = list(argv)
    head = argv[:argv.index("--")] if "--" in argv else argv
    if any(a in _FLAG_SPELLINGS for a in head):
      return True
  environ = os.environ if environ is None else environ
  return environ.get(ENV, "") not in ("", "0")
