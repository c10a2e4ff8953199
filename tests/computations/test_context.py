"""computations.runtime.context: runs TFF computations and never leaves a worker_binary behind;
importing it changes nothing in TFF."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from computations.runtime import workers
from computations.runtime.context import tff_context
from pina_tff.errors import ConfigError

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@tff.tensorflow.computation(tf.int32)
def _add_one(x):
  return x + 1


@tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
def _sum(x):
  return tff.federated_sum(x)


def _alive(pid):
  try:
    p = psutil.Process(pid)
    return p.status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def _workers():
  return [p.pid for p in psutil.Process().children(recursive=True)
          if p.name() == workers.WORKER_NAME]


def test_runs_computation_and_stops_worker():
  before = set(_workers())
  with tff_context(device="cpu", num_workers=1, runtime="worker") as ctx:
    pids = ctx.worker_pids
    assert len(pids) == 1
    assert set(pids) <= set(_workers())
    assert _add_one(3) == 4
    assert _sum([1, 2, 3]) == 6
  assert not any(_alive(p) for p in pids)
  assert set(_workers()) <= before


def test_stops_worker_after_exception():
  pids = []
  with pytest.raises(RuntimeError, match="boom"):
    with tff_context(device="cpu", runtime="worker") as ctx:
      pids = ctx.worker_pids
      assert _add_one(1) == 2
      raise RuntimeError("boom")
  assert pids and not any(_alive(p) for p in pids)


def test_several_workers_mergeable():
  with tff_context(device="cpu", num_workers=2, runtime="worker") as ctx:
    pids = ctx.worker_pids
    assert len(pids) == 2
    assert _sum([1, 2, 3, 4]) == 10
  assert not any(_alive(p) for p in pids)


@pytest.mark.parametrize("kwargs", [dict(device="tpu"), dict(num_workers=0)])
def test_bad_arguments_raise_config_error(kwargs):
  with pytest.raises(ConfigError):
    with tff_context(**kwargs):
      pass


_SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow_federated as tff
    from computations.runtime.context import tff_context

    @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
    def total(x):
      return tff.federated_sum(x)

    with tff_context(device="cpu", num_workers=1, runtime="worker"):
      print("RESULT", total([1, 2, 3]), flush=True)
    {tail}
""")


@pytest.mark.parametrize("tail", ["", "raise SystemExit(3)"])
def test_script_exits_promptly_without_log_noise(tail):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("PINA_TFF_VERBOSE", None)
  start = time.monotonic()
  # stdout/stderr through pipes: a surviving worker would keep them open and
  # communicate() would hang (the bug this helper exists for).
  proc = subprocess.Popen([sys.executable, "-c", _SCRIPT.format(tail=tail)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, cwd=_ROOT)
  try:
    out, err = proc.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    proc.kill()
    for child in psutil.Process().children(recursive=True):
      if child.name() == "worker_binary":
        child.kill()
    pytest.fail("script using tff_context did not finish within 60 s")
  elapsed = time.monotonic() - start
  out, err = out.decode(), err.decode()
  assert proc.returncode == (3 if tail else 0), err
  assert "RESULT 6" in out
  for noise in ("grappler", "single_machine.cc", "Exception ignored", "Popen"):
    assert noise not in out + err, out + err
  assert elapsed < 60


_SLEEPER = textwrap.dedent("""
    import signal
    import time
    # A child of a background job (CI runners, `cmd &`) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: restore the interactive default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from computations.runtime.context import tff_context

    with tff_context(device="cpu", num_workers=1, runtime="worker") as ctx:
      print("WORKERS", *ctx.worker_pids, flush=True)
      time.sleep(120)
""")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_inside_block_stops_worker(sig):
  import signal  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-c", _SLEEPER],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          env=env, cwd=_ROOT)
  try:
    line = proc.stdout.readline().decode()
    assert line.startswith("WORKERS"), line
    pids = [int(x) for x in line.split()[1:]]
    assert pids and all(_alive(p) for p in pids)
    proc.send_signal(getattr(signal, sig))
    # Generous: on a loaded 2-core machine (bazel test beside pytest) the exit of a
    # process with TensorFlow loaded took over 30 s twice; the point is that it exits
    # and stops its worker, not how fast.
    proc.wait(timeout=120)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
      time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.stdout.close()


def test_simulation_runtime_runs_secure_sum_and_stops_its_worker():
  """The default runtime simulates secure aggregation (TFF's test compiler) in a
  worker_binary that it starts and stops; the native runtime rejects secure sums."""
  before = set(_workers())

  @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
  def secure_total(x):
    return tff.federated_secure_sum_bitwidth(x, 8)

  with tff_context(device="cpu") as ctx:
    assert len(ctx.worker_pids) == 1 and ctx.runtime == "simulation"
    assert secure_total([1, 2, 3]) == 6
  assert set(_workers()) <= before
  with tff_context(device="cpu", runtime="worker"):
    with pytest.raises(Exception):
      secure_total([1, 2, 3])
  assert set(_workers()) <= before


def test_import_leaves_tff_untouched():
  """No patching at import: TFF's executor factory still uses the real subprocess
  module, and a fresh interpreter importing context has no extra atexit hooks."""
  import subprocess as real_subprocess  # pylint: disable=g-import-not-at-top
  from tensorflow_federated.python.core.impl.executor_stacks import executor_factory  # pylint: disable=g-import-not-at-top
  assert executor_factory.subprocess is real_subprocess
  code = ("import atexit, tensorflow_federated\n"
          "n = atexit._ncallbacks()\n"
          "import computations.runtime.context\n"
          "print(atexit._ncallbacks() - n)")
  env = dict(os.environ, PYTHONPATH=_ROOT)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, cwd=_ROOT, timeout=120, check=True).stdout
  assert out.split()[-1] == "0"


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
