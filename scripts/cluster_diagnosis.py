"""Cluster diagnosis of finished runs (issue 18): per true cluster (rotation), which
model do the clients choose, and how accurate is every model on every rotation?

For each run directory it loads the final program state's cluster models
(`checkpoints/`, read only: an unreadable version is skipped, never moved) and the
population the run used, then, for every client, makes the evaluator's loss-based
choice (argmin of the training loss, `pina_tff.training.local.evaluate_shard`) and
scores its held-out examples of the split with EVERY model
(`local.per_client_model_accuracy`). It reports, per run:

  * the confusion matrix true rotation x chosen model (client counts),
  * per rotation: accuracy with the chosen model, with the rotation's best model (the
    one most accurate on that rotation's clients) and of every model (a R x C table),
  * the overall accuracy as the evaluator scores it (the oracle: each client with its
    true cluster's model) -- checked against the run's final_accuracy -- and the
    clustering accuracy (Hungarian), also checked.

  .venv/bin/python scripts/cluster_diagnosis.py RUN_DIR [RUN_DIR ...] \
      --data_dir=/work/data/fashion_mnist [--split=val] [--out=FILE.json] [--md=FILE.md]

Population: loaded from the data's cached embeddings (`<data_dir>/embeddings`, or
`data_dir` itself when it holds embeddings), never rebuilt: `load_population`'s seed
only keys the backbone/embedding cache (a grid builds it once with its base seed), so
passing a run's own seed could re-train the backbone in the data directory. The data is
checked against the run's fingerprint (`run.json`'s data_sha256).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pina_tff.clustering import metrics as cluster_metrics  # noqa: E402

# ----------------------------------------------------------------- core (pure NumPy)

def _rate(num, den):
  return float(num) / float(den) if den > 0 else float("nan")


def diagnose(choice, correct, count, true, num_true: int, score_true: bool = False
             ) -> dict:
  """The diagnosis of one run from per-client arrays.

  Args:
    choice: int [P], each client's loss-based model.
    correct: [P, C], held-out examples model c classifies right for client p.
    count: [P], held-out examples of client p.
    true: int [P], true cluster (-1 unknown: left out of the per-rotation tables).
    num_true: R, true clusters (rotations 0..R-1).
    score_true: the run is scored with the true cluster's model (the oracle).

  Returns:
    A dict of plain lists and floats (see the module docstring); ``rotation`` lists
    are indexed by true cluster, ``model_accuracy[r][c]`` is model c on rotation r.
  """
  choice, true = np.asarray(choice, np.int64), np.asarray(true, np.int64)
  correct, count = np.asarray(correct, np.float64), np.asarray(count, np.float64)
  num_models = correct.shape[1]
  rows = np.arange(len(choice))
  chosen = correct[rows, choice]
  scored_model = np.clip(true, 0, num_models - 1) if score_true else choice
  scored = correct[rows, scored_model]
  per = [_rotation(choice[true == r], correct[true == r], count[true == r],
                   chosen[true == r], scored[true == r], num_models)
         for r in range(num_true)]
  confusion = np.array([p["chosen_counts"] for p in per], np.int64).reshape(
      num_true, num_models)
  return {
      "num_models": num_models, "num_true_clusters": num_true,
      "score_true": bool(score_true),
      "confusion": confusion.tolist(),
      "matched_model": _matched_models(confusion),
      "rotation": per,
      "accuracy": _rate(scored.sum(), count.sum()),
      "accuracy_chosen": _rate(chosen.sum(), count.sum()),
      "accuracy_best_per_rotation": _rate(
          sum(p["best_correct"] for p in per), count[true >= 0].sum()),
      "model_accuracy_all": [_rate(correct[:, c].sum(), count.sum())
                             for c in range(num_models)],
      "clustering_accuracy": (cluster_metrics.clustering_accuracy(choice, true)
                              if num_models > 1 else float("nan")),
  }


def _rotation(choice, correct, count, chosen, scored, num_models: int) -> dict:
  """One true cluster's row of the diagnosis (its clients' arrays)."""
  total = count.sum()
  model_acc = [_rate(correct[:, c].sum(), total) for c in range(num_models)]
  best = int(np.argmax(correct.sum(axis=0))) if len(choice) else -1
  return {
      "clients": int(len(choice)), "examples": int(total),
      "chosen_counts": np.bincount(choice, minlength=num_models).tolist(),
      "accuracy_chosen": _rate(chosen.sum(), total),
      "accuracy_scored": _rate(scored.sum(), total),
      "best_model": best,
      "accuracy_best": model_acc[best] if best >= 0 else float("nan"),
      "best_correct": float(correct[:, best].sum()) if best >= 0 else 0.0,
      "model_accuracy": model_acc,
  }


def _matched_models(confusion) -> list:
  """Model matched to each true cluster by the Hungarian assignment on the confusion
  (-1: none), the matching clustering accuracy uses."""
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  rows, cols = linear_sum_assignment(-np.asarray(confusion))
  out = [-1] * len(confusion)
  for r, c in zip(rows, cols):
    out[int(r)] = int(c)
  return out


# ------------------------------------------------------------- TensorFlow side

def client_table(model, weights, select, test, chunk: Optional[int] = None):
  """(choice int [P], correct [P, C], count [P]) of the C models ``weights`` over
  packed ``select`` (training) and ``test`` (held-out) arrays
  (`evaluation.packed_population`), in the evaluator's chunks (``chunk`` rows:
  default `evaluation.CHUNK`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from computations.program import evaluation  # pylint: disable=g-import-not-at-top
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top

  @tf.function
  def table(params, sel, tst):
    return local.per_client_model_accuracy(model, params, sel, tst)

  params = {k: tf.constant(np.asarray(v, np.float32)) for k, v in weights.items()}
  select, test = ({k: tf.constant(v) for k, v in arrays.items()}
                  for arrays in (select, test))
  parts = [[o.numpy() for o in out] for out in evaluation.in_chunks(
      table, params, select, test, chunk or evaluation.CHUNK)]
  return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


