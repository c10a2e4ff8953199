"""The program logic with fake managers (as TFF's `program_logic_test.py` tests its
logic): `RunLogic`'s round hooks drive the real round loop, program state and metrics
release over an in-memory program-state manager and a recording release manager.
Checked: what is released per round (keys, values), which versions are checkpointed
and what they hold (the round's model entries), and a stop + resume from the last
checkpoint that releases the repeated round again and ends like an uninterrupted run."""
import asyncio
import json
import types

import numpy as np
import tensorflow_federated as tff

from computations.program import logic as logic_lib
from computations.program import program_state as ps
from computations.program import release as release_lib
from computations.program import round_loop as loop
from pina_tff import stages
from tests.computations import _loop_fakes as loop_fakes

TOTAL, EVERY = 5, 2
SHAPES = {"lora_a": (2,), "head_kernel": (3,), "head_bias": (1,)}


class MemoryStateManager(tff.program.ProgramStateManager):
  """Program state in a dict {version: copy of the state}; records every save."""

  def __init__(self):
    self.versions, self.saves = {}, []

  async def get_versions(self):
    return sorted(self.versions) or None

  async def load(self, version, structure):
    del structure
    return _copy(self.versions[version])

  async def save(self, program_state, version):
    self.versions[version] = _copy(program_state)
    self.saves.append(version)

  async def remove(self, version):
    self.versions.pop(version, None)


class RecordingReleaseManager(tff.program.ReleaseManager):
  """Every release in order, as (key, value): a repeated key is kept twice."""

  def __init__(self):
    self.released = []

  async def release(self, value, key):
    self.released.append((key, dict(value)))

  def values(self):
    return self.released


class MemoryExecutionLog:
  """The execution log's interface in memory: every (stage, round) started."""

  def __init__(self):
    self.started = []

  def start(self, stage, rnd):
    self.started.append((stage, rnd))


def _copy(tree):
  if isinstance(tree, dict):
    return type(tree)((k, _copy(v)) for k, v in tree.items())
  return np.copy(tree)


def _plan(stop_after=None):
  options = types.SimpleNamespace(checkpoint_every=EVERY, eval_every=1,
                                  stop_after_rounds=stop_after)
  return types.SimpleNamespace(options=options, num_models=1, diagnostics=True)


def _stage(calls):
  """Stage 2 over the fake process (state: an int); keep stores the state as the
  cluster model's 'lora_a' row, so a checkpoint shows which round it holds."""
  def keep(rnd, state):
    del rnd
    weights = {"lora_a": np.full((1, 2), state, np.float32),
               "head_kernel": np.zeros((1, 3), np.float32),
               "head_bias": np.zeros((1, 1), np.float32)}
    return {"w": state}, {"weights": weights}
  return loop.RoundStage(
      stage=stages.STAGE2, total_rounds=TOTAL, process=loop_fakes.FakeProcess(calls),
      cohort=lambda rnd: [rnd], client_seeds=lambda rnd, ids: [0 for _ in ids],
      prepare_state=None, keep=keep,
      evaluate=lambda rnd, params: (params["w"] / 1000.0, 0.5),
      epsilon=lambda rnd: 0.5 * rnd,
      measurements=lambda metrics: (metrics["loss"], None, None, float("nan")))


def _invoke(state_manager, release_manager, stop_after=None, executions=None):
  """One invocation of stage 2 with the logic's hooks over the given managers."""
  state = ps.ProgramState(state_manager, ps.state_template(SHAPES, 1, 4), 0,
                          log=lambda m: None)
  if not state.resumed:
    state.save(stages.STAGE2, 0)
  metrics = release_lib.MetricsRelease(release_manager, method="ifca", num_clusters=1,
                                       stage0_rounds=0, wall_s=lambda: 0.0)
  logic = logic_lib.RunLogic(plan=_plan(stop_after), state=state, release=metrics,
                             executions=executions or MemoryExecutionLog(),
                             data=None, evaluator=None,
                             progress=loop.Progress("none", TOTAL, 0, "t"),
                             log=lambda m: None)
  calls = []
  final, stop = loop.run_rounds(_stage(calls), _resumed_process_state(state),
                                state.round + 1, loop_fakes.FakeSource(calls, False),
                                logic.round_hooks(stages.STAGE2, TOTAL))
  return state, final, stop


def _resumed_process_state(state):
  """The fake process state a checkpoint holds (stored in the 'lora_a' row)."""
  return int(state.values["weights"]["lora_a"][0, 0])


def test_each_round_is_released_once_and_checkpoints_hold_their_round():
  states, releases = MemoryStateManager(), RecordingReleaseManager()
  state, final, stop = _invoke(states, releases)
  assert stop is None
  # Round r's cohort is [r]: values 10 r + r = 11 r, so the state after r rounds is
  # 11 * (1 + ... + r).
  assert final == 11 * 15
  rows = dict(releases.values())
  assert sorted(rows) == [1, 2, 3, 4, 5]
  assert [rows[k]["test_accuracy"] for k in range(1, 6)] == [
      11 * sum(range(1, r + 1)) / 1000.0 for r in range(1, 6)]
  assert [rows[k]["epsilon_spent"] for k in range(1, 6)] == [0.5, 1.0, 1.5, 2.0, 2.5]
  assert {rows[k]["method"] for k in rows} == {"ifca"}
  # Fresh save at round 0, then every EVERY rounds and the last (version = rounds
  # done + 10,000 * phase).
  base = ps.PHASE_VERSION_STRIDE * stages.STAGE2
  assert states.saves == [base + 0, base + 2, base + 4, base + 5]
  for version, rnd in ((base + 2, 2), (base + 4, 4), (base + 5, 5)):
    saved = states.versions[version]
    assert int(saved["round"]) == rnd
    assert saved["weights"]["lora_a"][0, 0] == 11 * sum(range(1, rnd + 1))
    assert saved["final_accuracy"] == 11 * sum(range(1, rnd + 1)) / 1000.0
  assert int(state.values["round"]) == TOTAL


def test_stop_and_resume_repeats_the_rounds_after_the_checkpoint_and_ends_the_same():
  whole_states, whole = MemoryStateManager(), RecordingReleaseManager()
  _invoke(whole_states, whole)
  states, releases = MemoryStateManager(), RecordingReleaseManager()
  executions = MemoryExecutionLog()
  _, _, stop = _invoke(states, releases, stop_after=3,  # rounds 1-3; checkpoint at 2
                       executions=executions)
  assert stop == {"interrupted": True}
  assert [k for k, _ in releases.values()] == [1, 2, 3]
  state, final, stop = _invoke(states, releases,  # resumes after round 2
                               executions=executions)
  # Round 3 was computed twice, and each start was recorded before it ran.
  assert executions.started == [("stage2", r) for r in (1, 2, 3, 3, 4, 5)]
  assert stop is None and final == 11 * 15
  assert [k for k, _ in releases.values()] == [1, 2, 3, 3, 4, 5]  # round 3 again
  last = {k: v for k, v in releases.values()}
  # (JSON: the NaN columns, e.g. nonfinite_zeroed, compare equal as 'NaN')
  assert json.dumps(last, sort_keys=True) == json.dumps(dict(whole.values()),
                                                       sort_keys=True)
  base = ps.PHASE_VERSION_STRIDE * stages.STAGE2
  assert asyncio.run(states.get_versions()) == asyncio.run(whole_states.get_versions())
  assert np.array_equal(states.versions[base + 5]["weights"]["lora_a"],
                        whole_states.versions[base + 5]["weights"]["lora_a"])
