"""TFF execution contexts over executor services reached by address.

* :func:`execution_context` -- the TFF context over a list of addresses: TFF's
  synchronous context for one address, TFF's mergeable-computation context over one
  asynchronous context per address for several (each round's CLIENTS are split into
  one part per address and the partial aggregates merged, in the clients' order).

The services themselves (start, wait, stop) are `computations.runtime.workers`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional, Sequence

import grpc

from computations.runtime import workers
from pina_tff.errors import ConfigError


@functools.lru_cache(maxsize=None)
def unsubscribed_stub_class():
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
        workers.wait_until_serving([self._address], timeout_s=0.0)
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
  channel = grpc.insecure_channel(address, workers.CHANNEL_OPTIONS)
  stub = unsubscribed_stub_class()(channel, address)

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
