"""Issue 22 item 3: the head workload's round before and after the fixed-cost cuts, side
by side in one process, rounds interleaved (before, after, plain TF; the order flips
every round), so the machine's load hits all three alike.

  PYTHONPATH=. .venv/bin/python -m benchmarks.fixed_cost --clients 100 --rounds 60
  PYTHONPATH=. .venv/bin/python -m benchmarks.fixed_cost --clients 1000 --rounds 20

"before" is the process as it was at commit 255012e: the diagnostics summed tensor by
tensor (`ProcessSpec.packed_diagnostics=False`), `enforce_norm_bound` testing the rows
twice per step and once after, and both [S, P] selects (norm bound, non-finite rows)
run every round; its two functions are copied below verbatim, and patched in only
while the "before" process is traced. "after" is the process as pina-simulate builds
it now. Both start from the same weights and noise seed and see the same data: every
round's state and metrics must be equal bit for bit (`identical`). Last line:
`fixed_cost clients=N before_ms=B after_ms=A plain_ms=P before_over_plain=X
after_over_plain=Y before_over_after=Z identical=True`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time

import numpy as np


def before_enforce_norm_bound(rows, bound: float, max_steps: int = 64):
  """`pina_tff.privacy.norm_bound.enforce_norm_bound` as at commit 255012e."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pina_tff.privacy import norm_bound  # pylint: disable=g-import-not-at-top
  bound32 = tf.constant(bound, tf.float32)
  bound64 = tf.cast(bound32, tf.float64)

  def over(r):
    n64 = tf.sqrt(tf.reduce_sum(tf.square(tf.cast(r, tf.float64)), axis=-1))
    return tf.logical_or(n64 > bound64, tf.norm(r, axis=-1) > bound32)

  def body(i, r):
    return i + 1, tf.where(over(r)[..., None], r * norm_bound._SHRINK, r)  # pylint: disable=protected-access

  _, rows = tf.while_loop(
      lambda i, r: tf.logical_and(i < max_steps, tf.reduce_any(over(r))), body,
      (tf.constant(0), rows))
  return tf.where(over(rows)[..., None], tf.zeros_like(rows), rows)


def before_zero_nonfinite_rows(vectors):
  """`pina_tff.training.local.zero_nonfinite_rows` as at commit 255012e."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finite = tf.reduce_all(tf.math.is_finite(vectors), axis=-1)
  clean = tf.where(finite[:, None], vectors, tf.zeros_like(vectors))
  return clean, 1.0 - tf.cast(finite, vectors.dtype)


@contextlib.contextmanager
def before_client_graph():
  """While open, client computations are traced with the functions of 255012e."""
  from pina_tff.privacy import norm_bound  # pylint: disable=g-import-not-at-top
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top
  saved = norm_bound.enforce_norm_bound, local.zero_nonfinite_rows
  norm_bound.enforce_norm_bound = before_enforce_norm_bound
  local.zero_nonfinite_rows = before_zero_nonfinite_rows
  try:
    yield
  finally:
    norm_bound.enforce_norm_bound, local.zero_nonfinite_rows = saved


def _processes(num_clients: int, directory: str):
  """(before, after, round_data(), initial_state(process)) for the head workload."""
  from benchmarks import bench  # pylint: disable=g-import-not-at-top
  from computations.data import resident_data  # pylint: disable=g-import-not-at-top
  from computations.learning import aggregators as agg  # pylint: disable=g-import-not-at-top
  from computations.learning import learning_process as lp  # pylint: disable=g-import-not-at-top
  from pina_tff.training import local  # pylint: disable=g-import-not-at-top
  from pina_tff.training import models as tm  # pylint: disable=g-import-not-at-top
  from pina_tff.training import shards  # pylint: disable=g-import-not-at-top
  x, y, kernel, bias = bench.head_data(num_clients)
  s = shards.default_shard_size(num_clients)
  num_shards = math.ceil(num_clients / s)
  model = tm.LinearModel(bench.HEAD_DIM, bench.HEAD_CLASSES)
  spec = lp.ProcessSpec(
      local=local.LocalSpec(num_clusters=1, batch_size=bench.HEAD_BATCH,
                            learning_rate=bench.HEAD_LR, clip_norm=bench.HEAD_CLIP,
                            train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS,
                            shuffle=False),
      aggregator=agg.AggregatorSpec(kind="central", noise_multiplier=1.0,
                                    clip_norm=bench.HEAD_CLIP,
                                    expected_clients=num_clients, shard_size=s,
                                    num_shards=num_shards),
      shard_size=s, n_max=bench.HEAD_EXAMPLES, server_learning_rate=bench.SERVER_LR)
  source = resident_data.from_population(
      [{"x": x[i], "label": y[i]} for i in range(num_clients)], model.feature_keys,
      bench.HEAD_EXAMPLES, directory)
  after = lp.build_process(model, spec, reader=source.reader)
  with before_client_graph():
    before = lp.build_process(model, dataclasses.replace(spec, packed_diagnostics=False),
                              reader=source.reader)
  seeds = [(0, i % s) for i in range(num_clients)]

  def initial_state(process):
    state = process.set_model_weights(process.initialize(), lp.model_weights(
        {"head_kernel": kernel[None], "head_bias": bias[None]}))
    return agg.with_noise_seed(state, [7, 8])

  return (before, after, lambda: source.round_data(range(num_clients), seeds, s,
                                                   num_shards), initial_state)


def _plain_round(num_clients: int):
  """One plain-TF round of the same workload (`bench.plain_tf_round_fn`), as a thunk."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from benchmarks import bench  # pylint: disable=g-import-not-at-top
  x, y, kernel, bias = bench.head_data(num_clients)
  round_fn = bench.plain_tf_round_fn(1.0, num_clients)
  args = (tf.constant(kernel), tf.constant(bias), tf.constant(x), tf.constant(y))
  return lambda: round_fn(*args)[0].numpy()


