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

# owl run --prompts: every prompt of a file in one batch gives the text that
# prompt gives alone (greedy and seeded sampling, per-prompt options).
PROMPTS="$T/prompts.jsonl"
cat >"$PROMPTS" <<'EOP'
Hello world
{"prompt": "The sky is", "max_tokens": 5, "temperature": 0}
{"prompt": "Once upon a time there was a very long prompt that spans more than one block of the cache, so that its blocks and positions differ from the others", "seed": 3, "temperature": 0.9, "top_k": 20}

{"prompt": "x", "max_tokens": 12, "seed": 11, "top_p": 0.5}
EOP
owl run "$T/f32" --prompts "$PROMPTS" --max-tokens 9 --seed 5 --json
expect_rc run_prompts_ok 0
echo "$OUT" >"$T/batch.json"
python3 - "$T/batch.json" >"$T/args.txt" <<'EOF2'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(len(r))
EOF2
expect_eq run_prompts_counts_four "$(cat "$T/args.txt")" 4
single() { # index prompt args...
  local i=$1 p=$2
  shift 2
  owl run "$T/f32" "$p" --json "$@"
  python3 - "$T/batch.json" "$i" "$OUT" <<'EOF2' && pass "run_prompts_${i}_equals_alone" || fail "run_prompts_${i}_equals_alone" "batch and alone differ: $(cat "$T/.why")"
import json, sys
batch = json.load(open(sys.argv[1]))["results"][int(sys.argv[2]) - 1]
alone = json.loads(sys.argv[3])
open(sys.argv[1].rsplit("/", 1)[0] + "/.why", "w").write(f"{batch.get('text')!r} vs {alone.get('text')!r}")
sys.exit(0 if batch["text"] == alone["text"] and batch["generated_tokens"] == alone["generated_tokens"] else 1)
EOF2
}
single 1 "Hello world" --max-tokens 9 --seed 5
single 2 "The sky is" --max-tokens 5 --temperature 0 --seed 5
single 3 "Once upon a time there was a very long prompt that spans more than one block of the cache, so that its blocks and positions differ from the others" --max-tokens 9 --seed 3 --temperature 0.9 --top-k 20
single 4 "x" --max-tokens 12 --seed 11 --top-p 0.5
owl run "$T/f32" --prompts "$PROMPTS" --max-tokens 9 --seed 5 --kv-type f16
expect_rc run_prompts_kv_f16 0
printf '{"prompt": "a", "max_tokens": "ten"}\n' >"$T/bad.jsonl"
owl run "$T/f32" --prompts "$T/bad.jsonl"
expect_rc run_prompts_bad_field_refused 2
expect_contains run_prompts_bad_field_named "$ERR" 'bad.jsonl:1: field "max_tokens"'
printf 'fine\n{"prompt": "too long", "max_tokens": 3}\n' >"$T/mixed.txt"
owl run "$T/f32" --prompts "$T/mixed.txt" --ctx 3 --max-tokens 2
expect_rc run_prompts_one_failing_prompt_fails_the_run 1
expect_contains run_prompts_others_still_run "$OUT" "=== 1"
expect_contains run_prompts_failed_prompt_reported "$OUT" "=== 2: error: the prompt has"

# owl bench --batch: aggregate decoding of N sequences together.
owl bench "$T/f32" --prompt 16 --gen 8 --reps 1 --batch 4 --json
expect_rc bench_batch_runs 0
expect_contains bench_batch_reported "$OUT" '"batch": 4'
