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

  #: Clients per compiled call: the whole population at once would hold C x P x N
  #: activations (~1 GB for 10,000 ViT-S/16 clients).
  CHUNK = 1024

  def __init__(self, pop: population_lib.Population, num_clusters: int,
               resident: bool = False, split: str = "test", score_true: bool = False):
    held_out = pop.held_out(split)
    if resident:
      train, test = resident_data.population_sources(pop, split)
      self.select, self.test = train.reader.full_arrays(), test.reader.full_arrays()
    else:  # tensors made once (not per call)
      keys, ids = pop.model.feature_keys, list(range(pop.size))
      self.select = {k: tf.constant(v) for k, v in shards_lib.pack_shard(
          [pop.train[i] for i in ids], keys, pop.n_max_train).items()}
      self.test = {k: tf.constant(v) for k, v in shards_lib.pack_shard(
          [held_out[i] for i in ids], keys, pop.n_max_held_out(split)).items()}
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
    rows = int(self.select["label"].shape[0])  # resident layouts add a padding row
    correct = total = 0.0
    choices = []
    for a in range(0, rows, self.CHUNK):
      part = slice(a, min(rows, a + self.CHUNK))
      c, t, ch = self._fn(params, {k: v[part] for k, v in self.select.items()},
                          {k: v[part] for k, v in self.test.items()})
      correct, total = correct + float(c), total + float(t)
      choices.append(ch.numpy())
    choice = np.concatenate(choices)[:len(self.true)]
    clus = (cluster_metrics.clustering_accuracy(choice, self.true)
            if self.num_clusters > 1 else float("nan"))
    return correct / max(1.0, total), clus
