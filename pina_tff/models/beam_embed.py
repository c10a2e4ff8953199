"""Apache Beam job `pina-embed`: runs the frozen prefix once per example and caches it.

Input: prepared client data (`pina-clients/1`). Output: `pina-embeddings/1` (see
docs/architecture.md): the same manifest layout and shard files, each record carrying
`embedding` = raw bytes of the last transformer block's input, shape [T, d], dtype
float16 or float32, instead of `image`. The manifest adds `embedding_shape`,
`embedding_dtype`, `backbone` (BackboneConfig json), `weights_file` and `weights_sha256`,
and `source_dir` / `source_format`.

Pipeline: one element per record file (client shards + public). `EmbedShardDoFn` builds
the backbone, loads its weights and the prefix model once per worker (`setup`), streams
the shard's records in batches of `batch_size` through the prefix and writes the output
shard itself, in the input's record order (so the manifest's shard/client layout holds
unchanged). Parallelism is per shard file. DirectRunner by default; any Beam pipeline
options pass through. Everything is written to `<output_dir>.tmp-<pid>`, renamed to
`<output_dir>` after the manifest is written; on failure the tmp directory is removed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np

from pina_tff.data import schema
from pina_tff.errors import ConfigError, DataError, PinaError, WeightsError
from pina_tff.models import backbone as bb
from pina_tff.runtime import sweep

_STATS_SUFFIX = ".embed-stats.json"


class EmbedShardDoFn(beam.DoFn):
  """(input path, output path) -> writes the embedded shard; yields its stats."""

  def __init__(self, config_json: dict, weights_file: str, image_shape: Sequence[int],
               dtype: str, batch_size: int):
    super().__init__()
    self._config_json = config_json
    self._weights_file = weights_file
    self._image_shape = list(image_shape)
    self._dtype = dtype
    self._batch_size = batch_size
    self._prefix = None

  def setup(self):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    self._prefix = build_prefix_from_file(bb.BackboneConfig.from_json(self._config_json),
                                          self._weights_file)

  def process(self, paths):
    src, dst = paths
    stats = embed_file(self._prefix, src, dst, self._image_shape, self._dtype,
                       self._batch_size)
    with open(dst + _STATS_SUFFIX, "w") as f:
      json.dump(stats, f)
    yield stats


def build_prefix_from_file(config: bb.BackboneConfig, weights_file: str):
  """Backbone of `config` with `weights_file` loaded -> its prefix model (tf.function)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pina_tff.models import split  # pylint: disable=g-import-not-at-top
  from pina_tff.models import weights as weights_lib  # pylint: disable=g-import-not-at-top
  model = bb.build_vit(config)
  weights_lib.load_backbone_weights(model, weights_file)
  prefix = split.build_prefix(model)
  return tf.function(lambda x: prefix(x, training=False), reduce_retracing=True)


