"""Client partition and rotation: which examples each simulated client holds, and its cluster.

Rotated datasets (digits, cifar10, fashion_mnist): the examples are shuffled with a seeded
RNG and dealt into `num_clients` near-equal parts; each client draws one of C rotations
uniformly at random (cluster k <-> rotation `k * 360 / C` degrees, counter-clockwise as
`np.rot90`), and all its images carry that rotation. C must divide 360 into multiples of
90 degrees: C in {1, 2, 4}.

Rotated datasets whose source fixes a train/test split (fashion_mnist: `is_test` marks the
held-out test images): train and test examples are shuffled and dealt separately, so each
client holds ~N_train/P train and ~N_test/P test examples, both carrying its rotation;
`test_fraction` is not used. The public split never reaches the partition.

Natural partitions (femnist): one client per writer; no rotation; true cluster unknown (-1).

Each client's examples are split into train/test by `test_fraction` (at least one train
example; at least one test example whenever `test_fraction > 0` and the client has two or
more). Everything is deterministic given `seed`.
"""
import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from pina_tff.data import schema
from pina_tff.data.sources import SourceData, dataset_info
from pina_tff.errors import ConfigError

MIN_EXAMPLES_PER_CLIENT = 4  # rotated datasets: fewer makes train/test splits meaningless


@dataclasses.dataclass
class ClientPlan:
  """One client: indices into the source arrays (in record order) and its cluster."""
  client_id: str
  cluster: int            # rotation index k, or -1 if unknown
  rotation_deg: int       # 0, 90, 180 or 270
  train_idx: np.ndarray   # int64 [num_train]
  test_idx: np.ndarray    # int64 [num_test]


