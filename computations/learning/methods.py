"""Maps a validated `pina_tff.config.RunConfig` to the composed processes of a method.

Every method shares the trainable parameters (LoRA on the last W_V + head), the
clipping bound, the aggregator and its calibrated noise; they differ only in what
their entry in `pina_tff.method_table` says (clusters and cluster choice, local
noise, scaling, FedProx's proximal term, FedNova's step normalization).
"""

from __future__ import annotations

import math

from computations.learning import aggregators as agg
from computations.learning import learning_process as lp
from pina_tff import method_table
from pina_tff.aggregation import scaling as scaling_lib
from pina_tff.clustering import dp_lloyd
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import precision as precision_lib

def _shards_for_expected_cohort(cohort: int, shard_size: int) -> int:
  """TFF clients for an expected cohort (the default when no layout is given)."""
  return max(1, math.ceil(cohort / shard_size))


def _aggregator_kind(kind: str, noise_multiplier: float) -> str:
  """Distributed DP without noise (epsilon = inf) is a secure sum.

  [project choice] At z = 0 DDP's rotation and randomized rounding would only add
  quantization error: with no noise to add, the noiseless secure sum is used instead
  (exact, and deterministic).
  """
  return "secure_sum" if kind == "ddp" and noise_multiplier == 0 else kind


def stage1_lloyd_aggregator(cfg, *, z_step: float, shard_size: int, num_shards: int,
                            secure_sums: bool | None = None) -> agg.AggregatorSpec:
  """DP Lloyd's secure sum (`pina_tff.clustering.dp_lloyd`, stage1.centroids =
  'dp_lloyd'): stage 2's aggregator kind and DDP bit width, noise multiplier z_step =
  z1·√L per step, clip √2·S1 (a client's sketch and its count), no denominator (the
  server divides per-slot sums by per-slot counts).

  Privacy: std z_step·√2·S1 per coordinate of each step's sums; L steps compose to the
  Gaussian(z1) the accountant charges for stage 1 against the server."""
  return agg.AggregatorSpec(
      kind=_aggregator_kind(cfg.stage2.aggregator, z_step), noise_multiplier=z_step,
      clip_norm=dp_lloyd.sensitivity(cfg.stage1.clip), expected_clients=1,
      shard_size=shard_size, num_shards=num_shards, ddp_bits=cfg.stage2.ddp_bits,
      seeded_ddp=True, secure_sums=secure_sums)


def aggregate_noise_std(aggregator: agg.AggregatorSpec) -> float:
  """Per-coordinate std of the noise in the aggregate u = (sum + noise) / M, in
  parameter units: z·S/M for central and distributed DP (TFF's discretization adds a
  few per cent of rounding that this leaves out), 0 for the noise-free sums. A public
  parameter of the mechanism."""
  return aggregator.central_stddev / aggregator.expected_clients


def normality_rule(cfg, aggregator: agg.AggregatorSpec) -> scaling_lib.NormalityRule:
  """The normality phase's rule of `cfg` with the aggregator's noise std."""
  return scaling_lib.NormalityRule(name=cfg.stage2.normality_rule,
                                   noise_std=aggregate_noise_std(aggregator),
                                   max_gain=cfg.stage2.restore_max_gain)


