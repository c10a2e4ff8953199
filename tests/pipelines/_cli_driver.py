"""Runs console-script entry points in this one process for many command lines.

Not a test: tests start it once (one TensorFlow import for all their cases) instead of
one `python -m` process per case. Usage:

    python tests/pipelines/_cli_driver.py CASES.json OUT.json

CASES.json maps a case name to `[module, argv]` (module: e.g. "pipelines.simulate";
argv without the program name). Each case runs the module's own `run()`, whose call to
`pipelines.cli.run(main, passthrough=..., positional=...)` is redirected to
`pipelines.cli.call` with the case's argv: the same strict flag parsing and one-line
errors, with every flag reset to its default first. OUT.json gets
`{name: [exit status, stdout, stderr]}`; an exception escaping `main` is recorded as
status "raised <type>" with its traceback on stderr (what a user would have seen).
Several pipelines modules define flags of the same name (absl refuses duplicates), so
before a module is imported the flags of the previously imported one are removed.

Tests call `drive(cases, base)` (importing only this file's standard-library top).
"""
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import traceback

#: The repository root (the driver runs there, with it on PYTHONPATH).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env() -> dict:
  """The environment entry points run in for the tests: the repository importable,
  TensorFlow quiet, no verbose worker logs."""
  out = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  out.pop("PINA_TFF_VERBOSE", None)
  return out


def drive(cases: dict, base, timeout: int) -> dict:
  """Runs `cases` ({name: [module, argv]}) in one driver process of this file, with
  its files in directory `base`; returns {name: [exit status, stdout, stderr]}.
  Fails (AssertionError with the driver's stderr) if the driver itself fails."""
  cases_path = os.path.join(str(base), "cases.json")
  out_path = os.path.join(str(base), "out.json")
  with open(cases_path, "w") as f:
    json.dump(cases, f)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), cases_path, out_path],
                        cwd=ROOT, env=env(), capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out_path) as f:
    return json.load(f)


def _forget(module_name):
  """Removes `module_name`'s flags and the module itself (so another may define them)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  for name in list(flags.FLAGS):
    if flags.FLAGS.find_module_defining_flag(name) == module_name:
      delattr(flags.FLAGS, name)
  sys.modules.pop(module_name, None)


def run_case(module_name, argv):
  """(status, stdout, stderr) of `module_name`'s console script with `argv`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from pipelines import cli  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(module_name)
  flags.FLAGS.unparse_flags()
  stdout, stderr = io.StringIO(), io.StringIO()
  status = []

  def fake_run(main, passthrough=False, positional=False):
    status.append(cli.call(main, [module_name] + list(argv), passthrough, positional))

  real_run, cli.run = cli.run, fake_run
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        module.run()
      except Exception as e:  # pylint: disable=broad-except
        traceback.print_exc()
        status.append(f"raised {type(e).__name__}")
  finally:
    cli.run = real_run
  return [status[-1] if status else "run() did not call cli.run",
          stdout.getvalue(), stderr.getvalue()]


def main(cases_path, out_path):
  with open(cases_path) as f:
    cases = json.load(f)
  out, current = {}, None
  # Cases of one module run together (one import each).
  for name, (module_name, argv) in sorted(cases.items(), key=lambda kv: kv[1][0]):
    if current not in (None, module_name):
      _forget(current)
    current = module_name
    out[name] = run_case(module_name, argv)
  with open(out_path, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