def _flat(value) -> list:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return [np.asarray(v) for v in tf.nest.flatten(value)]


def run(num_clients: int, rounds: int) -> dict:
  """Interleaved rounds of before / after / plain TF; medians (s), ratios, identity."""
  from computations.runtime.context import tff_context  # pylint: disable=g-import-not-at-top
  times = {"before": [], "after": [], "plain": []}
  identical = True
  with tff_context(runtime="simulation", default_num_clients=num_clients), \
      tempfile.TemporaryDirectory(prefix="pina-fixed-cost-") as tmp:
    before, after, round_data, initial_state = _processes(
        num_clients, os.path.join(tmp, "resident"))
    procs = {"before": before, "after": after}
    state = {k: initial_state(p) for k, p in procs.items()}
    plain = _plain_round(num_clients)
    for r in range(rounds + 1):  # round 0: warm-up, not timed
      order = ("before", "after", "plain") if r % 2 == 0 else ("plain", "after", "before")
      outs = {}
      for name in order:
        t0 = time.perf_counter()
        if name == "plain":
          plain()
        else:
          out = procs[name].next(state[name], round_data())
          state[name] = out.state
          outs[name] = _flat(out.state) + _flat(out.metrics)
        if r:
          times[name].append(time.perf_counter() - t0)
      identical = identical and all(
          a.dtype == b.dtype and np.array_equal(a, b)
          for a, b in zip(outs["before"], outs["after"], strict=True))
  med = {k: statistics.median(v) for k, v in times.items()}
  return {"clients": num_clients, "rounds": rounds, "round_s": times,
          "median_s": med, "identical": identical,
          "before_over_plain": med["before"] / med["plain"],
          "after_over_plain": med["after"] / med["plain"],
          "before_over_after": med["before"] / med["after"],
          "loadavg": os.getloadavg()}


def main() -> None:
  """Command line: --clients, --rounds, --json_out; prints the medians and ratios."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--clients", type=int, default=100)
  ap.add_argument("--rounds", type=int, default=60)
  ap.add_argument("--json_out", default="")
  args = ap.parse_args()
  res = run(args.clients, args.rounds)
  med = res["median_s"]
  print(f"head workload, {args.clients} clients, {args.rounds} interleaved rounds, "
        f"load {' '.join(f'{v:.2f}' for v in res['loadavg'])}")
  for k in ("before", "after", "plain"):
    print(f"  {k:6s} median round {1000 * med[k]:8.2f} ms "
          f"({1000 * med[k] / args.clients:.4f} ms/client)")
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(res, f, indent=1)
  print(f"fixed_cost clients={args.clients} before_ms={1000 * med['before']:.2f} "
        f"after_ms={1000 * med['after']:.2f} plain_ms={1000 * med['plain']:.2f} "
        f"before_over_plain={res['before_over_plain']:.2f} "
        f"after_over_plain={res['after_over_plain']:.2f} "
        f"before_over_after={res['before_over_after']:.3f} identical={res['identical']}")


if __name__ == "__main__":
  from pipelines import startup  # pylint: disable=g-import-not-at-top
  startup.prepare(keras=False)
  main()
