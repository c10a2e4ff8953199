"""One TFF client per simulated client vs shards of 4, through the composed TFF process:
with noise off, the same cohort gives the same new cluster models (C = 2, loss-based
cluster choice, per-client clipping active)."""
import numpy as np
import pytest

from computations.learning import aggregators as agg
from computations.runtime import context
from computations.learning import learning_process as lp
from pina_tff.training import local
from pina_tff.training import models as tm
from tests.computations import _fl_helpers as h

DIM, K, C = 5, 3, 2
SIZES = [5, 7, 3, 6, 4, 8, 2, 5]
M = len(SIZES)
N_MAX = max(SIZES)
CLIP = 0.5


@pytest.fixture(scope="module", autouse=True)
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


@pytest.fixture(scope="module")
def setup():
  clients = h.make_clients(SIZES, DIM, K, seed=3, true_clusters=[i % C for i in range(M)])
  rng = np.random.default_rng(4)
  params = {"head_kernel": rng.normal(scale=1.0, size=(C, DIM, K)).astype(np.float32),
            "head_bias": rng.normal(scale=1.0, size=(C, K)).astype(np.float32)}
  return clients, params


def _run(setup, kind, shard_size, shuffle=True):
  clients, params = setup
  model = tm.LinearModel(DIM, K)
  spec = lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=C, local_epochs=2, batch_size=2,
                            learning_rate=0.5, clip_norm=CLIP, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS, choose_cluster=True, shuffle=shuffle,
                            num_true_clusters=C),
      aggregator=agg.AggregatorSpec(kind=kind, noise_multiplier=0.0, clip_norm=CLIP,
                                    expected_clients=M, shard_size=shard_size,
                                    num_shards=-(-M // shard_size)),
      shard_size=shard_size, n_max=N_MAX, scaling_mode="none", server_learning_rate=1.0)
  process = lp.build_process(model, spec)
  data = h.pack(clients, model, N_MAX, shard_size)
  state = process.set_model_weights(process.initialize(), lp.model_weights(params))
  out = process.next(state, data)
  new = {k: np.asarray(v) for k, v in
         process.get_model_weights(out.state).trainable.items()}
  return new, out.metrics["client_work"]


def _delta(new, params):
  return np.concatenate([(new[k] - params[k]).reshape(C, -1) for k in sorted(params)], 1)


@pytest.mark.parametrize("kind,rtol,atol", [
    ("sum", 1e-5, 1e-6),
    # Distributed DP quantizes (randomized rounding after a random rotation):
    # compare the update u = new - old within 1e-3 of its norm.
    ("ddp", 1e-3, None)])
def test_shards_of_one_and_of_four_agree(setup, kind, rtol, atol):
  _, params = setup
  new1, diag1 = _run(setup, kind, 1)
  new4, diag4 = _run(setup, kind, 4)
  # Both cluster models moved and both were chosen: not a vacuous comparison.
  counts = np.asarray(diag1["cluster_counts"])
  assert counts.sum() == M and (counts > 0).all(), counts
  np.testing.assert_array_equal(counts, np.asarray(diag4["cluster_counts"]))
  assert float(diag1["num_clipped"]) > 0  # clipping is exercised
  d1, d4 = _delta(new1, params), _delta(new4, params)
  assert np.linalg.norm(d1) > 1e-2
  if atol is not None:
    for k in params:
      np.testing.assert_allclose(new4[k], new1[k], rtol=rtol, atol=atol)
  else:
    for c in range(C):
      err = np.linalg.norm(d4[c] - d1[c])
      assert err <= rtol * np.linalg.norm(d1[c]) + 1e-6, (c, err, np.linalg.norm(d1[c]))


def test_control_different_client_order_in_seeds_is_detected(setup):
  # Control: a real difference in the cohort (one client dropped) must be seen.
  clients, params = setup
  new1, _ = _run(setup, "sum", 1)
  new4, _ = _run((clients[:-1] + [h.make_clients([5], DIM, K, seed=99)[0]], params),
                 "sum", 4)
  assert max(np.abs(new1[k] - new4[k]).max() for k in params) > 1e-4


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
