"""Our FedAvg (the composed process with C = 1, no scaling) equals TFF's own
`tff.learning.algorithms.build_unweighted_fed_avg` on a keras linear model."""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from computations.learning import aggregators as agg
from computations.runtime import context
from computations.learning import learning_process as lp
from pina_tff.training import local
from pina_tff.training import models as tm
from tests.computations import _fl_helpers as h

DIM, K, B, LR, ROUNDS = 5, 3, 2, 0.3, 2
SIZES = [5, 7, 3, 6]
M = len(SIZES)
N_MAX = max(SIZES)


@pytest.fixture(scope="module", autouse=True)
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


@pytest.fixture(scope="module")
def setup():
  clients = h.make_clients(SIZES, DIM, K, seed=1)
  rng = np.random.default_rng(2)
  kernel = rng.normal(scale=0.5, size=(DIM, K)).astype(np.float32)
  bias = rng.normal(scale=0.5, size=(K,)).astype(np.float32)
  return clients, kernel, bias


def _keras_fedavg(clients, kernel, bias):
  input_spec = (tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None], tf.int32))

  def model_fn():
    keras_model = tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(DIM,)),
        tf.keras.layers.Dense(K, activation=None)])
    return tff.learning.models.from_keras_model(
        keras_model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=input_spec)

  process = tff.learning.algorithms.build_unweighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=LR),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0))
  state = process.initialize()
  state = process.set_model_weights(state, tff.learning.models.ModelWeights(
      trainable=[kernel, bias], non_trainable=[]))
  data = [tf.data.Dataset.from_tensor_slices((c["x"], c["label"])).batch(B)
          for c in clients]
  for _ in range(ROUNDS):
    state = process.next(state, data).state
  trainable = process.get_model_weights(state).trainable
  return np.asarray(trainable[0]), np.asarray(trainable[1])


def _ours(clients, kernel, bias, kind, shard_size, clip=1e6, lr=LR):
  model = tm.LinearModel(DIM, K)
  spec = lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=1, local_epochs=1, batch_size=B,
                            learning_rate=lr, clip_norm=1e6, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS, shuffle=False),
      aggregator=agg.AggregatorSpec(kind=kind, noise_multiplier=0.0, clip_norm=clip,
                                    expected_clients=M, shard_size=shard_size,
                                    num_shards=-(-M // shard_size)),
      shard_size=shard_size, n_max=N_MAX, scaling_mode="none",
      server_learning_rate=1.0)
  process = lp.build_process(model, spec)
  data = h.pack(clients, model, N_MAX, shard_size)
  out = h.run_rounds(process, {"head_kernel": kernel[None], "head_bias": bias[None]},
                     data, ROUNDS)
  return out["head_kernel"][0], out["head_bias"][0]


@pytest.fixture(scope="module")
def reference(setup):
  return _keras_fedavg(*setup)


@pytest.mark.parametrize("kind,shard_size,clip", [
    ("sum", 1, 1e6), ("sum", M, 1e6),
    # Secure sum quantizes in [-S*clip, S*clip]: a moderate bound keeps it exact-ish.
    ("secure_sum", 1, 10.0), ("secure_sum", M, 10.0)])
def test_matches_tff_unweighted_fedavg(setup, reference, kind, shard_size, clip):
  clients, kernel, bias = setup
  ref_kernel, ref_bias = reference
  # The reference moved: the comparison is not vacuous.
  assert np.abs(ref_kernel - kernel).max() > 1e-2
  got_kernel, got_bias = _ours(clients, kernel, bias, kind, shard_size, clip)
  np.testing.assert_allclose(got_kernel, ref_kernel, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got_bias, ref_bias, atol=1e-5, rtol=0)


def test_detects_a_different_learning_rate(setup, reference):
  # Control: a different client learning rate must not match.
  clients, kernel, bias = setup
  got_kernel, _ = _ours(clients, kernel, bias, "sum", 1, lr=LR * 1.1)
  assert np.abs(got_kernel - reference[0]).max() > 1e-4


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
