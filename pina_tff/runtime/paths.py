"""Checks that an output path can be written, before any long work starts."""

from __future__ import annotations

import os

from pina_tff.errors import ConfigError

_PATH_MAX = 4096
_NAME_MAX = 255


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
  path = check_path_form(path, what)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ConfigError(f"{what}: {path} is a file, expected a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise ConfigError(f"{what}: directory {path} is not writable")
    return path
  return _check_creatable(path, what)


def check_path_form(path: str, what: str) -> str:
  """`path` made absolute, if the OS can hold it: no name longer than NAME_MAX, the
  whole not longer than PATH_MAX, no dangling symbolic link on the way.

  Raises:
    ConfigError: naming `what`, with what was expected and found.
  """
  path = os.path.abspath(path)
  if len(os.fsencode(path)) >= _PATH_MAX:
    raise ConfigError(f"{what}: expected a path of fewer than {_PATH_MAX} bytes, found "
                      f"{len(os.fsencode(path))} bytes")
  for name in path.split(os.sep):
    if len(os.fsencode(name)) > _NAME_MAX:
      raise ConfigError(f"{what}: expected names of at most {_NAME_MAX} bytes, found "
                        f"one of {len(os.fsencode(name))} bytes ({name[:24]}...)")
  probe = path
  while True:
    if os.path.islink(probe) and not os.path.exists(probe):
      raise ConfigError(f"{what}: {probe} is a symbolic link to "
                        f"{os.readlink(probe)}, which does not exist; expected a "
                        "directory (create the target or pass another path)")
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  return path


def check_run_dir(root_dir: str, clients_dir: str) -> str:
  """`check_output_dir(root_dir, '--root_dir')`, apart from `clients_dir`: not the same
  directory (its lock would be the data cache's lock), not inside it and not holding
  it (--restart removes what a run wrote there)."""
  root = check_output_dir(root_dir, "--root_dir")
  real_root = os.path.realpath(root)
  real_data = os.path.realpath(clients_dir)
  if real_root == real_data:
    raise ConfigError(f"--root_dir: expected a directory apart from --clients_dir, "
                      f"found the same directory {real_data}")
  if real_root.startswith(real_data + os.sep):
    raise ConfigError(f"--root_dir: expected a directory outside --clients_dir "
                      f"{real_data}, found {real_root} inside it")
  if real_data.startswith(real_root + os.sep):
    raise ConfigError(f"--root_dir: expected a directory that does not hold "
                      f"--clients_dir, found {real_root}, which holds {real_data}")
  return root


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
                      "writable (expected a writable directory or a path under one)")
  return path