# ------------------------------------------------------------- run directories

def read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def final_state(run_dir: str, model, num_models: int):
  """(program state, version) of the newest readable checkpoint, read only."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from computations.program import program_state as ps  # pylint: disable=g-import-not-at-top
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top
  from pina_tff.training import models as tm  # pylint: disable=g-import-not-at-top
  shapes = model.param_shapes()
  template = ps.state_template(shapes, num_models,
                               tm.vector_size(shapes, local.LocalSpec().send_keys))
  manager = tff.program.FileProgramStateManager(os.path.join(run_dir, "checkpoints"))
  errors = []
  for version in sorted(asyncio.run(manager.get_versions()) or [], reverse=True):
    try:
      return asyncio.run(manager.load(version, template)), version
    except Exception as e:  # pylint: disable=broad-except  # try an older one
      errors.append(f"{version}: {str(e).splitlines()[0][:120] if str(e) else e!r}")
  raise SystemExit(f"{run_dir}: no readable checkpoint ({'; '.join(errors) or 'none'})")


def embeddings_dir(data_dir: str) -> str:
  """The cached embeddings of ``data_dir`` (never built here)."""
  from pina_tff.data import schema  # pylint: disable=g-import-not-at-top
  for d in (data_dir, os.path.join(data_dir, "embeddings")):
    path = os.path.join(d, schema.MANIFEST_NAME)
    if os.path.exists(path) and read_json(path).get("format") == schema.EMBEDDINGS_FORMAT:
      return d
  raise SystemExit(f"{data_dir}: no cached embeddings (run the simulation once first)")


def check_data(run_dir: str, data_dir: str) -> None:
  """Exits unless ``data_dir`` is the data the run was made from (run.json)."""
  from computations.program import run_dir as run_dir_lib  # pylint: disable=g-import-not-at-top
  want = read_json(os.path.join(run_dir, "run.json")).get("data_sha256")
  have = run_dir_lib.data_fingerprint(data_dir)
  if want and want != have:
    raise SystemExit(f"{run_dir} was made from other data than {data_dir} "
                     f"(manifest sha256 {want[:12]} vs {have[:12]})")


# ----------------------------------------------------------------- one run

def diagnose_run(run_dir: str, data_dir: str, split, populations: dict, log=print
                 ) -> dict:
  """The diagnosis of one run directory, with its checks against the run's summary."""
  from computations.program import evaluation  # pylint: disable=g-import-not-at-top
  from pina_tff import method_table  # pylint: disable=g-import-not-at-top
  from pina_tff.simulation import population as population_lib  # pylint: disable=g-import-not-at-top
  cfg = read_json(os.path.join(run_dir, "config.json"))
  summary = read_json(os.path.join(run_dir, "summary.json"))
  check_data(run_dir, data_dir)
  split = split or cfg.get("eval_split", "test")
  key = (data_dir, int(cfg["stage1"]["lora_rank"]), split)
  if key not in populations:
    log(f"loading the population of {data_dir} (lora rank {key[1]}, split {split})")
    pop = population_lib.load_population(embeddings_dir(data_dir), key[1], 0, log)
    populations[key] = (pop, evaluation.packed_population(pop, split))
  pop, (select, test) = populations[key]
  method = method_table.get(cfg["method"])
  num_models = method_table.num_models(cfg["method"], int(cfg["num_clusters"]))
  state, version = final_state(run_dir, pop.model, num_models)
  choice, correct, count = client_table(pop.model, state["weights"], select, test)
  result = diagnose(choice[:pop.size], correct[:pop.size], count[:pop.size],
                    pop.true_clusters, pop.num_true_clusters,
                    score_true=method.true_clusters and num_models > 1)
  result.update(run_dir=os.path.abspath(run_dir), method=cfg["method"],
                seed=cfg["seed"], epsilon=cfg["privacy"]["epsilon"], split=split,
                checkpoint_version=int(version), phase=int(state["phase"]),
                round=int(state["round"]))
  result["checks"] = _checks(result, summary, state, split == cfg.get("eval_split"))
  return result


