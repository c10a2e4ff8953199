#!/usr/bin/env bash
# Builds the project's virtualenv reproducibly (Python 3.11 + requirements/lock.txt).
# Usage: scripts/install.sh [VENV_DIR]   (default .venv; env PYTHON picks the interpreter)
# Re-runs are quick: the pip steps are skipped while $VENV/.pina-installed holds the
# sha256 of requirements/lock.txt + setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${VENV:-.venv}}"
TFF_VERSION="0.87.0"
STAMP="$VENV/.pina-installed"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"

want_hash="$(cat requirements/lock.txt setup.py | sha256sum | cut -d' ' -f1)"

smoke() {
  local out
  if ! out="$("$VENV/bin/python" -c "import tensorflow_federated, keras_cv, apache_beam, tensorflow_datasets, sklearn, dp_accounting; print('ok')" 2>&1)"; then
    echo "$out" >&2
    echo "install.sh: import smoke check failed in $VENV" >&2
    exit 1
  fi
  echo "install.sh: import smoke check passed"
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_hash" ]]; then
  echo "install.sh: $VENV is up to date (lock + setup.py unchanged); skipping pip."
  exit 0
fi

# --- find Python 3.11 ---
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$(command -v "$cand")"; break; fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "install.sh: no python found on PATH; Python 3.11 is needed (tensorflow-federated 0.87 needs <3.12)." >&2
  echo "            On Debian/Ubuntu: install python3.11 and python3.11-venv, or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
found="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo unknown)"
if [[ "$found" != 3.11.* ]]; then
  echo "install.sh: found Python $found at $PY, but Python 3.11 is needed" >&2
  echo "            (tensorflow-federated 0.87.0 supports <3.12; the lock is made on 3.11)." >&2
  echo "            Install python3.11 (+ python3.11-venv) or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

echo "install.sh: building $VENV with $PY (Python $found)"
if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  echo "install.sh: existing $VENV is not Python 3.11; recreating it"
  rm -rf "$VENV"
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
rm -f "$STAMP"
LOG="$(mktemp)"; trap 'rm -f "$LOG"' EXIT
step() {  # step "description" cmd...: runs quietly, shows the log only on failure
  local t0=$SECONDS
  echo "install.sh: $1"; shift
  if ! "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "install.sh: FAILED: $*" >&2
    exit 1
  fi
  echo "install.sh:   ($((SECONDS - t0)) s)"
}
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
step "upgrading pip" "${PIP[@]}" install -q --upgrade pip
step "installing requirements/lock.txt (--no-deps)" "${PIP[@]}" install -q --no-deps -r requirements/lock.txt
step "installing tensorflow-federated==$TFF_VERSION (--no-deps)" "${PIP[@]}" install -q --no-deps "tensorflow-federated==$TFF_VERSION"
step "installing pina-tff (editable, console scripts)" "${PIP[@]}" install -q --no-deps -e .
smoke
echo "$want_hash" > "$STAMP"
echo "install.sh: done ($VENV)"
