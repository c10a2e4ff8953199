"""pina-bench: timing of the sharded TFF client work against stock TFF and plain TF.

Subcommands (first positional argument):

  head     the "head workload": N clients x 32 examples of 384-dim features, a 384->10
           linear model, 1 local epoch of batch 16 (2 SGD steps, lr 0.1), per-client L2
           clip 0.1, central Gaussian noise (multiplier 1.0), server SGD 1.0. Paths in
           one process, same data and initial weights (--paths):
             stock    tff.learning.algorithms.build_unweighted_fed_avg, keras linear model,
                      one TFF client per simulated client, DifferentiallyPrivateFactory.
                      gaussian_fixed (fixed clip 0.1, not dp_aggregator's adaptive clip);
             sharded / sharded_file / sharded_program
                      computations.learning.learning_process.build_process (S simulated clients
                      per TFF client, AggregatorSpec kind 'central'), shards inline, in
                      files written once, or packed and written every round (what
                      pina-simulate did before issue 11);
             resident the same process reading a resident population: laid out once,
                      every round ships row numbers, shards gathered inside the client
                      computation (computations.data.resident_data; what pina-simulate does);
             plain    the same arithmetic as one tf.function, vectorized over clients;
             pfl      pfl-research in its own venv (benchmarks/run_pfl.sh makes it;
                      $PFL_VENV, default /tmp/pfl-venv), run right after; skipped with a
                      note when absent.
           Round 1 is a warm-up (tracing, worker start) and is not timed; the median of
           --rounds timed rounds is reported. Last two lines:
           `head_ratios clients=N pfl_ms_per_client=W sharded_path=P sharded_over_plain=R
            pfl_over_sharded=Q stock_over_sharded=T`
           `head clients=N stock_tff_ms_per_client=X sharded_ms_per_client=Y
            plain_tf_ms_per_client=Z` (sharded = the path pina-simulate takes)
  stage2   PINA stage-2 rounds. --stage2_path=program (default): the program itself
           (computations.program.program.run_simulation) on a synthetic population of the FMNIST
           model's or ViT-S/16's reduced-tail shape (--model), timing each round and its
           parts (benchmarks/program_bench.py). --stage2_path=process: process.next alone
           with per-round packing (--stage2_data inline|file). Peak RSS of the process
           and its children. With --sweep, every (model, cohort, clusters, aggregator)
           config runs in its own subprocess (separate RSS peaks). Last line:
           `stage2 cohort=M clusters=C aggregator=A round_s=X pack_s=Y peak_rss_gib=Z ...`
  embed    embedding-prefix throughput (examples/s) of digits_tiny and ViT-S/16.

Times are wall-clock seconds (ms where the name says so).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags
import numpy as np

from benchmarks import program_bench
from benchmarks.program_bench import random_frozen  # noqa: F401  (re-exported)
from pina_tff.errors import ConfigError
from pipelines import cli
from pipelines import startup

FLAGS = flags.FLAGS
flags.DEFINE_integer("clients", 1000, "head: simulated clients per round (N).")
flags.DEFINE_integer("rounds", 5, "Timed rounds (after one untimed warm-up round).")
flags.DEFINE_integer("shard_size", 0, "Simulated clients per TFF client (0: default_shard_size).")
flags.DEFINE_float("noise_multiplier", 1.0, "Central noise multiplier z (std / clip).")
flags.DEFINE_enum("runtime", "worker", ["worker", "simulation"],
                  "head: TFF runtime for stock and sharded paths.")
flags.DEFINE_list("paths", "stock,sharded_program,resident,plain,pfl",
                  "head: which paths to run (stock, sharded, sharded_file, sharded_program "
                  "(file-backed, repacked each round: pina-simulate before issue 11), "
                  "resident (what pina-simulate does: the population laid out once, "
                  "rounds ship row numbers), plain, pfl (pfl-research in its own venv, "
                  "see benchmarks/run_pfl.sh; skipped with a note if absent)).")
flags.DEFINE_integer("cohort", 1000, "stage2: simulated clients per round (M).")
flags.DEFINE_integer("clusters", 4, "stage2: number of clusters C.")
flags.DEFINE_integer("population", 10000, "stage2: population size.")
flags.DEFINE_integer("examples_per_client", 5, "stage2: examples per client.")
flags.DEFINE_enum("aggregator", "ddp", ["ddp", "central", "secure_sum", "sum"],
                  "stage2: aggregator kind.")
flags.DEFINE_integer("stage2_batch_size", 0,
                     "stage2: local batch size; 0: min(16, examples per client), which "
                     "trains exactly like 16 (one step over all examples) without "
                     "computing on 11 padding examples per client.")
flags.DEFINE_enum("stage2_data", "file", ["inline", "file"],
                  "stage2: shards go to TFF inline (client_work.shard_to_dataset) or as "
                  "file-backed datasets written every round (what pina-simulate does).")
flags.DEFINE_enum("stage2_path", "program", ["program", "process"],
                  "stage2: 'program' runs computations.program.program.run_simulation on a "
                  "synthetic population (what pina-simulate does per round: resident "
                  "data, TFF round, evaluation, accounting, metrics; "
                  "benchmarks/program_bench.py); 'process' times process.next alone "
                  "with per-round packing (--stage2_data).")
flags.DEFINE_enum("model", "vit_s16", ["fmnist", "vit_s16"],
                  "stage2 --stage2_path=program: tail shape (FMNIST model: width 64; "
                  "ViT-S/16: width 384), synthetic features, 5 train + 1 test examples.")
flags.DEFINE_integer("eval_every", 1,
                     "stage2 --stage2_path=program: evaluate every N rounds (1: every "
                     "round, pina-simulate's default).")
flags.DEFINE_string("transport", "resident",
                    "stage2 --stage2_path=program: ProgramOptions.shard_transport.")
flags.DEFINE_float("epsilon", 8.0, "stage2 --stage2_path=program: target epsilon.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "auto"],
                  "stage2: stage2.precision of the client work (pina_tff.training.precision).")
flags.DEFINE_list("compare_precisions", [],
                  "stage2 --stage2_path=program: run the config once per listed precision "
                  "(each in its own subprocess, one after another, --compare_repeats "
                  "times in turn) and a plain TF matmul of the tail MLP's shape in each, "
                  "then print the times, achieved GFLOP/s, the matmul peaks and the ratios "
                  "of this one run. Last line: `stage2_precision model=... cohort=... "
                  "<p>_round_s=... <p>_next_gflops=... <p>_peak_gflops=... speedup=...`.")
flags.DEFINE_boolean("precision_peak_only", False,
                     "stage2 --compare_precisions: internal, the matmul peak alone.")
flags.DEFINE_integer("compare_repeats", 1, "stage2 --compare_precisions: rounds of turns.")
flags.DEFINE_boolean("sweep", False, "stage2: run the cohort x clusters x aggregator grid.")
flags.DEFINE_list("sweep_models", "fmnist,vit_s16",
                  "stage2 --sweep --stage2_path=program: models.")
flags.DEFINE_list("sweep_cohorts", "100,1000,10000", "stage2 --sweep: cohorts.")
flags.DEFINE_list("sweep_clusters", "2,4", "stage2 --sweep: cluster counts.")
flags.DEFINE_list("sweep_aggregators", "ddp,central", "stage2 --sweep: aggregators.")
flags.DEFINE_boolean("profile", False, "stage2: also time the parts of the client work in plain TF.")
flags.DEFINE_list("backbones", "digits_tiny,vit_s16", "embed: backbones.")
flags.DEFINE_integer("embed_batch", 32, "embed: batch size.")
flags.DEFINE_integer("embed_batches", 4, "embed: timed batches (after one warm-up).")
flags.DEFINE_string("json_out", "", "Also write the results as JSON here.")

HEAD_DIM, HEAD_CLASSES, HEAD_EXAMPLES = 384, 10, 32
HEAD_BATCH, HEAD_LR, HEAD_CLIP, SERVER_LR = 16, 0.1, 0.1, 1.0


# ----------------------------------------------------------------------------- utils

def _median_time(fn, rounds: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def peak_rss_gib() -> dict[str, float]:
  """Peak resident memory of this process and of its (waited-for) children, GiB."""
  kib = 1024.0 * 1024.0  # ru_maxrss is KiB on Linux
  return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
          "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}


def machine_info() -> dict:
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import psutil  # pylint: disable=g-import-not-at-top
  return {"nproc": os.cpu_count(), "cpu": model,
          "ram_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def _write_json(result: dict) -> None:
  if FLAGS.json_out:
    tmp = f"{FLAGS.json_out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=1)
    os.replace(tmp, FLAGS.json_out)


# ------------------------------------------------------------------------ head workload

def head_data(num_clients: int, seed: int = 0):
  """Features [N, 32, 384] float32, labels [N, 32] int32, initial (kernel, bias)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((num_clients, HEAD_EXAMPLES, HEAD_DIM), dtype=np.float32)
  y = rng.integers(0, HEAD_CLASSES, (num_clients, HEAD_EXAMPLES)).astype(np.int32)
  kernel = (0.05 * rng.standard_normal((HEAD_DIM, HEAD_CLASSES))).astype(np.float32)
  bias = (0.05 * rng.standard_normal((HEAD_CLASSES,))).astype(np.float32)
  return x, y, kernel, bias


