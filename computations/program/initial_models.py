"""Stage 1 at the server: the C cluster models stage 2 starts from.

PINA: sketches of M1 clients (local DP: clipped, top-k, Gaussian noise on the client)
and server k-means over them; the centroids are the clusters' LoRA offsets. PINA+RI,
IFCA and the oracle: random offsets (no privacy cost). Single-model baselines: one
shared start. Which one is the method table's `init`.
"""

from __future__ import annotations

import collections
import math
from typing import Callable

import numpy as np
import tensorflow as tf

from computations.learning import aggregators as agg
from computations.learning import learning_process as lp
from computations.learning import lloyd as lloyd_lib
from computations.learning import methods
from computations.learning import stage1 as stage1_lib
from computations.program import seeds
from pina_tff import method_table
from pina_tff import rng_streams
from pina_tff import stages
from pina_tff.clustering import dp_lloyd
from pina_tff.clustering import kmeans_init as kmeans_lib
from pina_tff.clustering import metrics as cluster_metrics
from pina_tff.clustering import public_basis as public_basis_lib
from pina_tff.errors import ConfigError
from pina_tff.models import reduced_tail as rt
from pina_tff.simulation import population as population_lib
from pina_tff.simulation import sampling as sampling_lib
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import sketching


def initial_models(plan, data, executions, head: dict, log: Callable[[str], None]):
  """The stage-2 start of ``plan``'s method.

  Args:
    plan: the run's `computations.program.plan.Plan`.
    data: the run's round data source (stage 1 reads its clients through it).
    executions: the run's `ExecutionLog` (the sketch pass is recorded before it runs).
    head: {'head_kernel', 'head_bias'}: the (warmed-up) head every model starts with.
    log: progress messages.

  Returns:
    ({parameter: float32 [C, ...]} in the model's order, k-means clustering accuracy,
    mean matched centroid cosine); both diagnostics NaN where stage 1 does not run or
    without diagnostics.
  """
  p = plan
  base = rt.init_trainable(p.pop.model.config, p.cfg.seed, head["head_kernel"],
                           head["head_bias"])
  init = {k: np.repeat(v[None], p.num_models, axis=0) for k, v in base.items()}
  offsets, acc, cosine = None, math.nan, math.nan
  method = method_table.get(p.cfg.method)
  if method.init == method_table.INIT_STAGE1 and p.cfg.stage1.centroids == "dp_lloyd":
    offsets, acc, cosine = lloyd_centroids(p, data, executions, base, log)
  elif method.init == method_table.INIT_STAGE1:
    offsets, acc, cosine = sketch_centroids(p, data, executions, base, log)
  elif method.init == method_table.INIT_RANDOM:
    offsets = random_offsets(p.cfg, p.pop.model.config.lora_size, p.num_models)
  if offsets is not None:
    delta = tm.unflatten(tf.constant(offsets, tf.float32), p.shapes, tm.LORA_KEYS,
                         lead_shape=(p.num_models,))
    for k in tm.LORA_KEYS:
      init[k] = init[k] + delta[k].numpy()
  weights = collections.OrderedDict((k, init[k].astype(np.float32)) for k in p.shapes)
  return weights, acc, cosine


def random_offsets(cfg, lora_size: int, num_models: int) -> np.ndarray:
  """Random LoRA offsets of the clusters: N(0, (S1/√P1)² I) rows, norm ≈ S1
  [project choice], from the run seed's RANDOM_INIT stream."""
  rng = rng_streams.generator(cfg.seed, rng_streams.RANDOM_INIT)
  scale = cfg.stage1.clip / math.sqrt(lora_size)
  return rng.normal(0, scale, (num_models, lora_size))


def _sketch_spec(cfg) -> local.LocalSpec:
  s1 = cfg.stage1
  return local.LocalSpec(num_clusters=1, local_epochs=s1.local_epochs,
                         batch_size=cfg.stage2.batch_size, learning_rate=s1.lr,
                         train_keys=tm.LORA_KEYS + (tm.HEAD_KEYS if s1.train_head
                                                    else ()),
                         send_keys=tm.LORA_KEYS)


