"""The one round loop (computations.program.round_loop) with plain-Python pieces: the order of a
round's steps, what the data source is asked for, resume and stop semantics, and the
packed data source's padding and transports."""
import dataclasses
import os

import numpy as np
import pytest

from computations.data import round_data as rd
from computations.program import round_loop as loop
from tests.computations import _loop_fakes as loop_fakes
from pina_tff.errors import ConfigError

_Process = loop_fakes.FakeProcess


def _Source(calls):  # pylint: disable=invalid-name
  return loop_fakes.FakeSource(calls, record_seeds=True)


def _stage(calls, total=3):
  return loop.RoundStage(
      stage=2, total_rounds=total, process=_Process(calls),
      cohort=lambda rnd: [rnd, rnd + 1],
      client_seeds=lambda rnd, ids: [(rnd, i) for i in ids],
      prepare_state=None,
      keep=lambda rnd, state: calls.append(("keep", rnd, state)) or ({"w": state},
                                                                     {"model": state}),
      evaluate=lambda rnd, params: (params["w"] / 100.0, 0.5),
      epsilon=lambda rnd: 0.25 * rnd,
      measurements=lambda metrics: (metrics["loss"], None, None, float("nan")))


def _hooks(calls, stop_before=None):
  done = []
  def stop():
    return {"interrupted": True} if stop_before is not None and len(done) >= stop_before \
        else None
  return loop.RoundHooks(stop=stop, release=lambda r: calls.append(("release", r)),
                         after_round=lambda r, entries: done.append(r.rnd) or
                         calls.append(("after", r.rnd, entries))), done


def test_each_round_runs_its_steps_in_order_and_releases_what_it_computed():
  calls = []
  hooks, done = _hooks(calls)
  state, stop = loop.run_rounds(_stage(calls), 0, 1, _Source(calls), hooks)
  assert stop is None and done == [1, 2, 3]
  # Round 1: cohort [1, 2] -> values [11, 12]; round 2: [22, 23]; round 3: [33, 34].
  assert state == 11 + 12 + 22 + 23 + 33 + 34
  kinds = [c[0] for c in calls]
  assert kinds == ["data", "next", "keep", "release", "after"] * 3
  assert calls[0] == ("data", 2, 1, [1, 2], [(1, 1), (1, 2)])
  released = [c[1] for c in calls if c[0] == "release"]
  assert [r.rnd for r in released] == [1, 2, 3]
  assert released[0].accuracy == pytest.approx(23 / 100) and released[0].clustering == 0.5
  assert released[1].epsilon == 0.5 and released[1].loss == 45.0
  # after_round gets the program-state entries `keep` made of the round's state.
  assert [c[2] for c in calls if c[0] == "after"] == [{"model": 23}, {"model": 68},
                                                      {"model": 135}]


def test_started_is_recorded_before_the_server_computes_and_logs_repeats(tmp_path):
  """The execution log is written before `process.next` (a kill inside `next` or
  between release and checkpoint still finds the round logged); a round started again
  (resume from an earlier checkpoint) is listed with the times it ran, across
  instances of the log (a new process)."""
  from computations.program import program_state  # pylint: disable=g-import-not-at-top
  calls = []
  log = program_state.ExecutionLog(str(tmp_path))

  def started(rnd):
    log.start("stage2", rnd)
    calls.append(("started", rnd))
  hooks = dataclasses.replace(_hooks(calls)[0], started=started)
  loop.run_rounds(_stage(calls), 0, 1, _Source(calls), hooks)
  assert [c[0] for c in calls] == ["data", "started", "next", "keep", "release",
                                   "after"] * 3
  assert log.repeated() == ()
  again = program_state.ExecutionLog(str(tmp_path))  # the resumed process
  assert again.times("stage2", 2) == 1
  calls.clear()
  hooks = dataclasses.replace(_hooks(calls)[0],
                              started=lambda r: again.start("stage2", r))
  loop.run_rounds(_stage(calls), 0, 2, _Source(calls), hooks)
  assert again.repeated() == (("stage2", 2, 2), ("stage2", 3, 2))
  assert program_state.ExecutionLog(str(tmp_path)).repeated() == again.repeated()


def test_resume_starts_at_the_given_round_and_stop_returns_before_a_round():
  calls = []
  hooks, done = _hooks(calls, stop_before=1)
  state, stop = loop.run_rounds(_stage(calls), 100, 2, _Source(calls), hooks)
  assert stop == {"interrupted": True}
  assert done == [2] and state == 100 + 22 + 23
  assert [c[2] for c in calls if c[0] == "data"] == [2]


