"""`--help` of every console script, run the way the installed script runs it.

A console script's `__main__` is a generated stub without flags or docstring; the help
must still show the entry module's docstring and its own flags with their defaults, and
no TensorFlow / keras start-up noise may reach the terminal.
"""
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOISE = ("Using TensorFlow backend", "cuDNN", "cuFFT", "oneDNN", "TensorRT",
         "cpu_feature_guard", "cudart_stub")

# script -> (entry module, texts the help must contain)
SCRIPTS = {
    "pina-simulate": ("pipelines.simulate", ["--epsilon", "--root_dir", "--[no]restart",
                                             "(default: '5')", "--[no]verbose"]),
    "pina-prepare": ("pipelines.prepare_data", ["--num_clients", "--output_dir",
                                                "(default: 'digits')"]),
    "pina-embed": ("pipelines.embed", ["--clients_dir", "--dtype",
                                       "(default: 'float32')"]),
    "pina-pretrain": ("pipelines.pretrain", ["--epochs", "digits_tiny 30", "--backbone"]),
    "pina-grid": ("pipelines.grid", ["--preset", "(default: 'digits')"]),
    "pina-bench": ("benchmarks.bench", ["head", "stage2", "embed", "--clients",
                                        "(default: '1000')"]),
}


def _console_script(module):
  # What setuptools writes into .venv/bin/<script>.
  return (f"import re, sys\nfrom {module} import run\n"
          "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
          "sys.exit(run())\n")


@pytest.fixture(scope="module")
def helps():
  env = dict(os.environ, PYTHONPATH=_ROOT)
  for k in ("TF_CPP_MIN_LOG_LEVEL", "PINA_TFF_VERBOSE"):
    env.pop(k, None)
  procs = {}
  out = {}
  names = list(SCRIPTS)
  while names or procs:
    while names and len(procs) < 3:
      name = names.pop(0)
      procs[name] = subprocess.Popen(
          [sys.executable, "-c", _console_script(SCRIPTS[name][0]), "--help"],
          cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name = next(iter(procs))
    o, e = procs.pop(name).communicate(timeout=180)
    out[name] = (o, e)
  return out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_own_flags_with_defaults_and_no_noise(helps, script):
  stdout, stderr = helps[script]
  for text in SCRIPTS[script][1]:
    assert text in stdout, (text, stdout[-3000:])
  for noise in NOISE:
    assert noise not in stdout + stderr, (noise, stderr[-3000:])
  assert "Traceback" not in stderr, stderr[-3000:]