def rotations_deg(num_clusters: int) -> List[int]:
  """Rotation of each cluster in degrees: C=1 -> [0], 2 -> [0, 180], 4 -> [0, 90, 180, 270]."""
  if num_clusters not in (1, 2, 4):
    raise ConfigError(f"--num_clusters is {num_clusters}; rotated datasets need 1, 2 or 4 "
                      "(rotations must be multiples of 90 degrees)")
  return [k * 360 // num_clusters for k in range(num_clusters)]


def rotate(images: np.ndarray, rotation_deg: int) -> np.ndarray:
  """Rotates images [..., H, W, C] counter-clockwise by `rotation_deg` (multiple of 90)."""
  if rotation_deg % 90:
    raise ValueError(f"rotation_deg must be a multiple of 90, got {rotation_deg}")
  return np.ascontiguousarray(np.rot90(images, rotation_deg // 90, axes=(-3, -2)))


def client_id(index: int, num_clients: int) -> str:
  """`c00000`-style id, zero-padded to at least 5 digits."""
  return f"c{index:0{max(5, len(str(num_clients - 1)))}d}"


def _split_counts(n: int, test_fraction: float) -> int:
  """Number of test examples among n."""
  n_test = int(round(n * test_fraction))
  if test_fraction > 0 and n >= 2:
    n_test = max(1, n_test)
  return min(n_test, n - 1)


def _check_fraction(test_fraction: float):
  if not 0.0 <= test_fraction < 1.0:
    raise ConfigError(f"--test_fraction is {test_fraction}, expected 0 <= x < 1")


def partition_rotated(num_examples: int, num_clients: int, num_clusters: int, seed: int,
                      test_fraction: float = 0.2) -> List[ClientPlan]:
  """Deals `num_examples` shuffled examples to clients and draws each client's rotation."""
  _check_fraction(test_fraction)
  rots = rotations_deg(num_clusters)
  max_clients = num_examples // MIN_EXAMPLES_PER_CLIENT
  if num_clients < 1 or num_clients > max_clients:
    raise ConfigError(f"--num_clients is {num_clients}; with {num_examples} examples and at "
                      f"least {MIN_EXAMPLES_PER_CLIENT} per client, expected 1..{max_clients}")
  order = np.random.default_rng([seed, 2]).permutation(num_examples).astype(np.int64)
  clusters = _draw_clusters(num_clients, num_clusters, seed)
  plans = []
  for i, part in enumerate(np.array_split(order, num_clients)):
    n_test = _split_counts(len(part), test_fraction)
    k = int(clusters[i])
    plans.append(ClientPlan(client_id(i, num_clients), k, rots[k],
                            part[:len(part) - n_test], part[len(part) - n_test:]))
  return plans


def _draw_clusters(num_clients: int, num_clusters: int, seed: int) -> np.ndarray:
  """Each client's cluster index, uniform over C (seeded with [seed, 3])."""
  return np.random.default_rng([seed, 3]).integers(0, num_clusters, size=num_clients)


def partition_rotated_split(is_test: np.ndarray, num_clients: int, num_clusters: int,
                            seed: int) -> List[ClientPlan]:
  """Rotated partition that keeps the source's train/test split.

  The train examples (`~is_test`) and the test examples (`is_test`) are each shuffled
  (seeds [seed, 2] and [seed, 6]) and dealt into `num_clients` near-equal parts; client i
  gets train part i and test part i, all with its rotation. Every client has at least
  one train example; with fewer test examples than clients some have no test example.
  """
  rots = rotations_deg(num_clusters)
  is_test = np.asarray(is_test, bool)
  train = np.flatnonzero(~is_test).astype(np.int64)
  test = np.flatnonzero(is_test).astype(np.int64)
  max_clients = min(len(train), len(is_test) // MIN_EXAMPLES_PER_CLIENT)
  if num_clients < 1 or num_clients > max_clients:
    raise ConfigError(f"--num_clients is {num_clients}; with {len(train)} train + "
                      f"{len(test)} test examples (at least one train and "
                      f"{MIN_EXAMPLES_PER_CLIENT} in all per client), expected "
                      f"1..{max_clients}")
  train = np.random.default_rng([seed, 2]).permutation(train)
  test = np.random.default_rng([seed, 6]).permutation(test)
  clusters = _draw_clusters(num_clients, num_clusters, seed)
  return [ClientPlan(client_id(i, num_clients), int(clusters[i]), rots[int(clusters[i])],
                     tr, te)
          for i, (tr, te) in enumerate(zip(np.array_split(train, num_clients),
                                           np.array_split(test, num_clients)))]


def partition_natural(writer_ids: np.ndarray, is_test: Optional[np.ndarray],
                      num_clients: Optional[int], seed: int, test_fraction: float = 0.2,
                      default_num_clients: int = 10_000) -> List[ClientPlan]:
  """One client per writer (a seeded sample of `num_clients` writers, in sorted order).

  A source split (`is_test`) is kept; otherwise each writer's examples are split by
  `test_fraction`. Writers without a training example are dropped.
  """
  _check_fraction(test_fraction)
  writer_ids = np.asarray(writer_ids).astype(str)
  order = np.argsort(writer_ids, kind="stable")
  uniq, starts = np.unique(writer_ids[order], return_index=True)
  groups = np.split(order.astype(np.int64), starts[1:])
  rng = np.random.default_rng([seed, 4])
  usable = []
  for w, idx in zip(uniq, groups):
    if is_test is not None:
      tr, te = idx[~is_test[idx]], idx[is_test[idx]]
    else:
      idx = rng.permutation(idx)
      n_test = _split_counts(len(idx), test_fraction)
      tr, te = idx[:len(idx) - n_test], idx[len(idx) - n_test:]
    if len(tr):
      usable.append((str(w), tr, te))
  if num_clients is None:
    num_clients = min(len(usable), default_num_clients)
  if num_clients < 1 or num_clients > len(usable):
    raise ConfigError(f"--num_clients is {num_clients}; the source has {len(usable)} writers "
                      f"with training data, expected 1..{len(usable)}")
  pick = np.sort(np.random.default_rng([seed, 5]).choice(len(usable), num_clients,
                                                          replace=False))
  return [ClientPlan(usable[j][0], schema.UNKNOWN_CLUSTER, 0, usable[j][1], usable[j][2])
          for j in pick]


def make_plan(src: SourceData, num_clients: Optional[int], num_clusters: Optional[int],
              seed: int, test_fraction: float = 0.2) -> Tuple[List[ClientPlan], List[int]]:
  """Partition of `src` for its dataset kind. Returns (plans, rotations_deg of clusters).

  `num_clients` / `num_clusters` of None mean the dataset's default (FEMNIST: every
  writer, up to the default P). A rotated source with `is_test` keeps its split
  (`partition_rotated_split`, `test_fraction` unused).
  """
  info = dataset_info(src.name)
  num_clusters = info.num_clusters if num_clusters is None else num_clusters
  if info.rotated:
    n = info.default_num_clients if num_clients is None else num_clients
    if src.is_test is not None:
      return partition_rotated_split(src.is_test, n, num_clusters, seed), \
          rotations_deg(num_clusters)
    return partition_rotated(len(src.labels), n, num_clusters, seed, test_fraction), \
        rotations_deg(num_clusters)
  if num_clusters < 1:
    raise ConfigError(f"--num_clusters is {num_clusters}, expected >= 1")
  return partition_natural(src.writer_ids, src.is_test, num_clients, seed, test_fraction,
                           info.default_num_clients), []


def client_arrays(src: SourceData, plan: ClientPlan):
  """Rotated (train_images, train_labels, test_images, test_labels) of one client."""
  return (rotate(src.images[plan.train_idx], plan.rotation_deg), src.labels[plan.train_idx],
          rotate(src.images[plan.test_idx], plan.rotation_deg), src.labels[plan.test_idx])
