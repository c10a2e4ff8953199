"""The simulated population: every client's examples as reduced ViT-tail features.

`load_population(clients_dir)` accepts what `pina-prepare` wrote (raw images) or what
`pina-embed` wrote (cached embeddings). From raw images it first runs the missing
steps and caches them inside `clients_dir`: pre-training of the digits backbone
(`backbone/`) and the embedding job (`embeddings/`). Each example's last-block input is
then reduced once to the frozen features of `pina_tff.models.reduced_tail`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from pina_tff.data import readers
from pina_tff.data import schema
from pina_tff.errors import DataError
from pina_tff.models import backbone as bb
from pina_tff.models import reduced_tail as rt
from pina_tff.models import split
from pina_tff.models import weights as weights_lib
from pina_tff.runtime import sweep
from pina_tff.simulation import cache
from pina_tff.training import models as tm


@dataclasses.dataclass
class Population:
  """Clients of one prepared dataset, ready for the shard packer.

  Attributes:
    dataset: dataset name from the manifest.
    model: the reduced ViT tail (frozen weights of the pre-trained backbone).
    head: pre-trained head {'head_kernel': [d, K], 'head_bias': [K]}.
    train, test: per client, {'x_base': [n, d], 'z': [n, H, d], 'label': [n],
      'true_cluster': int}.
    val: per client, its validation examples (same layout), or None when the
      population has no validation split (synthetic populations). `split_held_out`
      says how the clients' held-out examples are shared between val and test.
    true_clusters: int [P] (-1 unknown).
    num_true_clusters: number of distinct known clusters (1 if unknown).
  """
  dataset: str
  model: tm.ViTTailModel
  head: dict
  train: list
  test: list
  true_clusters: np.ndarray
  num_true_clusters: int
  val: Optional[list] = None
  #: The embeddings directory it was loaded from (None: built in memory); server
  #: computations on its public split (`public_clients`) read it.
  embeddings_dir: Optional[str] = None

  @property
  def size(self) -> int:
    return len(self.train)

  def held_out(self, split: str) -> list:
    """The clients' examples of held-out `split` ('val' or 'test'), one entry per client.

    Raises:
      DataError: 'val' on a population without a validation split, or another name.
    """
    if split == "test":
      return self.test
    if split == "val" and self.val is not None:
      return self.val
    raise DataError(f"the population of {self.dataset!r} has no {split!r} split "
                    "(expected 'val' or 'test')")

  def n_max_held_out(self, split: str) -> int:
    return max(1, max(len(c["label"]) for c in self.held_out(split)))

  @property
  def n_max_train(self) -> int:
    return max(1, max(len(c["label"]) for c in self.train))

  @property
  def n_max_test(self) -> int:
    return max(1, max(len(c["label"]) for c in self.test))


#: Seed of the val/test split of the held-out examples: a constant, so every run and
#: every seed scores the same examples.
VALIDATION_SPLIT_SEED = 20261204
#: Share of the held-out examples that go to validation.
VALIDATION_FRACTION = 0.5


def split_held_out(counts: Sequence[int], fraction: float = VALIDATION_FRACTION,
                   seed: int = VALIDATION_SPLIT_SEED) -> Tuple[List[np.ndarray],
                                                               List[np.ndarray]]:
  """Shares every client's held-out examples between validation and test.

  [project choice] Clients keep all their training examples; their held-out examples
  (the source's test images for Fashion-MNIST, `test_fraction` of their own for
  digits) are pooled, permuted with a fixed seed, and the first
  round(fraction * total) become validation examples, the rest test examples. So val
  and test are disjoint, come from the same distribution, and each client is scored
  on whichever of its held-out examples belong to the split (with 1 held-out example
  per client, half the clients carry validation and the other half test).

  Args:
    counts: held-out examples of each client.
    fraction: share of the pool that goes to validation, in [0, 1].
    seed: the permutation's seed (a constant, not the run's seed).

  Returns:
    (val positions, test positions): per client, sorted int64 positions into its own
    held-out examples.
  """
  counts = [int(n) for n in counts]
  owner = np.repeat(np.arange(len(counts)), counts)
  position = np.concatenate([np.arange(n) for n in counts]) if counts else np.zeros(0, int)
  order = np.random.default_rng(seed).permutation(len(owner))
  is_val = np.zeros(len(owner), bool)
  is_val[order[:int(round(fraction * len(owner)))]] = True
  val = [np.sort(position[(owner == i) & is_val]) for i in range(len(counts))]
  test = [np.sort(position[(owner == i) & ~is_val]) for i in range(len(counts))]
  return val, test


def _log(msg: str, log: Optional[Callable[[str], None]]) -> None:
  if log is not None:
    log(msg)


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What a run's configuration must agree with, read from a manifest alone.

  Attributes:
    dataset: the dataset the manifest names.
    num_clients: the population P.
    backbone: the backbone preset that embeds (or embedded) the data.
    model_width: that backbone's width d (sets the sketch size P1 = 2·d·r).
  """
  dataset: str
  num_clients: int
  backbone: str
  model_width: int


