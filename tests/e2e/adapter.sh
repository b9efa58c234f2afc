#!/usr/bin/env bash
# Adapters against PEFT: LoRA adapters built by peft itself (random non-zero
# A and B: PEFT starts B at zero, which proves nothing) on a fixture base,
# owl's logits with the adapter applied unmerged against transformers + peft
# (tests/oracle/ref_peft.py): ranks 4, 8 and 16, rsLoRA, subsets of the
# target modules (a list and a regular expression) and all seven, f16
# matrices, a safetensors base and a GGUF base of the same weights (q/k rows
# permuted), Qwen2 and Mistral bases, tp 1, 2 and 4, prompt and decode paths.
# Then what is refused (DoRA, modules_to_save, bias, other modules, shapes
# that do not fit) and the CLI's --adapter, by folder and through the registry.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
LOGITS="$OWL_BUILD/owl-logits"
REF="$OWL_ROOT/tests/oracle/ref_peft.py"
TOKENS=1,200,37,400,5,99,300,2,77,150,420,11
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>"$T/pyenv.err") || { fail peft_available "scripts/pyenv.sh failed: $(tail -3 "$T/pyenv.err")"; exit 1; }
if ! "$PY" -c 'import peft, transformers' 2>"$T/imp.err"; then
  fail peft_available "transformers/peft do not import: $(tail -3 "$T/imp.err")"
  exit 1
fi

# compare NAME A.json B.json: |a - b| <= 1e-4 * max(1, max |b|) and the same top-1 per row.
compare() {
  python3 - "$2" "$3" >"$T/.cmp" <<'EOF' && pass "$1" || fail "$1" "$(cat "$T/.cmp")"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
    print("shapes differ"); sys.exit(1)
err = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
tol = 1e-4 * max(1.0, max(abs(q) for y in b for q in y))
top = sum(x.index(max(x)) == y.index(max(y)) for x, y in zip(a, b))
print(f"max abs error {err:.3g} (tolerance {tol:.3g}), top-1 agreement {top}/{len(a)}")
sys.exit(0 if err <= tol and top == len(a) else 1)
EOF
}
# differs NAME A.json B.json: max |a - b| > 0.05 (the check above would fail).
differs() {
  python3 - "$2" "$3" >"$T/.cmp" <<'EOF' && pass "$1" || fail "$1" "$(cat "$T/.cmp")"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
err = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
print(f"max abs difference {err:.3g}, expected > 0.05")
sys.exit(0 if err > 0.05 else 1)
EOF
}

"$FX" --out "$T/base" --seed 21 --preset tiny --std-scale 2 --gguf F32 >/dev/null
"$LOGITS" "$T/base" --tokens "$TOKENS" --all >"$T/base.json"

# oracle NAME MAKE-ARGS...: builds the adapter on $BASE (default the llama
# fixture), gets PEFT's logits, and checks owl's on every base (the GGUF only
# where the fixture wrote one), tp and path against them.
oracle() {
  local name=$1 b=${BASE:-$T/base}
  shift
  "$PY" "$REF" make "$b" "$T/$name" "$@" 2>"$T/$name.err" >/dev/null || { fail "peft_$name" "ref_peft.py make: $(tail -3 "$T/$name.err")"; return; }
  "$PY" "$REF" logits "$b" "$T/$name" --tokens "$TOKENS" --all >"$T/$name.ref.json" 2>"$T/$name.err" || { fail "peft_$name" "ref_peft.py logits: $(tail -3 "$T/$name.err")"; return; }
  "$LOGITS" "$b" --tokens "$TOKENS" --all >"$T/$name.base.json"
  differs "peft_${name}_changes_the_logits" "$T/$name.base.json" "$T/$name.ref.json"
  local base tp label bases=safetensors
  [ -f "$b/model.gguf" ] && bases="safetensors gguf"
  for base in $bases; do
    for tp in 1 2 4; do
      label="peft_${name}_${base}_tp$tp"
      local path="$b"
      [ "$base" = gguf ] && path="$b/model.gguf"
      "$LOGITS" "$path" --adapter "$T/$name" --tp $tp --tokens "$TOKENS" --all >"$T/$label.json" 2>"$T/$label.err" || { fail "$label" "$(cat "$T/$label.err")"; continue; }
      compare "$label" "$T/$label.json" "$T/$name.ref.json"
    done
  done
  # Decoding (one token at a time) takes the matvec path, then the adapter.
  local last=$b
  [ -f "$b/model.gguf" ] && last="$b/model.gguf"
  "$LOGITS" "$last" --adapter "$T/$name" --tokens "$TOKENS" --all --stepwise >"$T/$name.step.json" 2>"$T/$name.err" || { fail "peft_${name}_decode" "$(cat "$T/$name.err")"; return; }
  compare "peft_${name}_decode" "$T/$name.step.json" "$T/$name.ref.json"
}

