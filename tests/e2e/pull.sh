#!/usr/bin/env bash
# owl pull over the network, against a real nginx on loopback: URLs over HTTP
# and HTTPS, certificates, resume after a kill, corrupt bytes, retries, and a
# hub-style repository with revisions, gating, missing entries and redirects.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-nginx.sh"

nginx_start || exit 1
FX="$OWL_BUILD/owl-fixture"
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }

# --- single files by URL ----------------------------------------------------------
"$FX" --out "$T/g" --seed 7 --preset tiny --gguf Q8_0 --gguf-only >/dev/null
gg=$(basename "$(ls "$T"/g/*.gguf | head -1)")
cp "$T/g/$gg" "$NGX_WWW/files/"
sum=$(sha256sum "$NGX_WWW/files/$gg" | cut -d' ' -f1)

owl pull "$NGX_HTTP/files/$gg" --name g --json
expect_rc pull_http_url 0
expect_eq pull_http_digest "$(json '[1 for x in [d] if d["format"]=="gguf"][0]')" "1"
owl show g --json
expect_eq pull_url_digest_matches "$(json 'd["files"][0]["sha256"]')" "$sum"
expect_eq pull_url_source_recorded "$(json 'd["source"]')" "$NGX_HTTP/files/$gg"

owl pull "$NGX_HTTPS/files/$gg" --name g
expect_rc https_without_ca_refused 1
expect_contains https_refusal_mentions_ca_cert "$ERR" "--ca-cert"
owl pull "$NGX_HTTPS/files/$gg" --name g --ca-cert "$NGX_OTHER_CA"
expect_rc https_wrong_ca_refused 1
owl pull "$NGX_HTTPS/files/$gg" --name g --ca-cert "$NGX_CA" --sha256 "$sum"
expect_rc https_with_ca_and_sha256 0

owl pull "$NGX_HTTP/files/nope.gguf" --name g
expect_rc url_404_fails 1
expect_contains url_404_message "$ERR" "HTTP 404"

owl pull "$NGX_HTTP/files/$gg" --name g --sha256 "$(printf '%064d' 0)"
expect_rc url_sha256_mismatch_exit_4 4
expect_contains url_mismatch_names_actual "$ERR" "$sum"
[ -z "$(ls "$OWL_HOME/tmp/downloads" 2>/dev/null)" ] && pass url_mismatch_leaves_no_partial || fail url_mismatch_leaves_no_partial "$(ls "$OWL_HOME/tmp/downloads")"

