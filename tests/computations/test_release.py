"""computations.program.release with a real stop and resume of the round loop: a run stopped
between checkpoints resumes from the last checkpoint and releases some rounds again;
metrics.csv and TensorBoard must then hold each step once, with the resumed run's
values, and the same steps and values as an uninterrupted run."""
import csv
import glob
import os

import pytest
import tensorflow as tf
import tensorflow_federated as tff

from computations.program import release
from computations.program import round_loop as loop
from tests.computations import _loop_fakes as loop_fakes

TOTAL, T0 = 6, 0
_Process = loop_fakes.FakeProcess


def _Source(calls):  # pylint: disable=invalid-name
  return loop_fakes.FakeSource(calls, record_seeds=False)


def _stage(calls, offset):
  """Stage 2 of TOTAL rounds; ``offset`` shifts the released accuracy, so the rounds
  an invocation released are told apart (the resumed run's values must win)."""
  return loop.RoundStage(
      stage=2, total_rounds=TOTAL, process=_Process(calls),
      cohort=lambda rnd: [rnd, rnd + 1],
      client_seeds=lambda rnd, ids: [(rnd, i) for i in ids],
      prepare_state=None,
      keep=lambda rnd, state: ({"w": state}, {}),
      evaluate=lambda rnd, params: (rnd + offset, 0.5),
      epsilon=lambda rnd: 0.25 * rnd,
      measurements=lambda metrics: (metrics["loss"], None, None, float("nan")))


def _invoke(root, first_round, offset, stop_after=None):
  """One invocation: its own MetricsRelease; stops before a round once ``stop_after``
  rounds ran (no checkpoint of those rounds: the next invocation repeats them)."""
  calls, done = [], []
  csv_manager, tensorboard = release.release_managers(str(root))
  metrics = release.MetricsRelease(
      tff.program.GroupingReleaseManager([csv_manager, tensorboard]), method="pina",
      num_clusters=1, stage0_rounds=T0, wall_s=lambda: 0.0)
  hooks = loop.RoundHooks(
      stop=lambda: ({"interrupted": True}
                    if stop_after is not None and len(done) >= stop_after else None),
      release=metrics, after_round=lambda r, entries: done.append(r.rnd))
  _, stop = loop.run_rounds(_stage(calls, offset), 0, first_round, _Source(calls), hooks)
  tensorboard.close()
  return stop, done


def _tensorboard(root):
  """{tag: [(step, value), ...]} over every event file, in write order (wall time;
  file names alone do not order two invocations that start in the same second)."""
  rows = []
  for path in glob.glob(os.path.join(root, "tensorboard", "*tfevents*")):
    for i, event in enumerate(tf.compat.v1.train.summary_iterator(path)):
      for v in event.summary.value:
        rows.append((event.wall_time, path, i, v.tag, event.step,
                     float(tf.make_ndarray(v.tensor))))
  out = {}
  for _, _, _, tag, step, value in sorted(rows):
    out.setdefault(tag, []).append((step, value))
  return out


def _csv_keys(root):
  with open(os.path.join(root, "metrics.csv"), newline="") as f:
    return [int(r["key"]) for r in csv.DictReader(f)]


def test_resumed_run_holds_each_tensorboard_step_once(tmp_path):
  ref = tmp_path / "ref"
  assert _invoke(ref, 1, offset=100.0) == (None, list(range(1, TOTAL + 1)))
  run = tmp_path / "run"
  # First invocation: rounds 1-4, stopped with the last checkpoint after round 2.
  assert _invoke(run, 1, offset=0.0, stop_after=4) == ({"interrupted": True}, [1, 2, 3, 4])
  # Second: resumes after round 2, runs 3-4 again (offset 50) and stops after 4 once
  # more (the checkpoint now after round 3); third: resumes after round 3.
  assert _invoke(run, 3, offset=50.0, stop_after=2) == ({"interrupted": True}, [3, 4])
  assert _invoke(run, 4, offset=100.0) == (None, [4, 5, 6])
  assert _csv_keys(run) == list(range(1, TOTAL + 1))  # what metrics.csv already did
  tb = _tensorboard(run)
  assert set(tb) >= {"test_accuracy", "round", "stage", "epsilon_spent", "train_loss"}
  assert "method" not in tb  # a string
  for tag, points in tb.items():
    steps = [s for s, _ in points]
    assert steps == list(range(1, TOTAL + 1)), (tag, steps)
  # Rounds 1-2 from the first invocation, 3 from the second, 4-6 from the third.
  assert [v for _, v in tb["test_accuracy"]] == [1, 2, 53, 104, 105, 106]
  ref_tb = _tensorboard(ref)
  for tag in ("round", "stage", "epsilon_spent", "train_loss"):
    assert tb[tag] == ref_tb[tag], tag
  # No stale or temporary files: one file per invocation that kept a summary.
  names = os.listdir(run / "tensorboard")
  assert len(names) == 3 and all("tfevents" in n for n in names), names


def test_prune_drops_a_truncated_record_and_empties(tmp_path):
  """A kill during a write leaves a truncated last record: pruning keeps the whole
  records below the step, drops the rest, and deletes a file left with no summary."""
  d = str(tmp_path)
  writer = tf.summary.create_file_writer(d)
  with writer.as_default():
    for step in (1, 2, 3):
      tf.summary.scalar("x", float(step), step=step)
  writer.close()
  (path,) = glob.glob(os.path.join(d, "*tfevents*"))
  with open(path, "ab") as f:
    f.write(b"\x30\x00\x00")  # the start of a record, cut off
  release.prune_steps(d, 3)
  steps = [e.step for e in tf.compat.v1.train.summary_iterator(path)
           if e.HasField("summary")]
  assert steps == [1, 2]
  release.prune_steps(d, 1)
  assert os.listdir(d) == []
  release.prune_steps(os.path.join(d, "absent"), 1)  # no directory yet: nothing to do


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
