"""Speed-up of a stage-2 round from 1 to N local TFF worker services (issue 11).

  PYTHONPATH=. .venv/bin/python -m benchmarks.worker_scaling --cohort 10000 \\
      --scaling_workers 1,2 --rounds 2

Flags of `pina-bench stage2` apply (--cohort, --clusters, --rounds,
--examples_per_client, --noise_multiplier: here the effective DDP multiplier).

Same workload as `pina-bench stage2` (`--model`: ViT-S/16 or FMNIST reduced-tail
features, synthetic data,
shards read from files as `pina-simulate` does), run once per configuration in this
process: 'sim1' is the default runtime (TFF's secure-sum DDP on one service); 'wN' is the
native runtime on N local services with the mergeable DDP sum (each round's shards
split over the services). Prints one line per configuration, the load average, and a
last machine-readable JSON line.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from benchmarks import bench
from pipelines import startup

flags.DEFINE_list("scaling_workers", "1,2", "Numbers of local services to time.")
flags.DEFINE_bool("sim1", True, "Also time the default runtime on one service.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  configs = [("sim1", dict(runtime="simulation"))] if FLAGS.sim1 else []
  configs += [(f"w{n}", dict(runtime="worker", num_workers=int(n)))
              for n in FLAGS.scaling_workers]
  results = {}
  for name, kwargs in configs:
    res = bench.stage2_one(FLAGS.cohort, FLAGS.clusters, "ddp", FLAGS.cohort,
                           FLAGS.examples_per_client, FLAGS.rounds, FLAGS.shard_size,
                           FLAGS.noise_multiplier, False,
                           data_mode="file", context_kwargs=kwargs,
                           model_name=FLAGS.model)
    res["load_avg"] = os.getloadavg()
    results[name] = {k: res[k] for k in ("median_round_s", "round_s", "warmup_round_s",
                                         "median_pack_s", "num_shards", "shard_size",
                                         "peak_rss_gib", "load_avg")}
    print(f"{name}: median round {res['median_round_s']:.2f} s (rounds "
          f"{[round(x, 2) for x in res['round_s']]}), pack {res['median_pack_s']:.2f} s, "
          f"{res['num_shards']} shards of {res['shard_size']}, load avg "
          f"{res['load_avg'][0]:.2f}", flush=True)
  base = results.get("w1", {}).get("median_round_s")
  if base:
    for name, r in results.items():
      r["speedup_vs_w1"] = base / r["median_round_s"]
  print(json.dumps({"cpus": os.cpu_count(), "cohort": FLAGS.cohort, **results}))
  return 0


if __name__ == "__main__":
  startup.prepare(keras=True)  # before TensorFlow, keras and absl's main
  sys.exit(app.run(main))
