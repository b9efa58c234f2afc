#!/usr/bin/env bash
# The appliance end to end, as far as it is built today, in a throw-away home:
# the status of this machine, then a fixture checkpoint written by owl's own
# generator. Later stages (pull, license gate, run) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
work=$(mktemp -d "${TMPDIR:-/tmp}/owl-demo-XXXXXX")
trap 'rm -rf "$work"' EXIT
export OWL_HOME="$work/home"
echo "== owl status"
"$BUILD/owl" status
echo
echo "== a fixture checkpoint (Hugging Face layout, license apache-2.0)"
"$BUILD/owl-fixture" --out "$work/model" --seed 1 --license apache-2.0
ls -l "$work/model"
echo
echo "demo: pull, license gate and generation are not built yet (issues 2, 3, 4)"
