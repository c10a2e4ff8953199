"""TFF's distributed DP at our effective multiplier, and the same mechanism mergeable.

``EffectiveDdpSumFactory`` is TFF's ``DistributedDpSumFactory`` given the nominal
multiplier whose effective value after rounding is the accountant's (``aggregators``
re-exports it). Its rounding and noise are unseeded; the program uses
``computations.learning.seeded_ddp`` instead, which shares the rotation and decoding below.

TFF's ``DistributedDpSumFactory`` chains
several secure sums, which TFF's mergeable-computation context cannot split over
several workers and the native runtime cannot run at all. This factory computes the
same discretized, noised, modular sum with ONE plain ``federated_sum`` of int64
vectors, so each worker sums its part of the cohort and the partial sums are merged by
addition (exact in int64); the reduction mod m happens after the merge.

Per TFF client (one shard of S simulated clients), as TFF's factory does with
``rotation_type='hd'``, ``beta=0``, ``mechanism='distributed_dgauss'``:
  1. flatten and concatenate the value, zero-pad to d = next power of 2;
  2. clip to L2 norm c = S·clip (the client work already clipped each simulated client);
  3. rotate: random signs (seed broadcast from the aggregator state, new every round),
     then the normalized Walsh-Hadamard transform (norm-preserving);
  4. scale by s and round stochastically to the integer grid (unbiased);
  5. add discrete Gaussian noise of scale ceil(σ_local·s) (tensorflow_privacy's sampler,
     as ``DistributedDiscreteGaussianSumQuery``), reduce mod m = 2^bits.
At the server: the merged int64 sum mod m, mapped to the centered range [-m/2, m/2),
divided by s, un-rotated, un-padded and reshaped.

The parameters (s, d, σ_local, the nominal multiplier for the accountant's effective
one) come from ``pina_tff.privacy.ddp.calibrate``, the same call as the secure-sum path,
so the privacy accounting is unchanged. In simulation the modular sum is computed in the
clear (as TFF's test runtime computes secure sums); what a secure aggregation protocol
would hide is not hidden here.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
# DistributedDpSumFactory is not exported under tff.aggregators in TFF 0.87, but it is
# what tff.learning.ddp_secure_aggregator builds on.
from tensorflow_federated.python.aggregators import distributed_dp
from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils

from computations.learning import seeded_process
from pina_tff.privacy import ddp as ddp_lib



def fwht(x: tf.Tensor) -> tf.Tensor:
  """Normalized Walsh-Hadamard transform of a vector whose length is a power of 2.

  Orthonormal and symmetric: ``fwht(fwht(x)) == x``.
  """
  d = int(x.shape[0])
  h = 1
  while h < d:
    blocks = tf.reshape(x, [-1, 2, h])
    a, b = blocks[:, 0, :], blocks[:, 1, :]
    x = tf.reshape(tf.stack([a + b, a - b], axis=1), [d])
    h *= 2
  return x / tf.cast(math.sqrt(d), x.dtype)


def rotation_signs(seed: tf.Tensor, d: int) -> tf.Tensor:
  """The rotation's random signs (±1, float32[d]) of the stateless ``seed``."""
  bits = tf.random.stateless_uniform([d], seed=seed, minval=0, maxval=2, dtype=tf.int32)
  return tf.cast(2 * bits - 1, tf.float32)


def _fresh_seed() -> tf.Tensor:
  """A stateless seed for this call: microsecond clock and an unseeded random draw."""
  clock = tf.cast(tf.timestamp() * 1e6, tf.int64)
  draw = tf.random.uniform([], minval=0, maxval=tf.int64.max, dtype=tf.int64)
  return tf.stack([clock, draw])


def leaves(value_type) -> list:
  """The tensor types of a (structure of) tensor type(s), flattened."""
  if isinstance(value_type, tff.TensorType):
    return [value_type]
  out = []
  for t in value_type.children():
    out.extend(leaves(t))
  return out


def value_dim(value_type) -> int:
  """Number of scalars in a (structure of) tensor type(s)."""
  if isinstance(value_type, tff.TensorType):
    return int(np.prod(value_type.shape))
  return sum(value_dim(t) for t in value_type.children())


class EffectiveDdpSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """TFF's DistributedDpSumFactory whose *effective* multiplier is `spec.noise_multiplier`.

  At `create` (when the dimension d is known) the nominal multiplier z_nom is solved
  from z_eff = z_nom * clip / (clip + gamma(z_nom) * sqrt(d_padded)), and the bit width
  and discretization regime are checked (`pina_tff.privacy.ddp.check_ddp_regime`).
  """

  def __init__(self, spec):
    self._spec = spec
    self.nominal_multiplier = None
    self.ddp_parameters = None

  def create(self, value_type):
    spec = self._spec
    params = ddp_lib.calibrate(spec.noise_multiplier, spec.clip_norm, spec.shard_size,
                               spec.num_shards, value_dim(value_type), spec.ddp_bits)
    z_nom = params["z_nominal"]
    self.nominal_multiplier = z_nom
    self.ddp_parameters = params
    return distributed_dp.DistributedDpSumFactory(
        noise_multiplier=z_nom / spec.shard_size,
        expected_clients_per_round=spec.num_shards,
        bits=spec.ddp_bits,
        l2_clip=spec.shard_size * spec.clip_norm,
        modclip_prob=ddp_lib.DEFAULT_MODCLIP_PROB,
        mechanism="distributed_dgauss",
        rotation_type="hd",
        auto_l2_clip=False).create(value_type)


class MergeableDdpSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Distributed discrete-Gaussian sum as one mergeable ``federated_sum`` (see module).

  ``spec`` is an ``aggregators.AggregatorSpec`` with kind 'ddp'; after ``create``,
  ``nominal_multiplier`` and ``ddp_parameters`` hold what ``ddp.calibrate`` returned
  (the same values ``EffectiveDdpSumFactory`` reports).
  """

  def __init__(self, spec):
    self._spec = spec
    self.nominal_multiplier = None
    self.ddp_parameters = None

  def create(self, value_type) -> tff.templates.AggregationProcess:
    spec = self._spec
    dim = sum(int(np.prod(t.shape)) for t in leaves(value_type))
    params = ddp_lib.calibrate(spec.noise_multiplier, spec.clip_norm, spec.shard_size,
                               spec.num_shards, dim, spec.ddp_bits)
    self.nominal_multiplier = params["z_nominal"]
    self.ddp_parameters = params
    encode, decode = codec(value_type, dim, params,
                            clip=float(spec.shard_size * spec.clip_norm),
                            modulus=2 ** spec.ddp_bits)
    def body(state, value):
      encoded = tff.federated_map(encode, (value, tff.federated_broadcast(state)))
      return tff.federated_map(decode, (tff.federated_sum(encoded), state))

    return seeded_process.seeded_aggregation_process(value_type, body)


def rotate_and_scale(value, seed, dim: int, d: int, clip: float, scale: float,
                     traced: dict) -> tf.Tensor:
  """Steps 1-4 up to the rounding: float32[d], the flattened, zero-padded value clipped
  to L2 norm ``clip``, rotated with the signs of ``seed`` and scaled by ``scale``.
  Records the value's Python structure in ``traced`` (for :func:`build_decode`)."""
  traced["structure"] = value
  flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1])
                    for v in tf.nest.flatten(value)], axis=0)
  x = tf.clip_by_norm(tf.pad(flat, [[0, d - dim]]), clip)
  return fwht(x * rotation_signs(seed, d)) * tf.constant(scale, tf.float32)


def build_decode(dim: int, params: dict, modulus: int, traced: dict):
  """decode(total int64[d], seed) -> the value's structure: the sum mod m in the
  centered range [-m/2, m/2), divided by s, un-rotated, un-padded and reshaped (built
  after the encoder that filled ``traced``)."""
  d, scale = params["padded_dim"], params["scale"]

  @tff.tensorflow.computation(tff.TensorType(np.int64, [d]), seeded_process.SEED_TYPE)
  def decode(total, seed):
    centered = tf.math.floormod(total, modulus)
    centered = tf.where(centered >= modulus // 2, centered - modulus, centered)
    x = tf.cast(centered, tf.float32) / tf.constant(scale, tf.float32)
    x = fwht(x) * rotation_signs(seed, d)
    like = tf.nest.flatten(traced["structure"])
    parts = tf.split(x[:dim], [int(np.prod(v.shape)) for v in like])
    return tf.nest.pack_sequence_as(
        traced["structure"],
        [tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(parts, like)])

  return decode


def codec(value_type, dim: int, params: dict, clip: float, modulus: int):
  """(encode, decode) TFF computations of the mechanism (module docstring, steps 1-5).

  Args:
    value_type: the TFF type of one client's value.
    dim: its number of scalars.
    params: `ddp.calibrate`'s result (padded_dim d, scale s, noise_scale_int).
    clip: the L2 bound of one TFF client's value (S·clip).
    modulus: m = 2^bits.

  Returns:
    encode(value, seed) -> int64[d] in [0, m); decode(total, seed) -> a value of
    `value_type`'s structure (the mean is taken by the caller).
  """
  d, scale, noise_scale = params["padded_dim"], params["scale"], params["noise_scale_int"]
  traced = {}  # the value's Python structure, as `encode` sees it (for `decode`)

  @tff.tensorflow.computation(value_type, seeded_process.SEED_TYPE)
  def encode(value, seed):
    x = rotate_and_scale(value, seed, dim, d, clip, scale, traced)
    floor = tf.floor(x)
    up = tf.random.stateless_uniform([d], seed=_fresh_seed()) < (x - floor)
    ints = tf.cast(floor, tf.int64) + tf.cast(up, tf.int64)
    if noise_scale > 0:
      ints += tf.cast(discrete_gaussian_utils.sample_discrete_gaussian(
          scale=tf.constant(noise_scale, tf.int32), shape=[d], dtype=tf.int32), tf.int64)
    return tf.math.floormod(ints, modulus)

  return encode, build_decode(dim, params, modulus, traced)
