#!/usr/bin/env bash
# Makes sure the real Fashion-MNIST IDX files of Debian's package `dataset-fashion-mnist`
# are installed (pina-prepare --dataset=fashion_mnist finds them there automatically).
#   * the four files exist in $FMNIST_DIR: does nothing;
#   * root, or sudo without a password: apt-get install -y dataset-fashion-mnist
#     (apt-get update first when the package is not known yet);
#   * otherwise: prints what to run and exits 1.
# FMNIST_DIR (default /usr/share/datasets/fashion-mnist) is where the package puts them.
set -euo pipefail
DIR="${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
PKG=dataset-fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have_all() {
  local f
  for f in "${FILES[@]}"; do [ -f "$DIR/$f" ] || return 1; done
}

if have_all; then
  exit 0
fi
hint="run: sudo apt-get update && sudo apt-get install -y $PKG (or give pina-prepare --source_dir=DIR holding ${FILES[*]})"
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  SUDO=(sudo -n)
else
  echo "error: real Fashion-MNIST not installed (no IDX files in $DIR) and not root; $hint" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: real Fashion-MNIST not installed (no IDX files in $DIR) and apt-get not found; get the four IDX files (${FILES[*]}) and pass pina-prepare --source_dir=DIR" >&2
  exit 1
fi
echo "installing Debian package $PKG (real Fashion-MNIST, ~31 MB) ..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q "$PKG" >&2; then
  "${SUDO[@]}" apt-get update -q >&2
  "${SUDO[@]}" apt-get install -y -q "$PKG" >&2
fi
if ! have_all; then
  echo "error: apt-get installed $PKG but the IDX files are not in $DIR; $hint" >&2
  exit 1
fi
