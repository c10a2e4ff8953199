"""pina-pretrain and pina-embed on a tiny prepared dataset written in the test."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pina_tff.data import schema
from pina_tff.errors import DataError, WeightsError
from pina_tff.models import backbone as bb
from pina_tff.models import beam_embed
from pina_tff.models import pretrain
from pina_tff.models import split
from pina_tff.models import weights as wl

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_prepared(directory, image_shape=(8, 8, 1), num_clients=4, per_client=5,
                   num_public=40, seed=0, dataset="digits"):
  """A tiny `pina-clients/1` directory: 2 shards + public, random images."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory)
  shards, clients, images = [[], []], [], {}
  for i in range(num_clients):
    cid, s = f"c{i:05d}", i % 2
    n_test = 1
    for j in range(per_client):
      img = rng.integers(0, 256, image_shape, dtype=np.uint8)
      split_name = "test" if j >= per_client - n_test else "train"
      shards[s].append(schema.encode_client_example(cid, split_name, img, j % 10, i % 2))
      images.setdefault(s, []).append(img)
    clients.append({"client_id": cid, "cluster": i % 2, "num_train": per_client - n_test,
                    "num_test": n_test, "shard": s})
  names = [schema.shard_name(s, 2) for s in range(2)]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for name, recs in zip(names, shards):
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as w:
      for r in recs:
        w.write(r)
  pub_imgs = rng.integers(0, 256, (num_public,) + tuple(image_shape), dtype=np.uint8)
  with tf.io.TFRecordWriter(os.path.join(directory, "public.tfrecord")) as w:
    for k, img in enumerate(pub_imgs):
      w.write(schema.encode_client_example("public", "train", img, k % 10, 0))
  schema.write_manifest(directory, {
      "format": schema.CLIENTS_FORMAT, "dataset": dataset, "num_clients": num_clients,
      "num_clusters": 2, "rotations_deg": [0, 180], "image_shape": list(image_shape),
      "num_classes": 10, "seed": seed, "label_known_clusters": True,
      "shards": [{"path": n, "num_records": len(r)} for n, r in zip(names, shards)],
      "clients": clients, "public": {"path": "public.tfrecord", "num_records": num_public}})
  return {s: np.stack(v) for s, v in images.items()}, names


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("prep") / "digits")
  images, names = write_prepared(d)
  report = pretrain.run_pretrain(d, epochs=2, seed=0)
  return d, images, names, report