def _sketcher(plan, data, base, ids):
  """(noise multiplier, public basis or None) -> the sketch computation's results over
  clients ``ids``. One set of client keys for every pass: the diagnostic pass must
  sketch the same local training (in secure mode each call would draw fresh keys)."""
  cfg, pop, s1 = plan.cfg, plan.pop, plan.cfg.stage1
  keys = seeds.client_keys(cfg.seed, stages.STAGE1, 0, ids, cfg.privacy.noise_mode)
  weights = lp.model_weights({k: v[None] for k, v in base.items()})

  def sketch_results(noise_multiplier: float, basis=None):
    comp = stage1_lib.build_sketch_computation(
        pop.model, _sketch_spec(cfg), top_k=s1.top_k, clip=s1.clip,
        noise_multiplier=noise_multiplier, shard_size=plan.layout1.shard_size,
        n_max=pop.n_max_train, reader=data.reader,
        noise_on_kept_only=s1.noise_positions == "released", basis=basis)
    return comp(weights, data.round_data(stages.STAGE1, 0, ids, keys))
  return sketch_results


def _public_parts(plan) -> list:
  """Pseudo-clients of the upright public split (server side, no privacy cost), as
  many examples each as the clients' mean, rounded."""
  cfg, pop = plan.cfg, plan.pop
  if pop.embeddings_dir is None:
    raise ConfigError("stage 1's public start and public basis need a population "
                      "loaded from embedded data with a public split; this one was "
                      "built in memory (use stage1.lloyd_start='random', "
                      "stage1.public_basis_dims=0).")
  per_client = max(1, int(round(np.mean([len(c["label"]) for c in pop.train]))))
  return population_lib.public_clients(pop.embeddings_dir, pop.model, per_client,
                                       cfg.seed)


def public_basis_of(plan, base) -> np.ndarray:
  """The public basis V [r, P1] (`stage1.public_basis_dims` = r): PCA of the raw LoRA
  changes of the public pseudo-clients (public data only: no privacy cost)."""
  cfg, s1 = plan.cfg, plan.cfg.stage1
  raw = sketching.public_sketches(plan.pop.model, _sketch_spec(cfg), base,
                                  _public_parts(plan), top_k=None, clip=s1.clip,
                                  seed=cfg.seed)
  return public_basis_lib.pca_basis(raw, s1.public_basis_dims)


def sketch_centroids(plan, data, executions, base, log: Callable[[str], None]):
  """Sketches over M1 clients + server k-means. Returns (centroids, k-means accuracy,
  mean matched centroid cosine; both NaN without diagnostics)."""
  cfg, pop, s1, z1 = plan.cfg, plan.pop, plan.cfg.stage1, plan.report.z1
  ids = sampling_lib.sketch_cohort(plan.cohort_key, pop.size, cfg.stage1_clients)
  sketch_results = _sketcher(plan, data, base, ids)
  basis = public_basis_of(plan, base) if s1.public_basis_dims else None
  noise_on = ("kept entries only: positions released outside epsilon"
              if s1.noise_positions == "released" else "every coordinate")
  shape = (f"top-k={s1.top_k}" if basis is None else
           f"{basis.shape[0]} coordinates in a public basis")
  log(f"stage 1: {cfg.stage1_clients} clients send sketches ({shape}, "
      f"clip={s1.clip}, z1={z1:.3f}, noise on {noise_on})")
  executions.start(stages.KEYS[stages.STAGE1], 1)
  results = sketch_results(z1, basis)
  sketches = stage1_lib.collect_sketches(results)
  if plan.diagnostics:
    log(f"stage 1: nonfinite_zeroed={stage1_lib.count_nonfinite(results)} "
        "sketch(es) had an inf/NaN entry and were sent as zeros + noise "
        "(simulation diagnostic)")
  centroids, labels = kmeans_lib.kmeans_init(
      sketches, cfg.num_clusters, cfg.seed, n_init=s1.kmeans_restarts,
      post_process_k=s1.top_k if s1.post_process and basis is None else None,
      spectral_dims=s1.spectral_dims)
  if basis is not None:
    centroids = public_basis_lib.lift(centroids, basis).astype(np.float32)
  if s1.centroid_norm_bound is not None:
    centroids = kmeans_lib.bound_centroid_norms(centroids, s1.centroid_norm_bound)
  if not plan.diagnostics:
    return centroids, math.nan, math.nan
  # Simulation-only diagnostic: the same clients' noise-free sketches (never sent).
  clean = (sketches if z1 == 0 and basis is None
           else stage1_lib.collect_sketches(sketch_results(0.0)))
  return (centroids,) + _init_diagnostics(pop.true_clusters[ids], labels, centroids,
                                          clean, log)


def _init_diagnostics(true, labels, centroids, clean, log) -> tuple:
  """(k-means clustering accuracy, mean matched cosine of the centroids to the true
  clusters' noise-free mean sketches); simulation-only."""
  acc = cluster_metrics.clustering_accuracy(labels, true)
  log(f"stage 1: k-means clustering accuracy on the sketching clients: {acc:.3f}")
  return acc, _centroid_cosine(true, centroids, clean, "the centroids", log)


