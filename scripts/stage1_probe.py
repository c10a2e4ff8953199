"""Stage-1 probe: where do the stage-1 centroids point, and what does stage 2's first
cluster choice make of them? Plain TF/NumPy on the project's own client functions
(no TFF), reading only the clients' TRAINING examples and true clusters (no
validation or test example), so it may guide choices without touching held-out data.

For each sketch variant it reports:
  * the matched cosine of each centroid to its true cluster's noise-free mean sketch
    (`pina_tff.clustering.metrics.centroid_cosines`),
  * the centroids' norms and the norm of their common mean,
  * the clustering accuracy of the loss-based choice in stage 2's first round, over
    every client, with the C models initialised from the centroids (as the program
    does: A0 + ΔA, B0 + ΔB) — against random offsets of norm ≈ S1 (PINA+RI / IFCA).

  .venv/bin/python scripts/stage1_probe.py --clients_dir=/work/data/fashion_mnist \
      --num_clusters=4 --z1=2.028,7.16 --sketch_clients=2000,10000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pina_tff.clustering import kmeans_init as kmeans_lib  # noqa: E402
from pina_tff.clustering import metrics  # noqa: E402
from pina_tff.models import reduced_tail as rt  # noqa: E402
from pina_tff.simulation import population as population_lib  # noqa: E402
from pina_tff.simulation import sampling  # noqa: E402
from pina_tff.training import local  # noqa: E402
from pina_tff.training import models as tm  # noqa: E402
from pina_tff.training import shards  # noqa: E402
from pina_tff.training import sketching  # noqa: E402

CHUNK = 1000


def clean_sketches(pop, base, top_k, clip, epochs, lr, batch, parts=None):
  """Noise-free sparsified, clipped sketches of every client [P, P1] (stage 1's
  local training: LoRA only, head frozen locally; `pina_tff.training.sketching`, the
  program's own client work). ``parts``: other clients (default the population's);
  ``top_k=None``: the raw LoRA change, neither sparsified nor clipped."""
  spec = local.LocalSpec(num_clusters=1, local_epochs=epochs, batch_size=batch,
                         learning_rate=lr, train_keys=tm.LORA_KEYS,
                         send_keys=tm.LORA_KEYS)
  return sketching.public_sketches(pop.model, spec, base,
                                   pop.train if parts is None else parts,
                                   top_k=top_k, clip=clip, seed=7, chunk=CHUNK)


def first_choice_accuracy(pop, base, offsets):
  """Clustering accuracy of stage 2's first loss-based choice from LoRA `offsets` [C, P1]."""
  model = pop.model
  shapes = model.param_shapes()
  c = offsets.shape[0]
  delta = tm.unflatten(tf.constant(offsets, tf.float32), shapes, tm.LORA_KEYS,
                       lead_shape=(c,))
  params = {k: tf.constant(np.repeat(v[None], c, axis=0) +
                           (delta[k].numpy() if k in delta else 0), tf.float32)
            for k, v in base.items()}

  @tf.function
  def choose(shard):
    feats = {k: tf.cast(shard[k], tf.float32) for k in model.feature_keys}
    losses = local.cluster_losses(model, params, feats, shard["label"], shard["mask"])
    return tf.argmin(losses, axis=-1, output_type=tf.int32)

  choice = []
  for ids in shards.split_cohort(list(range(pop.size)), CHUNK):
    shard = shards.pack_shard([pop.train[i] for i in ids], model.feature_keys,
                              pop.n_max_train)
    choice.append(choose({k: tf.constant(v) for k, v in shard.items()}).numpy()[:len(ids)])
  return metrics.clustering_accuracy(np.concatenate(choice), pop.true_clusters)


def common_arguments(doc: str) -> argparse.ArgumentParser:
  """The probes' shared flags: data, clusters, sketch noise and local training."""
  ap = argparse.ArgumentParser(description=doc.split("\n")[0])
  ap.add_argument("--clients_dir", required=True)
  ap.add_argument("--num_clusters", type=int, default=4)
  ap.add_argument("--z1", default="0,2.028,7.16", help="sketch noise multipliers")
  ap.add_argument("--sketch_clients", default="2000,10000")
  ap.add_argument("--top_k", type=int, default=16)
  ap.add_argument("--clip", type=float, default=1.0)
  ap.add_argument("--epochs", type=int, default=5)
  ap.add_argument("--lr", type=float, default=1.0)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  return ap


