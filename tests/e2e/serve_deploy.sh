#!/usr/bin/env bash
# owl serve on a deployment, end to end through the CLI: the deployment's
# model answers over HTTP (curl and the openai client); owl deploy set and
# rollback swap the running server's revision while a client streams (each
# answer whole from one revision, none lost); a key made with owl keys is
# required at once and a revoked one refused; kill -9 loses no deployment
# state and the server starts again; SIGTERM drains and exits 0.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>"$T/pyenv.err") || { fail pyenv "scripts/pyenv.sh failed: $(tail -3 "$T/pyenv.err")"; exit 1; }

"$FX" --out "$T/m1" --seed 41 --preset tiny --std-scale 2 --quiet >/dev/null
"$FX" --out "$T/m2" --seed 42 --preset tiny --std-scale 2 --quiet >/dev/null
owl pull "$T/m1" --name tiny --quiet
owl pull "$T/m2" --name tiny --quiet
expect_rc fixtures_pulled 0
owl deploy create web --model tiny@1 --ctx 256 --use internal --reason "first release"
expect_rc deploy_created 0

PID=
URL=
# start NAME: owl serve web on a free port in the background; waits for /health.
start() {
  "$OWL_BIN" serve web --port 0 --threads 1 --grace 30 --access-log "$T/$1.access" \
    >"$T/$1.port" 2>"$T/$1.log" &
  PID=$!
  on_exit "kill -9 $PID 2>/dev/null"
  local port=
  for _ in $(seq 1 100); do
    port=$(head -n 1 "$T/$1.port" 2>/dev/null)
    [ -n "$port" ] && break
    sleep 0.1
  done
  URL="http://127.0.0.1:$port"
  for _ in $(seq 1 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && { pass "$1_healthy"; return 0; }
    sleep 0.1
  done
  fail "$1_healthy" "no healthy server: $(tail -5 "$T/$1.log")"
  return 1
}
# chat [KEY]: status in $CODE, the body in $BODY.
chat() {
  CODE=$(curl -s -o "$T/.body" -w '%{http_code}' "$URL/v1/chat/completions" \
    -H 'Content-Type: application/json' ${1:+-H "Authorization: Bearer $1"} \
    --data-binary '{"model":"web","messages":[{"role":"user","content":"hello there"}],"max_tokens":8,"temperature":0}')
  BODY=$(cat "$T/.body")
}
fingerprint() { printf '%s' "$BODY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["system_fingerprint"])' 2>/dev/null; }
# wait_fingerprint WANT: the server answers from revision WANT within 5 s.
wait_fingerprint() {
  for _ in $(seq 1 50); do
    chat
    [ "$(fingerprint)" = "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

start first || exit 1
chat
expect_eq chat_ok "$CODE" 200
expect_eq chat_from_revision_1 "$(fingerprint)" "owl-rev-1"
models=$(curl -s "$URL/v1/models")
expect_contains models_lists_deployment "$models" '"web"'
text1=$(printf '%s' "$BODY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')

# The openai client, streaming, against the deployment by name.
"$PY" - "$URL" >"$T/client.out" 2>&1 <<'PYEOF'
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none", max_retries=0, timeout=60)
parts, usage = [], None
for ch in c.chat.completions.create(model="web", messages=[{"role": "user", "content": "hello there"}],
                                    max_tokens=8, temperature=0, stream=True,
                                    stream_options={"include_usage": True}):
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
    if ch.usage:
        usage = ch.usage
print("TEXT", "".join(parts))
print("USAGE", usage.completion_tokens if usage else None)
PYEOF
expect_contains openai_stream_text "$(cat "$T/client.out")" "TEXT $text1"
expect_not_contains openai_stream_usage "$(cat "$T/client.out")" "USAGE None"

# A new revision while a client streams requests in a loop: every request
# succeeds and each answer comes from one revision.
"$PY" - "$URL" "$T/stop" >"$T/load.out" 2>&1 <<'PYEOF' &
import os, sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none", max_retries=0, timeout=60)
n = bad = 0
while not os.path.exists(sys.argv[2]):
    fps = set()
    try:
        for ch in c.completions.create(model="web", prompt="once upon a time", max_tokens=12,
                                       temperature=0, stream=True):
            fps.add(ch.system_fingerprint)
        if len(fps) != 1:
            bad += 1
    except Exception as e:
        print("ERROR", e)
        bad += 1
    n += 1
print("REQUESTS", n, "BAD", bad)
PYEOF
LOAD=$!
sleep 1
owl deploy set web --model tiny@2 --reason "new weights"
expect_rc deploy_set 0
wait_fingerprint owl-rev-2 && pass swapped_to_revision_2 || fail swapped_to_revision_2 "still $(fingerprint) after 5 s: $(tail -3 "$T/first.log")"
t0=$(date +%s.%N)
owl deploy rollback web --reason "bad answers"
expect_rc deploy_rollback 0
wait_fingerprint owl-rev-1 && pass rolled_back_to_revision_1 || fail rolled_back_to_revision_1 "still $(fingerprint)"
t1=$(date +%s.%N)
# Revision 1 is still loaded (grace): the rollback takes effect within a second or so.
python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 2.5 else 1)" && pass rollback_fast \
  || fail rollback_fast "$(python3 -c "print($t1 - $t0)") s from rollback to the first answer of revision 1"
sleep 1
touch "$T/stop"
wait "$LOAD"
load=$(cat "$T/load.out")
expect_contains load_no_errors "$load" "BAD 0"
expect_not_contains load_no_exceptions "$load" "ERROR"

# Keys: once one exists, a request needs it; a revoked key is refused.
owl keys create --name test
expect_rc key_created 0
KEY=$(printf '%s' "$OUT" | grep -o 'owl_[A-Za-z0-9_-]*' | head -n 1)
[ -n "$KEY" ] || KEY=$(printf '%s' "$OUT" | tail -n 1)
chat
expect_eq key_required "$CODE" 401
chat "$KEY"
expect_eq key_accepted "$CODE" 200
owl keys list --json
kid=$(printf '%s' "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])' 2>/dev/null)
owl keys revoke "$kid"
expect_rc key_revoked 0
chat "$KEY"
expect_eq revoked_key_refused "$CODE" 401
owl keys rm "$kid"
expect_rc key_removed 0
chat
expect_eq open_again "$CODE" 200

# kill -9: the deployment's state is in owl.db; a new server serves the same revision.
kill -9 "$PID"
wait "$PID" 2>/dev/null
owl deploy show web --json
expect_eq state_kept "$(printf '%s' "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])' 2>/dev/null)" "1"
start second || exit 1
chat
expect_eq restarted_serves "$CODE" 200
expect_eq restarted_revision "$(fingerprint)" "owl-rev-1"

# SIGTERM drains and exits 0.
kill -TERM "$PID"
wait "$PID"
expect_eq sigterm_exit_0 "$?" 0
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$T/first.log" "$T/second.log"; then
  fail sanitizer_clean "$(grep -h -m1 -A12 -E 'ERROR: |runtime error:' "$T/first.log" "$T/second.log")"
fi
