"""Bounded sensitivity for every input (docs/privacy.md, "Bounded sensitivity"): a
client whose update or sketch has an inf or NaN entry is sent as zeros (before
clipping, which alone turns inf into NaN and lets a NaN norm through), and the
clients zeroed are counted as a labelled diagnostic."""
import numpy as np
import pytest
import tensorflow as tf

from computations.program import release
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards


def test_zero_nonfinite_rows_matches_numpy():
  v = np.array([[1.0, 2.0], [np.inf, 0.0], [np.nan, 1.0], [-np.inf, np.nan],
                [3.0, -4.0]], np.float32)
  clean, zeroed = local.zero_nonfinite_rows(tf.constant(v))
  bad = ~np.isfinite(v).all(axis=1)
  want = np.where(bad[:, None], 0.0, v)
  np.testing.assert_array_equal(clean.numpy(), want)
  np.testing.assert_array_equal(zeroed.numpy(), bad.astype(np.float32))
  # Clipping alone does not bound them: the NaN row keeps its NaN, inf becomes NaN.
  clipped, norms = local.clip_rows(tf.constant(v), 1.0)
  assert np.isnan(clipped.numpy()[1:4]).any() and np.isnan(norms.numpy()[2])
  clipped, _ = local.clip_rows(clean, 1.0)
  assert np.all(np.linalg.norm(clipped.numpy(), axis=1) <= 1.0 + 1e-6)


@pytest.mark.parametrize("with_bad_row", [True, False])
def test_zero_nonfinite_rows_in_graph_mode_both_ways(with_bad_row):
  """In the client computation's graph mode, with and without a non-finite row (the
  rows pass unchanged when all are finite): the NumPy rule, bit for bit."""
  rng = np.random.default_rng(2)
  v = rng.standard_normal((40, 33)).astype(np.float32)
  if with_bad_row:
    v[7, 5], v[30, 0] = np.nan, -np.inf
  clean, zeroed = tf.function(local.zero_nonfinite_rows)(tf.constant(v))
  bad = ~np.isfinite(v).all(axis=1)
  assert bad.any() == with_bad_row
  np.testing.assert_array_equal(clean.numpy(), np.where(bad[:, None], 0.0, v))
  np.testing.assert_array_equal(zeroed.numpy(), bad.astype(np.float32))


@pytest.mark.parametrize("bad_value", [np.inf, np.nan])
@pytest.mark.parametrize("ldp", [0.0, 0.5])
def test_a_nonfinite_client_contributes_zeros_and_is_counted(bad_value, ldp):
  rng = np.random.default_rng(0)
  model = tm.LinearModel(5, 3)
  clients = [{"x": rng.standard_normal((4, 5)).astype(np.float32),
              "label": rng.integers(0, 3, size=4).astype(np.int32)} for _ in range(5)]
  clients[2]["x"][1, 3] = bad_value  # one poisoned example: its update is non-finite
  spec = local.LocalSpec(batch_size=2, learning_rate=0.5, clip_norm=0.3,
                         train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS,
                         ldp_noise_stddev=ldp)
  params = {k: tf.constant(0.1 * rng.standard_normal((1,) + s), tf.float32)
            for k, s in model.param_shapes().items()}
  seeds = np.arange(10, dtype=np.int64).reshape(5, 2)
  shard = shards.pack_shard(clients, model.feature_keys, n_max=4, client_seeds=seeds)
  update, diag = local.shard_update(model, spec, params, shard)
  assert np.all(np.isfinite(update.numpy()))
  assert float(diag["num_nonfinite"]) == 1.0
  # Reference: the same shard with the bad client's row replaced by a zero update,
  # i.e. its clipped contribution is exactly zero (plus its own LDP noise, if any).
  good = [c for i, c in enumerate(clients) if i != 2]
  ref, ref_diag = local.shard_update(model, spec, params, shards.pack_shard(
      good, model.feature_keys, n_max=4, client_seeds=np.delete(seeds, 2, axis=0)))
  assert float(ref_diag["num_nonfinite"]) == 0.0
  want = ref.numpy()
  if ldp > 0:
    want = want + local.per_client_normal(tf.constant(seeds[2:3]), list(want.shape),
                                          0, ldp).numpy()[0]
  np.testing.assert_allclose(update.numpy(), want, rtol=1e-5, atol=1e-6)


def test_the_count_is_a_labelled_diagnostic_outside_epsilon():
  assert "nonfinite_zeroed" in release.UNPROTECTED_METRICS["metrics.csv"]
  assert "nonfinite_zeroed" in release.NOTE_UNPROTECTED


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
