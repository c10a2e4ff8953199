"""The one place that creates (and tears down) the TFF execution context.

TFF's local C++ runtime runs every computation in a separate ``worker_binary``
process that TFF starts with ``subprocess.Popen`` the first time a computation
runs. TFF 0.87 only stops it from ``ServiceManager.__del__``, which fails at
interpreter exit ("'NoneType' object has no attribute 'Popen'") and leaves the
worker alive, still holding the parent's stdout/stderr: a pipeline piped into
another program (or a CI step) then never ends. ``tff_context`` therefore
tracks the workers it starts and always stops them: on normal exit of the
``with`` block, on exceptions, on KeyboardInterrupt, on SIGTERM (turned into
``SystemExit`` while the block runs) and, as a last resort, from ``atexit``.

Usage::

    from computations.context import tff_context

    with tff_context(device='cpu', num_workers=1) as ctx:
      result = my_tff_computation(x)
    # no worker_binary is left running here

``num_workers > 1`` runs computations in TFF's mergeable-computation context
over several local C++ executors.

Runtimes. ``runtime='simulation'`` (the default) is TFF's in-process C++ test
runtime: it simulates secure aggregation (``federated_secure_sum_bitwidth``,
``federated_secure_modular_sum``) by computing the same sums in the clear, which is
what a simulation of the secure-sum + distributed-DP protocol needs; the native
runtime rejects those intrinsics ("Cannot embed a federated value").
``runtime='worker'`` is the native local C++ runtime
in ``worker_binary`` processes (no secure intrinsics). Both lift protobuf's
nesting-depth limit (``SetAllowOversizeProtos``), which TFF's distributed-DP
aggregator exceeds once secure intrinsics are compiled to their bodies.

Worker logs: unless ``verbose=True`` or the environment has
``PINA_TFF_VERBOSE=1``, workers get ``TF_CPP_MIN_LOG_LEVEL=3`` and their stdout
goes to /dev/null, so TF / grappler chatter does not reach the user's terminal.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import types
from typing import Iterator, Optional

import psutil

from computations import worker_guard
from pina_tff.errors import ConfigError

WORKER_NAME = 'worker_binary'
_DEVICES = ('cpu', 'gpu', 'auto')
RUNTIMES = ('simulation', 'worker')


def allow_deep_protos() -> None:
  """Lifts upb's protobuf nesting limit (100) that deep TFF computations exceed."""
  with contextlib.suppress(ImportError, AttributeError):
    from google._upb import _message  # pylint: disable=g-import-not-at-top
    _message.SetAllowOversizeProtos(True)

_lock = threading.RLock()
# Worker launch settings of the innermost active tff_context (a stack: contexts
# may nest). TFF launches workers lazily from whatever thread runs the
# computation, so this is process-global rather than thread-local.
_launch_stack: list['_LaunchConfig'] = []
_live_handles: list['TffContext'] = []
_patched = False


@dataclasses.dataclass
class _LaunchConfig:
  env: dict[str, str]
  verbose: bool
  processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)


def _usable_stream(stream) -> Optional[object]:
  """Returns `stream` if a child process can inherit it, else None."""
  try:
    stream.fileno()
    return stream
  except (AttributeError, OSError, ValueError):
    return None


class _TrackedPopen(subprocess.Popen):
  """`subprocess.Popen` as TFF's executor_factory sees it: records the worker.

  Subclasses Popen so TFF's own `isinstance(p, subprocess.Popen)` checks hold.
  """

  def __init__(self, args, *pargs, **kwargs):
    with _lock:
      cfg = _launch_stack[-1] if _launch_stack else None
    if cfg is not None:
      kwargs['env'] = dict(cfg.env)
      if not cfg.verbose:
        kwargs['stdout'] = subprocess.DEVNULL
      # pytest & co. replace sys.stdout/err with objects that have no fileno.
      for key in ('stdout', 'stderr'):
        if key in kwargs and kwargs[key] not in (None, subprocess.DEVNULL,
                                                 subprocess.PIPE):
          if not isinstance(kwargs[key], int) and _usable_stream(
              kwargs[key]) is None:
            kwargs[key] = None
      # Own session: a terminal's Ctrl-C reaches only the parent, which stops the
      # workers itself between rounds; worker_guard kills them if the parent dies.
      kwargs.setdefault('start_new_session', True)
    super().__init__(args, *pargs, **kwargs)
    worker_guard.watch(self.pid)
    if cfg is not None:
      with _lock:
        cfg.processes.append(self)


