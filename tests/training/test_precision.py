"""Client-work precision: float32 unchanged bit for bit, bfloat16 where it is safe.

References: the float32 golden file written by the client work before the precision
option existed (`precision_cases`, commit 6de9958), float64 norms computed in numpy,
and the float32 run of the same shard.
"""
import dataclasses
import types

import numpy as np
import pytest
import tensorflow as tf

from pina_tff.privacy import norm_bound
from pina_tff import config as config_lib
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import precision
from tests.training import precision_cases as pc

#: bfloat16 updates are compared with float32 ones: max |Δbf16 − Δf32| at most this
#: fraction of max |Δf32| (bfloat16 keeps 8 significant bits, ~0.4 % per rounding;
#: measured 0.5-0.9 % on these shards; a wrong result is O(100 %)).
BF16_REL_TOL = 0.03


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("name", sorted(pc.SPECS))
def test_float32_is_the_golden_bit_for_bit(name, graph):
  """float32 client work equals the golden (the code before the precision option),
  bit for bit where no client is clipped, and up to the exact-bound correction where
  clients are."""
  golden = np.load(pc.GOLDEN)
  key = f"{name}/{'graph' if graph else 'eager'}"
  update, diag = pc.run_case(name, graph=graph, compute_dtype="float32")
  want = golden[f"{key}/update"]
  if str(golden["cpu_signature"]) != pc.cpu_signature():
    # Another CPU / TF build: kernels may round differently.
    np.testing.assert_allclose(update, want, rtol=1e-5, atol=1e-7)
    return
  for k, v in diag.items():
    np.testing.assert_array_equal(v, golden[f"{key}/{k}"], err_msg=k)
  if golden[f"{key}/num_clipped"] == 0:
    np.testing.assert_array_equal(update, want)
  else:
    # The golden predates `enforce_norm_bound`: the rows its float32 scaling left an
    # ulp above the clip are now one (1 - 2^-20) step smaller, nothing else changed.
    assert not np.array_equal(update, want)
    np.testing.assert_allclose(update, want, rtol=0,
                               atol=2.0**-19 * np.abs(want).max() * len(pc.tail_shard()["mask"]))


def _one_slot_per_client(num_clients=24, seed=11):
  """Oracle placement with C = S and client i in cluster i: slot i of the update sum is
  client i's clipped delta on its own (x·1 + zeros is exact)."""
  shard = pc.tail_shard(num_clients=num_clients, n=7, seed=seed)
  shard["true_cluster"][:num_clients] = np.arange(num_clients)
  base = pc.cluster_params(1)
  params = {k: np.repeat(v, num_clients, 0) for k, v in base.items()}
  return shard, params


def _slots(spec, shard, params):
  fn = tf.function(lambda: local.shard_update(pc.tail_model(), spec, params, shard))
  update, diag = fn()
  return update.numpy(), {k: v.numpy() for k, v in diag.items()}


@pytest.mark.parametrize("clip", [1e-3, 0.03, 0.1])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_clipped_norm_bound_holds_exactly(clip, dtype):
  shard, params = _one_slot_per_client()
  s = len(params["lora_a"])
  spec = local.LocalSpec(num_clusters=s, local_epochs=2, batch_size=3, learning_rate=0.5,
                         clip_norm=clip, true_cluster=True, num_true_clusters=s,
                         fedprox_mu=0.1, compute_dtype=dtype)
  slots, diag = _slots(spec, shard, params)
  assert slots.dtype == np.float32
  assert diag["num_clipped"] == s  # every client clipped: the bound is tight
  norms32 = tf.norm(tf.constant(slots), axis=-1).numpy()
  norms64 = np.linalg.norm(slots.astype(np.float64), axis=-1)
  assert (norms32 <= np.float32(clip)).all(), norms32.max() - np.float32(clip)
  assert (norms64 <= float(np.float32(clip))).all(), norms64.max() - float(np.float32(clip))
  assert (norms64 > 0.999 * clip).all()  # and it was clipped to the bound, not below
  if dtype == "bfloat16":  # it did train in bfloat16: the float32 run differs
    slots32, _ = _slots(dataclasses.replace(spec, compute_dtype="float32"), shard, params)
    assert not np.array_equal(slots, slots32)


