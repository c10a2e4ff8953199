"""Apache Beam job that writes prepared client data (`pina-clients/1`, docs/architecture.md).

The driver loads the source arrays and computes the partition plan (indices only); the
pipeline then creates one element per client (`beam.Create`), rotates its images, encodes
its records, groups them by shard and writes each shard file itself, with the records
sorted by (client index, split, example position). Shard `s` holds a contiguous block of
clients, so file names and file bytes depend only on the seed and the flags, never on the
runner's scheduling. The manifest is written by the driver once every shard exists.

Runs locally by default, on Beam's in-process `FnApiRunner` (the engine the DirectRunner
falls back to; naming it directly skips the DirectRunner's attempt to download and start
the Prism binary, which fails offline) [project choice]. Any standard Beam
`PipelineOptions` (e.g. `--runner=DirectRunner`, `--runner=FlinkRunner ...`) are
passed through. Shards are written with TensorFlow's file system layer and the output
is published with a local `os.rename`, so other runners need an `output_dir` on a file
system that the driver and every worker share (not gs:// yet).

Publish on success: everything is written to `<output_dir>.tmp-<pid>` and renamed to
`<output_dir>` only after the manifest is written; a failure removes the temporary
directory and leaves no `output_dir` behind.
"""
import dataclasses
import json
import math
import os
import shutil
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple


from pina_tff.data import partition as partition_lib
from pina_tff.data import schema
from pina_tff.data import sources
from pina_tff.errors import ConfigError, DataError
from pina_tff.runtime import sweep

CLIENTS_PER_SHARD = 50  # auto sharding: ceil(num_clients / 50) shards, at most MAX_SHARDS
MAX_SHARDS = 256
DEFAULT_RUNNER = "FnApiRunner"


@dataclasses.dataclass
class PrepareConfig:
  """Flags of `pina-prepare`. None means the dataset's default (see sources.DATASETS).

  Attributes:
    dataset: digits | cifar10 | fashion_mnist | femnist.
    output_dir: directory to create (must not exist unless `overwrite`).
    num_clients: P, the number of simulated clients.
    num_clusters: C, number of rotations (or natural clusters for femnist).
    seed: seeds the public split, the partition and the rotations.
    num_shards: client shard files; 0 = auto (about 50 clients per shard, at most 256).
    overwrite: replace an existing prepared `output_dir`.
    test_fraction: share of each client's examples held out as its test split (not
      used by sources with a fixed test split: fashion_mnist, femnist).
    public_fraction: digits only: share of all examples held out upright as `public`.
    public_size: fashion_mnist only: train images held out upright as `public`.
    source_dir: fashion_mnist only: directory of the four IDX files (default: Debian's
      package location, else tfds).
    tfds_data_dir: TFDS `data_dir` (cifar10, fashion_mnist).
    tff_cache_dir: cache dir of TFF's EMNIST download (femnist).
  """
  dataset: str = "digits"
  output_dir: str = ""
  num_clients: Optional[int] = None
  num_clusters: Optional[int] = None
  seed: int = 0
  num_shards: int = 0
  overwrite: bool = False
  test_fraction: float = 0.2
  public_fraction: float = 0.2
  public_size: int = sources.DEFAULT_PUBLIC_SIZE
  source_dir: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  tff_cache_dir: Optional[str] = None

  def validate(self) -> "PrepareConfig":
    """ConfigError naming the flag on the first invalid value."""
    sources.dataset_info(self.dataset)
    if not self.output_dir:
      raise ConfigError("--output_dir: expected a directory path, got nothing")
    if self.num_clients is not None and self.num_clients < 1:
      raise ConfigError(f"--num_clients is {self.num_clients}, expected >= 1")
    if self.num_clusters is not None and self.num_clusters < 1:
      raise ConfigError(f"--num_clusters is {self.num_clusters}, expected >= 1")
    if self.num_shards < 0:
      raise ConfigError(f"--num_shards is {self.num_shards}, expected >= 0 (0 = auto)")
    if not 0.0 <= self.test_fraction < 1.0:
      raise ConfigError(f"--test_fraction is {self.test_fraction}, expected 0 <= x < 1")
    if not 0.0 <= self.public_fraction < 1.0:
      raise ConfigError(f"--public_fraction is {self.public_fraction}, expected "
                        "0 <= x < 1")
    if self.seed < 0:
      raise ConfigError(f"--seed is {self.seed}, expected >= 0")
    if self.public_size < 0:
      raise ConfigError(f"--public_size is {self.public_size}, expected >= 0")
    return self

  def loader_kwargs(self) -> Dict[str, Any]:
    """Dataset-specific arguments of `sources.LOADERS[self.dataset]`."""
    if self.dataset == "digits":
      return {"public_fraction": self.public_fraction}
    if self.dataset == "fashion_mnist":
      return {"public_size": self.public_size, "source_dir": self.source_dir}
    return {}


