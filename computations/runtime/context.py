"""The TFF execution context of a run, as one plain context manager.

Usage::

    from computations.runtime.context import tff_context

    with tff_context(device='cpu') as ctx:
      result = my_tff_computation(x)
    # every worker_binary this block started is stopped here

TFF runs computations in C++ executor services (``worker_binary``,
:mod:`computations.runtime.workers`). ``tff_context`` either starts ``num_workers`` of them on
loopback ports (and always stops them: normal exit, exception, Ctrl-C, SIGTERM; a
SIGKILLed parent through :mod:`computations.runtime.worker_guard`) or connects to running ones
at ``worker_addresses`` (``host:port``, any machine; nothing is started or stopped).
With several services TFF's mergeable-computation context splits each round's clients
over them and merges the partial aggregates.

Runtimes (how computations are compiled for the services):

* ``'simulation'`` (default): TFF's test compiler first replaces the secure-sum
  intrinsics (``federated_secure_sum_bitwidth``, ``federated_secure_modular_sum``) by
  the same sums computed in the clear -- what a simulation of secure aggregation
  needs (as TFF's ``create_sync_test_cpp_execution_context``).
* ``'worker'``: TFF's native compiler, which rejects secure-sum intrinsics.

Secure sums cannot be split over several services (TFF's mergeable form has one merge
point; the distributed-DP aggregator chains several secure sums), so the aggregators
ask :func:`secure_sums_supported` and use their mergeable form when it is False.

Both lift protobuf's nesting-depth limit (``SetAllowOversizeProtos``), which TFF's
distributed-DP aggregator exceeds once secure intrinsics are compiled to their bodies.
Nothing here changes TFF; importing this module has no side effect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from typing import Iterator, Optional, Sequence

from computations.runtime import executor_contexts
from computations.runtime import workers as workers_lib
from pina_tff.runtime import verbosity
from pina_tff.errors import ConfigError

DEVICES = ("cpu", "gpu", "auto")
RUNTIMES = ("simulation", "worker")

# (runtime, number of services) of the tff_context blocks now open (innermost last).
_active: list[tuple[str, int]] = []


def allow_deep_protos() -> None:
  """Lifts upb's protobuf nesting limit (100) that deep TFF computations exceed."""
  with contextlib.suppress(ImportError, AttributeError):
    from google._upb import _message  # pylint: disable=g-import-not-at-top
    _message.SetAllowOversizeProtos(True)


def secure_sums_supported() -> bool:
  """Whether the innermost `tff_context` can run secure-sum intrinsics: the simulation
  runtime on one service (or no tff_context at all). False for the native runtime and
  for a round split over several services: aggregators then use plain, mergeable sums."""
  if not _active:
    return True
  runtime, services = _active[-1]
  return runtime == "simulation" and services == 1


@dataclasses.dataclass
class TffContext:
  """Handle yielded by `tff_context`.

  Attributes:
    context: the installed TFF context.
    device: 'cpu' or 'gpu' (after resolving 'auto').
    runtime: 'simulation' (secure sums in the clear) or 'worker' (native).
    addresses: 'host:port' of the executor services used.
    worker_pids: pids of the services this block started (empty when connecting to
      given addresses or in the simulation runtime).
    num_workers: executors each round is split over.
  """
  context: object
  device: str
  runtime: str
  addresses: list[str]
  worker_pids: list[int]
  num_workers: int


def _visible_gpu_count() -> int:
  cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
  if cvd is not None and cvd.strip() in ("", "-1"):
    return 0
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return len(tf.config.list_physical_devices("GPU"))


