#!/usr/bin/env bash
# The batch API and the paged KV pool on real fixture models
# (tests/tools/owl-batch): many sequences in one forward pass equal each
# alone, shared prefixes (fork, prefix cache), blocks freed and reused, a
# full pool refusing one request, f16 keys and values, bad batches refused.
# Run on f32 safetensors (1e-4), with tensor parallelism, with Qwen2 biases
# and a sliding window, and on a Q8_0 GGUF (its integer paths round
# activations per token, so batches agree to 2e-3 as prefill and decode do).
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
BATCH="$OWL_BUILD/owl-batch"

run_batch() { # label model args...
  local label=$1 model=$2
  shift 2
  "$BATCH" "$model" "$@" >"$T/$label.out" 2>&1
  local rc=$?
  sed "s/^PASS /PASS ${label}_/; s/^FAIL /FAIL ${label}_/" "$T/$label.out" | grep -E '^(PASS|FAIL) '
  if [ $rc -ne 0 ] && ! grep -q '^FAIL ' "$T/$label.out"; then
    fail "$label" "owl-batch exited $rc: $(tail -3 "$T/$label.out")"
  fi
}

"$FX" --out "$T/f32" --seed 31 --preset tiny --std-scale 2 >/dev/null
run_batch f32 "$T/f32"
run_batch f32_tp2 "$T/f32" --tp 2
"$FX" --out "$T/qwen" --seed 32 --preset tiny --std-scale 2 --arch qwen2 >/dev/null
run_batch qwen2_bias "$T/qwen"
"$FX" --out "$T/mistral" --seed 33 --preset tiny --std-scale 2 --arch mistral --sliding-window 40 >/dev/null
run_batch mistral_window "$T/mistral"
"$FX" --out "$T/q8" --seed 34 --preset tiny --std-scale 2 --gguf Q8_0 --gguf-only >/dev/null
# f16 keys shift attention outputs by ~1e-3, which moves some activations
# across a Q8 rounding step: the integer path amplifies that to a few %.
run_batch gguf_q8 "$T/q8/model.gguf" --tol 2e-3 --f16-tol 5e-2
