"""`--help` of every console script, and a quiet start-up however it is started.

Each script runs in a clean environment (no TF_CPP_MIN_LOG_LEVEL, no PINA_TFF_VERBOSE)
the way setup.py installs it (a generated stub calling its `pipelines.entry` function)
and as `python -m <entry module>`. The help must show the entry module's docstring and
its own flags with their defaults, and no TensorFlow / keras / absl start-up chatter
may reach the terminal. The quiet start-up is an explicit call
(`pipelines.startup.prepare()`), never an import order: importing an entry module
imports no TensorFlow or keras, so no sorting of its imports can undo the call.
"""
import os
import re
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Start-up chatter of TensorFlow, keras, absl (C++ log prefixes) and CUDA probing.
NOISE = ("Using TensorFlow backend", "cuDNN", "cuFFT", "oneDNN", "TensorRT",
         "cpu_feature_guard", "cudart_stub", "tensorflow/core", "tensorflow/tsl",
         "I0000", "W0000", "E0000", "absl::InitializeLog")
#: Modules an entry module must not import at its top (before `startup.prepare()`).
HEAVY = ("tensorflow", "keras", "keras_core", "keras_cv", "tensorflow_federated",
         "apache_beam", "jax")

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
#: Entry modules also run as `python -m` (pina-bench is a development tool).
PYTHON_M = sorted(m for name, (m, _) in SCRIPTS.items() if name != "pina-bench")


def _entry_points() -> dict:
  """setup.py's console scripts: {name: (module, function)}."""
  with open(os.path.join(_ROOT, "setup.py")) as f:
    text = f.read()
  found = re.findall(r'"(pina-[\w-]+)\s*=\s*([\w.]+):(\w+)"', text)
  return {name: (module, fn) for name, module, fn in found}


def _console_script(module, fn):
  # What setuptools writes into .venv/bin/<script>.
  return (f"import re, sys\nfrom {module} import {fn}\n"
          "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
          f"sys.exit({fn}())\n")


def _clean_env() -> dict:
  env = dict(os.environ, PYTHONPATH=_ROOT)
  for k in ("TF_CPP_MIN_LOG_LEVEL", "PINA_TFF_VERBOSE"):
    env.pop(k, None)
  return env


def _run_all(commands: dict, parallel: int = 3) -> dict:
  """{key: argv} run from the repository root with a clean environment, `parallel` at a
  time; {key: (stdout, stderr)}."""
  env = _clean_env()
  todo, procs, out = list(commands), {}, {}
  while todo or procs:
    while todo and len(procs) < parallel:
      key = todo.pop(0)
      procs[key] = subprocess.Popen(commands[key], cwd=_ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
    key = next(iter(procs))
    out[key] = procs.pop(key).communicate(timeout=180)
  return out


@pytest.fixture(scope="module")
def helps():
  entry = _entry_points()
  commands = {("script", name): [sys.executable, "-c", _console_script(*entry[name]),
                                 "--help"] for name in SCRIPTS}
  commands.update({("python -m", m): [sys.executable, "-m", m, "--help"]
                   for m in PYTHON_M})
  return _run_all(commands)


def _check_help(stdout, stderr, texts):
  for text in texts:
    assert text in stdout, (text, stdout[-3000:])
  for noise in NOISE:
    assert noise not in stdout + stderr, (noise, stderr[-3000:])
  assert "cuda" not in stderr.lower(), stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert not stderr.strip(), stderr[-3000:]  # nothing at all on stderr


def test_setup_py_scripts_start_through_pipelines_entry(monkeypatch):
  """Every console script is a `pipelines.entry` function (quiet start-up first) that
  runs the entry module of this table."""
  from pipelines import entry  # pylint: disable=g-import-not-at-top
  scripts = _entry_points()
  assert sorted(scripts) == sorted(SCRIPTS)
  for name, (module, fn) in scripts.items():
    assert module == "pipelines.entry", name
    seen = []
    monkeypatch.setattr(entry, "_run", seen.append)
    getattr(entry, fn)()
    assert seen == [SCRIPTS[name][0]], name


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_own_flags_with_defaults_and_no_noise(helps, script):
  _check_help(*helps[("script", script)], SCRIPTS[script][1])


@pytest.mark.parametrize("module", PYTHON_M)
def test_python_m_help_is_quiet(helps, module):
  texts = next(t for m, t in SCRIPTS.values() if m == module)
  _check_help(*helps[("python -m", module)], texts)


def test_entry_modules_import_nothing_heavy():
  """Importing an entry module (what runs before its `run()` calls
  `startup.prepare()`) imports no TensorFlow, keras, TFF or Beam."""
  modules = sorted({m for m, _ in SCRIPTS.values()} |
                   {"pipelines.entry", "pipelines.startup", "pipelines.cli"})
  probe = ("import importlib, json, sys\nimportlib.import_module(sys.argv[1])\n"
           f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
  out = _run_all({m: [sys.executable, "-c", probe, m] for m in modules}, parallel=2)
  for m in modules:
    stdout, stderr = out[m]
    assert stdout.strip() == "[]", (m, stdout, stderr[-2000:])


@pytest.mark.parametrize("argv, verbose", [([], False), (["--verbose"], True),
                                           (["--", "--verbose"], False)])
def test_prepare_quiets_unless_verbose(argv, verbose):
  """startup.prepare(): TF_CPP_MIN_LOG_LEVEL=3 unless `--verbose` (before any `--`),
  which it hands on as PINA_TFF_VERBOSE=1."""
  probe = ("import json, os, sys\nfrom pipelines import startup\nstartup.prepare()\n"
           "print(json.dumps([os.environ.get(k) for k in "
           "('TF_CPP_MIN_LOG_LEVEL', 'PINA_TFF_VERBOSE')]))\n")
  proc = subprocess.run([sys.executable, "-c", probe] + argv, cwd=_ROOT, env=_clean_env(),
                        capture_output=True, text=True, timeout=60, check=True)
  expected = '[null, "1"]' if verbose else '["3", null]'
  assert proc.stdout.strip() == expected, proc.stderr[-2000:]


@pytest.mark.parametrize("argv, env, verbose", [
    (None, {}, False), (None, {"PINA_TFF_VERBOSE": "0"}, False),
    (None, {"PINA_TFF_VERBOSE": ""}, False), (None, {"PINA_TFF_VERBOSE": "1"}, True),
    (["x", "--verbose"], {}, True), (["x", "--verbose=1"], {}, True),
    (["x", "--verbose=false"], {}, False), (["x", "--", "--verbose"], {}, False),
    (["x"], {"PINA_TFF_VERBOSE": "yes"}, True)])
def test_one_verbose_rule(argv, env, verbose):
  from pina_tff.runtime import verbosity  # pylint: disable=g-import-not-at-top
  assert verbosity.requested(argv, env) is verbose


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
