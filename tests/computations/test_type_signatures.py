"""Type-level privacy checks of the composed processes (no computation is executed).

Stage 2 (and stage 0) with a secure-sum aggregator must move client values to the
server *only* through secure-sum intrinsics when simulation diagnostics are off;
stage-1 sketches leave the devices in the clear and the type signature says so.
"""
import numpy as np
import pytest
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.compiler import building_blocks

from computations.learning import aggregators as agg
from computations.runtime import context
from computations.learning import learning_process as lp
from computations.learning import seeded_ddp
from computations.learning import stage1
from pina_tff.models import reduced_tail as rt
from pina_tff.training import local
from pina_tff.training import models as tm

SECURE = {"federated_secure_sum_bitwidth", "federated_secure_modular_sum",
          "federated_secure_sum"}
CLEAR = {"federated_sum", "federated_aggregate", "federated_mean",
         "federated_weighted_mean", "federated_reduce"}

M, SHARD, N_MAX, C = 4, 1, 4, 2


def _placements(type_spec):
  """Placements of every FederatedType inside `type_spec`."""
  found = set()

  def visit(t):
    if isinstance(t, tff.FederatedType):
      found.add(t.placement)
    elif isinstance(t, tff.StructType):
      for member in t:
        visit(member)
    elif isinstance(t, tff.FunctionType):
      if t.parameter is not None:
        visit(t.parameter)
      visit(t.result)

  visit(type_spec)
  return found


def _intrinsics(comp):
  """URIs of every intrinsic in the computation's building block (recursively)."""
  uris = {}
  stack = [comp.to_building_block()]
  while stack:
    node = stack.pop()
    if isinstance(node, building_blocks.Intrinsic):
      uris.setdefault(node.uri, node.type_signature)
    stack.extend(node.children())
  return uris


def _clients_to_server(comp):
  """Intrinsics whose argument has a CLIENTS value and whose result is at SERVER."""
  out = set()
  for uri, sig in _intrinsics(comp).items():
    if not isinstance(sig, tff.FunctionType) or sig.parameter is None:
      continue
    if (tff.CLIENTS in _placements(sig.parameter)
        and _placements(sig.result) == {tff.SERVER}):
      out.add(uri)
  return out


