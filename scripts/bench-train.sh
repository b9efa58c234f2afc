#!/usr/bin/env bash
# LoRA training benchmark: trained tokens/s and peak memory of owl's trainer
# (tests/tools/owl-lora-bench: forward and backward of a 512-token sample,
# rank 16, the four attention projections) beside the same step in PyTorch +
# PEFT with AdamW (tests/oracle/bench_train.py) on the same model, machine
# and threads, run alternately in the same run, and their ratio. Shapes: a
# SmolLM2-135M-shaped f32 model (and its Q8_0 GGUF: QLoRA, beside PyTorch on
# the f32 weights), and a TinyLlama-1.1B-shaped one with OWL_BENCH_LARGE=1.
# OpenMP threads wait passively (OMP_WAIT_POLICY=passive, for both): on
# cores other processes share, spinning threads take the time the working
# ones need.
# Usage: scripts/bench-train.sh [THREADS] [STEPS]   (default 2 threads, 3 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
FX="$PWD/$BUILD/owl-fixture"
BENCH="$PWD/$BUILD/owl-lora-bench"
threads=${1:-2}
steps=${2:-3}
PY=$(scripts/pyenv.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/owl-bench-train-XXXXXX")
trap 'rm -rf "$work"' EXIT
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
export OMP_WAIT_POLICY=passive

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# memory_line JSON: owl's peak beside the target, weights + activations +
# 3x the adapter (its gradient and AdamW's two moments beside it); the
# process's own libraries and runtimes come on top.
memory_line() {
  python3 - "$1" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
budget = o["weight_mib"] + o["workspace_mib"] + 3 * o["adapter_mib"]
print(f"  memory  peak {o['peak_rss_mib']:.0f} MiB; budget {budget:.0f} MiB = weights "
      f"{o['weight_mib']:.0f} + activations {o['workspace_mib']:.0f} + 3 x adapter "
      f"{o['adapter_mib']:.1f}; over the budget by {o['peak_rss_mib'] - budget:.0f} MiB "
      f"(the process before the model: {o['base_rss_mib']:.0f} MiB)")
PY
}

# shape LABEL OWL_MODEL HF_DIR: two rounds of owl then PyTorch, the best round of each.
shape() {
  local label=$1 model=$2 hf=$3 best_o=0 best_p=0 mem_o=0 mem_p=0 o p r
  echo "== $label (rank 16, seq 512, $threads threads)"
  for r in 1 2; do
    o=$("$BENCH" "$model" --r 16 --seq 512 --steps "$steps" --threads "$threads")
    p=$("$PY" tests/oracle/bench_train.py "$hf" --r 16 --seq 512 --steps "$steps" --threads "$threads" 2>/dev/null | tail -1)
    echo "  round $r: owl $(field "$o" tokens_per_s) tok/s ($(field "$o" cpu_s_per_step) CPU-s/step)," \
      "PyTorch $(field "$p" tokens_per_s) tok/s ($(field "$p" cpu_s_per_step) CPU-s/step)"
    best_o=$(python3 -c "print(max($best_o, $(field "$o" tokens_per_s)))")
    best_p=$(python3 -c "print(max($best_p, $(field "$p" tokens_per_s)))")
    mem_o=$(field "$o" peak_rss_mib) mem_p=$(field "$p" peak_rss_mib)
  done
  echo "  owl     $best_o tok/s, peak $mem_o MiB (weights $(field "$o" weight_mib) MiB)"
  memory_line "$o"
  echo "  PyTorch $best_p tok/s, peak $mem_p MiB"
  echo "  ratio   $(python3 -c "print(round($best_o / $best_p, 2))")x"
}

"$FX" --out "$work/smol" --preset smollm2-135m --dtype f32 --gguf Q8_0 --quiet
shape "SmolLM2-135M shape, f32" "$work/smol" "$work/smol"
shape "SmolLM2-135M shape, Q8_0 GGUF (PyTorch: f32)" "$work/smol/model.gguf" "$work/smol"
o=$("$BENCH" "$work/smol" --r 16 --seq 512 --steps "$steps" --threads "$threads" --ckpt)
echo "== SmolLM2-135M shape, f32, checkpointed activations (owl only)"
echo "  owl     $(field "$o" tokens_per_s) tok/s, peak $(field "$o" peak_rss_mib) MiB"
memory_line "$o"
rm -rf "$work/smol"
if [ "${OWL_BENCH_LARGE:-0}" = 1 ]; then
  "$FX" --out "$work/tiny" --preset tinyllama-1.1b --dtype f32 --gguf Q8_0 --quiet
  shape "TinyLlama-1.1B shape, f32" "$work/tiny" "$work/tiny"
  shape "TinyLlama-1.1B shape, Q8_0 GGUF (PyTorch: f32)" "$work/tiny/model.gguf" "$work/tiny"
fi
