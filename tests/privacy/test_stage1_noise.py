"""The real stage-1 computation (computations.stage1.build_sketch_computation, run by
TFF) clips every sketch to S1 and adds N(0, (z1·S1)²) to every coordinate, including
the ones top-k zeroed. Reference: the same computation with z1 = 0 (same seeds, same
training), so the difference is exactly the noise."""
import numpy as np
import pytest
from scipy import stats

from computations import client_work as cw
from computations import context
from computations import learning_process as lp
from computations import stage1
from pina_tff.models import reduced_tail as rt
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards

WIDTH, K, CLIP, Z1 = 32, 2, 2.5, 0.7
SHARD, NUM_SHARDS, N = 8, 3, 5


@pytest.fixture(scope="module")
def sketches():
  rng = np.random.default_rng(0)
  cfg = rt.TailConfig(width=WIDTH, num_heads=2, mlp_dim=16, num_classes=3, lora_rank=1)
  frozen = {k: (rng.standard_normal(s) * 0.3 + (1 if k.endswith("gamma") else 0)).astype(
      np.float32) for k, s in cfg.frozen_shapes().items()}
  model = tm.ViTTailModel(cfg, frozen)
  clients = []
  for _ in range(SHARD * NUM_SHARDS):
    x = rng.standard_normal((N, 6, WIDTH)).astype(np.float32)
    f = rt.reduce_block_input(cfg, frozen, x)
    clients.append({"x_base": f["x_base"].numpy(), "z": f["z"].numpy(),
                    "label": rng.integers(0, 3, N).astype(np.int32)})
  data = []
  for i in range(NUM_SHARDS):
    members = clients[i * SHARD:(i + 1) * SHARD]
    data.append(cw.shard_to_dataset(shards.pack_shard(
        members, model.feature_keys, N, num_slots=SHARD,
        client_seeds=[(5, i * SHARD + j) for j in range(SHARD)])))
  base = rt.init_trainable(cfg, lora_seed=0, head_kernel=rng.standard_normal((WIDTH, 3)))
  weights = lp.model_weights({k: v[None] for k, v in base.items()})
  # A large learning rate: every sketch's norm exceeds the clip before clipping.
  spec = local.LocalSpec(num_clusters=1, local_epochs=2, batch_size=N, learning_rate=5.0,
                         train_keys=tm.LORA_KEYS + tm.HEAD_KEYS, send_keys=tm.LORA_KEYS)
  out = {}
  with context.tff_context():
    for z in (0.0, Z1):
      comp = stage1.build_sketch_computation(model, spec, K, CLIP, z, SHARD, N)
      out[z] = stage1.collect_sketches(comp(weights, data))
  return out


def test_sketches_are_top_k_sparse_and_clipped(sketches):
  clean = sketches[0.0]
  assert clean.shape == (SHARD * NUM_SHARDS, 2 * WIDTH)
  assert ((clean != 0).sum(axis=1) <= 2 * K).all()
  np.testing.assert_allclose(np.linalg.norm(clean, axis=1), CLIP, rtol=1e-5)


def test_noise_has_std_z1_times_s1_on_every_coordinate(sketches):
  clean, noisy = sketches[0.0], sketches[Z1]
  noise = noisy - clean
  zeroed = noise[clean == 0]  # coordinates top-k removed still get noise
  n = zeroed.size
  assert n > 1000
  var = float(np.var(zeroed, ddof=1))
  want = (Z1 * CLIP) ** 2
  lo = stats.chi2.ppf(1e-6, n - 1) / (n - 1) * want
  hi = stats.chi2.ppf(1 - 1e-6, n - 1) / (n - 1) * want
  assert lo <= var <= hi, (var, want)
  assert abs(zeroed.mean()) < 6 * Z1 * CLIP / np.sqrt(n)
  # Independent across clients: the correlation of two clients' noise is ~ 0.
  c = np.corrcoef(noise[0], noise[1])[0, 1]
  assert abs(c) < 6 / np.sqrt(noise.shape[1])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
