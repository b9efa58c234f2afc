#!/usr/bin/env bash
# Makes the Python environment that test oracles and clients use: a venv on
# top of Debian's /usr/bin/python3 (so python3-torch and numpy come from
# Debian), plus the few PyPI packages that serve as independent references:
# tokenizers (Hugging Face's tokenizer, to check owl's token ids), safetensors
# and gguf (the reference readers/writers of those formats), jinja2 (renders
# chat templates as transformers does). Idempotent.
# Prints the path of the interpreter to use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-test"
want="tokenizers==0.20.3 safetensors==0.4.5 gguf==0.10.0 jinja2==3.1.4"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.owl-want" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check $want >&2
  echo "$want" >"$venv/.owl-want"
fi
echo "$venv/bin/python"
