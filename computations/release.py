"""Per-round metrics release: `metrics.csv` and TensorBoard, through `tff.program`.

One row per round of stages 0 and 2, keyed by the run-wide round (stage-2 round r is
key T0 + r), so a resumed run's `CSVFileReleaseManager` drops the rows past the
resumed round by itself. Columns: stage, round, method, test_accuracy,
clustering_accuracy, train_loss, epsilon_spent, nonfinite_zeroed, wall_s, and per
cluster c: count_c,
norm_c, w_c, scale_c (nan where a stage has no such value). Which of them ε does not
cover is `UNPROTECTED_METRICS`.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Callable

import tensorflow_federated as tff

from computations.round_loop import RoundResult

#: Released metrics that ε does not cover (simulation diagnostics), by where they go.
UNPROTECTED_METRICS = {
    "metrics.csv": ["test_accuracy", "clustering_accuracy", "train_loss", "count_*",
                    "nonfinite_zeroed"],
    "summary.json": ["final_accuracy", "clustering_accuracy", "init_clustering_accuracy",
                     "init_centroid_cosine"],
}
NOTE_UNPROTECTED = (
    "simulation diagnostics, not covered by epsilon: accuracies are computed on every "
    "client's data; train_loss and the per-cluster counts count_* are summed in the "
    "clear; nonfinite_zeroed counts the clients whose update had an inf/NaN entry "
    "and was sent as zeros. The norm_*/w_*/scale_* columns are functions of the "
    "noised aggregate (covered).")
#: metrics.csv column prefix -> the finalizer measurement it reports.
_FINALIZER_COLUMNS = (("norm", "norms"), ("w", "w"), ("scale", "scale_factors"))


class MetricsRelease:
  """Releases each round's `RoundResult` to `metrics.csv` and TensorBoard.

  Args:
    root_dir: the run directory.
    method: the method key (a column of every row).
    num_clusters: models trained in stage 2 (per-cluster columns).
    stage0_rounds: T0 (stage-2 keys follow the stage-0 ones).
    wall_s: () -> seconds of run time so far.
  """

  def __init__(self, root_dir: str, method: str, num_clusters: int, stage0_rounds: int,
               wall_s: Callable[[], float]):
    self._csv = tff.program.CSVFileReleaseManager(os.path.join(root_dir, "metrics.csv"),
                                                  key_fieldname="key")
    self._tb = tff.program.TensorBoardReleaseManager(os.path.join(root_dir,
                                                                  "tensorboard"))
    self._method, self._clusters, self._t0 = method, num_clusters, stage0_rounds
    self._wall_s = wall_s

  def row(self, r: RoundResult) -> collections.OrderedDict:
    """The metrics.csv row of one round."""
    row = collections.OrderedDict(
        stage=r.stage, round=r.rnd, method=self._method, test_accuracy=r.accuracy,
        clustering_accuracy=r.clustering, train_loss=r.loss, epsilon_spent=r.epsilon,
        nonfinite_zeroed=r.nonfinite, wall_s=self._wall_s())
    diag = r.diagnostics
    for c in range(max(self._clusters, 1)):
      row[f"count_{c}"] = float(r.counts[c]) if r.counts is not None else float("nan")
      for name, key in _FINALIZER_COLUMNS:
        row[f"{name}_{c}"] = (float(diag[key][c]) if diag is not None and key in diag
                              else float("nan"))
    return row

  def __call__(self, r: RoundResult) -> None:
    row = self.row(r)
    key = r.rnd if r.stage == 0 else self._t0 + r.rnd
    asyncio.run(self._csv.release(row, key=key))
    asyncio.run(self._tb.release(
        collections.OrderedDict((k, v) for k, v in row.items() if k != "method"),
        key=key))
