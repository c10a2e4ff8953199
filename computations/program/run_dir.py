"""The run directory of `pina-simulate`: lock, fingerprint, readable checkpoints, sweep.

* One run per directory: `open_run_dir` holds `<root_dir>/.lock` (flock) for the run.
* The directory remembers the configuration that made it: `run.json` holds the config
  (as `pina_tff.config.to_dict`), its SHA-256 and the SHA-256 of the data manifest. A
  resume with another configuration or other data stops with one ConfigError naming the
  differing fields, unless `restart=True`, which removes what the program wrote (and
  nothing else) and starts over.
* Checkpoints are tried newest to oldest; an unreadable one is moved aside
  (`program_state_<v>.unreadable-<time>`) with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Iterator, Mapping, Optional

from pina_tff import rng_streams
from pina_tff.errors import ConfigError
from pina_tff.runtime import atomic
from pina_tff.runtime import locks
from pina_tff.runtime import paths
from pina_tff.runtime import sweep

FINGERPRINT_NAME = "run.json"
CHECKPOINTS = "checkpoints"
# Everything the program writes into a run directory (what --restart removes).
# executions.json: every noisy computation the server started (counted in ε on resume).
EXECUTIONS = "executions.json"
# private/: the run's private state (owner-only): secure mode's secret cohort key.
PRIVATE = "private"
COHORT_KEY_NAME = "cohort_key"
PROGRAM_OUTPUTS = (CHECKPOINTS, "metrics.csv", "tensorboard", "summary.json",
                   "config.json", EXECUTIONS, PRIVATE, FINGERPRINT_NAME)
# A directory with none of these holds no results yet (e.g. a run that stopped on bad
# data before its first round): it is taken over without --restart.
RESULTS = (CHECKPOINTS, "metrics.csv", "summary.json", EXECUTIONS)


@contextlib.contextmanager
def open_run_dir(root_dir: str, log: Callable[[str], None]) -> Iterator[str]:
  """Checks, locks and sweeps `root_dir` for the `with` block; yields its absolute path.

  Raises:
    ConfigError: `root_dir` is a file, under a file or not writable.
    pina_tff.runtime.locks.DirectoryInUseError: another live run holds it.
  """
  root_dir = paths.check_output_dir(root_dir, "--root_dir")
  with locks.exclusive(root_dir, "run directory"):
    sweep.sweep_dead_tmp(root_dir)
    sweep.sweep_dead_shard_dirs()
    ckpt = os.path.join(root_dir, CHECKPOINTS)
    if os.path.isdir(ckpt):  # half-written checkpoints (we hold the lock: none is live)
      for name in os.listdir(ckpt):
        if "_temp" in name and name.startswith("program_state_"):
          shutil.rmtree(os.path.join(ckpt, name), ignore_errors=True)
    yield root_dir


def _sha256_json(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def data_fingerprint(clients_dir: str) -> str:
  """SHA-256 of `clients_dir`'s manifest.json (names the data a run was made from)."""
  with open(os.path.join(clients_dir, "manifest.json"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and k != "budget_split":
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _same(a, b) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
      isinstance(a, bool) or isinstance(b, bool)):
    return a == b or (math.isnan(a) and math.isnan(b))
  return a == b


def differing_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Dotted names of the fields whose values differ, e.g. ['privacy.epsilon']."""
  fo, fn = _flatten(old), _flatten(new)
  return sorted(k for k in set(fo) | set(fn) if not _same(fo.get(k), fn.get(k)))


def _read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: unreadable ({e}); use --restart to start over") from None


def check_fingerprint(root_dir: str, config: Mapping[str, Any], data_sha256: str,
                      restart: bool, log: Callable[[str], None]) -> None:
  """Makes sure `root_dir` holds (only) a run of `config` on data `data_sha256`.

  Args:
    root_dir: the (locked) run directory.
    config: `pina_tff.config.to_dict` of the resolved RunConfig.
    data_sha256: `data_fingerprint(clients_dir)`.
    restart: remove what an earlier run wrote here and start over.
    log: one line when something is removed.

  Raises:
    ConfigError: the directory holds a run of another configuration or other data
      (the message names the differing fields) and not `restart`.
  """
  path = os.path.join(root_dir, FINGERPRINT_NAME)
  wrote_before = [n for n in PROGRAM_OUTPUTS if os.path.exists(os.path.join(root_dir, n))]
  if restart and wrote_before:
    for name in wrote_before:
      p = os.path.join(root_dir, name)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    log(f"--restart: removed the earlier run's {', '.join(wrote_before)} in {root_dir}")
  elif any(n in wrote_before for n in RESULTS):
    old = _read_json(path)
    if old is None:  # a run directory of a version that wrote no fingerprint
      old = {"config": _read_json(os.path.join(root_dir, "config.json")),
             "data_sha256": data_sha256}
    if old.get("config") is not None:
      diff = differing_fields(old["config"], config)
      if old.get("data_sha256") != data_sha256:
        diff.append("data (--clients_dir manifest)")
      if diff:
        flat_old, flat_new = _flatten(old["config"]), _flatten(config)
        shown = [f"{k} ({flat_old.get(k)!r} -> {flat_new.get(k)!r})"
                 if k in flat_old or k in flat_new else k for k in diff]
        raise ConfigError(
            f"{root_dir} holds a run of another configuration; differing: "
            f"{'; '.join(shown)}. Resume with the same flags, use another --root_dir, "
            "or pass --restart to start over")
  record = {"config": dict(config), "config_sha256": _sha256_json(config),
            "data_sha256": data_sha256}
  atomic.write_json(path, record)


def load_latest_readable(manager, template, log: Callable[[str], None]):
  """`manager.load_latest(template)`, but trying versions newest to oldest.

  A version that cannot be read is renamed `<name>.unreadable-<unix time>` (so it is
  kept for inspection and no longer listed), with one log line.

  Returns:
    (state, version), or (None, 0) when no readable checkpoint exists.
  """
  versions = asyncio.run(manager.get_versions()) or []
  for version in sorted(versions, reverse=True):
    try:
      return asyncio.run(manager.load(version, template)), version
    except Exception as e:  # pylint: disable=broad-except  # any unreadable SavedModel
      path = manager._get_path_for_version(version)  # pylint: disable=protected-access
      aside = f"{path}.unreadable-{int(time.time())}"
      with contextlib.suppress(OSError):
        os.rename(path, aside)
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
      log(f"checkpoint {os.path.basename(path)} is unreadable ({first}); moved it to "
          f"{os.path.basename(aside)} and trying an older one")
  return None, 0


def cohort_key(root_dir: str, noise_mode: str, seed: int) -> int:
  """The key of the run's cohort schedule (`pina_tff.simulation.sampling`).

  'simulation': ``seed`` (the run repeats exactly; the schedule is public with the seed).
  'secure': a 128-bit key of OS entropy (`rng_streams.secure_run_key`), drawn on the
  run's first start and kept only in its private state,
  ``<root_dir>/private/cohort_key`` (directory 0700, file 0600, written before any
  cohort is drawn), so a resumed run sees the same cohorts. Never in config.json,
  summary.json, logs or TensorBoard.

  Raises:
    ConfigError: secure mode, checkpoints but no key (the cohorts cannot be
      reproduced), or a key file others can read or write.
  """
  if noise_mode != "secure":
    return int(seed)
  private = os.path.join(root_dir, PRIVATE)
  path = os.path.join(private, COHORT_KEY_NAME)
  if os.path.exists(path):
    mode = os.stat(path).st_mode & 0o777
    dmode = os.stat(private).st_mode & 0o777
    if mode & 0o077 or dmode & 0o077:
      raise ConfigError(
          f"{path} (or its directory) can be read or written by others (mode "
          f"{mode:o} / {dmode:o}): the secure-mode cohort key must be owner-only; "
          "pass --restart to start over with a new key")
    with open(path, encoding="utf-8") as f:
      return int(f.read().strip(), 16)
  ckpt = os.path.join(root_dir, CHECKPOINTS)
  if os.path.isdir(ckpt) and os.listdir(ckpt):
    raise ConfigError(
        f"{root_dir} holds a secure-mode run's checkpoints but no {PRIVATE}/"
        f"{COHORT_KEY_NAME}: its cohorts cannot be reproduced; pass --restart to start "
        "over")
  os.makedirs(private, mode=0o700, exist_ok=True)
  os.chmod(private, 0o700)
  key = rng_streams.secure_run_key()
  atomic.write_text(path, f"{key:032x}\n", durable=True, mode=0o600)
  return key
