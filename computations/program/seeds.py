"""Every random key of a run's rounds, in one place: client keys and the aggregator's
noise seed, as functions of (run seed, stage, round, client) in simulation mode, or of
OS entropy in secure mode (`pina_tff.rng_streams` derives the streams).

Privacy: in 'secure' noise mode every key is 128 bits of `os.urandom`, drawn when
needed and never written; in 'simulation' mode keys are reproducible from the seed
(noise then protects only against an observer who does not know the seed).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from computations.learning import aggregators as agg
from pina_tff import rng_streams


def client_keys(seed: int, stage: int, rnd: int, ids, noise_mode: str = "simulation"
                ) -> np.ndarray:
  """Each client's 128-bit key int64 [n, 2] (training shuffles and its local-DP noise,
  split into named sub-streams in the graph: `pina_tff.training.local.stream_key`).

  'simulation': `rng_streams.client_keys` of (seed, stage, round, client id), so runs
  repeat; 'secure': 16 bytes of os.urandom per client per round (`secure_keys`), kept
  in memory only.
  """
  if noise_mode == "secure":
    return rng_streams.secure_keys(len(ids))
  return rng_streams.client_keys(seed, stage, rnd, ids)


def padding_keys(seed: int, stage: int, rnd: int, n: int,
                 noise_mode: str = "simulation") -> np.ndarray:
  """The 128-bit keys int64 [n, 2] of a round's n padding slots (an empty slot's key
  keys its shard's distributed-DP share when it is the shard's first slot):
  `rng_streams.padding_keys` of (seed, stage, round, slot), or os.urandom (secure)."""
  if noise_mode == "secure":
    return rng_streams.secure_keys(n)
  return rng_streams.padding_keys(seed, stage, rnd, n)


def noise_seed(cfg, stage: int, rnd: int,
               stream: str = rng_streams.CENTRAL_NOISE) -> np.ndarray:
  """The aggregator seed int64[2] of a round (central DP's noise seed;
  `rng_streams.DDP_ROTATION`: seeded DDP's rotation seed): from the run seed, or OS
  entropy (secure mode)."""
  if cfg.privacy.noise_mode == "secure":
    return rng_streams.secure_keys(1)[0]
  return agg.derived_seed(cfg.seed, stage, rnd, stream)


def seed_noise_step(cfg, stage: int, aggregator_spec
                    ) -> Optional[Callable[[int, object], object]]:
  """The round loop's noise-seed step of ``stage``: (round, process state) -> the
  state with that round's aggregator noise seed; None when the aggregator keeps no
  seed in its state (`aggregators.has_noise_seed`)."""
  if not agg.has_noise_seed(aggregator_spec):
    return None
  stream = (rng_streams.DDP_ROTATION if aggregator_spec.kind == "ddp"
            else rng_streams.CENTRAL_NOISE)
  return lambda rnd, state: agg.with_noise_seed(state,
                                                noise_seed(cfg, stage, rnd, stream))
