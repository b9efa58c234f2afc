#!/usr/bin/env bash
# Benchmarks. The test environment sets OPENBLAS_CORETYPE=Haswell (and
# OPENBLAS_L2_SIZE) because old OpenBLAS builds misdetect this CPU; that is
# correct but halves GEMM speed, so the benchmarks unset both for their own
# processes and say so.
# Usage: scripts/bench.sh [registry|policy|engine|train|serve|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build}
which=${1:-all}
echo "bench: unsetting OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the benchmark processes"
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
case "$which" in
  registry) scripts/bench-registry.sh ;;
  policy) "$BUILD/owl-bench-policy" "${OWL_SHARED:-../shared}/licenses/llama3.1.txt" ;;
  engine) scripts/bench-engine.sh ;;
  serve) scripts/bench-serve.sh ;;
  train) scripts/bench-train.sh ;;
  all)
    "$BUILD/owl-bench-policy" "${OWL_SHARED:-../shared}/licenses/llama3.1.txt"
    scripts/bench-registry.sh
    scripts/bench-engine.sh
    scripts/bench-train.sh
    ;;
  *) echo "usage: scripts/bench.sh [registry|policy|engine|train|serve|all]" >&2; exit 2 ;;
esac