def main():
  ap = common_arguments(__doc__)
  ap.add_argument("--contrast", default="1", help="centroid contrast factors alpha: "
                  "init_c = mean_j c_j + alpha (c_c - mean_j c_j)")
  ap.add_argument("--bound", default="none", help="centroid norm bounds to try, e.g. "
                  "none,1 (each centroid scaled to norm <= the bound)")
  ap.add_argument("--variants", default="post,plain,spectral",
                  help="k-means variants: post (top-2k post-processing), plain, spectral")
  ap.add_argument("--output", default=None, help="JSON file for the results")
  a = ap.parse_args()
  t0 = time.time()
  pop = population_lib.load_population(a.clients_dir, 1, 0, print)
  base = rt.init_trainable(pop.model.config, a.seed, pop.head["head_kernel"],
                           pop.head["head_bias"])
  x = clean_sketches(pop, base, a.top_k, a.clip, a.epochs, a.lr, a.batch)
  true = pop.true_clusters
  means = np.stack([x[true == k].mean(0) for k in range(a.num_clusters)])
  print(f"noise-free sketches {x.shape} in {time.time() - t0:.0f} s; mean norm "
        f"{np.linalg.norm(x, axis=1).mean():.3f}; global mean norm "
        f"{np.linalg.norm(x.mean(0)):.3f}; true-cluster mean norms "
        f"{np.round(np.linalg.norm(means, axis=1), 3).tolist()}; norms of the cluster "
        f"means minus the global mean "
        f"{np.round(np.linalg.norm(means - x.mean(0), axis=1), 3).tolist()}")
  rows = []
  rng = np.random.default_rng(a.seed)
  size = x.shape[1]
  rand = rng.normal(0, a.clip / math.sqrt(size), (a.num_clusters, size))
  rows.append({"variant": "random offsets (PINA+RI / IFCA)", "z1": None, "m1": None,
               "cosine": metrics.centroid_cosines(rand, x, true).tolist(),
               "norms": np.linalg.norm(rand, axis=1).round(3).tolist(),
               "round1_clustering": first_choice_accuracy(pop, base, rand)})
  print(rows[-1])
  for m1 in [int(v) for v in a.sketch_clients.split(",")]:
    ids = sampling.sketch_cohort(a.seed, pop.size, min(m1, pop.size))
    for z1 in [float(v) for v in a.z1.split(",")]:
      noisy = x[ids] + z1 * a.clip * rng.standard_normal((len(ids), size))
      variants = {"post": ("k-means (post-processed)", {"post_process_k": a.top_k}),
                  "plain": ("k-means, no post-processing", {}),
                  "spectral": ("spectral r=C", {"spectral_dims": a.num_clusters})}
      for key in a.variants.split(","):
        name, kw = variants[key]
        cents, labels = kmeans_lib.kmeans_init(noisy, a.num_clusters, a.seed, n_init=5,
                                               **kw)
        cents = cents.astype(np.float64)
        for alpha, bound in [(float(al), b) for al in a.contrast.split(",")
                             for b in a.bound.split(",")]:
          common = cents.mean(0, keepdims=True)
          init = common + alpha * (cents - common)
          if bound != "none":
            init = kmeans_lib.bound_centroid_norms(init, float(bound))
          row = {"variant": name, "z1": z1, "m1": len(ids), "contrast": alpha,
                 "bound": bound,
                 "kmeans_accuracy": metrics.clustering_accuracy(labels, true[ids]),
                 "cosine": metrics.centroid_cosines(init, x[ids], true[ids]).tolist(),
                 "norms": np.linalg.norm(init, axis=1).round(3).tolist(),
                 "common_mean_norm": float(np.linalg.norm(common)),
                 "round1_clustering": first_choice_accuracy(pop, base, init)}
          print(json.dumps(row), flush=True)
          rows.append(row)
  if a.output:
    with open(a.output, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
