"""Held-out accuracy of the cluster models over the whole population (a simulation
diagnostic computed on every client's data, outside ε)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from computations.data import resident_data
from pina_tff.clustering import metrics as cluster_metrics
from pina_tff.simulation import population as population_lib
from pina_tff.training import local
from pina_tff.training import shards as shards_lib


#: Clients per compiled call: the whole population at once would hold C x P x N
#: activations (~1 GB for 10,000 ViT-S/16 clients).
CHUNK = 1024


def packed_population(pop: population_lib.Population, split: str) -> tuple:
  """(select, held_out): every client's training examples and ``split`` examples
  packed once as NumPy arrays (`pina_tff.training.shards.pack_shard`), client order."""
  keys = pop.model.feature_keys
  return (shards_lib.pack_shard(pop.train, keys, pop.n_max_train),
          shards_lib.pack_shard(pop.held_out(split), keys, pop.n_max_held_out(split)))


def in_chunks(fn, params, select, test, chunk: int = CHUNK):
  """``fn(params, select part, test part)`` for consecutive ranges of ``chunk`` rows
  (tensors or arrays sliced on their first axis), in row order."""
  rows = int(select["label"].shape[0])
  for a in range(0, rows, chunk):
    part = slice(a, min(rows, a + chunk))
    yield fn(params, {k: v[part] for k, v in select.items()},
             {k: v[part] for k, v in test.items()})


class Evaluator:
  """IFCA-style held-out accuracy over the whole population, in compiled chunks.

  Each client's train loss picks its cluster model (argmin), which is scored on its
  held-out examples of `split` (the oracle: its true cluster's model). A diagnostic
  computed on every client's data, outside ε.

  Args:
    pop: the population.
    num_clusters: models per round.
    resident: read the population's resident layouts (`resident_data`: memory maps,
      no copy) instead of packing it once here.
    split: 'val' or 'test' (`RunConfig.eval_split`).
    score_true: score each client with its true cluster's model (the oracle).
  """

  def __init__(self, pop: population_lib.Population, num_clusters: int,
               resident: bool = False, split: str = "test", score_true: bool = False):
    if resident:
      train, test = resident_data.population_sources(pop, split)
      self.select, self.test = train.reader.full_arrays(), test.reader.full_arrays()
    else:  # tensors made once (not per call)
      self.select, self.test = ({k: tf.constant(v) for k, v in arrays.items()}
                                for arrays in packed_population(pop, split))
    self.true = pop.true_clusters
    model = pop.model

    @tf.function
    def evaluate(params, select, test):
      return local.evaluate_shard(model, params, select, test, score_true=score_true)

    self._fn = evaluate
    self.num_clusters = num_clusters

  def __call__(self, params) -> tuple[float, float]:
    """(test accuracy, clustering accuracy or nan) of the C models `params`."""
    params = {k: tf.constant(v) for k, v in params.items()}
    correct = total = 0.0
    choices = []
    for c, t, ch in in_chunks(self._fn, params, self.select, self.test):
      correct, total = correct + float(c), total + float(t)
      choices.append(ch.numpy())
    # (resident layouts add a padding row)
    choice = np.concatenate(choices)[:len(self.true)]
    clus = (cluster_metrics.clustering_accuracy(choice, self.true)
            if self.num_clusters > 1 else float("nan"))
    return correct / max(1.0, total), clus