def _stock_tff_head(x, y, kernel, bias, noise: float, rounds: int):
  """Stock TFF FedAvg: one TFF client per simulated client. Returns (times, w after round 1)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  n = x.shape[0]
  spec = collections.OrderedDict(
      x=tf.TensorSpec([None, HEAD_DIM], tf.float32), y=tf.TensorSpec([None], tf.int32))

  def model_fn():
    keras_model = tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(HEAD_DIM,)),
        tf.keras.layers.Dense(HEAD_CLASSES)])
    return tff.learning.models.from_keras_model(
        keras_model, input_spec=spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  aggregator = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=noise, clients_per_round=n, clip=HEAD_CLIP)
  process = tff.learning.algorithms.build_unweighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(HEAD_LR),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(SERVER_LR),
      model_aggregator=aggregator)
  datasets = [tf.data.Dataset.from_tensor_slices(
      collections.OrderedDict(x=x[i], y=y[i])).batch(HEAD_BATCH) for i in range(n)]
  state = process.initialize()
  state = process.set_model_weights(state, tff.learning.models.ModelWeights(
      trainable=[kernel, bias], non_trainable=[]))
  box = {"state": state}

  def one_round():
    box["state"] = process.next(box["state"], datasets).state

  one_round()  # warm-up
  w = process.get_model_weights(box["state"]).trainable
  first = (np.asarray(w[0]), np.asarray(w[1]))
  _, times = _median_time(one_round, rounds)
  return times, first


def file_backed_dataset(shard, directory: str, name: str):
  """`computations.learning.client_work.shard_to_file_dataset` (what pina-simulate uses by
  default): the dataset TFF ships each round holds file names instead of the data."""
  from computations.learning import client_work as cw  # pylint: disable=g-import-not-at-top
  return cw.shard_to_file_dataset(shard, directory, name)


def _sharded_head(x, y, kernel, bias, noise: float, rounds: int, shard_size: int,
                  file_dir: str | None = None, repack_each_round: bool = False,
                  resident_dir: str | None = None):
  """Our sharded process. Returns (times, w after round 1, packing seconds).

  With `file_dir`, shards go to TFF as file-backed datasets (`file_backed_dataset`).
  With `repack_each_round`, every timed round packs the shards and writes their files
  again, as pina-simulate did before issue 11 (each round has a new cohort).
  With `resident_dir`, the population is laid out there once (not timed, reported as
  packing seconds) and every round ships only row numbers and seeds, the shards being
  gathered inside the client computation (`computations.data.resident_data`): what
  pina-simulate does now."""
  from computations.learning import aggregators as agg  # pylint: disable=g-import-not-at-top
  from computations.learning import client_work as cw  # pylint: disable=g-import-not-at-top
  from computations.learning import learning_process as lp  # pylint: disable=g-import-not-at-top
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top
  from pina_tff.training import models as tm  # pylint: disable=g-import-not-at-top
  from pina_tff.training import shards  # pylint: disable=g-import-not-at-top
  n = x.shape[0]
  s = shard_size
  num_shards = math.ceil(n / s)
  model = tm.LinearModel(HEAD_DIM, HEAD_CLASSES)
  spec = lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=1, batch_size=HEAD_BATCH, learning_rate=HEAD_LR,
                            clip_norm=HEAD_CLIP, train_keys=tm.HEAD_KEYS,
                            send_keys=tm.HEAD_KEYS, shuffle=False),
      aggregator=agg.AggregatorSpec(kind="central", noise_multiplier=noise,
                                    clip_norm=HEAD_CLIP, expected_clients=n, shard_size=s,
                                    num_shards=num_shards),
      shard_size=s, n_max=HEAD_EXAMPLES, server_learning_rate=SERVER_LR)
  source = None
  if resident_dir:
    from computations.data import resident_data  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    source = resident_data.from_population(
        [{"x": x[i], "label": y[i]} for i in range(n)], model.feature_keys, HEAD_EXAMPLES,
        resident_dir)
    layout_s = time.perf_counter() - t0
  process = lp.build_process(model, spec, reader=source and source.reader)
  # pack_shard's default seeds: (0, position in the shard).
  seeds = [(0, i % s) for i in range(n)]

  def pack():
    if source is not None:
      return source.round_data(range(n), seeds, s, num_shards)
    out = []
    for ids in shards.split_cohort(range(n), s):
      clients = [{"x": x[i], "label": y[i]} for i in ids]
      shard = shards.pack_shard(clients, model.feature_keys, HEAD_EXAMPLES, num_slots=s)
      if file_dir:
        out.append(file_backed_dataset(shard, file_dir, f"shard{len(out)}"))
      else:
        out.append(cw.shard_to_dataset(shard))
    return out

  t0 = time.perf_counter()
  datasets = pack()
  pack_s = time.perf_counter() - t0 + (layout_s if source is not None else 0.0)
  state = process.initialize()
  state = process.set_model_weights(state, lp.model_weights(
      {"head_kernel": kernel[None], "head_bias": bias[None]}))
  box = {"state": state}

  def one_round():
    data = pack() if (repack_each_round or source is not None) else datasets
    box["state"] = process.next(box["state"], data).state

  one_round()
  w = process.get_model_weights(box["state"]).trainable
  first = (np.asarray(w["head_kernel"][0]), np.asarray(w["head_bias"][0]))
  _, times = _median_time(one_round, rounds)
  return times, first, pack_s


def plain_tf_round_fn(noise: float, num_clients: int):
  """One round of the head workload as one tf.function over all clients at once."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  steps = HEAD_EXAMPLES // HEAD_BATCH
  stddev = noise * HEAD_CLIP
  gen = tf.random.Generator.from_seed(0)

  @tf.function
  def round_fn(kernel, bias, x, y):
    n = tf.shape(x)[0]
    w = tf.tile(kernel[None], [n, 1, 1])
    b = tf.tile(bias[None], [n, 1])
    for t in range(steps):
      xb, yb = x[:, t * HEAD_BATCH:(t + 1) * HEAD_BATCH], y[:, t * HEAD_BATCH:(t + 1) * HEAD_BATCH]
      with tf.GradientTape() as tape:
        tape.watch([w, b])
        logits = tf.einsum("nbd,ndk->nbk", xb, w) + b[:, None, :]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
        loss = tf.reduce_sum(tf.reduce_mean(ce, axis=1))  # sum of per-client means
      gw, gb = tape.gradient(loss, [w, b])
      w, b = w - HEAD_LR * gw, b - HEAD_LR * gb
    delta = tf.concat([tf.reshape(w - kernel[None], [n, -1]), b - bias[None]], axis=1)
    norms = tf.norm(delta, axis=1)
    delta = delta * tf.minimum(1.0, HEAD_CLIP / tf.maximum(norms, 1e-12))[:, None]
    total = tf.reduce_sum(delta, axis=0)
    if stddev > 0:
      total = total + gen.normal(tf.shape(total), stddev=stddev)
    mean = total / float(num_clients)
    dk = tf.reshape(mean[:HEAD_DIM * HEAD_CLASSES], [HEAD_DIM, HEAD_CLASSES])
    return kernel + SERVER_LR * dk, bias + SERVER_LR * mean[HEAD_DIM * HEAD_CLASSES:]

  return round_fn


