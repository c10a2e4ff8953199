"""pina-embed: cache the frozen ViT prefix output (last block input) per example (Beam).

  python -m pipelines.embed --clients_dir=/tmp/digits \\
      --weights=/tmp/digits/backbone/digits_tiny.weights.h5 --output_dir=/tmp/digits_emb \\
      [--backbone=<the dataset's preset>] [--dtype=float32] [--batch_size=64] [-- beam options]

Beam PipelineOptions (e.g. --runner=...) go after `--`; an unknown flag before it is an
error. Bad input prints one `error: ...` line and exits with status 2.
"""
import json
import os
import sys

from absl import flags

from pina_tff.runtime import paths
from pipelines import cli
from pipelines import startup

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
flags.DEFINE_bool("overwrite", False, "Replace an existing embeddings output_dir (only "
                  "what pina-embed wrote there).")
flags.mark_flags_as_required(["clients_dir", "output_dir"])


def main(argv):
  paths.check_output_dir(FLAGS.output_dir, "--output_dir")
  from pina_tff.models import beam_embed  # pylint: disable=g-import-not-at-top
  backbone = FLAGS.backbone or beam_embed.backbone_for_dir(FLAGS.clients_dir)
  weights = FLAGS.weights or os.path.join(FLAGS.clients_dir, "backbone",
                                          f"{backbone}.weights.h5")
  manifest = beam_embed.embed(FLAGS.clients_dir, weights, FLAGS.output_dir,
                              backbone=backbone, dtype=FLAGS.dtype,
                              batch_size=FLAGS.batch_size, overwrite=FLAGS.overwrite,
                              beam_args=argv[1:])
  print(json.dumps({k: manifest[k] for k in ("embedding_shape", "embedding_dtype",
                                             "weights_sha256", "embed_seconds")}, indent=1))
  print(f"wrote {FLAGS.output_dir}", file=sys.stderr)


def run():
  """Entry point of `python -m pipelines.embed`, the Bazel binary and pina-embed
  (`pipelines.entry.embed`)."""
  startup.prepare(keras=True)  # before TensorFlow, keras and absl's main
  cli.run(main, passthrough=True)


if __name__ == "__main__":
  run()
