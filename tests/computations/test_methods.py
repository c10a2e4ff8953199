"""computations.learning.methods: the table that turns a RunConfig into each stage's process spec.

No TFF execution: the specs are plain dataclasses. Settings are chosen so every knob is
visible (clip != 1, cohort != number of shards, z0 != z2, momentum != 0), and each
expectation is written from the method table of the spec, not from the code.
"""
import dataclasses
import math

import pytest

from computations.learning import methods
from pina_tff import config as config_lib
from pina_tff import method_table
from pina_tff.training import models as tm

COHORT, COHORT0, SHARD = 30, 12, 4   # 30 clients in ceil(30/4) = 8 shards
Z0, Z2 = 0.37, 1.9
CLIP0, CLIP2 = 0.6, 0.45
STEPS = 3.5                           # FedNova's expected local steps tau_eff
ALL = ("oracle", "pina", "pina_ri", "ifca", "ifca_ldp", "fedavg", "fedprox", "fednova")


def _cfg(method, aggregator="ddp", scaling="normality"):
  return config_lib.validate(config_lib.RunConfig(
      method=method, num_clusters=3, population=1000, model_width=16,
      stage0=config_lib.Stage0Config(rounds=2, cohort=COHORT0, lr=0.05, clip=CLIP0,
                                     local_epochs=2),
      stage1=config_lib.Stage1Config(top_k=4),
      stage2=config_lib.Stage2Config(
          rounds=5, cohort=COHORT, local_epochs=3, batch_size=8, client_lr=0.2,
          server_lr=0.7, server_momentum=0.9, clip=CLIP2, warm_rounds=4, scaling=scaling,
          aggregator=aggregator, ddp_bits=18, fedprox_mu=0.25)))


def _spec2(method, z2=Z2, **kw):
  return methods.stage2_spec(_cfg(method, **kw), z2=z2, shard_size=SHARD, n_max=11,
                             num_true_clusters=2, expected_local_steps=STEPS)


@pytest.mark.parametrize("method", ALL)
def test_stage2_clip_denominator_and_shards(method):
  spec = _spec2(method)
  assert spec.local.clip_norm == CLIP2
  agg = spec.aggregator
  assert agg.clip_norm == CLIP2
  # The fixed DP denominator is the expected cohort M of *simulated* clients.
  assert agg.expected_clients == COHORT
  assert agg.shard_size == SHARD and agg.num_shards == math.ceil(COHORT / SHARD) == 8
  assert spec.shard_size == SHARD and spec.n_max == 11
  assert spec.server_learning_rate == 0.7 and spec.server_momentum == 0.9
  assert agg.ddp_bits == 18


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("aggregator", ["ddp", "central"])
def test_stage2_noise_goes_where_the_method_says(method, aggregator):
  spec = _spec2(method, aggregator=aggregator)
  if method == "ifca_ldp":
    # Local DP: every client adds N(0, (z2 * S2)^2); the server sums in the clear.
    assert spec.aggregator.kind == "sum"
    assert spec.aggregator.noise_multiplier == 0.0
    assert spec.aggregator.central_stddev == 0.0
    assert spec.local.ldp_noise_stddev == pytest.approx(Z2 * CLIP2)
  else:
    assert spec.aggregator.kind == aggregator
    assert spec.aggregator.noise_multiplier == Z2
    assert spec.aggregator.central_stddev == pytest.approx(Z2 * CLIP2)
    assert spec.local.ldp_noise_stddev == 0.0


@pytest.mark.parametrize("method", [m for m in ALL if m != "ifca_ldp"])
def test_noiseless_ddp_is_a_secure_sum(method):
  spec = _spec2(method, z2=0.0)
  assert spec.aggregator.kind == "secure_sum"
  assert spec.aggregator.central_stddev == 0.0
  # 'central' keeps its own kind at z = 0 (its query adds zero noise).
  assert _spec2(method, z2=0.0, aggregator="central").aggregator.kind == "central"


# method -> (clusters, choose, scaling, fedprox_mu, normalize_by_steps, multiplier)
TABLE = {
    "pina": (3, True, "normality", 0.0, False, 1.0),
    "pina_ri": (3, True, "normality", 0.0, False, 1.0),
    "ifca": (3, True, "none", 0.0, False, 1.0),
    "ifca_ldp": (3, True, "none", 0.0, False, 1.0),
    "fedavg": (1, False, "none", 0.0, False, 1.0),
    "fedprox": (1, False, "none", 0.25, False, 1.0),
    "fednova": (1, False, "none", 0.0, True, STEPS),
    "oracle": (3, True, "none", 0.0, False, 1.0),
}