def _plain_tf_head(x, y, kernel, bias, noise: float, rounds: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  round_fn = plain_tf_round_fn(noise, x.shape[0])
  xt, yt = tf.constant(x), tf.constant(y)
  box = {"w": (tf.constant(kernel), tf.constant(bias))}

  def one_round():
    k, b = round_fn(*box["w"], xt, yt)
    box["w"] = (k, b)
    k.numpy()  # wait for the result

  one_round()
  first = tuple(np.asarray(v) for v in box["w"])
  _, times = _median_time(one_round, rounds)
  return times, first


def run_head(num_clients: int, rounds: int, shard_size: int = 0, noise: float = 1.0,
             runtime: str = "worker", paths=("stock", "sharded", "plain")) -> dict:
  """Paths: 'stock', 'sharded' (shard_to_dataset), 'sharded_file' (file-backed shards:
  the same computation without re-sending the data each round), 'plain'."""
  """Runs the head benchmark; returns timings (ms/client) and round-1 weights per path."""
  from computations.runtime.context import tff_context  # pylint: disable=g-import-not-at-top
  from pina_tff.training import shards  # pylint: disable=g-import-not-at-top
  x, y, kernel, bias = head_data(num_clients)
  s = shard_size or shards.default_shard_size(num_clients)
  res = {"clients": num_clients, "shard_size": s, "num_shards": math.ceil(num_clients / s),
         "rounds": rounds, "noise_multiplier": noise, "runtime": runtime,
         "ms_per_client": {}, "round_s": {}, "weights": {}}

  def record(name, times, first):
    med = statistics.median(times)
    res["round_s"][name] = times
    res["ms_per_client"][name] = 1000.0 * med / num_clients
    res["weights"][name] = first

  if {"stock", "sharded", "sharded_file", "sharded_program", "resident"} & set(paths):
    with tff_context(runtime=runtime, default_num_clients=num_clients):
      if "stock" in paths:
        times, first = _stock_tff_head(x, y, kernel, bias, noise, rounds)
        record("stock", times, first)
      if "sharded" in paths:
        times, first, pack_s = _sharded_head(x, y, kernel, bias, noise, rounds, s)
        record("sharded", times, first)
        res["pack_s"] = pack_s
      if "sharded_file" in paths:
        import tempfile  # pylint: disable=g-import-not-at-top
        with tempfile.TemporaryDirectory(prefix="pina-bench-") as tmp:
          times, first, pack_s = _sharded_head(x, y, kernel, bias, noise, rounds, s, tmp)
        record("sharded_file", times, first)
        res["pack_file_s"] = pack_s
      if "sharded_program" in paths:
        import tempfile  # pylint: disable=g-import-not-at-top
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="pina-bench-", dir=shm) as tmp:
          times, first, _ = _sharded_head(x, y, kernel, bias, noise, rounds, s, tmp,
                                          repack_each_round=True)
        record("sharded_program", times, first)
      if "resident" in paths:
        import tempfile  # pylint: disable=g-import-not-at-top
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="pina-bench-", dir=shm) as tmp:
          times, first, layout_s = _sharded_head(
              x, y, kernel, bias, noise, rounds, s,
              resident_dir=os.path.join(tmp, "resident"))
        record("resident", times, first)
        res["layout_s"] = layout_s
  if "plain" in paths:
    times, first = _plain_tf_head(x, y, kernel, bias, noise, rounds)
    record("plain", times, first)
  if "pfl" in paths:
    pfl = run_pfl_head(num_clients, rounds, noise)
    if pfl is not None:
      res["ms_per_client"]["pfl"] = pfl
  return res


