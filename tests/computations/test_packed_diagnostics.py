"""Issue 22 item 3: the client work's diagnostics travel as one packed float32 vector
(`client_work.DiagnosticsPacking`), one tensor per TFF client in TFF's runtime instead
of eight. The reference is the per-tensor sum (`packed_diagnostics=False`, what the
process did before); both must give the same state and the same measurements bit for
bit, with the same type signature.

* Process level, where the sums matter: C = 3 clusters chosen by loss (IFCA), three
  true clusters (a full confusion matrix), clipping that bites, uneven clients over
  three shards (one with padding slots), seeded distributed DP (the program's
  aggregator), three rounds.
* The program's own path (`program.run_simulation`, stage 0 + stage 1 + stage 2 with
  seeded DDP at epsilon 8): every metrics.csv value equals the reference run's.
* The packed process really sums one vector (else the test above compares a path
  with itself).
"""
import csv
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_federated.python.core.impl.compiler import building_blocks

from computations.learning import aggregators as agg
from computations.learning import client_work as cw
from computations.learning import learning_process as lp
from computations.runtime import context
from pina_tff import config as config_lib
from pina_tff.training import local
from pina_tff.training import models as tm
from tests.computations import _fl_helpers as fl

DIM, K, C, S, N_MAX = 5, 3, 3, 4, 6


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _spec(packed: bool) -> lp.ProcessSpec:
  return lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=C, batch_size=4, learning_rate=0.5,
                            clip_norm=0.3, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS, choose_cluster=True,
                            num_true_clusters=3),
      aggregator=agg.AggregatorSpec(kind="ddp", noise_multiplier=0.5, clip_norm=0.3,
                                    expected_clients=10, shard_size=S, num_shards=3,
                                    seeded_ddp=True, secure_sums=True),
      shard_size=S, n_max=N_MAX, server_learning_rate=0.9, server_momentum=0.5,
      scaling_mode="pina", warm_rounds=1, packed_diagnostics=packed)


def _flat(x):
  return [np.asarray(v) for v in tf.nest.flatten(x)]


def _trajectory(process, params, data, rounds=3):
  state = process.set_model_weights(process.initialize(), lp.model_weights(params))
  out = []
  for r in range(rounds):
    state = agg.with_noise_seed(state, agg.derived_seed(5, 2, r))
    step = process.next(state, data)
    state = step.state
    out.append((_flat(step.state), step.metrics))
  return out


def test_packed_diagnostics_equal_the_per_tensor_sums_bit_for_bit(tff_ctx):
  model = tm.LinearModel(DIM, K)
  clients = fl.make_clients([6, 2, 5, 1, 6, 3, 4, 6, 2, 5], dim=DIM, num_classes=K,
                            seed=3, true_clusters=[0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
  data = fl.pack(clients, model, N_MAX, S)
  rng = np.random.default_rng(1)
  params = {"head_kernel": rng.normal(size=(C, DIM, K)).astype(np.float32),
            "head_bias": rng.normal(size=(C, K)).astype(np.float32)}
  new = lp.build_process(model, _spec(True))
  ref = lp.build_process(model, _spec(False))
  assert new.next.type_signature == ref.next.type_signature
  got, want = _trajectory(new, params, data), _trajectory(ref, params, data)
  for (s_new, m_new), (s_ref, m_ref) in zip(got, want):
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(s_new, s_ref))
    d_new, d_ref = m_new["client_work"], m_ref["client_work"]
    assert list(d_new) == list(d_ref)
    for k in d_ref:
      assert np.asarray(d_new[k]).shape == np.asarray(d_ref[k]).shape, k
      np.testing.assert_array_equal(d_new[k], d_ref[k], err_msg=k)
    assert all(np.array_equal(a, b) for a, b in zip(_flat(m_new), _flat(m_ref)))
  # The setting exercises every diagnostic: all clusters chosen over the rounds,
  # a confusion matrix with off-diagonal mass, clipped clients.
  last = got[-1][1]["client_work"]
  assert float(np.sum(last["num_clients"])) == 10.0
  assert float(np.sum(last["num_clipped"])) > 0
  assert np.count_nonzero(last["confusion"]) > 3


def test_the_packed_client_work_sums_one_float32_vector(tff_ctx):
  model = tm.LinearModel(DIM, K)
  work = cw.build_shard_client_work(model, _spec(True).local, shard_size=S, n_max=N_MAX)
  ref = cw.build_shard_client_work(model, _spec(False).local, shard_size=S, n_max=N_MAX,
                                   packed_diagnostics=False)
  assert work.next.type_signature == ref.next.type_signature
  sums = []
  stack = [work.next.to_building_block()]
  while stack:
    node = stack.pop()
    if isinstance(node, building_blocks.Intrinsic) and node.uri == "federated_sum":
      sums.append(node.type_signature.parameter.member)
    stack.extend(node.children())
  total = C + C * 3 + 6
  assert [str(t) for t in sums] == [f"float32[{total}]"]


def test_packing_refuses_a_non_float32_diagnostic():
  packing = cw.DiagnosticsPacking()
  with pytest.raises(TypeError, match="float32"):
    packing.pack({"count": tf.constant([1, 2], tf.int32)})


def _rows(path):
  with open(path, newline="") as f:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]