oracle r4_qv --r 4 --alpha 8 --targets q_proj,v_proj --seed 1
oracle r16_all_rslora --r 16 --alpha 32 --rslora --seed 2
oracle r8_regex_k_o_down --r 8 --alpha 4 --regex --targets '.*\.(k_proj|o_proj|down_proj)' --seed 3
oracle r4_gate_up --r 4 --alpha 16 --targets gate_proj,up_proj --seed 4

# Two adapters and none in one forward pass (tests/tools/owl-batch): each
# sequence gets what it gets alone with its own adapter, prompts and
# decoding, on the safetensors and the GGUF base, at tp 1 and 2.
for base in "$T/base" "$T/base/model.gguf"; do
  for tp in 1 2; do
    label="two_adapters_$( [ "$base" = "$T/base" ] && echo st || echo gguf )_tp$tp"
    "$OWL_BUILD/owl-batch" "$base" --tp $tp --adapter "$T/r4_qv" --adapter "$T/r16_all_rslora" >"$T/$label.out" 2>&1
    if grep -q '^PASS two_adapters_in_one_batch' "$T/$label.out"; then pass "$label"; else fail "$label" "$(tail -3 "$T/$label.out")"; fi
  done
done
# Qwen2 (q/k/v biases beside the adapter) and Mistral (sliding window):
# safetensors only, as the fixture writes no GGUF for Qwen2.
"$FX" --out "$T/qwen2" --seed 24 --preset tiny --std-scale 2 --arch qwen2 >/dev/null
BASE="$T/qwen2" oracle qwen2_r8_all --r 8 --alpha 16 --seed 6
"$FX" --out "$T/mistral" --seed 25 --preset tiny --std-scale 2 --arch mistral --sliding-window 4 >/dev/null
BASE="$T/mistral" oracle mistral_r4_qkvo --r 4 --alpha 8 --targets q_proj,k_proj,v_proj,o_proj --seed 7
grep -q '"target_modules": ".\*' "$T/r8_regex_k_o_down/adapter_config.json" && pass regex_target_modules_saved_as_string || fail regex_target_modules_saved_as_string "$(grep -A2 target_modules "$T/r8_regex_k_o_down/adapter_config.json")"

# The same adapter with f16 and bf16 matrices (what PEFT saves from a
# half-precision model): widened to f32 on load, PEFT reads the same values.
for dt in float16 bfloat16; do
  cp -r "$T/r16_all_rslora" "$T/half_$dt"
  "$PY" - "$T/half_$dt/adapter_model.safetensors" $dt <<'EOF'
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: v.to(getattr(torch, sys.argv[2])) for k, v in t.items()}, sys.argv[1])
EOF
  "$PY" "$REF" logits "$T/base" "$T/half_$dt" --tokens "$TOKENS" --all >"$T/half_$dt.ref.json" 2>/dev/null
  "$LOGITS" "$T/base/model.gguf" --adapter "$T/half_$dt" --tokens "$TOKENS" --all >"$T/half_$dt.json" 2>"$T/half.err" || fail "peft_${dt}_matrices" "$(cat "$T/half.err")"
  compare "peft_${dt}_matrices" "$T/half_$dt.json" "$T/half_$dt.ref.json"
done

