"""computations.learning.lloyd: DP Lloyd's step as the program builds it.

* Type signature: the sketches stay @CLIENTS; the only result is the noisy per-slot
  sums float32[C, P1 + 1]@SERVER.
* Without noise (secure sum) the step's sums equal the NumPy mechanism's
  (`pina_tff.clustering.dp_lloyd.slot_contributions`, a per-client computation) over
  every real client of three shards, padding slots ignored, S1 != 1.
* Central DP: sums - clean sums is N(0, (z·√2·S1)²) per coordinate (chi-square bounds
  over several seeds); seeded distributed DP repeats exactly from the same keys and
  its noise is of the calibrated size.
"""
import collections

import numpy as np
import pytest
import scipy.stats

from computations.learning import aggregators as agg
from computations.learning import lloyd
from computations.runtime import context
from pina_tff.clustering import dp_lloyd

C, P1, S, CLIP = 3, 8, 4, 0.6
REAL = [4, 4, 2]  # real clients per shard (the last has 2 padding slots)


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _data(rng):
  shards, rows = [], []
  for i, n in enumerate(REAL):
    x = rng.standard_normal((S, P1)) * 0.4
    x *= np.minimum(1.0, CLIP / np.linalg.norm(x, axis=1))[:, None]
    mask = np.zeros(S, np.float32)
    mask[:n] = 1.0
    x[n:] = 5.0  # padding slots hold garbage the step must ignore
    rows.append(x[:n])
    shards.append(collections.OrderedDict(sketch=x.astype(np.float32), client_mask=mask,
                                          key=np.array([7, i], np.int64)))
  return shards, np.concatenate(rows).astype(np.float32).astype(np.float64)


def _spec(kind, z):
  return agg.AggregatorSpec(kind=kind, noise_multiplier=z,
                            clip_norm=dp_lloyd.sensitivity(CLIP), expected_clients=1,
                            shard_size=S, num_shards=len(REAL), ddp_bits=20,
                            seeded_ddp=True, secure_sums=True)


def _step(kind, z):
  return lloyd.build_lloyd_step(num_clusters=C, sketch_size=P1, shard_size=S, clip=CLIP,
                                aggregator=_spec(kind, z))


def test_type_signature_keeps_sketches_at_clients(tff_ctx):
  step, _ = _step("secure_sum", 0.0)
  sig = step.type_signature
  assert str(sig.parameter[2]).endswith("@CLIENTS")
  assert "float32[4,8]" in str(sig.parameter[2])
  assert str(sig.result) == f"float32[{C},{P1 + 1}]@SERVER"


def test_noise_free_step_equals_the_numpy_mechanism(tff_ctx):
  rng = np.random.default_rng(0)
  data, x = _data(rng)
  cents = rng.standard_normal((C, P1)).astype(np.float32) * 0.3
  step, state = _step("secure_sum", 0.0)
  got = np.asarray(step(state, cents, data))
  want = dp_lloyd.slot_contributions(x, cents.astype(np.float64), CLIP).sum(axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert got[:, -1].sum() == pytest.approx(sum(REAL) * CLIP, rel=1e-6)


def _noise(kind, z, data_seed, seeds):
  """(step, centroids, data, the step's results minus the clean sums over `seeds`)."""
  rng = np.random.default_rng(data_seed)
  data, x = _data(rng)
  cents = rng.standard_normal((C, P1)).astype(np.float32) * 0.3
  clean = dp_lloyd.slot_contributions(x, cents.astype(np.float64), CLIP).sum(axis=0)
  step, _ = _step(kind, z)
  noise = np.concatenate([(np.asarray(step(np.array([5, s], np.int64), cents, data))
                           - clean).ravel() for s in seeds])
  return step, cents, data, noise


def test_central_noise_has_the_stated_std(tff_ctx):
  z = 1.7
  _, _, _, noise = _noise("central", z, 1, range(12))
  sigma = z * dp_lloyd.sensitivity(CLIP)
  stat = float(np.sum(noise ** 2) / sigma ** 2)
  lo, hi = scipy.stats.chi2.ppf([1e-6, 1 - 1e-6], noise.size)
  assert lo < stat < hi


def test_seeded_ddp_repeats_and_has_calibrated_noise(tff_ctx):
  z = 2.0
  step, cents, data, noise = _noise("ddp", z, 2, range(8))
  seed = np.array([5, 1], np.int64)
  np.testing.assert_array_equal(np.asarray(step(seed, cents, data)),
                                np.asarray(step(seed, cents, data)))
  sigma = z * dp_lloyd.sensitivity(CLIP)
  # effective multiplier z after rounding: the empirical std is within 25 % of it
  assert 0.75 * sigma < float(np.std(noise)) < 1.25 * sigma
