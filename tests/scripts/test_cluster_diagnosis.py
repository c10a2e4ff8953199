"""scripts/cluster_diagnosis.py on a tiny synthetic population: the per-rotation tables
against a NumPy reference (loops over clients and models), the overall accuracy and
clustering against the program's own `Evaluator`."""
import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from computations.program import evaluation
from pina_tff.simulation import population as population_lib
from pina_tff.training import models as tm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "cluster_diagnosis", os.path.join(ROOT, "scripts", "cluster_diagnosis.py"))
cd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cd)

D, K, C, R, P = 5, 3, 3, 3, 24


def _clients(rng, sizes, true):
  return [{"x": rng.standard_normal((m, D)).astype(np.float32),
           "label": rng.integers(0, K, size=m).astype(np.int32), "true_cluster": int(t)}
          for m, t in zip(sizes, true)]


def _population(seed=0):
  rng = np.random.default_rng(seed)
  true = np.arange(P) % R
  train = _clients(rng, rng.integers(1, 8, size=P), true)
  val = _clients(rng, rng.integers(0, 6, size=P), true)   # some clients hold no val
  test = _clients(rng, rng.integers(1, 6, size=P), true)
  pop = population_lib.Population(
      dataset="synthetic", model=tm.LinearModel(D, K), head={}, train=train, test=test,
      val=val, true_clusters=true.astype(np.int64), num_true_clusters=R)
  weights = {k: (0.8 * rng.standard_normal((C,) + s)).astype(np.float32)
             for k, s in pop.model.param_shapes().items()}
  return pop, weights


def _reference(pop, weights):
  """(choice [P], correct [P, C], count [P]) by plain NumPy loops."""
  w, b = weights["head_kernel"].astype(np.float64), weights["head_bias"].astype(np.float64)
  choice, correct = [], np.zeros((P, C))
  for i, (tr, va) in enumerate(zip(pop.train, pop.val)):
    losses = []
    for c in range(C):
      z = tr["x"] @ w[c] + b[c]
      logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) \
          - z.max(1, keepdims=True)
      losses.append(-logp[np.arange(len(tr["label"])), tr["label"]].mean())
      correct[i, c] = ((va["x"] @ w[c] + b[c]).argmax(1) == va["label"]).sum()
    choice.append(int(np.argmin(losses)))
  return np.array(choice), correct, np.array([len(v["label"]) for v in pop.val], float)


@pytest.mark.parametrize("score_true", [False, True])
def test_tables_match_numpy_and_overall_matches_the_evaluator(score_true):
  pop, weights = _population()
  select, test = evaluation.packed_population(pop, "val")
  choice, correct, count = cd.client_table(pop.model, weights, select, test, chunk=7)
  ref_choice, ref_correct, ref_count = _reference(pop, weights)
  np.testing.assert_array_equal(choice, ref_choice)
  np.testing.assert_array_equal(correct, ref_correct)
  np.testing.assert_array_equal(count, ref_count)
  res = cd.diagnose(choice, correct, count, pop.true_clusters, R, score_true=score_true)
  true = pop.true_clusters
  for r in range(R):
    members = np.flatnonzero(true == r)
    row = res["rotation"][r]
    assert res["confusion"][r] == [int(sum(ref_choice[i] == c for i in members))
                                   for c in range(C)]
    n = ref_count[members].sum()
    per_model = [ref_correct[members, c].sum() / n for c in range(C)]
    np.testing.assert_allclose(row["model_accuracy"], per_model)
    assert row["best_model"] == int(np.argmax(per_model))
    np.testing.assert_allclose(row["accuracy_best"], max(per_model))
    np.testing.assert_allclose(
        row["accuracy_chosen"], sum(ref_correct[i, ref_choice[i]] for i in members) / n)
  acc, clus = evaluation.Evaluator(pop, C, split="val", score_true=score_true)(
      {k: tf.constant(v) for k, v in weights.items()})
  np.testing.assert_allclose(res["accuracy"], acc, atol=1e-12)
  np.testing.assert_allclose(res["clustering_accuracy"], clus, atol=1e-12)
  if score_true:  # the oracle: client i scored with model true[i]
    want = sum(ref_correct[i, true[i]] for i in range(P)) / ref_count.sum()
    np.testing.assert_allclose(res["accuracy"], want)
    assert res["accuracy_chosen"] != res["accuracy"]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
