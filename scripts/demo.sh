#!/usr/bin/env bash
# End-to-end demo on real rotated Fashion-MNIST (works offline). Run through `make demo`.
#   1. Fashion-MNIST from Debian's package dataset-fashion-mnist (`make data` installs it)
#   2. pina-prepare: 2,000 clients, C = 4 rotations {0, 90, 180, 270} (Apache Beam),
#      an upright public split of 10,000 images that no client holds
#   3. the fmnist_vit backbone pre-trained on the public split, last-block inputs cached
#      once per example (Beam)
#   4. pina-grid --preset=fmnist_demo: 7 methods x epsilon in {2, 8}, table + plots
# Everything is resumable: run it again and finished steps are skipped.
# DEMO_PRESET=digits runs the small digits smoke grid instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
OUT="${DEMO_OUT:-demo_out}"
PRESET="${DEMO_PRESET:-fmnist_demo}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
T0=$SECONDS
echo "== pina-grid --preset=$PRESET (prepares the data, pre-trains and embeds on first use)"
"$PY" -m pipelines.grid --preset="$PRESET" --output_dir="$OUT/grid_$PRESET" --data_dir="$OUT/data"
echo "== demo finished in $((SECONDS - T0)) s; table: $OUT/grid_$PRESET/results.md, plots: $OUT/grid_$PRESET/plots/"
