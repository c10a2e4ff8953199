"""pina-simulate: run PINA or a DP baseline on prepared clients (resumable).

  pina-simulate --clients_dir=/tmp/digits --root_dir=runs/pina_eps8 --method=pina \\
      --epsilon=8

Flags override a --config file (JSON or YAML with the fields of
`pina_tff.config.RunConfig`). Defaults give a sensible run on the embedded digits.
When --clients_dir holds only what pina-prepare wrote, the digits backbone is
pre-trained and the embeddings computed first, and cached there.
Run it again with the same command after a crash to resume from the last checkpoint;
a --root_dir holding a run of another configuration is an error unless --restart.
SIGINT / SIGTERM stop after the current round with a checkpoint (exit code 128 + signal).
Bad input prints one `error: ...` line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import sys

from pipelines import cli  # first: quiet TensorFlow start-up  # isort: skip

from absl import flags  # pylint: disable=g-bad-import-order

from pina_tff import config as config_lib
from pina_tff.errors import PinaError
from pina_tff.runtime import signals

cli.import_keras_quietly()
# keras-cv must be imported before absl's main runs (see pina_tff/models/backbone.py).
from pina_tff.models import backbone as _backbone  # noqa: E402  pylint: disable=unused-import,g-import-not-at-top
from pipelines.presets import DIGITS_DEFAULTS
from pipelines.presets import parse_epsilon

FLAGS = flags.FLAGS

flags.DEFINE_string("clients_dir", None, "Output of pina-prepare or pina-embed.")
flags.DEFINE_string("root_dir", None, "Run directory: checkpoints, metrics, summary.")
flags.DEFINE_string("config", None, "Optional JSON/YAML RunConfig; flags override it.")
flags.DEFINE_enum("method", None, list(config_lib.METHODS), "Method (default: pina).")
flags.DEFINE_string("epsilon", None, "Total epsilon: a number or 'inf' (default 8).")
flags.DEFINE_float("delta", None, "Total delta (default min(1e-5, 1/(10*population))).")
flags.DEFINE_enum("threat_model", None, list(config_lib.THREAT_MODELS),
                  "Epsilon the noise is calibrated to: 'server' (knows who took part; "
                  "default) or 'release' (sees only the models). Both are reported.")
flags.DEFINE_enum("sampling", None, list(config_lib.SAMPLINGS),
                  "Cohorts of stages 0 and 2: 'poisson' (default) or 'fixed'.")
flags.DEFINE_enum("noise_mode", None, list(config_lib.NOISE_MODES),
                  "'simulation' (noise from --seed; default) or 'secure' (OS entropy).")
flags.DEFINE_bool("diagnostics", True,
                  "Release the diagnostics epsilon does not cover (accuracies on client "
                  "data, cluster counts, training loss); --diagnostics=false: none.")
flags.DEFINE_integer("rounds", None, "Stage-2 rounds T2.")
flags.DEFINE_integer("stage0_rounds", None, "Stage-0 head warm-up rounds T0 (0: off).")
flags.DEFINE_integer("cohort", None, "Clients per round M (stages 0 and 2).")
flags.DEFINE_integer("num_clusters", None, "C, number of cluster models.")
flags.DEFINE_integer("seed", None, "Seed of every random choice in the run.")
flags.DEFINE_integer("local_epochs", None, "Local epochs E2 (and E0).")
flags.DEFINE_integer("batch_size", None, "Local minibatch size.")
flags.DEFINE_float("client_lr", None, "Client SGD learning rate (stages 0 and 2).")
flags.DEFINE_float("server_lr", None, "Server learning rate.")
flags.DEFINE_float("server_momentum", None, "Server momentum.")
flags.DEFINE_float("clip", None, "L2 clip of client updates S2 (and S0).")
flags.DEFINE_integer("sketch_clients", None, "Stage-1 clients M1.")
flags.DEFINE_integer("sketch_epochs", None, "Stage-1 local epochs E1.")
flags.DEFINE_float("sketch_lr", None, "Stage-1 client learning rate.")
flags.DEFINE_integer("top_k", None, "Stage-1 top-k (k positive + k negative entries).")
flags.DEFINE_float("sketch_clip", None, "Stage-1 L2 clip S1.")
flags.DEFINE_integer("warm_rounds", None, "Min-norm warm phase T_w (pina scaling).")
flags.DEFINE_enum("scaling", None, list(config_lib.SCALINGS), "PINA aggregate scaling.")
flags.DEFINE_enum("normality_rule", None, list(config_lib.NORMALITY_RULES),
                  "Formula of the normality phase (docs/results.md: how it was chosen).")
flags.DEFINE_float("restore_max_gain", None, "Largest factor of a restore rule (>= 1).")
flags.DEFINE_enum("eval_split", None, list(config_lib.EVAL_SPLITS),
                  "Held-out examples scored: 'val' (default; choose settings on it) or "
                  "'test' (only for the runs of a final table).")
flags.DEFINE_enum("aggregator", None, list(config_lib.AGGREGATORS), "Stage-2 aggregator.")
flags.DEFINE_float("fedprox_mu", None, "FedProx proximal weight.")
flags.DEFINE_integer("ddp_bits", None, "Bit width of distributed DP's modular secure "
                     "sum, in [16, 22] (default 20).")
flags.DEFINE_enum("precision", None, list(config_lib.PRECISIONS),
                  "Arithmetic of the stage-2 client work (default float32): bfloat16 "
                  "forward/backward with float32 master weights, deltas, clipping and "
                  "noise; auto: bfloat16 where the CPU has avx512_bf16 or amx_bf16.")
flags.DEFINE_enum("context", "cpu", ["cpu", "gpu", "auto"], "Where TFF runs client work.")
flags.DEFINE_integer("workers", 1, "Local TFF worker services started on loopback ports "
                     "(>1: each round's clients are split over them).")
flags.DEFINE_string("worker_addresses", None,
                    "host:port[,host:port...] of running TFF worker services "
                    "(worker_binary --port=PORT) to use instead of local ones; each "
                    "round's clients are split over them. See README 'More than one "
                    "machine'.")
flags.DEFINE_integer("shard_size", None, "Simulated clients per TFF client (auto).")
flags.DEFINE_integer("checkpoint_every", 5, "Checkpoint every N rounds.")
flags.DEFINE_integer("eval_every", 1, "Evaluate every N rounds.")
flags.DEFINE_enum("progress", "auto", ["auto", "bar", "log", "none"], "Progress display.")
flags.DEFINE_bool("restart", False, "Start over in a --root_dir that holds an earlier run "
                  "(removes only what pina-simulate wrote there).")

def build_config(flag_values) -> config_lib.RunConfig:
  """Config file (or digits defaults) overridden by the flags that were given."""
  if flag_values.config:
    base = config_lib.read_config_dict(flag_values.config)
    if not isinstance(base, dict):
      raise config_lib.ConfigError(f"{flag_values.config}: expected a mapping of keys "
                                   f"to values, found {base!r}")
  else:
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DIGITS_DEFAULTS.items()}
  over = {
      ("method",): flag_values.method, ("num_clusters",): flag_values.num_clusters,
      ("seed",): flag_values.seed, ("privacy", "delta"): flag_values.delta,
      ("privacy", "threat_model"): flag_values.threat_model,
      ("privacy", "sampling"): flag_values.sampling,
      ("privacy", "noise_mode"): flag_values.noise_mode,
      ("stage2", "rounds"): flag_values.rounds,
      ("stage0", "rounds"): flag_values.stage0_rounds,
      ("stage2", "cohort"): flag_values.cohort, ("stage0", "cohort"): flag_values.cohort,
      ("stage2", "local_epochs"): flag_values.local_epochs,
      ("stage0", "local_epochs"): flag_values.local_epochs,
      ("stage2", "batch_size"): flag_values.batch_size,
      ("stage2", "client_lr"): flag_values.client_lr,
      ("stage0", "lr"): flag_values.client_lr,
      ("stage2", "server_lr"): flag_values.server_lr,
      ("stage2", "server_momentum"): flag_values.server_momentum,
      ("stage2", "clip"): flag_values.clip, ("stage0", "clip"): flag_values.clip,
      ("stage1", "num_sketch_clients"): flag_values.sketch_clients,
      ("stage1", "local_epochs"): flag_values.sketch_epochs,
      ("stage1", "lr"): flag_values.sketch_lr, ("stage1", "top_k"): flag_values.top_k,
      ("stage1", "clip"): flag_values.sketch_clip,
      ("stage2", "warm_rounds"): flag_values.warm_rounds,
      ("stage2", "scaling"): flag_values.scaling,
      ("stage2", "normality_rule"): flag_values.normality_rule,
      ("stage2", "restore_max_gain"): flag_values.restore_max_gain,
      ("eval_split",): flag_values.eval_split,
      ("stage2", "aggregator"): flag_values.aggregator,
      ("stage2", "fedprox_mu"): flag_values.fedprox_mu,
      ("stage2", "ddp_bits"): flag_values.ddp_bits,
      ("stage2", "precision"): flag_values.precision,
  }
  if flag_values.epsilon is not None:
    over[("privacy", "epsilon")] = parse_epsilon(flag_values.epsilon)
  for path, value in over.items():
    if value is None:
      continue
    node = base
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  try:
    return config_lib.from_dict(base)
  except config_lib.ConfigError as e:
    if not flag_values.config:
      raise
    raise config_lib.ConfigError(f"{flag_values.config}: {e}") from None


def main(argv):
  del argv  # cli.run rejects positional arguments
  try:
    if not FLAGS.clients_dir or not FLAGS.root_dir:
      raise config_lib.ConfigError("--clients_dir and --root_dir are required")
    cfg = config_lib.validate(build_config(FLAGS))
    if FLAGS.workers < 1:
      raise config_lib.ConfigError(f"--workers must be >= 1, found {FLAGS.workers}")
    addresses = None
    if FLAGS.worker_addresses:
      from computations import workers  # pylint: disable=g-import-not-at-top
      addresses = workers.parse_addresses(FLAGS.worker_addresses)
      if FLAGS.workers != 1:
        raise config_lib.ConfigError("give either --workers or --worker_addresses")
    from computations import context  # pylint: disable=g-import-not-at-top
    from computations import program  # pylint: disable=g-import-not-at-top
    options = program.ProgramOptions(
        shard_size=FLAGS.shard_size, checkpoint_every=FLAGS.checkpoint_every,
        eval_every=FLAGS.eval_every, progress=FLAGS.progress,
        simulation_diagnostics=FLAGS.diagnostics, restart=FLAGS.restart)
    if addresses and not all(workers.is_loopback(a) for a in addresses):
      # Services on other machines cannot read this machine's shard files.
      options = dataclasses.replace(options, shard_transport="inline")
    with signals.graceful_stop():
      with context.tff_context(device=FLAGS.context, num_workers=FLAGS.workers,
                               worker_addresses=addresses):
        summary = program.run_simulation(cfg, FLAGS.clients_dir, FLAGS.root_dir, options)
  except PinaError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if summary.get("interrupted"):
    signum = summary.get("signal")
    print(f"stopped by {signals.name(signum) if signum else 'request'} at stage "
          f"{summary['phase']} round {summary['round']} (checkpoint saved); run the same "
          "command to resume", file=sys.stderr)
    return 128 + signum if signum else 1
  print(f"{summary['method_name']} on {summary['dataset']}, eps={summary['epsilon_target']}"
        f" (achieved: server {summary['epsilon_server']}, release "
        f"{summary['epsilon_release']}; calibrated to {summary['threat_model_calibrated']})"
        f": final accuracy "
        f"{summary['final_accuracy']:.4f}, clustering accuracy "
        f"{summary['clustering_accuracy']}; summary in {FLAGS.root_dir}/summary.json")
  return 0


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
