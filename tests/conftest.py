"""Shared pytest setup: quiet TensorFlow logs, and repo root on sys.path."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

#: Clients of the shared tiny digits population (`digits_clients_dir`).
DIGITS_CLIENTS = 24


@pytest.fixture(scope="session")
def digits_clients_dir(tmp_path_factory):
  """A tiny prepared digits population shared by every test module of the session.

  The program caches the pre-trained backbone and the embeddings inside it, so only
  the first run that loads the population pays for them (the cache has its own
  cross-process lock). Tests must not write into it except through that cache. Under
  pytest-xdist (`make test` runs two workers) the workers share ONE population: the
  first to arrive prepares it under a lock in the session's common temp directory.
  Runs on it use seed 0: the backbone/embeddings cache is keyed by the run seed, and a
  run with another seed would rebuild it under the feet of tests in the other worker
  (and replace the quick 2-epoch backbone with the preset's 30 epochs).
  """
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  from pina_tff.runtime import locks  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # common to all workers of this session
  shared = base / "shared_digits"
  out = shared / "digits"
  with locks.exclusive(str(shared), "shared test population", wait=True):
    if not (out / "manifest.json").exists():
      beam_prepare.prepare(beam_prepare.PrepareConfig(
          output_dir=str(out), dataset="digits", num_clients=DIGITS_CLIENTS,
          num_shards=1, seed=0))
      _cache_quick_backbone(str(out))
  return str(out)


def _cache_quick_backbone(clients_dir: str) -> None:
  """Pre-trains the population's backbone for 2 epochs (not the preset's 30) and records
  it as the cache `load_population` finds: the tests check wiring and values, never
  the backbone's accuracy, and this saves ~20 s of CPU per session."""
  from pina_tff.data import schema  # pylint: disable=g-import-not-at-top
  from pina_tff.models import backbone  # pylint: disable=g-import-not-at-top
  from pina_tff.models import pretrain  # pylint: disable=g-import-not-at-top
  from pina_tff.simulation import cache  # pylint: disable=g-import-not-at-top
  manifest = schema.read_manifest(clients_dir, schema.CLIENTS_FORMAT)
  cfg = backbone.get_config(backbone.backbone_for_dataset(manifest["dataset"]),
                            image_shape=tuple(manifest["image_shape"]),
                            num_classes=int(manifest["num_classes"]))
  weights = pretrain.default_output(clients_dir, cfg)
  pretrain.run_pretrain(clients_dir, output=weights, epochs=2, seed=0)
  cache.record_weights(weights, cache.cache_key(clients_dir, cfg.to_json(), 0))
