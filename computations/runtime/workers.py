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
* :func:`execution_context` -- the TFF context over a list of addresses: TFF's
  synchronous context for one address, TFF's mergeable-computation context over one
  asynchronous context per address for several (each round's CLIENTS are split into
  one part per address and the partial aggregates merged).

The native runtime inside the services has no secure-sum intrinsics; the distributed-DP
aggregator runs there in its mergeable form (``computations.learning.aggregators``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
from typing import Iterator, Optional, Sequence

import grpc
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


@functools.lru_cache(maxsize=None)
def _unsubscribed_stub_class():
  """TFF's RemoteExecutorGrpcStub without its channel-connectivity subscription.

  TFF's stub subscribes to the channel's state, which starts gRPC's
  connectivity-polling thread; when the channel is closed while that thread waits
  (a run stopping at once on a bad flag), the thread dies with "Cannot monitor channel
  state: Channel closed!" and a traceback on stderr. The only reader of that state,
  `is_ready`, is not used by the executor stack built here (`wait_until_serving`
  checks the port before), so this stub makes no subscription, hence no polling thread,
  and its `is_ready` asks the port instead. (Built on first use: TFF is imported late.)
  """
  # pylint: disable=g-import-not-at-top
  from tensorflow_federated.proto.v0 import executor_pb2_grpc
  from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
  # pylint: enable=g-import-not-at-top

  class UnsubscribedStub(remote_executor_grpc_stub.RemoteExecutorGrpcStub):

    def __init__(self, channel: grpc.Channel, address: str):  # pylint: disable=super-init-not-called
      self._channel = channel
      self._address = address
      self._stub = executor_pb2_grpc.ExecutorGroupStub(channel)

    @property
    def is_ready(self) -> bool:
      """True if the service's port accepts a TCP connection now."""
      try:
        wait_until_serving([self._address], timeout_s=0.0)
        return True
      except ConfigError:
        return False

  return UnsubscribedStub


def _remote_executor_factory(address: str, default_num_clients: int):
  """TFF's ResourceManagingExecutorFactory over a RemoteExecutor at `address`."""
  # pylint: disable=g-import-not-at-top
  from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
  from tensorflow_federated.python.core.impl.executors import remote_executor
  from tensorflow_federated.python.core.impl.types import placements
  # pylint: enable=g-import-not-at-top
  channel = grpc.insecure_channel(address, CHANNEL_OPTIONS)
  stub = _unsubscribed_stub_class()(channel, address)

  def stack_fn(cardinalities):
    if cardinalities.get(placements.CLIENTS) is None:
      cardinalities[placements.CLIENTS] = default_num_clients
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return python_executor_stacks.ResourceManagingExecutorFactory(
      executor_stack_fn=stack_fn), channel


def _compiler_fn(secure_sums_in_clear: bool):
  """TFF's native compiler; with `secure_sums_in_clear`, TFF's test compiler first
  replaces secure-sum intrinsics by the same sums computed in the clear (simulation)."""
  # pylint: disable=g-import-not-at-top
  from tensorflow_federated.python.core.backends.native import compiler as native
  from tensorflow_federated.python.core.backends.test import compiler as test
  # pylint: enable=g-import-not-at-top
  if not secure_sums_in_clear:
    return native.desugar_and_transform_to_native

  def compile_fn(comp):
    return native.desugar_and_transform_to_native(
        test.replace_secure_intrinsics_with_bodies(comp))
  return compile_fn


def execution_context(addresses: Sequence[str], *, secure_sums_in_clear: bool = True,
                      default_num_clients: int = 0,
                      num_subrounds: Optional[int] = None):
  """The TFF execution context over the services at `addresses`.

  One address: TFF's `SyncExecutionContext` (as TFF's
  `create_sync_test_cpp_execution_context` / `create_sync_local_cpp_execution_context`
  build it, minus starting the process). Several: TFF's `MergeableCompExecutionContext`
  over one `AsyncExecutionContext` per address; `num_subrounds` (default: one per
  address) is how many parts each call's CLIENTS are split into.

  Args:
    addresses: 'host:port' of running services.
    secure_sums_in_clear: compile secure-sum intrinsics to plain sums (TFF's test
      compiler: the simulation of secure aggregation); False: TFF's native compiler,
      which rejects them.
    default_num_clients: CLIENTS cardinality when it cannot be inferred.
    num_subrounds: see above.

  Returns:
    (context, close): `close()` closes the gRPC channels (the caller's job after use).
  """
  # pylint: disable=g-import-not-at-top
  from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
  from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
  from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
  # pylint: enable=g-import-not-at-top
  if not addresses:
    raise ConfigError("execution_context: no worker addresses given.")
  built = [_remote_executor_factory(a, default_num_clients) for a in addresses]
  channels = [c for _, c in built]
  kwargs = dict(compiler_fn=_compiler_fn(secure_sums_in_clear),
                transform_args=tensorflow_computation.transform_args,
                transform_result=tensorflow_computation.transform_result)
  if len(addresses) == 1:
    context = sync_execution_context.SyncExecutionContext(
        executor_fn=built[0][0], **kwargs)
  else:
    from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler  # pylint: disable=g-import-not-at-top
    context = _OrderedMergeableContext(
        async_contexts=[async_execution_context.AsyncExecutionContext(
            executor_fn=f, **kwargs) for f, _ in built],
        compiler_fn=mergeable_comp_compiler.compile_to_mergeable_comp_form,
        num_subrounds=num_subrounds)

  def close():
    for c in channels:
      with contextlib.suppress(Exception):
        c.close()
  return context, close


def _ordered_mergeable_class():
  """TFF's MergeableCompExecutionContext that returns CLIENTS-placed results in the
  clients' order.

  TFF 0.87 concatenates the subrounds' CLIENTS-placed results in the order the
  subrounds *finish* (``_run_in_async_context_pool`` waits FIRST_COMPLETED), so with
  several workers e.g. stage 1's sketches came back shuffled against their clients.
  Here the after-merge part runs per subround and the results are concatenated in
  subround order; everything else is TFF's own code.
  """
  # pylint: disable=g-import-not-at-top,protected-access
  import asyncio
  from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context as mc
  from tensorflow_federated.python.core.impl.types import computation_types
  from tensorflow_federated.python.core.impl.types import type_analysis
  from tensorflow_federated.python.core.impl.types import type_conversions

  async def invoke_in_order(comp, arg, contexts):
    arg_list = arg.value() if arg is not None else [None] * len(contexts)
    merged, merge_context = await mc._invoke_merge_in_async_pool(comp, arg_list,
                                                                 contexts)
    result_type = comp.after_merge.type_signature.result
    if type_analysis.contains_only(result_type, lambda t: not isinstance(
        t, computation_types.FederatedType) or t.all_equal):
      # Nothing at CLIENTS: every subround would return the same (as TFF does).
      return await mc._compute_after_merged(comp, arg_list[0], merged, merge_context)
    results = await asyncio.gather(*[
        mc._compute_after_merged(comp, x, merged, contexts[i % len(contexts)])
        for i, x in enumerate(arg_list)])
    return mc._repackage_partitioned_values(list(results), result_type_spec=result_type)

  class OrderedMergeableContext(mc.MergeableCompExecutionContext):
    """See `_ordered_mergeable_class`."""

    def invoke(self, comp, arg=None):
      if not isinstance(comp, mc.MergeableCompForm):
        comp = self._compiler_pipeline.compile(comp)
      if arg is not None:
        arg = mc.MergeableCompExecutionContextValue(
            arg, comp.up_to_merge.type_signature.parameter, self._num_subrounds)
      result = type_conversions.type_to_py_container(
          self._async_runner.run_coro_and_return_result(
              invoke_in_order(comp, arg, self._async_execution_contexts)),
          comp.after_merge.type_signature.result)
      if self._transform_result is not None:
        result = self._transform_result(result)
      return result

  return OrderedMergeableContext


def _OrderedMergeableContext(**kwargs):  # pylint: disable=invalid-name
  return _ordered_mergeable_class()(**kwargs)