def num_shards_for(num_clients: int, requested: int) -> int:
  """Shard count: `requested` (capped at num_clients so no shard is empty) or auto."""
  if requested <= 0:
    requested = min(MAX_SHARDS, math.ceil(num_clients / CLIENTS_PER_SHARD))
  return max(1, min(requested, num_clients))


def shard_of(client_index: int, num_clients: int, num_shards: int) -> int:
  """Contiguous blocks: client i goes to shard floor(i * num_shards / num_clients)."""
  return client_index * num_shards // num_clients


# ----------------------------------------------------------------- pipeline steps
# Elements are plain tuples so that any runner can pickle them.
def _rotate_client(elem: Dict[str, Any]) -> Dict[str, Any]:
  """Applies the client's rotation to its train and test images."""
  out = dict(elem)
  out["train_images"] = partition_lib.rotate(elem["train_images"], elem["rotation_deg"])
  out["test_images"] = partition_lib.rotate(elem["test_images"], elem["rotation_deg"])
  return out


def _encode_client(elem: Dict[str, Any]) -> Iterable[Tuple[str, Tuple[tuple, bytes]]]:
  """Yields (shard file name, (sort key, serialized record)) for each example."""
  for split_index, split in enumerate(schema.SPLITS):
    images, labels = elem[f"{split}_images"], elem[f"{split}_labels"]
    for j in range(len(labels)):
      record = schema.encode_client_example(elem["client_id"], split, images[j],
                                            int(labels[j]), elem["cluster"])
      yield elem["shard_path"], ((elem["index"], split_index, j), record)


def _encode_public(elem: Dict[str, Any]) -> Iterable[Tuple[str, Tuple[tuple, bytes]]]:
  for j in range(len(elem["labels"])):
    record = schema.encode_client_example(schema.PUBLIC_CLIENT_ID, "train", elem["images"][j],
                                          int(elem["labels"][j]), schema.UNKNOWN_CLUSTER)
    yield elem["path"], ((0, 0, j), record)


def _write_shard(kv: Tuple[str, Iterable[Tuple[tuple, bytes]]], directory: str
                 ) -> Tuple[str, int]:
  """Writes one shard's records, sorted by key, to `<directory>/<name>`; returns its count."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  name, keyed = kv
  records = sorted(keyed, key=lambda kr: kr[0])
  with tf.io.TFRecordWriter(os.path.join(directory, name)) as w:
    for _, record in records:
      w.write(record)
  return name, len(records)


def build_pipeline(pipeline, client_elems: Sequence[Dict[str, Any]],
                   public_elems: Sequence[Dict[str, Any]], directory: str):
  """Adds the prepare transforms to `pipeline` (a `beam.Pipeline`)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  records = (pipeline
             | "CreateClients" >> beam.Create(client_elems, reshuffle=False)
             | "Rotate" >> beam.Map(_rotate_client)
             | "EncodeClients" >> beam.FlatMap(_encode_client))
  pcolls = [records]
  if public_elems:
    pcolls.append(pipeline
                  | "CreatePublic" >> beam.Create(public_elems, reshuffle=False)
                  | "EncodePublic" >> beam.FlatMap(_encode_public))
  return (pcolls
          | "Flatten" >> beam.Flatten()
          | "GroupByShard" >> beam.GroupByKey()
          | "WriteShards" >> beam.Map(lambda kv: _write_shard(kv, directory)))


