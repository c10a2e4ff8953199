"""Several TFF worker services by address: the DP aggregators and the program give the
same results split over two services as on one, and nothing is left running.

One pair of services on loopback ports is started for the whole module (start-up costs
a few seconds) and always stopped (`workers.local_workers`), also when a test fails.
"""
import collections
import math
import threading

import grpc
import numpy as np
import psutil
import pytest
import tensorflow_federated as tff

from computations.learning import aggregators as agg
from computations.runtime import context
from computations.learning import mergeable_ddp
from computations.program import program
from computations.learning import seeded_ddp
from computations.runtime import executor_contexts
from computations.runtime import workers
from pina_tff import config as config_lib
from pina_tff import rng_streams
from pina_tff.errors import ConfigError
from pina_tff.privacy import ddp as ddp_lib

CLIP, SHARDS, SHARD_SIZE = 0.7, 6, 2
VALUE_TYPE = tff.to_type(collections.OrderedDict(
    a=tff.TensorType(np.float32, [7, 3]), b=tff.TensorType(np.float32, [11])))


def _worker_children():
  return [p.pid for p in psutil.Process().children(recursive=True)
          if p.name() == workers.WORKER_NAME]


@pytest.fixture(scope="module")
def addresses():
  before = set(_worker_children())
  with workers.local_workers(2) as addrs:
    yield addrs
  assert set(_worker_children()) <= before, "a worker_binary was left running"


