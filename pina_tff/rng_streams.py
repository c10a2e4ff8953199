"""Named random streams: every seeded draw of a run is keyed, not salted.

Host side (NumPy): a draw is a function of (run key, stream name, stage, round, client)
through NumPy's ``SeedSequence``: the run key is the entropy and the fixed-length
``spawn_key`` (stream code, stage, round, client + 1) says which stream it is
(:func:`seed_sequence`). Fixed length matters: ``SeedSequence`` pads short entropy
with zeros, so variable-length lists such as ``[seed, 1]`` and ``[seed, 1, 0]`` would
collide. Stream codes are the first 32 bits of SHA-256 of the name; a test checks
they are distinct. Two different tuples therefore give two SeedSequence pools that
agree only by a 128-bit hash collision (no salt arithmetic can make them coincide).

Client keys: every simulated client of a round gets an int64[2] key (128 bits), in
simulation mode ``tf_key(run key, CLIENT_KEY, stage, round, client)``, in secure mode
16 bytes of ``os.urandom`` of its own (:func:`secure_keys`). TensorFlow's stateless
ops take a seed of shape [2] int64 and scramble all 128 bits into Philox's (key,
counter) state, so the full width reaches the generator.

In the graph (`pina_tff.training.local.stream_key`) a client's key is split into its
sub-streams with ``tf.random.experimental.stateless_split``: sub-key i is the i-th
int64 pair of the Philox stream keyed by the client key. The indices below name them.
Philox is a counter-based generator, not a proven cryptographic PRF; docs/privacy.md
says so.

Changing a name or index here changes every result that uses it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

# ------------------------------------------------------------ host-side stream names
#: Cohort of round r of stage s (`pina_tff.simulation.sampling`).
COHORT = "cohort"
#: Each simulated client's int64[2] key of a round (simulation mode).
CLIENT_KEY = "client_key"
#: The server's central-DP noise seed of a round (`computations.learning.aggregators`).
CENTRAL_NOISE = "central_noise"
#: Random LoRA init of the clusters (PINA+RI, IFCA, IFCA+LDP).
RANDOM_INIT = "random_init"
#: The seeded distributed DP's rotation seed of a round (`computations.learning.seeded_ddp`).
DDP_ROTATION = "ddp_rotation"
#: The int64[2] key of each padding slot of a round's shards (simulation mode): every
#: slot, empty ones included, has a key of its own (`computations.learning.seeded_ddp`).
PADDING_KEY = "padding_key"
#: The secure-mode run's secret cohort key is drawn, not derived; named for the docs.
HOST_STREAMS = (COHORT, CLIENT_KEY, CENTRAL_NOISE, RANDOM_INIT, DDP_ROTATION,
                PADDING_KEY)

#: NumPy stream of the public-split permutation of a prepared data set
#: (data preparation, not a run: ``default_rng([seed, PUBLIC_SPLIT])``).
PUBLIC_SPLIT = 1

# ----------------------------------------------- in-graph sub-streams of a client key
#: Index of a client's local-DP noise on its C-slot update (IFCA+LDP).
LDP_NOISE = 0
#: Index of a client's local-DP noise on its stage-1 sketch.
SKETCH_NOISE = 1
#: Index of epoch e's minibatch shuffle of a client: EPOCH_SHUFFLE + e.
EPOCH_SHUFFLE = 2
#: Epoch shuffles reserved: indices EPOCH_SHUFFLE .. EPOCH_SHUFFLE + MAX_EPOCH_STREAMS - 1
#: (the config caps local epochs at `pina_tff.config.MAX_LOCAL_EPOCHS` <= this).
MAX_EPOCH_STREAMS = 1_000
#: Index of the seeded distributed DP's key of a TFF client (shard), taken from the key
#: of its first slot: its stochastic rounding and discrete Gaussian noise
#: (`computations.learning.seeded_ddp`). After the reserved shuffles, so none coincides.
DDP_SHARE = EPOCH_SHUFFLE + MAX_EPOCH_STREAMS

#: Bits of OS entropy in every secure-mode key.
SECURE_KEY_BITS = 128


def stream_code(name: str) -> int:
  """The 32-bit code of a stream name (first 4 bytes of SHA-256, little endian)."""
  return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "little")


def seed_sequence(run_key: int, stream: str, stage: int = 0, rnd: int = 0,
                  client: int = -1) -> np.random.SeedSequence:
  """The SeedSequence of (run key, stream, stage, round, client); client -1: none."""
  run_key, stage, rnd, client = int(run_key), int(stage), int(rnd), int(client)
  if run_key < 0 or stage < 0 or rnd < 0 or client < -1:
    raise ValueError(f"stream keys must be non-negative, found run_key={run_key}, "
                     f"stage={stage}, round={rnd}, client={client}")
  return np.random.SeedSequence(
      run_key, spawn_key=(stream_code(stream), stage, rnd, client + 1))


def generator(run_key: int, stream: str, stage: int = 0, rnd: int = 0,
              client: int = -1) -> np.random.Generator:
  """A NumPy Generator of the stream (see :func:`seed_sequence`)."""
  return np.random.default_rng(seed_sequence(run_key, stream, stage, rnd, client))


def tf_key(run_key: int, stream: str, stage: int = 0, rnd: int = 0,
           client: int = -1) -> np.ndarray:
  """A stateless TF seed int64[2] (128 bits) of the stream."""
  state = seed_sequence(run_key, stream, stage, rnd, client).generate_state(2, np.uint64)
  return state.view(np.int64).copy()


def client_keys(run_key: int, stage: int, rnd: int, ids: Sequence[int]) -> np.ndarray:
  """int64 [n, 2]: simulation-mode keys of clients ``ids`` in round ``rnd`` of ``stage``."""
  out = np.zeros((len(ids), 2), np.int64)
  for j, i in enumerate(ids):
    out[j] = tf_key(run_key, CLIENT_KEY, stage, rnd, int(i))
  return out


def padding_keys(run_key: int, stage: int, rnd: int, n: int) -> np.ndarray:
  """int64 [n, 2]: simulation-mode keys of the n padding slots of a round (slot order)."""
  out = np.zeros((int(n), 2), np.int64)
  for j in range(int(n)):
    out[j] = tf_key(run_key, PADDING_KEY, stage, rnd, j)
  return out


def secure_keys(n: int) -> np.ndarray:
  """int64 [n, 2]: n keys of 128 bits of OS entropy each (never derived, never stored)."""
  raw = os.urandom(SECURE_KEY_BITS // 8 * int(n))
  return np.frombuffer(raw, dtype=np.int64).reshape(int(n), 2).copy()


def secure_run_key() -> int:
  """A 128-bit run key from OS entropy (secure mode's secret cohort key)."""
  return int.from_bytes(os.urandom(SECURE_KEY_BITS // 8), "little")
