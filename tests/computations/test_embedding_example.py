"""docs/embedding.md's example: our DP aggregator and normality finalizer inside TFF's
own FedAvg / compose_learning_process, with TFF's client work on a keras model.

References: TFF's own FedAvg with uniform client weighting and its default mean
aggregator (no noise, no clipping) must give the same model as our pieces at z = 0
with a clip that never binds and no scaling; the type signature keeps every client
value @CLIENTS and gives the server only the aggregate (secure sums only)."""
import re

import numpy as np
import pytest
import tensorflow_federated as tff

from computations.learning import aggregators as agg
from computations.runtime import context
from computations.examples import embed_example as ex

ROUNDS, CLIENTS = 2, 4


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _weights(process, outputs):
  w = process.get_model_weights(outputs[-1].state).trainable
  return np.concatenate([np.ravel(v) for v in w])


@pytest.fixture(scope="module")
def reference(tff_ctx):
  """TFF's FedAvg, uniform weighting, TFF's mean aggregator: the plain mean of Δ."""
  del tff_ctx
  process = tff.learning.algorithms.build_weighted_fed_avg(
      ex.keras_model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
      client_weighting=tff.learning.ClientWeighting.UNIFORM)
  return _weights(process, ex.run(process, ROUNDS, CLIENTS, log=lambda m: None))


def _noiseless():
  return ex.aggregator_spec("central", noise_multiplier=0.0, clip_norm=1e3,
                            cohort=CLIENTS)


def test_fed_avg_with_our_aggregator_is_tffs_mean_without_noise(tff_ctx, reference):
  del tff_ctx
  process = ex.build_fed_avg_with_cslot_aggregator(_noiseless())
  got = _weights(process, ex.run(process, ROUNDS, CLIENTS, log=lambda m: None))
  np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)


def test_composed_process_with_our_finalizer_is_fedavg_without_noise_or_scaling(
    tff_ctx, reference):
  del tff_ctx
  process = ex.build_composed_process(_noiseless(), scaling_mode="none")
  got = _weights(process, ex.run(process, ROUNDS, CLIENTS, log=lambda m: None))
  np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def noised(tff_ctx):
  """The composed process with central noise and PINA scaling."""
  del tff_ctx
  return ex.build_composed_process(
      ex.aggregator_spec("central", noise_multiplier=0.5, cohort=CLIENTS),
      scaling_mode="pina", warm_rounds=1)


def test_composed_process_runs_with_noise_and_normality_scaling(noised):
  process = noised
  outs = ex.run(process, ROUNDS, CLIENTS, log=lambda m: None)
  diag = outs[-1].metrics["finalizer"]
  assert int(diag["round"]) == ROUNDS
  assert 0.0 < float(diag["w"][0]) <= 1.0 and float(diag["norms"][0]) > 0.0
  assert np.isfinite(_weights(process, outs)).all()


def test_signature_places_client_values_at_clients_and_only_the_aggregate_at_server(
    noised):
  sig = noised.next.type_signature
  param, result = sig.parameter, sig.result
  assert param[0].placement is tff.SERVER and param[1].placement is tff.CLIENTS
  assert result.state.placement is tff.SERVER and result.metrics.placement is tff.SERVER
  # The distributed-DP aggregator: client updates in @CLIENTS, the noised mean out
  # @SERVER, and the only way client values reach the server is secure aggregation.
  work = tff.learning.templates.build_model_delta_client_work(
      ex.keras_model_fn, tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES)
  member = work.next.type_signature.result.result.member
  aggregator = agg.build_cslot_aggregator(ex.aggregator_spec("ddp", cohort=CLIENTS)
                                          ).create(member.update, member.update_weight)
  sig = aggregator.next.type_signature
  assert sig.parameter[1].placement is tff.CLIENTS
  assert sig.result.result.placement is tff.SERVER
  assert sig.result.result.member == member.update
  intrinsics = set(re.findall(r"federated_\w+", str(aggregator.next.to_building_block())))
  assert "federated_secure_sum_bitwidth" in intrinsics
  assert not intrinsics & {"federated_sum", "federated_collect", "federated_aggregate",
                           "federated_mean", "federated_weighted_mean"}


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
