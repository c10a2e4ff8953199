"""summary.json: the run-level results and privacy facts of a finished run.

Fields (kept stable: `pina_tff.reporting` and pina-grid read them): method and its
display name, dataset, ε target / achieved (server and release threat models), δ,
every noise multiplier, local ε's, the achieved ε under each accountant (PLD and
RDP), rounds, C, population, cohort, shard size,
aggregator, scaling, final / clustering / init-clustering accuracy, wall time, the
privacy report and config, the sampling scheme, noise mode, accountant, whether the
noise is bitwise reproducible, distributed-DP nominal multipliers, TFF shards per
round and the released metrics that ε does not cover.
"""

from __future__ import annotations

import collections
from typing import Optional
import math

from computations.program import release
from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff.privacy import ddp as ddp_lib
from pina_tff.training import models as tm
from pina_tff.training import precision as precision_lib


def finite_or_str(x: float):
  """``x``, or the string "inf" for an infinite ``x`` (JSON has no infinity)."""
  return "inf" if math.isinf(x) else x


#: Written beside every `epsilon_release` (docs/privacy.md, "Two threat models").
EPSILON_RELEASE_CONDITION = (
    "holds only if the seed is secret: the cohort schedule is a function of the run's "
    "seed, which config.json and summary.json record; against anyone who knows it, "
    "the release epsilon is epsilon_server")
#: The same in secure mode: the schedule's key is secret (docs/privacy.md).
EPSILON_RELEASE_CONDITION_SECURE = (
    "holds against anyone but the holder of the run's secret cohort key (secure mode: "
    "the cohort schedule is drawn from 128 bits of OS entropy kept only in the run "
    "directory's owner-only private/cohort_key); against the key holder, the release "
    "epsilon is epsilon_server")


def _ddp_nominal(cfg, report, spec2, layout, shapes) -> dict:
  """TFF distributed-DP nominal noise multipliers of stages 0 and 2 (ddp with z > 0)."""
  nominal = {}
  for stage, kind, z, clip, keys, clusters in (
      ("stage0", cfg.stage2.aggregator, report.z0, cfg.stage0.clip, tm.HEAD_KEYS, 1),
      ("stage2", spec2.aggregator.kind, report.z2, cfg.stage2.clip,
       spec2.local.send_keys, spec2.local.num_clusters)):
    if kind == "ddp" and z > 0:
      shard, n = layout[stage]
      dim = clusters * tm.vector_size(shapes, keys)
      nominal[stage] = ddp_lib.nominal_for_effective(z, clip, shard, n, dim,
                                                     cfg.stage2.ddp_bits)
  return nominal


def _ddp_wraparound(cfg, report, spec2, layout, shapes) -> dict:
  """Modular wrap-around of the distributed-DP sum, per stage that uses it: TFF's
  scale keeps each coordinate of the round's sum inside [-m/2, m/2) except with
  probability `modclip_prob` (k standard deviations of a conservative estimate of
  its spread), so a round wraps at most padded_dim·modclip_prob coordinates in
  expectation. A wrapped coordinate is a large error in the model, not a privacy
  loss (the noise is added before the modular sum)."""
  out = {}
  for stage, kind, z, keys, clusters in (
      ("stage0", cfg.stage2.aggregator, report.z0, tm.HEAD_KEYS, 1),
      ("stage2", spec2.aggregator.kind, report.z2, spec2.local.send_keys,
       spec2.local.num_clusters)):
    if kind == "ddp" and z > 0:
      dim = clusters * tm.vector_size(shapes, keys)
      padded = ddp_lib.padded_dim(dim)
      out[stage] = {"modclip_prob_per_coordinate": ddp_lib.DEFAULT_MODCLIP_PROB,
                    "padded_dim": padded, "bits": cfg.stage2.ddp_bits,
                    "expected_wrapped_coordinates_per_round_at_most":
                        padded * ddp_lib.DEFAULT_MODCLIP_PROB}
  return out


def _public_report(cfg, report) -> dict:
  """The privacy report as summary.json writes it: in secure mode the accounting
  plan's schedule key is the run's secret cohort key, so it is replaced by a note."""
  out = report.to_dict()
  if cfg.privacy.noise_mode == "secure":
    out["plan"] = dict(out["plan"], seed="secret (secure mode: private/cohort_key)")
  return out


