"""Shared pytest setup: quiet TensorFlow logs, and repo root on sys.path."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PINA_TFF_QUIET", "1")
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
  return str(out)
