"""pina-prepare --overwrite removes only what pina-prepare wrote."""
import pytest
import json
import os
import subprocess
import sys

from pina_tff.data import beam_prepare


def _prepare(out, **kw):
  return beam_prepare.prepare(beam_prepare.PrepareConfig(
      output_dir=str(out), dataset="digits", seed=0, **kw))


def test_overwrite_keeps_unrelated_files_and_replaces_the_data(tmp_path):
  out = tmp_path / "d"
  first = _prepare(out, num_clients=12, num_shards=2)
  old_shards = [s["path"] for s in first["shards"]]
  assert len(old_shards) == 2
  (out / "notes.txt").write_text("mine")
  (out / "backbone").mkdir()
  (out / "backbone" / "w.weights.h5").write_text("cache")
  second = _prepare(out, num_clients=10, num_shards=1, overwrite=True)
  new_shards = [s["path"] for s in second["shards"]]
  assert (out / "notes.txt").read_text() == "mine"
  assert (out / "backbone" / "w.weights.h5").read_text() == "cache"
  for name in set(old_shards) - set(new_shards):
    assert not (out / name).exists(), name
  assert all((out / n).exists() for n in new_shards)
  assert json.loads((out / "manifest.json").read_text())["num_clients"] == 10
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_temp_dir_of_a_killed_prepare_is_swept(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  out = tmp_path / "d"
  (tmp_path / f"d.tmp-{dead.pid}").mkdir()          # left by a killed pina-prepare
  (tmp_path / f"other.tmp-{dead.pid}").mkdir()      # not ours: kept
  _prepare(out, num_clients=8, num_shards=1)
  assert sorted(os.listdir(tmp_path)) == ["d", f"other.tmp-{dead.pid}"]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
