"""pina-simulate: run PINA or a DP baseline on prepared clients (resumable).

  pina-simulate --clients_dir=/tmp/digits --root_dir=runs/pina_eps8 --method=pina \\
      --epsilon=8

Settings start from the preset of the dataset that --clients_dir's manifest names
(digits, fashion_mnist, cifar10, femnist; `pipelines/presets.py`), scaled to the
population the data holds; --preset picks another. A --config file (JSON or YAML with
the fields of `pina_tff.config.RunConfig`) is laid over that preset, and flags override
both. The run prints its settings in one line first (`settings: ...`);
--print_config prints the resolved configuration and exits.
When --clients_dir holds only what pina-prepare wrote, the backbone is pre-trained and
the embeddings computed first, and cached there.
Run it again with the same command after a crash to resume from the last checkpoint;
a --root_dir holding a run of another configuration is an error unless --restart.
SIGINT / SIGTERM stop after the current round with a checkpoint (exit code 128 +
signal); during start-up, pre-training or embedding they stop at once (same code).
Bad input prints one `error: ...` line and exits with status 2.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from absl import flags

from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff.runtime import paths
from pina_tff.runtime import signals
from pipelines import cli
from pipelines import presets
from pipelines import startup
from pipelines.presets import parse_epsilon

if TYPE_CHECKING:  # imported in main(), after the quiet start-up
  from pina_tff.simulation import population as population_lib

FLAGS = flags.FLAGS


def _default(dotted: str) -> str:
  """What config field `dotted` is when neither a flag nor --config sets it, as a
  flag's help states it: its value in every dataset preset (RunConfig's default where
  a preset does not set it), or "the preset's" where the presets differ."""
  values = set()
  for preset in presets.DATASET_PRESETS.values():
    node = config_lib.to_dict(config_lib.from_dict(
        presets.for_population(preset, preset["population"])))
    for key in dotted.split("."):
      node = node[key]
    values.add(f"{node:g}" if isinstance(node, float) else str(node))
  return values.pop() if len(values) == 1 else "the preset's"


flags.DEFINE_string("clients_dir", None, "Output of pina-prepare or pina-embed.")
flags.DEFINE_string("root_dir", None, "Run directory: checkpoints, metrics, summary.")
flags.DEFINE_enum("preset", None, sorted(presets.DATASET_PRESETS),
                  "Settings to start from (default: the preset of the dataset the "
                  "--clients_dir manifest names).")
flags.DEFINE_string("config", None, "Optional JSON/YAML RunConfig laid over the preset; "
                    "flags override both.")
flags.DEFINE_bool("print_config", False, "Print the resolved settings as JSON and exit "
                  "without running (no --root_dir needed).")
flags.DEFINE_enum("method", None, list(config_lib.METHODS),
                  f"Method (default {_default('method')}).")
flags.DEFINE_string("epsilon", None, "Total epsilon: a number or 'inf' "
                    f"(default {_default('privacy.epsilon')}).")
flags.DEFINE_float("delta", None, "Total delta (default min(1e-5, 1/(10*population))).")
flags.DEFINE_enum("threat_model", None, list(config_lib.THREAT_MODELS),
                  "Epsilon the noise is calibrated to: 'server' (knows who took part) "
                  "or 'release' (sees only the models); default "
                  f"{_default('privacy.threat_model')}. Both are reported.")
flags.DEFINE_enum("sampling", None, list(config_lib.SAMPLINGS),
                  "Cohorts of stages 0 and 2: 'poisson' or 'fixed' (default "
                  f"{_default('privacy.sampling')}).")
flags.DEFINE_enum("noise_mode", None, list(config_lib.NOISE_MODES),
                  "'simulation' (noise from --seed) or 'secure' (OS entropy); default "
                  f"{_default('privacy.noise_mode')}.")
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
                  "Held-out examples scored: 'val' (choose settings on it) or 'test' "
                  "(only for the runs of a final table); default "
                  f"{_default('eval_split')}.")
flags.DEFINE_enum("aggregator", None, list(config_lib.AGGREGATORS), "Stage-2 aggregator.")
flags.DEFINE_float("fedprox_mu", None, "FedProx proximal weight.")
flags.DEFINE_integer("ddp_bits", None, "Bit width of distributed DP's modular secure "
                     f"sum, in [16, 22] (default {_default('stage2.ddp_bits')}).")
flags.DEFINE_enum("precision", None, list(config_lib.PRECISIONS),
                  "Arithmetic of the stage-2 client work (default "
                  f"{_default('stage2.precision')}): bfloat16 "
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

# Config field -> the flag that sets it (--cohort, --client_lr, --clip and
# --local_epochs set stage 0's field too).
FLAG_FIELDS = (
    (("method",), "method"), (("num_clusters",), "num_clusters"), (("seed",), "seed"),
    (("privacy", "delta"), "delta"), (("privacy", "threat_model"), "threat_model"),
    (("privacy", "sampling"), "sampling"), (("privacy", "noise_mode"), "noise_mode"),
    (("stage2", "rounds"), "rounds"), (("stage0", "rounds"), "stage0_rounds"),
    (("stage2", "cohort"), "cohort"), (("stage0", "cohort"), "cohort"),
    (("stage2", "local_epochs"), "local_epochs"),
    (("stage0", "local_epochs"), "local_epochs"),
    (("stage2", "batch_size"), "batch_size"), (("stage2", "client_lr"), "client_lr"),
    (("stage0", "lr"), "client_lr"), (("stage2", "server_lr"), "server_lr"),
    (("stage2", "server_momentum"), "server_momentum"), (("stage2", "clip"), "clip"),
    (("stage0", "clip"), "clip"), (("stage1", "num_sketch_clients"), "sketch_clients"),
    (("stage1", "local_epochs"), "sketch_epochs"), (("stage1", "lr"), "sketch_lr"),
    (("stage1", "top_k"), "top_k"), (("stage1", "clip"), "sketch_clip"),
    (("stage2", "warm_rounds"), "warm_rounds"), (("stage2", "scaling"), "scaling"),
    (("stage2", "aggregator"), "aggregator"), (("stage2", "fedprox_mu"), "fedprox_mu"),
    (("stage2", "normality_rule"), "normality_rule"),
    (("stage2", "restore_max_gain"), "restore_max_gain"), (("eval_split",), "eval_split"),
    (("stage2", "ddp_bits"), "ddp_bits"), (("stage2", "precision"), "precision"),
)


def _lay_over(base: dict, top: dict) -> None:
  """`top`'s values over `base`, section by section (in place)."""
  for key, value in top.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      base[key].update(value)
    else:
      base[key] = value