def pfl_python() -> str | None:
  """The interpreter of a pfl-research venv ($PFL_VENV, default /tmp/pfl-venv, as
  benchmarks/run_pfl.sh makes it), or None if it has no pfl."""
  python = os.path.join(os.environ.get("PFL_VENV", "/tmp/pfl-venv"), "bin", "python")
  if not os.access(python, os.X_OK):
    return None
  ok = subprocess.run([python, "-c", "import pfl, torch"], capture_output=True, check=False)
  return python if ok.returncode == 0 else None


def run_pfl_head(num_clients: int, rounds: int, noise: float) -> float | None:
  """pfl-research's ms per client on the head workload (benchmarks/pfl_head.py in its
  own venv, run right after the other paths), or None (with a note) without pfl."""
  python = pfl_python()
  if python is None:
    print("  pfl: no pfl-research venv (pfl and TFF cannot share one); make it with "
          "benchmarks/run_pfl.sh (or set PFL_VENV) and run again", flush=True)
    return None
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pfl_head.py")
  proc = subprocess.run([python, script, f"--clients={num_clients}", f"--rounds={rounds}",
                         f"--noise_multiplier={noise}"], capture_output=True, text=True,
                        check=False)
  last = (proc.stdout.strip().splitlines() or [""])[-1]
  if proc.returncode != 0 or "pfl_ms_per_client=" not in last:
    print(f"  pfl: failed ({proc.returncode}): {proc.stderr[-500:]}", flush=True)
    return None
  return float(last.split("pfl_ms_per_client=")[1].split()[0])


