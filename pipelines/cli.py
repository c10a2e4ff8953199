"""What every console script shares: strict flags, `--verbose`, one `error:` line.

Importing this module changes nothing in the process (it imports absl, not
TensorFlow); the quiet start-up is `pipelines.startup.prepare()`, which each entry
point calls first. `run(main)` then:

* parses the flags strictly (an unknown flag or a bad value is one `error:` line, exit
  2); with `passthrough=True` the arguments after `--` are handed to `main` (Beam
  options), never unknown flags;
* shows, under `--help`, the entry module's docstring and its own flags with their
  defaults (absl lists the "key flags" of the main module; a console script's main
  module is a generated stub, so the entry module's flags are adopted for it);
* turns a `PinaError` raised by `main` into one `error:` line with exit code 2, and so
  an OSError of the environment (no space left, read-only file system, name too long,
  permission denied), also when a library wraps it (`_one_line_errors`: the one
  `except` of user errors of every entry point);
* rejects, for every numeric flag given on the command line, a non-finite float or an
  integer beyond 32 bits, before `main` runs (each script checks its own ranges);
* unless verbose (`pina_tff.runtime.verbosity`), keeps absl's and Python's log lines
  below FATAL / CRITICAL off the terminal.
"""

from __future__ import annotations

import errno
import math
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

from pina_tff.errors import PinaError
from pina_tff.runtime import verbosity

_VERBOSE = verbosity.FLAG[2:]
if _VERBOSE not in flags.FLAGS:
  flags.DEFINE_bool(_VERBOSE, False, "Show TensorFlow / keras / TFF start-up and "
                    f"runtime logs (also: env {verbosity.ENV}=1).")


def fail(message: str) -> None:
  """Prints `error: message` on stderr and exits with status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


#: Largest magnitude of an integer flag (TensorFlow and NumPy take 32-bit seeds, counts).
MAX_INT_FLAG = 2 ** 31 - 1
_ABSL_ERROR = re.compile(r"^flag --([^=\s]+)=(.*?): (.*)$")


def _flag_error(message: str) -> str:
  """absl's parse error as `--name: expected ..., found ...` where it is a type error."""
  m = _ABSL_ERROR.match(message)
  if not m or m.group(1) not in flags.FLAGS:
    return message
  name, value, why = m.groups()
  parser = flags.FLAGS[name].parser
  if isinstance(parser, flags.IntegerParser) and "invalid literal" in why:
    return f"--{name}: expected an integer, found {value!r}"
  if isinstance(parser, flags.FloatParser) and "could not convert" in why:
    return f"--{name}: expected a number, found {value!r}"
  return f"--{name}: {why} (found {value!r})"


def check_numeric_flags() -> None:
  """One `error:` line (exit 2) for a numeric flag given as nan / inf or an integer
  beyond 32 bits; each script checks its own ranges after this."""
  for name in sorted(set(flags.FLAGS)):
    flag = flags.FLAGS[name]
    value = flag.value
    if not flag.present or value is None or isinstance(value, bool):
      continue
    if isinstance(flag.parser, flags.FloatParser) and not math.isfinite(value):
      fail(f"--{name}: expected a finite number, found {value}")
    if isinstance(flag.parser, flags.IntegerParser) and abs(value) > MAX_INT_FLAG:
      fail(f"--{name}: expected an integer of magnitude at most {MAX_INT_FLAG}, found "
           f"{value}")


def _parser(passthrough: bool, positional: bool):
  def parse(argv):
    rest = []
    if passthrough and "--" in argv[1:]:
      i = argv.index("--", 1)
      argv, rest = argv[:i], argv[i + 1:]
    try:
      left = flags.FLAGS(argv)
    except flags.Error as e:
      fail(_flag_error(str(e).strip().splitlines()[0]))
    check_numeric_flags()
    if len(left) > 1 and not positional:
      hint = (" (pass Beam options after `--`)" if passthrough else "")
      fail(f"unexpected arguments {left[1:]}{hint}")
    if not verbosity.requested(argv) and not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.FATAL)
      # Beam logs a worker's failure (with its traceback) before re-raising it; the
      # error reaches the user as one `error:` line instead.
      import logging as py_logging  # pylint: disable=g-import-not-at-top
      py_logging.getLogger().setLevel(py_logging.CRITICAL)
    return list(left if positional else left[:1]) + rest
  return parse


def _adopt_help(entry_module) -> None:
  """Makes `--help` of a console script show the entry module's doc and flags, and
  `--verbose`, however the script was started."""
  main = sys.modules.get("__main__")
  key = sys.argv[0]
  if entry_module is not None and entry_module is not main:
    if main is not None and not getattr(main, "__doc__", None):
      main.__doc__ = entry_module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(entry_module.__name__):
      flags.FLAGS.register_key_flag_for_module(key, flag)
  flags.FLAGS.register_key_flag_for_module(key, flags.FLAGS[_VERBOSE])


def run(main, passthrough: bool = False, positional: bool = False) -> None:
  """`absl.app.run(main)` with strict flags, entry-module help and one-line errors.

  Args:
    main: `main(argv) -> int | None`; argv[1:] are the arguments after `--` when
      `passthrough`, else empty.
    passthrough: accept arguments after `--` (handed to main, e.g. Beam options).
    positional: hand positional arguments (e.g. a subcommand) to main.
  """
  _adopt_help(sys.modules.get(main.__module__))
  app.run(_one_line_errors(main), flags_parser=_parser(passthrough, positional))


#: OSErrors that come from the environment a user gave (a path, a disk), not from a bug.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG,
                       errno.EACCES, errno.EPERM)
_ENVIRONMENT_TEXTS = tuple(os.strerror(n) for n in _ENVIRONMENT_ERRNOS)


def environment_error(e: BaseException):
  """The one-line message of an error of the environment (no space left, read-only
  file system, name too long, permission denied) -- raised as OSError or wrapped by a
  library (TensorFlow's file layer, Beam) -- or None for any other error."""
  if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror} (expected a writable place with free space)"
  text = str(e)
  for reason in _ENVIRONMENT_TEXTS:
    if reason in text:
      line = next((ln.strip() for ln in text.splitlines() if reason in ln), reason)
      return f"{line[-300:]} (expected a writable place with free space)"
  return None


def _one_line_errors(main):
  """`main` with a `PinaError` or an environment error (`environment_error`) turned
  into one `error:` line and exit status 2."""
  def wrapped(argv):
    try:
      return main(argv)
    except PinaError as e:
      fail(str(e))
    except Exception as e:  # pylint: disable=broad-except
      message = environment_error(e)
      if message is None:
        raise
      fail(message)
  return wrapped


def call(main, argv, passthrough: bool = False, positional: bool = False) -> int:
  """Parses `argv` (argv[0]: the program name) and runs `main` exactly as `run` does,
  in this process and without absl's `app.run`; returns the exit status (2 for a bad
  flag or a `PinaError`, whose one `error:` line goes to stderr). For drivers and tests
  that run many command lines in one process; flags keep values from an earlier call
  unless the caller resets them (`flags.FLAGS.unparse_flags()`)."""
  try:
    status = _one_line_errors(main)(_parser(passthrough, positional)(list(argv)))
  except SystemExit as e:
    status = e.code
  if status is None:
    return 0
  return status if isinstance(status, int) else 1
