"""Code-shape rule of the project's packages (issues 12 and 21): no function in
pina_tff/, computations/ or pipelines/ is longer than 60 lines (ast end_lineno - lineno
+ 1, docstring included), with no exceptions."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pina_tff", "computations", "pipelines")
MAX_LINES = 60


def _long_functions(path):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      n = node.end_lineno - node.lineno + 1
      if n > MAX_LINES:
        yield node.name, n


def _python_files(package):
  root = os.path.join(REPO, package)
  for dirpath, _, files in os.walk(root):
    for name in sorted(files):
      if name.endswith(".py"):
        yield os.path.join(dirpath, name)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_60_lines(package):
  paths = list(_python_files(package))
  assert paths, f"no .py file found under {os.path.join(REPO, package)}"
  too_long = [(os.path.relpath(path, REPO), fn, n) for path in paths
              for fn, n in _long_functions(path)]
  assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"


def test_the_check_sees_a_long_function(tmp_path):
  path = tmp_path / "long.py"
  path.write_text("def f():\n" + "  x = 1\n" * MAX_LINES)
  assert list(_long_functions(str(path))) == [("f", MAX_LINES + 1)]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