def pipeline_options(beam_args: Optional[Sequence[str]] = None):
  """`PipelineOptions` from command-line style args; local FnApiRunner unless a runner is
  given (see module docstring)."""
  # pylint: disable-next=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
  opts = PipelineOptions(list(beam_args or []))
  if not opts.view_as(StandardOptions).runner:
    opts.view_as(StandardOptions).runner = DEFAULT_RUNNER
  return opts


# ------------------------------------------------------------------------- driver
def _check_output_dir(cfg: PrepareConfig) -> None:
  out = cfg.output_dir
  if not os.path.exists(out):
    return
  manifest = os.path.join(out, schema.MANIFEST_NAME)
  is_prepared = os.path.isfile(manifest)
  if not cfg.overwrite:
    what = "prepared data" if is_prepared else "a directory that is not prepared data"
    raise ConfigError(f"--output_dir {out} already exists ({what}); expected a new path, "
                      "or pass --overwrite to replace prepared data")
  if not is_prepared and os.listdir(out):
    raise ConfigError(f"--output_dir {out} exists and has no {schema.MANIFEST_NAME}; "
                      "--overwrite only replaces prepared data (refusing to delete it)")


def _publish(tmp: str, out: str) -> None:
  """Moves what `tmp` holds to `out`.

  A new `out` is one atomic rename. An existing prepared `out` (--overwrite) loses only
  what pina-prepare wrote there (the old manifest and the record files it names); other
  files stay. Caches built from the old data (backbone/, embeddings/) stay too: they are
  keyed by the manifest's hash (pina_tff.simulation.cache) and rebuilt when used.
  """
  if not os.path.exists(out):
    os.rename(tmp, out)
    return
  old_manifest = os.path.join(out, schema.MANIFEST_NAME)
  try:
    with open(old_manifest) as f:
      old_files = list(schema.data_files(json.load(f)))
  except (OSError, ValueError, KeyError, TypeError):
    old_files = []
  for rel in [schema.MANIFEST_NAME] + old_files:  # the manifest first: no reader sees
    path = os.path.join(out, rel)                 # a manifest without its shards
    if os.path.isfile(path):
      os.remove(path)
  names = sorted(os.listdir(tmp), key=lambda n: n == schema.MANIFEST_NAME)  # manifest last
  for name in names:
    os.replace(os.path.join(tmp, name), os.path.join(out, name))
  os.rmdir(tmp)


def prepare(cfg: PrepareConfig, beam_args: Optional[Sequence[str]] = None,
            source: Optional[sources.SourceData] = None) -> Dict[str, Any]:
  """Runs the whole prepare job; returns the manifest written to `cfg.output_dir`.

  Args:
    cfg: validated flags.
    beam_args: extra Beam pipeline flags (runner etc.).
    source: already loaded arrays (tests); loaded from `cfg.dataset` when None.
  """
  cfg.validate()
  cfg.output_dir = os.path.abspath(cfg.output_dir)
  _check_output_dir(cfg)
  info = sources.dataset_info(cfg.dataset)
  source = _load_source(cfg, source)
  num_clusters = info.num_clusters if cfg.num_clusters is None else cfg.num_clusters
  plans, rots = partition_lib.make_plan(source, cfg.num_clients, num_clusters, cfg.seed,
                                        cfg.test_fraction)
  num_shards = num_shards_for(len(plans), cfg.num_shards)
  shard_names = [schema.shard_name(s, num_shards) for s in range(num_shards)]
  client_elems, clients, shard_counts = _client_elements(plans, source, shard_names)
  public_elems = _public_elements(source, cfg.dataset)
  manifest = _clients_manifest(cfg, info, source, num_clusters, rots, clients,
                               list(zip(shard_names, shard_counts)), bool(public_elems))
  _write_and_publish(cfg.output_dir, manifest, client_elems, public_elems, beam_args)
  return manifest


