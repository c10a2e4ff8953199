"""Per-round metrics release: `metrics.csv` (through `tff.program`) and TensorBoard.

One row per round of stages 0 and 2, keyed by the run-wide round (stage-2 round r is
key T0 + r), so a resumed run's `CSVFileReleaseManager` drops the rows past the
resumed round by itself.

TensorBoard holds each step once, also after a resume. A run killed between
checkpoints resumes from the last one and releases some rounds again; TFF's
`TensorBoardReleaseManager` only appends (each invocation writes a new event file in
`tensorboard/`, and TensorBoard shows both values of a repeated step). So
`TensorBoardRelease` does what the CSV manager does: before an invocation writes its
first step k, every existing event file in the directory is rewritten without the
steps >= k (those rounds are computed again from the checkpoint; a later step of an
earlier invocation is stale). Why this design rather than one subdirectory per
invocation: it needs no knowledge of which round a checkpoint holds (the first
released key says it, exactly as for metrics.csv), TensorBoard sees one run, and it is
safe at any kill: each file is replaced atomically (`os.replace`), the pruning is
idempotent and is done again by the next invocation, and the new writer is created
only after the pruning (never rewriting a file still open). Each release is flushed,
so the event files hold every released round, as metrics.csv does.

Columns: stage, round, method, test_accuracy,
clustering_accuracy, train_loss, epsilon_spent, nonfinite_zeroed, wall_s, and per
cluster c: count_c,
norm_c, w_c, scale_c (nan where a stage has no such value). Which of them ε does not
cover is `UNPROTECTED_METRICS`.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Callable, Mapping, Optional

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.core.util import event_pb2

from computations.program.round_loop import RoundResult

#: Released metrics that ε does not cover (simulation diagnostics), by where they go.
UNPROTECTED_METRICS = {
    "metrics.csv": ["test_accuracy", "clustering_accuracy", "train_loss", "count_*",
                    "nonfinite_zeroed"],
    "summary.json": ["final_accuracy", "clustering_accuracy",
                     "accuracy_with_loss_based_choice", "init_clustering_accuracy",
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


_EVENT_FILES = "*tfevents*"
_PRUNE_TMP = ".prune.tmp"  # no 'tfevents' in the name: TensorBoard never reads it


def prune_steps(summary_dir: str, first_step: int) -> None:
  """Removes the summaries of steps >= ``first_step`` from every event file in
  ``summary_dir`` (files left with no summary are deleted; a truncated last record,
  from a kill during a write, is dropped). Each file is replaced atomically."""
  if not tf.io.gfile.isdir(summary_dir):
    return
  tmp = os.path.join(summary_dir, _PRUNE_TMP)
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.remove(tmp)
  for path in sorted(tf.io.gfile.glob(os.path.join(summary_dir, _EVENT_FILES))):
    kept, changed = [], False
    try:
      for record in tf.data.TFRecordDataset(path):
        event = event_pb2.Event.FromString(record.numpy())
        if event.HasField("summary") and event.step >= first_step:
          changed = True
        else:
          kept.append((record.numpy(), event.HasField("summary")))
    except tf.errors.DataLossError:
      changed = True
    if not changed:
      continue
    if not any(has_summary for _, has_summary in kept):
      tf.io.gfile.remove(path)
      continue
    with tf.io.TFRecordWriter(tmp) as writer:
      for record, _ in kept:
        writer.write(record)
    os.replace(tmp, path)


class TensorBoardRelease(tff.program.ReleaseManager):
  """Scalar rows to TensorBoard, one value per (tag, step) across resumes (see the
  module docstring); a `tff.program.ReleaseManager` of flat {tag: value} rows (string
  values, e.g. the method, are not scalars and are left out).

  Args:
    summary_dir: the run's TensorBoard directory.
  """

  def __init__(self, summary_dir: str):
    self._dir = summary_dir
    self._writer: Optional[tf.summary.SummaryWriter] = None

  async def release(self, value: Mapping[str, object], key: int) -> None:
    """Writes the scalars of ``value`` (tag -> scalar) at step ``key``; the first call
    of an instance first removes the steps >= ``key`` left by earlier invocations."""
    if self._writer is None:
      prune_steps(self._dir, key)
      self._writer = tf.summary.create_file_writer(self._dir)
    with self._writer.as_default():
      for tag, v in value.items():
        if not isinstance(v, str):
          tf.summary.scalar(tag, v, step=key)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def release_managers(root_dir: str) -> tuple:
  """The run directory's release managers: (`metrics.csv` through TFF's
  `CSVFileReleaseManager` keyed by run-wide round, TensorBoard); built by the
  program, grouped (`tff.program.GroupingReleaseManager`) and handed to the logic."""
  return (tff.program.CSVFileReleaseManager(os.path.join(root_dir, "metrics.csv"),
                                            key_fieldname="key"),
          TensorBoardRelease(os.path.join(root_dir, "tensorboard")))


class MetricsRelease:
  """Releases each round's `RoundResult` as one row, keyed by run-wide round.

  Args:
    manager: a `tff.program.ReleaseManager` of rows (the program's grouping of
      `release_managers`; the program closes what it built).
    method: the method key (a column of every row).
    num_clusters: models trained in stage 2 (per-cluster columns).
    stage0_rounds: T0 (stage-2 keys follow the stage-0 ones).
    wall_s: () -> seconds of run time so far.
  """

  def __init__(self, manager: tff.program.ReleaseManager, *, method: str,
               num_clusters: int, stage0_rounds: int, wall_s: Callable[[], float]):
    self._manager = manager
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
    asyncio.run(self._manager.release(row, key=key))