def _install_popen_hook() -> None:
  """Makes TFF's executor_factory start workers through `_TrackedPopen`."""
  global _patched
  with _lock:
    if _patched:
      return
    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory as ef  # pylint: disable=g-import-not-at-top
    shim = types.ModuleType('subprocess')
    shim.__dict__.update(subprocess.__dict__)
    shim.Popen = _TrackedPopen
    ef.subprocess = shim
    _patched = True
    # The default context TFF installs at import has a ServiceManager too;
    # make its __del__ quiet and effective at interpreter exit.
    with contextlib.suppress(Exception):
      import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
      default = tff.framework.get_context_stack()._stack[0]  # pylint: disable=protected-access
      for m in _service_managers(default):
        _make_del_safe(m)


def _safe_del(self, _sigint=signal.SIGINT, _suppress=contextlib.suppress):
  """Replacement ServiceManager.__del__ that survives interpreter teardown.

  TFF's own `__del__` looks up the `subprocess` module global, which is None
  at interpreter exit ("'NoneType' object has no attribute 'Popen'"), so the
  worker was never stopped. Everything here is bound at definition time.
  """
  try:
    proc = self.__dict__.get('_process')
    if proc is not None and proc.poll() is None:
      proc.send_signal(_sigint)
      proc.wait(timeout=10)
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  except BaseException:  # pylint: disable=broad-except
    with _suppress(BaseException):
      proc.kill()


def _make_del_safe(manager) -> None:
  # ServiceManager is a class defined inside local_cpp_executor_factory, so
  # every factory has its own class object: patching it affects only it.
  cls = type(manager)
  if cls.__dict__.get('__del__') is not _safe_del:
    cls.__del__ = _safe_del


def _visible_gpu_count() -> int:
  cvd = os.environ.get('CUDA_VISIBLE_DEVICES')
  if cvd is not None and cvd.strip() in ('', '-1'):
    return 0
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return len(tf.config.list_physical_devices('GPU'))


def _worker_env(device: str, verbose: bool) -> dict[str, str]:
  env = dict(os.environ)
  if verbose:
    env['TF_CPP_MIN_LOG_LEVEL'] = env.get('PINA_TFF_WORKER_LOG_LEVEL', '0')
  else:
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  if device == 'cpu':
    env['CUDA_VISIBLE_DEVICES'] = '-1'
  else:
    # Several workers (and the parent) share the GPU(s): do not let each
    # worker grab all GPU memory up front.
    env.setdefault('TF_FORCE_GPU_ALLOW_GROWTH', 'true')
  return env


def _is_worker(proc: psutil.Process) -> bool:
  try:
    return proc.name() == WORKER_NAME
  except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
    return False


def worker_processes() -> list[psutil.Process]:
  """`worker_binary` processes that are (direct) children of this process."""
  return [p for p in psutil.Process().children(recursive=False)
          if _is_worker(p)]


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
  """SIGINT (TFF's own way), then SIGTERM, then SIGKILL; always reaps."""
  for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s),
                      (signal.SIGKILL, 10.0)):
    if proc.poll() is not None:
      return
    try:
      proc.send_signal(sig)
    except ProcessLookupError:
      pass
    try:
      proc.wait(timeout=wait_s)
      return
    except subprocess.TimeoutExpired:
      continue


def _service_managers(context) -> list[object]:
  """TFF's per-factory ServiceManager objects (they own the worker handle)."""
  found = []
  contexts = getattr(context, '_async_execution_contexts', None) or [context]
  for c in contexts:
    factory = getattr(c, 'executor_factory', None)
    fn = getattr(factory, '_executor_stack_fn', None)
    for cell in getattr(fn, '__closure__', None) or ():
      try:
        obj = cell.cell_contents
      except ValueError:
        continue
      if hasattr(obj, '_process') and hasattr(obj, 'get_stub'):
        found.append(obj)
  return found