def _process(kind, diagnostics=False, shard_size=SHARD, seeded=False):
  model = tm.LinearModel(5, 3)
  spec = lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=C, choose_cluster=True, batch_size=2,
                            clip_norm=1.0, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS),
      aggregator=agg.AggregatorSpec(kind=kind, noise_multiplier=1.0, clip_norm=1.0,
                                    expected_clients=M, shard_size=shard_size,
                                    num_shards=-(-M // shard_size), seeded_ddp=seeded),
      shard_size=shard_size, n_max=N_MAX, simulation_diagnostics=diagnostics)
  return lp.build_process(model, spec)


@pytest.fixture(scope="module", autouse=True)
def tff_ctx():
  # Nothing here executes a computation, but building one must not leave a worker.
  with context.tff_context() as ctx:
    yield ctx


@pytest.fixture(scope="module")
def ddp_process():
  return _process("ddp")


def test_ddp_next_reaches_server_only_through_secure_sums(ddp_process):
  used = _clients_to_server(ddp_process.next)
  assert used, "no CLIENTS->SERVER intrinsic found: the traversal is broken"
  assert used <= SECURE, f"clear aggregation reaches the server: {used - SECURE}"
  assert not used & CLEAR
  # And no clear aggregation anywhere in the computation.
  assert not set(_intrinsics(ddp_process.next)) & CLEAR


def test_seeded_ddp_reaches_server_only_through_the_secure_modular_sum():
  """The program's distributed DP (computations.learning.seeded_ddp): the only CLIENTS->SERVER
  movement is one federated_secure_modular_sum of the encoded int64 vector; the
  client work's update weight (each shard's int64[2] key) never leaves the clients."""
  process = _process("ddp", seeded=True)
  assert _clients_to_server(process.next) == {"federated_secure_modular_sum"}
  assert not set(_intrinsics(process.next)) & CLEAR
  spec = agg.AggregatorSpec(kind="ddp", noise_multiplier=1.0, clip_norm=1.0,
                            expected_clients=M, num_shards=M, seeded_ddp=True)
  value_type = tff.TensorType(np.float32, (C, 5, 3))
  aggregator = agg.build_cslot_aggregator(spec).create(value_type, seeded_ddp.KEY_TYPE)
  sig = aggregator.next.type_signature
  assert sig.parameter[2] == tff.FederatedType(seeded_ddp.KEY_TYPE, tff.CLIENTS)
  assert sig.result.result == tff.FederatedType(value_type, tff.SERVER)
  found = _intrinsics(aggregator.next)
  assert _clients_to_server(aggregator.next) == {"federated_secure_modular_sum"}
  summand = found["federated_secure_modular_sum"].parameter[0]
  assert summand == tff.FederatedType(tff.TensorType(np.int64, (32,)), tff.CLIENTS)


def test_seeded_ddp_without_secure_sums_uses_one_plain_int64_sum():
  """Where secure sums cannot run (several services, native runtime) the same
  encoded int64 vector goes through federated_sum: the check sees it."""
  spec = agg.AggregatorSpec(kind="ddp", noise_multiplier=1.0, clip_norm=1.0,
                            expected_clients=M, num_shards=M, seeded_ddp=True)
  proc = seeded_ddp.SeededDdpSumFactory(spec, secure_sum=False).create(
      tff.TensorType(np.float32, (30,)), seeded_ddp.KEY_TYPE)
  assert _clients_to_server(proc.next) == {"federated_sum"}
  summand = _intrinsics(proc.next)["federated_sum"].parameter
  assert summand == tff.FederatedType(tff.TensorType(np.int64, (32,)), tff.CLIENTS)


@pytest.mark.parametrize("kind", ["secure_sum"])
def test_secure_sum_without_noise_is_secure_too(kind):
  used = _clients_to_server(_process(kind).next)
  assert used and used <= SECURE, used


def test_negative_control_plain_sum_is_detected():
  used = _clients_to_server(_process("sum").next)
  assert "federated_sum" in used
  assert not used <= SECURE


def test_negative_control_diagnostics_use_federated_sum():
  # Simulation diagnostics are summed in the clear: the check must see them.
  used = _clients_to_server(_process("ddp", diagnostics=True).next)
  assert "federated_sum" in used


def test_next_type_signature_placements(ddp_process):
  sig = ddp_process.next.type_signature
  param = sig.parameter
  assert len(param) == 2
  state_t, data_t = param[0], param[1]
  assert isinstance(state_t, tff.FederatedType) and state_t.placement is tff.SERVER
  assert isinstance(data_t, tff.FederatedType) and data_t.placement is tff.CLIENTS
  assert not data_t.all_equal
  assert isinstance(data_t.member, tff.SequenceType)
  assert data_t.member.element.label.shape == (SHARD, N_MAX)
  assert sig.result.state.placement is tff.SERVER
  assert sig.result.state.member == state_t.member
  assert sig.result.metrics.placement is tff.SERVER
  weights = state_t.member.global_model_weights.trainable
  assert weights.head_kernel.shape == (C, 5, 3)
  assert weights.head_bias.shape == (C, 3)


def _tiny_vit_model():
  cfg = rt.TailConfig(width=8, num_heads=2, mlp_dim=16, num_classes=3, lora_rank=1)
  rng = np.random.default_rng(0)
  frozen = {k: rng.standard_normal(s).astype(np.float32)
            for k, s in cfg.frozen_shapes().items()}
  return cfg, tm.ViTTailModel(cfg, frozen)


def test_stage1_sketches_leave_devices_in_the_clear():
  cfg, model = _tiny_vit_model()
  shard_size, n_max = 3, 4
  spec = local.LocalSpec(num_clusters=1, batch_size=2, train_keys=tm.LORA_KEYS + tm.HEAD_KEYS,
                         send_keys=tm.LORA_KEYS)
  comp = stage1.build_sketch_computation(model, spec, top_k=2, clip=1.0,
                                         noise_multiplier=1.0, shard_size=shard_size,
                                         n_max=n_max)
  sig = comp.type_signature
  weights_t, data_t = sig.parameter[0], sig.parameter[1]
  assert weights_t.placement is tff.SERVER
  assert data_t.placement is tff.CLIENTS and isinstance(data_t.member, tff.SequenceType)
  result = sig.result
  assert isinstance(result, tff.FederatedType)
  assert result.placement is tff.CLIENTS and not result.all_equal
  p1 = cfg.lora_size
  assert result.member.sketch == tff.TensorType(np.float32, (shard_size, p1))
  assert str(result.member.sketch) + "@CLIENTS" == f"float32[{shard_size},{p1}]@CLIENTS"
  # Nothing is aggregated at the server in stage 1.
  assert not _clients_to_server(comp)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