def _checks(result: dict, summary: dict, state, same_split: bool) -> dict:
  """The recomputed accuracies against the run's own (summary.json, program state)."""
  out = {"same_split_as_run": same_split}
  for name, ours, key in (("accuracy", result["accuracy"], "final_accuracy"),
                          ("clustering_accuracy", result["clustering_accuracy"],
                           "final_clustering_accuracy")):
    theirs = summary.get(key if key in summary else name)
    if theirs is None:
      theirs = float(state[key])
    diff = abs(ours - float(theirs)) if not np.isnan(ours) else float("nan")
    out[name] = {"recomputed": ours, "run": float(theirs), "abs_diff": diff,
                 "ok": bool(same_split and (diff <= 1e-6 or np.isnan(float(theirs))))}
  return out


# --------------------------------------------------------------- markdown

def _pct(x) -> str:
  return "-" if x is None or np.isnan(x) else f"{100 * x:.1f}"


def markdown(result: dict, labels=None) -> str:
  """Markdown tables of one run's diagnosis."""
  r_n, c_n = result["num_true_clusters"], result["num_models"]
  labels = labels or [str(r) for r in range(r_n)]
  chk = result["checks"]
  lines = [f"### {result['run_dir']}", "",
           f"method {result['method']}, seed {result['seed']}, eps {result['epsilon']}, "
           f"split {result['split']}, checkpoint {result['checkpoint_version']}; "
           f"accuracy {_pct(result['accuracy'])} % (run: {_pct(chk['accuracy']['run'])}, "
           f"|diff| {chk['accuracy']['abs_diff']:.1e}, "
           f"{'OK' if chk['accuracy']['ok'] else 'MISMATCH'}), clustering "
           f"{_pct(result['clustering_accuracy'])} % (run: "
           f"{_pct(chk['clustering_accuracy']['run'])}, "
           f"{'OK' if chk['clustering_accuracy']['ok'] else 'MISMATCH'})"
           + ("; scored with the TRUE cluster's model (oracle), chosen = loss-based"
              if result["score_true"] else ""), ""]
  chosen = " | ".join(f"n m{c}" for c in range(c_n))
  accs = " | ".join(f"acc m{c}" for c in range(c_n))
  lines += [f"| rotation | clients | {chosen} | matched | acc chosen | best model "
            f"| acc best | {accs} |",
            "|" + "---|" * (6 + 2 * c_n)]
  for r, row in enumerate(result["rotation"]):
    counts = " | ".join(str(n) for n in row["chosen_counts"])
    accs = " | ".join(_pct(a) for a in row["model_accuracy"])
    lines.append(f"| {labels[r]} | {row['clients']} | {counts} | "
                 f"m{result['matched_model'][r]} | {_pct(row['accuracy_chosen'])} | "
                 f"m{row['best_model']} | {_pct(row['accuracy_best'])} | {accs} |")
  lines += ["", f"overall: scored {_pct(result['accuracy'])}, chosen "
            f"{_pct(result['accuracy_chosen'])}, best model per rotation "
            f"{_pct(result['accuracy_best_per_rotation'])}; every model on all clients: "
            + ", ".join(f"m{c} {_pct(a)}" for c, a in
                        enumerate(result["model_accuracy_all"])), ""]
  return "\n".join(lines)


