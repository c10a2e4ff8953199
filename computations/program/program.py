"""The experiment program: owns the platform and hands it to the logic.

`run_simulation` is the program, as TFF's `examples/program/program.py` draws it: it
locks the run directory, resolves the config once against the data, loads the
population, builds the platform pieces (the program-state manager, one
`tff.program.GroupingReleaseManager` over `metrics.csv` and TensorBoard, the round
data source, the evaluator, the execution log) and hands them keyword-only to the
logic (`computations.program.logic.RunLogic`: stage 0 -> stage 1 -> stage 2), then
writes `summary.json`.

Resume: program state (cluster models, finalizer state, stage-1 result, progress) is
saved every N rounds and at every stage boundary; the CSV release manager drops rows
past the resumed round by itself and TensorBoard's are pruned
(`computations.program.release`). Every round's randomness (cohort, client keys,
central-DP noise seed) is a function of (seed, stage, round, client)
(`computations.program.seeds`), so a run killed at any moment and started again with
the same command continues from its last checkpoint and, where no noise is added or
the noise is seeded ('simulation' noise mode, central DP), ends with exactly the
metrics of an uninterrupted run. TFF's distributed-DP factory cannot be seeded (TFF
0.87: its stochastic rounding seeds itself from `tf.timestamp()` and its discrete
Gaussian noise comes from unseeded samplers): with `aggregator='ddp'` and finite ε a
repeated or resumed run is statistically, not bitwise, the same. In 'secure' mode
every noise key comes from `os.urandom` and is never written (shards stay in memory).

Privacy wiring (`docs/privacy.md`): cohorts of stages 0 and 2 follow
`cfg.privacy.sampling` (Poisson by default), the mean keeps the fixed denominator qP,
and each stage runs a constant number of TFF shards (enough for its largest cohort;
empty shards send zero) so the distributed-DP noise shares per round stay constant.
`summary.json` reports ε under both threat models, which one the noise was calibrated
to, δ, the sampling scheme, every noise multiplier, the local ε's, the noise mode,
and the released metrics that ε does not cover; ε counts every round the server
computed, a round re-run after a kill included (`ExecutionLog`).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.program import evaluation
from computations.program import logic as logic_lib
from computations.program import plan as plan_lib
from computations.program import program_state as ps
from computations.program import release as release_lib
from computations.program import round_loop as loop
from computations.program import run_dir as run_dir_lib
from computations.program import summary as summary_lib
from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff.errors import DataError
from pina_tff.privacy import accounting
from pina_tff.runtime import atomic
from pina_tff.runtime import verbosity
from pina_tff.simulation import population as population_lib
from pina_tff.training import models as tm

ProgramOptions = plan_lib.ProgramOptions


def write_json_atomic(path: str, obj) -> None:
  """Writes ``obj`` as sorted, indented JSON to ``path`` (`pina_tff.runtime.atomic`);
  NumPy scalars and arrays become numbers and lists."""
  atomic.write_json(path, obj, default=_json_default)


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def _log_stderr(m: str) -> None:
  print(m, file=sys.stderr, flush=True)


def run_simulation(cfg, clients_dir: str, root_dir: str,
                   options: ProgramOptions = ProgramOptions(),
                   log: Callable[[str], None] = _log_stderr,
                   population: Optional[population_lib.Population] = None) -> dict:
  """Runs (or resumes) one simulation; returns the summary also written to
  `<root_dir>/summary.json`, or `{"interrupted": True, "signal": signum or None, ...}`
  when a stop was requested (`pina_tff.runtime.signals`, `stop_after_rounds`).

  `population`: the already loaded `load_population(clients_dir, ...)` to reuse (pina-grid
  loads it once per dataset); None loads it here.

  The caller installs the TFF execution context (`computations.runtime.context.tff_context`).
  `root_dir` is locked for the call (one run per directory) and must hold nothing or a
  run of the same configuration (`computations.program.run_dir`).
  """
  with run_dir_lib.open_run_dir(root_dir, log) as root:
    return _run_locked(cfg, clients_dir, root, options, log, population)


def _run_locked(cfg, clients_dir, root_dir, options, log, population=None) -> dict:
  """The plan of one run in a locked run directory, its logic, and its summary."""
  _quiet_logs()
  cfg = plan_lib.config_for_population(cfg, clients_dir)  # validated, resolved: once
  run_dir_lib.check_fingerprint(root_dir, config_lib.to_dict(cfg),
                                run_dir_lib.data_fingerprint(clients_dir),
                                options.restart, log)
  pop = population or population_lib.load_population(clients_dir, cfg.stage1.lora_rank,
                                                     cfg.seed, log)
  if pop.model.config.width != cfg.model_width:
    raise DataError(f"{clients_dir}: the model is {pop.model.config.width} wide, but "
                    f"its manifest's backbone says {cfg.model_width}")
  write_json_atomic(os.path.join(root_dir, "config.json"), config_lib.to_dict(cfg))
  # Secure mode: the cohort schedule's secret key, from (or new in) the run's private
  # state; simulation mode: the seed.
  cohort_key = run_dir_lib.cohort_key(root_dir, cfg.privacy.noise_mode, cfg.seed)
  plan = plan_lib.make_plan(cfg, pop, options, cohort_key)
  logic, stop, choice_accuracy = _run_logic(plan, root_dir, log)
  if stop is not None:
    return stop
  # ε as the server saw it: the calibrated noise accounted with every computation
  # that ran more than once (a round re-run after a kill).
  report = accounting.reaccount(plan.report, logic.accounting_plan(),
                                cfg.privacy.local_delta)
  summary = summary_lib.summary(plan, report, logic.state.values,
                                choice_accuracy=choice_accuracy)
  write_json_atomic(os.path.join(root_dir, "summary.json"), summary)
  return summary


def _program_state(plan, root_dir: str, log) -> ps.ProgramState:
  """The run's program state over the run directory's manager (resumed or fresh; a
  fresh one starts from the population's pre-trained head)."""
  update_size = tm.vector_size(plan.shapes, plan.spec2.local.send_keys)
  state = ps.ProgramState(ps.state_manager(root_dir),
                          ps.state_template(plan.shapes, plan.num_models, update_size),
                          plan.t0, log)
  if state.resumed:
    log(f"resuming from checkpoint: phase {state.phase}, round {state.round}")
  else:
    state.record(head_kernel=plan.pop.head["head_kernel"].astype(np.float32),
                 head_bias=plan.pop.head["head_bias"].astype(np.float32))
  return state


def _run_logic(plan, root_dir: str, log):
  """Builds the platform pieces, hands them to the logic, runs it and closes them.
  Returns (logic, stop result or None, `_choice_accuracy` of a finished run)."""
  cfg = plan.cfg
  state = _program_state(plan, root_dir, log)
  csv, tensorboard = release_lib.release_managers(root_dir)
  release = release_lib.MetricsRelease(
      tff.program.GroupingReleaseManager([csv, tensorboard]), method=cfg.method,
      num_clusters=plan.num_models, stage0_rounds=plan.t0, wall_s=state.wall_s)
  data = plan_lib.round_data_source(plan)
  progress = loop.Progress(plan.options.progress, plan.t0 + plan.t2, state.rounds_done(),
                           f"{cfg.method} eps={cfg.privacy.epsilon}")
  try:
    evaluator = (evaluation.Evaluator(
        plan.pop, plan.num_models, resident=data.reader is not None,
        split=cfg.eval_split, score_true=method_table.get(cfg.method).true_clusters)
                 if plan.diagnostics else None)
    logic = logic_lib.RunLogic(plan=plan, state=state, release=release,
                               executions=ps.ExecutionLog(root_dir), data=data,
                               evaluator=evaluator, progress=progress, log=log)
    stop = logic.execute()
    return logic, stop, (None if stop is not None else
                         _choice_accuracy(plan, state, data.reader is not None))
  finally:
    progress.close()
    data.close()
    tensorboard.close()


def _choice_accuracy(plan, state, resident: bool) -> Optional[float]:
  """A ceiling's final models scored as every other method is scored: each client
  with the model its training loss picks (the oracle itself is scored with its true
  cluster's model, a rule no other method can use). None for the other methods and
  without diagnostics. A simulation diagnostic on every client's data, outside ε."""
  if not (plan.diagnostics and method_table.get(plan.cfg.method).true_clusters):
    return None
  choose = evaluation.Evaluator(plan.pop, plan.num_models, resident=resident,
                                split=plan.cfg.eval_split, score_true=False)
  accuracy, _ = choose({k: np.asarray(v) for k, v in state.values["weights"].items()})
  return float(accuracy)


def _quiet_logs() -> None:
  """Keeps TensorFlow's INFO chatter (checkpoint assets, autograph) off the terminal."""
  if verbosity.requested():
    return
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  # CRITICAL: TFF's secure-sum factory trips TensorFlow's "Object was never used"
  # check at ERROR level on every build; real failures still raise exceptions.
  tf.get_logger().setLevel(logging.CRITICAL)
  tf.autograph.set_verbosity(0)
  absl_logging.set_verbosity(absl_logging.FATAL)
