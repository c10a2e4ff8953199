"""Run configuration: defaults, every validation error, dict/JSON/YAML round trips."""
import dataclasses
import json
import math

import pytest

from pina_tff import config as C
from pina_tff.errors import ConfigError


def _cfg(**over):
  """RunConfig with overrides; keys 'privacy.x', 'stage1.x' etc. go to sections."""
  d = C.to_dict(C.RunConfig())
  for key, value in over.items():
    if "." in key:
      sec, k = key.split(".")
      d[sec][k] = value
    else:
      d[key] = value
  return C.from_dict(d)


def test_defaults_validate_and_delta_defaults_well_below_inverse_population():
  raw = _cfg(population=500, **{"stage0.cohort": 50, "stage2.cohort": 50,
                                "stage1.num_sketch_clients": 100})
  assert C.validate(raw) == raw  # validate checks, resolve fills defaults
  cfg = C.resolve(raw)
  assert cfg.privacy.delta == pytest.approx(min(1e-5, 1 / 5000))
  assert cfg.privacy.budget_split == {"stage0": 0.1, "stage1": 0.2, "stage2": 0.7}
  assert cfg.sketch_size == 768
  assert C.resolve(cfg) == cfg


def test_resolve_follows_the_population_the_data_has():
  raw = _cfg(population=500, **{"stage0.cohort": 50, "stage2.cohort": 50,
                                "stage1.num_sketch_clients": 100})
  assert C.resolve(raw, population=20_000).privacy.delta == pytest.approx(5e-6)
  assert C.resolve(raw, population=20_000).population == 20_000
  given = C.from_dict({**C.to_dict(raw), "privacy": {"delta": 1e-6}})
  assert C.resolve(given, population=20_000).privacy.delta == 1e-6
  with pytest.raises(ConfigError, match="cohort: expected at most the population"):
    C.resolve(raw, population=10)


@pytest.mark.parametrize("text", ["inf", "INF", "+inf", "Infinity", ".inf", "\u221e"])
def test_one_epsilon_parser_for_every_spelling_of_infinity(text):
  assert math.isinf(C.parse_epsilon(text))
  assert C.from_dict({"privacy": {"epsilon": text}}).privacy.epsilon == math.inf
  assert C.parse_epsilon(" 2.5 ") == 2.5 and C.parse_epsilon(3) == 3
  with pytest.raises(ConfigError, match="--epsilon"):
    C.parse_epsilon("lots", "--epsilon")


@pytest.mark.parametrize("over, match", [
    ({"privacy.epsilon": 0.0}, "privacy.epsilon"),
    ({"stage2.normality_rule": "grow"}, "stage2.normality_rule"),
    ({"stage2.restore_max_gain": 0.5}, "stage2.restore_max_gain"),
    ({"stage2.restore_max_gain": math.inf}, "stage2.restore_max_gain"),
    ({"stage2.restore_max_gain": 1e30}, "stage2.restore_max_gain"),
    ({"eval_split": "train"}, "eval_split"),
    ({"stage1.spectral_dims": -1}, "stage1.spectral_dims"),
    ({"stage1.centroid_norm_bound": 0.0}, "stage1.centroid_norm_bound"),
    ({"stage1.centroid_norm_bound": math.nan}, "stage1.centroid_norm_bound"),
    ({"stage1.noise_positions": "hidden"}, "stage1.noise_positions"),
    ({"stage1.noise_positions": "released", "privacy.noise_mode": "secure"},
     "refused with privacy.noise_mode"),
    ({"stage1.centroids": "dbscan"}, "stage1.centroids"),
    ({"stage1.lloyd_start": "zeros"}, "stage1.lloyd_start"),
    ({"stage1.lloyd_steps": 0}, "stage1.lloyd_steps"),
    ({"stage1.centroids": "dp_lloyd", "stage1.noise_positions": "released"},
     "no meaning with it"),
    ({"stage1.centroids": "dp_lloyd", "stage1.spectral_dims": 2}, "spectral_dims=0"),
    ({"stage1.public_basis_dims": -1}, "stage1.public_basis_dims"),
    ({"stage1.public_basis_dims": 4, "stage1.centroids": "dp_lloyd"}, "combines with"),
    ({"privacy.epsilon": -1.0}, "privacy.epsilon"),
    ({"privacy.delta": 0.0}, "privacy.delta"),
    ({"privacy.delta": 1.0}, "privacy.delta"),
    ({"privacy.delta": 1e-3}, "1/population"),
    ({"stage2.cohort": 20000}, "stage2.cohort"),
    ({"stage0.cohort": 20000}, "stage0.cohort"),
    ({"stage1.num_sketch_clients": 20000}, "num_sketch_clients"),
    ({"num_clusters": 0}, "num_clusters"),
    ({"stage1.top_k": 385}, "top_k"),
    ({"stage1.top_k": 0}, "top_k"),
    ({"stage0.clip": 0.0}, "stage0.clip"),
    ({"stage1.clip": -1.0}, "stage1.clip"),
    ({"stage2.clip": 0.0}, "stage2.clip"),
    ({"stage0.rounds": -1}, "stage0.rounds"),
    ({"stage2.rounds": -1}, "stage2.rounds"),
    ({"stage2.warm_rounds": -2}, "warm_rounds"),
    ({"method": "fedsgd"}, "oracle, pina, pina_ri, ifca"),
    ({"stage2.aggregator": "ldp"}, "ddp, central, secure_sum"),
    ({"stage2.scaling": "max"}, "none, min_norm, normality, pina"),
    ({"privacy.accountant": "moments"}, "pld, rdp"),
    ({"privacy.budget_split": {"stage3": 1.0}}, "budget_split"),
])
def test_each_error_has_a_clear_message(over, match):
  with pytest.raises(ConfigError, match=match):
    C.validate(_cfg(**over))


