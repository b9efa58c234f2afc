#!/usr/bin/env bash
# Where a model runs (--device): without a GPU, `cuda` is refused with the
# reason and `auto` runs on the CPU; and the whole engine on the CUDA
# backend's kernels, built against the host emulator of CUDA
# (tests/cuda-emu/, $OWL_BUILD/libowl_cuda_emu.so, named by OWL_CUDA_LIB),
# gives the CPU's logits for every stored type, prompt and decoding steps,
# with an adapter, tensor-parallel ranks sharing the device, and the CPU's
# greedy text. This checks the engine's side
# of a device backend (the batch's layout and block tables uploaded, logits
# and gathered rows copied through the backend, adapters placed in its
# memory) on every machine; the kernels' arithmetic on a real GPU is
# scripts/gpu-check.sh's.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
LOGITS="$OWL_BUILD/owl-logits"
EMU="$OWL_BUILD/libowl_cuda_emu.so"

"$FX" --out "$T/f32" --seed 3 --gguf Q8_0 --quiet
"$FX" --out "$T/f16" --seed 5 --dtype f16 --gguf Q4_0 --quiet
"$FX" --out "$T/bf16" --seed 6 --dtype bf16 --arch qwen2 --quiet

# ---- no GPU here: refused with the reason, auto runs on the CPU ----------------
if [ ! -e /dev/nvidiactl ]; then
  owl run "$T/f32" "hello" --device cuda --max-tokens 4
  expect_rc cuda_without_gpu_fails 1
  expect_contains cuda_without_gpu_says_why "$ERR" "no GPU to run on: no NVIDIA driver on this machine"
  owl run "$T/f32" "hello world" --temperature 0 --max-tokens 8
  AUTO=$OUT
  owl run "$T/f32" "hello world" --temperature 0 --max-tokens 8 --device cpu
  expect_eq auto_runs_on_the_cpu "$AUTO" "$OUT"
  owl bench "$T/f32" --prompt 8 --gen 4 --reps 1 --json
  expect_contains bench_names_the_cpu "$OUT" '"backend": "cpu"'
else
  echo "SKIP no_gpu_checks: this machine has an NVIDIA driver"
fi
owl run "$T/f32" "hello" --device gpu
expect_rc unknown_device_is_a_usage_error 2
expect_contains unknown_device_names_the_choices "$ERR" "use auto, cpu, cuda or cuda:N"
owl perplexity "$T/f32" --file /dev/null --device cuda:x
expect_contains bad_device_index_refused "$ERR" "names no CUDA device"

# ---- the engine on the CUDA backend's kernels (host emulator) ------------------
if [ ! -f "$EMU" ]; then
  fail emulator_built "$EMU is missing (make builds it)"
  exit 0
fi
# compare NAME TOLERANCE MODEL ARGS...: max |cpu - cuda| over every logit,
# relative to the largest |logit|, at most TOLERANCE. The tolerances are the
# precision the two backends round to: f32 none; f16/bf16 the CUDA GEMM's
# half-precision activations; Q8_0/Q4_0 the CPU's 8-bit activations of its
# integer kernels (CUDA multiplies the dequantised blocks by f32).
compare() {
  local name=$1 tol=$2
  shift 2
  "$LOGITS" "$@" --device cpu >"$T/cpu.json" 2>"$T/cpu.err" &&
    OWL_CUDA_LIB="$EMU" "$LOGITS" "$@" --device cuda >"$T/cuda.json" 2>"$T/cuda.err"
  if [ $? != 0 ]; then
    fail "$name" "owl-logits failed: $(tail -n 2 "$T/cpu.err" "$T/cuda.err")"
    return
  fi
  python3 - "$T/cpu.json" "$T/cuda.json" "$tol" >"$T/.cmp" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
tol = float(sys.argv[3])
if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
    print("shapes differ"); sys.exit(1)
fa = [v for r in a for v in r]; fb = [v for r in b for v in r]
d = max(abs(x - y) for x, y in zip(fa, fb)); m = max(abs(x) for x in fa)
print(f"{len(a)} rows: max |diff| {d:.3g} of max |logit| {m:.3g} (tolerance {tol})")
sys.exit(0 if d <= tol * m and m > 0 else 1)
EOF
  [ $? = 0 ] && pass "$name" || fail "$name" "$(cat "$T/.cmp")"
}
TOK=1,2,3,4,5,6
compare cuda_f32_prompt_logits 1e-4 "$T/f32" --tokens $TOK --all
compare cuda_f32_decoding_logits 1e-4 "$T/f32" --tokens $TOK --all --stepwise
compare cuda_q8_0_logits 0.05 "$T/f32/model.gguf" --tokens $TOK --all
compare cuda_f16_logits 0.01 "$T/f16" --tokens $TOK --all
compare cuda_q4_0_logits 0.1 "$T/f16/model.gguf" --tokens $TOK --all --stepwise
compare cuda_bf16_qwen2_biases_logits 0.02 "$T/bf16" --tokens $TOK --all --stepwise
# Decoding steps replayed from CUDA graphs (recorded at a shape's second step)
# give the very logits and text the ops give one by one (OWL_CUDA_GRAPHS=0);
# bench counts the replays: of 2 x 5 steps all but the first, which runs op
# by op (the second is recorded, then launched).
OWL_CUDA_LIB="$EMU" "$LOGITS" "$T/f32/model.gguf" --tokens $TOK,7,8,9,10 --all --stepwise --device cuda >"$T/graphs.json"
OWL_CUDA_GRAPHS=0 OWL_CUDA_LIB="$EMU" "$LOGITS" "$T/f32/model.gguf" --tokens $TOK,7,8,9,10 --all --stepwise --device cuda >"$T/nographs.json"
[ -s "$T/graphs.json" ] && cmp -s "$T/graphs.json" "$T/nographs.json" && pass cuda_graphs_same_logits \
  || fail cuda_graphs_same_logits "the logits of replayed steps differ from the ops'"
