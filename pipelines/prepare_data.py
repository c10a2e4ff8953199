"""pina-prepare: write rotated / partitioned client data as sharded TFRecords + manifest.

  python -m pipelines.prepare_data --dataset=digits --output_dir=/tmp/digits_clients
  python -m pipelines.prepare_data --dataset=fashion_mnist --num_clients=10000 \\
      --output_dir=/tmp/fmnist_clients [--source_dir=DIR_WITH_IDX_FILES]
  python -m pipelines.prepare_data --dataset=cifar10 --output_dir=/shared/cifar_clients \\
      -- --runner=FlinkRunner ...   # Beam PipelineOptions go after `--`

Arguments after `--` are passed to Beam's `PipelineOptions` (local in-process
FnApiRunner by default); an unknown flag before it is an error. Output format: docs/architecture.md, "Prepared
client data". Shards are written with TensorFlow's file layer and published by a local
rename, so `--output_dir` must be a path the driver and every worker share.
Bad input prints one `error: ...` line to stderr and exits with status 2.
"""
import time

from absl import flags

from pina_tff.runtime import paths
from pipelines import cli
from pipelines import startup

_DATASET = flags.DEFINE_string(
    "dataset", "digits", "digits | cifar10 | fashion_mnist | femnist")
_NUM_CLIENTS = flags.DEFINE_integer(
    "num_clients", None, "Simulated clients P (default: digits 100, others 10,000; "
    "femnist: every writer up to 10,000).")
_NUM_CLUSTERS = flags.DEFINE_integer(
    "num_clusters", None, "Clusters C = rotations (default: digits 4, cifar10 2, "
    "fashion_mnist 4, femnist 2).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory to create.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (cifar10, "
                                     "fashion_mnist).")
_TFF_CACHE_DIR = flags.DEFINE_string("tff_cache_dir", None, "Cache dir of TFF's EMNIST "
                                     "download (femnist).")
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", None, "fashion_mnist: directory of the four IDX files "
    "(train-images-idx3-ubyte.gz, ...). Default: Debian's package location "
    "(apt-get install dataset-fashion-mnist), else tfds.")
_PUBLIC_SIZE = flags.DEFINE_integer(
    "public_size", 10_000, "fashion_mnist: train images held out upright as the public "
    "split (backbone pre-training; no client holds them).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the public split, partition, rotations.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Client shard files; 0 = auto "
                                   "(about 50 clients per shard, at most 256).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace existing prepared data.")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.2, "Share of each client's "
                                    "examples in its test split.")
_PUBLIC_FRACTION = flags.DEFINE_float("public_fraction", 0.2, "digits only: share held "
                                      "out upright as the public split.")


def main(argv):
  beam_args = argv[1:]
  # Imported here so that --help stays fast.
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  cfg = beam_prepare.PrepareConfig(
      dataset=_DATASET.value, output_dir=_OUTPUT_DIR.value or "",
      num_clients=_NUM_CLIENTS.value, num_clusters=_NUM_CLUSTERS.value, seed=_SEED.value,
      num_shards=_NUM_SHARDS.value, overwrite=_OVERWRITE.value,
      test_fraction=_TEST_FRACTION.value, public_fraction=_PUBLIC_FRACTION.value,
      public_size=_PUBLIC_SIZE.value, source_dir=_SOURCE_DIR.value,
      tfds_data_dir=_TFDS_DATA_DIR.value, tff_cache_dir=_TFF_CACHE_DIR.value).validate()
  paths.check_output_dir(cfg.output_dir, "--output_dir")  # before any data is loaded
  start = time.perf_counter()
  manifest = beam_prepare.prepare(cfg, beam_args)
  records = sum(s["num_records"] for s in manifest["shards"])
  public = manifest["public"]["num_records"] if manifest.get("public") else 0
  print(f"wrote {manifest['num_clients']} clients, {records} records in "
        f"{len(manifest['shards'])} shards (+{public} public) to {cfg.output_dir} "
        f"in {time.perf_counter() - start:.1f} s")


def run():
  """Entry point of `python -m pipelines.prepare_data`, the Bazel binary and
  pina-prepare (`pipelines.entry.prepare`)."""
  startup.prepare()
  cli.run(main, passthrough=True)


if __name__ == "__main__":
  run()
