#!/usr/bin/env bash
# Regenerates licenses/license_data.c (the compiled-in catalog and the
# fingerprints of the reference license texts) after licenses/catalog.json
# or the texts changed. Usage: scripts/gen-license-data.sh [TEXTS_DIR] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
texts=${1:-${OWL_SHARED:-../shared}/licenses}
out=${2:-licenses/license_data.c}
BUILD=${BUILD:-build}
make -s "$BUILD/owl-license-data"
"$BUILD/owl-license-data" licenses/catalog.json "$texts" >"$out.tmp"
mv "$out.tmp" "$out"
