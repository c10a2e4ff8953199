"""Rotation and client partition (pina_tff.data.partition)."""
import numpy as np
import pytest

from pina_tff.data import partition
from pina_tff.data import sources
from pina_tff.errors import ConfigError


def test_rotations_per_cluster_count():
  assert partition.rotations_deg(2) == [0, 180]
  assert partition.rotations_deg(4) == [0, 90, 180, 270]
  with pytest.raises(ConfigError, match="--num_clusters is 3"):
    partition.rotations_deg(3)


def test_rotate_is_counter_clockwise_rot90():
  img = np.arange(6, dtype=np.uint8).reshape(1, 2, 3, 1)  # [N, H=2, W=3, C]
  out = partition.rotate(img, 90)
  assert out.shape == (1, 3, 2, 1)
  np.testing.assert_array_equal(out[0, ..., 0], np.rot90(img[0, ..., 0]))
  np.testing.assert_array_equal(partition.rotate(img, 360 - 90), np.rot90(img, 3, axes=(1, 2)))
  np.testing.assert_array_equal(partition.rotate(img, 0), img)


def test_partition_rotated_covers_every_example_once_and_is_seeded():
  plans = partition.partition_rotated(103, 20, 4, seed=7, test_fraction=0.2)
  idx = np.concatenate([np.concatenate([p.train_idx, p.test_idx]) for p in plans])
  np.testing.assert_array_equal(np.sort(idx), np.arange(103))
  for p in plans:
    assert len(p.train_idx) >= 1 and len(p.test_idx) >= 1
    assert p.rotation_deg == 90 * p.cluster
  assert len({p.client_id for p in plans}) == 20 and plans[0].client_id == "c00000"
  again = partition.partition_rotated(103, 20, 4, seed=7, test_fraction=0.2)
  for a, b in zip(plans, again):
    assert a.cluster == b.cluster
    np.testing.assert_array_equal(a.train_idx, b.train_idx)
  other = partition.partition_rotated(103, 20, 4, seed=8, test_fraction=0.2)
  assert [p.cluster for p in other] != [p.cluster for p in plans]
  assert set(p.cluster for p in plans) == {0, 1, 2, 3}


def test_too_many_clients_and_bad_fraction():
  with pytest.raises(ConfigError, match="--num_clients is 30.*expected 1..25"):
    partition.partition_rotated(100, 30, 4, seed=0)
  with pytest.raises(ConfigError, match="--test_fraction is 1.0"):
    partition.partition_rotated(100, 10, 4, seed=0, test_fraction=1.0)


def test_client_arrays_rotates_by_cluster():
  src = sources.load_source("digits", seed=0)
  plans, rots = partition.make_plan(src, 20, 4, seed=0)
  assert rots == [0, 90, 180, 270]
  for p in plans:
    xtr, ytr, xte, yte = partition.client_arrays(src, p)
    np.testing.assert_array_equal(xtr, np.rot90(src.images[p.train_idx], p.cluster, axes=(1, 2)))
    np.testing.assert_array_equal(xte, np.rot90(src.images[p.test_idx], p.cluster, axes=(1, 2)))
    np.testing.assert_array_equal(ytr, src.labels[p.train_idx])


def test_cifar10_default_two_clusters_rotate_by_180():
  src = sources.SourceData("cifar10", np.zeros((40, 32, 32, 3), np.uint8),
                           np.zeros(40, np.int64), 10)
  plans, rots = partition.make_plan(src, 10, None, seed=0)
  assert rots == [0, 180] and {p.rotation_deg for p in plans} <= {0, 180}


def test_natural_partition_keeps_writers_and_source_split():
  writers = np.array(["b", "a", "b", "c", "a", "b", "c"])
  is_test = np.array([False, False, True, False, True, False, True])
  plans = partition.partition_natural(writers, is_test, None, seed=0)
  assert [p.client_id for p in plans] == ["a", "b", "c"]
  assert all(p.cluster == -1 and p.rotation_deg == 0 for p in plans)
  np.testing.assert_array_equal(plans[1].train_idx, [0, 5])
  np.testing.assert_array_equal(plans[1].test_idx, [2])
  assert len(partition.partition_natural(writers, is_test, 2, seed=0)) == 2
  with pytest.raises(ConfigError, match="3 writers"):
    partition.partition_natural(writers, is_test, 4, seed=0)



@pytest.mark.parametrize("num_clusters", [2, 4])
def test_partition_rotated_split_keeps_the_source_split(num_clusters):
  is_test = np.zeros(70, bool)
  is_test[[3, 10, 11, 40, 55, 56, 60, 61, 62, 69]] = True
  plans = partition.partition_rotated_split(is_test, 10, num_clusters, seed=4)
  train = np.concatenate([p.train_idx for p in plans])
  test = np.concatenate([p.test_idx for p in plans])
  np.testing.assert_array_equal(np.sort(train), np.flatnonzero(~is_test))
  np.testing.assert_array_equal(np.sort(test), np.flatnonzero(is_test))
  step = 360 // num_clusters
  for p in plans:
    assert len(p.train_idx) == 6 and len(p.test_idx) == 1
    assert p.rotation_deg == step * p.cluster
  assert {p.cluster for p in plans} <= set(range(num_clusters))
  # Clusters are drawn like partition_rotated's (same seed, same draw).
  same = partition.partition_rotated(70, 10, num_clusters, seed=4)
  assert [p.cluster for p in plans] == [p.cluster for p in same]
  with pytest.raises(ConfigError, match="--num_clients is 18; with 60 train \\+ 10 test"):
    partition.partition_rotated_split(is_test, 18, num_clusters, seed=4)


def test_make_plan_uses_the_source_split_for_rotated_sources():
  src = sources.SourceData("fashion_mnist", np.zeros((16, 28, 28, 1), np.uint8),
                           np.zeros(16, np.int64), 10, is_test=np.arange(16) >= 12)
  plans, rots = partition.make_plan(src, 4, 2, seed=0, test_fraction=0.5)
  assert rots == [0, 180]
  assert all(len(p.train_idx) == 3 and len(p.test_idx) == 1 for p in plans)
  assert all(src.is_test[p.test_idx].all() and not src.is_test[p.train_idx].any()
             for p in plans)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
