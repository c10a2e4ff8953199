"""User-facing error types. Each message says what was expected, what was found, and where."""


class PinaError(Exception):
  """Base class of every error pina-tff raises on purpose for a user to read."""


class ConfigError(PinaError, ValueError):
  """A configuration value or flag is invalid (raised before any work starts)."""


class DataError(PinaError):
  """Input data (a shard, a manifest, an image) is missing, corrupt or mismatched."""


class WeightsError(PinaError):
  """Model weights do not fit the model they are loaded into."""