def head_main() -> None:
  n = FLAGS.clients
  res = run_head(n, FLAGS.rounds, FLAGS.shard_size, FLAGS.noise_multiplier, FLAGS.runtime,
                 tuple(FLAGS.paths))
  ms = res["ms_per_client"]
  print(f"head workload: {n} clients x {HEAD_EXAMPLES} examples x {HEAD_DIM} features, "
        f"runtime={res['runtime']}, shard_size={res['shard_size']} "
        f"({res['num_shards']} TFF clients), median of {res['rounds']} rounds after warm-up")
  for name in ("stock", "sharded", "sharded_file", "sharded_program", "resident", "plain"):
    if name in ms:
      rs = res["round_s"][name]
      print(f"  {name:8s} {ms[name]:9.4f} ms/client  round {statistics.median(rs):8.3f} s  "
            f"(rounds: {', '.join(f'{t:.3f}' for t in rs)})")
  if "pack_s" in res:
    print(f"  sharded packing (pack_shard + shard_to_dataset, once): {res['pack_s']:.3f} s "
          f"= {1000 * res['pack_s'] / n:.4f} ms/client")
  if "pack_file_s" in res:
    print(f"  sharded_file packing + writing files (once): {res['pack_file_s']:.3f} s")
  if "layout_s" in res:
    print(f"  resident layout + first round's datasets (once): {res['layout_s']:.3f} s")
  if "pfl" in ms:
    print(f"  pfl      {ms['pfl']:9.4f} ms/client  (pfl-research, own venv, run right after)")
  for ours in ("sharded", "sharded_file", "sharded_program", "resident"):
    for other in ("stock", "plain", "pfl"):
      if ours in ms and other in ms:
        print(f"  {other}/{ours} = {ms[other] / ms[ours]:.2f}x")
  out = {k: v for k, v in res.items() if k != "weights"}
  out["machine"] = machine_info()
  _write_json(out)
  fmt = lambda k: f"{ms[k]:.4f}" if k in ms else "nan"  # noqa: E731
  # "sharded" in the last line is the path pina-simulate takes: the resident population
  # (falls back to the other sharded variants).
  ours = next((k for k in ("resident", "sharded_program", "sharded", "sharded_file")
               if k in ms), None)
  ratio = lambda a, b: (f"{ms[a] / ms[b]:.2f}" if a in ms and b in ms  # noqa: E731
                        else "nan")
  print(f"head_ratios clients={n} pfl_ms_per_client={fmt('pfl')} "
        f"sharded_path={ours} sharded_over_plain={ratio(ours, 'plain')} "
        f"pfl_over_sharded={ratio('pfl', ours)} stock_over_sharded={ratio('stock', ours)}")
  print(f"head clients={n} stock_tff_ms_per_client={fmt('stock')} "
        f"sharded_ms_per_client={fmt(ours) if ours else 'nan'} "
        f"plain_tf_ms_per_client={fmt('plain')}")


# ----------------------------------------------------------------------------- stage 2

