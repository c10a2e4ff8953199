"""Tests for pina_tff.reporting.plots: every plot of a grid is written as a real PNG."""

import os

import pytest

from pina_tff.reporting import plots
from pina_tff.reporting import results
from tests.reporting import fakes

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(8) == _PNG_SIGNATURE and os.path.getsize(path) > 5_000


def test_make_all_plots_writes_one_set_per_dataset_and_epsilon(tmp_path):
  grid = str(tmp_path / "grid")
  fakes.make_grid(grid)
  records = results.collect_runs(grid)
  out = str(tmp_path / "plots")
  paths = plots.make_all_plots(records, out)
  assert paths, "no plot written"
  cells = {(r.dataset, r.epsilon) for r in records}
  # accuracy + clustering (+ normality where PINA ran) per (dataset, epsilon) cell.
  assert len(paths) >= 2 * len(cells)
  for p in paths:
    assert os.path.dirname(p) == out
    assert _is_png(p), p
  names = " ".join(os.path.basename(p) for p in paths)
  for kind in ("accuracy", "clustering"):
    assert kind in names


def test_plots_of_an_empty_grid_is_empty(tmp_path):
  assert plots.make_all_plots([], str(tmp_path / "plots")) == []


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
