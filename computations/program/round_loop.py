"""One round loop for every iterative stage (stage 0, stage 2 of PINA and every baseline).

In the style of TFF's program logic (`examples/program/program_logic.py`): the loop
knows nothing of the method, the data or where results go; the pieces that differ
are passed in:

  `RoundStage`    what one stage runs: its process, cohort and seed schedules, how a
                  round's output is kept in the program state and evaluated, ε spent;
  `RoundDataSource` (computations.data.round_data) the round's TFF client values;
  `RoundHooks`    what happens between rounds: stop check, metric release,
                  checkpoint, progress.

Per round: stop check -> cohort -> client values -> prepare state (e.g. the
aggregator's noise seed) -> started (the execution log, before the server computes
anything) -> `process.next` -> keep -> evaluate -> ε -> release -> after round (the
program state's one update of the round, checkpoint, progress).

The loop imports nothing from `computations`: every TFF-specific step is a piece of
the stage.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np



@dataclasses.dataclass(frozen=True)
class RoundResult:
  """What one round released (the loop's view of a round).

  Attributes:
    stage, rnd: stage (0 or 2) and 1-based round.
    accuracy, clustering: test and clustering accuracy (nan when not evaluated).
    loss: mean training loss over the cohort (nan without diagnostics).
    epsilon: ε spent so far under the calibrated threat model (inf without noise).
    counts: per-cluster member counts (None without diagnostics).
    diagnostics: the finalizer's measurements (None for stages without them).
    nonfinite: cohort clients whose update had an inf/NaN entry and was sent as zeros
      (nan without diagnostics).
  """
  stage: int
  rnd: int
  accuracy: float
  clustering: float
  loss: float
  epsilon: float
  counts: Optional[np.ndarray] = None
  diagnostics: Optional[Mapping[str, Any]] = None
  nonfinite: float = math.nan


@dataclasses.dataclass(frozen=True)
class RoundStage:
  """The pieces of one iterative stage.

  Attributes:
    stage: 0 or 2 (the stage number in cohorts, seeds and metrics).
    total_rounds: rounds of the stage.
    process: the `tff.learning.templates.LearningProcess` run each round.
    cohort: round -> the cohort's client indices.
    client_seeds: (round, ids) -> each client's stateless seed.
    prepare_state: (round, process state) -> the state the round starts from (e.g.
      with that round's aggregator noise seed: `computations.program.seeds`); None:
      the state as it is.
    keep: (round, process state) -> (cluster parameters {k: [C, ...]} to evaluate,
      {program-state key: value} of the round's model, handed to `after_round`).
    evaluate: (round, parameters) -> (test accuracy, clustering accuracy).
    epsilon: round -> ε spent after it.
    measurements: process metrics -> (loss, counts or None, finalizer diagnostics or
      None, clients zeroed for non-finite updates (nan without diagnostics)).
    padding_seeds: (round, cohort size) -> the keys of the round's padding slots in
      slot order (every slot of every shard then has a key of its own); None: the
      data source's default (0, 0).
  """
  stage: int
  total_rounds: int
  process: Any
  cohort: Callable[[int], Sequence[int]]
  client_seeds: Callable[[int, Sequence[int]], list]
  prepare_state: Optional[Callable[[int, Any], Any]]
  keep: Callable[[int, Any], tuple]
  evaluate: Callable[[int, dict], tuple]
  epsilon: Callable[[int], float]
  measurements: Callable[[Any], tuple]
  padding_seeds: Optional[Callable[[int, int], np.ndarray]] = None


@dataclasses.dataclass(frozen=True)
class RoundHooks:
  """What happens around rounds, the same for every stage.

  Attributes:
    stop: () -> None to go on, or the result to return (checkpoint already saved).
    release: RoundResult -> None (metrics managers).
    after_round: (RoundResult, {program-state key: value} from `RoundStage.keep`)
      -> None (the program state's update of the round, progress, checkpoint),
      called after `release`.
    started: round -> None, called right before `process.next` (records, durably,
      that the server is about to compute the round: a round computed again after a
      kill is counted in ε); None: nothing.
  """
  stop: Callable[[], Optional[dict]]
  release: Callable[[RoundResult], None]
  after_round: Callable[[RoundResult, Mapping[str, Any]], None]
  started: Optional[Callable[[int], None]] = None


def run_rounds(stage: RoundStage, state, first_round: int, data, hooks: RoundHooks):
  """Runs rounds ``first_round`` .. ``stage.total_rounds`` of ``stage``.

  Args:
    stage: the stage's pieces (`RoundStage`).
    state: the process state to start from (model weights already set).
    first_round: the first round to run (1 on a fresh start; resumed round + 1).
    data: a `computations.data.round_data.RoundDataSource`.
    hooks: stop check, release and after-round pieces (`RoundHooks`).

  Returns:
    (process state, None) when every round ran, or (process state, stop result) when
    `hooks.stop` asked to stop before a round.
  """
  for rnd in range(first_round, stage.total_rounds + 1):
    stop = hooks.stop()
    if stop is not None:
      return state, stop
    ids = stage.cohort(rnd)
    seeds = stage.client_seeds(rnd, ids)
    if stage.padding_seeds is None:
      values = data.round_data(stage.stage, rnd, ids, seeds)
    else:
      values = data.round_data(stage.stage, rnd, ids, seeds,
                               pad_seeds=stage.padding_seeds(rnd, len(ids)))
    if stage.prepare_state is not None:
      state = stage.prepare_state(rnd, state)
    if hooks.started is not None:
      hooks.started(rnd)
    out = stage.process.next(state, values)
    state = out.state
    params, entries = stage.keep(rnd, state)
    acc, clus = stage.evaluate(rnd, params)
    eps = stage.epsilon(rnd)
    loss, counts, diag, nonfinite = stage.measurements(out.metrics)
    result = RoundResult(stage.stage, rnd, acc, clus, loss, eps, counts, diag, nonfinite)
    hooks.release(result)
    hooks.after_round(result, entries)
  return state, None


def due(rnd: int, total: int, every: int) -> bool:
  """Whether round ``rnd`` of ``total`` is one of every ``every``-th (or the last)."""
  return rnd % max(1, every) == 0 or rnd == total


class Progress:
  """A progress bar with round, accuracy and ETA on a terminal; log lines otherwise.

  Args:
    mode: 'auto' (bar on a terminal, log lines otherwise), 'bar', 'log' or 'none'.
    total: rounds of the whole run; done: rounds already done (resume).
    label: shown before each line.
  """

  def __init__(self, mode: str, total: int, done: int, label: str):
    if mode == "auto":
      mode = "bar" if sys.stderr.isatty() else "log"
    self.mode, self.total, self.done, self.label = mode, total, done, label
    self.done_at_start = done  # rounds of earlier invocations (not in `elapsed`)
    self.start = time.monotonic()
    self.bar = None
    if mode == "bar":
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=done, desc=label, unit="round",
                      dynamic_ncols=True)

  def update(self, stage: int, rnd: int, acc: float, extra: str = ""):
    """Counts one round of ``stage`` done with test accuracy ``acc``."""
    self.done += 1
    if self.bar is not None:
      self.bar.set_postfix_str(f"stage {stage} round {rnd} acc {acc:.3f} {extra}")
      self.bar.update(1)
    elif self.mode == "log":
      elapsed = time.monotonic() - self.start
      left = self.total - self.done
      eta = elapsed / max(1, self.done - self.done_at_start) * left
      print(f"[{self.label}] stage {stage} round {rnd} ({self.done}/{self.total}) "
            f"acc={acc:.4f} {extra} eta={eta:.0f}s", file=sys.stderr, flush=True)

  def close(self):
    """Closes the bar (no-op for log lines)."""
    if self.bar is not None:
      self.bar.close()


def nan_pair() -> tuple:
  """(nan, nan): the (accuracy, clustering accuracy) of a round not evaluated."""
  return (math.nan, math.nan)
