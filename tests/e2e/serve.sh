#!/usr/bin/env bash
# The OpenAI-compatible server (deploy/server.c) on loopback, through
# tests/tools/owl-serve-dir on fixture models: the real openai client and
# curl for completions, chat, streaming with usage, logprobs and adapters by
# name; the text it serves against `owl run` of the same model; bad requests
# (each a 4xx in OpenAI's shape while the server keeps serving); API keys;
# 32 concurrent streams against one client alone; a revision swap and
# rollbacks under load; a revision that fails to load; the queue's 429 and
# 503; a client that goes away; SIGTERM draining; /health and /metrics.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
SERVE="$OWL_BUILD/owl-serve-dir"
CLIENT="$OWL_ROOT/tests/e2e/serve_client.py"
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>"$T/pyenv.err") || { fail openai_available "scripts/pyenv.sh failed: $(tail -3 "$T/pyenv.err")"; exit 1; }
"$PY" -c 'import openai' 2>"$T/imp.err" || { fail openai_available "openai does not import: $(tail -3 "$T/imp.err")"; exit 1; }

"$FX" --out "$T/m1" --seed 31 --preset tiny --std-scale 2 >/dev/null
"$FX" --out "$T/m2" --seed 32 --preset tiny --std-scale 2 >/dev/null
# A slower model (about a millisecond a token) for the queue and drain checks.
"$FX" --out "$T/slow" --seed 33 --hidden 384 --layers 6 --heads 6 --kv-heads 2 --intermediate 1024 \
  --ctx 1024 >/dev/null
# A LoRA adapter made by peft itself (tests/oracle/ref_peft.py), applied unmerged.
"$PY" "$OWL_ROOT/tests/oracle/ref_peft.py" make "$T/m1" "$T/lora" --r 8 --std 0.3 --seed 5 \
  >/dev/null 2>"$T/lora.err" || fail adapter_made "ref_peft.py make: $(tail -3 "$T/lora.err")"

PID=
PORT=
# start NAME ARGS...: runs the server in the background and waits for its port.
start() {
  local name=$1
  shift
  "$SERVE" "$@" >"$T/$name.port" 2>"$T/$name.log" &
  PID=$!
  on_exit "kill -9 $PID"
  for _ in $(seq 1 100); do
    PORT=$(head -n 1 "$T/$name.port" 2>/dev/null)
    [ -n "$PORT" ] && break
    sleep 0.1
  done
  URL="http://127.0.0.1:$PORT"
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && return 0
    sleep 0.1
  done
  fail "${name}_starts" "no healthy server: $(tail -5 "$T/$name.log")"
  return 1
}
# stop NAME: SIGTERM, and no sanitizer report in the server's log (SANITIZE=1).
stop() {
  kill -TERM "$PID" 2>/dev/null
  wait "$PID" 2>/dev/null
  sanitizer_clean "$1"
}
sanitizer_clean() {
  if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$T/$1.log"; then
    fail "${1}_sanitizer_clean" "$(grep -m1 -A12 -E 'ERROR: |runtime error:' "$T/$1.log")"
  fi
}

# post PATH BODY: status in $CODE, body in $BODY.
post() {
  CODE=$(curl -s -o "$T/.body" -w '%{http_code}' "$URL$1" -H 'Content-Type: application/json' \
    ${KEY:+-H "Authorization: Bearer $KEY"} --data-binary "$2")
  BODY=$(cat "$T/.body")
}
# openai_error NAME WANT_STATUS: the last answer is an error in OpenAI's shape.
openai_error() {
  python3 - "$T/.body" "$CODE" "$2" <<'EOF' && pass "$1" || fail "$1" "status $CODE, body: ${BODY:0:300}"
import json, sys
b = json.load(open(sys.argv[1]))["error"]
ok = int(sys.argv[2]) == int(sys.argv[3]) and isinstance(b["message"], str) and b["message"] \
     and isinstance(b["type"], str) and "param" in b and "code" in b
sys.exit(0 if ok else 1)
EOF
}

