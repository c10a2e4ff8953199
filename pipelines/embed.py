"""pina-embed: cache the frozen ViT prefix output (last block input) per example (Beam).

  python -m pipelines.embed --clients_dir=/tmp/digits \
      --weights=/tmp/digits/backbone/digits_tiny.weights.h5 --output_dir=/tmp/digits_emb \
      [--backbone=<dataset's preset>] [--dtype=float32] [--batch_size=64] [-- beam options]

Unknown flags (e.g. --runner=...) are passed to Beam's PipelineOptions.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pina_tff.errors import PinaError  # noqa: E402
# Imports keras-cv before app.run (see pina_tff/models/backbone.py).
from pina_tff.models import beam_embed  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("clients_dir", None, "Prepared data directory (pina-prepare output).")
flags.DEFINE_string("weights", None, "Backbone weights (keras h5), e.g. from pina-pretrain; "
                    "default <clients_dir>/backbone/<backbone>.weights.h5.")
flags.DEFINE_enum("backbone", None, ["digits_tiny", "fmnist_vit", "vit_s16"],
                  "Backbone preset (default: the dataset's, digits -> digits_tiny, "
                  "fashion_mnist -> fmnist_vit).")
flags.DEFINE_string("output_dir", None, "Directory to write (must not exist).")
flags.DEFINE_enum("dtype", "float32", ["float16", "float32"], "Stored embedding dtype.")
flags.DEFINE_integer("batch_size", 64, "Examples per prefix call.", lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Replace an existing output_dir.")
flags.mark_flags_as_required(["clients_dir", "output_dir"])


def main(argv):
  try:
    backbone = FLAGS.backbone or beam_embed.backbone_for_dir(FLAGS.clients_dir)
    weights = FLAGS.weights or os.path.join(FLAGS.clients_dir, "backbone",
                                            f"{backbone}.weights.h5")
    manifest = beam_embed.embed(FLAGS.clients_dir, weights, FLAGS.output_dir,
                                backbone=backbone, dtype=FLAGS.dtype,
                                batch_size=FLAGS.batch_size, overwrite=FLAGS.overwrite,
                                beam_args=argv[1:])
  except PinaError as e:
    raise app.UsageError(str(e)) from e
  print(json.dumps({k: manifest[k] for k in ("embedding_shape", "embedding_dtype",
                                             "weights_sha256", "embed_seconds")}, indent=1))
  print(f"wrote {FLAGS.output_dir}", file=sys.stderr)


def run():
  app.run(main, flags_parser=_parse_known)


def _parse_known(argv):
  """absl flags we define; everything else (Beam options) is returned as argv[1:]."""
  return FLAGS(argv, known_only=True)


if __name__ == "__main__":
  run()