OWL_CUDA_LIB="$EMU" owl bench "$T/f32" --prompt 40 --gen 5 --reps 2 --device cuda --json
expect_eq cuda_graphs_replay_decoding "$(printf '%s' "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_graph_launches"])')" "9"
OWL_CUDA_GRAPHS=0 OWL_CUDA_LIB="$EMU" owl bench "$T/f32" --prompt 40 --gen 5 --reps 1 --device cuda --json
expect_eq cuda_graphs_off "$(printf '%s' "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_graph_launches"])')" "0"
OWL_CUDA_LIB="$EMU" owl run "$T/f32" "hello world" --temperature 0 --max-tokens 6 --device cuda
GRAPH_TEXT=$OUT
OWL_CUDA_GRAPHS=0 OWL_CUDA_LIB="$EMU" owl run "$T/f32" "hello world" --temperature 0 --max-tokens 6 --device cuda
expect_eq cuda_graphs_same_text "$GRAPH_TEXT" "$OUT"

# Tensor parallelism on one device: the ranks share the emulator's one GPU and
# sum through the backend's own ops (the sharding math on a device).
compare cuda_tp2_one_device_logits 1e-4 "$T/f32" --tokens $TOK --all --stepwise --tp 2
compare cuda_tp2_one_device_q8_0_logits 0.05 "$T/f32/model.gguf" --tokens $TOK --all --tp 2
compare cuda_tp4_one_device_logits 1e-4 "$T/f32" --tokens $TOK --all --tp 4

# An adapter placed in the device's memory: the CPU's logits, not the base's.
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>/dev/null) || PY=
if [ -n "$PY" ]; then
  "$PY" "$OWL_ROOT/tests/oracle/ref_peft.py" make "$T/f32" "$T/ad" --r 4 --alpha 8 --seed 2 \
    --targets q_proj,v_proj,down_proj >/dev/null 2>"$T/ad.err"
  if [ -f "$T/ad/adapter_config.json" ]; then
    compare cuda_adapter_logits 1e-4 "$T/f32" --tokens $TOK --all --adapter "$T/ad"
    "$LOGITS" "$T/f32" --tokens $TOK --all --device cpu >"$T/base.json"
    cmp -s "$T/base.json" "$T/cpu.json" && fail cuda_adapter_changes_logits "the adapter changed nothing" \
      || pass cuda_adapter_changes_logits
  else
    fail cuda_adapter_made "ref_peft.py make failed: $(tail -3 "$T/ad.err")"
  fi
else
  echo "SKIP cuda_adapter_logits: no test venv"
fi

# The CLI on the device: the CPU's greedy text, and bench names the backend.
OWL_CUDA_LIB="$EMU" owl run "$T/f32" "hello world" --temperature 0 --max-tokens 6 --device cuda
expect_rc cuda_run_succeeds 0
ON_CUDA=$OUT
owl run "$T/f32" "hello world" --temperature 0 --max-tokens 6 --device cpu
expect_eq cuda_greedy_text_equals_cpu "$ON_CUDA" "$OUT"
OWL_CUDA_LIB="$EMU" owl bench "$T/f32" --prompt 8 --gen 2 --reps 1 --device cuda --json
expect_contains cuda_bench_names_the_backend "$OUT" '"backend": "cuda"'
# bench's device memory: what the backend holds (the weights, the KV cache)
# and the emulated device's total and free, which count those allocations.
printf '%s' "$OUT" | python3 -c '
import json, sys
m = json.load(sys.stdin)["device_memory"]
assert m["devices"] == 1, m
assert m["weight_bytes"] > 0 and m["kv_bytes"] > 0, m
assert m["backend_bytes"] >= m["weight_bytes"] + m["kv_bytes"] + m["workspace_bytes"], m
assert m["device_total_bytes"] == 8 << 30, m
assert m["device_total_bytes"] - m["device_free_bytes"] >= m["backend_bytes"], m
' 2>"$T/dm.err" && pass cuda_bench_reports_device_memory ||
  fail cuda_bench_reports_device_memory "$(tail -3 "$T/dm.err")"
OWL_CUDA_LIB="$EMU" owl bench "$T/f32" --prompt 8 --gen 2 --reps 1 --device cuda
expect_contains cuda_bench_prints_device_memory "$OUT" "device memory (cuda, 1 device): the backend holds"
owl bench "$T/f32" --prompt 8 --gen 2 --reps 1 --device cpu
expect_not_contains cpu_bench_has_no_device_memory "$OUT" "device memory"
OWL_CUDA_LIB="$EMU" owl bench "$T/f32" --prompt 8 --gen 2 --reps 1 --device cuda --gemm --bandwidth 4800
expect_contains cuda_bench_gemm_reference "$OUT" "gemm pp8: its matrix products alone take"
expect_contains cuda_bench_roofline "$OUT" "% of 4800 GB/s"
# Training stays on the CPU: a model on the device is refused by the trainer,
# and owl train opens its base on the CPU whatever the machine has.
printf '{"text": "hello world, hello owl"}\n' >"$T/d.jsonl"
owl pull "$T/f32" --name tiny
OWL_CUDA_LIB="$EMU" owl train tiny@1 --data "$T/d.jsonl" --out tiny-t --max-steps 1 --seq-len 16
expect_rc train_runs_on_the_cpu 0
