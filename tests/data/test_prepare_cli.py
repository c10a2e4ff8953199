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


def test_unknown_flag_is_an_error_not_a_beam_option(tmp_path):
  out = tmp_path / "d"
  r = _run("--dataset=digits", f"--output_dir={out}", "--num_clientz=5")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: Unknown command line flag 'num_clientz'. Did you mean: num_clients ?"], r.stderr
  assert not out.exists()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