def _backbone_config(manifest: dict) -> bb.BackboneConfig:
  """The backbone of prepared data (the dataset's preset) or of embeddings (recorded)."""
  if manifest["format"] == schema.EMBEDDINGS_FORMAT:
    return bb.BackboneConfig.from_json(manifest["backbone"])
  return bb.get_config(bb.backbone_for_dataset(manifest["dataset"]),
                       image_shape=tuple(manifest["image_shape"]),
                       num_classes=int(manifest["num_classes"]))


def data_facts(clients_dir: str) -> DataFacts:
  """The dataset, population and model width of `clients_dir`, from its manifest (no
  model is built, nothing is written).

  Raises:
    DataError: no readable manifest. ConfigError: a dataset without a backbone preset.
  """
  manifest = schema.read_manifest(clients_dir, expected_format=None)
  config = _backbone_config(manifest)
  return DataFacts(dataset=str(manifest.get("dataset", "unknown")),
                   num_clients=len(manifest["clients"]), backbone=config.name,
                   model_width=int(config.width))


def _check_cache_writable(clients_dir: str, what: str) -> None:
  """DataError (before any work) when the cache cannot be written into `clients_dir`."""
  if not os.access(clients_dir, os.W_OK | os.X_OK):
    raise DataError(f"--clients_dir: {clients_dir} holds no cached {what} and is not "
                    "writable (read-only?); expected a writable copy, or embeddings made "
                    "elsewhere with pina-embed --output_dir=DIR, passed as --clients_dir=DIR")


def check_cache_buildable(clients_dir: str) -> None:
  """DataError now (before any long work) when `clients_dir` holds raw prepared data,
  no embeddings, and cannot be written (a read-only mount): the cache cannot be built."""
  manifest = schema.read_manifest(clients_dir, expected_format=None)
  if (manifest["format"] != schema.EMBEDDINGS_FORMAT and not os.path.exists(
      os.path.join(clients_dir, "embeddings", schema.MANIFEST_NAME))):
    _check_cache_writable(clients_dir, "embeddings")


def ensure_embeddings(clients_dir: str, seed: int = 0,
                      log: Optional[Callable[[str], None]] = None) -> str:
  """Returns an embeddings directory for `clients_dir`, creating and caching the
  pre-trained digits backbone and the embeddings there when missing or built from
  something else (other data, backbone or seed; see `pina_tff.simulation.cache`).
  One builder at a time: a second caller waits for the first."""
  manifest = schema.read_manifest(clients_dir, expected_format=None)
  if manifest["format"] == schema.EMBEDDINGS_FORMAT:
    return clients_dir
  emb_dir = os.path.join(clients_dir, "embeddings")
  from pina_tff.models import beam_embed  # pylint: disable=g-import-not-at-top
  from pina_tff.models import pretrain  # pylint: disable=g-import-not-at-top
  config = _backbone_config(manifest)
  name = config.name
  weights_file = pretrain.default_output(clients_dir, config)
  with cache.build_lock(clients_dir, lambda m: _log(m, log)):
    key = cache.cache_key(clients_dir, config.to_json(), seed)
    sweep.sweep_dead_tmp(os.path.dirname(weights_file))  # of builders that were killed
    # Weights without a key file were put there by the user (pina-pretrain): kept.
    user_weights = (os.path.exists(weights_file) and
                    not os.path.exists(cache.weights_key_path(weights_file)))
    if not user_weights and not cache.weights_current(weights_file, key):
      if not manifest.get("public"):
        raise DataError(f"{clients_dir}: no backbone weights and no public split to "
                        "pre-train one; run pina-embed with --weights first")
      _check_cache_writable(clients_dir, "a pre-trained backbone")
      _log(f"pre-training the {name} backbone on the public split (cached in "
           f"{os.path.dirname(weights_file)})", log)
      pretrain.run_pretrain(clients_dir, output=weights_file, seed=seed)
      cache.record_weights(weights_file, key)
    sha = weights_lib.sha256_file(weights_file)
    if cache.embeddings_current(emb_dir, key, sha):
      return emb_dir
    _check_cache_writable(clients_dir, "embeddings")
    _log(f"embedding every example once (cached in {emb_dir})", log)
    beam_embed.embed(clients_dir, weights_file, emb_dir, backbone=name,
                     overwrite=os.path.exists(emb_dir))
    cache.record_embeddings(emb_dir, key, sha)
  return emb_dir


def check_embeddings(emb_dir: str, manifest: dict, config: bb.BackboneConfig,
                     inputs: np.ndarray) -> None:
  """DataError unless the embeddings have the backbone's shape, a known dtype and
  finite values (bytes of another shape or dtype read as these give garbage)."""
  where = os.path.join(emb_dir, schema.MANIFEST_NAME)
  expected = list(config.embedding_shape)
  if list(manifest.get("embedding_shape", [])) != expected:
    raise DataError(f"{where}: embedding_shape {manifest.get('embedding_shape')}, but "
                    f"backbone {config.name!r} makes {expected}; embed again")
  if manifest.get("embedding_dtype") not in schema.EMBEDDING_DTYPES:
    raise DataError(f"{where}: embedding_dtype {manifest.get('embedding_dtype')!r}, "
                    f"expected one of {list(schema.EMBEDDING_DTYPES)}")
  if inputs.size and not np.isfinite(inputs).all():
    raise DataError(f"{where}: the embeddings hold non-finite values (records of another "
                    "dtype or shape?); embed again")


