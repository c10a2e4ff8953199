"""computations.program.program end to end on the shared tiny digits population.

Settings where the wiring matters: server momentum 0.5, server lr 0.8, clip 0.4 (stage
2) / 0.7 (stage 0) / 0.6 (stage 1), PINA scaling with T_w = 3 warm rounds, so the
resume point (after stage-2 round 2) lies inside the warm phase and the resumed round
3 is the first normality-scaled one.

* An interrupted + resumed run (epsilon = inf, deterministic) matches an uninterrupted
  one exactly (metrics.csv rows, summary).
* A run stopped between checkpoints computes a round again when resumed; TensorBoard,
  like metrics.csv, then holds each step once.
* Stage-2 round 3 is recomputed independently from the interrupted run's checkpoint
  (weights and momentum after round 2): local training per client in plain TF
  (`pina_tff.training.local`), the sum / M in NumPy, the NumPy scaling reference, the
  server SGD-with-momentum step in NumPy; it must equal the program's final weights.
* The released scaling diagnostics obey the min-norm / normality relations exactly,
  on the right side of the warm boundary.
* A DP run: the noise multiplier each stage's computation is built with is the one the
  accountant calibrated for that stage, and the reported epsilon is the composition
  of exactly those mechanisms (computed here with the analytic Gaussian formula,
  tests/privacy/references.py).
"""
import csv
import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from computations.runtime import context
from computations.learning import learning_process as lp
from computations.program import evaluation
from computations.program import program
from computations.program import program_state
from computations.learning import stage1 as stage1_lib
from pina_tff import config as config_lib
from pina_tff.aggregation import scaling
from pina_tff.errors import ConfigError
from pina_tff.simulation import population as population_lib
from pina_tff.simulation import sampling
from pina_tff.training import local
from tests.privacy.references import worst_row_eps
from pina_tff.training import models as tm
from pina_tff.training import shards
from computations.program import initial_models
from computations.program import plan as plan_lib
from pina_tff import stages
from computations.program import seeds

T0, T2, WARM, STOP = 2, 3, 3, 2 + 2   # interrupted after stage-2 round 2
MOMENTUM, SERVER_LR, CLIP2, CLIP0, CLIP1 = 0.5, 0.8, 0.4, 0.7, 0.6
COHORT, C = 10, 3
SUMMARY_KEYS = {"method", "dataset", "epsilon_target", "epsilon_achieved", "delta",
                "noise_multipliers", "rounds", "final_accuracy", "clustering_accuracy",
                "wall_clock_s"}


@pytest.fixture(scope="module")
def tff_ctx():
  with context.tff_context() as ctx:
    yield ctx


def _cfg(method="pina", epsilon=math.inf, t0=T0, t2=T2, aggregator="central"):
  return config_lib.RunConfig(
      method=method, num_clusters=C, population=24, seed=0, model_width=64,
      privacy=config_lib.PrivacyConfig(epsilon=epsilon),
      stage0=config_lib.Stage0Config(enabled=True, rounds=t0, cohort=8, lr=0.1,
                                     clip=CLIP0),
      stage1=config_lib.Stage1Config(num_sketch_clients=20, local_epochs=1, lr=0.5,
                                     top_k=8, clip=CLIP1, kmeans_restarts=2),
      stage2=config_lib.Stage2Config(
          rounds=t2, cohort=COHORT, batch_size=16, client_lr=0.3, clip=CLIP2,
          server_lr=SERVER_LR, server_momentum=MOMENTUM, warm_rounds=WARM,
          scaling="pina", aggregator=aggregator))


def _opts(**kw):
  return program.ProgramOptions(shard_size=5, checkpoint_every=1, progress="none", **kw)


def _rows(root):
  with open(root / "metrics.csv", newline="") as f:
    return list(csv.DictReader(f))


def _load_state(root, pop, cfg):
  import asyncio  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  shapes = pop.model.param_shapes()
  template = program_state.state_template(shapes, C, tm.vector_size(shapes, tm.LORA_KEYS +
                                                               tm.HEAD_KEYS))
  manager = tff.program.FileProgramStateManager(str(root / "checkpoints"))
  state, _ = asyncio.run(manager.load_latest(template))
  return state