def stage2_one(cohort: int, clusters: int, aggregator: str, population: int,
               examples: int, rounds: int, shard_size: int, noise: float,
               profile: bool, batch_size: int = 0, data_mode: str = "inline",
               context_kwargs: dict | None = None, model_name: str = "vit_s16",
               precision: str = "float32") -> dict:
  """One stage-2 config, in this process. Returns timings and peak RSS.

  ``context_kwargs``: `tff_context` arguments (default: the simulation runtime on one
  local worker), e.g. ``dict(num_workers=2, runtime="worker")``. ``model_name``: the
  reduced tail's shape (`program_bench.MODELS`: 'vit_s16' or 'fmnist').
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from computations.learning import aggregators as agg  # pylint: disable=g-import-not-at-top
  from computations.learning import client_work as cw  # pylint: disable=g-import-not-at-top
  from computations.learning import learning_process as lp  # pylint: disable=g-import-not-at-top
  from computations.runtime.context import tff_context  # pylint: disable=g-import-not-at-top
  from pina_tff.models import reduced_tail as rt  # pylint: disable=g-import-not-at-top
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top
  from pina_tff.training import models as tm  # pylint: disable=g-import-not-at-top
  from pina_tff.training import shards  # pylint: disable=g-import-not-at-top
  width, heads, mlp, classes = program_bench.MODELS[model_name]
  config = rt.TailConfig(width=width, num_heads=heads, mlp_dim=mlp, num_classes=classes)
  model = tm.ViTTailModel(config, random_frozen(config))
  import tempfile  # pylint: disable=g-import-not-at-top
  tmpdir = tempfile.TemporaryDirectory(prefix="pina-bench-")
  res = {"cohort": cohort, "clusters": clusters, "aggregator": aggregator, "data": data_mode,
         "population": population, "examples_per_client": examples}
  t0 = time.perf_counter()
  rng = np.random.default_rng(1)
  # Population of cached reduced features (float32): x_base [P, n, d], z [P, n, H, d].
  x_base = rng.standard_normal((population, examples, config.width), dtype=np.float32)
  z = 0.1 * rng.standard_normal((population, examples, config.num_heads, config.width),
                                dtype=np.float32)
  labels = rng.integers(0, config.num_classes, (population, examples)).astype(np.int32)
  true_cluster = rng.integers(0, clusters, population)
  res["make_population_s"] = time.perf_counter() - t0
  s = shard_size or shards.default_shard_size(cohort)
  num_shards = math.ceil(cohort / s)
  res.update(shard_size=s, num_shards=num_shards)
  batch_size = batch_size or min(16, examples)
  res["batch_size"] = batch_size
  local_spec = local.LocalSpec(num_clusters=clusters, local_epochs=1, batch_size=batch_size,
                               learning_rate=0.1, clip_norm=1.0, choose_cluster=True,
                               shuffle=True, num_true_clusters=clusters,
                               compute_dtype=_compute_dtype(precision))
  spec = lp.ProcessSpec(
      local=local_spec,
      aggregator=agg.AggregatorSpec(kind=aggregator, noise_multiplier=noise, clip_norm=1.0,
                                    expected_clients=cohort, shard_size=s,
                                    num_shards=num_shards),
      shard_size=s, n_max=examples, scaling_mode="pina")
  # Built inside the context: the aggregator's form depends on the runtime (secure sums
  # on one simulation service, mergeable sums across services).
  runtime = contextlib.ExitStack()
  runtime.enter_context(tff_context(**(context_kwargs or dict(runtime="simulation")),
                                    default_num_clients=num_shards))
  t0 = time.perf_counter()
  process = lp.build_process(model, spec)
  res["build_s"] = time.perf_counter() - t0
  init = {k: np.stack([v] * clusters) for k, v in rt.init_trainable(config, 0).items()}
  for c in range(clusters):  # distinct cluster models
    init["head_kernel"][c] += 0.01 * rng.standard_normal(init["head_kernel"][c].shape)

  def pack(round_num):
    ids = rng.choice(population, cohort, replace=False)
    out = []
    for j, part in enumerate(shards.split_cohort(ids, s)):
      clients = [{"x_base": x_base[i], "z": z[i], "label": labels[i],
                  "true_cluster": true_cluster[i]} for i in part]
      shard = shards.pack_shard(clients, model.feature_keys, examples, num_slots=s,
                                seed=(round_num, j * s))
      if data_mode == "file":
        out.append(file_backed_dataset(shard, tmpdir.name, f"r{round_num}s{j}"))
      else:
        out.append(cw.shard_to_dataset(shard))
    return out

  pack_times, round_times = [], []
  with runtime:
    state = process.initialize()
    state = process.set_model_weights(state, lp.model_weights(init))
    for r in range(rounds + 1):
      t0 = time.perf_counter()
      data = pack(r)
      t1 = time.perf_counter()
      out = process.next(state, data)
      state = out.state
      t2 = time.perf_counter()
      if r == 0:
        res["warmup_round_s"] = t2 - t1
      else:
        pack_times.append(t1 - t0)
        round_times.append(t2 - t1)
      del data
  res["round_s"] = round_times
  res["median_round_s"] = statistics.median(round_times)
  res["median_pack_s"] = statistics.median(pack_times)
  if profile:
    res["profile"] = _profile_stage2(model, local_spec, init, pack, s, tf)
  res["peak_rss_gib"] = peak_rss_gib()
  tmpdir.cleanup()
  return res


def _compute_dtype(precision: str) -> str:
  from pina_tff.training import precision as precision_lib  # pylint: disable=g-import-not-at-top
  return precision_lib.resolve(precision).compute_dtype


def _profile_stage2(model, spec, init, pack, s, tf):
  """Plain-TF timing of the parts of one shard's client work (same shapes)."""
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top
  data = pack(99)
  shard = next(iter(data[0]))
  params = {k: tf.constant(v) for k, v in init.items()}
  feats = {k: tf.cast(shard[k], tf.float32) for k in model.feature_keys}

  @tf.function
  def choose():
    losses = local.cluster_losses(model, params, feats, shard["label"], shard["mask"])
    return tf.argmin(losses, axis=-1, output_type=tf.int32)

  @tf.function
  def train(choice):
    p0 = {k: tf.gather(v, choice) for k, v in params.items()}
    return local.local_train(model, spec, p0, feats, shard["label"], shard["mask"],
                             shard["seed"])[1]

  @tf.function
  def whole():
    return local.shard_update(model, spec, params, shard)[0]

  out = {}
  choice = choose()
  train(choice)
  whole()
  out["cluster_choice_s_per_shard"] = _median_time(lambda: choose().numpy(), 3)[0]
  out["local_train_s_per_shard"] = _median_time(lambda: train(choice).numpy(), 3)[0]
  out["shard_update_s_per_shard"] = _median_time(lambda: whole().numpy(), 3)[0]
  return out


def stage2_program_main() -> None:
  """One program-path config (benchmarks/program_bench.py) in this process."""
  from benchmarks import program_bench  # pylint: disable=g-import-not-at-top
  res = program_bench.run(
      model_name=FLAGS.model, population=FLAGS.population, cohort=FLAGS.cohort,
      clusters=FLAGS.clusters, rounds=FLAGS.rounds, epsilon=FLAGS.epsilon,
      aggregator=FLAGS.aggregator, transport=FLAGS.transport, eval_every=FLAGS.eval_every,
      profile=FLAGS.profile, shard_size=FLAGS.shard_size, precision=FLAGS.precision)
  parts = res["parts_s"]
  next_s = parts.get("tff_next", res["median_round_s"])
  res["next_gflops"] = res["flops_per_round"] / next_s / 1e9
  res["round_gflops"] = res["flops_per_round"] / res["median_round_s"] / 1e9
  res["peak_rss_gib"] = peak_rss_gib()
  res["machine"] = machine_info()
  res["load_average"] = os.getloadavg()
  _write_json(res)
  profile = res.pop("profile", None)
  if profile:
    print(profile)
  print(json.dumps(res))
  rss = res["peak_rss_gib"]
  parts = res["parts_s"]
  print(f"stage2 cohort={res['cohort']} clusters={res['clusters']} "
        f"aggregator={res['aggregator']} round_s={res['median_round_s']:.3f} "
        f"pack_s={parts.get('round_data', float('nan')):.3f} "
        f"peak_rss_gib={max(rss.values()):.2f} model={res['model']} path=program "
        f"eval_every={res['eval_every']} "
        f"evaluate_s={parts.get('evaluate', res.get('evaluate_s_per_call', float('nan'))):.3f} "
        f"precision={res['client_precision']['compute_dtype']} "
        f"next_s={parts.get('tff_next', float('nan')):.3f} "
        f"next_gflops={res['next_gflops']:.1f}")


