#!/usr/bin/env bash
# A checkpoint whose config.json, GGUF metadata or tokenizer.json is absurd,
# truncated or malformed is refused at pull (exit 4, naming the file, the
# field and the value) and nothing is registered; `owl run` refuses the same
# config with the same words, because both use common/modelcfg.c.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
"$FX" --out "$T/m" --seed 5 --preset tiny --license mit >/dev/null
"$FX" --out "$T/g" --seed 5 --preset tiny --license mit --gguf Q8_0 >/dev/null
nversions() { "$OWL_BIN" list --json 2>/dev/null | python3 -c "import json,sys; print(len(json.load(sys.stdin)))"; }

# set_cfg NAME KEY JSON-VALUE: a copy of the fixture with one config field changed.
set_cfg() {
  rm -rf "$T/$1"; cp -r "$T/m" "$T/$1"
  python3 - "$T/$1/config.json" "$2" "$3" <<'EOF'
import json, sys
p, key, val = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = json.load(open(p))
if val is None: c.pop(key, None)
else: c[key] = val
json.dump(c, open(p, "w"))
EOF
}

owl pull "$T/m" --name good
expect_rc good_checkpoint_pulls 0

# name key value expected-text
while read -r name key value want; do
  set_cfg "$name" "$key" "$value"
  owl pull "$T/$name" --name "$name"
  expect_rc "config_${name}_refused_exit_4" 4
  expect_contains "config_${name}_names_file_and_field" "$ERR" "cannot accept 'config.json': $want"
done <<'EOF'
hidden0 hidden_size 0 hidden_size = 0 is out of range
negheads num_attention_heads -4 num_attention_heads = -4 is out of range
vocab2e31 vocab_size 2147483648 vocab_size = 2147483648 is out of range
layers1e6 num_hidden_layers 1000000 num_hidden_layers = 1000000 is out of range
stringlayers num_hidden_layers "2" num_hidden_layers = "2" is not a whole number
kvnotdiv num_key_value_heads 3 num_attention_heads = 4 is not a multiple of num_key_value_heads = 3
kvzero num_key_value_heads 0 num_key_value_heads = 0 is out of range
headdimodd head_dim 15 head_dim = 15 is odd
ffnhuge intermediate_size 1048577 intermediate_size = 1048577 is out of range
ctxhuge max_position_embeddings 100000000 max_position_embeddings = 100000000 is out of range
negtheta rope_theta -10000.0 rope_theta = -10000 is out of range
zerotheta rope_theta 0 rope_theta = 0 is out of range
negeps rms_norm_eps -1e-05 rms_norm_eps = -1e-05 is out of range
stringeps rms_norm_eps "1e-5" rms_norm_eps = "1e-5" is not a number
nohidden hidden_size null 'hidden_size' is missing
EOF
# Every field within its bound, but together too many weights.
rm -rf "$T/toobig"; cp -r "$T/m" "$T/toobig"
python3 - "$T/toobig/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=65536, intermediate_size=1048576, num_hidden_layers=1024, num_attention_heads=64,
         num_key_value_heads=64, head_dim=1024)
json.dump(c, open(sys.argv[1], "w"))
EOF
owl pull "$T/toobig" --name toobig
expect_rc config_product_bound_exit_4 4
expect_contains config_product_bound_named "$ERR" "weights"
# llama3 rope scaling whose blend would divide by zero.
set_cfg ropescale rope_scaling '{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}'
owl pull "$T/ropescale" --name ropescale
expect_rc config_rope_scaling_exit_4 4
expect_contains config_rope_scaling_named "$ERR" "rope_scaling.high_freq_factor = 4 is not above"
expect_eq bad_configs_register_nothing "$(nversions)" "1"

# owl run refuses the same config with the same words (the shared check).
set_cfg negtheta rope_theta -10000.0
owl run "$T/negtheta" "Hi" --max-tokens 1
expect_rc run_negative_rope_theta_exit_4 4
expect_contains run_negative_rope_theta_named "$ERR" "config.json: rope_theta = -10000 is out of range"
set_cfg negeps rms_norm_eps -1e-05
owl run "$T/negeps" "Hi" --max-tokens 1
expect_rc run_negative_eps_exit_4 4

# A config of an architecture the engine does not run is stored, but what it
# states must still be sane.
set_cfg other architectures '["GPTNeoXForCausalLM"]'
owl pull "$T/other" --name other
expect_rc other_architecture_stored 0
set_cfg otherbad architectures '["GPTNeoXForCausalLM"]'
python3 - "$T/otherbad/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["hidden_size"] = -1
json.dump(c, open(sys.argv[1], "w"))
EOF
owl pull "$T/otherbad" --name otherbad
expect_rc other_architecture_absurd_refused 4