def _program_cfg():
  """A small DP run of PINA (as tests/computations/test_program.py's): stages 0-2,
  seeded distributed DP at epsilon 8, C = 3, clipping in every stage."""
  return config_lib.RunConfig(
      method="pina", num_clusters=C, population=24, seed=0, model_width=64,
      privacy=config_lib.PrivacyConfig(epsilon=8.0),
      stage0=config_lib.Stage0Config(enabled=True, rounds=1, cohort=8, lr=0.1, clip=0.7),
      stage1=config_lib.Stage1Config(num_sketch_clients=20, local_epochs=1, lr=0.5,
                                     top_k=8, clip=0.6, kmeans_restarts=2),
      stage2=config_lib.Stage2Config(
          rounds=2, cohort=10, batch_size=16, client_lr=0.3, clip=0.4, server_lr=0.8,
          server_momentum=0.5, warm_rounds=1, scaling="pina", aggregator="ddp"))


def test_program_metrics_equal_the_per_tensor_reference(digits_clients_dir, tff_ctx,
                                                        tmp_path, monkeypatch):
  from computations.program import program  # pylint: disable=g-import-not-at-top
  cfg = _program_cfg()
  opts = program.ProgramOptions(shard_size=5, checkpoint_every=1, progress="none")
  real_build = lp.build_process
  built = []

  def reference_build(model, spec, **kw):
    built.append(spec.packed_diagnostics)
    return real_build(model, dataclasses.replace(spec, packed_diagnostics=False), **kw)

  def spy_build(model, spec, **kw):
    built.append(spec.packed_diagnostics)
    return real_build(model, spec, **kw)

  runs = {}
  for name, build in (("packed", spy_build), ("reference", reference_build)):
    monkeypatch.setattr(lp, "build_process", build)
    root = tmp_path / name
    runs[name] = program.run_simulation(cfg, digits_clients_dir, str(root), opts,
                                        log=lambda m: None)
    runs[name + "_rows"] = _rows(root / "metrics.csv")
  assert built == [True, True, True, True]  # stage 0 and stage 2 of each run
  assert runs["packed_rows"] == runs["reference_rows"]
  # The diagnostics reach metrics.csv (train_loss = loss_sum / num_clients, count_c).
  last = runs["packed_rows"][-1]
  assert math.isfinite(float(last["train_loss"]))
  assert sum(float(last[f"count_{c}"]) for c in range(C)) > 0
  for key in ("final_accuracy", "clustering_accuracy", "epsilon_achieved"):
    a, b = runs["packed"][key], runs["reference"][key]
    assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), key


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