# --- resume after the owl process is killed mid-download ---------------------------
head -c $((6 * 1024 * 1024)) /dev/urandom >"$T/raw"
python3 - "$T/raw" "$NGX_WWW/files/big.safetensors" <<'EOF'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
h = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + data)
EOF
big_size=$(stat -c %s "$NGX_WWW/files/big.safetensors")
"$OWL_BIN" pull "$NGX_HTTP/slow/big.safetensors" --name big >/dev/null 2>&1 &
pid=$!
sleep 2.5
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
part=$(ls "$OWL_HOME"/tmp/downloads/*.part 2>/dev/null | head -1)
psize=$(stat -c %s "$part" 2>/dev/null || echo 0)
if [ "$psize" -gt 0 ] && [ "$psize" -lt "$big_size" ]; then pass killed_pull_leaves_partial; else fail killed_pull_leaves_partial "partial size $psize of $big_size"; fi
owl list big --json
expect_eq killed_pull_registers_nothing "$(json 'len(d)')" "0"
owl pull "$NGX_HTTP/slow/big.safetensors" --name big --json
expect_rc resumed_pull 0
got=$(json 'd["downloaded_bytes"]')
if [ "$got" -lt "$big_size" ] && [ "$got" -gt 0 ]; then pass resume_fetched_fewer_bytes; else fail resume_fetched_fewer_bytes "downloaded $got of $big_size"; fi
owl show big --json
expect_eq resumed_digest_is_whole_file "$(json 'd["files"][0]["sha256"]')" "$(sha256sum "$NGX_WWW/files/big.safetensors" | cut -d' ' -f1)"
grep -q ' 206 ' "$NGX_LOG" || grep -q '^206 ' "$NGX_LOG" && pass server_saw_range_request || fail server_saw_range_request "no 206 in the access log"

# A partial file whose bytes are wrong: the full digest catches it (exit 4), nothing stored.
owl rm big@1 >/dev/null
"$OWL_BIN" pull "$NGX_HTTP/slow/big.safetensors" --name big2 >/dev/null 2>&1 &
pid=$!
sleep 1.5
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
part=$(ls "$OWL_HOME"/tmp/downloads/*.part 2>/dev/null | head -1)
if [ -n "$part" ]; then
  printf '\x00\x01\x02' | dd of="$part" bs=1 seek=100 conv=notrunc 2>/dev/null
  owl pull "$NGX_HTTP/slow/big.safetensors" --name big2 --sha256 "$(sha256sum "$NGX_WWW/files/big.safetensors" | cut -d' ' -f1)"
  expect_rc corrupt_partial_exit_4 4
  owl list big2 --json
  expect_eq corrupt_partial_stores_nothing "$(json 'len(d)')" "0"
else
  fail corrupt_partial_exit_4 "no partial file after kill"
fi

# --- retries: the server comes up only after the first attempts failed ----------------
rport=$(free_port)
mkdir -p "$T/late"
cp "$NGX_WWW/files/$gg" "$T/late/"
(sleep 1.2; exec python3 -m http.server "$rport" --bind 127.0.0.1 --directory "$T/late") >/dev/null 2>&1 &
lpid=$!
on_exit "kill $lpid"
owl pull "http://127.0.0.1:$rport/$gg" --name late
expect_rc retry_until_server_answers 0

# --- hub-style repository ---------------------------------------------------------------
"$FX" --out "$T/hubm" --seed 8 --preset tiny --shards 2 --license apache-2.0 >/dev/null
commit=0123456789abcdef0123456789abcdef01234567
hub_publish "$T/hubm" org/tiny main "$commit"
export OWL_HF_ENDPOINT="$NGX_HTTP"
owl pull hf://org/tiny --json
expect_rc hub_pull 0
expect_eq hub_pins_commit "$(json 'd["revision"]')" "$commit"
expect_eq hub_default_name "$(json 'd["model"]')" "tiny"
expect_eq hub_all_files "$(json 'd["files"]')" "$(ls "$T/hubm" | wc -l)"
owl show tiny --json
expect_eq hub_source_recorded "$(json 'd["source"]')" "hf://org/tiny"
owl pull hf://org/tiny@"$commit" --name tiny-pinned --json
expect_rc hub_pull_by_commit 0
owl pull hf://org/tiny --include '*.json' --name tiny-json
expect_rc hub_include_without_weights_refused 2
owl pull hf://org/tiny@v9
expect_rc hub_unknown_revision 1
expect_contains hub_revision_message "$ERR" "no revision 'v9'"

# Gated: 401 GatedRepo without a token; with the token it works, and the token
# reaches neither the CDN (nginx answers 403 if it does), nor any output.
hub_publish "$T/hubm" org/gated main "$commit"
owl pull hf://org/gated
expect_rc hub_gated_refused 1
expect_contains hub_gated_message "$ERR" "OWL_HF_TOKEN"
OWL_HF_TOKEN=owl-test-token owl pull hf://org/gated --json
expect_rc hub_gated_with_token 0
expect_not_contains hub_token_not_in_output "$OUT$ERR" "owl-test-token"
if grep -q 'owl-test-token' "$OWL_HOME/owl.db" "$OWL_HOME"/owl.db-wal 2>/dev/null; then
  fail hub_token_not_in_database "token found in owl.db"
else
  pass hub_token_not_in_database
fi
if grep '/cdn/' "$NGX_LOG" | grep -q 'Bearer'; then
  fail hub_token_not_sent_to_cdn "$(grep '/cdn/' "$NGX_LOG" | grep Bearer | head -2)"
else
  pass hub_token_not_sent_to_cdn
fi
grep -q '^302 .*/org/gated/resolve/' "$NGX_LOG" && pass hub_large_files_redirected || fail hub_large_files_redirected "no 302 in the log"

# An entry that the listing names but the server lacks: EntryNotFound.
hub_publish "$T/hubm" org/broken main "$commit"
rm "$T/nginx/hub/org/broken/resolve/$commit/config.json"
owl pull hf://org/broken
expect_rc hub_missing_entry 1
expect_contains hub_missing_entry_message "$ERR" "config.json"
# A file whose bytes differ from the LFS sha256 of the listing: exit 4.
hub_publish "$T/hubm" org/corrupt main "$commit"
f=$(ls "$T/nginx/hub/org/corrupt/resolve/$commit/"*.safetensors | head -1)
printf 'X' | dd of="$f" bs=1 seek=500 conv=notrunc 2>/dev/null
owl pull hf://org/corrupt
expect_rc hub_lfs_mismatch_exit_4 4
expect_contains hub_lfs_mismatch_message "$ERR" "expected sha256"
owl list corrupt --json
expect_eq hub_corrupt_stores_nothing "$(json 'len(d)')" "0"

# A repository with several GGUF quantisations: owl asks which one.
mkdir -p "$T/multi"
"$FX" --out "$T/mq8" --seed 9 --preset tiny --gguf Q8_0 --gguf-only >/dev/null
"$FX" --out "$T/mq4" --seed 9 --preset tiny --gguf Q4_0 --gguf-only >/dev/null
cp "$T/mq8/model.gguf" "$T/multi/tiny.Q8_0.gguf"
cp "$T/mq4/model.gguf" "$T/multi/tiny.Q4_0.gguf"
hub_publish "$T/multi" org/multi main "$commit"
owl pull hf://org/multi
expect_rc hub_several_ggufs_asks 2
expect_contains hub_several_ggufs_lists "$ERR" "tiny.Q4_0.gguf"
owl pull hf://org/multi --include '*Q4_0.gguf' --json
expect_rc hub_include_one_gguf 0
expect_eq hub_include_pulled_one "$(json 'd["files"]')" "1"

# A small (non-LFS) file whose bytes differ from the git blob id the listing gives: exit 4.
hub_publish "$T/hubm" org/smallbad main "$commit"
# (same size, one byte changed: only the git blob id can tell)
python3 - "$T/nginx/hub/org/smallbad/resolve/$commit/config.json" <<'PYEOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read()); b[10] ^= 0x01
open(sys.argv[1], "wb").write(b)
PYEOF
owl pull hf://org/smallbad
expect_rc hub_git_oid_mismatch_exit_4 4
expect_contains hub_git_oid_names_file "$ERR" "config.json"
expect_contains hub_git_oid_reason "$ERR" "git blob sha1"
