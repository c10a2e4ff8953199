"""Study tables: runs grouped by the grid's cell label (METHOD or METHOD@VARIANT).

`pina-grid --methods=pina@restore,...` writes `<dataset>/<label>/eps_<e>/seed_<s>`;
:func:`collect_study` reads every finished run below a grid directory and keys it by
that label, so variants of one method (normality rules, stage-1 signal variants) stay
apart, where the Table-1 view (`results`) merges them by method.

Per (label, ε): the final held-out accuracy and clustering accuracy, the stage-2
clustering accuracy after given rounds (metrics.csv), and stage 1's matched centroid
cosine (summary `init_centroid_cosine`), each as mean ± sample std over seeds.

:func:`choose_best` is the selection rule of a study on validation data: the label
with the highest mean, over the ε columns, of its mean final accuracy; every run it
reads must have scored the validation split (it refuses test runs).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pina_tff.errors import ConfigError
from pina_tff.reporting import results as results_lib


@dataclasses.dataclass
class StudyRun:
  """One finished run, its grid cell label ('pina@restore', 'ifca', ...) and the
  grid's dataset directory it sits in ('fashion_mnist_2k': several directories of a
  grid may hold one source dataset)."""
  label: str
  record: results_lib.RunRecord
  grid_dataset: str = ""

  @property
  def epsilon(self) -> float:
    return self.record.epsilon

  @property
  def eval_split(self) -> str:
    return str(self.record.summary.get("eval_split", "test"))

  def clustering_after(self, rnd: int) -> float:
    """Stage-2 clustering accuracy after round `rnd` (1-based), NaN if not recorded."""
    rows = self.record.stage_rows()
    if not rows or "clustering_accuracy" not in rows:
      return math.nan
    hit = np.flatnonzero(rows["round"] == rnd)
    return float(rows["clustering_accuracy"][hit[0]]) if hit.size else math.nan


def label_of(run_dir: str, grid_dir: str) -> str:
  """The cell label of a run directory: the path component below the dataset."""
  parts = os.path.relpath(run_dir, grid_dir).split(os.sep)
  return parts[1] if len(parts) > 1 else parts[0]


def collect_study(grid_dir: str, dataset: Optional[str] = None) -> List[StudyRun]:
  """Every finished run below `grid_dir` (of one `dataset`: the grid's dataset
  directory name, when given), with its cell label."""
  runs = []
  for r in results_lib.collect_runs(grid_dir):
    parts = os.path.relpath(r.run_dir, grid_dir).split(os.sep)
    if dataset is None or parts[0] == dataset:
      runs.append(StudyRun(label_of(r.run_dir, grid_dir), r, parts[0]))
  return runs


def cell_values(runs: Sequence[StudyRun], value) -> Dict[Tuple[str, float], list]:
  """{(label, ε): [value(run) of each seed, NaNs left out]} (cells without a value
  are absent)."""
  groups: Dict[Tuple[str, float], list] = {}
  for r in runs:
    v = value(r)
    if not math.isnan(v):
      groups.setdefault((r.label, r.epsilon), []).append(v)
  return groups


def cell_stats(runs: Sequence[StudyRun], value) -> Dict[Tuple[str, float], tuple]:
  """{(label, ε): (mean, std, n)} of `value(run)` over seeds
  (`results.mean_std`)."""
  return {k: results_lib.mean_std(v) for k, v in cell_values(runs, value).items()}


def study_markdown(runs: Sequence[StudyRun], labels: Optional[Sequence[str]] = None,
                   rounds: Sequence[int] = (1, 2, 5)) -> str:
  """Markdown tables (final accuracy, final clustering, clustering after `rounds`,
  stage-1 centroid cosine) with one row per label and one column per ε."""
  runs = list(runs)
  eps = sorted({r.epsilon for r in runs}, key=lambda e: (math.isinf(e), e))
  labels = list(labels) if labels else sorted({r.label for r in runs})
  splits = sorted({r.eval_split for r in runs})
  head = "| label | " + " | ".join(results_lib.format_epsilon(e) for e in eps) + " |"
  rule = "|---|" + "---:|" * len(eps)

  def table(title, value, scale=100.0, digits=1, only_present=False):
    vals = cell_values(runs, value)
    lines = [f"### {title}", "", head, rule]
    for lab in labels:
      if only_present and not any((lab, e) in vals for e in eps):
        continue
      cells = [results_lib.format_mean_std([v * scale for v in vals[(lab, e)]], digits)
               if (lab, e) in vals else results_lib.MISSING for e in eps]
      lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return lines + [""]

  out = [f"Split scored: {', '.join(splits)}. Cells: mean ± sample std (n seeds), %.", ""]
  out += table("Final accuracy (%)", lambda r: r.record.scalar("final_accuracy"))
  choice = lambda r: r.record.scalar(results_lib.CHOICE_ACCURACY)  # noqa: E731
  if cell_values(runs, choice):
    out += table("Ceilings scored with the loss-based choice every method uses (%)",
                 choice, only_present=True)
  out += table("Final clustering accuracy (%)",
               lambda r: r.record.scalar("clustering_accuracy"))
  for t in rounds:
    out += table(f"Clustering accuracy after stage-2 round {t} (%)",
                 lambda r, t=t: r.clustering_after(t))
  out += table("Stage-1 centroid cosine to the true clusters' noise-free mean sketch",
               lambda r: r.record.scalar("init_centroid_cosine"), scale=1.0, digits=3)
  return "\n".join(out)


def choose_best(runs: Sequence[StudyRun], candidates: Sequence[str]) -> Tuple[str, dict]:
  """The candidate label with the highest mean over ε of its mean final accuracy.

  Returns (label, {label: score}). Only labels with a run at every ε of the study
  compete.

  Raises:
    ConfigError: a run that scored the test split (choices are made on validation),
      or no candidate with runs at every ε.
  """
  runs = [r for r in runs if r.label in candidates]
  test_runs = [r.record.run_dir for r in runs if r.eval_split != "val"]
  if test_runs:
    raise ConfigError(f"choose_best reads validation runs only; these scored "
                      f"{'/'.join(sorted({r.eval_split for r in runs}))}: {test_runs[:3]}")
  eps = sorted({r.epsilon for r in runs}, key=lambda e: (math.isinf(e), e))
  st = cell_stats(runs, lambda r: r.record.scalar("final_accuracy"))
  scores = {}
  for lab in candidates:
    means = [st[(lab, e)][0] if (lab, e) in st else math.nan for e in eps]
    if means and not any(math.isnan(m) for m in means):
      scores[lab] = float(np.mean(means))
  if not scores:
    raise ConfigError("choose_best: no candidate has a finished run at every epsilon")
  best = max(candidates, key=lambda lab: scores.get(lab, -math.inf))
  return best, scores


def paired_differences(runs: Sequence[StudyRun], a: str, b: str
                       ) -> Mapping[float, Tuple[float, float, int]]:
  """{ε: (mean, std, n)} of accuracy(a) − accuracy(b) over the seeds both have."""
  by = {}
  for r in runs:
    if r.label in (a, b):
      by.setdefault((r.epsilon, r.record.seed), {})[r.label] = r.record.scalar(
          "final_accuracy")
  diffs: Dict[float, list] = {}
  for (e, _), v in by.items():
    if a in v and b in v:
      diffs.setdefault(e, []).append(v[a] - v[b])
  return {e: results_lib.mean_std(d) for e, d in diffs.items()}


def plot_study(runs: Sequence[StudyRun], labels: Optional[Sequence[str]],
               out_dir: str) -> List[str]:
  """One `plots.plot_label_curves` figure per (grid dataset directory, ε) of `runs`,
  the labels in the given order (default: sorted); runs of different directories are
  never pooled, even when they hold one source dataset (the regimes). Returns the
  written paths (study_<directory>_eps_<ε>.png)."""
  from pina_tff.reporting import plots  # pylint: disable=g-import-not-at-top
  labels = list(labels) if labels else sorted({r.label for r in runs})
  out = []
  for ds in sorted({r.grid_dataset for r in runs}):
    here = [r for r in runs if r.grid_dataset == ds]
    for eps in sorted({r.epsilon for r in here}):
      groups = {lab: [r.record for r in here if r.label == lab and r.epsilon == eps]
                for lab in labels}
      groups = {k: v for k, v in groups.items() if v}
      if not groups:
        continue
      name = f"study_{ds}_eps_{'inf' if math.isinf(eps) else f'{eps:g}'}.png"
      source = results_lib.dataset_name(here[0].record.dataset)
      title = (f"{source}{'' if ds == here[0].record.dataset else f' ({ds})'}, "
               f"{results_lib.format_epsilon(eps)}")
      out.append(plots.plot_label_curves(groups, os.path.join(out_dir, name), title))
  return out