def _centroid_cosine(true, centroids, clean, what: str, log) -> float:
  """Mean matched cosine of ``centroids`` to the true clusters' noise-free mean
  sketches (NaN when no cluster is known); logged per cluster. Simulation-only."""
  cosines = cluster_metrics.centroid_cosines(centroids, clean, true)
  cosine = float(np.nanmean(cosines)) if np.isfinite(cosines).any() else math.nan
  log(f"stage 1: cosine of {what} to the true clusters' noise-free mean sketches: "
      f"{np.round(cosines, 3).tolist()} (mean {cosine:.3f})")
  return cosine


def lloyd_start(plan, base) -> np.ndarray:
  """DP Lloyd's first centroids [C, P1] (no privacy cost): k-means of the server's
  sketches of public pseudo-clients (`stage1.lloyd_start='public'`) or the random
  offsets of PINA+RI ('random')."""
  cfg, s1 = plan.cfg, plan.cfg.stage1
  if s1.lloyd_start == "random":
    return random_offsets(cfg, plan.pop.model.config.lora_size, plan.num_models)
  x = sketching.public_sketches(plan.pop.model, _sketch_spec(cfg), base,
                                _public_parts(plan), top_k=s1.top_k, clip=s1.clip,
                                seed=cfg.seed)
  cents, _ = kmeans_lib.kmeans_init(x, plan.num_models, cfg.seed,
                                    n_init=s1.kmeans_restarts)
  return cents.astype(np.float64)


def _lloyd_client_data(plan, results, step: int) -> list:
  """Each TFF client's step input: its clipped sketches (kept at the clients), mask
  and distributed-DP key (run-seeded, or os.urandom in secure mode)."""
  cfg = plan.cfg
  keys = seeds.client_keys(cfg.seed, stages.STAGE1, step, range(len(results)),
                           cfg.privacy.noise_mode)
  return [collections.OrderedDict(sketch=np.asarray(r["sketch"], np.float32),
                                  client_mask=np.asarray(r["client_mask"], np.float32),
                                  key=keys[i]) for i, r in enumerate(results)]


def lloyd_centroids(plan, data, executions, base, log: Callable[[str], None]):
  """Stage 1 as DP Lloyd steps over a secure sum (labelled extension,
  `pina_tff.clustering.dp_lloyd`). Returns (centroids, NaN, mean matched cosine)."""
  cfg, pop, s1 = plan.cfg, plan.pop, plan.cfg.stage1
  ids = sampling_lib.sketch_cohort(plan.cohort_key, pop.size, cfg.stage1_clients)
  z_step = dp_lloyd.step_noise_multiplier(plan.report.z1, s1.lloyd_steps)
  log(f"stage 1 (DP Lloyd, labelled extension): {cfg.stage1_clients} clients keep their "
      f"sketches (top-k={s1.top_k}, clip={s1.clip}); {s1.lloyd_steps} steps over a secure "
      f"sum with z={z_step:.3f} each (the Gaussian(z1={plan.report.z1:.3f}) of stage 1; "
      f"no local DP), from {s1.lloyd_start} centroids")
  executions.start(stages.KEYS[stages.STAGE1], 1)
  results = _sketcher(plan, data, base, ids)(0.0)
  spec = methods.stage1_lloyd_aggregator(cfg, z_step=z_step,
                                         shard_size=plan.layout1.shard_size,
                                         num_shards=len(results),
                                         secure_sums=plan.secure_sums)
  step, state = lloyd_lib.build_lloyd_step(
      num_clusters=plan.num_models, sketch_size=pop.model.config.lora_size,
      shard_size=plan.layout1.shard_size, clip=s1.clip, aggregator=spec)
  cents = lloyd_start(plan, base)
  stream = rng_streams.DDP_ROTATION if spec.kind == "ddp" else rng_streams.CENTRAL_NOISE
  for l in range(1, s1.lloyd_steps + 1):
    if agg.has_noise_seed(spec):
      state = seeds.noise_seed(cfg, stages.STAGE1, l, stream)
    sums = step(state, cents.astype(np.float32), _lloyd_client_data(plan, results, l))
    cents, counts = dp_lloyd.centroids_from_sums(np.asarray(sums), cents, s1.clip,
                                                 dp_lloyd.min_count(z_step))
    log(f"stage 1: DP Lloyd step {l}: noisy counts {np.round(counts).astype(int).tolist()}")
  if not plan.diagnostics:
    return cents, math.nan, math.nan
  return cents, math.nan, _centroid_cosine(pop.true_clusters[ids], cents,
                                           stage1_lib.collect_sketches(results),
                                           "the DP Lloyd centroids", log)
