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
