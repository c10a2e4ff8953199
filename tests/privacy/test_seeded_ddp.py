"""computations.learning.seeded_ddp against TFF's own DistributedDpSumFactory, draw by draw.

The same N client vectors are summed R times by each factory (TFF's through
`aggregators.EffectiveDdpSumFactory`, ours with fresh simulation-mode client keys
every draw), with noise (z_eff = 1) and without (z = 0: only the rotation and the
stochastic rounding). References, computed here from the inputs and
`pina_tff.privacy.ddp.calibrate` (not from either factory):

* mean: E[result] = the exact sum (rotation and un-rotation are linear, rounding is
  unbiased, the noise has mean 0). Each coordinate's mean over R draws, standardized
  by the expected variance, gives a chi-square statistic with D degrees of freedom.
* variance per coordinate: v = N·Var(N_Z(0, σ_int²))/s² + v_round, with σ_int =
  ceil(σ_local·s) (the integer scale both sample with), s the scale, and v_round the
  rounding variance: each rotated coordinate of each client rounds with variance
  f(1 − f)/s², f its fractional part; after the inverse rotation a coordinate
  carries the mean of those over the D_pad coordinates, i.e. E[f(1−f)] = 1/6 for f
  uniform (the random rotation makes f uniform up to O(1/s)): v_round = N/(6·s²).
  The pooled variance over R·D draws (uncorrelated coordinates, Gaussian tails) has
  relative std sqrt(2/(R·D)); each coordinate's variance over R draws is chi-square
  with R−1 degrees of freedom (Bonferroni over D coordinates).
* effective multiplier: sqrt(v − v_round) / (clip + γ·sqrt(D_pad) + leeway) for one
  client, against `calibrate`'s z_effective times σ_int/(σ_local·s) (the ceil).

Tolerances are 6 standard deviations, or tail probabilities of 1e-6.
"""
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from scipy import stats

from computations.learning import aggregators as agg
from computations.learning import client_work
from computations.runtime import context
from computations.program import seeds
from computations.learning import seeded_ddp
from pina_tff import rng_streams
from pina_tff.privacy import ddp as ddp_lib
from pina_tff.privacy import discrete_gaussian as dg
from pina_tff.simulation import resident

N, D, CLIP, BITS, R = 4, 200, 1.0, 16, 60
VALUE_TYPE = tff.TensorType(np.float32, (D,))
RUN_KEY = 11


