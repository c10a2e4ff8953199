"""Privacy validation of the run configuration: what has no guarantee is refused."""
import math

import pytest

from pina_tff import config as C
from pina_tff.errors import ConfigError


def _validate(**sections):
  return C.validate(C.from_dict({"population": 10000, **sections}))


def test_secure_sum_with_finite_epsilon_is_refused():
  with pytest.raises(ConfigError, match="secure_sum.*adds no noise"):
    _validate(stage2={"aggregator": "secure_sum"}, privacy={"epsilon": 8.0})
  _validate(stage2={"aggregator": "secure_sum"}, privacy={"epsilon": math.inf})
  # IFCA+LDP without stage 0 noises on the clients; the secure sum adds nothing more.
  _validate(method="ifca_ldp", stage0={"enabled": False},
            stage2={"aggregator": "secure_sum"}, privacy={"epsilon": 8.0})
  with pytest.raises(ConfigError):
    _validate(method="ifca_ldp", stage2={"aggregator": "secure_sum"},
              privacy={"epsilon": 8.0})


@pytest.mark.parametrize("key,value", [("threat_model", "client"),
                                       ("sampling", "bernoulli"),
                                       ("noise_mode", "fast")])
def test_privacy_choices(key, value):
  with pytest.raises(ConfigError, match=f"privacy.{key}"):
    _validate(privacy={key: value})


def test_privacy_defaults():
  p = C.resolve(_validate()).privacy
  assert (p.threat_model, p.sampling, p.noise_mode) == ("server", "poisson", "simulation")
  assert p.delta == 1e-5


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
