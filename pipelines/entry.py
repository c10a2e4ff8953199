"""The console scripts of setup.py: quiet start-up first, then the entry module.

Each function calls `pipelines.startup.prepare()` before it imports its entry module,
so the start-up is quiet whatever that module imports at its top. Standard library and
`pipelines.startup` only.
"""

from __future__ import annotations

import importlib

from pipelines import startup


def _run(module_name: str):
  startup.prepare()
  return importlib.import_module(module_name).run()


def prepare():
  """pina-prepare (`pipelines.prepare_data`)."""
  return _run("pipelines.prepare_data")


def pretrain():
  """pina-pretrain (`pipelines.pretrain`)."""
  return _run("pipelines.pretrain")


def embed():
  """pina-embed (`pipelines.embed`)."""
  return _run("pipelines.embed")


def simulate():
  """pina-simulate (`pipelines.simulate`)."""
  return _run("pipelines.simulate")


def grid():
  """pina-grid (`pipelines.grid`)."""
  return _run("pipelines.grid")


def bench():
  """pina-bench (`benchmarks.bench`)."""
  return _run("benchmarks.bench")

