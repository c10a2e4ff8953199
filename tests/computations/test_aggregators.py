"""computations.learning.aggregators: noise scale of the DP factories, fixed denominator,
sharded clients (same total noise), and the weight argument being ignored."""
import numpy as np
import pytest
import tensorflow_federated as tff
from scipy import stats

from computations.learning import aggregators as agg
from computations.runtime import context

P = 2000
Z, CLIP, M = 1.0, 2.0, 8
TARGET_STD = Z * CLIP / M  # noise std of the mean, per coordinate


@pytest.fixture(scope="module", autouse=True)
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _aggregate(spec, values, weights=None, rounds=1):
  process = agg.build_cslot_aggregator(spec).create(
      tff.TensorType(np.float32, (P,)), tff.TensorType(np.float32))
  weights = weights if weights is not None else [1.0] * len(values)
  state = process.initialize()
  outs = []
  for _ in range(rounds):
    out = process.next(state, [np.asarray(v, np.float32) for v in values],
                       [np.float32(w) for w in weights])
    state = out.state
    outs.append(np.asarray(out.result))
  return outs


def _spec(kind, shard_size=1, z=Z):
  return agg.AggregatorSpec(kind=kind, noise_multiplier=z, clip_norm=CLIP,
                            expected_clients=M, shard_size=shard_size,
                            num_shards=M // shard_size)


def _chi2_interval(n, std, alpha=1e-6):
  lo = stats.chi2.ppf(alpha / 2, n - 1) / (n - 1) * std ** 2
  hi = stats.chi2.ppf(1 - alpha / 2, n - 1) / (n - 1) * std ** 2
  return lo, hi


@pytest.mark.parametrize("shard_size", [1, 4])
def test_central_noise_variance(shard_size):
  zeros = [np.zeros(P)] * (M // shard_size)
  (result,) = _aggregate(_spec("central", shard_size), zeros)
  var = float(np.var(result, ddof=1))
  lo, hi = _chi2_interval(P, TARGET_STD)
  assert lo <= var <= hi, (var, TARGET_STD ** 2, lo, hi)
  assert abs(float(np.mean(result))) < 6 * TARGET_STD / np.sqrt(P)


@pytest.mark.parametrize("kind", ["central", "secure_sum"])
@pytest.mark.parametrize("shard_size", [1, 4])
def test_each_shard_is_bounded_at_shard_size_times_clip(kind, shard_size):
  """The server-side safety net bounds one TFF client's value (a shard of S clients)
  at S·clip: in L2 for 'central' (noise off here), per coordinate for 'secure_sum'.
  Shard values ten times over the bound come back at the bound (clip = 2, not 1)."""
  bound = shard_size * CLIP
  rng = np.random.default_rng(2)
  values = rng.normal(size=(M // shard_size, P))
  if kind == "central":
    values *= 10 * bound / np.linalg.norm(values, axis=1, keepdims=True)
    expected = (values * bound / np.linalg.norm(values, axis=1, keepdims=True)).sum(0)
  else:
    values = np.sign(values) * 10 * bound
    expected = np.clip(values, -bound, bound).sum(0)
  (result,) = _aggregate(_spec(kind, shard_size, z=0.0), values)
  np.testing.assert_allclose(result, expected / M, rtol=1e-4, atol=1e-4 * bound)


def test_central_noise_is_the_seeds_128_bit_sub_key_stream():
  """Reference computed with TF directly: on zero inputs the central-DP result is
  z·clip/M · stateless_normal(seed = stateless_split(state seed, 1)[0]); the sub-key
  keeps 128 bits (stateless_fold_in, used before, keeps 64)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  process = agg.build_cslot_aggregator(_spec("central")).create(
      tff.TensorType(np.float32, (P,)), tff.TensorType(np.float32))
  seed = agg.derived_seed(3, 2, 1)
  out = process.next(seed, [np.zeros(P, np.float32)] * M, [np.float32(1)] * M)
  key = tf.random.experimental.stateless_split(tf.constant(seed), 1)[0]
  expected = TARGET_STD * tf.random.stateless_normal([P], seed=key).numpy()
  np.testing.assert_allclose(out.result, expected, rtol=1e-5, atol=1e-7)


def test_central_noise_detects_a_wrong_denominator():
  # Control: the same check with half the clients' denominator would fail.
  (result,) = _aggregate(_spec("central"), [np.zeros(P)] * M)
  lo, hi = _chi2_interval(P, 2 * TARGET_STD)
  assert not lo <= float(np.var(result, ddof=1)) <= hi


@pytest.mark.parametrize("shard_size", [1, 4])
def test_ddp_noise_variance(shard_size):
  zeros = [np.zeros(P)] * (M // shard_size)
  (result,) = _aggregate(_spec("ddp", shard_size), zeros)
  var = float(np.var(result, ddof=1))
  assert abs(var / TARGET_STD ** 2 - 1) < 0.2, (var, TARGET_STD ** 2)
  assert abs(float(np.mean(result))) < 6 * TARGET_STD / np.sqrt(P)


def test_ddp_without_noise_returns_the_mean():
  rng = np.random.default_rng(0)
  values = [v * min(1.0, CLIP / np.linalg.norm(v)) for v in rng.normal(size=(M, P)) * 0.05]
  (result,) = _aggregate(_spec("ddp", z=0.0), values)
  expected = np.sum(values, axis=0) / M
  assert np.linalg.norm(result - expected) <= 1e-2 * np.linalg.norm(expected)


@pytest.mark.parametrize("kind", ["sum", "secure_sum"])
def test_no_noise_kinds_add_nothing_and_ignore_weights(kind):
  (zeros,) = _aggregate(_spec(kind), [np.zeros(P)] * M)
  np.testing.assert_array_equal(zeros, np.zeros(P))
  rng = np.random.default_rng(1)
  values = rng.uniform(-0.01, 0.01, size=(M, P))
  expected = values.sum(0) / M  # fixed denominator M, not the sum of weights
  (a,) = _aggregate(_spec(kind), values, weights=[1.0] * M)
  (b,) = _aggregate(_spec(kind), values, weights=[float(i + 1) for i in range(M)])
  np.testing.assert_allclose(a, expected, atol=1e-6)
  np.testing.assert_allclose(b, a, atol=1e-6)


def test_fixed_denominator_with_fewer_clients_than_expected():
  # Only M/2 clients show up: the denominator stays M (data-independent).
  values = [np.full(P, 0.001)] * (M // 2)
  (result,) = _aggregate(_spec("sum"), values)
  np.testing.assert_allclose(result, np.full(P, 0.001 * (M // 2) / M), rtol=1e-5)


def test_dp_weights_are_ignored():
  # With noise the weight cannot change the noise scale or the value.
  zeros = [np.zeros(P)] * M
  (result,) = _aggregate(_spec("central"), zeros, weights=[100.0] * M)
  lo, hi = _chi2_interval(P, TARGET_STD)
  assert lo <= float(np.var(result, ddof=1)) <= hi


def test_spec_validation():
  with pytest.raises(ValueError, match="unknown aggregator"):
    agg.AggregatorSpec(kind="mean")
  with pytest.raises(ValueError, match="finite clip_norm"):
    agg.AggregatorSpec(kind="ddp", clip_norm=float("inf"))
  assert agg.AggregatorSpec(kind="central", noise_multiplier=Z,
                            clip_norm=CLIP).central_stddev == Z * CLIP
  assert agg.AggregatorSpec(kind="secure_sum", noise_multiplier=Z).central_stddev == 0.0
  for bad in (0, -1.0):  # the fixed denominator M is a count of expected clients
    with pytest.raises(ValueError, match="denominator must be > 0"):
      agg.FixedDenominatorMeanFactory(tff.aggregators.SumFactory(), bad)



@pytest.mark.parametrize("secure", [True, False])
def test_secure_sums_is_an_argument_not_the_installed_context(secure, monkeypatch):
  """What a builder is told about the runtime wins over the installed context (here
  the context's answer is forced to the opposite): 'secure_sum' and seeded 'ddp'
  build the secure (True) or the mergeable (False) form; None asks the context."""
  def built(spec):
    factory = agg.build_sum_factory(spec)
    if isinstance(factory, agg.seeded_ddp.SeededDdpSumFactory):
      return "secure" if factory.secure_sum else "plain"
    return ("secure" if isinstance(factory, tff.aggregators.SecureSumFactory)
            else "plain")

  want = "secure" if secure else "plain"
  for kind, extra in (("secure_sum", {}), ("ddp", {"seeded_ddp": True,
                                                  "noise_multiplier": 1.0})):
    spec = agg.AggregatorSpec(kind=kind, clip_norm=1.0, expected_clients=4,
                              secure_sums=secure, **extra)
    monkeypatch.setattr(context, "secure_sums_supported", lambda: not secure)
    assert built(spec) == want, kind
    asked = agg.AggregatorSpec(kind=kind, clip_norm=1.0, expected_clients=4, **extra)
    assert built(asked) == ("plain" if secure else "secure"), kind
    monkeypatch.undo()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
