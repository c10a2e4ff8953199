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


@pytest.mark.parametrize("where", ["stage0", "stage1", "stage2"])
@pytest.mark.parametrize("clip", [math.inf, math.nan, 0.0, -1.0])
def test_clip_must_be_finite_and_positive(where, clip):
  with pytest.raises(ConfigError, match="finite clipping bound > 0"):
    _validate(**{where: {"clip": clip}})
  _validate(**{where: {"clip": 1e6}})  # large but finite is a valid bound


def test_local_delta_must_be_below_one_over_the_sketch_count():
  # M1 = 1000 sketches: 1/M1 = 1e-3 (the local guarantee of each sketch).
  with pytest.raises(ConfigError, match="local_delta.*1/1000"):
    _validate(privacy={"local_delta": 0.5})
  with pytest.raises(ConfigError, match="local_delta.*1/1000"):
    _validate(privacy={"local_delta": 1e-3})
  _validate(privacy={"local_delta": 0.99e-3})
  # Unset: δ is used; δ above 1/P allowed explicitly still has to be below 1/M1.
  with pytest.raises(ConfigError, match="local_delta"):
    _validate(privacy={"delta": 2e-3, "allow_delta_above_inverse_population": True})
  # Methods without sketches have no M1 bound.
  _validate(method="fedavg", privacy={"local_delta": 0.5})


def test_secure_noise_mode_accepts_the_seeded_ddp():
  """Secure mode runs distributed DP as computations.learning.seeded_ddp, keyed by 128 bits of
  OS entropy per client (it refused TFF's DDP, whose generator has a 32-bit seed)."""
  _validate(privacy={"noise_mode": "secure"}, stage2={"aggregator": "ddp"})
  _validate(privacy={"noise_mode": "secure"}, stage2={"aggregator": "central"})
  _validate(privacy={"noise_mode": "simulation"}, stage2={"aggregator": "ddp"})
  _validate(privacy={"noise_mode": "secure", "epsilon": math.inf},
            stage2={"aggregator": "ddp"})


def test_tiny_epsilon_is_one_config_error_not_a_value_error():
  """ε = 1e-3: RDP cannot calibrate it (dp_accounting's ValueError becomes one
  ConfigError); PLD's exact Gaussian composition can, and spends it within 1 %."""
  from pina_tff.privacy import accounting  # pylint: disable=g-import-not-at-top
  data = {"population": 1000, "privacy": {"epsilon": 1e-3, "accountant": "rdp"},
          "stage0": {"rounds": 2, "cohort": 10}, "stage1": {"num_sketch_clients": 100},
          "stage2": {"rounds": 3, "cohort": 10}}
  with pytest.raises(ConfigError, match="privacy.epsilon.*0.001"):
    accounting.calibrate_from_config(C.from_dict(data))
  data["privacy"]["accountant"] = "pld"
  report = accounting.calibrate_from_config(C.from_dict(data))
  assert 0.99e-3 <= report.epsilon_achieved <= 1e-3


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
