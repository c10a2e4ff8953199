"""A real tfds builder runs up to its download, i.e. every module it needs is installed.

Without importlib_resources (needed by etils.epath) `download_and_prepare` died with
ModuleNotFoundError before any download. Here the network is cut off at the socket
(so the test is offline and quick): the builder must fail with a network error.
"""
import pytest
import os
import subprocess
import sys
import textwrap

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent("""
    import socket, sys, tempfile
    reached = []
    def no_network(*args, **kwargs):
      reached.append(args[0] if args else None)
      raise OSError(101, "Network is unreachable (cut off by the test)")
    socket.getaddrinfo = no_network
    socket.create_connection = no_network
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import downloader
    downloader.MAX_RETRIES = 0  # fail on the first attempt
    try:
      tfds.builder("fashion_mnist", data_dir=tempfile.mkdtemp()).download_and_prepare()
    except BaseException as e:  # report what stopped it
      print("STOPPED_BY", type(e).__name__, str(e)[:300].replace("\\n", " "))
    print("REACHED", *sorted({str(r) for r in reached}))
""")


def test_fashion_mnist_builder_reaches_the_network():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_ROOT)
  r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                     timeout=180, env=env, cwd=_ROOT)
  out = r.stdout
  assert "ModuleNotFoundError" not in out + r.stderr, (out + r.stderr)[-3000:]
  stopped = [ln for ln in out.splitlines() if ln.startswith("STOPPED_BY")]
  assert stopped, (out + r.stderr)[-3000:]
  assert "Network is unreachable" in stopped[0] or "ConnectionError" in stopped[0], stopped
  reached = [ln for ln in out.splitlines() if ln.startswith("REACHED")][0].split()[1:]
  assert any("fashion-mnist" in host for host in reached), reached


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
