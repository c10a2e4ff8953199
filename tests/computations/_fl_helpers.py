"""Shared helpers of the computations tests (not a test file)."""
import collections

import numpy as np

from computations.learning import client_work as cw
from computations.learning import learning_process as lp
from pina_tff.training import shards


def make_clients(sizes, dim=5, num_classes=3, seed=0, true_clusters=None):
  """Random linear-model clients: {'x': [n, dim], 'label': [n], 'true_cluster'}."""
  rng = np.random.default_rng(seed)
  clients = []
  for i, n in enumerate(sizes):
    clients.append({
        "x": rng.normal(size=(n, dim)).astype(np.float32),
        "label": rng.integers(0, num_classes, size=n).astype(np.int32),
        "true_cluster": int(true_clusters[i]) if true_clusters is not None else 0})
  return clients


def pack(clients, model, n_max, shard_size, seed_base=7):
  """Packs clients into TFF client datasets of `shard_size` simulated clients each,
  as `computations.program.program` does (per-client seeds independent of the shard)."""
  seeds = [(seed_base, i) for i in range(len(clients))]
  datasets = []
  for chunk in shards.split_cohort(list(range(len(clients))), shard_size):
    shard = shards.pack_shard([clients[j] for j in chunk], model.feature_keys, n_max,
                              num_slots=shard_size,
                              client_seeds=[seeds[j] for j in chunk])
    datasets.append(cw.shard_to_dataset(shard))
  return datasets


def run_rounds(process, params, data, rounds=1):
  """Sets the C cluster models to `params`, runs `rounds` rounds on the same data."""
  state = process.set_model_weights(process.initialize(), lp.model_weights(params))
  for _ in range(rounds):
    state = process.next(state, data).state
  return collections.OrderedDict(
      (k, np.asarray(v)) for k, v in process.get_model_weights(state).trainable.items())