def _peak_main() -> None:
  """--compare_precisions' matmul peak, in its own process (one line of JSON)."""
  res = [program_bench.matmul_peak(FLAGS.model, p) for p in FLAGS.compare_precisions]
  print("PEAK " + json.dumps(res), flush=True)


def stage2_precision_compare() -> None:
  """One stage-2 program config per precision, side by side (see --compare_precisions)."""
  from pina_tff.training import precision as precision_lib  # pylint: disable=g-import-not-at-top
  precisions = list(FLAGS.compare_precisions)
  for p in precisions:
    if p not in ("float32", "bfloat16"):
      raise ConfigError(f"--compare_precisions: expected float32 and/or bfloat16, found {p!r}")
  base = [sys.executable, "-m", "benchmarks.bench", "stage2", f"--model={FLAGS.model}",
          f"--cohort={FLAGS.cohort}", f"--clusters={FLAGS.clusters}",
          f"--aggregator={FLAGS.aggregator}", f"--population={FLAGS.population}",
          f"--rounds={FLAGS.rounds}", f"--shard_size={FLAGS.shard_size}",
          f"--eval_every={FLAGS.eval_every}", f"--transport={FLAGS.transport}",
          f"--epsilon={FLAGS.epsilon}"]
  runs = collections.defaultdict(list)
  peaks = collections.defaultdict(list)
  for rep in range(FLAGS.compare_repeats):
    for p in precisions:
      out = f"/tmp/pina-bench-prec-{os.getpid()}-{p}-{rep}.json"
      proc = subprocess.run(base + [f"--precision={p}", f"--json_out={out}"],
                            capture_output=True, text=True, check=False)
      if proc.returncode != 0:
        raise RuntimeError(f"stage2 --precision={p} failed:\n{proc.stderr[-3000:]}")
      with open(out) as f:
        r = json.load(f)
      os.remove(out)
      runs[p].append(r)
      parts = r["parts_s"]
      print(f"{p:8s} rep {rep}: round {r['median_round_s']:.3f} s (rounds "
            f"{', '.join(f'{t:.2f}' for t in r['round_s'])}), TFF next "
            f"{parts.get('tff_next', float('nan')):.3f} s, {r['next_gflops']:.1f} GFLOP/s "
            f"in next, load {r['load_average'][0]:.2f}, ran "
            f"{r['client_precision']['compute_dtype']}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "stage2",
                           f"--model={FLAGS.model}", "--precision_peak_only",
                           f"--compare_precisions={','.join(precisions)}"],
                          capture_output=True, text=True, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")]
    if proc.returncode != 0 or not line:
      raise RuntimeError(f"matmul peak failed:\n{proc.stderr[-3000:]}")
    for pk in json.loads(line[-1][5:]):
      peaks[pk["dtype"]].append(pk["gflops"])
      print(f"matmul peak {pk['dtype']:8s} {pk['shape']}: {pk['gflops']:.1f} GFLOP/s",
            flush=True)
  summary = {"model": FLAGS.model, "cohort": FLAGS.cohort, "clusters": FLAGS.clusters,
             "cpu_native_bf16_flags": list(precision_lib.native_bf16_flags()),
             "machine": machine_info(), "load_average_end": os.getloadavg()}
  fields = []
  for p in precisions:
    rs = runs[p]
    rnd = statistics.median(r["median_round_s"] for r in rs)
    nxt = statistics.median(r["parts_s"].get("tff_next", r["median_round_s"]) for r in rs)
    gf = statistics.median(r["next_gflops"] for r in rs)
    pk = statistics.median(peaks[p])
    summary[p] = {"round_s": rnd, "next_s": nxt, "next_gflops": gf, "peak_gflops": pk,
                  "of_peak": gf / pk, "flops_per_round": rs[0]["flops_per_round"],
                  "runs": rs}
    fields += [f"{p}_round_s={rnd:.3f}", f"{p}_next_s={nxt:.3f}",
               f"{p}_next_gflops={gf:.1f}", f"{p}_peak_gflops={pk:.1f}",
               f"{p}_of_peak={gf / pk:.2f}"]
  if "float32" in summary and "bfloat16" in summary:
    summary["speedup_round"] = summary["float32"]["round_s"] / summary["bfloat16"]["round_s"]
    summary["speedup_next"] = summary["float32"]["next_s"] / summary["bfloat16"]["next_s"]
    fields += [f"speedup_round={summary['speedup_round']:.2f}",
               f"speedup_next={summary['speedup_next']:.2f}"]
  _write_json(summary)
  print(f"stage2_precision model={FLAGS.model} cohort={FLAGS.cohort} "
        f"clusters={FLAGS.clusters} " + " ".join(fields))


