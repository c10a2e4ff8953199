"""Run configurations shared by pina-simulate and pina-grid (no flags defined here)."""

from __future__ import annotations

import math

from pina_tff import config as config_lib

# Defaults that make a sensible run on the embedded digits (100 clients, C = 4).
DIGITS_DEFAULTS = {
    "method": "pina", "num_clusters": 4, "population": 100, "seed": 0,
    "privacy": {"epsilon": 8.0},
    "stage0": {"enabled": True, "rounds": 10, "cohort": 50, "local_epochs": 1,
               "lr": 0.1, "clip": 1.0},
    "stage1": {"num_sketch_clients": 100, "local_epochs": 5, "lr": 0.5, "lora_rank": 1,
               "top_k": 16, "clip": 1.0, "post_process": True, "kmeans_restarts": 10},
    "stage2": {"rounds": 30, "cohort": 50, "local_epochs": 1, "batch_size": 16,
               "client_lr": 0.1, "server_lr": 1.0, "server_momentum": 0.0, "clip": 1.0,
               "warm_rounds": 10, "scaling": "pina", "aggregator": "ddp",
               "fedprox_mu": 0.1},
}

# Rotated Fashion-MNIST (10,000 clients, C = 4), the paper's Table-1 setting. Placeholder
# values to be tuned by the lead engineer; cohort == population is full participation.
# Keys not given take pina_tff.config's defaults.
FMNIST_DEFAULTS = {
    "method": "pina", "num_clusters": 4, "population": 10000, "seed": 0,
    "privacy": {"epsilon": 8.0},
    "stage0": {"enabled": True, "rounds": 5, "cohort": 10000},
    "stage1": {"num_sketch_clients": 2000, "local_epochs": 5, "lr": 1.0, "top_k": 16,
               "clip": 1.0},
    "stage2": {"rounds": 20, "cohort": 10000, "local_epochs": 5, "batch_size": 16,
               "client_lr": 1.0, "server_lr": 4.0, "server_momentum": 0.0, "clip": 1.0,
               "warm_rounds": 1, "scaling": "pina", "aggregator": "ddp"},
}


def parse_epsilon(text: str) -> float:
  """'inf' / '∞' or a positive number; ConfigError otherwise."""
  t = str(text).strip().lower()
  if t in ("inf", "infinity", "∞"):
    return math.inf
  try:
    return float(t)
  except ValueError:
    raise config_lib.ConfigError(
        f"--epsilon must be a number or 'inf', found {text!r}") from None