@pytest.fixture(scope="module")
def uninterrupted(digits_clients_dir, tff_ctx, tmp_path_factory):
  root = tmp_path_factory.mktemp("run_a")
  summary = program.run_simulation(_cfg(), digits_clients_dir, str(root), _opts(),
                                   log=lambda m: None)
  return root, summary


@pytest.fixture(scope="module")
def interrupted(digits_clients_dir, tff_ctx, tmp_path_factory):
  """(root, state after round STOP, summary after resuming, pop)."""
  root = tmp_path_factory.mktemp("run_b")
  partial = program.run_simulation(_cfg(), digits_clients_dir, str(root),
                                   _opts(stop_after_rounds=STOP), log=lambda m: None)
  assert partial == {"interrupted": True}
  assert not (root / "summary.json").exists()
  rows = _rows(root)
  pop = population_lib.load_population(digits_clients_dir, 1, 0)
  state = _load_state(root, pop, _cfg())
  assert (int(state["phase"]), int(state["round"])) == (stages.STAGE2, STOP - T0)
  summary = program.run_simulation(_cfg(), digits_clients_dir, str(root), _opts(),
                                   log=lambda m: None)
  return root, rows, state, summary, pop


def test_uninterrupted_run_writes_summary_and_one_row_per_round(uninterrupted):
  root, summary = uninterrupted
  on_disk = json.loads((root / "summary.json").read_text())
  assert SUMMARY_KEYS <= set(on_disk), SUMMARY_KEYS - set(on_disk)
  assert on_disk["method"] == "pina" and on_disk["dataset"] == "digits"
  assert on_disk["epsilon_target"] == "inf"
  assert on_disk["rounds"] == {"stage0": T0, "stage2": T2}
  assert on_disk["final_accuracy"] == summary["final_accuracy"]
  assert on_disk["aggregator"] == "central" and on_disk["scaling"] == "pina"
  rows = _rows(root)
  assert [int(r["key"]) for r in rows] == list(range(1, T0 + T2 + 1))
  assert [(int(r["stage"]), int(r["round"])) for r in rows] == (
      [(0, r) for r in range(1, T0 + 1)] + [(2, r) for r in range(1, T2 + 1)])
  # The last evaluated accuracy is the summary's, as a fraction of the test examples.
  assert float(rows[-1]["test_accuracy"]) == summary["final_accuracy"]


def test_interrupted_then_resumed_run_matches_exactly(uninterrupted, interrupted):
  root_a, summary_a = uninterrupted
  root_b, partial_rows, _, summary_b, _ = interrupted
  assert len(partial_rows) == STOP
  for key in ("final_accuracy", "clustering_accuracy", "init_clustering_accuracy"):
    assert summary_b[key] == summary_a[key], key
  rows_a, rows_b = _rows(root_a), _rows(root_b)
  assert [int(r["key"]) for r in rows_b] == list(range(1, T0 + T2 + 1))
  strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
  assert strip(rows_b) == strip(rows_a)


