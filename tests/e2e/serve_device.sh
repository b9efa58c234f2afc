#!/usr/bin/env bash
# owl serve on a device (--device): the server's batched decoding on the
# CUDA backend's kernels, built against the host emulator of CUDA
# (tests/cuda-emu/, $OWL_BUILD/libowl_cuda_emu.so, named by OWL_CUDA_LIB),
# gives the CPU's greedy completions for several requests decoding together
# (their tokens sampled on the backend, only the ids coming back); sampled
# requests, and those whose options keep the host's sampler (penalties,
# logprobs), are answered there too. A real GPU is
# scripts/gpu-check.sh's.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
EMU="$OWL_BUILD/libowl_cuda_emu.so"
[ -f "$EMU" ] || { fail emulator_built "$EMU is missing (make builds it)"; exit 0; }

"$FX" --out "$T/m" --seed 41 --preset tiny --std-scale 2 --quiet >/dev/null
owl pull "$T/m" --name tiny --quiet
owl deploy create web --model tiny@1 --ctx 128 --use internal --reason "device test"
expect_rc deployed 0

owl serve web --device gpu
expect_rc unknown_device_is_a_usage_error 2
expect_contains unknown_device_names_the_choices "$ERR" "use auto, cpu, cuda or cuda:N"

PID=
URL=
# start NAME DEVICE [ENV...]: owl serve web on a free port; waits for /health.
start() {
  local name=$1 dev=$2
  shift 2
  env "$@" "$OWL_BIN" serve web --port 0 --threads 1 --max-batch 4 --device "$dev" \
    --access-log "$T/$name.access" >"$T/$name.port" 2>"$T/$name.log" &
  PID=$!
  on_exit "kill -9 $PID 2>/dev/null"
  local port=
  for _ in $(seq 1 100); do
    port=$(head -n 1 "$T/$name.port" 2>/dev/null)
    [ -n "$port" ] && break
    sleep 0.1
  done
  URL="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && { pass "${name}_healthy"; return 0; }
    sleep 0.1
  done
  fail "${name}_healthy" "no healthy server: $(tail -5 "$T/$name.log")"
  return 1
}
stop() {
  kill -TERM "$PID" 2>/dev/null
  wait "$PID" 2>/dev/null
}
# complete OUT BODY: a /v1/completions request in the background.
complete() {
  curl -s -o "$1" -w '%{http_code}' "$URL/v1/completions" -H 'Content-Type: application/json' \
    --data-binary "$2" >"$1.code" &
}
PROMPTS=("once upon a time" "hello there" "the quick brown fox" "a b c d e f")
# greedy NAME: the four prompts at once (one batch), their texts in $T/NAME.texts.
greedy() {
  local i
  for i in 0 1 2 3; do
    complete "$T/$1.$i" "{\"model\":\"web\",\"prompt\":\"${PROMPTS[$i]}\",\"max_tokens\":12,\"temperature\":0}"
  done
  wait_curls
  for i in 0 1 2 3; do
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$T/$1.$i" \
      2>/dev/null || echo "<no answer: $(cat "$T/$1.$i.code") $(head -c 200 "$T/$1.$i")>"
  done >"$T/$1.texts"
}
wait_curls() { for p in $(jobs -p); do [ "$p" = "$PID" ] || wait "$p"; done; }

text_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$1" 2>&1; }
HELLO='{"model":"web","prompt":"hello","max_tokens":8,"temperature":0'
start cpu cpu || exit 1
greedy cpu
complete "$T/cpu.hello" "$HELLO}"
wait_curls
expect_contains cpu_serves_on_the_cpu "$(cat "$T/cpu.log")" "on the cpu backend"
stop

start cuda cuda OWL_CUDA_LIB="$EMU" || exit 1
greedy cuda
expect_contains cuda_serves_on_the_cuda_backend "$(cat "$T/cuda.log")" "on the cuda backend"
if ! grep -q '<no answer' "$T/cpu.texts" && [ "$(wc -c <"$T/cpu.texts")" -gt 8 ]; then
  expect_eq cuda_batch_greedy_equals_cpu "$(cat "$T/cuda.texts")" "$(cat "$T/cpu.texts")"
else
  fail cpu_answers "the CPU server did not answer: $(cat "$T/cpu.texts")"
fi

# Sampled on the backend, and kept on the host (penalties, logprobs), in
# one batch: each answered; the greedy row whose logits came to the host
# (logprobs: copied row by row beside the rows sampled on the backend) and
# the greedy row sampled on the backend both give the CPU's text.
complete "$T/s.0" '{"model":"web","prompt":"hello","max_tokens":8,"temperature":0.8,"top_p":0.9,"seed":7}'
complete "$T/s.1" '{"model":"web","prompt":"hello","max_tokens":8,"temperature":0.8,"presence_penalty":0.5,"seed":7}'
complete "$T/s.2" "$HELLO,\"logprobs\":2}"
complete "$T/s.3" "$HELLO}"
wait_curls
for i in 0 1 2 3; do
  expect_eq "cuda_mixed_batch_row_${i}_answered" "$(cat "$T/s.$i.code")" 200
done
want=$(text_of "$T/cpu.hello")
expect_eq cuda_mixed_batch_host_row_equals_cpu "$(text_of "$T/s.2")" "$want"
expect_eq cuda_mixed_batch_device_row_equals_cpu "$(text_of "$T/s.3")" "$want"
# The same seed, the same text: the backend's draw follows the request's seed.
complete "$T/s.4" '{"model":"web","prompt":"hello","max_tokens":8,"temperature":0.8,"top_p":0.9,"seed":7}'
wait_curls
expect_eq cuda_same_seed_same_text "$(text_of "$T/s.4")" "$(text_of "$T/s.0")"
stop
expect_not_contains cuda_server_logged_no_failure "$(cat "$T/cuda.log")" "failed"