# The checks above would catch a wrong scale: alpha doubled is far off.
cp -r "$T/r4_qv" "$T/wrong_alpha"
python3 - "$T/wrong_alpha/adapter_config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["lora_alpha"] *= 2
json.dump(c, open(sys.argv[1], "w"))
EOF
"$LOGITS" "$T/base" --adapter "$T/wrong_alpha" --tokens "$TOKENS" --all >"$T/wrong_alpha.json"
differs wrong_scale_detected "$T/wrong_alpha.json" "$T/r4_qv.ref.json"

# ---- refused, with the reason ---------------------------------------------------
# refused NAME GREP ADAPTER_DIR [BASE]: owl-logits exits 1 or 2 naming the reason.
refused() {
  local out
  out=$("$LOGITS" "${4:-$T/base}" --adapter "$3" --tokens 1,2 2>&1 >/dev/null)
  local rc=$?
  if { [ $rc -eq 1 ] || [ $rc -eq 2 ]; } && grep -q -- "$2" <<<"$out"; then pass "$1"; else fail "$1" "rc $rc: $out"; fi
}
mkrefused() { # name make-args...
  local name=$1
  shift
  "$PY" "$REF" make "$T/base" "$T/$name" --r 4 --seed 9 "$@" >/dev/null 2>"$T/$name.err" || fail "$name" "ref_peft.py make: $(tail -3 "$T/$name.err")"
}
mkrefused dora --targets q_proj,v_proj --dora
refused dora_refused "DoRA" "$T/dora"
mkrefused mts --targets q_proj --modules-to-save lm_head
refused modules_to_save_refused "modules_to_save" "$T/mts"
mkrefused bias_all --targets q_proj --bias all
refused bias_refused 'bias = all' "$T/bias_all"
mkrefused embed --targets q_proj,embed_tokens
refused embedding_lora_refused "embed_tokens" "$T/embed"
# An adapter for a wider model: the tensor and both shapes are named.
"$FX" --out "$T/wide" --seed 21 --preset tiny --intermediate 192 >/dev/null
"$PY" "$REF" make "$T/wide" "$T/wide_a" --r 4 --targets up_proj --seed 5 >/dev/null 2>&1
refused shape_mismatch_refused "mlp.up_proj.lora_B.weight' has shape \[192, 4\].*needs \[128, 4\]" "$T/wide_a"
refused shape_mismatch_refused_gguf "has shape \[192, 4\]" "$T/wide_a" "$T/base/model.gguf"
# Hand-edited configs: rank_pattern, a regular expression that matches nothing,
# a tensor missing, an r that disagrees with the tensors.
cp -r "$T/r4_qv" "$T/rp"
python3 - "$T/rp/adapter_config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["rank_pattern"] = {"q_proj": 8}
json.dump(c, open(sys.argv[1], "w"))
EOF
refused rank_pattern_refused "rank_pattern" "$T/rp"
cp -r "$T/r4_qv" "$T/nomatch"
python3 - "$T/nomatch/adapter_config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["target_modules"] = "q_proj"
json.dump(c, open(sys.argv[1], "w"))
EOF
refused regex_matching_nothing_refused "matches none" "$T/nomatch"
cp -r "$T/r4_qv" "$T/badr"
python3 - "$T/badr/adapter_config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["r"] = 8
json.dump(c, open(sys.argv[1], "w"))
EOF
refused rank_disagreeing_with_tensors_refused "with r = 8 needs" "$T/badr"
mkdir -p "$T/missing" && cp "$T/r4_qv/adapter_config.json" "$T/missing/"
"$PY" - "$T/r4_qv/adapter_model.safetensors" "$T/missing/adapter_model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
t.pop("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
save_file(t, sys.argv[2])
EOF
refused missing_tensor_refused "lacks base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" "$T/missing"

# ---- the CLI: --adapter DIR and NAME[@V] ---------------------------------------------
owl run "$T/base/model.gguf" "hello" --temperature 0 --max-tokens 8 --adapter "$T/r16_all_rslora"
expect_rc run_adapter_dir 0
dir_text=$OUT
owl run "$T/base/model.gguf" "hello" --temperature 0 --max-tokens 8
[ "$RC" -eq 0 ] && [ "$OUT" != "$dir_text" ] && pass run_adapter_changes_text || fail run_adapter_changes_text "the same text with and without the adapter: $OUT"
owl pull "$T/base" --name tiny
owl pull "$T/r16_all_rslora" --name tiny-lora --base tiny@1
expect_rc pull_adapter_with_base 0
owl run tiny "hello" --temperature 0 --max-tokens 8 --adapter tiny-lora
expect_rc run_registered_adapter 0
owl run "$T/base" "hello" --temperature 0 --max-tokens 8 --adapter "$T/r16_all_rslora"
expect_eq registered_adapter_equals_dir "$dir_text" "$OUT"
owl bench tiny --prompt 16 --gen 4 --reps 1 --adapter tiny-lora@1 --json
expect_contains bench_with_adapter "$OUT" '"model": "tiny@1+tiny-lora@1"'
echo "hi" | "$OWL_BIN" chat tiny --temperature 0 --max-tokens 4 --adapter tiny-lora >/dev/null 2>"$T/chat.err"
[ $? -eq 0 ] && pass chat_with_adapter || fail chat_with_adapter "$(cat "$T/chat.err")"
"$FX" --out "$T/other" --seed 5 --preset tiny >/dev/null
owl pull "$T/other" --name other
owl run other@1 "hello" --max-tokens 2 --adapter tiny-lora
expect_rc registered_base_mismatch_refused 2
expect_contains registered_base_mismatch_named "$ERR" "derives from tiny@1, not from other@1"
owl run "$T/base" "hello" --max-tokens 2 --adapter tiny-lora
expect_contains registered_adapter_needs_registered_model "$ERR" "is a path, not a registered version"
owl run tiny "hello" --max-tokens 2 --adapter other
expect_contains model_is_not_an_adapter "$ERR" "not an adapter"
owl run tiny "hello" --max-tokens 2 --adapter "$T/wide_a"
[ "$RC" -eq 1 ] && [[ "$ERR" == *"has shape [192, 4]"* ]] && pass run_adapter_shape_refused || fail run_adapter_shape_refused "rc $RC: $ERR"

# owl run --prompts: each prompt may name its own adapter; all share the
# forward passes, and each gives what it gives alone with that adapter.
cat >"$T/ad-prompts.jsonl" <<EOP
{"prompt": "hello there", "adapter": "$T/r4_qv"}
{"prompt": "the same words"}
{"prompt": "hello there", "adapter": "$T/r16_all_rslora"}
{"prompt": "hello there", "adapter": "$T/no-such-adapter"}
EOP
owl run "$T/base" --prompts "$T/ad-prompts.jsonl" --max-tokens 6 --temperature 0 --json
echo "$OUT" >"$T/adp.json"
expect_rc prompts_with_a_missing_adapter_fail 1
adp_alone() { # index prompt [adapter]
  local i=$1 p=$2
  shift 2
  owl run "$T/base" "$p" --max-tokens 6 --temperature 0 --json "$@"
  python3 - "$T/adp.json" "$i" "$OUT" <<'EOF2' && pass "prompts_adapter_${i}_equals_alone" || fail "prompts_adapter_${i}_equals_alone" "$(cat "$T/.why")"
import json, sys
b = json.load(open(sys.argv[1]))["results"][int(sys.argv[2]) - 1]
a = json.loads(sys.argv[3])
open(sys.argv[1].rsplit("/", 1)[0] + "/.why", "w").write(f"{b.get('text')!r} vs {a.get('text')!r}")
sys.exit(0 if b.get("text") == a["text"] else 1)
EOF2
}
adp_alone 1 "hello there" --adapter "$T/r4_qv"
adp_alone 2 "the same words"
adp_alone 3 "hello there" --adapter "$T/r16_all_rslora"
python3 - "$T/adp.json" <<'EOF2' && pass prompts_missing_adapter_named || fail prompts_missing_adapter_named "$(cat "$T/adp.json" | head -c 600)"
import json, sys
r = json.load(open(sys.argv[1]))["results"]
sys.exit(0 if "no-such-adapter" in r[3].get("error", "") and r[0]["text"] != r[2]["text"] else 1)
EOF2
