"""k-means initialization recovers planted clusters through the real sketch mechanism."""
import numpy as np
import pytest
import tensorflow as tf

from pina_tff.clustering.kmeans_init import kmeans_init
from pina_tff.clustering.metrics import clustering_accuracy
from pina_tff.errors import ConfigError
from pina_tff.privacy import sketch

NOISE_Z = 0.15  # sketch noise multiplier: stddev z*S1 = 0.15 per coordinate, S1 = 1


def _planted_sketches(z, seed=0, c=4, p=128, m=200, k=16, clip=1.0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, p))
  true = rng.integers(0, c, size=m)
  deltas = centers[true] + 0.3 * rng.normal(size=(m, p))
  noisy = sketch.make_sketch(tf.constant(deltas, tf.float32), k, clip, z,
                             tf.constant([seed, 1])).numpy()
  return noisy, true, k


@pytest.mark.parametrize("post_process", [False, True])
def test_kmeans_recovers_4_planted_clusters_at_noise_z_0_15(post_process):
  """C=4 centers, P=128, 200 sketches, top-16 + clip S1=1 + Gaussian noise z=0.15."""
  noisy, true, k = _planted_sketches(NOISE_Z)
  cents, labels = kmeans_init(noisy, 4, seed=0, n_init=10,
                              post_process_k=k if post_process else None)
  assert cents.shape == (4, 128) and cents.dtype == np.float32
  assert labels.shape == (200,)
  assert clustering_accuracy(labels, true) >= 0.95


def test_spectral_step_finds_clusters_the_full_space_misses_and_centroids_are_means():
  """Two clusters differing in 4 of 400 coordinates under heavy isotropic noise: PCA to
  a few dimensions keeps the difference and drops most of the noise (measured: 0.76
  against 0.58 in the full space)."""
  rng = np.random.default_rng(1)
  m, p = 600, 400
  true = rng.integers(0, 2, m)
  x = rng.normal(size=(m, p))
  x[:, :4] += np.where(true[:, None] == 1, 0.6, -0.6)
  _, full = kmeans_init(x, 2, seed=0, n_init=5)
  cents, spec = kmeans_init(x, 2, seed=0, n_init=5, spectral_dims=2)
  assert clustering_accuracy(spec, true) > 0.7
  assert clustering_accuracy(spec, true) > clustering_accuracy(full, true) + 0.1
  for c in range(2):   # centroids live in the full space: the members' means
    np.testing.assert_allclose(cents[c], x[spec == c].mean(axis=0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="spectral_dims"):
    kmeans_init(x, 2, seed=0, spectral_dims=-1)


def test_bound_centroid_norms_scales_only_the_long_ones():
  from pina_tff.clustering.kmeans_init import bound_centroid_norms
  c = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
  out = bound_centroid_norms(c, 1.0)
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-6)
  with pytest.raises(ConfigError, match="> 0"):
    bound_centroid_norms(c, 0.0)


def test_kmeans_is_deterministic_per_seed():
  noisy, _, _ = _planted_sketches(NOISE_Z, seed=3)
  a = kmeans_init(noisy, 4, seed=5)
  b = kmeans_init(noisy, 4, seed=5)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_kmeans_input_errors():
  with pytest.raises(ConfigError):
    kmeans_init(np.zeros((3, 8)), 4, seed=0)
  with pytest.raises(ConfigError):
    kmeans_init(np.zeros(8), 1, seed=0)
  with pytest.raises(ConfigError):
    kmeans_init(np.zeros((5, 8)), 0, seed=0)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
