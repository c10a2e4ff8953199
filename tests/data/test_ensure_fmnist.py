"""scripts/ensure_fmnist.sh with stand-in `id`, `sudo` and `apt-get` (nothing installed)."""
import os
import subprocess

import pytest

from pina_tff.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "ensure_fmnist.sh")


def _stub(bindir, name, body):
  path = bindir / name
  path.write_text("#!/bin/bash\n" + body + "\n")
  path.chmod(0o755)


def _run(tmp_path, uid, sudo_ok=False, apt_fails_first=False):
  """Runs the script with FMNIST_DIR=tmp/pkg and stubs first on PATH; returns (result,
  apt-get calls)."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  log = tmp_path / "apt.log"
  pkg = tmp_path / "pkg"
  _stub(bindir, "id", f'[ "$1" = -u ] && echo {uid} || /usr/bin/id "$@"')
  _stub(bindir, "sudo", 'if [ "$1" = -n ] && [ "$2" = true ]; then exit '
        f'{0 if sudo_ok else 1}; fi; [ "$1" = -n ] && shift; exec "$@"')
  files = " ".join(sources.FASHION_MNIST_FILES.values())
  fail = (f'if [ "$1" = install ] && [ ! -f "{tmp_path}/updated" ]; then exit 100; fi\n'
          if apt_fails_first else "")
  _stub(bindir, "apt-get", f'echo "$@" >> "{log}"\n'
        f'[ "$1" = update ] && touch "{tmp_path}/updated"\n' + fail +
        f'if [ "$1" = install ]; then mkdir -p "{pkg}"; '
        f'for f in {files}; do touch "{pkg}/$f"; done; fi')
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FMNIST_DIR=str(pkg))
  r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
  calls = log.read_text().splitlines() if log.exists() else []
  return r, calls


def test_nothing_to_do_when_files_exist(tmp_path):
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  for f in sources.FASHION_MNIST_FILES.values():
    (pkg / f).write_bytes(b"")
  r, calls = _run(tmp_path, uid=1000)
  assert r.returncode == 0 and calls == [] and r.stderr == ""


@pytest.mark.parametrize("uid, sudo_ok", [(0, False), (1000, True)])
def test_root_or_sudo_installs_the_package(tmp_path, uid, sudo_ok):
  r, calls = _run(tmp_path, uid=uid, sudo_ok=sudo_ok)
  assert r.returncode == 0, r.stderr
  assert calls == ["install -y -q dataset-fashion-mnist"]


def test_updates_package_lists_when_the_package_is_unknown(tmp_path):
  r, calls = _run(tmp_path, uid=0, apt_fails_first=True)
  assert r.returncode == 0, r.stderr
  assert calls == ["install -y -q dataset-fashion-mnist", "update -q",
                   "install -y -q dataset-fashion-mnist"]


def test_non_root_without_sudo_says_what_to_run(tmp_path):
  r, calls = _run(tmp_path, uid=1000, sudo_ok=False)
  assert r.returncode == 1 and calls == []
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: real Fashion-MNIST not installed")
  assert "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist" in lines[0]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
