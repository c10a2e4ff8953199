"""pina_tff.clustering.dp_lloyd and public_basis, against references computed another way.

* Noise-free DP Lloyd from given centroids equals scikit-learn's Lloyd iterations from
  the same centroids (max_iter=L, tol=0).
* The per-step multiplier z·√L composes to the Gaussian(z) of one sketch: ε of L
  Gaussians(z√L) (dp_accounting, RDP and PLD) equals ε of one Gaussian(z).
* The contributions' per-slot sums equal a per-client loop; a noisy step is the clean
  sums plus N(0, (z_L·√2·S1)²) over the noisy counts, with S1 != 1.
* The public basis recovers a planted subspace; projections are clipped to S1.
"""
import math

import dp_accounting
import numpy as np
import pytest
from sklearn.cluster import KMeans

from pina_tff.clustering import dp_lloyd
from pina_tff.clustering import public_basis
from pina_tff.errors import ConfigError

CLIP = 0.7


def _blobs(rng, n=300, dim=12, c=3):
  centers = rng.standard_normal((c, dim)) * 2.0
  labels = rng.integers(0, c, n)
  x = centers[labels] + 0.3 * rng.standard_normal((n, dim))
  x *= np.minimum(1.0, CLIP / np.linalg.norm(x, axis=1))[:, None]
  return x, labels, centers


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_noise_free_steps_are_lloyd_iterations(steps):
  rng = np.random.default_rng(1)
  x, _, _ = _blobs(rng)
  init = x[rng.choice(len(x), 3, replace=False)] + 0.05
  got, counts = dp_lloyd.simulate(x, init, steps=steps, clip=CLIP, noise_multiplier=0.0,
                                  rng=rng)
  km = KMeans(n_clusters=3, init=init, n_init=1, max_iter=steps, tol=0.0,
              algorithm="lloyd").fit(x)
  np.testing.assert_allclose(np.sort(got, axis=0), np.sort(km.cluster_centers_, axis=0),
                             atol=1e-9)
  assert len(counts) == steps and abs(sum(counts[-1]) - len(x)) < 1e-9


def test_slot_sums_match_a_client_loop():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((50, 6)) * 0.2
  x *= np.minimum(1.0, CLIP / np.linalg.norm(x, axis=1))[:, None]
  cents = rng.standard_normal((4, 6)) * 0.2
  contrib = dp_lloyd.slot_contributions(x, cents, CLIP)
  want = np.zeros((4, 7))
  for row in x:
    c = int(np.argmin([np.sum((row - m) ** 2) for m in cents]))
    want[c, :6] += row
    want[c, 6] += CLIP * dp_lloyd.COUNT_WEIGHT
  np.testing.assert_allclose(contrib.sum(axis=0), want, atol=1e-12)
  # every contribution within the stated sensitivity
  norms = np.linalg.norm(contrib.reshape(len(x), -1), axis=1)
  assert np.all(norms <= dp_lloyd.sensitivity(CLIP) + 1e-12)
  assert dp_lloyd.sensitivity(CLIP) == pytest.approx(CLIP * math.sqrt(2))


def test_empty_slot_keeps_its_previous_centroid():
  prev = np.arange(6.0).reshape(2, 3)
  sums = np.array([[1.0, 2.0, 3.0, 2 * CLIP], [5.0, 5.0, 5.0, 0.2 * CLIP]])
  cents, counts = dp_lloyd.centroids_from_sums(sums, prev, CLIP)
  np.testing.assert_allclose(counts, [2.0, 0.2])
  np.testing.assert_allclose(cents[0], [0.5, 1.0, 1.5])
  np.testing.assert_allclose(cents[1], prev[1])


