"""Bad paths give one `error:` line, exit 2, no traceback, and leave nothing that would
need --restart: --root_dir equal to, inside or holding --clients_dir (equal used to
make the run wait for its own lock forever), a dangling symbolic link, a name or path
too long, a read-only --root_dir, a read-only --clients_dir without a cache, and a full
disk under --root_dir and under pina-prepare's --output_dir.

Read-only and full disks are real tmpfs mounts where the test may mount one (root with
CAP_SYS_ADMIN); elsewhere those cases are skipped with the reason (chmod is no
stand-in: root writes through it). All cases run in ONE `_cli_driver.py` process.
"""
import contextlib
import os
import pathlib
import shutil
import subprocess

import pytest

from tests.pipelines import _cli_driver as cli_driver

SIM, PREP = "pipelines.simulate", "pipelines.prepare_data"
RESULTS = ("checkpoints", "metrics.csv", "summary.json")  # computations.program.run_dir.RESULTS


def _mount_tmpfs(path, size="256k"):
  os.makedirs(path, exist_ok=True)
  p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                     capture_output=True, text=True, check=False)
  return p.returncode == 0, p.stderr.strip()


def _remount_ro(path):
  subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def _fill(path):
  """Writes a file into `path` until the disk is full."""
  with open(os.path.join(path, "filler"), "wb", buffering=0) as f:
    with contextlib.suppress(OSError):
      while True:
        f.write(b"\0" * 4096)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("paths")
  clients = base / "digits"
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      output_dir=str(clients), dataset="digits", num_clients=12, num_shards=1, seed=0))
  (base / "dangling").symlink_to(base / "no_such_target")
  mounts, skipped = [], {}
  try:
    yield from _mounted(base, clients, mounts, skipped)
  finally:
    for m in reversed(mounts):
      subprocess.run(["umount", str(m)], check=False)


def _mounted(base, clients, mounts, skipped):
  """Mounts the read-only and full tmpfs the cases use (appending them to `mounts`)."""
  ok, why = _mount_tmpfs(base / "ro_root")
  if ok:
    mounts.append(base / "ro_root")
    _remount_ro(base / "ro_root")
  ok2, _ = _mount_tmpfs(base / "ro_data", size="4m") if ok else (False, why)
  if ok2:
    mounts.append(base / "ro_data")
    shutil.copytree(clients, base / "ro_data" / "digits")
    _remount_ro(base / "ro_data")
  ok3, _ = _mount_tmpfs(base / "full") if ok else (False, why)
  if ok3:
    mounts.append(base / "full")
    _fill(base / "full")
  if not (ok and ok2 and ok3):
    skipped = {n: f"cannot mount a tmpfs here ({why or 'mount failed'}); chmod does not "
               "make a directory read-only for root" for n in
               ("read_only_root_dir", "read_only_clients_dir", "full_disk_root_dir",
                "full_disk_prepare")}
  yield base, skipped


def _cases(base):
  """name -> ([module, argv], words the error line must contain, directory that must
  hold nothing a run would need --restart for)."""
  clients = f"--clients_dir={base / 'digits'}"
  return {
      "same_dir": ([SIM, [clients, f"--root_dir={base / 'digits'}"]],
                   ["--root_dir", "apart from --clients_dir", "same directory"],
                   base / "digits"),
      "root_inside_clients": ([SIM, [clients, f"--root_dir={base / 'digits' / 'runs'}"]],
                              ["--root_dir", "outside --clients_dir"], None),
      "root_holds_clients": ([SIM, [clients, f"--root_dir={base}"]],
                             ["--root_dir", "holds"], base),
      "dangling_symlink": ([SIM, [clients, f"--root_dir={base / 'dangling'}"]],
                           ["--root_dir", "symbolic link", "does not exist"], None),
      "name_too_long": ([SIM, [clients, f"--root_dir={base / ('a' * 300)}"]],
                        ["--root_dir", "at most 255 bytes"], None),
      "path_too_long": ([SIM, [clients, f"--root_dir={base / (('d' * 200 + '/') * 25)}"]],
                        ["--root_dir", "fewer than 4096 bytes"], None),
      "read_only_root_dir": ([SIM, [clients, f"--root_dir={base / 'ro_root' / 'run'}"]],
                             ["--root_dir", "not writable"], None),
      "read_only_clients_dir": ([SIM, [f"--clients_dir={base / 'ro_data' / 'digits'}",
                                       f"--root_dir={base / 'run_ro_data'}"]],
                                ["--clients_dir", "not writable", "pina-embed"],
                                base / "run_ro_data"),
      "full_disk_root_dir": ([SIM, [clients, f"--root_dir={base / 'full'}",
                                    "--progress=none"]],
                             ["No space left on device", "full"], base / "full"),
      "full_disk_prepare": ([PREP, [f"--output_dir={base / 'full' / 'prepared'}",
                                    "--num_clients=12"]],
                            ["No space left on device"], None),
  }


@pytest.fixture(scope="module")
def results(setup):
  base, skipped = setup
  cases = {n: spec for n, (spec, _, _) in _cases(base).items() if n not in skipped}
  return cli_driver.drive(
      {n: [m, [str(a) for a in argv]] for n, (m, argv) in cases.items()}, base,
      timeout=600)


@pytest.mark.parametrize("name", sorted(_cases(pathlib.Path("/"))))
def test_bad_path_gives_one_error_line(setup, results, name):
  base, skipped = setup
  if name in skipped:
    pytest.skip(skipped[name])
  _, words, clean = _cases(base)[name]
  rc, stdout, stderr = results[name]
  assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
  errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, stderr[-3000:]
  for word in words:
    assert word in errors[0], (word, errors[0])
  assert rc == 2, (rc, stderr[-2000:])
  if clean is not None and os.path.isdir(clean):
    assert not [n for n in RESULTS if os.path.exists(clean / n)], os.listdir(clean)
  # The data was not touched (no cache, no lock), and no run directory was made where
  # the path was refused before any work.
  assert sorted(os.listdir(base / "digits")) == [
      "clients-00000-of-00001.tfrecord", "manifest.json", "public.tfrecord"]
  assert not (base / "digits" / "runs").exists()
  assert not (base / "no_such_target").exists()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
