"""A public low-dimensional basis for stage-1 sketches (spec stage 1, step 9).

[project choice, issue 18] The server computes r orthonormal directions of the LoRA
change from public data only (sketches of pseudo-clients made from the upright public
split, which no client holds), so the basis and any positions in it are public. A
client sends y = clip(V·Δ, S1) + N(0, (z1·S1)² I_r): r noisy numbers instead of 2d, so
the noise's total norm shrinks by √(r / 2d) while each client keeps the same
(ε1, δ1)-local DP (a vector of norm ≤ S1 plus the same Gaussian per coordinate). The
server runs k-means on the y's and maps each centroid back as Vᵀc. What it loses: the
part of the clusters' signal outside the public span.
"""

from __future__ import annotations

import numpy as np

from pina_tff.errors import ConfigError
from pina_tff.privacy.sketch import scale_rows_to_norm


def pca_basis(public_sketches: np.ndarray, dims: int, center: bool = True) -> np.ndarray:
  """The top ``dims`` principal directions of public sketches [N, P1]: float64
  [r, P1] with orthonormal rows, r = min(dims, N, P1). ``center``: PCA of the
  centered rows (else the top singular directions of the raw rows, which include the
  mean direction)."""
  x = np.asarray(public_sketches, np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ConfigError(f"public sketches must have shape [N >= 1, P1], found {x.shape}.")
  if dims < 1:
    raise ConfigError(f"stage1.public_basis_dims must be >= 1, found {dims}.")
  if center:
    x = x - x.mean(axis=0, keepdims=True)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return vt[:min(dims, vt.shape[0])]


def project(deltas: np.ndarray, basis: np.ndarray, clip: float) -> np.ndarray:
  """Client side: y = clip(V·Δ, S1) for each row of ``deltas`` [M, P1]: [M, r]."""
  y = np.asarray(deltas, np.float64) @ np.asarray(basis, np.float64).T
  return scale_rows_to_norm(y, clip)


def lift(coords: np.ndarray, basis: np.ndarray) -> np.ndarray:
  """Server side: coordinates [C, r] in the basis back to LoRA offsets [C, P1]."""
  return np.asarray(coords, np.float64) @ np.asarray(basis, np.float64)
