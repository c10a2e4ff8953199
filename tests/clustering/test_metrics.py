"""Clustering accuracy with Hungarian matching."""
import math

import numpy as np
import pytest

from pina_tff.clustering.metrics import clustering_accuracy


def test_permuted_labels_are_perfect():
  true = np.array([0, 0, 1, 1, 2, 2, 3])
  pred = np.array([2, 2, 0, 0, 3, 3, 1])
  assert clustering_accuracy(pred, true) == 1.0


def test_partial_agreement_and_unknown_ignored():
  true = np.array([0, 0, 0, 1, 1, 1, -1, -1])
  pred = np.array([1, 1, 0, 0, 0, 0, 1, 1])
  # best matching: pred1->true0 (2), pred0->true1 (3): 5 of 6 known.
  assert clustering_accuracy(pred, true) == pytest.approx(5 / 6)


def test_more_predicted_than_true_clusters():
  true = np.array([0, 0, 1, 1])
  pred = np.array([0, 2, 1, 1])
  assert clustering_accuracy(pred, true) == pytest.approx(0.75)


def test_centroid_cosines_match_centroids_to_true_means():
  from pina_tff.clustering.metrics import centroid_cosines
  rng = np.random.default_rng(0)
  means = np.eye(3, 6) * 2.0
  true = np.repeat([0, 1, 2], 50)
  clean = means[true] + 0.01 * rng.normal(size=(150, 6))
  # centroids in another order, the third one rotated by 60 degrees off its mean
  c = np.stack([means[2], means[0], np.cos(np.pi / 3) * means[1] + np.sin(np.pi / 3)
                * 2.0 * np.eye(6)[5]])
  cos = centroid_cosines(c, clean, true)
  np.testing.assert_allclose(cos, [1.0, 0.5, 1.0], atol=1e-3)
  # unknown clients are ignored; a reversed centroid gives -1
  cos2 = centroid_cosines(-means[:1], clean[:50], np.r_[np.zeros(49, int), -1])
  np.testing.assert_allclose(cos2, [-1.0], atol=1e-3)
  assert centroid_cosines(c, clean, -np.ones(150, int)).size == 0


def test_all_unknown_is_nan():
  assert math.isnan(clustering_accuracy([0, 1], [-1, -1]))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