def stage2_main() -> None:
  if FLAGS.precision_peak_only:
    return _peak_main()
  if FLAGS.compare_precisions:
    return stage2_precision_compare()
  if FLAGS.sweep:
    return stage2_sweep()
  if FLAGS.stage2_path == "program":
    return stage2_program_main()
  res = stage2_one(FLAGS.cohort, FLAGS.clusters, FLAGS.aggregator, FLAGS.population,
                   FLAGS.examples_per_client, FLAGS.rounds, FLAGS.shard_size,
                   FLAGS.noise_multiplier, FLAGS.profile, FLAGS.stage2_batch_size,
                   FLAGS.stage2_data, precision=FLAGS.precision)
  res["machine"] = machine_info()
  _write_json(res)
  print(json.dumps(res))
  rss = res["peak_rss_gib"]
  print(f"stage2 cohort={res['cohort']} clusters={res['clusters']} "
        f"aggregator={res['aggregator']} round_s={res['median_round_s']:.3f} "
        f"pack_s={res['median_pack_s']:.3f} peak_rss_gib={max(rss.values()):.2f}")


def stage2_sweep() -> None:
  rows = []
  program_path = FLAGS.stage2_path == "program"
  models = FLAGS.sweep_models if program_path else ["-"]
  for model, aggregator, clusters, cohort in (
      (m, a, int(c), int(n)) for m in models for a in FLAGS.sweep_aggregators
      for c in FLAGS.sweep_clusters for n in FLAGS.sweep_cohorts):
    out = (f"/tmp/pina-bench-stage2-{os.getpid()}-{model}-{aggregator}-{clusters}-"
           f"{cohort}.json")
    cmd = [sys.executable, "-m", "benchmarks.bench", "stage2", f"--cohort={cohort}",
           f"--clusters={clusters}", f"--aggregator={aggregator}",
           f"--population={FLAGS.population}", f"--rounds={FLAGS.rounds}",
           f"--shard_size={FLAGS.shard_size}",
           f"--noise_multiplier={FLAGS.noise_multiplier}", f"--json_out={out}",
           f"--stage2_batch_size={FLAGS.stage2_batch_size}",
           f"--stage2_data={FLAGS.stage2_data}",
           f"--stage2_path={FLAGS.stage2_path}", f"--eval_every={FLAGS.eval_every}",
           f"--transport={FLAGS.transport}", f"--epsilon={FLAGS.epsilon}"]
    if program_path:
      cmd.append(f"--model={model}")
    if FLAGS.profile:
      cmd.append("--profile")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      print(f"FAILED {' '.join(cmd)}\n{proc.stderr[-3000:]}", flush=True)
      continue
    with open(out) as f:
      r = json.load(f)
    os.remove(out)
    r["wall_s"] = time.perf_counter() - t0
    rows.append(r)
    if program_path:
      print(f"model={model} aggregator={aggregator} C={clusters} cohort={cohort} "
            f"round_s={r['median_round_s']:.3f} parts_s={r['parts_s']} "
            f"peak_rss_gib={max(r['peak_rss_gib'].values()):.2f} "
            f"load={r['load_average'][0]:.2f}", flush=True)
    else:
      print(f"aggregator={aggregator} C={clusters} cohort={cohort} "
            f"round_s={r['median_round_s']:.3f} pack_s={r['median_pack_s']:.3f} "
            f"warmup_s={r['warmup_round_s']:.2f} "
            f"peak_rss_gib={max(r['peak_rss_gib'].values()):.2f} "
            f"profile={r.get('profile')}", flush=True)
  _write_json({"rows": rows, "machine": machine_info()})


# ------------------------------------------------------------------------------ embed

def embed_main() -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pina_tff.models import backbone as bb  # pylint: disable=g-import-not-at-top
  from pina_tff.models import split  # pylint: disable=g-import-not-at-top
  results = {}
  for name in FLAGS.backbones:
    config = bb.get_config(name)
    model = bb.build_vit(config)
    prefix = split.build_prefix(model)
    fn = tf.function(lambda x, p=prefix: p(x, training=False))
    batch = FLAGS.embed_batch
    images = tf.constant(np.random.default_rng(0).uniform(
        0, 255, (batch,) + tuple(config.image_shape)).astype(np.float32))
    fn(images).numpy()
    med, _ = _median_time(lambda: fn(images).numpy(), FLAGS.embed_batches)
    results[name] = {"batch": batch, "s_per_batch": med, "examples_per_s": batch / med,
                     "embedding_shape": list(config.embedding_shape)}
    print(f"embed {name}: {batch / med:.1f} examples/s (batch {batch}, "
          f"{med:.3f} s/batch, embedding {config.embedding_shape})", flush=True)
  results["machine"] = machine_info()
  _write_json(results)


COMMANDS = {"head": head_main, "stage2": stage2_main, "embed": embed_main}


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"expected one workload, {' | '.join(COMMANDS)}, found "
                      f"{argv[1:]} (pina-bench --help describes them)")
  COMMANDS[argv[1]]()


def run() -> None:
  """Entry point of `python -m benchmarks.bench`, the Bazel binary and pina-bench
  (`pipelines.entry.bench`)."""
  startup.prepare(keras=True)  # before TensorFlow, keras and absl's main
  cli.run(main, positional=True)


if __name__ == "__main__":
  run()
