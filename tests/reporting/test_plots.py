"""Tests for pina_tff.reporting.plots (and report.build_report)."""

import math
import os

import numpy as np
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
  assert "## Grid run" not in open(out["results_md"]).read()
  (tmp_path / "grid" / "grid.json").write_text(
      '{"invocations": [{"wall_s": 61, "command": "pina-grid --preset=x"}]}')
  out = report.build_report(str(tmp_path / "grid"), str(tmp_path / "out"), date="x")
  md = open(out["results_md"]).read()
  assert "Wall clock of the whole grid:** 61 s" in md and "`pina-grid --preset=x`" in md
  os.makedirs(tmp_path / "empty")
  with pytest.raises(errors.DataError, match="at least one run"):
    report.build_report(str(tmp_path / "empty"), str(tmp_path / "o2"))


def test_seed_band_and_convergence_round():
  a = (np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]))
  b = (np.array([1.0, 2.0, 3.0, 4.0]), np.array([14.0, np.nan, 26.0, 40.0]))
  c = (np.array([2.0, 3.0]), np.array([15.0, 33.0]))
  x, mean, lo, hi = plots.seed_band([a, b, c])
  np.testing.assert_array_equal(x, [1, 2, 3, 4])
  np.testing.assert_allclose(mean, [12.0, 17.5, np.mean([30, 26, 33]), 40.0])
  np.testing.assert_allclose(lo, [10.0, 15.0, 26.0, 40.0])
  np.testing.assert_allclose(hi, [14.0, 20.0, 33.0, 40.0])
  assert plots.convergence_round([1, 2, 3, 4, 5], [0.5, 1.0, 0.9, 1.0, 1.0]) == 4
  assert plots.convergence_round([1, 2, 3], [1.0, 1.0, 1.0]) == 1
  assert plots.convergence_round([1, 2, 3], [0.2, 0.4, np.nan]) == 2
  assert math.isnan(plots.convergence_round([1], [np.nan]))


def test_seed_grid_plots_mean_and_band(tmp_path):
  fakes.make_seed_grid(str(tmp_path / "g"))
  recs = results.collect_runs(str(tmp_path / "g"))
  paths = plots.make_all_plots(recs, str(tmp_path / "figs"))
  assert sorted(os.path.basename(p) for p in paths) == sorted(
      f"{k}_fashion_mnist_eps_{e}.png" for k in ("accuracy", "clustering", "normality")
      for e in ("2", "8"))
  for p in paths:
    _assert_png(p)
  # the drawn line is the mean of the three seeds, the band their min-max
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure()
  ax = fig.subplots()
  assert plots.plot_methods(ax, results.select(recs, epsilon=2), ("pina",),
                             "clustering_accuracy", prepend_init=True) == 1
  (line,) = ax.get_lines()
  runs = results.select(recs, epsilon=2, method="pina")
  ys = np.array([np.concatenate([[100 * r.scalar("init_clustering_accuracy")],
                                 100 * r.stage_rows(2)["clustering_accuracy"]])
                 for r in runs])
  np.testing.assert_allclose(line.get_ydata(), ys.mean(axis=0))
  assert line.get_label() == "PINA (mean of 3)"
  (band,) = ax.collections
  verts = band.get_paths()[0].vertices
  assert verts[:, 1].max() == pytest.approx(ys.max()) and verts[:, 1].min() == \
      pytest.approx(ys.min())


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