def load_population(clients_dir: str, lora_rank: int = 1, seed: int = 0,
                    log: Optional[Callable[[str], None]] = None,
                    batch_size: int = 512) -> Population:
  """Loads (and if needed, pre-trains/embeds) the population of `clients_dir`."""
  emb_dir = ensure_embeddings(clients_dir, seed, log)
  data = readers.load_embeddings(emb_dir)
  manifest = data.manifest
  config = bb.BackboneConfig.from_json(manifest["backbone"])
  weights_file = manifest["weights_file"]
  if not os.path.isabs(weights_file):
    weights_file = os.path.join(emb_dir, weights_file)
  cache.verify_weights(weights_file, manifest.get("weights_sha256"),
                       weights_lib.sha256_file, os.path.join(emb_dir, schema.MANIFEST_NAME))
  check_embeddings(emb_dir, manifest, config, data.inputs)
  model = bb.build_vit(config)
  weights_lib.load_backbone_weights(model, weights_file)
  tail_config, frozen = split.extract_tail_weights(model)
  tail_config = dataclasses.replace(tail_config, lora_rank=lora_rank)
  head = split.extract_head_weights(model)
  _log(f"reducing {len(data.labels)} cached embeddings to tail features", log)
  x_base, z = tail_features(tail_config, frozen, data.inputs, batch_size)
  labels = data.labels.astype(np.int32)

  def part(sl, cluster):
    return {"x_base": x_base[sl], "z": z[sl], "label": labels[sl],
            "true_cluster": int(cluster)}

  train = [part(s, c) for s, c in zip(data.train_slices, data.clusters)]
  held_out = [np.arange(len(labels))[s] for s in data.test_slices]
  val_pos, test_pos = split_held_out([len(h) for h in held_out])
  val = [part(h[p], c) for h, p, c in zip(held_out, val_pos, data.clusters)]
  test = [part(h[p], c) for h, p, c in zip(held_out, test_pos, data.clusters)]
  known = sorted({int(c) for c in data.clusters if c >= 0})
  return Population(dataset=manifest.get("dataset", "unknown"),
                    model=tm.ViTTailModel(tail_config, frozen), head=head,
                    train=train, test=test, val=val,
                    true_clusters=np.asarray(data.clusters, np.int64),
                    num_true_clusters=max(1, len(known)), embeddings_dir=emb_dir)


def tail_features(config: rt.TailConfig, frozen, inputs, batch_size: int = 512
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """Last-block inputs [N, T, d] reduced to the frozen tail features, ``batch_size``
  examples at a time: (x_base float32 [N, d], z float32 [N, H, d])."""
  xs, zs = [], []
  for start in range(0, len(inputs), batch_size):
    feats = rt.reduce_block_input(config, frozen,
                                  inputs[start:start + batch_size].astype(np.float32))
    xs.append(feats["x_base"].numpy())
    zs.append(feats["z"].numpy())
  x_base = np.concatenate(xs) if xs else np.zeros((0, config.width), np.float32)
  z = np.concatenate(zs) if zs else np.zeros((0, config.num_heads, config.width),
                                             np.float32)
  return x_base, z


def public_clients(emb_dir: str, model: tm.ViTTailModel, examples_per_client: int,
                   seed: int = 0, batch_size: int = 512) -> list:
  """Pseudo-clients made from the upright public split (held by no client), for
  server-side computations on public data only (no privacy cost): the public
  examples' embeddings, reduced to tail features, permuted with ``seed`` and grouped
  ``examples_per_client`` at a time (the last, short group dropped). Same layout as
  `Population.train`, with true_cluster -1.

  Raises:
    DataError: no embeddings with a public split (embed the data first: the
      population's loader does so).
  """
  from pina_tff.models import beam_embed  # pylint: disable=g-import-not-at-top
  manifest = schema.read_manifest(emb_dir, schema.EMBEDDINGS_FORMAT)
  public = manifest.get("public")
  if not public:
    raise DataError(f"{emb_dir}: no embedded public split; the public basis and DP "
                    "Lloyd's public start need one (prepare data with a public split)")
  if examples_per_client < 1:
    raise DataError(f"examples per public pseudo-client must be >= 1, "
                    f"found {examples_per_client}")
  rec = beam_embed.read_embeddings(emb_dir, public["path"])
  labels = rec["label"].astype(np.int32)
  order = np.random.default_rng([seed, 2]).permutation(len(labels))
  x_base, z = tail_features(model.config, model.frozen, rec["embedding"][order],
                            batch_size)
  lab, k = labels[order], examples_per_client
  return [{"x_base": x_base[i * k:(i + 1) * k], "z": z[i * k:(i + 1) * k],
           "label": lab[i * k:(i + 1) * k], "true_cluster": -1}
          for i in range(len(lab) // k)]
