"""Distributed DP with every random draw keyed: same seed, same result.

TFF 0.87's ``DistributedDpSumFactory`` (``aggregators.EffectiveDdpSumFactory``) cannot
repeat a run: its stochastic rounding seeds itself from ``tf.timestamp()`` and its
discrete Gaussian noise comes from tensorflow_privacy's sampler on TensorFlow's
unseeded generators. This factory is the same mechanism (``mechanism=
'distributed_dgauss'``, ``rotation_type='hd'``, ``beta=0``, the same calibration,
``pina_tff.privacy.ddp.calibrate``) with every draw a stateless function of a key:

  per TFF client (one shard of S simulated clients), with its int64[2] key k:
  1. flatten, zero-pad to d = next power of 2, clip to L2 norm c = S·clip;
  2. rotate: random signs of the round's rotation seed (the aggregator state,
     broadcast: the server must undo the rotation, so it is public, as in TFF), then
     the normalized Walsh-Hadamard transform;
  3. scale by s; stochastic rounding floor(x) + [u < x − floor(x)] with u uniform of
     sub-key 0 of k (unbiased);
  4. add discrete Gaussian noise of scale ceil(σ_local·s) (as tensorflow_privacy's
     ``DistributedDiscreteGaussianSumQuery`` rounds it), drawn by the exact sampler
     ``pina_tff.privacy.discrete_gaussian`` from sub-key 1 of k;
  5. reduce mod m = 2^bits and send through ``federated_secure_modular_sum``.
  At the server: the sum mod m, centered in [-m/2, m/2), divided by s, un-rotated,
  un-padded (``mergeable_ddp.build_decode``).

The key of each TFF client arrives as the aggregation's *weight* (a
``WeightedAggregationFactory`` whose weight type is int64[2]): our client work sends
its shard's key there (``client_work.ddp_key``; the mean's denominator is the public
M, so no aggregator here uses a weight). It never leaves the client. In simulation
mode it derives from the run key (``rng_streams``: the first slot's client or padding
key of (seed, stage, round, slot)), in secure mode from 16 bytes of ``os.urandom``
per slot and round: the server cannot regenerate a client's rounding or noise. The
rotation seed is the aggregator state, set every round by the program
(``rng_streams.DDP_ROTATION`` of (seed, stage, round), or OS entropy in secure mode).

Secure sums: TFF's single-service simulation context runs
``federated_secure_modular_sum`` (its test compiler computes it in the clear, as a
simulation must), so the type signature shows the only CLIENTS→SERVER movement of
the update is that secure sum. TFF's mergeable multi-service context refuses a secure
sum ("Expected `after_merge` to contain no intrinsics ... federated_secure_modular_sum")
and the native runtime has none: there (``context.secure_sums_supported()`` False)
the same int64 values go through one plain ``federated_sum``, which merges exactly,
and the reduction mod m follows at the server.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from computations.learning import mergeable_ddp
from computations.learning import seeded_process
from pina_tff.privacy import ddp as ddp_lib
from pina_tff.privacy import discrete_gaussian

#: The weight type of the factory: each TFF client's 128-bit key.
KEY_TYPE = tff.TensorType(np.int64, (2,))
#: Sub-keys of a client's key (``stateless_split(key, 2)``).
ROUNDING, NOISE = 0, 1


class SeededDdpSumFactory(tff.aggregators.WeightedAggregationFactory):
  """Distributed discrete-Gaussian sum, every draw keyed (see the module docstring).

  Args:
    spec: an ``aggregators.AggregatorSpec`` of kind 'ddp'.
    secure_sum: send through ``federated_secure_modular_sum`` (True) or a plain int64
      ``federated_sum`` (False); None: ``spec.runs_secure_sums()`` (the spec's
      ``secure_sums``, else the installed context's answer), decided at ``create``.

  After ``create``: ``nominal_multiplier`` and ``ddp_parameters`` (``ddp.calibrate``,
  as ``EffectiveDdpSumFactory`` reports them) and ``secure_sum`` (the choice made).
  """

  def __init__(self, spec, secure_sum: Optional[bool] = None):
    self._spec = spec
    self.secure_sum = secure_sum
    self.nominal_multiplier = None
    self.ddp_parameters = None

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    if tff.types.to_type(weight_type) != KEY_TYPE:
      raise TypeError(f"SeededDdpSumFactory takes each client's int64[2] key as the "
                      f"weight, found weight type {weight_type}")
    spec = self._spec
    dim = sum(int(np.prod(t.shape)) for t in mergeable_ddp.leaves(value_type))
    params = ddp_lib.calibrate(spec.noise_multiplier, spec.clip_norm, spec.shard_size,
                               spec.num_shards, dim, spec.ddp_bits)
    self.nominal_multiplier, self.ddp_parameters = params["z_nominal"], params
    if self.secure_sum is None:
      self.secure_sum = spec.runs_secure_sums()
    modulus = 2 ** spec.ddp_bits
    traced = {}
    encode = build_encode(value_type, dim, params,
                          clip=float(spec.shard_size * spec.clip_norm),
                          modulus=modulus, traced=traced)
    decode = mergeable_ddp.build_decode(dim, params, modulus, traced)
    secure = self.secure_sum

    def body(state, value, key):
      encoded = tff.federated_map(encode, (value, tff.federated_broadcast(state), key))
      if secure:
        total = tff.backends.mapreduce.federated_secure_modular_sum(encoded,
                                                                    np.int64(modulus))
      else:
        total = tff.federated_sum(encoded)
      return tff.federated_map(decode, (total, state))

    return seeded_process.seeded_aggregation_process(value_type, body,
                                                     weight_type=KEY_TYPE)


def encode_array(x: tf.Tensor, key: tf.Tensor, noise_scale: int, modulus: int
                 ) -> tf.Tensor:
  """Steps 3-5 on the rotated, scaled float32[d] ``x``: int64[d] in [0, m), a function
  of (x, key) only (stochastic rounding from sub-key ROUNDING, discrete Gaussian noise
  of scale ``noise_scale`` from sub-key NOISE; 0: no noise)."""
  keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), 2)
  floor = tf.floor(x)
  up = tf.random.stateless_uniform(tf.shape(x), seed=keys[ROUNDING]) < (x - floor)
  ints = tf.cast(floor, tf.int64) + tf.cast(up, tf.int64)
  if noise_scale > 0:
    ints += discrete_gaussian.sample(keys[NOISE], x.shape, float(noise_scale))
  return tf.math.floormod(ints, modulus)


def build_encode(value_type, dim: int, params: dict, clip: float, modulus: int,
                 traced: dict):
  """encode(value, rotation seed, key) -> int64[d] in [0, m) (steps 1-5).

  Args:
    value_type: the TFF type of one client's value.
    dim: its number of scalars.
    params: ``ddp.calibrate``'s result (padded_dim d, scale s, noise_scale_int).
    clip: the L2 bound of one TFF client's value (S·clip).
    modulus: m = 2^bits.
    traced: filled with the value's structure (for ``mergeable_ddp.build_decode``).
  """
  d, scale, noise_scale = params["padded_dim"], params["scale"], params["noise_scale_int"]

  @tff.tensorflow.computation(value_type, seeded_process.SEED_TYPE, KEY_TYPE)
  def encode(value, seed, key):
    x = mergeable_ddp.rotate_and_scale(value, seed, dim, d, clip, scale, traced)
    return encode_array(x, key, noise_scale, modulus)

  return encode