def test_pretrain_writes_weights_and_report(prepared):
  d, _, _, report = prepared
  w = os.path.join(d, "backbone", "digits_tiny.weights.h5")
  assert report["weights_file"] == w and os.path.exists(w)
  with open(os.path.join(d, "backbone", "digits_tiny.json")) as f:
    saved = json.load(f)
  assert saved["num_holdout"] == 8 and 0.0 <= saved["holdout_accuracy"] <= 1.0
  assert saved["weights_sha256"] == wl.sha256_file(w)
  assert saved["backbone"]["name"] == "digits_tiny"


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 5e-2)])
def test_cached_embeddings_reproduce_model_logits(prepared, tmp_path, dtype, tol):
  d, images, names, report = prepared
  out = str(tmp_path / f"emb_{dtype}")
  man = beam_embed.embed(d, report["weights_file"], out, dtype=dtype, batch_size=3)
  assert man["format"] == schema.EMBEDDINGS_FORMAT
  assert man["embedding_shape"] == [17, 64] and man["embedding_dtype"] == dtype
  assert man["weights_sha256"] == wl.sha256_file(report["weights_file"])
  assert man["shards"] == schema.read_manifest(d)["shards"]
  assert not [f for f in os.listdir(str(tmp_path)) if ".tmp-" in f]
  model = bb.build_vit(bb.get_config("digits_tiny"))
  wl.load_backbone_weights(model, report["weights_file"])
  cfg, frozen = split.extract_tail_weights(model)
  trainable = split.initial_trainable(model)
  for s, name in enumerate(names):
    emb = beam_embed.read_embeddings(out, name)
    assert emb["embedding"].dtype == np.dtype(dtype)
    assert list(emb["client_id"]) == sorted(emb["client_id"])  # input order kept
    got = split.tail_logits_full(frozen, trainable, emb["embedding"].astype(np.float32),
                                 cfg.num_heads).numpy()
    ref = model(images[s].astype(np.float32)).numpy()
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def test_bad_weights_file_raises(prepared, tmp_path):
  d, _, _, _ = prepared
  bad = tmp_path / "bad.weights.h5"
  other = bb.build_vit(bb.get_config("digits_tiny", num_layers=2))
  wl.save_backbone_weights(other, str(bad))
  with pytest.raises(WeightsError, match="bad.weights.h5"):
    beam_embed.embed(d, str(bad), str(tmp_path / "out"))
  with pytest.raises(WeightsError, match="missing.weights.h5"):
    beam_embed.embed(d, str(tmp_path / "missing.weights.h5"), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_image_shape_mismatch_is_clear(prepared, tmp_path):
  d, _, _, report = prepared
  with pytest.raises(DataError, match=r"\[8, 8, 1\].*vit_s16.*\[224, 224, 3\]"):
    beam_embed.embed(d, report["weights_file"], str(tmp_path / "out"), backbone="vit_s16")


def test_cli_pretrain_smoke(prepared, tmp_path):
  d, _, _, _ = prepared
  out = str(tmp_path / "cli.weights.h5")
  env = dict(os.environ, PYTHONPATH=_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-m", "pipelines.pretrain", f"--clients_dir={d}",
                      f"--output={out}", "--epochs=1"], cwd=_ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(out) and os.path.exists(str(tmp_path / "cli.json"))


def test_fashion_mnist_data_gets_the_fmnist_backbone(tmp_path, monkeypatch):
  """ensure_embeddings (the simulator's path): pre-trains fmnist_vit with its defaults on
  the public split, then embeds with it; the preset follows the manifest's dataset."""
  from pina_tff.simulation import population  # pylint: disable=g-import-not-at-top
  defaults = dict(pretrain.PRETRAIN_DEFAULTS["fmnist_vit"], epochs=2)  # fast
  monkeypatch.setitem(pretrain.PRETRAIN_DEFAULTS, "fmnist_vit", defaults)
  d = str(tmp_path / "fm")
  write_prepared(d, image_shape=(28, 28, 1), num_clients=2, per_client=2, num_public=20,
                 dataset="fashion_mnist")
  assert beam_embed.backbone_for_dir(d) == "fmnist_vit"
  emb_dir = population.ensure_embeddings(d)
  with open(os.path.join(d, "backbone", "fmnist_vit.json")) as f:
    rep = json.load(f)
  assert rep["backbone"]["name"] == "fmnist_vit" and rep["dataset"] == "fashion_mnist"
  assert rep["epochs"] == defaults["epochs"] and rep["cosine_decay"] is True
  assert rep["num_holdout"] == 2 and rep["num_train"] == 18  # 10 % of 20 held out
  assert len(rep["holdout_accuracy_per_epoch"]) == defaults["epochs"]
  assert rep["holdout_accuracy_per_epoch"][-1] == rep["holdout_accuracy"]
  man = schema.read_manifest(emb_dir, schema.EMBEDDINGS_FORMAT)
  assert man["backbone"]["name"] == "fmnist_vit" and man["embedding_shape"] == [50, 64]


def test_cosine_decay_learning_rate_of_the_last_step():
  x = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1)).astype(np.uint8)
  y = np.arange(12) % 10
  cfg = bb.get_config("digits_tiny", num_layers=1)
  # 9 training examples in batches of 4 = 3 steps per epoch, 6 in all; the last step
  # (index 5) uses 1e-3 * (1 + cos(pi * 5 / 6)) / 2 under cosine decay.
  for cosine, final in [(True, 1e-3 * (1 + np.cos(np.pi * 5 / 6)) / 2), (False, 1e-3)]:
    model, rep = pretrain.pretrain(x, y, cfg, epochs=2, batch_size=4, holdout_fraction=0.25,
                                   cosine_decay=cosine)
    opt = model.optimizer
    assert int(opt.iterations.numpy()) == 6
    assert float(opt.learning_rate) == pytest.approx(final, rel=1e-5)
    assert rep["cosine_decay"] is cosine


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
