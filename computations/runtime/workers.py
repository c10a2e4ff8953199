"""TFF executor services (`worker_binary`) by address: start local ones, connect to any.

TFF 0.87 ships its C++ executor service as ``tensorflow_federated/data/worker_binary``
(flags ``--port`` and ``--max_concurrent_computation_calls``). TFF's own
``executor_factory.local_cpp_executor_factory`` starts one on a free port and talks to
it through a ``RemoteExecutorGrpcStub`` + ``RemoteExecutor``; this module builds the
same pieces itself, so the services can run anywhere (other machines, Kubernetes pods)
and the ones we start ourselves are owned and stopped by us (no patching of TFF):

* :func:`local_workers` -- a context manager that starts N services on free loopback
  ports, waits until each one serves, yields their ``host:port`` addresses and always
  stops them (normal exit, exception, KeyboardInterrupt, SystemExit; a SIGKILLed
  parent through :mod:`computations.runtime.worker_guard`).
The TFF context over a list of addresses is `computations.runtime.executor_contexts`.

The native runtime inside the services has no secure-sum intrinsics; the distributed-DP
aggregator runs there in its mergeable form (``computations.learning.aggregators``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import Iterator, Sequence

import portpicker

from computations.runtime import worker_guard
from pina_tff.errors import ConfigError

WORKER_NAME = "worker_binary"
# TFF's channel options (executor_factory._GRPC_CHANNEL_OPTIONS): 2 GB messages.
_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
CHANNEL_OPTIONS = (("grpc.max_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES))
# Services started by `local_workers` and not stopped yet (for handles and tests).
_STARTED: list[subprocess.Popen] = []


def binary_path() -> str:
  """Path of TFF's `worker_binary` in the installed tensorflow_federated package."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(tff.__file__), "data", WORKER_NAME)
  if not os.path.isfile(path):
    raise ConfigError(f"TFF's executor service binary is missing: expected {path}.")
  return path


def worker_command(port: int, max_concurrent_computation_calls: int = -1) -> list[str]:
  """The command line of one executor service listening on `port` (all interfaces)."""
  return [binary_path(), f"--port={int(port)}",
          f"--max_concurrent_computation_calls={int(max_concurrent_computation_calls)}"]


def parse_addresses(text: str) -> list[str]:
  """'host:port,host:port' -> ['host:port', ...]; ConfigError on a malformed entry."""
  out = []
  for item in (p.strip() for p in text.split(",")):
    host, sep, port = item.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
      raise ConfigError(f"--worker_addresses: expected host:port[,host:port...], "
                        f"found {item!r} in {text!r}.")
    out.append(item)
  if len(set(out)) != len(out):
    raise ConfigError(f"--worker_addresses: an address is listed twice in {text!r}.")
  return out


def is_loopback(address: str) -> bool:
  """Whether 'host:port' names this machine's loopback interface."""
  host = address.rpartition(":")[0].strip("[]")
  return host in ("localhost", "::1") or host.startswith("127.")


def worker_env(device: str = "cpu", verbose: bool = False) -> dict[str, str]:
  """Environment of a local service: quiet TF logs unless verbose; no GPU for 'cpu'."""
  env = dict(os.environ)
  env["TF_CPP_MIN_LOG_LEVEL"] = (env.get("PINA_TFF_WORKER_LOG_LEVEL", "0") if verbose
                                 else "3")
  if device == "cpu":
    env["CUDA_VISIBLE_DEVICES"] = "-1"
  else:  # several services (and the parent) share the GPU(s)
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
  return env


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
  """SIGINT (how TFF stops a service), then SIGTERM, then SIGKILL; always reaps."""
  for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s),
                      (signal.SIGKILL, 10.0)):
    if proc.poll() is not None:
      return
    with contextlib.suppress(ProcessLookupError):
      proc.send_signal(sig)
    try:
      proc.wait(timeout=wait_s)
      return
    except subprocess.TimeoutExpired:
      continue


def wait_until_serving(addresses: Sequence[str], timeout_s: float = 120.0,
                       procs: Sequence[subprocess.Popen] = ()) -> None:
  """Blocks until every service accepts connections on its port.

  A plain TCP connect, not gRPC's `channel_ready_future`: that one leaves a
  connectivity-polling thread behind which, when the channel is closed under it (e.g.
  a run that stops at once with a config error), prints a traceback at exit
  ("Cannot monitor channel state: Channel closed!").

  Raises:
    ConfigError: a service did not answer within `timeout_s` seconds (or one of the
      local `procs` exited first).
  """
  deadline = time.monotonic() + timeout_s
  for address in addresses:
    host, port = address.rsplit(":", 1)
    while True:
      dead = [p.pid for p in procs if p.poll() is not None]
      if dead:
        raise ConfigError(f"worker service(s) {dead} exited during start-up.")
      try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
          break
      except OSError:
        if time.monotonic() >= deadline:
          raise ConfigError(  # pylint: disable=raise-missing-from
              f"TFF worker service at {address} did not answer within "
              f"{timeout_s:.0f} s (is `worker_binary --port=...` running there?).")
        time.sleep(0.05)


@contextlib.contextmanager
def local_workers(num_workers: int, *, device: str = "cpu", verbose: bool = False,
                  max_concurrent_computation_calls: int = -1,
                  start_timeout_s: float = 120.0) -> Iterator[list[str]]:
  """Starts `num_workers` executor services on free loopback ports; always stops them.

  The services run in their own sessions (a terminal's Ctrl-C reaches only this
  process, which stops them here) and are registered with `worker_guard` (killed if
  this process dies without cleaning up).

  Yields:
    Their addresses, ['127.0.0.1:PORT', ...] (pids: :func:`started_pids`).
  """
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ConfigError(f"local_workers: num_workers must be an integer >= 1, found "
                      f"{num_workers!r}.")
  procs: list[subprocess.Popen] = []
  ports: list[int] = []
  try:
    ports.extend(portpicker.pick_unused_port() for _ in range(num_workers))
    env = worker_env(device, verbose)
    for port in ports:
      proc = subprocess.Popen(worker_command(port, max_concurrent_computation_calls),
                              stdin=subprocess.DEVNULL,
                              stdout=None if verbose else subprocess.DEVNULL,
                              env=env, start_new_session=True, close_fds=True)
      procs.append(proc)
      _STARTED.append(proc)
      worker_guard.watch(proc.pid)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    wait_until_serving(addresses, start_timeout_s, procs)
    yield addresses
  finally:
    for proc in procs:  # all at once, then wait for each
      with contextlib.suppress(ProcessLookupError):
        if proc.poll() is None:
          proc.send_signal(signal.SIGINT)
    for proc in procs:
      stop(proc)
      with contextlib.suppress(ValueError):
        _STARTED.remove(proc)
    for port in ports:
      with contextlib.suppress(Exception):
        portpicker.return_port(port)


def started_pids() -> list[int]:
  """Pids of the services this process started and has not stopped yet."""
  return [p.pid for p in _STARTED if p.poll() is None]
