"""Checks that an output path can be written, before any long work starts."""

from __future__ import annotations

import os

from pina_tff.errors import ConfigError


def check_output_dir(path: str, what: str) -> str:
  """Checks that directory `path` exists and is writable, or can be created.

  Args:
    path: the directory (may not exist yet; its missing parents are created later).
    what: how the user named it, e.g. '--root_dir'; starts every message.

  Returns:
    `path` made absolute.

  Raises:
    ConfigError: `path` is a file, lies under a file, or is (or would be created in) a
      directory this process cannot write.
  """
  if not path:
    raise ConfigError(f"{what}: expected a directory path, found an empty string")
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ConfigError(f"{what}: {path} is a file, expected a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise ConfigError(f"{what}: directory {path} is not writable")
    return path
  return _check_creatable(path, what)


def check_output_file(path: str, what: str) -> str:
  """Checks that file `path` can be (re)written: its directory exists or can be made
  and is writable, and `path` is not a directory. Returns `path` made absolute."""
  if not path:
    raise ConfigError(f"{what}: expected a file path, found an empty string")
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise ConfigError(f"{what}: {path} is a directory, expected a file")
  check_output_dir(os.path.dirname(path), what)
  return path


def _check_creatable(path: str, what: str) -> str:
  ancestor = os.path.dirname(path)
  while not os.path.exists(ancestor):
    parent = os.path.dirname(ancestor)
    if parent == ancestor:
      break
    ancestor = parent
  if not os.path.isdir(ancestor):
    raise ConfigError(f"{what}: {path} lies under {ancestor}, which is a file")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise ConfigError(f"{what}: cannot create {path}: directory {ancestor} is not "
                      "writable")
  return path
