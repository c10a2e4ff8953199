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


def test_all_unknown_is_nan():
  assert math.isnan(clustering_accuracy([0, 1], [-1, -1]))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
