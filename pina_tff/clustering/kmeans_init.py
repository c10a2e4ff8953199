"""Stage-1 server side: k-means of the noisy sketches into C cluster initializations.

scikit-learn ``KMeans`` with k-means++ seeding and ``n_init`` restarts (spec stage 1,
step 6). Optional post-processing first: keep the 2k largest magnitudes of each noisy
sketch (``post_process_k=k``), which is free under DP.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from sklearn.cluster import KMeans

from pina_tff.errors import ConfigError
from pina_tff.privacy.sketch import keep_top_2k_magnitudes
from pina_tff.privacy.sketch import scale_rows_to_norm


def kmeans_init(sketches: np.ndarray, num_clusters: int, seed: int, n_init: int = 10,
                post_process_k: Optional[int] = None, spectral_dims: int = 0
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Clusters sketches [M1, P1] into ``num_clusters``.

  spectral_dims: [project choice, spec stage 1 step 9] with r > 0, k-means runs on the
  sketches' projections onto their top r principal directions (PCA of the noisy,
  post-processed sketches: the noise spreads over every direction, the clusters'
  differences concentrate in a few), and centroid c is the mean of cluster c's
  sketches in the full space. Server post-processing: no privacy cost.

  Returns:
    (centroids [C, P1] float32, labels [M1] int64). Centroid c becomes cluster
    model c's LoRA parameters.
  """
  x = np.asarray(sketches, dtype=np.float64)
  if x.ndim != 2:
    raise ConfigError(f"sketches must have shape [M1, P1], found shape {x.shape}.")
  if num_clusters < 1:
    raise ConfigError(f"num_clusters must be >= 1, found {num_clusters}.")
  if x.shape[0] < num_clusters:
    raise ConfigError(
        f"need at least num_clusters={num_clusters} sketches for k-means, "
        f"found {x.shape[0]} (raise num_sketch_clients).")
  if n_init < 1:
    raise ConfigError(f"kmeans restarts (n_init) must be >= 1, found {n_init}.")
  if not np.all(np.isfinite(x)):
    raise ConfigError("sketches contain NaN or inf values.")
  if post_process_k is not None:
    x = keep_top_2k_magnitudes(x, post_process_k)
  if spectral_dims < 0:
    raise ConfigError(f"stage1.spectral_dims must be >= 0, found {spectral_dims}.")
  km = KMeans(n_clusters=num_clusters, init="k-means++", n_init=n_init,
              random_state=seed)
  if not spectral_dims:
    labels = km.fit_predict(x)
    return km.cluster_centers_.astype(np.float32), labels.astype(np.int64)
  labels = km.fit_predict(spectral_projection(x, spectral_dims))
  centroids = np.stack([x[labels == c].mean(axis=0) if np.any(labels == c)
                        else np.zeros(x.shape[1]) for c in range(num_clusters)])
  return centroids.astype(np.float32), labels.astype(np.int64)


def spectral_projection(x: np.ndarray, dims: int) -> np.ndarray:
  """Coordinates of the centered rows of x [M, P] on their top `dims` principal
  directions (SVD), [M, min(dims, M, P)]."""
  centered = x - x.mean(axis=0, keepdims=True)
  _, _, vt = np.linalg.svd(centered, full_matrices=False)
  return centered @ vt[:min(dims, vt.shape[0])].T


def bound_centroid_norms(centroids: np.ndarray, bound: float) -> np.ndarray:
  """Each centroid scaled to L2 norm <= `bound` (directions kept; zero rows stay zero).

  [project choice, off by default] Under local DP the k-means centroids of the noisy
  sketches carry mostly noise: their norms grow with z1 (measured on rotated FMNIST,
  2,000 sketches: ≈ 3 at ε = 8, ≈ 10 at ε = 2, against ≤ 0.75 without noise), so used
  as LoRA offsets they start the C models far apart in random directions. Bounding
  them by the sketch clip S1 keeps the start on the scale of a clipped sketch (the
  random init of PINA+RI has norm ≈ S1). Server post-processing: no privacy cost.
  """
  if not bound > 0:
    raise ConfigError(f"centroid norm bound must be > 0, found {bound}.")
  return scale_rows_to_norm(centroids, bound).astype(np.float32)
