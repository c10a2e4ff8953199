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


def kmeans_init(sketches: np.ndarray, num_clusters: int, seed: int, n_init: int = 10,
                post_process_k: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Clusters sketches [M1, P1] into ``num_clusters``.

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
  km = KMeans(n_clusters=num_clusters, init="k-means++", n_init=n_init,
              random_state=seed)
  labels = km.fit_predict(x)
  return km.cluster_centers_.astype(np.float32), labels.astype(np.int64)
