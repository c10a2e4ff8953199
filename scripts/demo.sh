#!/usr/bin/env bash
# End-to-end demo on the bundled digits (works offline). Run through `make demo`.
#   1. pina-prepare: rotated digits, 100 clients, C = 4 (Apache Beam)
#   2. pina-pretrain + pina-embed: digits ViT pre-trained on the upright public split,
#      last-block inputs cached once per example (Beam)
#   3. pina-grid --preset=digits: 7 methods x epsilon in {2, 8, inf}, results table + plots
# Everything is resumable: run it again and finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
OUT="${DEMO_OUT:-demo_out}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
T0=$SECONDS
DATA="$OUT/data/digits"
if [[ ! -f "$DATA/manifest.json" ]]; then
  echo "== pina-prepare (digits, 100 clients, 4 rotations)"
  "$PY" -m pipelines.prepare_data --dataset=digits --num_clients=100 --num_clusters=4 \
    --output_dir="$DATA"
fi
WEIGHTS="$DATA/backbone/digits_tiny.weights.h5"
if [[ ! -f "$WEIGHTS" ]]; then
  echo "== pina-pretrain (digits ViT on the upright public split)"
  "$PY" -m pipelines.pretrain --clients_dir="$DATA" --output="$WEIGHTS"
fi
if [[ ! -f "$DATA/embeddings/manifest.json" ]]; then
  echo "== pina-embed (frozen prefix once per example)"
  "$PY" -m pipelines.embed --clients_dir="$DATA" --weights="$WEIGHTS" \
    --output_dir="$DATA/embeddings"
fi
echo "== pina-grid --preset=digits (7 methods x eps {2, 8, inf})"
"$PY" -m pipelines.grid --preset=digits --output_dir="$OUT/grid" --data_dir="$OUT/data"
echo "== demo finished in $((SECONDS - T0)) s; table: $OUT/grid/results.md, plots: $OUT/grid/plots/"