def embed_file(prefix, src: str, dst: str, image_shape, dtype: str, batch_size: int) -> dict:
  """Embeds every record of `src` into `dst` (same order); returns {'path', 'num_records'}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  n = 0
  batch: list[dict] = []

  def flush(writer):
    images = np.stack([ex["image"] for ex in batch]).astype(np.float32)
    emb = prefix(tf.constant(images)).numpy()
    for ex, e in zip(batch, emb):
      writer.write(schema.encode_embedding_example(ex["client_id"], ex["split"], e,
                                                   ex["label"], ex["cluster"], dtype))
    batch.clear()

  with tf.io.TFRecordWriter(dst) as writer:
    for rec in tf.data.TFRecordDataset(src).as_numpy_iterator():
      batch.append(schema.decode_client_example(rec, image_shape))
      n += 1
      if len(batch) >= batch_size:
        flush(writer)
    if batch:
      flush(writer)
  return {"path": os.path.basename(dst), "num_records": n, "seconds": time.time() - t0}


def pipeline_options(beam_args: Optional[Sequence[str]] = None):
  """Beam options; the same local in-process runner as pina-prepare unless one is given."""
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  return beam_prepare.pipeline_options(beam_args)


def _check_weights_and_shape(config: bb.BackboneConfig, weights_file: str,
                             manifest: dict, clients_dir: str) -> str:
  """Fails fast in the driver: image shape vs backbone, weights file vs model."""
  from pina_tff.models import weights as weights_lib  # pylint: disable=g-import-not-at-top
  bb.check_images_shape(config, manifest["image_shape"],
                        f"{os.path.join(clients_dir, schema.MANIFEST_NAME)} image_shape")
  if not weights_file:
    raise ConfigError("--weights is required: a keras h5 weights file of the backbone "
                      "(e.g. written by pina-pretrain)")
  if not os.path.exists(weights_file):
    raise WeightsError(f"weights file {weights_file!r} not found (expected a keras h5 file "
                       f"for backbone {config.name!r})")
  model = bb.build_vit(config)
  weights_lib.check_weights_file(model, weights_file)
  return weights_lib.sha256_file(weights_file)


def backbone_for_dir(clients_dir: str) -> str:
  """The backbone preset of the dataset prepared in `clients_dir` (its manifest)."""
  manifest = schema.read_manifest(clients_dir, schema.CLIENTS_FORMAT)
  return bb.backbone_for_dataset(manifest.get("dataset", ""))
def _worker_error(clients_dir: str, e: BaseException) -> str:
  """One line for an error raised inside the Beam job (corrupt shard, bad record)."""
  import re  # pylint: disable=g-import-not-at-top
  text = str(e)
  m = re.search(r"(truncated|corrupted) record at \d+", text)
  if m or "DataLossError" in text or "Read less bytes" in text:
    detail = m.group(0) if m else "DataLossError"
    return (f"{clients_dir}: a record file is corrupt or truncated ({detail}); prepare "
            "the data again with pina-prepare --overwrite")
  if isinstance(e, PinaError):
    return str(e)
  return f"{clients_dir}: embedding failed: {text.strip().splitlines()[0][:300]}"


def embed(clients_dir: str, weights_file: str, output_dir: str,
          backbone: Optional[str] = None, dtype: str = "float32", batch_size: int = 64,
          overwrite: bool = False, beam_args: Optional[Sequence[str]] = None) -> dict:
  """Runs the embed job; returns the manifest written to `output_dir`.

  `backbone` None picks the preset of the manifest's dataset (backbone_for_dataset).
  """
  output_dir = os.path.abspath(output_dir)
  _check_embed_flags(dtype, batch_size, output_dir, overwrite)
  manifest = schema.read_manifest(clients_dir, schema.CLIENTS_FORMAT)
  backbone = backbone or bb.backbone_for_dataset(manifest.get("dataset", ""))
  config = bb.get_config(backbone, num_classes=int(manifest["num_classes"]))
  weights_file = os.path.abspath(weights_file) if weights_file else weights_file
  sha = _check_weights_and_shape(config, weights_file, manifest, clients_dir)

  sweep.sweep_dead_tmp(os.path.dirname(output_dir),
                      stem=os.path.basename(output_dir))  # left by killed runs
  tmp = f"{output_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    rel_paths = list(schema.data_files(manifest))
    pairs = [(os.path.join(clients_dir, p), os.path.join(tmp, p)) for p in rel_paths]
    dofn = EmbedShardDoFn(config.to_json(), weights_file, manifest["image_shape"], dtype,
                         batch_size)
    seconds = _run_embed_pipeline(dofn, pairs, clients_dir, beam_args)
    _check_record_counts(manifest, rel_paths, pairs, clients_dir)
    out = _embeddings_manifest(manifest, config, dtype, weights_file, sha, clients_dir,
                               seconds)
    schema.write_manifest(tmp, out)
    _replace_dir(tmp, output_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _check_embed_flags(dtype: str, batch_size: int, output_dir: str,
                       overwrite: bool) -> None:
  """Embedding dtype, a positive batch size, and a new `output_dir` (or --overwrite)."""
  if dtype not in schema.EMBEDDING_DTYPES:
    raise ConfigError(f"--dtype is {dtype!r}, expected one of {list(schema.EMBEDDING_DTYPES)}")
  if batch_size <= 0:
    raise ConfigError(f"--batch_size is {batch_size}, expected a positive integer")
  if os.path.exists(output_dir) and not overwrite:
    raise ConfigError(f"--output_dir {output_dir} already exists; expected a new path "
                      f"(or pass --overwrite)")


def _run_embed_pipeline(dofn: EmbedShardDoFn, pairs, clients_dir: str,
                        beam_args: Optional[Sequence[str]]) -> float:
  """Embeds every (input, output) file pair in one Beam job; returns its seconds.

  Raises:
    DataError: a worker failed (one line, `_worker_error`).
  """
  for _, dst in pairs:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
  t0 = time.time()
  try:
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
      _ = (p | "Files" >> beam.Create(pairs)
             | "Reshuffle" >> beam.Reshuffle()
             | "Embed" >> beam.ParDo(dofn))
  except Exception as e:  # pylint: disable=broad-except  # Beam wraps worker errors
    raise DataError(_worker_error(clients_dir, e)) from None
  return time.time() - t0


def _check_record_counts(manifest: dict, rel_paths, pairs, clients_dir: str) -> None:
  """Every output file holds as many records as the manifest says its input does
  (read from, then removes, the workers' stats files)."""
  expected = {s["path"]: s["num_records"] for s in manifest["shards"]}
  if manifest.get("public"):
    expected[manifest["public"]["path"]] = manifest["public"]["num_records"]
  for rel, (_, dst) in zip(rel_paths, pairs):
    stats_file = dst + _STATS_SUFFIX
    if not os.path.exists(stats_file):
      raise DataError(f"embedding of {rel} did not complete (no {stats_file})")
    with open(stats_file) as f:
      got = json.load(f)["num_records"]
    os.remove(stats_file)
    if got != expected[rel]:
      raise DataError(f"{os.path.join(clients_dir, rel)}: holds {got} records, manifest "
                      f"says {expected[rel]}")


def _embeddings_manifest(manifest: dict, config: bb.BackboneConfig, dtype: str,
                         weights_file: str, sha: str, clients_dir: str,
                         seconds: float) -> dict:
  """The `pina-embeddings/1` manifest: the clients' manifest with the embedding's
  shape, dtype, backbone, weights and source in place of `image_shape`."""
  out = copy.deepcopy(manifest)
  out.pop("image_shape")
  out.update({
      "format": schema.EMBEDDINGS_FORMAT,
      "embedding_shape": list(config.embedding_shape),
      "embedding_dtype": dtype,
      "backbone": config.to_json(),
      "weights_file": weights_file,
      "weights_sha256": sha,
      "source_dir": os.path.abspath(clients_dir),
      "source_format": manifest["format"],
      "source_image_shape": manifest["image_shape"],
      "embed_seconds": seconds,
  })
  return out


def _replace_dir(tmp: str, output_dir: str) -> None:
  """Renames `tmp` to `output_dir`; an existing `output_dir` is moved aside first and
  removed after."""
  if os.path.exists(output_dir):
    old = f"{output_dir}.old-{os.getpid()}"
    os.rename(output_dir, old)
    os.rename(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, output_dir)


def read_embeddings(embeddings_dir: str, path: Optional[str] = None) -> dict:
  """Reads one embedded record file (default: all shards) into numpy arrays (slow path).

  Returns {'client_id', 'split', 'label', 'cluster', 'embedding' [N, T, d]} arrays.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  manifest = schema.read_manifest(embeddings_dir, schema.EMBEDDINGS_FORMAT)
  paths = [path] if path else [s["path"] for s in manifest["shards"]]
  cols = {k: [] for k in ("client_id", "split", "label", "cluster", "embedding")}
  for p in paths:
    for rec in tf.data.TFRecordDataset(os.path.join(embeddings_dir, p)).as_numpy_iterator():
      ex = schema.decode_embedding_example(rec, manifest["embedding_shape"],
                                           manifest["embedding_dtype"])
      for k in cols:
        cols[k].append(ex[k])
  return {k: np.asarray(v) for k, v in cols.items()}
