"""Tests for pina_tff.reporting.plots (and report.build_report)."""

import math
import os

import pytest

from pina_tff import errors
from pina_tff.reporting import plots
from pina_tff.reporting import report
from pina_tff.reporting import results
from tests.reporting import fakes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_w=400, min_h=300):
  assert os.path.isfile(path), path
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == PNG_SIGNATURE, path
  assert head[12:16] == b"IHDR"
  w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
  assert w >= min_w and h >= min_h, (path, w, h)
  assert os.path.getsize(path) > 5000, path


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("grid")
  fakes.make_grid(str(root))
  return results.collect_runs(str(root))


def test_make_all_plots_one_set_per_dataset_and_epsilon(records, tmp_path):
  paths = plots.make_all_plots(records, str(tmp_path / "figs"))
  names = sorted(os.path.basename(p) for p in paths)
  expected = sorted(f"{kind}_{d}_eps_{e}.png"
                    for kind in ("accuracy", "clustering", "normality")
                    for d, e in [("fashion_mnist", "2"), ("fashion_mnist", "8"),
                                 ("fashion_mnist", "inf"), ("femnist", "2")])
  assert names == expected
  for p in paths:
    _assert_png(p)
  assert not [n for n in os.listdir(tmp_path / "figs") if ".tmp-" in n]


def test_each_plot_function(records, tmp_path):
  _assert_png(plots.plot_accuracy_curves(records, str(tmp_path / "a.png"), "fashion_mnist",
                                         "inf"))
  _assert_png(plots.plot_clustering_curves(records, str(tmp_path / "c.png"),
                                           "fashion_mnist", math.inf))
  # femnist: no clustering accuracy at all, panel (b) still drawn.
  _assert_png(plots.plot_clustering_curves(records, str(tmp_path / "c2.png"), "femnist", 2))
  pina = results.select(records, "fashion_mnist", 2, "pina")[0]
  _assert_png(plots.plot_normality(pina, str(tmp_path / "n.png")), min_w=1000)


def test_plot_errors_when_no_data(records, tmp_path):
  with pytest.raises(errors.DataError, match="no_such"):
    plots.plot_accuracy_curves(records, str(tmp_path / "x.png"), "no_such", 2)
  fedavg = results.select(records, "femnist", 2, "fedavg")
  with pytest.raises(errors.DataError, match="PINA"):
    plots.plot_clustering_curves(fedavg, str(tmp_path / "x.png"), "femnist", 2)
  with pytest.raises(errors.DataError, match="w_<c>"):
    plots.plot_normality(fedavg[0], str(tmp_path / "x.png"))
  assert not os.path.exists(tmp_path / "x.png")


def test_make_all_plots_skips_what_is_missing(tmp_path):
  fakes.write_run(str(tmp_path / "g" / "r"), "fedavg", "digits", 8, 0.5, num_clusters=1)
  recs = results.collect_runs(str(tmp_path / "g"))
  paths = plots.make_all_plots(recs, str(tmp_path / "f"))
  assert [os.path.basename(p) for p in paths] == ["accuracy_digits_eps_8.png"]


def test_build_report(tmp_path):
  fakes.make_grid(str(tmp_path / "grid"))
  out = report.build_report(str(tmp_path / "grid"), str(tmp_path / "out"), date="x")
  assert out["num_runs"] == 12 and len(out["plots"]) == 12
  assert open(out["results_md"]).read().startswith("# Results (x)")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(errors.DataError, match="at least one run"):
    report.build_report(str(tmp_path / "empty"), str(tmp_path / "o2"))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
