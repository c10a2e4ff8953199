"""The program's checkpointed state: where the run is and the models it has so far.

One `collections.OrderedDict` of NumPy values saved with TFF's
`tff.program.FileProgramStateManager` (version = rounds done + 10,000 · phase, so a
later phase always sorts after an earlier one): phase and round, wall time so far,
the cluster models, the finalizer's momentum, the warmed-up head, and the accuracies
the summary reports. A run killed at any moment resumes from the latest readable
version (`computations.program.run_dir.load_latest_readable`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from typing import Callable

import numpy as np
import tensorflow_federated as tff

from computations.program import run_dir as run_dir_lib
from pina_tff import stages
from pina_tff.runtime import atomic
#: Checkpoint versions of a later phase sort after every version of an earlier one.
PHASE_VERSION_STRIDE = 10_000


def state_template(param_shapes, num_clusters: int, update_size: int
                   ) -> collections.OrderedDict:
  """The program state's structure (zeros): what a checkpoint holds.

  Args:
    param_shapes: {parameter key: shape of one model's parameter}.
    num_clusters: models trained in stage 2.
    update_size: length of one model's flattened update (the finalizer's momentum row).
  """
  return collections.OrderedDict(
      phase=np.int32(0), round=np.int32(0), elapsed=np.float64(0.0),
      weights=collections.OrderedDict(
          (k, np.zeros((num_clusters,) + tuple(s), np.float32))
          for k, s in param_shapes.items()),
      velocity=np.zeros((num_clusters, update_size), np.float32),
      head_kernel=np.zeros(param_shapes["head_kernel"], np.float32),
      head_bias=np.zeros(param_shapes["head_bias"], np.float32),
      init_clustering_accuracy=np.float64(np.nan),
      init_centroid_cosine=np.float64(np.nan),
      final_accuracy=np.float64(np.nan), final_clustering_accuracy=np.float64(np.nan))


def state_manager(root_dir: str) -> tff.program.FileProgramStateManager:
  """The run directory's program-state manager (``<root_dir>/checkpoints``, the two
  latest versions kept); built by the program, handed to the logic."""
  return tff.program.FileProgramStateManager(
      os.path.join(root_dir, run_dir_lib.CHECKPOINTS), keep_total=2)


class ProgramState:
  """The program state of one run, loaded (or fresh) and saved by phase.

  The phase is the stage the run resumes in (`pina_tff.stages`: STAGE0, STAGE1,
  STAGE2 or DONE). The values are written only through `record_*` and `save*`:
  `record_round` is the one update per round.

  Args:
    manager: a `tff.program.ProgramStateManager` (`state_manager(root_dir)`).
    template: `state_template(...)` of this run.
    stage0_rounds: T0 (rounds done counts stage-0 rounds before stage-2 ones).
    log: progress messages.

  Attributes:
    values: the state itself (read and written by the program between saves).
    resumed: whether a checkpoint was loaded.
  """

  def __init__(self, manager: tff.program.ProgramStateManager, template,
               stage0_rounds: int, log: Callable[[str], None]):
    self._manager = manager
    saved, _ = run_dir_lib.load_latest_readable(self._manager, template, log)
    self.values = saved if saved is not None else template
    self.resumed = saved is not None
    self._t0 = stage0_rounds
    self._start = time.monotonic() - float(self.values["elapsed"])

  @property
  def phase(self) -> int:
    return int(self.values["phase"])

  @property
  def round(self) -> int:
    return int(self.values["round"])

  def wall_s(self) -> float:
    """Seconds of run time so far, over every invocation."""
    return time.monotonic() - self._start

  def rounds_done(self) -> int:
    """Rounds of stages 0 and 2 done so far."""
    if self.phase == stages.STAGE0:
      return self.round
    if self.phase == stages.STAGE1:
      return self._t0
    return self._t0 + self.round

  def _version(self) -> int:
    return self.rounds_done() + PHASE_VERSION_STRIDE * self.phase

  def record(self, **entries) -> None:
    """Sets program-state entries (keys of `state_template`) outside rounds: the
    warmed-up head's start, stage 1's models and diagnostics, a final evaluation."""
    unknown = set(entries) - set(self.values)
    if unknown:
      raise KeyError(f"not in the program state: {sorted(unknown)}")
    self.values.update(entries)

  def record_round(self, phase: int, rnd: int, entries, accuracy: float,
                   clustering: float) -> None:
    """The program state's one update per round: round ``rnd`` of ``phase`` done,
    with the round's model ``entries`` (`RoundStage.keep`) and, for an evaluated
    stage-2 round, the final accuracies so far."""
    self.record(**entries)
    self.values["round"] = np.int32(rnd)
    if phase == stages.STAGE2 and not np.isnan(accuracy):
      self.values["final_accuracy"] = np.float64(accuracy)
      self.values["final_clustering_accuracy"] = np.float64(clustering)

  def save(self, phase: int, rnd: int) -> None:
    """Saves the state as at round ``rnd`` of ``phase``."""
    self.values["phase"], self.values["round"] = np.int32(phase), np.int32(rnd)
    self.values["elapsed"] = np.float64(self.wall_s())
    asyncio.run(self._manager.save(self.values, version=self._version()))

  def save_unless_saved(self, phase: int) -> None:
    """Saves the current round of ``phase`` unless that version is already on disk."""
    self.values["phase"] = np.int32(phase)
    if self._version() not in (asyncio.run(self._manager.get_versions()) or []):
      self.save(phase, self.round)


#: The run directory's record of every noisy computation the server has run.
EXECUTIONS_NAME = run_dir_lib.EXECUTIONS


class ExecutionLog:
  """Which noisy computations the server has started, and how many times each.

  `start(stage, round)` is written (atomically, fsynced) *before* the computation
  runs, so a run killed at any point, even between a round's aggregate and the
  checkpoint that follows it, has recorded every computation the server may have
  seen. On resume the rounds after the last checkpoint run again with fresh noise
  (distributed DP and secure mode always; in simulation mode with seeded noise the
  repeat is the same aggregate, counted all the same: one rule for every aggregator
  and noise mode). The accountant counts a round computed n times as n Gaussians
  (`pina_tff.privacy.accounting.AccountingPlan.executions`). Stage 1's sketches are
  ('stage1', 1).

  Args:
    root_dir: the run directory (the log is `<root_dir>/executions.json`).
  """

  def __init__(self, root_dir: str):
    self._path = os.path.join(root_dir, EXECUTIONS_NAME)
    self._counts = {}
    if os.path.exists(self._path):
      with open(self._path, encoding="utf-8") as f:
        for stage, rnd, times in json.load(f)["executions"]:
          self._counts[(str(stage), int(rnd))] = int(times)

  def start(self, stage: str, rnd: int) -> None:
    """Records that ``stage``'s round ``rnd`` is about to be computed (durably)."""
    key = (stage, int(rnd))
    self._counts[key] = self._counts.get(key, 0) + 1
    atomic.write_json(self._path, {"executions": [
        [s, r, n] for (s, r), n in sorted(self._counts.items())]}, durable=True)

  def times(self, stage: str, rnd: int) -> int:
    """How many times ``stage``'s round ``rnd`` has been started."""
    return self._counts.get((stage, int(rnd)), 0)

  def repeated(self) -> tuple:
    """((stage, round, times), ...) of the computations started more than once."""
    return tuple((s, r, n) for (s, r), n in sorted(self._counts.items()) if n > 1)