def _values(seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(SHARDS):  # shard sums of norm up to SHARD_SIZE * CLIP
    a = rng.normal(size=(7, 3)).astype(np.float32)
    b = rng.normal(size=11).astype(np.float32)
    norm = math.sqrt(float((a ** 2).sum() + (b ** 2).sum()))
    f = rng.uniform(0.2, 1.0) * SHARD_SIZE * CLIP / norm
    out.append(collections.OrderedDict(a=a * f, b=b * f))
  return out


def _flat(v):
  return np.concatenate([np.ravel(v["a"]), np.ravel(v["b"])]).astype(np.float64)


def _ddp_sum(values, z, **ctx_kwargs):
  """(kind of sum factory used, the sum) through the 'ddp' sum factory."""
  spec = agg.AggregatorSpec(kind="ddp", noise_multiplier=z, clip_norm=CLIP,
                            expected_clients=SHARDS * SHARD_SIZE, shard_size=SHARD_SIZE,
                            num_shards=SHARDS, ddp_bits=20)
  with context.tff_context(**ctx_kwargs):
    factory = agg.build_sum_factory(spec)
    proc = factory.create(VALUE_TYPE)
    out = proc.next(proc.initialize(), values)
  return type(factory).__name__, _flat(out.result), factory.ddp_parameters


def test_parse_addresses():
  assert workers.parse_addresses("a:1, 10.0.0.2:8000") == ["a:1", "10.0.0.2:8000"]
  for bad in ("a", "a:", ":80", "a:70000", "a:1,a:1", "a:x"):
    with pytest.raises(ConfigError):
      workers.parse_addresses(bad)
  assert workers.is_loopback("127.0.0.1:5") and not workers.is_loopback("10.1.2.3:5")


def test_given_addresses_start_nothing_and_split_clients(addresses):
  @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
  def total(x):
    return tff.federated_sum(x)

  before = set(_worker_children())
  with context.tff_context(worker_addresses=addresses) as ctx:
    assert ctx.worker_pids == [] and ctx.num_workers == 2
    assert not context.secure_sums_supported()
    assert total(list(range(1, 11))) == 55
  assert set(_worker_children()) == before
  assert context.secure_sums_supported()


def test_context_closed_at_once_leaves_no_grpc_polling_thread(addresses):
  """A run that stops right after building its context (a bad flag) closes the
  channels at once: no connectivity-polling thread may be running then, since closing
  the channel under it prints a traceback ("Cannot monitor channel state")."""
  def polling_threads():
    # gRPC's poller runs as a thread whose arguments start with the channel's
    # `_ChannelConnectivityState` (grpc/_channel.py, `_subscribe`).
    return [t for t in threading.enumerate()
            if any("ChannelConnectivityState" in type(a).__name__
                   for a in getattr(t, "_args", ()))]

  assert not polling_threads()
  for n in (1, 2):
    _, close = executor_contexts.execution_context(addresses[:n])
    try:
      assert not polling_threads()
    finally:
      close()


def test_unsubscribed_stub_is_ready_asks_the_port(addresses):
  stub_cls = executor_contexts.unsubscribed_stub_class()
  with grpc.insecure_channel(addresses[0]) as channel:
    assert stub_cls(channel, addresses[0]).is_ready
  with grpc.insecure_channel("127.0.0.1:1") as channel:
    assert not stub_cls(channel, "127.0.0.1:1").is_ready


def test_clients_results_keep_the_clients_order(addresses):
  """CLIENTS-placed results come back in the clients' order even when the first
  subround finishes last (TFF 0.87's mergeable context returns them in completion
  order: stage 1's sketches were shuffled against their clients)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tff.tensorflow.computation(np.int64)
  def slow_identity(n):  # n loop iterations, then n
    return tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0, tf.int64)])[0]

  @tff.federated_computation(tff.FederatedType(np.int64, tff.CLIENTS))
  def echo(x):
    return tff.federated_map(slow_identity, x)

  values = [200_000, 200_001, 1, 2]  # first subround (first half) is slow
  with context.tff_context(worker_addresses=addresses):
    assert list(echo(values)) == values


def test_ddp_without_noise_one_worker_equals_two_equals_secure_sum_path(addresses):
  """Noise off: TFF's DDP (secure sums, one service), the mergeable form on one service
  (native runtime) and on two agree with the exact sum up to rounding.

  Tolerance: stochastic rounding moves each of the d rotated coordinates of one TFF
  client's value by less than gamma = 1/s, so by less than gamma*sqrt(d) in L2 (the
  rotation preserves norms); a sum over n clients by less than n*gamma*sqrt(d). Each
  result is within that bound of the exact sum (plus float32 error, 1e-5 relative).
  """
  values = _values()
  exact = sum(_flat(v) for v in values)
  kinds, sums = [], []
  for kwargs in (dict(), dict(worker_addresses=addresses[:1], runtime="worker"),
                 dict(worker_addresses=addresses)):
    kind, total, params = _ddp_sum(values, 0.0, **kwargs)
    kinds.append(kind)
    sums.append(total)
  assert kinds == ["EffectiveDdpSumFactory", "MergeableDdpSumFactory",
                   "MergeableDdpSumFactory"]
  bound = SHARDS * params["gamma"] * math.sqrt(params["padded_dim"])
  bound += 1e-5 * np.linalg.norm(exact)
  assert bound < 1e-3 * np.linalg.norm(exact)  # the comparison is meaningful
  for total in sums:
    assert np.linalg.norm(total - exact) <= bound
  assert np.linalg.norm(sums[1] - sums[2]) <= 2 * bound


def test_ddp_noise_variance_matches_the_calibration(addresses):
  """Noise on, zero inputs: the merged sum over two services is pure noise whose
  per-coordinate variance is n * ceil(sigma_local*s)^2 / s^2 (ddp.calibrate; tends to
  (z_nominal*clip)^2). The sample variance over d coordinates has relative std
  sqrt(2/d); 5 of them is the tolerance. TFF's secure-sum path gives the same."""
  zero = collections.OrderedDict(a=np.zeros((7, 3), np.float32),
                                 b=np.zeros(11, np.float32))
  z = 1.5
  big_type = tff.to_type(collections.OrderedDict(a=tff.TensorType(np.float32, [7, 3]),
                                                 b=tff.TensorType(np.float32, [4000])))
  zeros = [collections.OrderedDict(a=zero["a"], b=np.zeros(4000, np.float32))] * SHARDS
  spec = agg.AggregatorSpec(kind="ddp", noise_multiplier=z, clip_norm=CLIP,
                            expected_clients=SHARDS * SHARD_SIZE,
                            shard_size=SHARD_SIZE, num_shards=SHARDS, ddp_bits=20)
  variances = {}
  for name, kwargs in (("mergeable", dict(worker_addresses=addresses)),
                       ("secure", dict())):
    with context.tff_context(**kwargs):
      factory = agg.build_sum_factory(spec)
      proc = factory.create(big_type)
      out = proc.next(proc.initialize(), zeros).result
    noise = np.concatenate([np.ravel(out["a"]), out["b"]]).astype(np.float64)
    variances[name] = float(np.mean(noise ** 2))
    params = factory.ddp_parameters
  expected = SHARDS * params["noise_scale_int"] ** 2 / params["scale"] ** 2
  assert params["noise_scale_int"] >= 1 and params["z_nominal"] > z
  tol = 5 * math.sqrt(2 / params["padded_dim"])
  for name, var in variances.items():
    assert abs(var / expected - 1) < tol, (name, var, expected)


def test_seeded_ddp_over_two_services_equals_the_secure_sum_on_one(addresses):
  """The program's seeded DDP: over two services (mergeable context: plain int64 sum,
  merged, mod m at the server) it is the same function of the keys and the rotation
  seed as on one service (federated_secure_modular_sum), bit for bit, noise on."""
  spec = agg.AggregatorSpec(kind="ddp", noise_multiplier=1.5, clip_norm=CLIP,
                            expected_clients=SHARDS * SHARD_SIZE, shard_size=SHARD_SIZE,
                            num_shards=SHARDS, ddp_bits=20, seeded_ddp=True)
  keys = list(rng_streams.client_keys(5, 2, 1, range(SHARDS)))
  seed = agg.derived_seed(5, 2, 1, rng_streams.DDP_ROTATION)
  results, secure = [], []
  for kwargs in (dict(), dict(worker_addresses=addresses)):
    with context.tff_context(**kwargs):
      factory = agg.build_sum_factory(spec)
      proc = factory.create(VALUE_TYPE, seeded_ddp.KEY_TYPE)
      results.append(_flat(proc.next(seed, _values(), keys).result))
      secure.append(factory.secure_sum)
  assert secure == [True, False]
  np.testing.assert_array_equal(results[0], results[1])
  assert np.std(results[0] - sum(_flat(v) for v in _values())) > 0.5  # noise is on


