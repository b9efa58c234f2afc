#!/usr/bin/env bash
# Installs every Debian package that owl's build, tests, demo and benchmarks need.
# Idempotent: packages already present are skipped, and apt is not touched at all
# when nothing is missing. Run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  # build
  build-essential pkg-config
  libsqlite3-dev libcurl4-openssl-dev libssl-dev libarchive-dev
  libjansson-dev libpcre2-dev libopenblas-dev libmicrohttpd-dev libzstd-dev
  # tests, demo and benchmarks
  sqlite3 nginx-light openssl curl zstd python3 python3-venv python3-torch python3-numpy python3-sentencepiece python3-yaml
  clang libclang-rt-14-dev
  # multi-process ranks: libowl_mpi.so builds against OpenMPI; tests/e2e/mpi.sh runs mpirun
  libopenmpi-dev openmpi-bin
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "bootstrap: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# nginx-light's package starts a system nginx on port 80; owl's tests run their
# own instances on loopback ports and do not need it.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true; fi
$SUDO pkill -x nginx >/dev/null 2>&1 || true
echo "bootstrap: done"