def test_top_k_bound_follows_sketch_size():
  C.validate(_cfg(model_width=16, **{"stage1.lora_rank": 2, "stage1.top_k": 32}))
  with pytest.raises(ConfigError, match="P1/2 = 32"):
    C.validate(_cfg(model_width=16, **{"stage1.lora_rank": 2, "stage1.top_k": 33}))


def test_delta_above_inverse_population_can_be_a_warning():
  with pytest.warns(UserWarning):
    cfg = C.validate(_cfg(**{"privacy.delta": 5e-4,
                             "privacy.allow_delta_above_inverse_population": True}))
  assert cfg.privacy.delta == 5e-4


def test_unknown_keys_rejected():
  with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr'\]"):
    C.from_dict({"lr": 1.0})
  with pytest.raises(ConfigError, match=r"stage2: unknown key\(s\) \['rouns'\]"):
    C.from_dict({"stage2": {"rouns": 3}})


def test_round_trip_json_and_yaml_with_infinite_epsilon(tmp_path):
  cfg = C.validate(_cfg(method="ifca", **{"privacy.epsilon": math.inf}))
  d = C.to_dict(cfg)
  assert d["privacy"]["epsilon"] == "inf"
  json.dumps(d, allow_nan=False)
  assert C.from_dict(d) == cfg
  p = tmp_path / "run.json"
  C.save_config(cfg, str(p))
  assert C.load_config(str(p)) == cfg
  y = tmp_path / "run.yaml"
  y.write_text("method: pina_ri\nprivacy:\n  epsilon: 2\nstage2:\n  scaling: min_norm\n")
  cfg_y = C.load_config(str(y))
  assert cfg_y.method == "pina_ri" and cfg_y.privacy.epsilon == 2
  assert cfg_y.stage2.scaling == "min_norm"
  bad = tmp_path / "bad.yaml"
  bad.write_text("stage1:\n  topk: 3\n")
  with pytest.raises(ConfigError, match="bad.yaml.*topk"):
    C.load_config(str(bad))
  with pytest.raises(ConfigError, match="expected a .json"):
    C.load_config(str(tmp_path / "x.toml"))


def test_config_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    C.RunConfig().method = "ifca"



def test_a_config_is_checked_once_per_process(monkeypatch):
  """validate runs its checks once per config value (pina-simulate validates, then the
  program's resolve); a different value is checked again; an invalid one raises every
  time; one that warns is checked (and warns) every time. The checks are counted by
  their calls of the method table (every check pass makes some); the seeds are this
  test's own, so no other test has validated these values."""
  calls = []
  real = C.method_table.get
  monkeypatch.setattr(C.method_table, "get", lambda k: calls.append(k) or real(k))
  checks = []

  def check(cfg):
    before = len(calls)
    C.validate(cfg)
    checks.append(len(calls) > before)
  cfg = C.RunConfig(seed=424242)
  check(cfg)
  check(C.RunConfig(seed=424242))  # an equal value
  C.resolve(cfg, population=cfg.population)  # resolve's validate: remembered
  assert checks == [True, False]
  n = len(calls)
  C.resolve(cfg, population=cfg.population)
  assert len(calls) == n
  check(dataclasses.replace(cfg, seed=424243))
  assert checks[-1]
  bad = dataclasses.replace(cfg, seed=424244, num_clusters=0)
  for _ in range(2):
    with pytest.raises(ConfigError):
      C.validate(bad)
  warns = dataclasses.replace(cfg, seed=424245, privacy=dataclasses.replace(
      cfg.privacy, delta=0.5, local_delta=1e-6,
      allow_delta_above_inverse_population=True))
  for _ in range(2):
    before = len(calls)
    with pytest.warns(UserWarning):
      C.validate(warns)
    assert len(calls) > before  # checked again


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
