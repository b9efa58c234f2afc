#!/usr/bin/env bash
# Makes the Python environment that test oracles and clients use: a venv on
# top of Debian's /usr/bin/python3 (so python3-torch and numpy come from
# Debian), plus the few PyPI packages that serve as independent references:
# tokenizers (Hugging Face's tokenizer, to check owl's token ids), safetensors
# and gguf (the reference readers/writers of those formats), jinja2 (renders
# chat templates as transformers does), transformers and peft (the reference
# for LoRA adapters applied to a model), and openai (the real client the
# server's tests speak to it with, and the pydantic and httpx it was released
# against: httpx 0.28 removed an argument openai < 1.55.3 passes). Idempotent.
# Prints the path of the interpreter to use.
#
# peft asks for torch>=1.13.0, which Debian's 1.13.0a0 does not satisfy by
# pip's rules (a pre-release sorts before 1.13.0), so pip would fetch a
# second, multi-GB torch from PyPI: peft is installed without its
# dependencies, which the first step provides (accelerate, transformers,
# psutil, pyyaml, tqdm, safetensors, huggingface_hub) with Debian's torch.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-test"
want="tokenizers==0.20.3 safetensors==0.4.5 gguf==0.10.0 jinja2==3.1.4 transformers==4.45.2 accelerate==0.34.2 huggingface_hub==0.25.2"
nodeps="peft==0.13.2"
# Clients are added to an existing environment without rebuilding it.
clients="openai==1.57.4 pydantic==2.9.2 httpx==0.27.2"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.owl-want" 2>/dev/null)" != "$want $nodeps" ]; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check $want >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps $nodeps >&2
  if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__file__.startswith("/usr/") else 1)'; then
    echo "pyenv: torch in $venv does not come from Debian's python3-torch" >&2
    exit 1
  fi
  echo "$want $nodeps" >"$venv/.owl-want"
fi
if [ "$(cat "$venv/.owl-clients" 2>/dev/null)" != "$clients" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check $clients >&2
  echo "$clients" >"$venv/.owl-clients"
fi
echo "$venv/bin/python"
