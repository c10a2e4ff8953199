"""Figures for a grid of runs (matplotlib, Agg canvas; no pyplot global state).

  plot_accuracy_curves    test accuracy per stage-2 round, one line per method
  plot_clustering_curves  (a) clustering accuracy per round, PINA / PINA+RI / IFCA+LDP
                          (paper Fig. 3a); (b) test accuracy, PINA vs PINA+RI, with
                          the round each reaches its final clustering (Fig. 3b)
  plot_normality          per-cluster Shapiro-Wilk W, scale factor and ‖u_c‖ of one run
  make_all_plots          one set per dataset × ε; returns the written paths
Accuracies in metrics.csv are fractions; plots show %. Several runs of one method (seeds)
are drawn as their mean per round with a shaded min-max band.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from pina_tff import errors  # noqa: E402
from pina_tff import method_table  # noqa: E402
from pina_tff import stages  # noqa: E402
from pina_tff.reporting import results as res  # noqa: E402

DPI = 100
METHOD_STYLE = {  # colour, marker: stable across every figure (the method table's)
    k: (m.colour, m.marker) for k, m in method_table.METHODS.items()}
CLUSTERING_METHODS = method_table.keys_where(plot_clustering=True)
CONVERGENCE_METHODS = method_table.keys_where(plot_convergence=True)


def _style(method: str) -> dict:
  colour, marker = METHOD_STYLE.get(method, (None, "."))
  # Earlier methods (PINA first) drawn on top so overlapping curves stay visible.
  return {"color": colour, "marker": marker, "zorder": 3 - res.method_sort_key(method)[0] / 10}


def _new_figure(ncols: int, width_per_panel: float = 6.4, height: float = 4.6):
  fig = Figure(figsize=(width_per_panel * ncols, height), dpi=DPI)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  return fig, axes


def _save(fig: Figure, out_png: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_png)) or ".", exist_ok=True)
  fig.tight_layout()
  tmp = f"{out_png}.tmp-{os.getpid()}.png"
  fig.savefig(tmp, dpi=DPI, format="png")
  os.replace(tmp, out_png)
  return out_png


def _title_suffix(dataset: str, epsilon) -> str:
  return f"{res.dataset_name(dataset)}, {res.format_epsilon(res.parse_epsilon(epsilon))}"


def _markevery(n: int):
  return max(1, n // 12)


def _series(record: res.RunRecord, column: str, prepend_init: bool = False):
  """(rounds, values in %) of a stage-2 column; None if nothing finite."""
  rows = record.stage_rows(stages.STAGE2)
  if column not in rows:
    return None
  x = rows["round"].astype(float)
  y = 100.0 * rows[column].astype(float)
  if not np.isfinite(y).any():
    return None
  if prepend_init:
    init = record.scalar("init_clustering_accuracy")
    if math.isfinite(init):
      x, y = np.concatenate([[0.0], x]), np.concatenate([[100.0 * init], y])
  return x, y


def seed_band(series: Sequence[tuple]):
  """Mean, min and max per round over runs [(rounds, values)]: (x, mean, lo, hi) on the
  union of rounds; a round missing (or NaN) in a run is left out of that round's stats."""
  x = np.unique(np.concatenate([s[0] for s in series]))
  table = np.full((len(series), len(x)), np.nan)
  for i, (xs, ys) in enumerate(series):
    table[i, np.searchsorted(x, xs)] = ys
  keep = np.isfinite(table).any(axis=0)
  x, table = x[keep], table[:, keep]
  with np.errstate(invalid="ignore"):
    return x, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def convergence_round(x, y) -> float:
  """First round from which the values stay at their final value (±1e-9): the round a
  run reaches its final clustering. NaN when no finite value."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  ok = np.isfinite(y)
  x, y = x[ok], y[ok]
  if not len(y):
    return math.nan
  off = np.nonzero(np.abs(y - y[-1]) > 1e-9)[0]
  return float(x[off[-1] + 1]) if len(off) else float(x[0])


def plot_methods(ax, records, methods, column, prepend_init=False) -> int:
  """One line per method: the run, or the mean over its runs with a min-max band.
  Returns the number of methods drawn."""
  n = 0
  for m in methods:
    series = [sr for r in res.select(records, method=m)
              if (sr := _series(r, column, prepend_init)) is not None]
    if not series:
      continue
    x, mean, lo, hi = seed_band(series)
    label = res.method_name(m) + (f" (mean of {len(series)})" if len(series) > 1 else "")
    style = _style(m)
    ax.plot(x, mean, label=label, linewidth=1.8, markersize=5,
            markevery=_markevery(len(x)), **style)
    if len(series) > 1:
      ax.fill_between(x, lo, hi, color=style["color"], alpha=0.18, linewidth=0,
                      zorder=style["zorder"] - 0.5)
    n += 1
  return n


def _mark_convergence(ax, records, methods) -> None:
  """Dashed vertical line at each method's mean clustering convergence round."""
  for m in methods:
    rounds = [convergence_round(*sr) for r in res.select(records, method=m)
              if (sr := _series(r, "clustering_accuracy")) is not None]
    rounds = [v for v in rounds if math.isfinite(v)]
    if rounds:
      ax.axvline(float(np.mean(rounds)), color=_style(m)["color"], linestyle="--",
                 linewidth=1.2, label=f"{res.method_name(m)}: final clustering from "
                                      f"round {np.mean(rounds):.3g}")


