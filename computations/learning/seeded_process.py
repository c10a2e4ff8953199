"""The aggregation-process frame shared by our seeded sum factories.

Central DP (`aggregators.SeededGaussianSumFactory`) and the mergeable distributed DP
(`mergeable_ddp.MergeableDdpSumFactory`) both keep one int64[2] stateless seed at the
server: it starts from a given value, is advanced by a stateless split every round
(the program may overwrite it before a round: `aggregators.with_noise_seed`), and is
what the round's randomness is derived from. Only the round's body differs.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from pina_tff import rng_streams

SEED_SHAPE = (2,)
SEED_TYPE = tff.TensorType(np.int64, SEED_SHAPE)


def random_seed() -> np.ndarray:
  """A fresh int64[2] seed from the operating system's entropy (secure noise mode, and
  the default initial state of every seeded process)."""
  return rng_streams.secure_keys(1)[0]


def seeded_aggregation_process(value_type, body: Callable,
                               initial_seed: Optional[np.ndarray] = None,
                               weight_type=None) -> tff.templates.AggregationProcess:
  """An AggregationProcess whose state is a seed@SERVER.

  Args:
    value_type: the TFF type of one client's value.
    initial_seed: int64[2], the state after `initialize` (None: `random_seed()`).
    body: `body(seed@SERVER, value@CLIENTS) -> result@SERVER`, called inside the
      process's federated `next` (it may broadcast the seed to the clients); with
      `weight_type`, `body(seed, value, weight@CLIENTS)`.
    weight_type: None (an unweighted process) or the type of each client's weight.

  Returns:
    The process; `next` returns `body`'s result, the advanced seed as state and no
    measurements.
  """
  initial = np.asarray(random_seed() if initial_seed is None else initial_seed,
                       np.int64)

  @tff.tensorflow.computation()
  def init_seed():
    return tf.constant(initial, tf.int64)

  @tff.tensorflow.computation(SEED_TYPE)
  def advance(seed):
    return tf.random.experimental.stateless_split(seed, 1)[0]

  @tff.federated_computation()
  def init_fn():
    return tff.federated_eval(init_seed, tff.SERVER)

  def output(state, result):
    return tff.templates.MeasuredProcessOutput(
        state=tff.federated_map(advance, state), result=result,
        measurements=tff.federated_value((), tff.SERVER))

  state_type = tff.FederatedType(SEED_TYPE, tff.SERVER)
  values_type = tff.FederatedType(value_type, tff.CLIENTS)
  if weight_type is None:
    @tff.federated_computation(state_type, values_type)
    def next_fn(state, value):
      return output(state, body(state, value))
  else:
    @tff.federated_computation(state_type, values_type,
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):  # pylint: disable=function-redefined
      return output(state, body(state, value, weight))

  return tff.templates.AggregationProcess(init_fn, next_fn)