# ---- clients, adapters, the CLI's text -------------------------------------------------
echo 1 >"$T/rev"
start open "$T/m1" "ad=$T/lora" --rev-file "$T/rev" --name fixture --threads 1 --access-log "$T/access.log" || exit 1
"$PY" "$CLIENT" basic "$URL" --adapter ad
# The server's greedy text is what `owl run` gives for the same prompt.
owl run "$T/m1" "The sky is" --temperature 0 --max-tokens 12 --json
cli=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"], end="")')
srv=$("$PY" "$CLIENT" greedy "$URL" --prompt "The sky is" --max-tokens 12)
expect_eq completion_equals_owl_run "$srv" "$cli"
owl run "$T/m1" "The sky is" --temperature 0 --max-tokens 12 --adapter "$T/lora" --json
cli=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"], end="")')
srv=$("$PY" "$CLIENT" greedy "$URL" --model ad --prompt "The sky is" --max-tokens 12)
expect_eq adapter_equals_owl_run_with_adapter "$srv" "$cli"
owl run "$T/m1" "Hello there" --chat --system "You are terse." --temperature 0 --max-tokens 10 --json
cli=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"], end="")')
srv=$("$PY" "$CLIENT" greedy "$URL" --kind chat --prompt "Hello there" --max-tokens 10)
expect_eq chat_equals_owl_run_chat "$srv" "$cli"

# curl: SSE framing as OpenAI sends it.
curl -sN "$URL/v1/chat/completions" -d '{"model":"fixture","messages":[{"role":"user","content":"Hi"}],
  "max_tokens":5,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' >"$T/sse.txt"
