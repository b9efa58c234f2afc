#!/usr/bin/env bash
# Chat templates: owl's rendering of each family equals jinja2 rendering the
# checkpoint's own template (as transformers' apply_chat_template does).
. "$(dirname "$0")/lib.sh"

PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>/dev/null) || { fail chat_pyenv "scripts/pyenv.sh failed"; exit 1; }
FX="$OWL_BUILD/owl-fixture"
cat >"$T/two.json" <<'JSON'
[{"role": "user", "content": "Hello, who are you?"},
 {"role": "assistant", "content": "I am a small owl."},
 {"role": "user", "content": "  What do owls eat?  "}]
JSON
cat >"$T/sys.json" <<'JSON'
[{"role": "system", "content": "You answer in one sentence."},
 {"role": "user", "content": "Why is the sky blue?"}]
JSON
for tmpl in chatml llama3 llama2 zephyr gemma; do
  tok=bpe; [ "$tmpl" = llama2 ] && tok=spm
  "$FX" --out "$T/$tmpl" --seed 9 --preset tiny --tokenizer $tok --chat-template $tmpl >/dev/null
  for conv in two sys; do
    [ "$tmpl" = gemma ] && [ "$conv" = sys ] && continue  # Gemma's template refuses a system role
    "$PY" - "$T/$tmpl/tokenizer_config.json" "$T/$conv.json" >"$T/ref.txt" <<'PYEOF'
import json, sys
from jinja2.sandbox import ImmutableSandboxedEnvironment
cfg = json.load(open(sys.argv[1]))
def tok(v):
    return v["content"] if isinstance(v, dict) else (v or "")
def raise_exception(m):
    raise Exception(m)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.globals["raise_exception"] = raise_exception
t = env.from_string(cfg["chat_template"])
sys.stdout.write(t.render(messages=json.load(open(sys.argv[2])), add_generation_prompt=True,
                          bos_token=tok(cfg.get("bos_token")), eos_token=tok(cfg.get("eos_token"))))
PYEOF
    "$OWL_BUILD/owl-chat-render" "$T/$tmpl" "$T/$conv.json" >"$T/owl.txt"
    if cmp -s "$T/owl.txt" "$T/ref.txt"; then
      pass "chat_${tmpl}_$conv"
    else
      fail "chat_${tmpl}_$conv" "owl: $(head -c 300 "$T/owl.txt" | od -c | head -5) ref: $(head -c 300 "$T/ref.txt" | od -c | head -5)"
    fi
  done
done
