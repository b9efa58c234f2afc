#!/usr/bin/env bash
# Engine benchmark: owl bench on the shapes the targets name (SmolLM2-135M in
# f32, TinyLlama-1.1B in f16, both also as Q8_0 and Q4_0 GGUF), written by the
# fixture generator, and on the real SmolLM2-135M-Instruct Q4_1 when it can be
# fetched; beside llama.cpp's llama-bench on the same GGUF files when
# LLAMA_BENCH points at one (it is not part of owl).
# Usage: scripts/bench-engine.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OWL="$PWD/$BUILD/owl"
FX="$PWD/$BUILD/owl-fixture"
threads=${1:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/owl-bench-engine-XXXXXX")
trap 'rm -rf "$work"' EXIT
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE

row() { # label model-path gguf-for-llama-bench-or-empty
  echo "== $1"
  "$OWL" bench "$2" --prompt 512 --gen 128 --reps 2 --threads "$threads" | sed 's/^/  /'
  if [ -n "${LLAMA_BENCH:-}" ] && [ -n "$3" ]; then
    echo "  llama.cpp llama-bench, same file and threads:"
    "$LLAMA_BENCH" -m "$3" -p 512 -n 128 -t "$threads" -r 2 2>/dev/null | grep -E '^\|' | sed 's/^/  /'
  fi
}

"$FX" --out "$work/smol" --preset smollm2-135m --dtype f32 --gguf F32 --quiet
row "SmolLM2-135M shape, f32 safetensors" "$work/smol" "$work/smol/model.gguf"
for q in Q8_0 Q4_0; do
  "$FX" --out "$work/smol-$q" --preset smollm2-135m --gguf "$q" --gguf-only --quiet
  row "SmolLM2-135M shape, $q GGUF" "$work/smol-$q/model.gguf" "$work/smol-$q/model.gguf"
done
if [ "${OWL_BENCH_LARGE:-1}" = 1 ]; then
  "$FX" --out "$work/tiny" --preset tinyllama-1.1b --dtype f16 --gguf F16 --quiet
  row "TinyLlama-1.1B shape, f16 safetensors" "$work/tiny" "$work/tiny/model.gguf"
  rm -rf "$work/tiny"
  for q in Q8_0 Q4_0; do
    "$FX" --out "$work/tiny-$q" --preset tinyllama-1.1b --gguf "$q" --gguf-only --quiet
    row "TinyLlama-1.1B shape, $q GGUF" "$work/tiny-$q/model.gguf" "$work/tiny-$q/model.gguf"
    rm -rf "$work/tiny-$q"
  done
fi
if GG=$(scripts/get-smollm2.sh 2>/dev/null); then
  row "SmolLM2-135M-Instruct Q4_1 (real weights)" "$GG" "$GG"
fi