@pytest.fixture(scope="module", autouse=True)
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _values():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(N, D))
  return (0.8 * CLIP * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _spec(z, seeded=True):
  return agg.AggregatorSpec(kind="ddp", noise_multiplier=z, clip_norm=CLIP,
                            expected_clients=N, num_shards=N, ddp_bits=BITS,
                            seeded_ddp=seeded)


def _keys(rnd):
  return list(rng_streams.client_keys(RUN_KEY, 2, rnd, range(N)))


def _draw(kind, z, rounds=R):
  values = list(_values())
  if kind == "tff":
    proc = agg.EffectiveDdpSumFactory(_spec(z, False)).create(VALUE_TYPE)
    step = lambda state, r: proc.next(state, values)
  else:
    proc = seeded_ddp.SeededDdpSumFactory(_spec(z)).create(VALUE_TYPE,
                                                           seeded_ddp.KEY_TYPE)
    step = lambda state, r: proc.next(state, values, _keys(r))
  state, out = proc.initialize(), []
  if kind == "seeded":  # a fixed rotation seed: this sample is the same every time
    state = agg.derived_seed(RUN_KEY, 2, 0, rng_streams.DDP_ROTATION)
  for r in range(rounds):
    result = step(state, r)
    state = result.state
    out.append(np.asarray(result.result, np.float64))
  return np.stack(out)


@pytest.fixture(scope="module")
def draws():
  return {(kind, z): _draw(kind, z) for kind in ("tff", "seeded") for z in (0.0, 1.0)}


def _expected_variance(z):
  p = ddp_lib.calibrate(z, CLIP, 1, N, D, BITS)
  s = p["scale"]
  noise = N * dg.variance(p["noise_scale_int"]) / s ** 2 if z > 0 else 0.0
  return noise, N / (6.0 * s ** 2), p


@pytest.mark.parametrize("kind", ["tff", "seeded"])
@pytest.mark.parametrize("z", [0.0, 1.0])
def test_mean_is_the_exact_sum(draws, kind, z):
  residual = draws[(kind, z)] - _values().sum(axis=0).astype(np.float64)
  noise, rounding, _ = _expected_variance(z)
  v = noise + rounding
  chi2 = float(np.sum(residual.mean(axis=0) ** 2 / (v / R)))
  assert stats.chi2.sf(chi2, D) > 1e-6 and stats.chi2.cdf(chi2, D) > 1e-6, chi2 / D
  assert abs(residual.mean()) < 6 * math.sqrt(v / residual.size)


@pytest.mark.parametrize("kind", ["tff", "seeded"])
@pytest.mark.parametrize("z", [0.0, 1.0])
def test_variance_per_coordinate(draws, kind, z):
  residual = draws[(kind, z)] - _values().sum(axis=0).astype(np.float64)
  noise, rounding, _ = _expected_variance(z)
  v = noise + rounding
  pooled = float(np.mean(residual ** 2))
  assert abs(pooled / v - 1) < 6 * math.sqrt(2 / residual.size), (pooled, v)
  per_coordinate = residual.var(axis=0, ddof=1) * (R - 1) / v  # chi2(R-1) each
  alpha = 1e-6 / D
  assert per_coordinate.min() > stats.chi2.ppf(alpha, R - 1)
  assert per_coordinate.max() < stats.chi2.ppf(1 - alpha, R - 1)


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_seeded_and_tff_variances_agree(draws, z):
  """Two samples of the same law: the ratio of pooled variances is within 6 std."""
  total = _values().sum(axis=0).astype(np.float64)
  a = np.mean((draws[("tff", z)] - total) ** 2)
  b = np.mean((draws[("seeded", z)] - total) ** 2)
  assert abs(math.log(b / a)) < 6 * math.sqrt(4 / (R * D)), (a, b)


@pytest.mark.parametrize("kind", ["tff", "seeded"])
def test_effective_multiplier_is_the_calibrated_one(draws, kind):
  total = _values().sum(axis=0).astype(np.float64)
  noise, rounding, p = _expected_variance(1.0)
  measured = np.mean((draws[(kind, 1.0)] - total) ** 2) - rounding
  sensitivity = CLIP + p["gamma"] * math.sqrt(p["padded_dim"]) + ddp_lib.LEEWAY
  z_measured = math.sqrt(measured) / sensitivity
  ceil_factor = p["noise_scale_int"] / p["scaled_local_stddev"]
  expected = p["z_effective"] * ceil_factor * math.sqrt(
      dg.variance(p["noise_scale_int"])) / p["noise_scale_int"]
  assert p["z_effective"] == pytest.approx(1.0, rel=1e-6)
  assert abs(z_measured / expected - 1) < 3 * math.sqrt(2 / (R * D)), (
      z_measured, expected)
  del noise


def test_same_keys_repeat_exactly_other_keys_do_not():
  values = list(_values())
  proc = seeded_ddp.SeededDdpSumFactory(_spec(1.0)).create(VALUE_TYPE,
                                                           seeded_ddp.KEY_TYPE)
  state = agg.derived_seed(RUN_KEY, 2, 1, rng_streams.DDP_ROTATION)
  a = proc.next(state, values, _keys(1)).result
  b = proc.next(state, values, _keys(1)).result
  np.testing.assert_array_equal(a, b)
  other_client = _keys(1)
  other_client[2] = rng_streams.client_keys(RUN_KEY, 2, 1, [99])[0]
  other_rotation = agg.derived_seed(RUN_KEY, 2, 2, rng_streams.DDP_ROTATION)
  for changed in (proc.next(state, values, other_client).result,
                  proc.next(other_rotation, values, _keys(1)).result):
    assert np.all(changed != a)  # every coordinate moves (noise of std ~1)


def test_secure_modular_sum_and_plain_sum_give_the_same_result():
  """The single-service path (federated_secure_modular_sum, computed in the clear by
  TFF's test compiler) and the mergeable one (int64 federated_sum, mod m after the
  merge) are the same function of the keys and the rotation seed."""
  values = list(_values())
  state = agg.derived_seed(RUN_KEY, 2, 1, rng_streams.DDP_ROTATION)
  out = []
  for secure in (True, False):
    factory = seeded_ddp.SeededDdpSumFactory(_spec(1.0), secure_sum=secure)
    proc = factory.create(VALUE_TYPE, seeded_ddp.KEY_TYPE)
    out.append(np.asarray(proc.next(state, values, _keys(1)).result))
  np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("mode", ["simulation", "secure"])
def test_every_shard_of_a_round_has_a_key_of_its_own(mode):
  """The program's keys of a round: cohort clients' and padding slots' (an empty
  shard included) are distinct 128-bit keys, so are the shards' DDP keys; the
  simulation-mode ones repeat with the seed, the secure-mode ones never."""
  ids, shard_size, num_shards = [3, 7, 1, 20, 5], 4, 3  # the third shard is empty

  def round_keys():
    keys = seeds.client_keys(0, 2, 1, ids, mode)
    pad = seeds.padding_keys(0, 2, 1, num_shards * shard_size - len(ids), mode)
    shards = resident.shard_rows(24, ids, keys, shard_size, num_shards, pad)
    slots = np.concatenate([sd for _, sd in shards])
    ddp_keys = np.stack([client_work.ddp_key({"seed": tf.constant(sd)}).numpy()
                         for _, sd in shards])
    return slots, ddp_keys

  slots, ddp_keys = round_keys()
  assert len({tuple(k) for k in slots}) == num_shards * shard_size
  assert len({tuple(k) for k in ddp_keys}) == num_shards
  assert not np.any(np.all(slots == 0, axis=1))
  again, again_ddp = round_keys()
  if mode == "simulation":
    np.testing.assert_array_equal(again, slots)
    np.testing.assert_array_equal(again_ddp, ddp_keys)
  else:
    assert not np.any(np.all(again == slots, axis=1))
    assert not np.any(np.all(again_ddp == ddp_keys, axis=1))


def test_the_weight_must_be_the_key():
  with pytest.raises(TypeError, match="int64\\[2\\] key"):
    seeded_ddp.SeededDdpSumFactory(_spec(1.0)).create(
        VALUE_TYPE, tff.TensorType(np.float32))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