def test_enforce_norm_bound_fixes_only_rows_over_the_bound():
  rng = np.random.default_rng(0)
  bound = 0.05
  raw = rng.standard_normal((400, 300)).astype(np.float32)
  # The float32 scaling to the bound (what clip_rows did before the correction), and
  # rows well inside the bound.
  norms = np.linalg.norm(raw, axis=-1, keepdims=True).astype(np.float32)
  scaled = raw * (np.float32(bound) / norms)
  rows = np.concatenate([scaled, 0.5 * scaled]).astype(np.float32)
  out = norm_bound.enforce_norm_bound(tf.constant(rows), bound).numpy()
  n64_in = np.linalg.norm(rows.astype(np.float64), axis=-1)
  n32_in = tf.norm(tf.constant(rows), axis=-1).numpy()
  over = (n64_in > float(np.float32(bound))) | (n32_in > np.float32(bound))
  assert 0 < over.sum() < len(rows)  # the float32 scaling does overshoot, sometimes
  np.testing.assert_array_equal(out[~over], rows[~over])  # bit for bit
  n64_out = np.linalg.norm(out.astype(np.float64), axis=-1)
  assert (n64_out <= float(np.float32(bound))).all()
  assert (tf.norm(tf.constant(out), axis=-1).numpy() <= np.float32(bound)).all()
  # Corrected rows lost at most two shrink steps (about 2e-6 relative).
  ratio = n64_out[over] / n64_in[over]
  assert (ratio >= (1 - 2.0**-20)**2 * (1 - 1e-7)).all() and (ratio < 1).all()


@pytest.mark.parametrize("name", sorted(pc.SPECS))
def test_bfloat16_update_is_close_to_float32(name):
  u32, d32 = pc.run_case(name, graph=True, compute_dtype="float32")
  u16, d16 = pc.run_case(name, graph=True, compute_dtype="bfloat16")
  assert u16.dtype == np.float32
  np.testing.assert_array_equal(d16["cluster_counts"], d32["cluster_counts"])
  err = np.abs(u16 - u32).max() / np.abs(u32).max()
  assert 0 < err <= BF16_REL_TOL, err
  np.testing.assert_allclose(d16["loss_sum"], d32["loss_sum"], rtol=0.02)


def test_bfloat16_per_client_deltas_close_before_clipping():
  """Without clipping, each client's delta (its own slot) is close to its float32
  delta, client by client."""
  shard, params = _one_slot_per_client(num_clients=8, seed=4)
  spec = local.LocalSpec(num_clusters=8, local_epochs=2, batch_size=3, learning_rate=0.5,
                         true_cluster=True, num_true_clusters=8)
  s32, _ = _slots(spec, shard, params)
  s16, _ = _slots(dataclasses.replace(spec, compute_dtype="bfloat16"), shard, params)
  errs = [np.linalg.norm(s16[i] - s32[i]) / np.linalg.norm(s32[i]) for i in range(8)]
  # Per client ||Δbf16 − Δf32|| / ||Δf32||: measured 0.4-5.4 % (a client of one
  # example whose 6 steps compound the rounding is the 5.4 %), mean 1-1.4 %.
  assert max(errs) <= 0.1, errs
  assert 0 < np.mean(errs) <= BF16_REL_TOL, errs


def test_bfloat16_graph_runs_the_tail_matmuls_in_bfloat16_and_clips_in_float32():
  spec = local.LocalSpec(**pc.SPECS["pina"], compute_dtype="bfloat16")
  model, params, shard = pc.tail_model(), pc.cluster_params(2), pc.tail_shard()
  graph = tf.function(lambda: local.shard_update(model, spec, params, shard)
                      ).get_concrete_function().graph

  def dtypes_of(op_type):
    return {op.get_attr("T") for op in graph.get_operations() if op.type == op_type}

  # The MLP's matmuls (inside the training loop's body and the cluster choice).
  einsum_types = set()
  for fn in [graph] + [graph._functions[k].graph for k in graph._functions]:  # pylint: disable=protected-access
    einsum_types |= {op.get_attr("T") for op in fn.get_operations() if op.type == "Einsum"}
  assert tf.bfloat16 in einsum_types
  # Norms and clipping: float32 (and the float64 check of the exact bound).
  assert tf.float32 in dtypes_of("Sqrt") and tf.bfloat16 not in dtypes_of("Sqrt")
  update, _ = tf.function(lambda: local.shard_update(model, spec, params, shard))()
  assert update.dtype == tf.float32


def test_local_train_returns_float32_master_weights():
  spec = local.LocalSpec(**pc.SPECS["pina"], compute_dtype="bfloat16")
  model = pc.tail_model()
  shard = pc.tail_shard()
  init = {k: tf.constant(np.repeat(v[:1], 8, 0)) for k, v in pc.cluster_params(2).items()}
  feats = {k: tf.constant(shard[k]) for k in model.feature_keys}
  final, _ = local.local_train(model, spec, init, feats, shard["label"], shard["mask"],
                               shard["seed"])
  for k, v in final.items():
    assert v.dtype == tf.float32, k
  # A bfloat16 round trip of the weights would put them on the bfloat16 grid.
  b = final["lora_b"].numpy()
  assert not np.array_equal(b, tf.cast(tf.cast(b, tf.bfloat16), tf.float32).numpy())


