#!/usr/bin/env bash
# owl's tokenizers against the reference (PyPI tokenizers) on fixture
# vocabularies, byte-level BPE and SentencePiece-style, and the same
# vocabularies read from GGUF: multi-byte UTF-8, emoji, whitespace runs,
# digits, special tokens; decoding round trips.
. "$(dirname "$0")/lib.sh"

PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>/dev/null) || { fail tokenizer_pyenv "scripts/pyenv.sh failed"; exit 1; }
FX="$OWL_BUILD/owl-fixture"
TOK="$OWL_BUILD/owl-tokenize"
"$FX" --out "$T/bpe" --seed 5 --preset tiny --gguf F32 >/dev/null
"$FX" --out "$T/spm" --seed 5 --preset tiny --tokenizer spm --gguf F32 >/dev/null

texts=(
  "Hello world! The quick brown fox jumps over the lazy dog."
  "naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어"
  "emoji 🦉🚀👩‍👩‍👧 and flags 🇫🇷 between words"
  "    leading spaces, trailing spaces    "
  $'tabs\t\tand\nnewlines\n\n\nand\r\nCRLF'
  "digits 1234567890 and 3.14159 and 1,000,000"
  "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  "it's don't we'll I'M THEY'RE"
  "x"
  ""
)
i=0
for text in "${texts[@]}"; do
  i=$((i + 1))
  printf '%s' "$text" >"$T/t$i.txt"
  for kind in bpe spm; do
    "$PY" - "$T/$kind/tokenizer.json" "$T/t$i.txt" >"$T/ref.json" <<'PYEOF'
import json, sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
print(json.dumps(t.encode(text, add_special_tokens=False).ids))
PYEOF
    "$TOK" "$T/$kind" "$T/t$i.txt" >"$T/owl.out"
    want=$(tr -d ' ' <"$T/ref.json")
    got=$(head -1 "$T/owl.out")
    expect_eq "encode_${kind}_$i" "$got" "$want"
    # Decoding gives the text back.
    tail -n +2 "$T/owl.out" >"$T/back.txt"
    if cmp -s "$T/back.txt" "$T/t$i.txt"; then pass "decode_${kind}_$i"; else fail "decode_${kind}_$i" "round trip differs: $(head -c 200 "$T/back.txt")"; fi
    # The GGUF copy of the vocabulary tokenizes identically.
    "$TOK" "$T/$kind/model.gguf" "$T/t$i.txt" >"$T/gguf.out"
    expect_eq "gguf_${kind}_$i" "$(head -1 "$T/gguf.out")" "$got"
  done
done

# A tokenizer.json with an unknown model type is refused with a reason.
python3 - "$T/bpe/tokenizer.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1])); d["model"]["type"] = "Unigram"
json.dump(d, open(sys.argv[1], "w"))
PYEOF
"$TOK" "$T/bpe" "$T/t1.txt" >/dev/null 2>"$T/err"; rc=$?
[ $rc -ne 0 ] && grep -q "model type Unigram is not supported" "$T/err" && pass unknown_model_type_refused || fail unknown_model_type_refused "rc $rc: $(cat "$T/err")"
printf '{"model": ' >"$T/bpe/tokenizer.json"
"$TOK" "$T/bpe" "$T/t1.txt" >/dev/null 2>"$T/err"; rc=$?
[ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "tokenizer.json" "$T/err" && pass truncated_tokenizer_json_refused || fail truncated_tokenizer_json_refused "rc $rc: $(cat "$T/err")"