def test_fwht_is_orthonormal_and_its_own_inverse():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(1).normal(size=16).astype(np.float32)
  h = np.array([[1.0]])
  for _ in range(4):
    h = np.block([[h, h], [h, -h]])
  y = mergeable_ddp.fwht(tf.constant(x)).numpy()
  np.testing.assert_allclose(y, h @ x / 4.0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mergeable_ddp.fwht(tf.constant(y)).numpy(), x, atol=1e-5)


def test_rotation_signs_are_random_plus_minus_one():
  """The random signs before the Hadamard transform: each ±1 with probability 1/2,
  independent across coordinates and seeds (a constant sign vector would make the
  rotation, hence the rounding error's spread, data-dependent)."""
  d = 4096
  a = mergeable_ddp.rotation_signs(np.array([5, 6], np.int64), d).numpy()  # pylint: disable=protected-access
  b = mergeable_ddp.rotation_signs(np.array([5, 7], np.int64), d).numpy()  # pylint: disable=protected-access
  assert set(np.unique(a)) == {-1.0, 1.0}
  assert abs(a.mean()) < 5 / np.sqrt(d) and abs((a * b).mean()) < 5 / np.sqrt(d)


def test_ddp_codec_uses_the_whole_centered_modular_range():
  """The decoder maps the modular sum back to [-m/2, m/2): a value whose scaled
  coordinate is 0.9·(m/2) in either sign comes back (one coordinate, so the rotation
  is only a random sign; no noise; scale s = 0.45·m)."""
  modulus = 2 ** 20
  params = dict(padded_dim=1, scale=0.45 * modulus, noise_scale_int=0)
  encode, decode = mergeable_ddp.codec(  # pylint: disable=protected-access
      tff.TensorType(np.float32, [1]), 1, params, clip=10.0, modulus=modulus)
  with context.tff_context():
    for seed in (np.array([1, 2], np.int64), np.array([3, 4], np.int64)):
      for v in (0.9, -0.9, 0.3):
        total = encode(np.array([v], np.float32), seed)
        assert 0 <= int(total[0]) < modulus
        np.testing.assert_allclose(decode(total, seed), [v], atol=1e-5)
      # a sum of two clients wraps around m and still decodes to its sum
      a, b = (encode(np.array([x], np.float32), seed) for x in (0.7, -0.9))
      np.testing.assert_allclose(decode((a + b) % modulus, seed), [-0.2], atol=1e-5)


def _program_cfg():
  return config_lib.RunConfig(
      method="pina", num_clusters=2, population=24, seed=0, model_width=64,
      privacy=config_lib.PrivacyConfig(epsilon=math.inf),
      stage0=config_lib.Stage0Config(enabled=False, rounds=1, cohort=8, lr=0.1, clip=0.7),
      stage1=config_lib.Stage1Config(num_sketch_clients=12, local_epochs=1, lr=0.5,
                                     top_k=8, clip=0.6, kmeans_restarts=2),
      stage2=config_lib.Stage2Config(
          rounds=2, cohort=10, batch_size=16, client_lr=0.3, clip=0.4, server_lr=0.8,
          server_momentum=0.5, warm_rounds=1, scaling="pina", aggregator="ddp"))


def test_program_on_two_workers_equals_one(digits_clients_dir, addresses, tmp_path):
  """A short digits run (eps = inf, --aggregator=ddp: the noiseless secure sum) split
  over two services gives the metrics of the one-service simulation runtime (TFF's
  secure sum of floats vs clipped float sums: equal up to float32 summation order)."""
  opts = program.ProgramOptions(shard_size=3, checkpoint_every=10, progress="none")
  rows = {}
  for name, kwargs in (("one", dict()), ("two", dict(worker_addresses=addresses))):
    with context.tff_context(**kwargs):
      summary = program.run_simulation(_program_cfg(), digits_clients_dir,
                                       str(tmp_path / name), opts, log=lambda m: None)
    rows[name] = (tmp_path / name / "metrics.csv").read_text().splitlines()
    rows[name + "_summary"] = summary
  one, two = rows["one"], rows["two"]
  header = one[0].split(",")
  assert one[0] == two[0] and len(one) == len(two) > 2
  compared = 0
  for line_a, line_b in zip(one[1:], two[1:]):
    for key, a, b in zip(header, line_a.split(","), line_b.split(",")):
      if key.endswith("wall_s") or key in ("elapsed",):
        continue
      try:
        fa, fb = float(a), float(b)
      except ValueError:
        assert a == b, key
        continue
      assert np.isclose(fa, fb, rtol=1e-4, atol=1e-5, equal_nan=True), (key, a, b)
      compared += not math.isnan(fa)
  assert compared > 10
  assert (rows["one_summary"]["final_accuracy"]
          == rows["two_summary"]["final_accuracy"])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