def test_a_slot_with_a_count_inside_the_noise_keeps_its_centroid():
  """min_count = max(1, 3·z_L·√2): a slot whose noisy count is below it keeps its
  previous centroid instead of a noisy sum divided by a count near zero."""
  assert dp_lloyd.min_count(0.0) == 1.0
  assert dp_lloyd.min_count(2.0) == pytest.approx(3 * 2.0 * math.sqrt(2))
  prev = np.zeros((2, 3))
  sums = np.array([[10.0, 0.0, 0.0, 100 * CLIP], [5.0, 5.0, 5.0, 8.0 * CLIP]])
  cents, _ = dp_lloyd.centroids_from_sums(sums, prev, CLIP, dp_lloyd.min_count(2.0))
  np.testing.assert_allclose(cents, [[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
  cents, _ = dp_lloyd.centroids_from_sums(sums, prev, CLIP, 1.0)
  np.testing.assert_allclose(cents[1], [5 / 8] * 3)
  # simulate applies the floor of its own noise multiplier: a lone client's slot stays
  rng = np.random.default_rng(5)
  x = np.vstack([np.full((60, 2), 0.3), [[-0.3, -0.3]]])
  init = np.array([[0.3, 0.3], [-0.3, -0.3]])
  got, counts = dp_lloyd.simulate(x, init, steps=1, clip=CLIP, noise_multiplier=0.5,
                                  rng=rng)
  assert counts[0][1] < dp_lloyd.min_count(0.5) < counts[0][0]  # this seed's draw
  np.testing.assert_array_equal(got[1], init[1])
  assert not np.array_equal(got[0], init[0])


def test_step_noise_has_the_stated_std():
  """One simulated step is (clean sums + N(0, (z_L·√2·S1)²)) / noisy counts, with the
  generator's draws in order: rebuilt here from the mechanism's definition."""
  rng = np.random.default_rng(3)
  x, _, _ = _blobs(rng, n=40)
  init = x[:3]
  z, steps = 1.3, 4
  zl = dp_lloyd.step_noise_multiplier(z, steps)
  assert zl == pytest.approx(z * 2.0)
  sigma = z * 2.0 * CLIP * math.sqrt(2.0)
  clean = np.zeros((3, x.shape[1] + 1))
  for row in x:
    c = int(np.argmin(np.sum((init - row) ** 2, axis=1)))
    clean[c, :-1] += row
    clean[c, -1] += CLIP
  noisy = clean + np.random.default_rng(0).normal(0.0, sigma, clean.shape)
  count = noisy[:, -1:] / CLIP
  want = np.where(count < 3 * zl * math.sqrt(2), init, noisy[:, :-1] / count)
  got, counts = dp_lloyd.simulate(x, init, steps=1, clip=CLIP, noise_multiplier=zl,
                                  rng=np.random.default_rng(0))
  np.testing.assert_allclose(counts[0], noisy[:, -1] / CLIP, atol=1e-12)
  np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("steps", [2, 5])
def test_l_steps_cost_one_sketch(steps):
  z, delta = 2.0, 1e-5
  zl = dp_lloyd.step_noise_multiplier(z, steps)
  for make in (lambda: dp_accounting.rdp.RdpAccountant(),
               lambda: dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)):
    one = make().compose(dp_accounting.GaussianDpEvent(z)).get_epsilon(delta)
    many = make().compose(dp_accounting.GaussianDpEvent(zl), steps).get_epsilon(delta)
    assert many == pytest.approx(one, rel=2e-3)


def test_bad_arguments():
  with pytest.raises(ConfigError, match="lloyd_steps"):
    dp_lloyd.step_noise_multiplier(1.0, 0)
  with pytest.raises(ConfigError, match="public_basis_dims"):
    public_basis.pca_basis(np.ones((3, 4)), 0)


def test_public_basis_recovers_a_planted_subspace():
  rng = np.random.default_rng(4)
  q, _ = np.linalg.qr(rng.standard_normal((20, 3)))
  span = q.T  # [3, 20]
  x = rng.standard_normal((500, 3)) * [3.0, 2.0, 1.5] @ span + 0.01 * rng.standard_normal(
      (500, 20))
  v = public_basis.pca_basis(x, 3)
  np.testing.assert_allclose(v @ v.T, np.eye(3), atol=1e-10)
  # the planted span is inside the basis' span: projection keeps it
  proj = span @ v.T @ v
  np.testing.assert_allclose(proj, span, atol=0.02)
  y = public_basis.project(x, v, CLIP)
  assert y.shape == (500, 3)
  assert np.all(np.linalg.norm(y, axis=1) <= CLIP + 1e-12)
  small = 0.01 * span[:2]
  np.testing.assert_allclose(public_basis.lift(public_basis.project(small, v, CLIP), v),
                             small, atol=1e-4)