def _given_flags(flag_values) -> list:
  """The run-config flags given on the command line, in FLAG_FIELDS order."""
  names = [f for _, f in FLAG_FIELDS] + ["epsilon"]
  return list(dict.fromkeys(n for n in names if getattr(flag_values, n) is not None))


def preset_name(flag_values, facts) -> str:
  """--preset, or the preset of the dataset the data's manifest names."""
  return flag_values.preset or presets.preset_for_dataset(facts.dataset)


def build_config(flag_values, facts: population_lib.DataFacts) -> config_lib.RunConfig:
  """The preset (--preset or the data's), a --config file laid over it, the flags that
  were given over both; population-relative fields and the model width for the data's
  `facts`; validated. A ConfigError names the flag (or the config file) that set the
  field it is about."""
  base = copy.deepcopy(presets.DATASET_PRESETS[preset_name(flag_values, facts)])
  file_fields = set()
  if flag_values.config:
    top = config_lib.read_config_dict(flag_values.config)
    if not isinstance(top, dict):
      raise config_lib.ConfigError(f"{flag_values.config}: expected a mapping of keys "
                                   f"to values, found {top!r}")
    _lay_over(base, top)
    for key, value in top.items():
      if isinstance(value, dict):
        file_fields.update(f"{key}.{k}" for k in value)
      else:
        file_fields.add(key)
  for path, flag in FLAG_FIELDS:
    value = getattr(flag_values, flag)
    if value is not None:
      presets.set_field(base, path, value)
  try:
    if flag_values.epsilon is not None:
      base.setdefault("privacy", {})["epsilon"] = parse_epsilon(flag_values.epsilon)
    base = presets.for_population(base, facts.num_clients)
    base["model_width"] = facts.model_width  # a fact of the data, not a setting
    return config_lib.validate(config_lib.from_dict(base))
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(_attribute(str(e), flag_values, file_fields)) from None


def _attribute(message: str, flag_values, file_fields) -> str:
  """`message` prefixed with the flag or config file that set the field it names."""
  if message.startswith("--"):
    return message
  for path, flag in FLAG_FIELDS:
    dotted = ".".join(path)
    if getattr(flag_values, flag) is not None and message.startswith(dotted):
      return f"--{flag}: {message}"
  if message.startswith("privacy.epsilon") and flag_values.epsilon is not None:
    return f"--epsilon: {message}"
  if flag_values.config and any(message.startswith(f) for f in file_fields):
    return f"{flag_values.config}: {message}"
  return message


