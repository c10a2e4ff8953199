"""pina-pretrain: central pre-training of the digits ViT on the upright public split.

  python -m pipelines.pretrain --clients_dir=/tmp/digits [--output=...] [--epochs=30]

Writes `<clients_dir>/backbone/digits_tiny.weights.h5` (or --output) and a json next to it
with the config and held-out accuracy (each via `<file>.tmp-<pid>` and rename).
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pina_tff.errors import PinaError  # noqa: E402
# Imports keras-cv before app.run (see pina_tff/models/backbone.py).
from pina_tff.models import pretrain  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("clients_dir", None, "Prepared data directory (pina-prepare output).")
flags.DEFINE_string("output", None, "Weights file; default "
                    "<clients_dir>/backbone/<backbone>.weights.h5.")
flags.DEFINE_integer("epochs", 30, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the split, initialization and shuffling.")
flags.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_string("backbone", "digits_tiny", "Backbone preset (digits_tiny).")
flags.mark_flag_as_required("clients_dir")


def main(argv):
  del argv
  try:
    report = pretrain.run_pretrain(
        FLAGS.clients_dir, output=FLAGS.output, epochs=FLAGS.epochs, seed=FLAGS.seed,
        backbone=FLAGS.backbone, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate)
  except PinaError as e:
    raise app.UsageError(str(e)) from e
  print(json.dumps({k: report[k] for k in ("weights_file", "report_file", "train_accuracy",
                                           "holdout_accuracy", "train_seconds")
                    if k in report}, indent=1))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
