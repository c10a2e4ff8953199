"""pina-pretrain: central pre-training of the dataset's ViT on the upright public split.

  python -m pipelines.pretrain --clients_dir=/tmp/digits [--output=...] [--epochs=30]
  python -m pipelines.pretrain --clients_dir=/tmp/fmnist [--epochs=5]

The backbone preset follows the prepared dataset (digits -> digits_tiny, fashion_mnist ->
fmnist_vit); unset flags take that preset's defaults (pina_tff.models.pretrain.
PRETRAIN_DEFAULTS). Writes `<clients_dir>/backbone/<backbone>.weights.h5` (or --output)
and a json next to it with the config and held-out accuracy (each via
`<file>.tmp-<pid>` and rename). The
output is checked writable before training. Bad input prints one `error: ...` line and
exits with status 2.
"""
import json

from absl import flags

from pina_tff.config import MAX_LEARNING_RATE
from pina_tff.errors import ConfigError
from pina_tff.runtime import paths
from pipelines import cli
from pipelines import startup

FLAGS = flags.FLAGS
flags.DEFINE_string("clients_dir", None, "Prepared data directory (pina-prepare output).")
flags.DEFINE_string("output", None, "Weights file; default "
                    "<clients_dir>/backbone/<backbone>.weights.h5.")
flags.DEFINE_integer("epochs", None, "Training epochs (default: digits_tiny 30, "
                     "fmnist_vit 5).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the split, initialization and shuffling.")
flags.DEFINE_integer("batch_size", None, "Batch size (default 32).", lower_bound=1)
flags.DEFINE_float("learning_rate", None, "Adam learning rate (default 1e-3).",
                   lower_bound=0.0)
flags.DEFINE_float("holdout_fraction", None, "Share of the public split held out to "
                   "report accuracy (default: digits_tiny 0.2, fmnist_vit 0.1).",
                   lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_bool("cosine_decay", None, "Decay the learning rate to 0 along a cosine "
                  "(default: digits_tiny no, fmnist_vit yes).")
flags.DEFINE_string("backbone", None, "Backbone preset (default: the dataset's, "
                    "digits -> digits_tiny, fashion_mnist -> fmnist_vit).")
flags.mark_flag_as_required("clients_dir")


def main(argv):
  del argv
  if not 0 <= FLAGS.seed <= cli.MAX_INT_FLAG:
    raise ConfigError(f"--seed: expected an integer in [0, {cli.MAX_INT_FLAG}], found "
                      f"{FLAGS.seed}")
  if FLAGS.learning_rate is not None and not 0.0 < FLAGS.learning_rate <= MAX_LEARNING_RATE:
    raise ConfigError(f"--learning_rate: expected a value in (0, {MAX_LEARNING_RATE:g}], "
                      f"found {FLAGS.learning_rate}")
  if FLAGS.output:
    paths.check_output_file(FLAGS.output, "--output")
  from pina_tff.models import pretrain  # pylint: disable=g-import-not-at-top
  report = pretrain.run_pretrain(
      FLAGS.clients_dir, output=FLAGS.output, epochs=FLAGS.epochs, seed=FLAGS.seed,
      backbone=FLAGS.backbone, batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, holdout_fraction=FLAGS.holdout_fraction,
      cosine_decay=FLAGS.cosine_decay)
  print(json.dumps({k: report[k] for k in ("weights_file", "report_file", "train_accuracy",
                                           "holdout_accuracy", "holdout_accuracy_per_epoch",
                                           "train_seconds", "total_seconds")
                    if k in report}, indent=1))


def run():
  """Entry point of `python -m pipelines.pretrain`, the Bazel binary and pina-pretrain
  (`pipelines.entry.pretrain`)."""
  startup.prepare(keras=True)  # before TensorFlow, keras and absl's main
  cli.run(main)


if __name__ == "__main__":
  run()
