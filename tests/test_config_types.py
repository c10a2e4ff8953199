"""Config files with values of the wrong type: one ConfigError naming the field."""
import json
import math

import pytest

from pina_tff import config as config_lib
from pina_tff.errors import ConfigError


@pytest.mark.parametrize("data,field,expected", [
    ({"stage2": {"rounds": "ten"}}, "stage2.rounds", "an integer"),
    ({"stage2": {"rounds": 2.5}}, "stage2.rounds", "an integer"),
    ({"stage2": {"rounds": True}}, "stage2.rounds", "an integer"),
    ({"seed": "abc"}, "seed", "an integer"),
    ({"stage2": {"cohort": 10.5}}, "stage2.cohort", "an integer"),
    ({"stage0": {"enabled": 1}}, "stage0.enabled", "true or false"),
    ({"method": 3}, "method", "a string"),
    ({"stage2": {"client_lr": "fast"}}, "stage2.client_lr", "a number"),
    ({"privacy": {"epsilon": True}}, "privacy.epsilon", "a number"),
    ({"privacy": {"budget_split": {"stage0": "a"}}}, "privacy.budget_split.stage0",
     "a number"),
])
def test_wrong_type_names_the_field(tmp_path, data, field, expected):
  path = tmp_path / "c.json"
  path.write_text(json.dumps(data))
  with pytest.raises(ConfigError) as e:
    config_lib.load_config(str(path))
  assert f"{field}: expected {expected}" in str(e.value), str(e.value)


def test_right_types_still_load(tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"privacy": {"epsilon": "inf", "delta": 1e-5},
                              "stage2": {"client_lr": 1, "rounds": 3}}))
  cfg = config_lib.load_config(str(path))
  assert math.isinf(cfg.privacy.epsilon) and cfg.stage2.rounds == 3
  assert cfg.stage2.client_lr == 1.0 and isinstance(cfg.stage2.client_lr, float)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
