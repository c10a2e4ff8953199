"""`pina-prepare` (pipelines.prepare_data) as a user runs it.

Every command line runs pina-prepare's own `run()` (strict flags, Beam options after
`--`, one-line errors) in ONE driver process (`tests/pipelines/_cli_driver.py`: one
TensorFlow / Beam import for all cases), in the order listed.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DRIVER = os.path.join(ROOT, "tests", "pipelines", "_cli_driver.py")


def _cases(base):
  """name -> argv, run in this order."""
  idx_missing = base / "idx_missing"
  return {
      "success": ["--dataset=digits", f"--output_dir={base / 'd'}", "--num_clients=20",
                  "--seed=3", "--", "--runner=DirectRunner", "--direct_num_workers=1"],
      "refusal_without_overwrite": ["--dataset=digits", f"--output_dir={base / 'd'}"],
      "unknown_dataset": ["--dataset=mnist", "--output_dir=/nonexistent/x"],
      "fmnist_missing_files": ["--dataset=fashion_mnist", f"--source_dir={idx_missing}",
                               f"--output_dir={base / 'out_missing'}"],
      "fmnist_from_source_dir": ["--dataset=fashion_mnist",
                                 f"--source_dir={base / 'idx'}", "--public_size=6",
                                 "--num_clients=6", "--num_clusters=2",
                                 f"--output_dir={base / 'out_fmnist'}"],
      "unknown_flag": ["--dataset=digits", f"--output_dir={base / 'typo'}",
                       "--num_clientz=5"],
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(base dir, {case: (exit status, stdout, stderr)})."""
  from tests.data.fakes import write_fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("prepare_cli")
  (base / "idx_missing").mkdir()
  (base / "idx_missing" / "train-images-idx3-ubyte.gz").write_bytes(b"")
  write_fake_fashion_mnist(str(base / "idx"), num_train=30, num_test=6, compress=False)
  cases = {name: ["pipelines.prepare_data", argv] for name, argv in _cases(base).items()}
  (base / "cases.json").write_text(json.dumps(cases))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, _DRIVER, str(base / "cases.json"),
                         str(base / "out.json")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return base, json.loads((base / "out.json").read_text())


def test_success_then_refusal_without_overwrite(runs):
  base, out = runs
  rc, stdout, stderr = out["success"]
  assert rc == 0, stderr
  assert "wrote 20 clients" in stdout
  m = json.loads((base / "d" / "manifest.json").read_text())
  assert m["seed"] == 3 and m["num_clients"] == 20
  rc, _, stderr = out["refusal_without_overwrite"]
  assert rc == 2
  assert stderr.strip().splitlines() == [
      f"error: --output_dir {base / 'd'} already exists (prepared data); expected a new "
      "path, or pass --overwrite to replace prepared data"]


def test_bad_input_is_one_error_line(runs):
  rc, _, stderr = runs[1]["unknown_dataset"]
  assert rc == 2
  assert stderr.strip().splitlines() == [
      "error: --dataset: unknown dataset 'mnist'; expected one of "
      "['cifar10', 'digits', 'fashion_mnist', 'femnist']"]


def test_fashion_mnist_missing_source_files_is_one_error_line(runs):
  base, out = runs
  rc, _, stderr = out["fmnist_missing_files"]
  assert rc == 2, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"error: --source_dir {base / 'idx_missing'}: missing Fashion-MNIST IDX file(s) "
      "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz;")
  assert "apt-get install dataset-fashion-mnist" in lines[0]
  assert not (base / "out_missing").exists()


def test_fashion_mnist_from_source_dir(runs):
  base, out = runs
  rc, stdout, stderr = out["fmnist_from_source_dir"]
  assert rc == 0, stderr
  assert "wrote 6 clients, 30 records in 1 shards (+6 public)" in stdout
  m = json.loads((base / "out_fmnist" / "manifest.json").read_text())
  assert m["rotations_deg"] == [0, 180] and m["public_split"]["num_records"] == 6
  assert all(c["num_train"] == 4 and c["num_test"] == 1 for c in m["clients"])


def test_unknown_flag_is_an_error_not_a_beam_option(runs):
  base, out = runs
  rc, _, stderr = out["unknown_flag"]
  assert rc == 2
  assert stderr.strip().splitlines() == [
      "error: Unknown command line flag 'num_clientz'. Did you mean: num_clients ?"], stderr
  assert not (base / "typo").exists()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
