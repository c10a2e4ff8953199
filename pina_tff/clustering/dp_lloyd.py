"""DP Lloyd steps over a secure sum: stage-1 centroids from aggregate noise.

[project choice, a labelled extension beyond the paper, issue 18] In the manner of DP
federated k-means with server-side data (ICML 2025, arXiv 2506.05408): the server
starts from C centroids computed on public data (or random), and for L steps every
sketching client assigns its own clipped sketch x (‖x‖ ≤ S1) to the nearest centroid
and contributes, through a secure sum with Gaussian noise, the C-slot vector that holds
(x, γ) in its slot and zeros elsewhere (γ = S1: the count, scaled so that the
contribution's L2 norm is at most √2·S1). The server sees only the noisy per-slot sums
and counts and sets each centroid to sum / count.

Privacy (against the server, zero-out neighbours, the accounting of stage 1 in
`pina_tff.privacy.accounting`): one step is a Gaussian mechanism of sensitivity √2·S1
and noise std z_L·√2·S1 per coordinate; L steps compose to one Gaussian with multiplier
z_L/√L (Gaussian-DP composition, exact). With z_L = z1·√L the L steps cost exactly what
one locally-DP sketch of multiplier z1 costs against the server, so the run's ε is
unchanged. What changes is the threat model: the sketches are no longer locally DP;
the guarantee rests on the secure sum (the server sees only the noisy sums) and the
noise is added once to each sum instead of once per client.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from pina_tff.errors import ConfigError

COUNT_WEIGHT = 1.0  # γ / S1: the count coordinate of a contribution, in units of S1.
#: [project choice] A slot whose noisy count is below this many standard deviations of
#: the count's noise keeps its previous centroid: its noisy sum divided by a count near
#: zero would be mostly noise, blown up (measured on rotated FMNIST with 2,000 sketches
#: at ε = 2: counts of 18-61 against a noise std of 16 gave centroids of norm ~10).
MIN_COUNT_SIGMAS = 3.0


def step_noise_multiplier(sketch_multiplier: float, steps: int) -> float:
  """z_L = z1·√L: the per-step multiplier (noise std z_L·√2·S1 per coordinate of each
  slot sum) whose L-fold composition is the Gaussian of multiplier z1."""
  if steps < 1:
    raise ConfigError(f"stage1.lloyd_steps must be >= 1, found {steps}.")
  if not sketch_multiplier >= 0:
    raise ConfigError(f"noise multiplier must be >= 0, found {sketch_multiplier}.")
  return float(sketch_multiplier) * math.sqrt(steps)


def sensitivity(clip: float) -> float:
  """L2 bound of one client's contribution (x, γ) with ‖x‖ ≤ S1 and γ = S1."""
  return clip * math.sqrt(1.0 + COUNT_WEIGHT ** 2)


def min_count(noise_multiplier: float) -> float:
  """The smallest noisy count whose slot is updated: max(1, `MIN_COUNT_SIGMAS` · the
  count's noise std z_L·√2) (counts are in clients; post-processing, free)."""
  std = noise_multiplier * sensitivity(1.0) / COUNT_WEIGHT
  return max(1.0, MIN_COUNT_SIGMAS * std)


def nearest(sketches: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Index of the nearest centroid (Euclidean) of each sketch: int64 [M]."""
  x = np.asarray(sketches, np.float64)
  c = np.asarray(centroids, np.float64)
  d2 = (np.sum(x * x, 1)[:, None] - 2.0 * x @ c.T + np.sum(c * c, 1)[None, :])
  return np.argmin(d2, axis=1).astype(np.int64)


def slot_contributions(sketches: np.ndarray, centroids: np.ndarray,
                       clip: float) -> np.ndarray:
  """Each client's C-slot contribution [M, C, P1 + 1]: (x, γ) in its nearest slot.

  What a client computes locally; only their (noisy) sum reaches the server."""
  x = np.asarray(sketches, np.float64)
  c = np.asarray(centroids, np.float64)
  out = np.zeros((x.shape[0], c.shape[0], x.shape[1] + 1))
  rows = np.arange(x.shape[0])
  slot = nearest(x, c)
  out[rows, slot, :-1] = x
  out[rows, slot, -1] = COUNT_WEIGHT * clip
  return out


def centroids_from_sums(noisy_sums: np.ndarray, previous: np.ndarray, clip: float,
                        min_count: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
  """Server step: centroid c = noisy sum / noisy count [C, P1]; a slot whose noisy
  count is below ``min_count`` keeps its previous centroid. Post-processing of the
  released sums (free); `simulate` and the program pass `min_count`. Returns
  (centroids, noisy counts [C])."""
  s = np.asarray(noisy_sums, np.float64)
  counts = s[:, -1] / (COUNT_WEIGHT * clip)
  keep = counts < min_count
  safe = np.where(keep, 1.0, counts)
  new = s[:, :-1] / safe[:, None]
  new[keep] = np.asarray(previous, np.float64)[keep]
  return new, counts


def simulate(sketches: np.ndarray, init: np.ndarray, *, steps: int, clip: float,
             noise_multiplier: float, rng: np.random.Generator
             ) -> Tuple[np.ndarray, list]:
  """L DP Lloyd steps in NumPy: the secure sum of the contributions plus Gaussian
  noise of std ``noise_multiplier``·`sensitivity`(S1) per coordinate (a secure sum
  with central Gaussian noise; the program's path goes through TFF's aggregators).

  Args:
    sketches: [M, P1] clipped sketches (‖x‖ ≤ S1), the clients' own.
    init: [C, P1] starting centroids (public data or random: no privacy cost).
    steps: L.
    clip: S1.
    noise_multiplier: z_L per step (`step_noise_multiplier`).
    rng: the noise's generator.

  Returns:
    (centroids [C, P1], per-step noisy counts [[C], ...]).
  """
  cents = np.asarray(init, np.float64)
  history = []
  std = noise_multiplier * sensitivity(clip)
  for _ in range(steps):
    sums = slot_contributions(sketches, cents, clip).sum(axis=0)
    sums = sums + rng.normal(0.0, std, sums.shape) if std > 0 else sums
    cents, counts = centroids_from_sums(sums, cents, clip, min_count(noise_multiplier))
    history.append(counts)
  return cents, history
