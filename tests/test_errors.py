"""pina_tff.errors: every user-facing error is a PinaError."""
import pytest

from pina_tff.errors import ConfigError, DataError, PinaError, WeightsError


@pytest.mark.parametrize("cls", [ConfigError, DataError, WeightsError])
def test_errors_derive_from_pina_error(cls):
  assert issubclass(cls, PinaError)
  with pytest.raises(PinaError, match="expected"):
    raise cls("expected x, found y, in flag --z")


def test_config_error_is_value_error():
  assert issubclass(ConfigError, ValueError)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