def test_local_spec_refuses_unresolved_precision():
  with pytest.raises(ValueError, match="compute_dtype"):
    local.LocalSpec(compute_dtype="auto")


def _cpuinfo(tmp_path, flags, key="flags"):
  path = tmp_path / "cpuinfo"
  path.write_text(f"processor\t: 0\nmodel name\t: X\n{key}\t\t: {' '.join(flags)}\n\n"
                  f"processor\t: 1\n{key}\t\t: {' '.join(flags)}\n")
  return str(path)


@pytest.mark.parametrize("flags,want", [
    (["fpu", "avx512f", "avx512_bf16"], "bfloat16"),
    (["fpu", "amx_bf16", "amx_tile"], "bfloat16"),
    (["fpu", "avx512f", "avx512_vnni"], "float32"),
    ([], "float32"),
])
def test_auto_reads_native_bfloat16_flags(tmp_path, flags, want):
  path = _cpuinfo(tmp_path, flags)
  got = precision.resolve("auto", cpuinfo=path)
  assert got.compute_dtype == want
  assert set(got.native_bf16_flags) == {f for f in flags if f.endswith("_bf16")}
  # Explicit choices are obeyed whatever the CPU.
  assert precision.resolve("float32", cpuinfo=path).compute_dtype == "float32"
  assert precision.resolve("bfloat16", cpuinfo=path).compute_dtype == "bfloat16"


def test_auto_without_cpuinfo_is_float32(tmp_path):
  assert precision.resolve("auto", cpuinfo=str(tmp_path / "absent")).compute_dtype == (
      "float32")
  with pytest.raises(ValueError, match="precision"):
    precision.resolve("fp16")


def test_config_and_flag_carry_the_precision(digits_clients_dir):
  """--precision reaches the resolved config (pina-simulate --print_config, in its own
  process: pipelines.simulate and pipelines.grid both define --preset, so one test
  process must not import both), the stage-2 spec and the summary record."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from computations.learning import methods  # pylint: disable=g-import-not-at-top
  from computations.program import summary  # pylint: disable=g-import-not-at-top
  assert config_lib.RunConfig().stage2.precision == "float32"
  with pytest.raises(config_lib.ConfigError, match="stage2.precision"):
    config_lib.validate(config_lib.RunConfig(
        stage2=config_lib.Stage2Config(precision="half")))
  out = subprocess.run(
      [sys.executable, "-m", "pipelines.simulate", f"--clients_dir={digits_clients_dir}",
       "--print_config", "--precision=bfloat16"], capture_output=True, text=True,
      timeout=300, check=True)
  cfg = config_lib.resolve(config_lib.from_dict(json.loads(out.stdout)))
  assert cfg.stage2.precision == "bfloat16"
  assert config_lib.from_dict(config_lib.to_dict(cfg)).stage2.precision == "bfloat16"
  spec2 = methods.stage2_spec(cfg, z2=1.0, shard_size=4, n_max=5, num_true_clusters=2)
  assert spec2.local.compute_dtype == "bfloat16"
  recorded = summary.client_precision(cfg, spec2)
  assert recorded["requested"] == "bfloat16" and recorded["compute_dtype"] == "bfloat16"
  auto = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, precision="auto"))
  spec_auto = methods.stage2_spec(auto, z2=1.0, shard_size=4, n_max=5, num_true_clusters=2)
  assert spec_auto.local.compute_dtype == precision.resolve("auto").compute_dtype
  f32 = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2,
                                                            precision="float32"))
  assert methods.stage2_spec(f32, z2=1.0, shard_size=4, n_max=5,
                             num_true_clusters=2).local.compute_dtype == "float32"


def test_linear_model_bfloat16_matches_float32_within_tolerance():
  rng = np.random.default_rng(0)
  model = tm.LinearModel(6, 3)
  from pina_tff.training import shards  # pylint: disable=g-import-not-at-top
  clients = [{"x": rng.standard_normal((5, 6)).astype(np.float32),
              "label": rng.integers(0, 3, 5).astype(np.int32)} for _ in range(4)]
  shard = shards.pack_shard(clients, model.feature_keys, n_max=5)
  params = {k: tf.constant(0.3 * rng.standard_normal((1,) + s), tf.float32)
            for k, s in model.param_shapes().items()}
  spec = local.LocalSpec(batch_size=2, learning_rate=0.5, train_keys=tm.HEAD_KEYS,
                         send_keys=tm.HEAD_KEYS)
  u32, _ = local.shard_update(model, spec, params, shard)
  u16, _ = local.shard_update(model, dataclasses.replace(spec, compute_dtype="bfloat16"),
                              params, shard)
  err = np.abs(u16.numpy() - u32.numpy()).max() / np.abs(u32.numpy()).max()
  assert 0 < err <= BF16_REL_TOL, err


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
