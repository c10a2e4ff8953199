"""Code-shape rules of computations/ (issue 12): no function longer than 60 lines."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "computations")
MAX_LINES = 60
#: Functions still over the limit, with the reason; remove an entry when it is split.
KNOWN = {}


def _long_functions(path):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      n = node.end_lineno - node.lineno + 1
      if n > MAX_LINES:
        yield node.name, n


def test_no_function_in_computations_is_longer_than_60_lines():
  too_long = []
  for dirpath, _, files in os.walk(ROOT):
    for name in sorted(files):
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
        too_long += [(rel, fn, n) for fn, n in _long_functions(os.path.join(dirpath, name))
                     if (rel, fn) not in KNOWN]
  assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"


def test_the_check_sees_a_long_function(tmp_path):
  path = tmp_path / "long.py"
  path.write_text("def f():\n" + "  x = 1\n" * MAX_LINES)
  assert list(_long_functions(str(path))) == [("f", MAX_LINES + 1)]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
