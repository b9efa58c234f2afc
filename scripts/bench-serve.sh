#!/usr/bin/env bash
# Server benchmark: 1, 4, 8 and 16 concurrent streaming clients against owl's
# server (tests/tools/owl-serve-dir, the code `owl serve` runs) on one GGUF:
# aggregate generated tokens/s, p50/p99 time to first token, mean
# inter-token latency. The model is the real SmolLM2-135M-Instruct Q4_1 when
# scripts/get-smollm2.sh can fetch it, else the fixture generator's
# SmolLM2-135M shape in Q8_0. With LLAMA_SERVER pointing at llama.cpp's
# llama-server (not part of owl), the same load runs against
# `llama-server -np N` on the same file and threads.
# Usage: scripts/bench-serve.sh [THREADS] [MAX_TOKENS] [REQUESTS_PER_CLIENT]   (default 2 64 2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
threads=${1:-2}
max_tokens=${2:-64}
reqs=${3:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/owl-bench-serve-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
if ! GG=$(scripts/get-smollm2.sh 2>/dev/null); then
  "$BUILD/owl-fixture" --out "$work/smol" --preset smollm2-135m --gguf Q8_0 --gguf-only --quiet
  GG="$work/smol/model.gguf"
fi
echo "bench-serve: $GG, $threads threads, $max_tokens tokens per request, $reqs requests per client"

"$BUILD/owl-serve-dir" "$GG" --name bench --threads "$threads" --max-batch 16 --max-queue 256 \
  --port 0 --access-log /dev/null >"$work/port" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 1 200); do port=$(head -n 1 "$work/port" 2>/dev/null || true); [ -n "$port" ] && break; sleep 0.1; done
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
for n in 1 4 8 16; do
  printf 'owl      %2d clients: ' "$n"
  python3 scripts/bench_serve_client.py "127.0.0.1:$port" bench "$n" "$reqs" "$max_tokens"
done

if [ -n "${LLAMA_SERVER:-}" ]; then
  for n in 1 4 8 16; do
    lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$LLAMA_SERVER" -m "$GG" -np "$n" -t "$threads" -c $((n * 512)) --port "$lport" >"$work/llama.log" 2>&1 &
    lp=$!
    pids+=($lp)
    until curl -sf "http://127.0.0.1:$lport/health" >/dev/null; do sleep 0.2; done
    printf 'llama.cpp %2d clients: ' "$n"
    python3 scripts/bench_serve_client.py "127.0.0.1:$lport" bench "$n" "$reqs" "$max_tokens"
    kill "$lp"
    wait "$lp" 2>/dev/null || true
  done
fi
