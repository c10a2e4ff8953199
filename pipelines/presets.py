"""Run configurations shared by pina-simulate and pina-grid (no flags defined here)."""

from __future__ import annotations


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

# Rotated Fashion-MNIST (10,000 clients, C = 4), the paper's Table-1 setting, as measured
# in docs/results.md ("How the FMNIST settings were chosen": noise-free probes on the
# training split only, never the test split). Every method shares these values.
# - full participation (cohort == population): the paper simulates 10,000 clients per
#   round, and against the server, who sees who took part, sampling gives no
#   amplification: spreading the same rounds over fewer clients only costs accuracy;
# - [project choice] stage 0 off: the upright-pretrained head is the common start; a
#   warmed-up head made the noise-free sketch k-means worse (0.47 -> 0.36);
# - [project choice] stage 1 trains LoRA only (the head stays frozen locally): 0.47 vs
#   0.39 noise-free sketch k-means accuracy; S1 = 1.0 is about the median sketch norm;
# - stage 2: 5 local epochs at lr 1.0 (one full batch of the client's 5 examples each),
#   clip S2 = 1.0, server lr 10 (the fixed denominator P divides each cluster's sum by
#   about C times its members), 15 rounds, 2 min-norm warm rounds.
FMNIST_DEFAULTS = {
    "method": "pina", "num_clusters": 4, "population": 10000, "seed": 0,
    "model_width": 64,
    "privacy": {"epsilon": 8.0},
    "stage0": {"enabled": False, "rounds": 0, "cohort": 10000},
    "stage1": {"num_sketch_clients": 2000, "local_epochs": 5, "lr": 1.0, "top_k": 16,
               "clip": 1.0, "train_head": False},
    "stage2": {"rounds": 15, "cohort": 10000, "local_epochs": 5, "batch_size": 16,
               "client_lr": 1.0, "server_lr": 10.0, "server_momentum": 0.0, "clip": 1.0,
               "warm_rounds": 2, "scaling": "pina", "aggregator": "ddp",
               "fedprox_mu": 0.1},
}


def parse_epsilon(text: str) -> float:
  """--epsilon: 'inf' / '∞' or a number (`pina_tff.config.parse_epsilon`);
  ConfigError otherwise."""
  return config_lib.parse_epsilon(str(text), "--epsilon")


