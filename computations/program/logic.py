"""The program logic: stage 0 -> stage 1 -> stage 2 (or a baseline), resumable.

Handed its pieces by the program (`computations.program.program`), as TFF's
`examples/program/program_logic.py` is: the plan, the program state (over a
program-state manager), the metrics release (over a release manager), the execution
log, the round data source, the evaluator and the progress display. It builds no
platform piece. Stages 0 and 2 are the same round loop
(`computations.program.round_loop.run_rounds`) with different pieces; stage 1 is
`computations.program.initial_models`. Every random draw is a function of (key,
stream, stage, round, client) (`computations.program.seeds`), so resume needs no
iterator or RNG state.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Optional

import numpy as np

from computations.learning import finalizers as fin
from computations.learning import learning_process as lp
from computations.learning import methods
from computations.program import initial_models as init_lib
from computations.program import round_loop as loop
from computations.program import seeds
from pina_tff import stages
from pina_tff.models import reduced_tail as rt
from pina_tff.privacy import accounting
from pina_tff.runtime import signals
from pina_tff.simulation import sampling as sampling_lib


class RunLogic:
  """One invocation of a run's stages, from where its program state left off.

  Args (keyword-only):
    plan: what the run computes (`computations.program.plan.Plan`).
    state: the `ProgramState` (resumed or fresh; its head set on a fresh start).
    release: round results -> released rows (`MetricsRelease`).
    executions: the `ExecutionLog` (every noisy computation recorded before it runs).
    data: the round data source.
    evaluator: (parameters) -> (accuracy, clustering accuracy); None without
      diagnostics.
    progress: a `round_loop.Progress`.
    log: progress messages.
  """

  def __init__(self, *, plan, state, release, executions, data, evaluator, progress,
               log: Callable[[str], None]):
    self.plan, self.state, self.release = plan, state, release
    self.executions, self.data, self.evaluator = executions, data, evaluator
    self.progress, self.log = progress, log
    self.rounds_this_call = 0

  def execute(self) -> Optional[dict]:
    """Runs the stages not done yet; None when finished, else the stop result."""
    with signals.rounds_running():  # a signal now waits for the end of the round
      for phase, stage in ((stages.STAGE0, self._stage0), (stages.STAGE1, self._stage1),
                           (stages.STAGE2, self._stage2)):
        if self.state.phase == phase:
          stop = stage()
          if stop is not None:
            return stop
    return None

  def accounting_plan(self) -> accounting.AccountingPlan:
    """The run's accounting plan with every computation started so far that ran more
    than once (`computations.program.program_state.ExecutionLog`)."""
    return dataclasses.replace(self.plan.accounting_plan,
                               executions=self.executions.repeated())

  # ------------------------------------------------------------ between rounds
  def _stop(self, phase: int) -> Optional[dict]:
    """Between rounds: None, or (after a checkpoint if a signal asked) the stop result."""
    signum = signals.requested()
    if signum is None:
      limit = self.plan.options.stop_after_rounds
      return ({"interrupted": True}
              if limit is not None and self.rounds_this_call >= limit else None)
    self.state.save_unless_saved(phase)
    return {"interrupted": True, "signal": signum, "phase": phase,
            "round": self.state.round}

  def round_hooks(self, phase: int, total: int) -> loop.RoundHooks:
    """The round loop's hooks in ``phase`` (0 or 2) of ``total`` rounds: stop check,
    release, the program state's one update per round, progress and checkpoint."""
    def after_round(r: loop.RoundResult, entries) -> None:
      self.rounds_this_call += 1
      self.state.record_round(phase, r.rnd, entries, r.accuracy, r.clustering)
      extra = (f"clu={r.clustering:.2f}"
               if phase == stages.STAGE2 and self.plan.num_models > 1 else "")
      self.progress.update(r.stage, r.rnd, r.accuracy, extra)
      if loop.due(r.rnd, total, self.plan.options.checkpoint_every):
        self.state.save(phase, r.rnd)

    key = stages.KEYS[phase]
    return loop.RoundHooks(stop=lambda: self._stop(phase), release=self.release,
                           after_round=after_round,
                           started=lambda rnd: self.executions.start(key, rnd))

  # ------------------------------------------------------------ round pieces
  def _evaluate(self, total: int, clustering: bool):
    def evaluate(rnd: int, params: dict) -> tuple:
      if self.evaluator is None or not loop.due(rnd, total, self.plan.options.eval_every):
        return loop.nan_pair()
      acc, clus = self.evaluator(params)
      return (acc, clus) if clustering else (acc, float("nan"))
    return evaluate

  def _epsilon(self, stage: int, z: float):
    report = self.plan.report
    def epsilon(rnd: int) -> float:
      if not z > 0:
        return float("inf")
      return accounting.epsilon_spent_after(
          rnd, stages.KEYS[stage], self.accounting_plan(), report.noise_multipliers,
          report.delta, report.accountant, report.threat_model)
    return epsilon

  def _measurements(self, with_finalizer: bool):
    diagnostics = self.plan.diagnostics
    def measurements(metrics) -> tuple:
      cwm = metrics["client_work"]
      loss = (float(cwm["loss_sum"]) / max(1.0, float(cwm["num_clients"]))
              if diagnostics else float("nan"))
      nonfinite = float(cwm["num_nonfinite"]) if diagnostics else float("nan")
      if not with_finalizer:
        return loss, None, None, nonfinite
      counts = np.asarray(cwm["cluster_counts"]) if diagnostics else None
      return loss, counts, metrics["finalizer"], nonfinite
    return measurements

  def _round_stage(self, stage: int, total: int, process, spec, cohort: int, keep,
                   z: float) -> loop.RoundStage:
    """The pieces of stage 0 or stage 2 (they differ only in what is passed here)."""
    cfg, key, size = self.plan.cfg, self.plan.cohort_key, self.plan.pop.size
    layout = self.plan.layout0 if stage == stages.STAGE0 else self.plan.layout2
    slots = layout.num_shards * layout.shard_size
    return loop.RoundStage(
        stage=stage, total_rounds=total, process=process,
        cohort=lambda rnd: sampling_lib.cohort(key, stage, rnd, size, cohort,
                                               cfg.privacy.sampling),
        client_seeds=lambda rnd, ids: seeds.client_keys(cfg.seed, stage, rnd, ids,
                                                        cfg.privacy.noise_mode),
        padding_seeds=lambda rnd, n: seeds.padding_keys(cfg.seed, stage, rnd, slots - n,
                                                        cfg.privacy.noise_mode),
        prepare_state=seeds.seed_noise_step(cfg, stage, spec.aggregator),
        keep=keep, evaluate=self._evaluate(total, clustering=stage == stages.STAGE2),
        epsilon=self._epsilon(stage, z),
        measurements=self._measurements(with_finalizer=stage == stages.STAGE2))

  # ------------------------------------------------------------ stages
  def _stage0(self) -> Optional[dict]:
    """Head warm-up: DP-FedAvg on the head through the same DP aggregator."""
    p, st = self.plan, self.state.values
    if p.t0 > 0:
      spec0 = methods.stage0_spec(p.cfg, z0=p.report.z0, shard_size=p.layout0.shard_size,
                                  n_max=p.pop.n_max_train, diagnostics=p.diagnostics,
                                  num_shards=p.layout0.num_shards,
                                  secure_sums=p.secure_sums)
      proc0 = lp.build_process(p.pop.model, spec0, reader=self.data.reader)
      base = rt.init_trainable(p.pop.model.config, p.cfg.seed, st["head_kernel"],
                               st["head_bias"])
      state = proc0.set_model_weights(proc0.initialize(), lp.model_weights(
          {k: v[None] for k, v in base.items()}))

      def keep(rnd, state):
        del rnd
        w = state.global_model_weights.trainable  # (no extra TFF call per round)
        return ({k: np.asarray(v) for k, v in w.items()},
                {"head_kernel": np.asarray(w["head_kernel"][0]),
                 "head_bias": np.asarray(w["head_bias"][0])})

      stage = self._round_stage(stages.STAGE0, p.t0, proc0, spec0, p.cfg.stage0.cohort,
                                keep, p.report.z0)
      _, stop = loop.run_rounds(stage, state, self.state.round + 1, self.data,
                                self.round_hooks(stages.STAGE0, p.t0))
      if stop is not None:
        return stop
    self.state.save(stages.STAGE1, 0)
    return None

  def _stage1(self) -> Optional[dict]:
    """Stage-2 start: sketches + k-means (PINA), random offsets, or one shared model."""
    stop = self._stop(stages.STAGE1)
    if stop is not None:
      return stop
    st = self.state.values
    weights, acc, cosine = init_lib.initial_models(
        self.plan, self.data, self.executions,
        {"head_kernel": st["head_kernel"], "head_bias": st["head_bias"]}, self.log)
    # NaN diagnostics where stage 1 does not run (as the state template holds them)
    self.state.record(weights=weights, init_clustering_accuracy=np.float64(acc),
                      init_centroid_cosine=np.float64(cosine))
    self.state.save(stages.STAGE2, 0)
    return None

  def _stage2(self) -> Optional[dict]:
    """Clustered rounds (or the baseline's rounds) from the stage-1 start."""
    p, st = self.plan, self.state.values
    proc = lp.build_process(p.pop.model, p.spec2, reader=self.data.reader)
    state = proc.set_model_weights(proc.initialize(), lp.model_weights(st["weights"]))
    state = state._replace(finalizer=fin.finalizer_state(self.state.round,
                                                         st["velocity"]))

    def keep(rnd, state):
      del rnd
      params = {k: np.asarray(v) for k, v in state.global_model_weights.trainable.items()}
      return params, {"weights": _ordered(params, p.shapes),
                      "velocity": np.asarray(state.finalizer["velocity"])}

    stage = self._round_stage(stages.STAGE2, p.t2, proc, p.spec2, p.cfg.stage2.cohort,
                              keep, p.report.z2)
    _, stop = loop.run_rounds(stage, state, self.state.round + 1, self.data,
                              self.round_hooks(stages.STAGE2, p.t2))
    if stop is not None:
      return stop
    if p.t2 == 0:
      params = {k: np.asarray(v) for k, v in st["weights"].items()}
      acc, clus = self.evaluator(params) if self.evaluator else loop.nan_pair()
      self.state.record(final_accuracy=acc, final_clustering_accuracy=clus)
    self.state.save(stages.DONE, p.t2)
    return None


def _ordered(params: dict, shapes) -> collections.OrderedDict:
  return collections.OrderedDict((k, params[k]) for k in shapes)