def _count(n: int) -> str:
  return f"{n:,}"


def settings_line(cfg: config_lib.RunConfig, name: str, flag_values) -> str:
  """One line: the preset, population and the settings a newcomer needs to see."""
  s0, s1, s2 = cfg.stage0, cfg.stage1, cfg.stage2
  p = cfg.population

  def cohort(m: int) -> str:
    return f"all {_count(p)}" if m == p else f"{_count(m)} of {_count(p)}"

  eps = cfg.privacy.epsilon
  parts = [f"{name} preset", f"{_count(p)} clients", f"C = {cfg.num_clusters}",
           cfg.method, f"epsilon = {'inf' if eps == float('inf') else f'{eps:g}'}"]
  if s0.enabled and s0.rounds > 0:
    parts.append(f"stage 0: {s0.rounds} rounds, cohort {cohort(s0.cohort)}")
  else:
    parts.append("stage 0 off")
  if method_table.get(cfg.method).uses_stage1:
    parts.append(f"sketch clients {cohort(min(s1.num_sketch_clients, p))}, "
                 f"top-k {s1.top_k} of width {cfg.model_width}")
  parts.append(f"stage 2: {s2.rounds} rounds, cohort {cohort(s2.cohort)}, "
               f"{s2.local_epochs} local epochs, client lr {s2.client_lr:g}, "
               f"server lr {s2.server_lr:g}, clip {s2.clip:g}")
  extra = []
  if flag_values.config:
    extra.append(f"config {flag_values.config}")
  given = _given_flags(flag_values)
  if given:
    extra.append("flags " + " ".join(f"--{g}" for g in given))
  line = "settings: " + ", ".join(parts)
  return line + (f" (over it: {'; '.join(extra)})" if extra else "")


def _check_run_flags(flag_values) -> None:
  """The flags of how the run runs (not what it computes): ConfigError naming one."""
  for flag, low, high in (("workers", 1, 256), ("checkpoint_every", 1, config_lib.MAX_INT),
                          ("eval_every", 1, config_lib.MAX_INT)):
    value = getattr(flag_values, flag)
    if not low <= value <= high:
      raise config_lib.ConfigError(f"--{flag}: expected an integer in [{low}, {high}], "
                                   f"found {value}")
  if flag_values.shard_size is not None and flag_values.shard_size < 1:
    raise config_lib.ConfigError(f"--shard_size: expected an integer >= 1 (simulated "
                                 f"clients per TFF client), found {flag_values.shard_size}")


def main(argv):
  del argv  # cli.run rejects positional arguments
  # After the quiet start-up (run()); pylint: disable-next=g-import-not-at-top,redefined-outer-name
  from pina_tff.simulation import population as population_lib
  if not FLAGS.clients_dir or not (FLAGS.root_dir or FLAGS.print_config):
    raise config_lib.ConfigError("--clients_dir and --root_dir are required")
  _check_run_flags(FLAGS)
  facts = population_lib.data_facts(FLAGS.clients_dir)
  cfg = build_config(FLAGS, facts)
  if FLAGS.shard_size is not None and FLAGS.shard_size > facts.num_clients:
    raise config_lib.ConfigError(
        f"--shard_size: expected at most the population ({facts.num_clients}), found "
        f"{FLAGS.shard_size}")
  print(settings_line(cfg, preset_name(FLAGS, facts), FLAGS), file=sys.stderr,
        flush=True)
  if FLAGS.print_config:
    print(json.dumps(config_lib.to_dict(config_lib.resolve(cfg, facts.num_clients)),
                     indent=1, sort_keys=True))
    return 0
  paths.check_run_dir(FLAGS.root_dir, FLAGS.clients_dir)
  population_lib.check_cache_buildable(FLAGS.clients_dir)
  addresses = None
  if FLAGS.worker_addresses:
    from computations.runtime import workers  # pylint: disable=g-import-not-at-top
    addresses = workers.parse_addresses(FLAGS.worker_addresses)
    if FLAGS.workers != 1:
      raise config_lib.ConfigError("give either --workers or --worker_addresses")
  from computations.runtime import context  # pylint: disable=g-import-not-at-top
  from computations.program import program  # pylint: disable=g-import-not-at-top
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
  """Entry point of `python -m pipelines.simulate`, the Bazel binary and pina-simulate
  (`pipelines.entry.simulate`)."""
  startup.prepare(keras=True)  # before TensorFlow, keras and absl's main
  cli.run(main)


if __name__ == "__main__":
  run()