def _resolve_device(device: str) -> str:
  if device == "cpu":
    return device
  n_gpu = _visible_gpu_count()
  if device == "gpu" and n_gpu == 0:
    raise ConfigError(
        "tff_context: device='gpu' but no GPU is visible to TensorFlow "
        "(check CUDA_VISIBLE_DEVICES / drivers), or use device='cpu'.")
  return "gpu" if n_gpu else "cpu"


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
  """SIGTERM raises SystemExit in the block (main thread, default handler only), so the
  `finally` that stops started services runs."""
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)):
    yield
    return

  def on_term(signum, frame):  # pylint: disable=unused-argument
    raise SystemExit(128 + signum)
  old = signal.signal(signal.SIGTERM, on_term)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, old)


def _validate(device, num_workers, worker_addresses, default_num_clients, runtime):
  if device not in DEVICES:
    raise ConfigError(f"tff_context: device must be one of {DEVICES}, found {device!r}.")
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ConfigError(f"tff_context: num_workers must be an integer >= 1, found "
                      f"{num_workers!r}.")
  if not isinstance(default_num_clients, int) or default_num_clients < 0:
    raise ConfigError("tff_context: default_num_clients must be an integer >= 0, found "
                      f"{default_num_clients!r}.")
  if runtime not in RUNTIMES:
    raise ConfigError(f"tff_context: runtime must be one of {RUNTIMES}, found {runtime!r}.")
  if worker_addresses and num_workers != 1:
    raise ConfigError("tff_context: give either worker_addresses or num_workers > 1.")


@contextlib.contextmanager
def tff_context(*, device: str = "cpu", num_workers: int = 1,
                worker_addresses: Optional[Sequence[str]] = None,
                default_num_clients: int = 0,
                max_concurrent_computation_calls: int = -1,
                num_subrounds: Optional[int] = None,
                verbose: Optional[bool] = None,
                runtime: str = "simulation") -> Iterator[TffContext]:
  """Installs a TFF execution context for the `with` block.

  Args:
    device: 'cpu' (services see no GPU), 'gpu' (ConfigError if none is visible) or
      'auto' (GPU if one is visible). Applies to services started here only.
    num_workers: local services to start on loopback ports (> 1: each round's
      clients are split over them).
    worker_addresses: 'host:port' of running services to use instead (nothing is
      started or stopped); more than one splits each round over them.
    default_num_clients: CLIENTS cardinality when it cannot be inferred.
    max_concurrent_computation_calls: per started service; nonpositive: no limit.
    num_subrounds: parts each round's clients are split into (mergeable context
      only); default: one per service.
    verbose: show the started services' logs. Default: `pina_tff.runtime.verbosity.requested()` (env PINA_TFF_VERBOSE).
    runtime: 'simulation' (secure sums computed in the clear; default) or 'worker'
      (TFF's native compiler: no secure-sum intrinsics).

  Yields:
    A `TffContext`.

  Raises:
    ConfigError: bad arguments, no GPU for device='gpu', or a service that does not
      answer.
  """
  _validate(device, num_workers, worker_addresses, default_num_clients, runtime)
  if verbose is None:
    verbose = verbosity.requested()
  device = _resolve_device(device)
  allow_deep_protos()
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  with contextlib.ExitStack() as stack:
    pids: list[int] = []
    if worker_addresses:
      addresses = list(worker_addresses)
    else:
      stack.enter_context(_sigterm_as_exit())
      before = set(workers_lib.started_pids())
      addresses = stack.enter_context(workers_lib.local_workers(
          num_workers, device=device, verbose=verbose,
          max_concurrent_computation_calls=max_concurrent_computation_calls))
      pids = [p for p in workers_lib.started_pids() if p not in before]
    context, close = executor_contexts.execution_context(
        addresses, secure_sums_in_clear=runtime == "simulation",
        default_num_clients=default_num_clients, num_subrounds=num_subrounds)
    stack.callback(close)
    handle = TffContext(context=context, device=device, runtime=runtime,
                        addresses=addresses, worker_pids=pids,
                        num_workers=len(addresses))
    _active.append((runtime, len(addresses)))
    stack.callback(_active.pop)
    stack.enter_context(tff.framework.get_context_stack().install(context))
    yield handle