# --- GGUF: the llama.* keys the engine reads ------------------------------------
# gguf_set FILE KEY VALUE: rewrites one integer or float key in place (same type).
gguf_set() {
  python3 - "$@" <<'EOF'
import struct, sys
path, key, val = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
b = bytearray(open(path, "rb").read())
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 10: "<Q", 11: "<q", 12: "<d"}
def skip(o, t):
    if t == 8:
        (n,) = struct.unpack_from("<Q", b, o); return o + 8 + n
    if t == 9:
        (at, n) = struct.unpack_from("<IQ", b, o); o += 12
        for _ in range(n): o = skip(o, at)
        return o
    return o + SIZES[t]
o = 8
(nt, nkv) = struct.unpack_from("<QQ", b, o); o += 16
for _ in range(nkv):
    (kl,) = struct.unpack_from("<Q", b, o); k = bytes(b[o + 8:o + 8 + kl]); o += 8 + kl
    (t,) = struct.unpack_from("<I", b, o); o += 4
    if k == key:
        v = float(val) if FMT[t][-1] in "fd" else int(val)
        if FMT[t][-1] in "BHIQ" and v < 0:   # store a negative as its signed twin
            t2 = {0: 1, 2: 3, 4: 5, 10: 11}[t]; struct.pack_into("<I", b, o - 4, t2); t = t2
        struct.pack_into(FMT[t], b, o, v); open(path, "wb").write(b); sys.exit(0)
    o = skip(o, t)
sys.exit("key not found: " + key.decode())
EOF
}
owl pull "$T/g/model.gguf" --name goodgguf
expect_rc good_gguf_pulls 0
while read -r name key value want; do
  cp "$T/g/model.gguf" "$T/$name.gguf"
  gguf_set "$T/$name.gguf" "$key" "$value" || { fail "gguf_$name" "cannot patch $key"; continue; }
  owl pull "$T/$name.gguf" --name "$name"
  expect_rc "gguf_${name}_refused_exit_4" 4
  expect_contains "gguf_${name}_names_key" "$ERR" "cannot accept '$name.gguf': $want"
done <<'EOF'
glayers llama.block_count 1000000 llama.block_count = 1000000 is out of range
gheads0 llama.attention.head_count 0 llama.attention.head_count = 0 is out of range
gkvneg llama.attention.head_count_kv -2 llama.attention.head_count_kv = -2 is out of range
gtheta llama.rope.freq_base -5 llama.rope.freq_base = -5 is out of range
geps llama.attention.layer_norm_rms_epsilon 0 llama.attention.layer_norm_rms_epsilon = 0 is out of range
EOF
cp "$T/g/model.gguf" "$T/gtheta-run.gguf"
gguf_set "$T/gtheta-run.gguf" llama.rope.freq_base -5
owl run "$T/gtheta-run.gguf" "Hi" --max-tokens 1
expect_rc run_gguf_negative_freq_base_exit_4 4
expect_contains run_gguf_negative_freq_base_named "$ERR" "GGUF: llama.rope.freq_base = -5"

# --- tokenizer.json -----------------------------------------------------------------
rm -rf "$T/trunc"; cp -r "$T/m" "$T/trunc"
f="$T/trunc/tokenizer.json"
head -c $(( $(stat -c %s "$f") / 2 )) "$f" >"$f.x" && mv "$f.x" "$f"
owl pull "$T/trunc" --name trunc
expect_rc tokenizer_truncated_exit_4 4
expect_contains tokenizer_truncated_named "$ERR" "cannot accept 'tokenizer.json': not valid JSON at line"
expect_contains tokenizer_truncated_says_truncated "$ERR" "truncated"
# tok_edit NAME PYTHON: a copy whose tokenizer.json `t` the snippet changes.
tok_edit() {
  rm -rf "$T/$1"; cp -r "$T/m" "$T/$1"
  python3 - "$T/$1/tokenizer.json" "$2" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
exec(sys.argv[2])
json.dump(t, open(sys.argv[1], "w"))
EOF
}
while IFS='|' read -r name code want; do
  tok_edit "$name" "$code"
  owl pull "$T/$name" --name "$name"
  expect_rc "tokenizer_${name}_exit_4" 4
  expect_contains "tokenizer_${name}_named" "$ERR" "cannot accept 'tokenizer.json': $want"
done <<'EOF'
tnomodel|del t["model"]|'model' is missing
tnovocab|del t["model"]["vocab"]|model.vocab is missing
tnegid|t["model"]["vocab"]["zz-neg"] = -3|model.vocab: token 'zz-neg' has id -3
tstrid|t["model"]["vocab"]["zz-str"] = "7"|model.vocab: token 'zz-str' has id "7"
tmerge|t["model"]["merges"] = ["ab"]|model.merges entry 0 is neither
tadded|t["added_tokens"] = [{"id": 5}]|added_tokens entry 0 has no content string
tlist|t = [1, 2]|not a JSON object
EOF
expect_eq bad_tokenizers_register_nothing "$(nversions)" "3"