def test_resume_between_checkpoints_holds_each_tensorboard_step_once(
    digits_clients_dir, tff_ctx, tmp_path):
  """Stopped after stage-2 round 1 with checkpoints every 2 rounds: the resumed run
  computes round 1 again; TensorBoard, like metrics.csv, then holds each step once."""
  import glob  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  opts = lambda **kw: program.ProgramOptions(shard_size=5, checkpoint_every=2,
                                             progress="none", **kw)
  partial = program.run_simulation(_cfg(), digits_clients_dir, str(tmp_path),
                                   opts(stop_after_rounds=T0 + 1), log=lambda m: None)
  assert partial == {"interrupted": True}
  program.run_simulation(_cfg(), digits_clients_dir, str(tmp_path), opts(),
                         log=lambda m: None)
  assert [int(r["key"]) for r in _rows(tmp_path)] == list(range(1, T0 + T2 + 1))
  steps = {}
  for path in sorted(glob.glob(str(tmp_path / "tensorboard" / "*tfevents*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        steps.setdefault(v.tag, []).append(event.step)
  assert "test_accuracy" in steps
  for tag, got in steps.items():
    assert got == list(range(1, T0 + T2 + 1)), (tag, got)


def test_scaling_diagnostics_follow_the_warm_boundary(uninterrupted):
  root, _ = uninterrupted
  stage2 = [r for r in _rows(root) if r["stage"] == "2"]
  assert len(stage2) == T2
  several = set()  # sides of the warm boundary seen with >= 2 non-empty slots
  for r in stage2:
    t = int(r["round"])
    norms = np.array([float(r[f"norm_{c}"]) for c in range(C)])
    w = np.array([float(r[f"w_{c}"]) for c in range(C)])
    scale = np.array([float(r[f"scale_{c}"]) for c in range(C)])
    pos = norms > 0
    assert pos.sum() >= 1, r
    if pos.sum() >= 2:
      several.add(t < WARM)
    target = norms * scale
    if t < WARM:
      want = np.full(C, norms[pos].min())
    else:  # the default 'restore' rule without noise: every cluster to the fair share
      gain = _cfg().stage2.restore_max_gain      # mean norm over the C slots, gain <= G
      want = norms * np.clip(norms.sum() / C / np.where(pos, norms, 1.0), 1.0, gain)
    np.testing.assert_allclose(target[pos], want[pos], rtol=1e-4, err_msg=f"round {t}")
  assert several == {True, False}, "settings no longer exercise both sides"


def test_last_round_equals_an_independent_recomputation(uninterrupted, interrupted,
                                                        digits_clients_dir):
  root_a, _ = uninterrupted
  _, _, before, _, pop = interrupted
  cfg = _cfg()
  rnd = STOP - T0 + 1
  assert rnd == T2 and rnd >= WARM  # a normality-scaled round, momentum active
  weights = {k: np.asarray(v, np.float32) for k, v in before["weights"].items()}
  velocity = np.asarray(before["velocity"], np.float64)
  assert np.abs(velocity).max() > 0
  ids = sampling.cohort(cfg.seed, 2, rnd, pop.size, COHORT, cfg.privacy.sampling)
  keys = seeds.client_keys(cfg.seed, 2, rnd, ids)
  shard = shards.pack_shard([pop.train[i] for i in ids], pop.model.feature_keys,
                            pop.n_max_train, client_seeds=keys)
  spec = local.LocalSpec(num_clusters=C, local_epochs=1, batch_size=16,
                         learning_rate=0.3, clip_norm=CLIP2, choose_cluster=True,
                         num_true_clusters=pop.num_true_clusters)
  update_sum, diag = local.shard_update(pop.model, spec, weights, shard)
  assert float(diag["num_clipped"]) > 0  # the clip binds
  u = update_sum.numpy().astype(np.float64) / COHORT
  rule = scaling.NormalityRule(cfg.stage2.normality_rule, noise_std=0.0,  # eps = inf
                               max_gain=cfg.stage2.restore_max_gain)
  assert rule.name == "restore"
  scaled, _ = scaling.scale_cluster_aggregates_np(u, "pina", rnd, WARM, rule=rule)
  velocity = MOMENTUM * velocity + scaled
  keys = tm.LORA_KEYS + tm.HEAD_KEYS
  theta = np.concatenate([weights[k].reshape(C, -1) for k in keys], 1) + SERVER_LR * velocity
  final = _load_state(root_a, pop, cfg)
  got = np.concatenate([np.asarray(final["weights"][k]).reshape(C, -1) for k in keys], 1)
  np.testing.assert_allclose(np.asarray(final["velocity"]), velocity, rtol=2e-3,
                             atol=2e-5)
  np.testing.assert_allclose(got, theta, rtol=1e-4, atol=2e-5)
  # And the round did move the models (the check is not vacuous).
  before_flat = np.concatenate([weights[k].reshape(C, -1) for k in keys], 1)
  assert np.abs(got - before_flat).max() > 1e-3


def _composed_epsilon(cfg, z0, z1, z2, delta):
  """The run's mechanisms against the server (the default threat model), written from
  the privacy section of the spec: no amplification; each client's own number of
  stage-0 rounds K0 and stage-2 rounds K2 in the run's Poisson schedule, plus one
  Gaussian(z1) if it sent a sketch; epsilon = the worst client's composition."""
  p = cfg.population
  k0 = sampling.participation_counts(cfg.seed, 0, cfg.stage0.rounds, p, cfg.stage0.cohort)
  k2 = sampling.participation_counts(cfg.seed, 2, cfg.stage2.rounds, p, cfg.stage2.cohort)
  s1 = np.zeros(p, np.int64)
  if cfg.method == "pina":
    s1[sampling.sketch_cohort(cfg.seed, p, cfg.stage1.num_sketch_clients)] = 1
  # A composition of Gaussians is one Gaussian with mu = sqrt(sum K/z^2): its exact
  # epsilon (the analytic Gaussian mechanism), maximized over the clients.
  return worst_row_eps([(k0, z0), (s1, z1), (k2, z2)], delta)


def test_each_stage_is_built_with_its_own_calibrated_noise(digits_clients_dir, tff_ctx,
                                                           tmp_path, monkeypatch):
  built, sketches = [], []
  real_build, real_sketch = lp.build_process, stage1_lib.build_sketch_computation

  def spy_build(model, spec, **kw):
    built.append(spec)
    return real_build(model, spec, **kw)

  def spy_sketch(model, spec, **kw):
    sketches.append((kw["clip"], kw["noise_multiplier"]))
    return real_sketch(model, spec, **kw)

  monkeypatch.setattr(lp, "build_process", spy_build)
  monkeypatch.setattr(stage1_lib, "build_sketch_computation", spy_sketch)
  cfg = _cfg(epsilon=8.0, t0=1, t2=1, aggregator="ddp")
  summary = program.run_simulation(cfg, digits_clients_dir, str(tmp_path / "dp"),
                                   _opts(), log=lambda m: None)
  z = summary["noise_multipliers"]
  report = plan_lib.calibrate(config_lib.validate(cfg))
  assert z == {"z0": report.z0, "z1": report.z1, "z2": report.z2}
  assert len({z["z0"], z["z1"], z["z2"]}) == 3 and min(z.values()) > 0
  spec0, spec2 = built
  assert spec0.aggregator.noise_multiplier == z["z0"]
  assert spec0.aggregator.central_stddev == pytest.approx(z["z0"] * CLIP0)
  assert spec0.aggregator.kind == "ddp"
  # The released sketches carry z1; the second pass is the noise-free simulation
  # diagnostic of issue 18 (init_centroid_cosine), never sent anywhere.
  assert sketches == [(CLIP1, z["z1"]), (CLIP1, 0.0)]
  assert spec2.aggregator.noise_multiplier == z["z2"]
  assert spec2.aggregator.central_stddev == pytest.approx(z["z2"] * CLIP2)
  assert spec2.aggregator.expected_clients == COHORT
  eps = _composed_epsilon(cfg, z["z0"], z["z1"], z["z2"], summary["delta"])
  assert summary["epsilon_achieved"] == pytest.approx(eps, rel=1e-6)
  assert eps <= 8.0 + 1e-9
  # Calibrated under PLD (the default); the RDP epsilon of the same noise is beside it.
  assert summary["accountant"] == "pld"
  by_acc = summary["epsilon_achieved_by_accountant"]
  assert by_acc["pld"] == summary["epsilon_achieved"] < by_acc["rdp"]
  assert summary["epsilons_by_accountant"]["rdp"]["server"] == by_acc["rdp"]
  rows = _rows(tmp_path / "dp")
  assert float(rows[-1]["epsilon_spent"]) == pytest.approx(eps, rel=1e-6)
  assert math.isfinite(summary["final_accuracy"])


def test_dp_lloyd_stage1_costs_the_same_epsilon_without_local_dp(
    digits_clients_dir, tff_ctx, tmp_path, monkeypatch):
  """stage1.centroids='dp_lloyd' (labelled extension): one noise-free sketch pass (the
  sketches stay at the clients), L Lloyd steps through the stage-2 aggregator kind
  with z1·√L and clip √2·S1, the same server ε as the paper's stage 1 with the same
  z1, and no local ε1 in the summary."""
  from computations.learning import lloyd  # pylint: disable=g-import-not-at-top
  from pina_tff.clustering import dp_lloyd  # pylint: disable=g-import-not-at-top
  sketches, steps = [], []
  real_sketch, real_step = stage1_lib.build_sketch_computation, lloyd.build_lloyd_step

  def spy_sketch(model, spec, **kw):
    sketches.append(kw["noise_multiplier"])
    return real_sketch(model, spec, **kw)

  def spy_step(**kw):
    steps.append(kw["aggregator"])
    return real_step(**kw)

  monkeypatch.setattr(stage1_lib, "build_sketch_computation", spy_sketch)
  monkeypatch.setattr(lloyd, "build_lloyd_step", spy_step)
  base = _cfg(epsilon=8.0, t0=1, t2=1, aggregator="ddp")
  cfg = dataclasses.replace(base, stage1=dataclasses.replace(
      base.stage1, centroids="dp_lloyd", lloyd_steps=3, lloyd_start="public"))
  summary = program.run_simulation(cfg, digits_clients_dir, str(tmp_path / "dpl"),
                                   _opts(), log=lambda m: None)
  z1 = summary["noise_multipliers"]["z1"]
  assert z1 == plan_lib.calibrate(config_lib.validate(base)).z1 > 0
  assert sketches == [0.0]
  (spec,) = steps
  assert spec.kind == "ddp" and spec.noise_multiplier == pytest.approx(z1 * 3 ** 0.5)
  assert spec.clip_norm == pytest.approx(dp_lloyd.sensitivity(CLIP1))
  kmeans = plan_lib.calibrate(config_lib.validate(base))
  assert summary["epsilon_achieved"] == pytest.approx(kmeans.epsilon_achieved, rel=1e-9)
  assert summary["local_epsilon1"] is None
  assert "DP Lloyd" in summary["stage1_guarantee"]
  assert math.isfinite(summary["init_centroid_cosine"])
  with pytest.raises(ConfigError, match="lloyd_start='random'"):
    pop = population_lib.load_population(digits_clients_dir, 1, 0)
    pop = dataclasses.replace(pop, embeddings_dir=None)
    program.run_simulation(cfg, digits_clients_dir, str(tmp_path / "mem"), _opts(),
                           log=lambda m: None, population=pop)


def test_public_basis_sketches_send_r_coordinates_with_the_same_local_dp(
    digits_clients_dir, tff_ctx, tmp_path, monkeypatch):
  """stage1.public_basis_dims = r: the released pass sends r coordinates in a basis
  with orthonormal rows computed from the public split; the noise-free diagnostic
  pass is the paper's sketch (cosines comparable across variants); the same z1 and
  local ε1 as without the basis."""
  calls = []
  real_sketch = stage1_lib.build_sketch_computation

  def spy_sketch(model, spec, **kw):
    calls.append((kw["noise_multiplier"], kw["basis"]))
    return real_sketch(model, spec, **kw)

  monkeypatch.setattr(stage1_lib, "build_sketch_computation", spy_sketch)
  base = _cfg(epsilon=8.0, t0=1, t2=1, aggregator="ddp")
  cfg = dataclasses.replace(base, stage1=dataclasses.replace(base.stage1,
                                                             public_basis_dims=4))
  summary = program.run_simulation(cfg, digits_clients_dir, str(tmp_path / "pb"),
                                   _opts(), log=lambda m: None)
  (z_sent, v), (z_diag, v_diag) = calls
  assert z_sent == summary["noise_multipliers"]["z1"] > 0 and z_diag == 0.0
  assert v.shape == (4, 2 * 64) and v_diag is None
  np.testing.assert_allclose(v @ v.T, np.eye(4), atol=1e-9)
  plain = plan_lib.calibrate(config_lib.validate(base))
  assert summary["local_epsilon1"] == pytest.approx(plain.local_epsilon1, rel=1e-9)
  assert "public basis" in summary["stage1_guarantee"]
  assert math.isfinite(summary["init_centroid_cosine"])


# ------------------------------------------------------- the program's small pieces
def test_the_oracle_is_also_scored_with_the_loss_based_choice(digits_clients_dir, tff_ctx,
                                                             tmp_path, uninterrupted):
  """The oracle's summary gives its final models' accuracy both ways: with each
  client's true cluster's model (final_accuracy) and with the model its training loss
  picks (accuracy_with_loss_based_choice), each equal to the evaluator run here on the
  final checkpoint's models; other methods have no such field (None)."""
  pop = population_lib.load_population(digits_clients_dir, 1, 0)
  clusters = pop.num_true_clusters
  cfg = dataclasses.replace(_cfg(method="oracle", t0=0, t2=2), num_clusters=clusters)
  root = tmp_path / "oracle"
  summary = program.run_simulation(cfg, digits_clients_dir, str(root), _opts(),
                                   log=lambda m: None)
  import asyncio  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  shapes = pop.model.param_shapes()
  template = program_state.state_template(
      shapes, clusters, tm.vector_size(shapes, tm.LORA_KEYS + tm.HEAD_KEYS))
  state, _ = asyncio.run(tff.program.FileProgramStateManager(
      str(root / "checkpoints")).load_latest(template))
  params = {k: np.asarray(v) for k, v in state["weights"].items()}
  by_truth, _ = evaluation.Evaluator(pop, clusters, split=cfg.eval_split,
                                     score_true=True)(params)
  by_choice, _ = evaluation.Evaluator(pop, clusters, split=cfg.eval_split,
                                      score_true=False)(params)
  assert summary["final_accuracy"] == pytest.approx(by_truth, abs=1e-6)
  assert summary["accuracy_with_loss_based_choice"] == pytest.approx(by_choice, abs=1e-6)
  assert uninterrupted[1]["accuracy_with_loss_based_choice"] is None  # PINA


def test_client_seeds_are_128_bit_keys_distinct_per_stage_round_and_client():
  """'simulation' client keys: int64 [n, 2], the CLIENT_KEY stream of (seed, stage,
  round, client) (reference: SeedSequence built here by hand), all distinct."""
  keys = set()
  for stage in (0, 1, 2):
    for rnd in range(1, 30):
      got = seeds.client_keys(5, stage, rnd, [3, 4])
      assert got.dtype == np.int64 and got.shape == (2, 2)
      keys.update(tuple(r) for r in got.tolist())
  assert len(keys) == 3 * 29 * 2
  code = int.from_bytes(hashlib.sha256(b"client_key").digest()[:4], "little")
  words = np.random.SeedSequence(5, spawn_key=(code, 2, 7, 10)).generate_state(4, np.uint32)
  want = [int(words[0]) | int(words[1]) << 32, int(words[2]) | int(words[3]) << 32]
  got = seeds.client_keys(5, 2, 7, [9])
  assert got.view(np.uint64).tolist() == [want]


def test_random_init_offsets_have_norm_close_to_the_stage1_clip():
  """PINA+RI's random cluster offsets: N(0, (S1/sqrt(P1))^2 I) rows, norm ~ S1 (0.6)."""
  offsets = initial_models.random_offsets(_cfg(), 4096, 3)
  norms = np.linalg.norm(offsets, axis=1)
  np.testing.assert_allclose(norms, CLIP1, rtol=0.05)
  assert abs(float(offsets.mean())) < 5 * CLIP1 / 4096


def test_a_cohort_as_large_as_the_population_is_accepted(digits_clients_dir):
  """A cohort may be the whole population the data has (24 digits clients), not more
  (the config says 100 clients: the data decides)."""
  cfg = dataclasses.replace(_cfg(), population=100)
  whole = dataclasses.replace(
      cfg, stage0=dataclasses.replace(cfg.stage0, cohort=24),
      stage2=dataclasses.replace(cfg.stage2, cohort=24))
  assert plan_lib.config_for_population(whole, digits_clients_dir).stage2.cohort == 24
  for stage in ("stage0", "stage2"):
    over = dataclasses.replace(cfg, **{stage: dataclasses.replace(getattr(cfg, stage),
                                                                   cohort=25)})
    with pytest.raises(ConfigError, match=f"{stage}.cohort: expected at most the population of 24 clients"):
      plan_lib.config_for_population(over, digits_clients_dir)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
