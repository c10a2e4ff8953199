"""Distributed DP is accounted with TFF's effective multiplier after rounding.

The reference is TFF itself: the scale factor and the inflated sensitivity that TFF's
DistributedDpSumFactory reports in its measurements once built by our aggregator.
"""
import math

import numpy as np
import pytest
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import distributed_dp

from computations.learning import aggregators as agg
from computations.runtime import context
from pina_tff import config as config_lib
from pina_tff.errors import ConfigError
from pina_tff.privacy import ddp


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


@pytest.mark.parametrize("bits,n,dim,z", [(16, 10, 300, 0.7), (20, 40, 5000, 2.0),
                                          (22, 4, 64, 0.1)])
def test_scale_factor_is_tffs(bits, n, dim, z):
  d = ddp.padded_dim(dim)
  k = distributed_dp._clip_prob_to_num_stddevs(ddp.DEFAULT_MODCLIP_PROB)
  want = min(float(distributed_dp._heuristic_scale_factor(z * 1.5 / math.sqrt(n), 1.5,
                                                          bits, n, d, k)), 1e6)
  assert ddp.scale_factor(z * 1.5 / math.sqrt(n), 1.5, bits, n, d) == pytest.approx(
      want, rel=1e-6)


@pytest.mark.parametrize("shard_size", [1, 3])
def test_factory_meets_the_effective_multiplier(tff_ctx, shard_size):
  z_eff, clip, shards, dim, bits = 0.8, 2.0, 6, 1000, 16
  spec = agg.AggregatorSpec(kind="ddp", noise_multiplier=z_eff, clip_norm=clip,
                            expected_clients=shards * shard_size, shard_size=shard_size,
                            num_shards=shards, ddp_bits=bits)
  factory = agg.build_sum_factory(spec)
  process = factory.create(tff.TensorType(np.float32, (dim,)))
  out = process.next(process.initialize(), [np.zeros(dim, np.float32)] * shards)
  m = out.measurements
  scale = float(m["scale_factor"])
  noise = float(m["scaled_local_stddev"]) * math.sqrt(shards) / scale  # param units
  shard_bound = float(m["scaled_inflated_l2"]) / scale  # S·clip + γ√d + 1e-5
  gamma_sqrt_d = shard_bound - shard_size * clip - ddp.LEEWAY
  assert int(m["padded_dim"]) == 1024
  assert gamma_sqrt_d == pytest.approx(math.sqrt(1024) / scale, rel=1e-3)
  # Per simulated client the sensitivity after rounding is clip + γ√d.
  got = noise / (clip + gamma_sqrt_d + ddp.LEEWAY)
  assert got == pytest.approx(z_eff, rel=1e-4)
  assert got >= z_eff * (1 - 1e-6)
  # The nominal multiplier is above the effective one (rounding costs privacy).
  assert factory.nominal_multiplier > z_eff
  if shard_size == 1:  # TFF's own view: noise / its inflated bound
    assert noise / shard_bound == pytest.approx(z_eff, rel=1e-4)


def test_few_bits_lose_most_of_the_noise():
  # Issue finding 4: at 12 bits with 1,000-client shards the effective multiplier
  # collapses; such widths are refused.
  z = 1.0
  eff12 = ddp.effective_multiplier(z, 1.0, 1, 1000, 10 ** 5, 12)
  eff20 = ddp.effective_multiplier(z, 1.0, 1, 1000, 10 ** 5, 20)
  assert eff12 < 0.5 * z and eff20 > 0.95 * z
  for bits in (12, 15, 23, 32):
    with pytest.raises(ConfigError, match="ddp_bits"):
      ddp.check_ddp_regime(z, 1.0, 1, 100, 1000, bits)
    with pytest.raises(ConfigError, match="ddp_bits"):
      config_lib.validate(config_lib.from_dict(
          {"population": 10000, "stage2": {"ddp_bits": bits}}))
  config_lib.validate(config_lib.from_dict({"population": 10000,
                                            "stage2": {"ddp_bits": 16}}))


def test_nominal_for_effective_inverts():
  for z in (0.3, 1.0, 5.0):
    nom = ddp.nominal_for_effective(z, 1.0, 2, 50, 4096, 18)
    assert ddp.effective_multiplier(nom, 1.0, 2, 50, 4096, 18) == pytest.approx(z, rel=1e-6)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