def _no_data(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
          fontsize=11, color="0.4", wrap=True)


def _finish_accuracy_axis(ax, ylabel: str, title: str) -> None:
  ax.set_xlabel("stage-2 round")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="lower right", fontsize=9)


def plot_accuracy_curves(records: Sequence[res.RunRecord], out_png: str, dataset: str,
                         epsilon) -> str:
  """Test accuracy (%) per stage-2 round, one line per method, for one dataset and ε.

  Raises DataError when no run of (dataset, ε) has stage-2 test accuracies.
  """
  sel = res.select(records, dataset=dataset, epsilon=epsilon)
  methods = sorted({r.method for r in sel}, key=res.method_sort_key)
  fig, (ax,) = _new_figure(1, width_per_panel=7.5, height=5.0)
  if not plot_methods(ax, sel, methods, "test_accuracy"):
    raise errors.DataError(
        f"plot_accuracy_curves: expected stage-2 test_accuracy rows for dataset "
        f"{dataset!r}, {res.format_epsilon(res.parse_epsilon(epsilon))}; found none in "
        f"{len(sel)} matching runs.")
  _finish_accuracy_axis(ax, "test accuracy (%)",
                        f"Test accuracy per round \u2014 {_title_suffix(dataset, epsilon)}")
  return _save(fig, out_png)


def plot_clustering_curves(records: Sequence[res.RunRecord], out_png: str, dataset: str,
                           epsilon) -> str:
  """Two panels for one dataset and ε.

  (a) clustering accuracy (%) per stage-2 round of PINA, PINA+RI and IFCA+LDP; PINA's
      round 0 is the stage-1 k-means initialization (summary init_clustering_accuracy).
  (b) test accuracy (%) per round of PINA (stage-1 init) vs PINA+RI (random init), with
      a dashed line at the round from which each keeps its final clustering (mean over
      seeds; `convergence_round`).
  Several seeds: mean with a min-max band. A panel without data says so. Raises DataError when both panels are empty.
  """
  sel = res.select(records, dataset=dataset, epsilon=epsilon)
  fig, (ax_a, ax_b) = _new_figure(2)
  n_a = plot_methods(ax_a, sel, CLUSTERING_METHODS, "clustering_accuracy",
                      prepend_init=True)
  n_b = plot_methods(ax_b, sel, CONVERGENCE_METHODS, "test_accuracy")
  if n_b:
    _mark_convergence(ax_b, sel, CONVERGENCE_METHODS)
  if not (n_a or n_b):
    raise errors.DataError(
        f"plot_clustering_curves: expected stage-2 rows of PINA, PINA+RI or IFCA+LDP for "
        f"dataset {dataset!r}, {res.format_epsilon(res.parse_epsilon(epsilon))}; found "
        f"none among methods {sorted({r.method for r in sel})}.")
  if not n_a:
    _no_data(ax_a, "no clustering accuracy\n(true clusters unknown or no run)")
  if not n_b:
    _no_data(ax_b, "no PINA / PINA+RI run")
  suffix = _title_suffix(dataset, epsilon)
  _finish_accuracy_axis(ax_a, "clustering accuracy (%)",
                        f"(a) Clustering accuracy \u2014 {suffix}")
  ax_a.set_xlabel("stage-2 round (0 = stage-1 initialization)")
  _finish_accuracy_axis(ax_b, "test accuracy (%)",
                        f"(b) Stage-1 init vs random init \u2014 {suffix}")
  return _save(fig, out_png)