def privacy_fields(cfg, report, spec2, layout, shapes, diagnostics: bool) -> dict:
  """The privacy fields of summary.json.

  Args:
    cfg: the run's resolved RunConfig.
    report: its `pina_tff.privacy.accounting.PrivacyReport`.
    spec2: the stage-2 `ProcessSpec`.
    layout: {'stage0' | 'stage2': (shard size, TFF shards per round)}.
    shapes: the model's parameter shapes.
    diagnostics: whether simulation diagnostics were released.
  """
  p = cfg.privacy
  return dict(
      epsilon_release=finite_or_str(report.epsilons["release"]),
      epsilon_server=finite_or_str(report.epsilons["server"]),
      # The release ε assumes secret cohorts; they are a function of the recorded seed.
      epsilon_release_condition=(EPSILON_RELEASE_CONDITION_SECURE
                                 if p.noise_mode == "secure" else
                                 EPSILON_RELEASE_CONDITION),
      threat_model_calibrated=report.threat_model, sampling=p.sampling,
      noise_mode=p.noise_mode, accountant=report.accountant,
      # The calibrated threat model's ε under each accountant (PLD, the calibrated
      # default, and RDP beside it), then both threat models under each.
      epsilon_achieved_by_accountant={
          a: finite_or_str(e[report.threat_model])
          for a, e in report.epsilons_by_accountant.items()},
      epsilons_by_accountant={
          a: {m: finite_or_str(v) for m, v in e.items()}
          for a, e in report.epsilons_by_accountant.items()},
      # Bitwise-repeatable noise: simulation mode (every draw is keyed by the run seed,
      # distributed DP included: `computations.learning.seeded_ddp`; docs/privacy.md).
      noise_reproducible=p.noise_mode == "simulation",
      local_epsilon1_sensitivity="2*S1 (any two inputs of one client)",
      local_epsilon_ifca_ldp=(finite_or_str(report.local_epsilon2)
                              if report.local_epsilon2 is not None else None),
      max_participations=report.max_participations,
      # Computations the server ran more than once (a round re-run on resume after a
      # kill between its aggregate and the next checkpoint): counted in every ε above.
      computations_repeated=[
          {"stage": st, "round": r, "times": n}
          for st, r, n in report.plan.get("executions", ())],
      ddp_nominal_noise_multipliers=_ddp_nominal(cfg, report, spec2, layout, shapes),
      ddp_wraparound=_ddp_wraparound(cfg, report, spec2, layout, shapes),
      tff_shards_per_round={k: n for k, (_, n) in layout.items()},
      simulation_diagnostics=diagnostics,
      released_outside_epsilon=(dict(release.UNPROTECTED_METRICS,
                                     note=release.NOTE_UNPROTECTED)
                                if diagnostics else {}))


def stage1_guarantee(cfg) -> str:
  """What protects stage 1's messages, in words (summary.json `stage1_guarantee`)."""
  s1 = cfg.stage1
  if s1.centroids == "dp_lloyd":
    return (f"DP Lloyd ({s1.lloyd_steps} steps, labelled extension beyond the paper): "
            "sketches stay on the clients; the server sees only per-centroid sums and "
            f"counts through the stage-2 aggregator ({cfg.stage2.aggregator}) with noise "
            "z1*sqrt(L) per step, which composes to stage 1's Gaussian(z1) against the "
            "server; no local DP (local_epsilon1 is None)")
  if s1.public_basis_dims:
    return (f"local DP: {s1.public_basis_dims} coordinates in a public basis (PCA of "
            "public pseudo-clients' LoRA changes), each noised on the client (z1)")
  if s1.noise_positions == "released":
    return ("local DP on the kept entries only: their positions are released outside "
            "epsilon (labelled ablation)")
  return "local DP: every coordinate of each sketch noised on the client (z1)"


def client_precision(cfg, spec2) -> dict:
  """What the stage-2 client work ran in: the requested stage2.precision, the compute
  dtype of the process that ran, and the CPU's native bfloat16 flags."""
  out = precision_lib.resolve(cfg.stage2.precision).as_dict()
  out["compute_dtype"] = spec2.local.compute_dtype
  return out


def summary(plan, report, st, choice_accuracy: Optional[float] = None
            ) -> collections.OrderedDict:
  """summary.json of a finished run.

  Args:
    plan: the run's `computations.program.plan.Plan` (config, population, stage-2
      spec, shard layouts, diagnostics).
    report: the run's `PrivacyReport` as the server saw it (repeats counted).
    st: the final program state values (`computations.program.program_state`).
    choice_accuracy: a ceiling's (the oracle's) final accuracy with the loss-based
      choice every other method is scored with (None for the others).
  """
  cfg, pop, spec2 = plan.cfg, plan.pop, plan.spec2
  layout, shapes, diagnostics = plan.layout_summary(), plan.shapes, plan.diagnostics
  method = method_table.get(cfg.method)
  num_models = method_table.num_models(cfg.method, cfg.num_clusters)
  return collections.OrderedDict(
      method=cfg.method, method_name=method.name,
      dataset=pop.dataset, epsilon_target=finite_or_str(cfg.privacy.epsilon),
      epsilon_achieved=finite_or_str(report.epsilon_achieved), delta=report.delta,
      noise_multipliers={"z0": report.z0, "z1": report.z1, "z2": report.z2},
      local_epsilon1=(finite_or_str(report.local_epsilon1)
                      if report.local_epsilon1 is not None else None),
      rounds={"stage0": cfg.stage0_rounds,
              "stage2": cfg.stage2.rounds},
      num_clusters=cfg.num_clusters, population=pop.size, cohort=cfg.stage2.cohort,
      shard_size=layout["stage2"][0], aggregator=spec2.aggregator.kind,
      scaling=spec2.scaling_mode, normality_rule=spec2.normality_rule.name,
      eval_split=cfg.eval_split,
      client_precision=client_precision(cfg, spec2),
      final_accuracy=float(st["final_accuracy"]),
      clustering_accuracy=(float(st["final_clustering_accuracy"])
                           if pop.num_true_clusters > 1 and num_models > 1 else None),
      accuracy_with_loss_based_choice=choice_accuracy,
      init_clustering_accuracy=(float(st["init_clustering_accuracy"])
                                if method.uses_stage1 else None),
      init_centroid_cosine=(float(st["init_centroid_cosine"])
                            if method.uses_stage1 else None),
      stage1_positions_released_outside_epsilon=(
          cfg.stage1.noise_positions == "released" if method.uses_stage1 else None),
      stage1_guarantee=stage1_guarantee(cfg) if method.uses_stage1 else None,
      wall_clock_s=float(st["elapsed"]), privacy=_public_report(cfg, report),
      config=config_lib.to_dict(cfg),
      **privacy_fields(cfg, report, spec2, layout, shapes, diagnostics))
