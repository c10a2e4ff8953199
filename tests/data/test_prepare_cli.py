"""`python -m pipelines.prepare_data` (pina-prepare) as a user runs it."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "pipelines.prepare_data", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


def test_success_then_refusal_without_overwrite(tmp_path):
  out = str(tmp_path / "d")
  r = _run("--dataset=digits", f"--output_dir={out}", "--num_clients=20", "--seed=3",
           "--", "--runner=DirectRunner", "--direct_num_workers=1")  # Beam options after --
  assert r.returncode == 0, r.stderr
  assert "wrote 20 clients" in r.stdout
  m = json.loads(open(os.path.join(out, "manifest.json")).read())
  assert m["seed"] == 3 and m["num_clients"] == 20
  r = _run("--dataset=digits", f"--output_dir={out}")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      f"error: --output_dir {out} already exists (prepared data); expected a new path, "
      "or pass --overwrite to replace prepared data"]


def test_bad_input_is_one_error_line():
  r = _run("--dataset=mnist", "--output_dir=/nonexistent/x")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: --dataset: unknown dataset 'mnist'; expected one of "
      "['cifar10', 'digits', 'fashion_mnist', 'femnist']"]



def test_fashion_mnist_missing_source_files_is_one_error_line(tmp_path):
  (tmp_path / "idx").mkdir()
  (tmp_path / "idx" / "train-images-idx3-ubyte.gz").write_bytes(b"")
  r = _run("--dataset=fashion_mnist", f"--source_dir={tmp_path / 'idx'}",
           f"--output_dir={tmp_path / 'out'}")
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"error: --source_dir {tmp_path / 'idx'}: missing Fashion-MNIST IDX file(s) "
      "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz;")
  assert "apt-get install dataset-fashion-mnist" in lines[0]
  assert not (tmp_path / "out").exists()


def test_fashion_mnist_from_source_dir(tmp_path):
  from tests.data.fakes import write_fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  write_fake_fashion_mnist(str(tmp_path / "idx"), num_train=30, num_test=6, compress=False)
  out = tmp_path / "out"
  r = _run("--dataset=fashion_mnist", f"--source_dir={tmp_path / 'idx'}", "--public_size=6",
           "--num_clients=6", "--num_clusters=2", f"--output_dir={out}")
  assert r.returncode == 0, r.stderr
  assert "wrote 6 clients, 30 records in 1 shards (+6 public)" in r.stdout
  m = json.loads((out / "manifest.json").read_text())
  assert m["rotations_deg"] == [0, 180] and m["public_split"]["num_records"] == 6
  assert all(c["num_train"] == 4 and c["num_test"] == 1 for c in m["clients"])


def test_unknown_flag_is_an_error_not_a_beam_option(tmp_path):
  out = tmp_path / "d"
  r = _run("--dataset=digits", f"--output_dir={out}", "--num_clientz=5")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: Unknown command line flag 'num_clientz'. Did you mean: num_clients ?"], r.stderr
  assert not out.exists()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
