"""Runs pina-simulate's `main` in this one process for several flag sets (not a test).

Usage: python tests/pipelines/_simulate_driver.py CASES.json OUT.json, where CASES.json
maps a name to an argv list. Writes {name: [exit code, stdout, stderr]}. The test runs
this in a child process only because absl flag names (--rounds, --shard_size) collide
with benchmarks/bench.py's inside one pytest process; the cases share one import.
"""
import contextlib
import io
import json
import sys


def main(cases_path, out_path):
  from pipelines import simulate  # pylint: disable=g-import-not-at-top
  with open(cases_path) as f:
    cases = json.load(f)
  out = {}
  for name, argv in cases.items():
    simulate.FLAGS.unparse_flags()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        rest = simulate.FLAGS(["pina-simulate"] + argv)
        rc = simulate.main(rest)
      except Exception as e:  # pylint: disable=broad-except
        import traceback  # pylint: disable=g-import-not-at-top
        traceback.print_exc()
        rc = f"raised {type(e).__name__}"
    out[name] = [rc, stdout.getvalue(), stderr.getvalue()]
  with open(out_path, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
