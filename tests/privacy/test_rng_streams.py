"""Noise keys (docs/privacy.md, "Noise modes"): secure-mode keys carry 128 bits of OS
entropy per client, all 128 bits reach TensorFlow's generator, and every stream
(cohort, client key, central noise, random init; in the graph: sketch noise, LDP noise,
shuffles) is derived, never salted, so no two coincide. On the program's real code
path (`computations.program.seeds`, `pina_tff.training.local`,
`pina_tff.simulation.sampling`)."""
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from pina_tff import config as config_lib
from pina_tff import rng_streams
from pina_tff.simulation import sampling
from pina_tff.training import local
from computations.program import seeds


def _bits(keys: np.ndarray) -> np.ndarray:
  """bool [n, 128]: the bits of int64 [n, 2] keys."""
  return np.unpackbits(np.ascontiguousarray(keys).view(np.uint8), axis=1).astype(bool)


def test_secure_client_keys_draw_16_bytes_of_os_entropy_per_client(monkeypatch):
  drawn = []
  real = os.urandom

  def spy(n):
    drawn.append(n)
    return real(n)

  monkeypatch.setattr(rng_streams.os, "urandom", spy)
  ids = list(range(500))
  keys = seeds.client_keys(0, 2, 1, ids, "secure")
  assert sum(drawn) >= 16 * len(ids)
  assert keys.dtype == np.int64 and keys.shape == (len(ids), 2)
  # Every one of the 128 bit positions varies over 500 keys (the former key, a 31-bit
  # word shared by the round plus the client id, left at least 33 bits constant).
  bits = _bits(keys)
  assert bits.any(axis=0).all() and (~bits).any(axis=0).all()
  assert len({tuple(k) for k in keys.tolist()}) == len(ids)
  # Fresh every call, and independent of the run seed.
  again = seeds.client_keys(0, 2, 1, ids, "secure")
  assert not np.any(np.all(keys == again, axis=1))


def test_secure_central_noise_seed_is_128_bits_of_os_entropy(monkeypatch):
  drawn = []
  real = os.urandom
  monkeypatch.setattr(os, "urandom", lambda n: drawn.append(n) or real(n))
  cfg = config_lib.validate(config_lib.RunConfig(
      privacy=config_lib.PrivacyConfig(noise_mode="secure"),
      stage2=config_lib.Stage2Config(aggregator="central")))
  drawn_seeds = np.stack([seeds.noise_seed(cfg, 2, r) for r in range(200)])
  assert drawn == [16] * 200 and drawn_seeds.dtype == np.int64
  bits = _bits(drawn_seeds)
  assert bits.any(axis=0).all() and (~bits).any(axis=0).all()


def test_simulation_keys_repeat_and_match_a_hand_built_seed_sequence():
  ids = [0, 7, 123]
  a = seeds.client_keys(11, 2, 4, ids)
  assert np.array_equal(a, seeds.client_keys(11, 2, 4, ids))
  code = int.from_bytes(hashlib.sha256(b"client_key").digest()[:4], "little")
  for row, i in zip(a.view(np.uint64), ids):
    w = np.random.SeedSequence(11, spawn_key=(code, 2, 4, i + 1)).generate_state(4, np.uint32)
    assert row.tolist() == [int(w[0]) | int(w[1]) << 32, int(w[2]) | int(w[3]) << 32]
  # Every simulation key uses the full width too (derived, 128 bits).
  bits = _bits(seeds.client_keys(11, 2, 4, list(range(500))))
  assert bits.any(axis=0).all() and (~bits).any(axis=0).all()


def test_host_streams_are_distinct_and_fixed_length():
  codes = [rng_streams.stream_code(n) for n in rng_streams.HOST_STREAMS]
  assert len(set(codes)) == len(codes)
  # The same (run key, stage, round) gives unrelated draws on different streams.
  firsts = {n: rng_streams.tf_key(3, n, 2, 5).tolist() for n in rng_streams.HOST_STREAMS}
  assert len({tuple(v) for v in firsts.values()}) == len(firsts)
  # No padding collision: (stage, round) = (1, 0) is not (1,) nor (1, 0, 0).
  assert not np.array_equal(rng_streams.tf_key(3, "cohort", 1, 0),
                            rng_streams.tf_key(3, "cohort", 1, 0, 0))
  # The cohort stream is the schedule's: reference drawn here from the same sequence.
  rng = np.random.default_rng(np.random.SeedSequence(
      3, spawn_key=(rng_streams.stream_code("cohort"), 2, 5, 0)))
  want = np.flatnonzero(rng.random(50) < 10 / 50)
  np.testing.assert_array_equal(sampling.cohort(3, 2, 5, 50, 10), want)
  with pytest.raises(ValueError):
    rng_streams.seed_sequence(-1, "cohort")


def test_in_graph_streams_of_all_clients_never_coincide():
  """The former salts made client i's sketch noise equal client i+4's LDP noise
  ((base, i) + [0, 11] == (base, i + 4) + [0, 7]); derived sub-keys do not."""
  ids = list(range(40))
  for mode in ("simulation", "secure"):
    keys = tf.constant(seeds.client_keys(0, 1, 0, ids, mode))
    draws = []
    for stream in (rng_streams.LDP_NOISE, rng_streams.SKETCH_NOISE,
                   rng_streams.EPOCH_SHUFFLE, rng_streams.EPOCH_SHUFFLE + 1,
                   rng_streams.DDP_SHARE):
      draws.append(local.per_client_normal(keys, [64], stream, 1.0).numpy())
    rows = np.concatenate(draws)  # [5 * 40, 64]
    corr = np.corrcoef(rows)
    np.fill_diagonal(corr, 0.0)
    # 200 independent N(0, I_64) rows: |corr| above 0.6 has probability ~1e-7 each.
    assert np.abs(corr).max() < 0.6, mode
    # Sub-key i is the i-th pair of the Philox stream of the client key (prefix-stable).
    k = keys[5]
    split = tf.random.experimental.stateless_split(k, 8).numpy()
    for i in range(8):
      np.testing.assert_array_equal(local.stream_key(k, i).numpy(), split[i])


def test_the_ddp_key_is_after_every_epoch_shuffle():
  """A client's DDP sub-key index lies past the shuffles of the most epochs the config
  accepts, so no epoch's shuffle key is a shard's distributed-DP key."""
  last_shuffle = rng_streams.EPOCH_SHUFFLE + config_lib.MAX_LOCAL_EPOCHS - 1
  assert rng_streams.DDP_SHARE > last_shuffle
  assert rng_streams.DDP_SHARE not in (rng_streams.LDP_NOISE, rng_streams.SKETCH_NOISE)


def test_all_128_bits_of_a_key_reach_the_generator():
  """Keys differing only in the top bit of either word give different noise (an int32
  cast, as before, would drop the high halves and give the same noise)."""
  base = np.array([[0x0123456789ABCDEF, 0x0FEDCBA987654321]], np.int64)
  variants = [base]
  for word in (0, 1):
    for bit in (31, 32, 62, 63):
      v = base.copy().view(np.uint64)
      v[0, word] ^= np.uint64(1) << np.uint64(bit)
      variants.append(v.view(np.int64))
  out = [local.per_client_normal(tf.constant(v), [16], rng_streams.SKETCH_NOISE, 1.0
                                 ).numpy()[0] for v in variants]
  for i in range(len(out)):
    for j in range(i + 1, len(out)):
      assert not np.allclose(out[i], out[j]), (i, j)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
