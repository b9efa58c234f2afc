#!/usr/bin/env bash
# owl-fixture: determinism, flags, and the files checked by the reference
# Python readers (tokenizers, safetensors, gguf) through tests/oracle/check_fixture.py.
. "$(dirname "$0")/lib.sh"
FX="$OWL_BUILD/owl-fixture"

if [ ! -x "$FX" ]; then
  fail fixture_built "no $FX (run make)"
  exit 1
fi

out=$("$FX" --help); rc=$?
if [ $rc -eq 0 ] && [[ "$out" == *USAGE* && "$out" == *EXAMPLES* && "$out" == *--gguf* ]]; then
  pass fixture_help
else
  fail fixture_help "exit $rc, help without USAGE/EXAMPLES/--gguf"
fi

"$FX" --out "$T/x" --dtype f64 2>"$T/err"; rc=$?
if [ $rc -eq 2 ] && grep -q "unknown dtype 'f64'" "$T/err"; then pass fixture_bad_flag_exit2; else
  fail fixture_bad_flag_exit2 "expected exit 2 naming the dtype, got $rc: $(cat "$T/err")"; fi

# Determinism: same flags + seed -> identical bytes; another seed -> other weights.
args=(--seed 7 --dtype f16 --shards 2 --gguf Q4_0 --quiet)
start=$(date +%s.%N)
"$FX" --out "$T/a" "${args[@]}"
end=$(date +%s.%N)
"$FX" --out "$T/b" "${args[@]}"
"$FX" --out "$T/c" --seed 8 --dtype f16 --shards 2 --gguf Q4_0 --quiet
same=1
for f in "$T"/a/*; do cmp -s "$f" "$T/b/$(basename "$f")" || { same=0; echo "differs: $(basename "$f")"; }; done
[ "$(ls "$T/a" | wc -l)" -ge 9 ] || same=0
if [ $same = 1 ]; then pass fixture_same_seed_same_bytes; else fail fixture_same_seed_same_bytes "files differ"; fi
if ! cmp -s "$T/a/model-00001-of-00002.safetensors" "$T/c/model-00001-of-00002.safetensors" &&
   ! cmp -s "$T/a/model.gguf" "$T/c/model.gguf" && cmp -s "$T/a/tokenizer.json" "$T/c/tokenizer.json"; then
  pass fixture_other_seed_other_weights
else
  fail fixture_other_seed_other_weights "weights equal across seeds, or tokenizer changed"
fi
secs=$(echo "$end - $start" | bc)
if (( $(echo "$secs < 1.0" | bc) )); then pass fixture_tiny_under_1s; else fail fixture_tiny_under_1s "took ${secs}s"; fi

# Safetensors layout: 8-byte length, header padded with spaces to 8 bytes, metadata.
"$FX" --out "$T/m" --quiet --st-metadata license=llama3.1 --st-metadata owner=owl
python3 - "$T/m/model.safetensors" <<'EOF' >"$T/st.txt" 2>&1
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
assert (8 + n) % 8 == 0, "data not 8-byte aligned"
h = json.loads(b[8:8 + n])
assert h["__metadata__"] == {"format": "pt", "license": "llama3.1", "owner": "owl"}, h["__metadata__"]
end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
assert 8 + n + end == len(b), "buffer size"
print("ok")
EOF
if [ "$(cat "$T/st.txt")" = ok ]; then pass fixture_safetensors_layout; else fail fixture_safetensors_layout "$(cat "$T/st.txt")"; fi

# Card and license files.
lic="$OWL_SHARED/licenses/mrl.txt"
"$FX" --out "$T/l" --quiet --license other --license-name mrl --license-link LICENSE \
  --base-model mistralai/Mistral-7B-v0.1 --license-file "$lic" --copy "$lic=USE_POLICY.md"
card=$(cat "$T/l/README.md")
if [[ "$card" == ---$'\n'license:\ other$'\n'license_name:\ mrl$'\n'license_link:\ LICENSE$'\n'base_model:\ mistralai/Mistral-7B-v0.1* ]]; then
  pass fixture_card_front_matter
else
  fail fixture_card_front_matter "card: ${card:0:300}"
fi
if [ -f "$lic" ] && cmp -s "$lic" "$T/l/LICENSE" && cmp -s "$lic" "$T/l/USE_POLICY.md"; then pass fixture_license_file; else
  fail fixture_license_file "LICENSE not a copy of $lic"; fi
"$FX" --out "$T/n" --quiet --license none
if ! grep -q '^license' "$T/n/README.md"; then pass fixture_card_no_license; else fail fixture_card_no_license "license line present"; fi

# The reference readers: tokenizers, safetensors, gguf.
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>/dev/null) || PY=
if [ -z "$PY" ]; then
  fail fixture_pyenv "scripts/pyenv.sh failed: no reference readers"
  exit 1
fi
oracle() { # tag, gguf type or -, fixture flags...
  local tag=$1 g=$2; shift 2
  rm -rf "$T/o"
  if ! "$FX" --out "$T/o" --quiet "$@" 2>"$T/err"; then fail "${tag}_written" "$(cat "$T/err")"; return; fi
  if [ "$g" = - ]; then FX_TAG=$tag "$PY" "$OWL_ROOT/tests/oracle/check_fixture.py" "$T/o"
  else FX_TAG=$tag "$PY" "$OWL_ROOT/tests/oracle/check_fixture.py" "$T/o" --gguf "$g"; fi
}
oracle fx_default Q8_0 --gguf Q8_0
oracle fx_q4_0 Q4_0 --gguf Q4_0 --seed 3
oracle fx_q4_1 Q4_1 --gguf Q4_1 --chat-template llama3
oracle fx_f16 F16 --dtype f16 --gguf F16 --tied
oracle fx_spm_bf16_shards Q8_0 --tokenizer spm --dtype bf16 --shards 3 --gguf Q8_0
oracle fx_llama3_rope F32 --chat-template llama3 --rope-scaling llama3 --gguf F32
oracle fx_qwen2 - --arch qwen2 --dtype bf16 --vocab 600
oracle fx_mistral_gemma BF16 --arch mistral --sliding-window 32 --tokenizer spm --chat-template gemma --gguf BF16
oracle fx_bias_mqa Q8_0 --qkv-bias --kv-heads 1 --gguf Q8_0 --chat-template zephyr

# qwen2 config carries its specifics
"$FX" --out "$T/q" --quiet --arch qwen2 --sliding-window 64
python3 -c '
import json,sys
c=json.load(open(sys.argv[1]))
assert c["architectures"]==["Qwen2ForCausalLM"] and c["use_sliding_window"] and c["sliding_window"]==64, c
' "$T/q/config.json" 2>"$T/err" && pass fixture_qwen2_config || fail fixture_qwen2_config "$(tail -1 "$T/err")"
"$FX" --out "$T/q2" --quiet --arch qwen2 --gguf Q8_0 2>"$T/err"; rc=$?
if [ $rc -eq 2 ] && grep -q "llama only" "$T/err"; then pass fixture_qwen2_gguf_refused; else
  fail fixture_qwen2_gguf_refused "exit $rc: $(cat "$T/err")"; fi