expect_eq curl_sse_ends_done "$(grep -v '^$' "$T/sse.txt" | tail -n 1)" "data: [DONE]"
python3 - "$T/sse.txt" <<'EOF' && pass curl_sse_chunks || fail curl_sse_chunks "$(head -c 400 "$T/sse.txt")"
import json, sys
ev = [l[6:] for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
chunks = [json.loads(e) for e in ev[:-1]]
assert all(c["object"] == "chat.completion.chunk" for c in chunks)
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 5
assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
EOF

# ---- bad requests: each a 4xx in OpenAI's shape ------------------------------------------
post /v1/completions '{"model": "fixture", "prompt": '
openai_error bad_json_400 400
post /v1/completions '[1, 2]'
openai_error not_an_object_400 400
post /v1/completions '{"model": "fixture", "prompt": "x", "max_tokens": "ten"}'
openai_error wrong_type_400 400
expect_contains wrong_type_names_param "$BODY" '"param":"max_tokens"'
post /v1/chat/completions '{"model": "fixture", "messages": "hello"}'
openai_error messages_wrong_type_400 400
post /v1/completions '{"model": "fix\u0000ture", "prompt": "x"}'
openai_error model_with_nul_400 400
post /v1/completions '{"model": "no-such-model", "prompt": "x"}'
openai_error unknown_model_404 404
expect_contains unknown_model_code "$BODY" '"code":"model_not_found"'
post /v1/completions '{"model": "fixture", "prompt": "x", "max_tokens": 100000000}'
openai_error huge_max_tokens_400 400
post /v1/completions "{\"model\": \"fixture\", \"prompt\": \"$(printf 'hello %.0s' $(seq 1 400))\"}"
openai_error prompt_longer_than_context_400 400
expect_contains prompt_too_long_code "$BODY" '"code":"context_length_exceeded"'
post /v1/completions '{"model": "fixture", "prompt": "x", "n": 3}'
openai_error n_above_one_400 400
post /v1/completions '{"model": "fixture", "prompt": [5, 99999]}'
openai_error token_outside_vocab_400 400
head -c 1200000 /dev/zero | tr '\0' 'a' | sed 's/^/{"model":"fixture","prompt":"/; s/$/"}/' >"$T/big.json"
CODE=$(curl -s -o "$T/.body" -w '%{http_code}' "$URL/v1/completions" --data-binary @"$T/big.json")
BODY=$(cat "$T/.body")
openai_error oversized_body_413 413
CODE=$(curl -s -o "$T/.body" -w '%{http_code}' "$URL/v1/nothing")
openai_error unknown_route_404 404
post /v1/completions '{"model": "fixture", "prompt": "still here", "max_tokens": 3}'
expect_eq keeps_serving_after_bad_requests "$CODE" 200

# ---- health, metrics, access log ----------------------------------------------------------
curl -s "$URL/metrics" >"$T/metrics.txt"
for m in owl_requests_total owl_prompt_tokens_total owl_generation_tokens_total \
  owl_time_to_first_token_seconds_bucket owl_inter_token_latency_seconds_count owl_queue_depth \
  owl_running_batch_size owl_kv_blocks_used 'owl_revision 1'; do
  expect_contains "metrics_has_${m%% *}" "$(cat "$T/metrics.txt")" "$m"
done
gen=$(awk '$1 == "owl_generation_tokens_total" {print $2}' "$T/metrics.txt")
[ "${gen:-0}" -gt 0 ] && pass metrics_counts_tokens || fail metrics_counts_tokens "owl_generation_tokens_total=$gen"
expect_contains access_log_has_lines "$(cat "$T/access.log")" "POST /v1/completions status=200"
expect_contains access_log_has_4xx "$(cat "$T/access.log")" "status=404"
# A path percent-decoded into a newline cannot forge a line of its own.
curl -s -o /dev/null "$URL/v1/x%0a2026-01-01T00:00:00Z%20key=forged%20POST%20/v1/completions%20status=200"
sleep 0.2
if grep -q '^2026-01-01T00:00:00Z key=forged' "$T/access.log"; then
  fail access_log_no_forged_lines "$(grep -n forged "$T/access.log")"
else
  pass access_log_no_forged_lines
fi
expect_not_contains access_log_no_prompt_text "$(cat "$T/access.log")" "still here"

# ---- concurrency: 32 streams equal one client alone ----------------------------------------
"$PY" "$CLIENT" concurrent "$URL" --clients 32
curl -s "$URL/metrics" >"$T/metrics2.txt"
cached=$(awk '$1 == "owl_prompt_tokens_cached_total" {print $2}' "$T/metrics2.txt")
[ "${cached:-0}" -gt 0 ] && pass prefix_cache_reused || fail prefix_cache_reused "owl_prompt_tokens_cached_total=$cached"

# ---- swap under load, rollback, a revision that does not load -------------------------------
echo "1 $T/m1" >"$T/rev"
"$PY" "$CLIENT" swap "$URL" --rev-file "$T/rev" --model1 "$T/m1" --model2 "$T/m2" --seconds 6 2>"$T/swap.err"
echo "7 $T/no-such-model" >"$T/rev"
sleep 2.5
curl -s "$URL/metrics" >"$T/metrics3.txt"
expect_contains failed_revision_reported "$(cat "$T/metrics3.txt")" "owl_revision_failed 7"
expect_contains failed_revision_logged "$(cat "$T/open.log")" "revision 7 failed to load"
post /v1/completions '{"model": "fixture", "prompt": "x", "max_tokens": 2}'
expect_eq failed_revision_old_keeps_serving "$CODE" 200
stop open
expect_contains sigterm_stops "$(cat "$T/open.log")" "stopped"

# ---- loading: /health says so; a slow load of the next revision leaves the old serving ----
echo "1 $T/m1" >"$T/rev"
"$SERVE" "$T/m1" --rev-file "$T/rev" --name fixture --threads 1 --load-delay 2 >"$T/load.port" 2>"$T/load.log" &
PID=$!
on_exit "kill -9 $PID"
for _ in $(seq 1 100); do PORT=$(head -n 1 "$T/load.port" 2>/dev/null); [ -n "$PORT" ] && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT"
CODE=$(curl -s -o "$T/.body" -w '%{http_code}' "$URL/health")
expect_eq health_503_while_loading "$CODE" 503
expect_contains health_says_loading "$(cat "$T/.body")" '"loading"'
post /v1/completions '{"model": "fixture", "prompt": "x", "max_tokens": 2}'
openai_error completion_503_while_loading 503
for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && break; sleep 0.1; done
expect_eq health_200_when_ready "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" 200
echo "2 $T/m2" >"$T/rev"
sleep 1
post /v1/completions '{"model": "fixture", "prompt": "x", "max_tokens": 2}'
expect_eq old_revision_serves_while_next_loads "$CODE $(echo "$BODY" | grep -o 'owl-rev-[0-9]*')" "200 owl-rev-1"
sleep 2.5
post /v1/completions '{"model": "fixture", "prompt": "x", "max_tokens": 2}'
expect_eq next_revision_serves_once_loaded "$CODE $(echo "$BODY" | grep -o 'owl-rev-[0-9]*')" "200 owl-rev-2"
stop load

# ---- API keys --------------------------------------------------------------------------
printf 'key-ops sk-test-secret\n' >"$T/keys"
echo 1 >"$T/rev"
start keys "$T/m1" --rev-file "$T/rev" --name fixture --keys-file "$T/keys" --threads 1 \
  --access-log "$T/access2.log" --log-prompts || exit 1
"$PY" "$CLIENT" denied "$URL"
"$PY" "$CLIENT" denied "$URL" --key wrong-key
srv=$("$PY" "$CLIENT" greedy "$URL" --key sk-test-secret --prompt "Keyed prompt" --max-tokens 4 2>&1) \
  && pass auth_valid_key_passes || fail auth_valid_key_passes "$srv"
post /v1/models ''
openai_error auth_curl_no_key_401 401
expect_contains access_log_key_id "$(cat "$T/access2.log")" "key=key-ops"
expect_contains access_log_prompts_when_asked "$(cat "$T/access2.log")" "Keyed prompt"
expect_not_contains access_log_never_the_secret "$(cat "$T/access2.log")" "sk-test-secret"
stop keys

# ---- queue limits, a client that goes away, draining -------------------------------------------
echo 1 >"$T/rev"
start slow "$T/slow" --rev-file "$T/rev" --name fixture --threads 1 --max-batch 1 --max-queue 1 \
  --queue-timeout 0.5 --ctx 1024 || exit 1
long='{"model": "fixture", "prompt": "a long one", "max_tokens": 900, "temperature": 0, "stream": true}'
# One runs, one waits, the rest are refused. The first is running before the
# others arrive: four at once could all find the queue before the scheduler
# has taken the first from it, and then three are refused and none waits.
curl -s -o "$T/q1.out" -w '%{http_code}\n' "$URL/v1/completions" -d "$long" >"$T/q1.code" &
qpids=($!)
for _ in $(seq 1 200); do
  [ "$(curl -s "$URL/metrics" | awk '$1 == "owl_running_batch_size" {print $2}')" = 1 ] && break
  sleep 0.05
done
for i in 2 3 4; do
  curl -s -o "$T/q$i.out" -w '%{http_code}\n' "$URL/v1/completions" -d "$long" >"$T/q$i.code" &
  qpids+=($!)
done
wait "${qpids[@]}"
codes=$(cat "$T"/q*.code | sort | tr '\n' ' ')
expect_contains queue_full_429 "$codes" "429"
expect_contains queue_timeout_503 "$codes" "503"
expect_contains queue_one_served "$codes" "200"
grep -l '"code":"queue_full"' "$T"/q*.out >/dev/null && pass queue_full_openai_shape || fail queue_full_openai_shape "$(cat "$T"/q*.out | head -c 300)"
# A client that disconnects frees its slot at the next step: the next
# request runs at once instead of waiting for 900 tokens.
curl -s -N "$URL/v1/completions" -d "$long" >/dev/null &
cpid=$!
sleep 0.3
kill "$cpid"
wait "$cpid" 2>/dev/null
t0=$(date +%s.%N)
post /v1/completions '{"model": "fixture", "prompt": "after", "max_tokens": 2}'
t1=$(date +%s.%N)
expect_eq disconnect_frees_slot "$CODE" 200
python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 0.5 else 1)" && pass disconnect_frees_slot_fast \
  || fail disconnect_frees_slot_fast "the next request took $(python3 -c "print($t1 - $t0)") s"
# SIGTERM drains: the stream in flight finishes whole, a new request gets 503.
curl -s -N "$URL/v1/completions" -d "$long" >"$T/drain.out" &
cpid=$!
sleep 0.3
kill -TERM "$PID"
sleep 0.2
post /v1/completions '{"model": "fixture", "prompt": "late", "max_tokens": 2}'
expect_eq drain_refuses_new_503 "$CODE" 503
wait "$cpid"
expect_eq drain_finishes_in_flight "$(grep -v '^$' "$T/drain.out" | tail -n 1)" "data: [DONE]"
expect_contains drain_stream_complete "$(cat "$T/drain.out")" '"finish_reason":"length"'
wait "$PID"
expect_eq drain_exits_zero "$?" 0
sanitizer_clean slow
