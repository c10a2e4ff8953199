#!/usr/bin/env bash
# Runs the head workload in pfl-research (benchmarks/pfl_head.py) from its own venv.
# pfl and TensorFlow Federated cannot share one environment, so this makes
# ${PFL_VENV:-/tmp/pfl-venv} (CPU torch first, pinned, so no CUDA wheels are pulled).
# Usage: benchmarks/run_pfl.sh --clients 1000 --rounds 5
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PFL_VENV:-/tmp/pfl-venv}"
PYTHON="${PYTHON:-python3}"
if [[ ! -x "${VENV}/bin/python" ]] || ! "${VENV}/bin/python" -c "import pfl, torch" 2>/dev/null; then
  "${PYTHON}" -m venv "${VENV}"
  "${VENV}/bin/pip" install --quiet torch==2.13.0
  "${VENV}/bin/pip" install --quiet pfl
fi
exec "${VENV}/bin/python" "${HERE}/pfl_head.py" "$@"