def stage0_spec(cfg, *, z0: float, shard_size: int, n_max: int,
                diagnostics: bool = True, num_shards: int | None = None,
                secure_sums: bool | None = None) -> lp.ProcessSpec:
  """Head warm-up: DP-FedAvg on the head only, through the same DP aggregator.

  Stage 0 borrows from stage 2 its aggregator kind, DDP bit width, server learning
  rate and local batch size (`cfg.stage2`); its own are rounds, cohort, epochs, lr and
  clip (`cfg.stage0`).

  Args:
    cfg: the resolved RunConfig (stage 0 and the stage-2 aggregator settings).
    z0: stage-0 noise multiplier (0: no noise; a 'ddp' aggregator then becomes a
      noiseless secure sum, see `_aggregator_kind`).
    shard_size: simulated clients per TFF client.
    n_max: padded examples per client.
    diagnostics: release the simulation diagnostics (loss, counts).
    num_shards: TFF clients per round, constant over the stage (the program pads
      Poisson cohorts to it so the distributed-DP noise shares stay the same); default
      ceil(cohort / shard_size). The denominator is the expected cohort qP = cohort.
    secure_sums: whether the runtime runs secure-sum intrinsics
      (`aggregators.AggregatorSpec.secure_sums`; None: the installed context's answer).

  Returns:
    The stage-0 `ProcessSpec` (one model, head keys only, no scaling).
  """
  s0 = cfg.stage0
  # Every method, IFCA+LDP included, warms the head up through the configured aggregator.
  kind = cfg.stage2.aggregator
  return lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=1, local_epochs=s0.local_epochs,
                            batch_size=cfg.stage2.batch_size, learning_rate=s0.lr,
                            clip_norm=s0.clip, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS, num_true_clusters=1),
      aggregator=agg.AggregatorSpec(kind=_aggregator_kind(kind, z0), noise_multiplier=z0,
                                    clip_norm=s0.clip, expected_clients=s0.cohort,
                                    shard_size=shard_size,
                                    num_shards=num_shards or _shards_for_expected_cohort(s0.cohort,
                                                                         shard_size),
                                    ddp_bits=cfg.stage2.ddp_bits, seeded_ddp=True,
                                    secure_sums=secure_sums),
      shard_size=shard_size, n_max=n_max, scaling_mode="none",
      server_learning_rate=cfg.stage2.server_lr, simulation_diagnostics=diagnostics)


def stage2_spec(cfg, *, z2: float, shard_size: int, n_max: int, num_true_clusters: int,
                expected_local_steps: float = 1.0, diagnostics: bool = True,
                num_shards: int | None = None,
                secure_sums: bool | None = None) -> lp.ProcessSpec:
  """The stage-2 process of `cfg.method` (its `pina_tff.method_table` entry).

  Args:
    cfg: the resolved RunConfig.
    z2: stage-2 noise multiplier (central/distributed, or local for local-noise
      methods: each client adds N(0, (z2·S2)²) itself and the aggregate is a plain
      sum).
    shard_size, n_max: as in :func:`stage0_spec`.
    num_true_clusters: true clusters of the population (diagnostic counts).
    expected_local_steps: FedNova's server-side multiplier (ignored otherwise).
    diagnostics: release the simulation diagnostics.
    num_shards: as in :func:`stage0_spec`.
    secure_sums: as in :func:`stage0_spec`.

  Returns:
    The stage-2 `ProcessSpec`.
  """
  s2, method = cfg.stage2, method_table.get(cfg.method)
  ldp = method.local_noise
  local_spec = local.LocalSpec(
      num_clusters=method_table.num_models(cfg.method, cfg.num_clusters),
      local_epochs=s2.local_epochs,
      batch_size=s2.batch_size, learning_rate=s2.client_lr, clip_norm=s2.clip,
      choose_cluster=method.clustered, true_cluster=method.true_clusters,
      fedprox_mu=s2.fedprox_mu if method.proximal else 0.0,
      normalize_by_steps=method.step_normalized,
      ldp_noise_stddev=z2 * s2.clip if ldp else 0.0,
      num_true_clusters=num_true_clusters,
      compute_dtype=precision_lib.resolve(s2.precision).compute_dtype)
  aggregator = agg.AggregatorSpec(
      kind="sum" if ldp else _aggregator_kind(s2.aggregator, z2),
      noise_multiplier=0.0 if ldp else z2,
      clip_norm=s2.clip, expected_clients=s2.cohort, shard_size=shard_size,
      num_shards=num_shards or _shards_for_expected_cohort(s2.cohort, shard_size),
      ddp_bits=s2.ddp_bits, seeded_ddp=True, secure_sums=secure_sums)
  scaling = s2.scaling if method.pina_scaling else "none"
  return lp.ProcessSpec(
      local=local_spec, aggregator=aggregator, shard_size=shard_size, n_max=n_max,
      scaling_mode=scaling, warm_rounds=s2.warm_rounds,
      normality_rule=normality_rule(cfg, aggregator),
      server_learning_rate=s2.server_lr, server_momentum=s2.server_momentum,
      update_multiplier=expected_local_steps if method.step_normalized else 1.0,
      simulation_diagnostics=diagnostics)
