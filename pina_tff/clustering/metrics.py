"""Clustering accuracy: best one-to-one matching of predicted to true clusters."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def clustering_accuracy(pred, true) -> float:
  """Fraction of clients whose predicted cluster maps to their true cluster.

  The mapping is the Hungarian matching (``scipy.optimize.linear_sum_assignment``)
  maximizing agreement; entries with ``true == -1`` (unknown) are ignored. Returns NaN
  if no entry has a known true cluster.
  """
  pred = np.asarray(pred).astype(np.int64).ravel()
  true = np.asarray(true).astype(np.int64).ravel()
  if pred.shape != true.shape:
    raise ValueError(f"pred and true must have the same length, found "
                     f"{pred.shape[0]} and {true.shape[0]}.")
  keep = true != -1
  pred, true = pred[keep], true[keep]
  if pred.size == 0:
    return float("nan")
  p_vals, p_idx = np.unique(pred, return_inverse=True)
  t_vals, t_idx = np.unique(true, return_inverse=True)
  counts = np.zeros((p_vals.size, t_vals.size), dtype=np.int64)
  np.add.at(counts, (p_idx, t_idx), 1)
  rows, cols = linear_sum_assignment(-counts)
  return float(counts[rows, cols].sum()) / float(pred.size)


def centroid_cosines(centroids, reference_sketches, true) -> np.ndarray:
  """Cosine between each true cluster's mean reference sketch and its matched centroid.

  How well stage 1 points stage 2 the right way (spec stage 1, step 8): the reference
  sketches are the noise-free sketches of the same clients (a simulation-only
  diagnostic); their mean per true cluster k is m_k; centroids are matched to true
  clusters by the Hungarian assignment that maximizes the summed cosine.

  Args:
    centroids: [C, P1] stage-1 centroids.
    reference_sketches: [M1, P1] noise-free sketches of the sketching clients.
    true: [M1] true clusters (-1 unknown: ignored).

  Returns:
    float64 [K]: the matched cosine of each known true cluster, in cluster order
    (NaN where a cluster's mean is zero); empty if no cluster is known.
  """
  c = np.asarray(centroids, np.float64)
  x = np.asarray(reference_sketches, np.float64)
  true = np.asarray(true).astype(np.int64).ravel()
  clusters = np.unique(true[true >= 0])
  if clusters.size == 0:
    return np.zeros(0)
  means = np.stack([x[true == k].mean(axis=0) for k in clusters])

  def unit(a):
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.divide(a, n, out=np.full_like(a, np.nan), where=n > 0)

  cos = unit(means) @ unit(c).T                       # [K, C]
  rows, cols = linear_sum_assignment(-np.nan_to_num(cos, nan=-2.0))
  out = np.full(clusters.size, np.nan)
  out[rows] = cos[rows, cols]
  return out