class TffContext:
  """Handle yielded by `tff_context`; `shutdown()` is idempotent."""

  def __init__(self, context, device: str, num_workers: int,
               launch: _LaunchConfig, managers: list[object],
               preexisting: set[int]):
    self.context = context
    self.device = device
    self.num_workers = num_workers
    self._launch = launch
    self._managers = managers
    self._preexisting = preexisting
    self._closed = False

  @property
  def worker_pids(self) -> list[int]:
    with _lock:
      return [p.pid for p in self._launch.processes if p.poll() is None]

  def shutdown(self, grace_s: float = 5.0) -> None:
    with _lock:
      if self._closed:
        return
      self._closed = True
      procs = list(self._launch.processes)
    # Drop TFF's cached executors (closes their gRPC streams) before the
    # workers go, then stop the workers we started.
    for c in getattr(self.context, '_async_execution_contexts', None) or [self.context]:
      factory = getattr(c, 'executor_factory', None)
      executors = getattr(factory, '_executors', None)
      if executors is not None:
        with contextlib.suppress(Exception):
          executors.clear()
    for p in procs:
      _stop(p, grace_s)
    # TFF's ServiceManager.__del__ would SIGINT the (already reaped, maybe
    # reused) pid later; it has nothing left to do.
    for m in self._managers:
      with contextlib.suppress(Exception):
        m._process = None  # pylint: disable=protected-access
        m._stub = None  # pylint: disable=protected-access
    # Fallback: any other worker_binary child started while we were active.
    for proc in worker_processes():
      if proc.pid in self._preexisting:
        continue
      with contextlib.suppress(psutil.Error):
        proc.terminate()
        try:
          proc.wait(timeout=grace_s)
        except psutil.TimeoutExpired:
          proc.kill()
          proc.wait(timeout=10)
    with _lock:
      if self in _live_handles:
        _live_handles.remove(self)


def _start_all(managers: list[object]) -> None:
  """Starts every worker (in parallel) and waits until each one serves."""
  if len(managers) == 1:
    managers[0].get_stub()
    return
  errors = []

  def start(m):
    try:
      m.get_stub()
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=start, args=(m,), daemon=True)
             for m in managers]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[0]


def _atexit_shutdown() -> None:
  with _lock:
    handles = list(_live_handles)
  for h in handles:
    with contextlib.suppress(Exception):
      h.shutdown(grace_s=2.0)


atexit.register(_atexit_shutdown)