def plot_normality(run_record: res.RunRecord, out_png: str) -> str:
  """Per-cluster Shapiro-Wilk W, scale factor and update norm ‖u_c‖ over stage-2 rounds.

  Raises DataError when the run has no finite stage-2 `w_<c>` value (e.g. a baseline).
  """
  rows = run_record.stage_rows(stages.STAGE2)
  clusters = sorted(int(k[2:]) for k in rows if k.startswith("w_") and k[2:].isdigit())
  if not any(np.isfinite(rows[f"w_{c}"].astype(float)).any() for c in clusters):
    raise errors.DataError(
        f"plot_normality: expected stage-2 rows with finite w_<c> values in "
        f"{os.path.join(run_record.run_dir, 'metrics.csv')}; found none.")
  panels = [("w_", "Shapiro-Wilk W"), ("scale_", "scale factor"),
            ("norm_", "\u2016u_c\u2016 (L2 norm of aggregated update)")]
  fig, axes = _new_figure(3, width_per_panel=5.4, height=4.4)
  x = rows["round"].astype(float)
  for ax, (prefix, label) in zip(axes, panels):
    drawn = False
    for c in clusters:
      col = rows.get(f"{prefix}{c}")
      if col is None or not np.isfinite(col.astype(float)).any():
        continue
      ax.plot(x, col.astype(float), label=f"cluster {c}", linewidth=1.6,
              marker="o", markersize=4, markevery=_markevery(len(x)))
      drawn = True
    if not drawn:
      _no_data(ax, f"no {label} recorded")
    ax.set_xlabel("stage-2 round")
    ax.set_ylabel(label)
    ax.set_title(label)
    ax.grid(True, alpha=0.3)
    if drawn:
      ax.legend(fontsize=9)
  fig.suptitle(f"{res.method_name(run_record.method)} normality diagnostics \u2014 "
               f"{_title_suffix(run_record.dataset, run_record.epsilon)}")
  return _save(fig, out_png)


def _has_stage2(record: res.RunRecord, column: str) -> bool:
  rows = record.stage_rows(stages.STAGE2)
  return column in rows and bool(np.isfinite(rows[column].astype(float)).any())


def make_all_plots(records: Sequence[res.RunRecord], out_dir: str) -> list:
  """For every dataset × ε present, write into out_dir
    accuracy_<dataset>_eps_<e>.png    (any run with stage-2 rows)
    clustering_<dataset>_eps_<e>.png  (a PINA, PINA+RI or IFCA+LDP run with stage-2 rows)
    normality_<dataset>_eps_<e>.png   (the first PINA run with w_<c> columns)
  with <e> = 2, 8, inf. Combinations without the data are skipped. Returns the paths.
  """
  records = list(records)
  paths = []
  for dataset, eps in res.grid_columns(records):
    sel = res.select(records, dataset=dataset, epsilon=eps)
    stem = f"{dataset}_eps_{res.epsilon_token(eps)}"
    if any(_has_stage2(r, "test_accuracy") for r in sel):
      paths.append(plot_accuracy_curves(
          sel, os.path.join(out_dir, f"accuracy_{stem}.png"), dataset, eps))
    if (any(_has_stage2(r, "clustering_accuracy") for r in sel
            if r.method in CLUSTERING_METHODS)
        or any(_has_stage2(r, "test_accuracy") for r in sel
               if r.method in CONVERGENCE_METHODS)):
      paths.append(plot_clustering_curves(
          sel, os.path.join(out_dir, f"clustering_{stem}.png"), dataset, eps))
    pina = [r for r in res.select(sel, method="pina") if _has_stage2(r, "w_0")]
    if pina:
      paths.append(plot_normality(pina[0], os.path.join(out_dir, f"normality_{stem}.png")))
  return paths


def plot_label_curves(groups: dict, out_png: str, title: str) -> str:
  """Two panels for a study's cells at one ε: clustering accuracy (%) and accuracy (%)
  per stage-2 round, one line per cell label (variants of one method kept apart,
  e.g. 'pina@dplloyd+restore' and 'pina@restore'), mean over seeds with a min-max band.

  Args:
    groups: {label: [RunRecord, ...]} in legend order.
    out_png: where to write the figure.
    title: the panels' title suffix (dataset, ε).

  Raises:
    DataError: no run of any label has stage-2 rows.
  """
  fig, axes = _new_figure(2)
  colors = matplotlib.colormaps["tab10"].colors
  drawn = 0
  for ax, column, ylabel in ((axes[0], "clustering_accuracy", "clustering accuracy (%)"),
                             (axes[1], "test_accuracy", "held-out accuracy (%)")):
    for i, (label, records) in enumerate(groups.items()):
      series = [sr for r in records if (sr := _series(r, column)) is not None]
      if not series:
        continue
      x, mean, lo, hi = seed_band(series)
      ax.plot(x, mean, color=colors[i % len(colors)], linewidth=1.8,
              label=f"{label} (mean of {len(series)})" if len(series) > 1 else label)
      if len(series) > 1:
        ax.fill_between(x, lo, hi, color=colors[i % len(colors)], alpha=0.15, linewidth=0)
      drawn += 1
    _finish_accuracy_axis(ax, ylabel, title)
    ax.set_xlabel("stage-2 round")
  if not drawn:
    raise errors.DataError(f"plot_label_curves: no stage-2 rows for labels {list(groups)}")
  return _save(fig, out_png)