def summary_table(results) -> str:
  """One row per run: clustering, accuracy as scored, with the loss-based choice, with
  each rotation's best model, and the selection cost (best - chosen), in %."""
  lines = ["| run | clustering | accuracy | acc chosen | acc best model per rotation "
           "| selection cost | per rotation: best - chosen |", "|---|---|---|---|---|---|---|"]
  for r in results:
    name = "/".join(r["run_dir"].rstrip("/").split("/")[-3:])
    gaps = ", ".join(f"{100 * (row['accuracy_best'] - row['accuracy_chosen']):.1f}"
                     for row in r["rotation"])
    lines.append(
        f"| {name} | {_pct(r['clustering_accuracy'])} | {_pct(r['accuracy'])} | "
        f"{_pct(r['accuracy_chosen'])} | {_pct(r['accuracy_best_per_rotation'])} | "
        f"{100 * (r['accuracy_best_per_rotation'] - r['accuracy_chosen']):.1f} | "
        f"{gaps} |")
  return "\n".join(lines) + "\n"


def rotation_labels(data_dir: str, num_true: int):
  try:
    degs = read_json(os.path.join(data_dir, "manifest.json")).get("rotations_deg") or []
  except OSError:
    degs = []
  return [f"{d} deg" for d in degs] if len(degs) == num_true else None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("run_dirs", nargs="+")
  p.add_argument("--data_dir", required=True,
                 help="the prepared data the runs used (config.json does not record it)")
  p.add_argument("--split", default=None, help="val or test (default: the run's eval_split)")
  p.add_argument("--out", default=None, help="JSON output file")
  p.add_argument("--md", default=None, help="markdown output file (tables also printed)")
  a = p.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  populations, results, text = {}, [], []
  for run_dir in a.run_dirs:
    res = diagnose_run(run_dir, a.data_dir, a.split, populations,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    md = markdown(res, rotation_labels(a.data_dir, res["num_true_clusters"]))
    print(md, flush=True)
    results.append(res)
    text.append(md)
  table = summary_table(results)
  print(table, flush=True)
  text.insert(0, "## Summary (%)\n\n" + table)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump({"data_dir": os.path.abspath(a.data_dir), "runs": results}, f, indent=1)
  if a.md:
    with open(a.md, "w", encoding="utf-8") as f:
      f.write("\n".join(text))
  bad = [r["run_dir"] for r in results if r["checks"]["same_split_as_run"]
         and not (r["checks"]["accuracy"]["ok"] and r["checks"]["clustering_accuracy"]["ok"])]
  if bad:
    print(f"CHECK FAILED (recomputed accuracy != run's): {bad}", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  raise SystemExit(main())
