"""The reduced (class-token-only) tail equals the full last block on random weights."""
import numpy as np
import pytest
import tensorflow as tf

from pina_tff.models import reduced_tail as rt


def _random_frozen(cfg, rng):
  shapes = cfg.frozen_shapes()
  out = {}
  for k, s in shapes.items():
    scale = 1.0 if k.endswith("gamma") else 0.3
    base = 1.0 if k.endswith("gamma") else 0.0
    out[k] = (base + scale * rng.standard_normal(s)).astype(np.float32)
  return out


def _full_block_logits(cfg, f, p, x):
  """Straightforward reference: the whole last block over all tokens, then token 0."""
  def ln(v, g, b):
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + cfg.ln_epsilon) * g + b
  d, hh, hd = cfg.width, cfg.num_heads, cfg.head_dim
  h = ln(x, f["ln1_gamma"], f["ln1_beta"])
  wv = f["wv"] + cfg.lora_scale * (p["lora_a"] @ p["lora_b"]).reshape(d, hh, hd)
  q = np.einsum("ntd,dhe->nthe", h, f["wq"]) + f["bq"]
  k = np.einsum("ntd,dhe->nthe", h, f["wk"]) + f["bk"]
  v = np.einsum("ntd,dhe->nthe", h, wv) + f["bv"]
  s = np.einsum("nqhe,nkhe->nhqk", q, k) / np.sqrt(hd)
  s = np.exp(s - s.max(-1, keepdims=True))
  s = s / s.sum(-1, keepdims=True)
  att = np.einsum("nhqk,nkhe->nqhe", s, v)
  x1 = x + np.einsum("nqhe,hed->nqd", att, f["wo"]) + f["bo"]
  y = ln(x1, f["ln2_gamma"], f["ln2_beta"]) @ f["mlp1_w"] + f["mlp1_b"]
  y = tf.nn.gelu(y, approximate=True).numpy()
  x2 = x1 + y @ f["mlp2_w"] + f["mlp2_b"]
  out = ln(x2, f["lnf_gamma"], f["lnf_beta"])[:, 0]
  return out @ p["head_kernel"] + p["head_bias"]


@pytest.mark.parametrize("rank", [1, 2])
def test_reduced_equals_full_block(rank):
  rng = np.random.default_rng(0)
  cfg = rt.TailConfig(width=16, num_heads=4, mlp_dim=32, num_classes=5, lora_rank=rank)
  f = _random_frozen(cfg, rng)
  p = {k: (0.5 * rng.standard_normal(s)).astype(np.float32)
       for k, s in cfg.param_shapes().items()}
  x = rng.standard_normal((6, 9, 16)).astype(np.float32)
  want = _full_block_logits(cfg, {k: v.astype(np.float64) for k, v in f.items()},
                            {k: v.astype(np.float64) for k, v in p.items()},
                            x.astype(np.float64))
  feats = rt.reduce_block_input(cfg, f, x)
  got = rt.tail_logits_reduced(cfg, rt.frozen_to_tensors(f), p, feats).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_per_client_parameters_broadcast_over_a_shard():
  """Trainables with a leading client axis S act on features [S, N, ...] client by client."""
  rng = np.random.default_rng(1)
  cfg = rt.TailConfig(width=8, num_heads=2, mlp_dim=16, num_classes=3)
  f = rt.frozen_to_tensors(_random_frozen(cfg, rng))
  x = rng.standard_normal((3 * 4, 5, 8)).astype(np.float32)
  feats = rt.reduce_block_input(cfg, f, x)
  params = [{k: rng.standard_normal(s).astype(np.float32)
             for k, s in cfg.param_shapes().items()} for _ in range(3)]
  stacked = {k: np.stack([p[k] for p in params]) for k in rt.TRAINABLE_KEYS}
  shard_feats = {k: tf.reshape(v, [3, 4] + v.shape[1:].as_list()) for k, v in feats.items()}
  got = rt.tail_logits_reduced(cfg, f, stacked, shard_feats).numpy()
  for s in range(3):
    one = {k: v[s * 4:(s + 1) * 4] for k, v in feats.items()}
    want = rt.tail_logits_reduced(cfg, f, params[s], one).numpy()
    np.testing.assert_allclose(got[s], want, rtol=1e-5, atol=1e-5)


def test_wrong_frozen_shapes_are_named():
  cfg = rt.TailConfig(width=8, num_heads=2, mlp_dim=16, num_classes=3)
  f = _random_frozen(cfg, np.random.default_rng(2))
  f["wv"] = f["wv"][:4]
  del f["bo"]
  with pytest.raises(ValueError, match=r"wv: expected \(8, 2, 4\).*bo: missing|bo: missing"):
    rt.check_frozen(f, cfg)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
