#!/bin/bash
# Reference runs of a refactor (issue 21: behaviour unchanged):
#   scripts/reference_runs.sh CHECKOUT OUT_DIR DATA_DIR
# runs digits PINA and IFCA and Fashion-MNIST PINA (10,000 clients, C = 4, DATA_DIR/
# fashion_mnist, prepared by pina-prepare) at eps = inf, seed 0, validation, with the
# code of CHECKOUT (a worktree of the commit to test, with its .venv), into OUT_DIR.
# Compare two OUT_DIRs with scripts/compare_runs.py.
set -euo pipefail
W=$1; OUT=$2; DATA=$3; cd "$W"
[ -d "$DATA/digits" ] || .venv/bin/python -m pipelines.prepare_data --dataset=digits --output_dir="$DATA/digits"
rm -rf "$OUT"; mkdir -p "$OUT"
for m in pina ifca; do
.venv/bin/python -m pipelines.simulate --clients_dir=$DATA/digits --root_dir=$OUT/digits_$m --method=$m --epsilon=inf --progress=none
done
.venv/bin/python -m pipelines.simulate --clients_dir=$DATA/fashion_mnist --root_dir=$OUT/fmnist_pina --method=pina --epsilon=inf --progress=none
echo "reference runs done: $OUT"
