"""pina_tff.simulation.population: the population the program trains on.

References come from the prepared data itself (the manifest and the raw TFRecords read
by `readers.load_clients`), not from the population code: every client keeps its
examples, labels, split and cluster; the tail model gets the requested LoRA rank; the
head is the pre-trained backbone's; bad cached embeddings are refused."""
import json
import os

import numpy as np
import pytest

from pina_tff.data import readers
from pina_tff.data import schema
from pina_tff.errors import DataError
from pina_tff.models import backbone as bb
from pina_tff.simulation import population


@pytest.fixture(scope="module")
def pop(digits_clients_dir):
  return population.load_population(digits_clients_dir, lora_rank=2, seed=0)


def test_every_client_keeps_its_examples_labels_split_and_cluster(pop, digits_clients_dir):
  raw = readers.load_clients(digits_clients_dir)
  manifest = json.load(open(os.path.join(digits_clients_dir, schema.MANIFEST_NAME)))
  assert pop.dataset == "digits" and pop.size == raw.num_clients == len(manifest["clients"])
  for i, entry in enumerate(manifest["clients"]):
    assert len(pop.train[i]["label"]) == entry["num_train"]
    assert len(pop.test[i]["label"]) + len(pop.val[i]["label"]) == entry["num_test"]
    np.testing.assert_array_equal(pop.train[i]["label"], raw.labels[raw.train_slices[i]])
    # val and test share the client's held-out examples: together, exactly them
    held = raw.labels[raw.test_slices[i]]
    got = np.concatenate([pop.val[i]["label"], pop.test[i]["label"]])
    np.testing.assert_array_equal(np.sort(got), np.sort(held))
    x_held = {tuple(np.round(r, 5)) for r in
              np.concatenate([pop.val[i]["x_base"], pop.test[i]["x_base"]])}
    assert len(x_held) == entry["num_test"]          # no example in both
    assert (pop.train[i]["true_cluster"] == pop.test[i]["true_cluster"]
            == pop.val[i]["true_cluster"] == entry["cluster"])
  np.testing.assert_array_equal(pop.true_clusters,
                                [c["cluster"] for c in manifest["clients"]])
  assert pop.num_true_clusters == len({c["cluster"] for c in manifest["clients"]}) > 1
  assert pop.n_max_train == max(c["num_train"] for c in manifest["clients"])
  assert pop.n_max_test == max(len(c["label"]) for c in pop.test)
  assert pop.held_out("val") is pop.val and pop.held_out("test") is pop.test
  total = sum(c["num_test"] for c in manifest["clients"])
  assert sum(len(c["label"]) for c in pop.val) == round(total * 0.5)
  with pytest.raises(DataError, match="train"):
    pop.held_out("train")


def test_split_held_out_is_a_fixed_disjoint_half_of_the_pool():
  counts = [1] * 7 + [3, 0, 5]
  val, test = population.split_held_out(counts)
  val2, test2 = population.split_held_out(counts)
  assert all(np.array_equal(a, b) for a, b in zip(val + test, val2 + test2))
  for n, v, t in zip(counts, val, test):
    assert sorted(v.tolist() + t.tolist()) == list(range(n))   # disjoint, complete
  assert sum(len(v) for v in val) == round(0.5 * sum(counts))
  # the reference: the same permutation drawn by hand over (client, position) pairs
  pairs = [(i, j) for i, n in enumerate(counts) for j in range(n)]
  order = np.random.default_rng(population.VALIDATION_SPLIT_SEED).permutation(len(pairs))
  want = {pairs[k] for k in order[:round(0.5 * len(pairs))]}
  assert {(i, int(j)) for i, v in enumerate(val) for j in v} == want
  other, _ = population.split_held_out(counts, seed=1)
  assert any(not np.array_equal(a, b) for a, b in zip(val, other))


def test_features_have_the_tail_shapes_and_the_requested_lora_rank(pop):
  cfg = pop.model.config
  assert cfg.lora_rank == 2
  for c in pop.train[:3]:
    n = len(c["label"])
    assert c["x_base"].shape == (n, cfg.width)
    assert c["z"].shape == (n, cfg.num_heads, cfg.width)
    assert np.isfinite(c["x_base"]).all() and np.isfinite(c["z"]).all()
  # Different clients' examples are different (not one row broadcast).
  assert not np.allclose(pop.train[0]["x_base"][0], pop.train[1]["x_base"][0])
  shapes = pop.model.param_shapes()
  assert shapes["head_kernel"] == pop.head["head_kernel"].shape
  assert pop.head["head_bias"].shape == (shapes["head_bias"][0],)


def test_an_embeddings_directory_is_used_as_it_is(pop, digits_clients_dir):
  del pop  # built the cache
  emb = population.ensure_embeddings(digits_clients_dir)
  assert emb == os.path.join(digits_clients_dir, "embeddings")
  assert population.ensure_embeddings(emb) == emb


def test_missing_manifest_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="manifest not found"):
    population.ensure_embeddings(str(tmp_path))


def _manifest(shape, dtype="float16"):
  return {"embedding_shape": shape, "embedding_dtype": dtype}


def test_bad_cached_embeddings_are_refused(tmp_path):
  config = bb.get_config("digits_tiny", image_shape=(8, 8, 1), num_classes=10)
  good_shape = list(config.embedding_shape)
  ok = np.zeros([2] + good_shape, np.float16)
  population.check_embeddings(str(tmp_path), _manifest(good_shape), config, ok)
  bad_shape = [good_shape[0] + 1] + good_shape[1:]
  with pytest.raises(DataError, match="embedding_shape"):
    population.check_embeddings(str(tmp_path), _manifest(bad_shape), config, ok)
  with pytest.raises(DataError, match="embedding_dtype"):
    population.check_embeddings(str(tmp_path), _manifest(good_shape, "int8"), config, ok)
  nan = ok.copy()
  nan[0, 0, 0] = np.nan
  with pytest.raises(DataError, match="non-finite"):
    population.check_embeddings(str(tmp_path), _manifest(good_shape), config, nan)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