@pytest.mark.parametrize("method", ALL)
def test_stage2_method_table(method):
  clusters, choose, scaling, mu, by_steps, mult = TABLE[method]
  spec = _spec2(method)
  assert method_table.num_models(method, _cfg(method).num_clusters) == clusters
  assert spec.local.num_clusters == clusters
  assert spec.local.choose_cluster == choose
  assert spec.scaling_mode == scaling
  assert spec.warm_rounds == 4
  assert spec.local.fedprox_mu == mu
  assert spec.local.normalize_by_steps == by_steps
  assert spec.update_multiplier == mult
  assert spec.local.local_epochs == 3 and spec.local.batch_size == 8
  assert spec.local.learning_rate == 0.2
  assert spec.local.num_true_clusters == 2
  assert spec.local.send_keys == tm.LORA_KEYS + tm.HEAD_KEYS
  assert spec.local.true_cluster == (method == "oracle")


@pytest.mark.parametrize("aggregator,z2,want", [
    ("ddp", Z2, Z2 * CLIP2 / COHORT), ("central", Z2, Z2 * CLIP2 / COHORT),
    ("ddp", 0.0, 0.0), ("secure_sum", 0.0, 0.0)])
def test_normality_rule_reads_the_noise_std_of_the_aggregate(aggregator, z2, want):
  """sigma = z S / M per coordinate of u = (sum + noise) / M: the public noise scale."""
  base = _cfg("pina")
  cfg = dataclasses.replace(base, stage2=dataclasses.replace(
      base.stage2, aggregator=aggregator, normality_rule="restore", restore_max_gain=3.0),
      privacy=dataclasses.replace(base.privacy, epsilon=math.inf if z2 == 0 else 8.0))
  config_lib.validate(cfg)
  rule = methods.stage2_spec(cfg, z2=z2, shard_size=SHARD, n_max=11, num_true_clusters=2).normality_rule
  assert (rule.name, rule.max_gain) == ("restore", 3.0)
  assert rule.noise_std == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("scaling", ["none", "min_norm", "normality", "pina"])
def test_pina_uses_the_configured_scaling_mode(scaling):
  for method in ALL:
    want = scaling if method in ("pina", "pina_ri") else "none"
    assert _spec2(method, scaling=scaling).scaling_mode == want, method


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("aggregator", ["ddp", "central"])
def test_stage0_gets_z0_clip0_and_cohort0(method, aggregator):
  cfg = _cfg(method, aggregator=aggregator)
  spec = methods.stage0_spec(cfg, z0=Z0, shard_size=SHARD, n_max=11)
  assert spec.local.num_clusters == 1 and not spec.local.choose_cluster
  assert spec.local.train_keys == tm.HEAD_KEYS == spec.local.send_keys
  assert spec.local.clip_norm == CLIP0 and spec.aggregator.clip_norm == CLIP0
  assert spec.local.learning_rate == 0.05 and spec.local.local_epochs == 2
  assert spec.local.batch_size == cfg.stage2.batch_size  # borrowed from stage 2
  assert spec.local.ldp_noise_stddev == 0.0
  assert spec.local.fedprox_mu == 0.0 and not spec.local.normalize_by_steps
  # Every method warms the head up through the configured (central-noise) aggregator.
  assert spec.aggregator.kind == aggregator
  assert spec.aggregator.noise_multiplier == Z0
  assert spec.aggregator.central_stddev == pytest.approx(Z0 * CLIP0)
  assert spec.aggregator.expected_clients == COHORT0
  assert spec.aggregator.num_shards == math.ceil(COHORT0 / SHARD) == 3
  assert spec.scaling_mode == "none" and spec.update_multiplier == 1.0
  assert spec.server_momentum == 0.0


def test_cohort_below_one_shard_has_one_shard():
  cfg = _cfg("fedavg")
  cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, cohort=3))
  spec = methods.stage2_spec(cfg, z2=Z2, shard_size=SHARD, n_max=11, num_true_clusters=1)
  assert spec.aggregator.num_shards == 1 and spec.aggregator.expected_clients == 3


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
