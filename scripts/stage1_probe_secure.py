"""Stage-1 probe, part 2 (issue 18 item 4): a public basis and DP Lloyd steps.

Like `scripts/stage1_probe.py` (plain TF/NumPy on the project's own client functions,
reading only TRAINING examples, true clusters and the public split: no validation or
test example), for two ways to keep stage 1's signal that the first probe did not try:

* ``basis``: a public low-dimensional basis (`pina_tff.clustering.public_basis`): PCA
  of noise-free sketches of pseudo-clients made from the upright public split; each
  client sends clip(V·Δ, S1) + N(0, (z1·S1)² I_r), r numbers; same local DP.
* ``lloyd``: L DP Lloyd steps over a secure sum (`pina_tff.clustering.dp_lloyd`,
  a labelled extension beyond the paper): per-slot sums and counts of the clients'
  clipped sketches with noise z1·√L per step (the same ε against the server as one
  sketch of multiplier z1), started from k-means of the public pseudo-clients' sketches
  or from random offsets. Not locally DP: it rests on the secure sum.

Reports, per variant: the matched centroid cosine to the true clusters' noise-free
mean sketches, the centroids' norms, and stage 2's first loss-based choice from them
(clustering accuracy over every client), beside random offsets.

  .venv/bin/python scripts/stage1_probe_secure.py --clients_dir=/work/data/fashion_mnist \
      --z1=0,2.028,7.16 --output=docs/issue18/stage1_probe_secure.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stage1_probe as probe  # noqa: E402
from pina_tff.clustering import dp_lloyd  # noqa: E402
from pina_tff.clustering import kmeans_init as kmeans_lib  # noqa: E402
from pina_tff.clustering import metrics  # noqa: E402
from pina_tff.clustering import public_basis  # noqa: E402
from pina_tff.models import reduced_tail as rt  # noqa: E402
from pina_tff.privacy import sketch as sk  # noqa: E402
from pina_tff.simulation import population as population_lib  # noqa: E402
from pina_tff.simulation import sampling  # noqa: E402


def sparse_clipped(raw, top_k, clip):
  """The paper's sketch of raw LoRA changes [M, P1]: top-k ± entries, clipped to S1."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return sk.clip_l2(sk.sparsify_top_k(tf.constant(raw, tf.float32), top_k),
                    clip).numpy().astype(np.float64)


def report(name, pop, base, cents, clean, true, **extra):
  """One result row, printed and returned."""
  row = {"variant": name, **extra,
         "cosine": metrics.centroid_cosines(cents, clean, true).round(3).tolist(),
         "norms": np.linalg.norm(cents, axis=1).round(3).tolist(),
         "round1_clustering": probe.first_choice_accuracy(pop, base, cents)}
  row["mean_cosine"] = float(np.nanmean(row["cosine"]))
  print(json.dumps(row), flush=True)
  return row


def main():
  ap = probe.common_arguments(__doc__)
  ap.add_argument("--dims", default="4,8,16", help="public basis dimensions r")
  ap.add_argument("--steps", default="1,3,5", help="DP Lloyd steps L")
  ap.add_argument("--public_examples", type=int, default=5,
                  help="examples per public pseudo-client")
  ap.add_argument("--output", default=None)
  a = ap.parse_args()
  t0 = time.time()
  pop = population_lib.load_population(a.clients_dir, 1, 0, print)
  base = rt.init_trainable(pop.model.config, a.seed, pop.head["head_kernel"],
                           pop.head["head_bias"])
  train = (pop, base, None, a.clip, a.epochs, a.lr, a.batch)
  raw = probe.clean_sketches(*train)
  x = sparse_clipped(raw, a.top_k, a.clip)
  publics = population_lib.public_clients(pop.embeddings_dir, pop.model,
                                          a.public_examples, a.seed)
  raw_pub = probe.clean_sketches(pop, base, None, a.clip, a.epochs, a.lr, a.batch,
                                 parts=publics)
  x_pub = sparse_clipped(raw_pub, a.top_k, a.clip)
  true = pop.true_clusters
  print(f"sketches of {len(x)} clients and {len(x_pub)} public pseudo-clients in "
        f"{time.time() - t0:.0f} s", flush=True)
  rng = np.random.default_rng(a.seed)
  size = x.shape[1]
  rows = []
  rand = rng.normal(0, a.clip / math.sqrt(size), (a.num_clusters, size))
  rows.append(report("random offsets (PINA+RI / IFCA)", pop, base, rand, x, true))
  pub_cents, _ = kmeans_lib.kmeans_init(x_pub, a.num_clusters, a.seed, n_init=10)
  rows.append(report("k-means of public sketches only", pop, base, pub_cents, x, true))
  for m1 in [int(v) for v in a.sketch_clients.split(",")]:
    ids = sampling.sketch_cohort(a.seed, pop.size, min(m1, pop.size))
    for z1 in [float(v) for v in a.z1.split(",")]:
      common = {"m1": len(ids), "z1": z1}
      for dims in [int(v) for v in a.dims.split(",")]:
        for center in (True, False):
          v = public_basis.pca_basis(x_pub, dims, center=center)
          y = public_basis.project(raw[ids], v, a.clip)
          y = y + z1 * a.clip * rng.standard_normal(y.shape)
          c, labels = kmeans_lib.kmeans_init(y, a.num_clusters, a.seed, n_init=10)
          rows.append(report(f"public basis r={dims} ({'centered' if center else 'raw'})",
                             pop, base, public_basis.lift(c, v), x[ids], true[ids],
                             kmeans_accuracy=metrics.clustering_accuracy(labels, true[ids]),
                             **common))
      for steps in [int(v) for v in a.steps.split(",")]:
        zl = dp_lloyd.step_noise_multiplier(z1, steps)
        for start, init in (("public k-means", pub_cents), ("random", rand)):
          c, counts = dp_lloyd.simulate(x[ids], init, steps=steps, clip=a.clip,
                                        noise_multiplier=zl, rng=rng)
          rows.append(report(f"DP Lloyd L={steps} from {start}", pop, base, c, x[ids],
                             true[ids], z_step=zl,
                             final_counts=np.round(counts[-1]).tolist(), **common))
  if a.output:
    with open(a.output, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