def _load_source(cfg: PrepareConfig,
                 source: Optional[sources.SourceData]) -> sources.SourceData:
  """`source`, or the arrays of `cfg.dataset` loaded when None; images checked."""
  if source is None:
    source = sources.LOADERS[cfg.dataset](seed=cfg.seed, tfds_data_dir=cfg.tfds_data_dir,
                                          tff_cache_dir=cfg.tff_cache_dir,
                                          **cfg.loader_kwargs())
  sources.check_images(source.images, cfg.dataset)
  return source


def _client_elements(plans, source: sources.SourceData, shard_names: Sequence[str]):
  """Per client: the pipeline element (its arrays and shard), the manifest entry, and
  the record count of each shard (train + test examples)."""
  num_clients, num_shards = len(plans), len(shard_names)
  client_elems, clients, shard_counts = [], [], [0] * num_shards
  for i, p in enumerate(plans):
    s = shard_of(i, num_clients, num_shards)
    client_elems.append({
        "index": i, "client_id": p.client_id, "cluster": p.cluster,
        "rotation_deg": p.rotation_deg, "shard_path": shard_names[s],
        "train_images": source.images[p.train_idx], "train_labels": source.labels[p.train_idx],
        "test_images": source.images[p.test_idx], "test_labels": source.labels[p.test_idx]})
    clients.append({"client_id": p.client_id, "cluster": p.cluster,
                    "num_train": int(len(p.train_idx)), "num_test": int(len(p.test_idx)),
                    "shard": s})
    shard_counts[s] += len(p.train_idx) + len(p.test_idx)
  return client_elems, clients, shard_counts


def _public_elements(source: sources.SourceData, dataset: str) -> list:
  """The public (upright, server-side) split as one pipeline element, or none."""
  if source.public_images is None or not len(source.public_images):
    return []
  sources.check_images(source.public_images, dataset, "public images")
  return [{"path": "public.tfrecord", "images": source.public_images,
           "labels": source.public_labels}]


def _clients_manifest(cfg: PrepareConfig, info, source: sources.SourceData,
                      num_clusters: int, rots, clients, shards, has_public: bool
                      ) -> Dict[str, Any]:
  """The `pina-clients/1` manifest; `shards`: (file name, record count) pairs."""
  manifest = {
      "format": schema.CLIENTS_FORMAT, "dataset": cfg.dataset, "num_clients": len(clients),
      "num_clusters": num_clusters, "rotations_deg": rots,
      "image_shape": list(info.image_shape), "num_classes": info.num_classes,
      "seed": cfg.seed, "test_fraction": cfg.test_fraction,
      "label_known_clusters": info.rotated,
      "shards": [{"path": n, "num_records": c} for n, c in shards],
      "clients": clients,
      "public": ({"path": "public.tfrecord", "num_records": int(len(source.public_labels))}
                 if has_public else None),
  }
  if cfg.dataset == "digits":
    manifest["public_fraction"] = cfg.public_fraction
  if source.is_test is not None:
    # The source fixes the test split: test_fraction was not used.
    manifest.pop("test_fraction")
    manifest["test_split"] = "source"
  if has_public:
    manifest["public_split"] = {
        "num_records": int(len(source.public_labels)),
        "upright": True, "held_by_clients": False,
        "selection": ("seeded permutation ([seed, 1]) of the source's train split"
                      if source.is_test is not None else
                      "seeded permutation ([seed, 1]) of all examples")}
  if source.origin:
    manifest["source"] = source.origin
  return manifest


def _write_and_publish(output_dir: str, manifest: Dict[str, Any], client_elems,
                       public_elems, beam_args: Optional[Sequence[str]]) -> None:
  """Runs the pipeline into `<output_dir>.tmp-<pid>`, checks every shard exists, writes
  the manifest and publishes; on any failure the tmp directory is removed."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  sweep.sweep_dead_tmp(os.path.dirname(output_dir),
                      stem=os.path.basename(output_dir))  # left by killed runs
  tmp = f"{output_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
      build_pipeline(pipeline, client_elems, public_elems, tmp)
    for rel in schema.data_files(manifest):
      if not os.path.exists(os.path.join(tmp, rel)):
        raise DataError(f"{os.path.join(tmp, rel)}: the pipeline finished without writing "
                        "this shard (expected every shard to be written)")
    schema.write_manifest(tmp, manifest)
    _publish(tmp, output_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
