"""Fake simulation run directories (summary.json + metrics.csv) for reporting tests."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

PRIVATE_ZS = {"pina": (1.1, 0.0, 0.9), "pina_ri": (0.0, 0.0, 0.9)}


def write_run(run_dir: str, method: str, dataset: str, epsilon, final_accuracy: float,
              clustering_accuracy: float | None = None, num_clusters: int = 4,
              warmup_rounds: int = 2, rounds: int = 8, seed: int = 0,
              init_clustering_accuracy: float | None = None) -> str:
  """Write a realistic small run; stage-2 curves end at the given final values."""
  rng = np.random.default_rng(seed)
  os.makedirs(run_dir, exist_ok=True)
  eps_inf = isinstance(epsilon, str) or math.isinf(epsilon)
  c_range = range(num_clusters)
  header = ["stage", "round", "method", "test_accuracy", "clustering_accuracy",
            "train_loss", "epsilon_spent", "wall_s"]
  for c in c_range:
    header += [f"count_{c}", f"norm_{c}", f"w_{c}", f"scale_{c}"]
  rows = []
  for r in range(1, warmup_rounds + 1):
    row = [0, r, method, 0.2 + 0.05 * r, "nan", 2.0 - 0.1 * r,
           0.0 if eps_inf else 0.1 * r, 0.5 * r]
    row += ["nan"] * (4 * num_clusters)
    rows.append(row)
  has_w = method in ("pina", "pina_ri")
  for r in range(1, rounds + 1):
    t = r / rounds
    acc = final_accuracy * (0.55 + 0.45 * t) if r < rounds else final_accuracy
    if clustering_accuracy is None:
      cl = "nan"
    else:
      cl = clustering_accuracy * (0.7 + 0.3 * t) if r < rounds else clustering_accuracy
    eps_spent = 0.0 if eps_inf else float(epsilon) * (0.3 + 0.7 * t)
    row = [2, r, method, acc, cl, 1.5 * (1 - 0.5 * t) + 0.01 * rng.standard_normal(),
           eps_spent, 1.0 + 0.7 * r]
    for c in c_range:
      w = 0.9 + 0.09 * t + 0.005 * rng.standard_normal() if has_w else "nan"
      scale = 1.0 + 0.5 * (1 - t) * (c + 1) / num_clusters if has_w else "nan"
      row += [int(rng.integers(10, 30)), 3.0 * (1 - 0.6 * t) + 0.1 * c, w, scale]
    rows.append(row)
  with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  z = PRIVATE_ZS.get(method, (0.8, 0.0, 0.0))
  summary = {
      "method": method, "dataset": dataset,
      "epsilon_target": "inf" if eps_inf else float(epsilon),
      "epsilon_achieved": None if eps_inf else float(epsilon) * 0.98,
      "delta": 1e-5,
      "noise_multipliers": ({"z0": 0.0, "z1": 0.0, "z2": 0.0} if eps_inf else
                            {"z0": z[0], "z1": z[1], "z2": z[2]}),
      "local_epsilon1": 1.5 if method == "pina" and not eps_inf else None,
      "rounds": rounds, "final_accuracy": final_accuracy,
      "clustering_accuracy": clustering_accuracy,
      "init_clustering_accuracy": (init_clustering_accuracy if method == "pina"
                                   else None),
      "wall_clock_s": 12.5, "num_clusters": num_clusters,
      "config": {"seed": seed, "local_epochs": 1, "clip": {"l2": 1.0},
                 "rotations_deg": [0, 90, 180, 270]},
  }
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return run_dir


# dataset -> (eps, method) -> (final_accuracy, clustering_accuracy)
GRID = {
    "fashion_mnist": {
        (2, "pina"): (0.801, 0.97), (2, "pina_ri"): (0.752, 0.90),
        (2, "fedavg"): (0.602, None),                    # ifca_ldp missing at eps=2
        (8, "pina"): (0.853, 0.99), (8, "pina_ri"): (0.8528, 0.99),  # tie: 85.3 both
        (8, "ifca_ldp"): (0.70, 0.60), (8, "fedavg"): (0.65, None),
        ("inf", "pina"): (0.88, 1.0), ("inf", "ifca_ldp"): (0.90, 1.0),
        ("inf", "fedavg"): (0.70, None),
    },
    "femnist": {  # true clusters unknown: no clustering accuracy
        (2, "pina"): (0.60, None), (2, "fedavg"): (0.62, None),
    },
}


def make_grid(root: str) -> list:
  """Write GRID as <root>/<dataset>/<method>/eps_<e>/; returns the run dirs."""
  dirs = []
  for i, (dataset, cells) in enumerate(GRID.items()):
    for j, ((eps, method), (acc, cl)) in enumerate(cells.items()):
      d = os.path.join(root, dataset, method, f"eps_{eps}")
      eps_v = math.inf if eps == "inf" else eps
      dirs.append(write_run(d, method, dataset, eps_v, acc, cl,
                            num_clusters=4 if dataset == "fashion_mnist" else 2,
                            seed=100 * i + j, init_clustering_accuracy=0.85))
  return dirs


# (eps, method) -> final accuracy per seed 0, 1, 2 (the seed_<s> layout of pina-grid)
SEED_GRID = {
    (2, "pina"): (0.80, 0.83, 0.78), (2, "pina_ri"): (0.75, 0.74, 0.70),
    (2, "fedavg"): (0.60, 0.62, 0.65), (2, "fednova"): (0.64,),
    (8, "pina"): (0.85, 0.86, 0.87), (8, "fedavg"): (0.66,),
}


def make_seed_grid(root: str, dataset: str = "fashion_mnist") -> list:
  """Write SEED_GRID as <root>/<dataset>/<method>/eps_<e>/seed_<s>/ (clustering accuracy
  = final accuracy + 0.1 for clustered methods, stage-1 accuracy 0.5 + 0.1 seed)."""
  dirs = []
  for (eps, method), accs in SEED_GRID.items():
    for s, acc in enumerate(accs):
      d = os.path.join(root, dataset, method, f"eps_{eps}", f"seed_{s}")
      cl = acc + 0.1 if method in ("pina", "pina_ri") else None
      dirs.append(write_run(d, method, dataset, eps, acc, cl, seed=s,
                            init_clustering_accuracy=0.5 + 0.1 * s))
  return dirs