def test_prepare_state_runs_before_next_and_its_state_is_the_one_computed():
  """The stage's state step (e.g. the noise seed) sees each round's incoming state,
  and `next` gets what it returns."""
  calls = []
  seen = []
  stage = _stage(calls, total=2)
  stage = dataclasses.replace(
      stage, prepare_state=lambda rnd, state: seen.append((rnd, state)) or state + 1000)
  hooks, _ = _hooks(calls)
  state, _ = loop.run_rounds(stage, 0, 1, _Source(calls), hooks)
  assert seen == [(1, 0), (2, 1023)]
  assert [c[1] for c in calls if c[0] == "next"] == [1000, 2023]
  assert state == 2023 + 22 + 23


def test_due_marks_every_nth_and_the_last_round():
  assert [r for r in range(1, 8) if loop.due(r, 7, 3)] == [3, 6, 7]
  assert all(loop.due(r, 5, 0) for r in range(1, 6))


def _clients(sizes):
  rng = np.random.default_rng(0)
  return [{"x": rng.normal(size=(n, 3)).astype(np.float32),
           "label": np.arange(n, dtype=np.int64) % 4} for n in sizes]


@pytest.mark.parametrize("transport", ["file", "inline"])
def test_packed_round_data_pads_to_the_stage_layout(transport):
  clients = _clients([3, 1, 4, 2, 5])
  layouts = {0: rd.StageLayout(shard_size=2, num_shards=3), 1: rd.StageLayout(4)}
  source = rd.PackedRoundData(clients, ("x",), 5, layouts, transport)
  try:
    values = source.round_data(0, 1, [4, 0, 2], [(9, 4), (9, 0), (9, 2)])
    assert len(values) == 3  # 2 shards of the cohort + 1 empty
    shards = [next(iter(v)) for v in values]
    assert [float(s["client_mask"].numpy().sum()) for s in shards] == [2.0, 1.0, 0.0]
    np.testing.assert_array_equal(shards[0]["x"].numpy()[0, :5], clients[4]["x"])
    np.testing.assert_array_equal(shards[1]["seed"].numpy()[0], [9, 2])
    assert len(source.round_data(1, 0, [0, 1, 2], [(0, 0)] * 3)) == 1  # as needed
    with pytest.raises(ValueError, match="needs 4 shards > 3"):
      source.round_data(0, 2, [0, 1, 2, 3, 4, 0, 1], [(0, 0)] * 7)
  finally:
    file_dir = source._file_dir  # pylint: disable=protected-access
    source.close()
  assert (file_dir is not None) == (transport == "file")
  if file_dir is not None:
    assert not os.path.exists(file_dir)


def test_packed_round_data_keeps_secure_shards_in_memory_and_rejects_bad_transport():
  source = rd.PackedRoundData(_clients([2]), ("x",), 2, {0: rd.StageLayout(1)}, "file",
                              in_memory_only=True)
  assert source._file_dir is None  # pylint: disable=protected-access
  with pytest.raises(ConfigError, match="transport must be 'file' or 'inline'"):
    rd.PackedRoundData(_clients([2]), ("x",), 2, {}, "carrier-pigeon")
  with pytest.raises(ConfigError, match="shard_transport must be one of"):
    rd.check_transport("carrier-pigeon")
  rd.check_transport("resident")



@pytest.mark.parametrize("mode,lines", [("none", 0), ("log", 2), ("auto", 2)])
def test_progress_modes(capsys, mode, lines):
  """'none' prints nothing; 'log' a line per round; 'auto' log lines when stderr is not
  a terminal (as under pytest)."""
  progress = loop.Progress(mode, total=3, done=1, label="run")
  progress.update(2, 2, 0.5)
  progress.update(2, 3, 0.625)
  progress.close()
  err = capsys.readouterr().err.splitlines()
  assert len(err) == lines, err
  if lines:
    assert err[1].startswith("[run] stage 2 round 3 (3/3) acc=0.6250")


def test_progress_eta_after_a_resume_uses_this_invocations_rounds_only(capsys,
                                                                        monkeypatch):
  """The elapsed time counts this invocation only, so the mean round time must too:
  4 rounds done before the resume, 1 round in 12 s now, 5 left -> 60 s (counting the
  earlier rounds gave 12 s, 5x too low)."""
  clock = iter([1000.0, 1012.0, 1036.0])  # start, then 12 s and 36 s later
  monkeypatch.setattr(loop.time, "monotonic", lambda: next(clock))
  progress = loop.Progress("log", total=10, done=4, label="run")
  progress.update(2, 5, 0.5)
  assert capsys.readouterr().err.rstrip().endswith("eta=60s")  # 12 s / 1 round * 5 left
  progress.update(2, 6, 0.5)
  assert capsys.readouterr().err.rstrip().endswith("eta=72s")  # 36 s / 2 rounds * 4


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
