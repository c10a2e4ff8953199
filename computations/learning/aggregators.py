"""C-slot aggregation factories: secure sum with distributed DP (default), central DP,
secure sum without noise, and a plain sum (IFCA+LDP, debugging).

Every factory here is a `tff.aggregators.WeightedAggregationFactory` so it composes
with `tff.learning.templates.compose_learning_process`, but the client weight is
*ignored*: the aggregate is a sum of clipped updates divided by a fixed, public
denominator (the expected cohort size M), as in DP-FedAvg. A data-dependent
denominator would leak.

Sharded clients. One TFF client may carry a shard of S simulated clients; its value
is the sum of S per-client clipped updates, so its L2 norm is at most S*clip. The
inner sum factory is therefore configured with clip S*clip and a noise multiplier
z/S: the central noise stddev stays z*clip (calibrated to one *simulated* client's
sensitivity), and for distributed DP each TFF client adds the share of S simulated
clients (variance S * sigma^2 / M, the sum of S independent shares). With S = 1
this is exactly the standard per-client configuration.

Distributed DP: `AggregatorSpec.noise_multiplier` is the *effective* Gaussian multiplier
the accountant uses; TFF's rounding inflates the sensitivity to clip + gamma*sqrt(d), so
the factory is given the nominal multiplier whose effective value after rounding meets
it (`pina_tff.privacy.ddp`, computed once the update dimension d is known). With
`AggregatorSpec.seeded_ddp` (what the program uses) the same mechanism runs with every
draw keyed per client (`computations.learning.seeded_ddp`): the same seed repeats a run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.runtime import context
from computations.learning import mergeable_ddp
from computations.learning import seeded_ddp
from computations.learning import seeded_process
from pina_tff import config as config_lib
from pina_tff import rng_streams

#: The configurable aggregators, plus 'sum' (IFCA+LDP's plain sum, chosen by the method).
AGGREGATORS = config_lib.AGGREGATORS + ("sum",)


@dataclasses.dataclass(frozen=True)
class AggregatorSpec:
  """How the C-slot updates reach the server.

  Attributes:
    kind: 'ddp' (distributed discrete Gaussian over secure aggregation), 'central'
      (Gaussian added by the server from a seed in the aggregator state,
      `SeededGaussianSumFactory`),
      'secure_sum' (secure sum, no noise) or 'sum' (plain federated_sum: the server
      sees each client's value; used for IFCA+LDP, whose clients add their own noise).
    noise_multiplier: z, central noise std / clip (0 = no noise); for 'ddp' the
      effective multiplier after TFF's rounding (what the accountant uses).
    clip_norm: per-simulated-client L2 bound (the client work clips; the factory's
      bound is only a safety net).
    expected_clients: M, the fixed denominator (expected simulated cohort size).
    shard_size: S, simulated clients per TFF client.
    num_shards: TFF clients per round (ceil(M / S)).
    ddp_bits: SecAgg bit width of the distributed DP mechanism.
    seeded_ddp: for 'ddp', `seeded_ddp.SeededDdpSumFactory` (every draw keyed; the
      aggregation's weight must be each client's int64[2] key, as our client work
      sends it) instead of TFF's factory (any weight, unseeded draws).
    secure_sums: whether the runtime that runs the aggregation can run secure-sum
      intrinsics (the simulation runtime on one service); False: the same mechanisms
      as plain, mergeable sums. None: ask the installed context
      (`computations.runtime.context.secure_sums_supported`) when the factory is
      built; the program passes it explicitly.
  """
  kind: str = "ddp"
  noise_multiplier: float = 0.0
  clip_norm: float = 1.0
  expected_clients: int = 1
  shard_size: int = 1
  num_shards: int = 1
  ddp_bits: int = 20
  seeded_ddp: bool = False
  secure_sums: Optional[bool] = None

  def runs_secure_sums(self) -> bool:
    """`secure_sums`, or the installed context's answer where it is None."""
    if self.secure_sums is not None:
      return self.secure_sums
    return context.secure_sums_supported()

  def __post_init__(self):
    if self.kind not in AGGREGATORS:
      raise ValueError(f"unknown aggregator {self.kind!r}; valid: {', '.join(AGGREGATORS)}")
    if self.kind != "sum" and not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
      raise ValueError(f"aggregator {self.kind!r} needs a finite clip_norm > 0, "
                       f"found {self.clip_norm}")

  @property
  def central_stddev(self) -> float:
    """Std of the noise on each coordinate of the sum, in parameter units."""
    return 0.0 if self.kind in ("sum", "secure_sum") else self.noise_multiplier * self.clip_norm


#: TFF's distributed DP at our effective multiplier (`mergeable_ddp`; re-exported).
EffectiveDdpSumFactory = mergeable_ddp.EffectiveDdpSumFactory


def derived_seed(run_seed: int, stage: int, rnd: int,
                 stream: str = rng_streams.CENTRAL_NOISE) -> np.ndarray:
  """The aggregator seed int64[2] of round ``rnd`` of ``stage`` in simulation mode:
  ``stream`` of the run seed (128 bits; `rng_streams.DDP_ROTATION` for seeded DDP)."""
  return rng_streams.tf_key(run_seed, stream, stage, rnd)


class SeededGaussianSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Central DP: clip each TFF client's value to ``l2_clip``, sum, and add N(0, stddev²)
  per coordinate at the server from a *stateless* seed held in the aggregator state.

  The state is the int64[2] seed of the next round (advanced by a stateless split each
  round); the program overwrites it before every round with :func:`derived_seed`
  (simulation: the run's seed fixes the noise, a resumed run repeats it exactly) or
  `computations.program.seeds.noise_seed` (secure: OS entropy, kept in memory only). Default initial seed:
  OS entropy. Same mechanism as ``tfp.GaussianSumQuery`` (whose
  ``tf.random_normal_initializer`` cannot be seeded per round).
  """

  def __init__(self, l2_clip: float, stddev: float):
    self._clip = float(l2_clip)
    self._stddev = float(stddev)

  def create(self, value_type):
    clip, stddev = self._clip, self._stddev
    seed_type = seeded_process.SEED_TYPE

    @tff.tensorflow.computation(value_type)
    def clip_value(value):
      flat = tf.nest.flatten(value)
      clipped, _ = tf.clip_by_global_norm(flat, clip)
      return tf.nest.pack_sequence_as(value, clipped)

    @tff.tensorflow.computation(value_type, seed_type)
    def add_noise(total, seed):
      flat = tf.nest.flatten(total)
      # One 128-bit sub-key per tensor (stateless_fold_in would keep 64 bits).
      keys = tf.random.experimental.stateless_split(seed, len(flat))
      noised = [v + tf.cast(stddev, v.dtype) * tf.random.stateless_normal(
          tf.shape(v), seed=keys[i], dtype=v.dtype) for i, v in enumerate(flat)]
      return tf.nest.pack_sequence_as(total, noised)

    def body(state, value):
      total = tff.federated_sum(tff.federated_map(clip_value, value))
      return tff.federated_map(add_noise, (total, state))

    return seeded_process.seeded_aggregation_process(value_type, body)


class ClippedSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """The secure sum's result as one mergeable plain sum: every coordinate of each TFF
  client's value clipped to [-bound, bound] (as ``tff.aggregators.SecureSumFactory``
  does with these bounds), then ``federated_sum``. Used where secure sums cannot run
  (several workers, native runtime); in simulation both are sums in the clear."""

  def __init__(self, bound: float):
    self._bound = float(bound)

  def create(self, value_type):
    bound = self._bound

    @tff.tensorflow.computation(value_type)
    def clip_value(value):
      return tf.nest.map_structure(
          lambda v: tf.clip_by_value(v, tf.cast(-bound, v.dtype), tf.cast(bound, v.dtype)),
          value)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      return tff.templates.MeasuredProcessOutput(
          state=state, result=tff.federated_sum(tff.federated_map(clip_value, value)),
          measurements=tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)


def has_noise_seed(spec: "AggregatorSpec") -> bool:
  """Whether the aggregator's state is a seed (set per round by the program): central
  DP's noise seed, seeded DDP's rotation seed."""
  return spec.kind == "central" or (spec.kind == "ddp" and spec.seeded_ddp)


def with_noise_seed(state, seed):
  """A learning-process state whose aggregator noise seed is ``seed`` (int64[2])."""
  return state._replace(aggregator=np.asarray(seed, np.int64))


def build_sum_factory(spec: AggregatorSpec) -> tff.aggregators.UnweightedAggregationFactory:
  """The inner (unweighted) sum factory for one TFF client = one shard.

  Args:
    spec: the `AggregatorSpec` (each TFF client's value is bounded by S·S2).

  Returns:
    'ddp': with `spec.seeded_ddp` the (weighted: keyed) `seeded_ddp.SeededDdpSumFactory`;
    else `EffectiveDdpSumFactory` where the runtime runs secure sums (one simulation
    service), else the same mechanism as `mergeable_ddp.MergeableDdpSumFactory`;
    'central': `SeededGaussianSumFactory`;
    'secure_sum': TFF's `SecureSumFactory` bounded at ±S·S2; 'sum': `SumFactory`.
  """
  shard_clip = spec.shard_size * spec.clip_norm
  if spec.kind == "ddp" and spec.seeded_ddp:
    return seeded_ddp.SeededDdpSumFactory(spec, secure_sum=spec.runs_secure_sums())
  if spec.kind == "ddp":
    # Secure sums run only unsplit in the simulation runtime; across several workers
    # (or on the native runtime) the same mechanism runs as plain modular sums.
    if spec.runs_secure_sums():
      return EffectiveDdpSumFactory(spec)
    return mergeable_ddp.MergeableDdpSumFactory(spec)
  if spec.kind == "central":
    return SeededGaussianSumFactory(shard_clip, spec.noise_multiplier * spec.clip_norm)
  if spec.kind == "secure_sum":
    if not spec.runs_secure_sums():
      return ClippedSumFactory(shard_clip)
    return tff.aggregators.SecureSumFactory(upper_bound_threshold=float(shard_clip),
                                            lower_bound_threshold=-float(shard_clip))
  return tff.aggregators.SumFactory()


class FixedDenominatorMeanFactory(tff.aggregators.WeightedAggregationFactory):
  """Sum through `sum_factory`, then divide by a fixed public denominator M.

  The weight argument required by `compose_learning_process` is ignored, except by a
  weighted `sum_factory` (`seeded_ddp.SeededDdpSumFactory`: the weight is each
  client's key, never a denominator).
  """

  def __init__(self, sum_factory: tff.aggregators.UnweightedAggregationFactory,
               denominator: float):
    if denominator <= 0:
      raise ValueError(f"denominator must be > 0, found {denominator}")
    self._sum_factory = sum_factory
    self._denominator = float(denominator)

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    keyed = isinstance(self._sum_factory, tff.aggregators.WeightedAggregationFactory)
    inner = (self._sum_factory.create(value_type, weight_type) if keyed
             else self._sum_factory.create(value_type))
    denominator = self._denominator

    @tff.federated_computation()
    def init_fn():
      return inner.initialize()

    @tff.tensorflow.computation(value_type)
    def divide(value):
      return tf.nest.map_structure(lambda v: v / tf.cast(denominator, v.dtype), value)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      # DP needs a data-independent denominator: the weight is never one.
      out = inner.next(state, value, weight) if keyed else inner.next(state, value)
      return tff.templates.MeasuredProcessOutput(
          state=out.state, result=tff.federated_map(divide, out.result),
          measurements=out.measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)


def build_cslot_aggregator(spec: AggregatorSpec) -> FixedDenominatorMeanFactory:
  """The stage-0/2 aggregator: u = (sum of clipped C-slot updates + noise) / M.

  Usable alone as ``model_aggregator=`` of TFF's learning algorithms or as the
  aggregator of `compose_learning_process` (see docs/embedding.md).

  Args:
    spec: kind, noise multiplier z, clip S2, fixed denominator M, shard size S, TFF
      shards per round and SecAgg bits (`AggregatorSpec`).

  Returns:
    A weighted aggregation factory (the weight is ignored: the denominator is the
    public M). Privacy: with kind 'ddp' or 'central' and z > 0 the sum carries noise of
    std z·S2 per coordinate (one simulated client's sensitivity S2 in the sum);
    'secure_sum' and 'sum' add none.

  Raises:
    ValueError: M <= 0.
  """
  return FixedDenominatorMeanFactory(build_sum_factory(spec), spec.expected_clients)