@contextlib.contextmanager
def tff_context(*, device: str = 'cpu', num_workers: int = 1,
                default_num_clients: int = 0,
                max_concurrent_computation_calls: int = -1,
                num_subrounds: Optional[int] = None,
                verbose: Optional[bool] = None,
                start_workers: bool = True,
                runtime: str = 'simulation') -> Iterator[TffContext]:
  """Installs a local C++ TFF execution context for the `with` block.

  Args:
    device: 'cpu' (workers see no GPU), 'gpu' (workers use the visible GPUs;
      ConfigError if there are none) or 'auto' (GPU if one is visible).
    num_workers: number of local `worker_binary` processes; >1 uses TFF's
      mergeable-computation context spread over them.
    default_num_clients: CLIENTS cardinality when it cannot be inferred.
    max_concurrent_computation_calls: per worker; nonpositive means no limit.
    num_subrounds: mergeable context only; defaults to `num_workers`.
    verbose: show TF/worker logs. Default: env PINA_TFF_VERBOSE=1.
    start_workers: start the workers now (so their pids are known) rather
      than lazily at the first computation.
    runtime: 'simulation' (C++ test runtime that simulates secure
      aggregation; default) or 'worker' (native worker_binary processes).

  Yields:
    A `TffContext` (`.context`, `.worker_pids`, `.shutdown()`).
  """
  if device not in _DEVICES:
    raise ConfigError(
        f'tff_context: device must be one of {_DEVICES}, found {device!r}.')
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ConfigError(
        f'tff_context: num_workers must be an integer >= 1, found '
        f'{num_workers!r}.')
  if not isinstance(default_num_clients, int) or default_num_clients < 0:
    raise ConfigError(
        'tff_context: default_num_clients must be an integer >= 0, found '
        f'{default_num_clients!r}.')
  if runtime not in RUNTIMES:
    raise ConfigError(
        f'tff_context: runtime must be one of {RUNTIMES}, found {runtime!r}.')
  if verbose is None:
    verbose = os.environ.get('PINA_TFF_VERBOSE', '') not in ('', '0')
  allow_deep_protos()

  if device in ('gpu', 'auto'):
    n_gpu = _visible_gpu_count()
    if device == 'gpu' and n_gpu == 0:
      raise ConfigError(
          "tff_context: device='gpu' but no GPU is visible to TensorFlow "
          "(check CUDA_VISIBLE_DEVICES / drivers), or use device='cpu'.")
    device = 'gpu' if n_gpu else 'cpu'

  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  _install_popen_hook()

  launch = _LaunchConfig(env=_worker_env(device, verbose), verbose=verbose)
  preexisting = {p.pid for p in worker_processes()}
  native = tff.backends.native
  if device == 'cpu' and runtime == 'simulation':
    # In-process runtime: hide GPUs from this process's TensorFlow (best effort;
    # only possible before TensorFlow has initialized its devices).
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with contextlib.suppress(RuntimeError, ValueError):
      tf.config.set_visible_devices([], 'GPU')
  if runtime == 'simulation':
    test = tff.backends.test
    if num_workers == 1:
      context = test.create_sync_test_cpp_execution_context(
          default_num_clients=default_num_clients,
          max_concurrent_computation_calls=max_concurrent_computation_calls)
    else:
      context = native.create_mergeable_comp_execution_context(
          [test.create_async_test_cpp_execution_context(
              default_num_clients=default_num_clients,
              max_concurrent_computation_calls=max_concurrent_computation_calls)
           for _ in range(num_workers)], num_subrounds=num_subrounds)
  elif num_workers == 1:
    context = native.create_sync_local_cpp_execution_context(
        default_num_clients=default_num_clients,
        max_concurrent_computation_calls=max_concurrent_computation_calls)
  else:
    asyncs = [
        native.create_async_local_cpp_execution_context(
            default_num_clients=default_num_clients,
            max_concurrent_computation_calls=max_concurrent_computation_calls)
        for _ in range(num_workers)
    ]
    context = native.create_mergeable_comp_execution_context(
        asyncs, num_subrounds=num_subrounds)
  managers = _service_managers(context)
  for m in managers:
    _make_del_safe(m)
  handle = TffContext(context, device, num_workers, launch, managers,
                      preexisting)

  # SIGTERM -> SystemExit so the finally below runs (main thread only, and
  # only if nobody else handles SIGTERM).
  old_term = None
  if threading.current_thread() is threading.main_thread():
    current = signal.getsignal(signal.SIGTERM)
    if current in (signal.SIG_DFL, None):
      def _on_term(signum, frame):  # pylint: disable=unused-argument
        raise SystemExit(128 + signum)
      old_term = current
      signal.signal(signal.SIGTERM, _on_term)

  with _lock:
    _launch_stack.append(launch)
    _live_handles.append(handle)
  ctx_stack = tff.framework.get_context_stack()
  try:
    if start_workers:
      _start_all(managers)
    with ctx_stack.install(context):
      yield handle
  finally:
    with _lock:
      if launch in _launch_stack:
        _launch_stack.remove(launch)
    handle.shutdown()
    if old_term is not None:
      with contextlib.suppress(Exception):
        signal.signal(signal.SIGTERM, old_term)


# Importing this module makes TFF's own (import-time) default context quiet
# and effective at exit too, even if tff_context is never entered.
with contextlib.suppress(ImportError):
  _install_popen_hook()
