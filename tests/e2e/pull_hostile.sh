#!/usr/bin/env bash
# owl pull against a hostile or unlucky server (tests/e2e/hostile_server.py):
# a hub listing that names paths outside the data home, two pulls of one file
# at once, a resume across a file that changed on the server, a trickling
# server, partial downloads that gc reclaims, and a full disk.
. "$(dirname "$0")/lib.sh"

SRV="$T/srv"
SLOG="$T/srv.log"
mkdir -p "$SRV/files" "$SRV/hub"
: >"$SLOG"
port=$(free_port)
python3 "$OWL_ROOT/tests/e2e/hostile_server.py" "$port" "$SRV" "$SLOG" 2>"$T/srv.err" &
spid=$!
on_exit "kill $spid"
BASE="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -s -o /dev/null "$BASE/ping" && break; sleep 0.1; done
export OWL_HF_ENDPOINT="$BASE"
DL="$OWL_HOME/tmp/downloads"
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# mk_st FILE BYTES SEED: a valid safetensors file (one U8 tensor of BYTES random bytes)
mk_st() {
  python3 - "$@" <<'EOF'
import json, random, struct, sys
n, seed = int(sys.argv[2]), int(sys.argv[3])
data = random.Random(seed).randbytes(n)
h = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + data)
EOF
}
# listing ORG/REPO < JSON: the hub's file listing of that repository
listing() { mkdir -p "$SRV/hub/${1%/*}"; cat >"$SRV/hub/$1.json"; }
# check_blob NAME REF SIZE SHA: the version's file, its record and its blob agree
check_blob() {
  owl show "$2" --json
  local rec_size rec_sha blob
  rec_size=$(json 'd["files"][0]["size"]')
  rec_sha=$(json 'd["files"][0]["sha256"]')
  expect_eq "$1_recorded_size" "$rec_size" "$3"
  expect_eq "$1_recorded_sha256" "$rec_sha" "$4"
  blob="$OWL_HOME/blobs/sha256/${rec_sha:0:2}/$rec_sha"
  expect_eq "$1_blob_size" "$(stat -c %s "$blob" 2>/dev/null)" "$3"
  expect_eq "$1_blob_content" "$(sha "$blob" 2>/dev/null)" "$4"
}

# --- a hub listing's paths are checked before any byte is written -----------------
# Every hostile repository lists a harmless README.md first: nothing at all may be
# downloaded, not even that one. The hostile server answers any file request
# with "owned\n" (6 bytes).
hostile() { # NAME PATH-AS-JSON-STRING [FILE THAT MUST NOT APPEAR]
  listing "evil/$1" <<EOF
[{"type": "file", "path": "README.md", "size": 6},
 {"type": "file", "path": $2, "size": 6}]
EOF
  local before
  before=$(wc -l <"$SLOG")
  owl pull "hf://evil/$1"
  if [ "$RC" -ne 0 ]; then pass "hostile_$1_refused"; else fail "hostile_$1_refused" "pull exited 0: $OUT"; fi
  expect_contains "hostile_$1_says_why" "$ERR" "unsafe file path"
  local fetched
  fetched=$(tail -n +"$((before + 1))" "$SLOG" | grep -v ' /api/models/' | head -3)
  [ -z "$fetched" ] && pass "hostile_$1_downloads_nothing" || fail "hostile_$1_downloads_nothing" "$fetched"
  if [ -n "${3:-}" ]; then
    [ ! -e "$3" ] && pass "hostile_$1_writes_nothing_outside" || fail "hostile_$1_writes_nothing_outside" "$3 was created"
  fi
  [ -z "$(ls "$DL" 2>/dev/null)" ] && pass "hostile_$1_leaves_no_partial" || fail "hostile_$1_leaves_no_partial" "$(ls "$DL")"
}
# The staging folder is $OWL_HOME/tmp/stage-P-N/files: four ".." reach $T.
hostile dotdot '"../../../../escaped-dotdot"' "$T/escaped-dotdot"
hostile nested '"sub/../../../../../escaped-nested"' "$T/escaped-nested"
hostile absolute "\"$T/escaped-absolute\"" "$T/escaped-absolute"
hostile backslash '"..\\..\\..\\..\\escaped-backslash"'
hostile control '"bad\u0007name"'
hostile dot '"./config.json"'
hostile long_component "\"$(printf 'a%.0s' $(seq 300))\""
hostile long_path "\"$(printf 'abcdefgh/%.0s' $(seq 120))x\""
ls "$T"/escaped-* >/dev/null 2>&1 && fail hostile_nothing_escaped "$(ls "$T"/escaped-*)" || pass hostile_nothing_escaped
# The same path twice would make two downloads share one file.
listing evil/dup <<EOF
[{"type": "file", "path": "README.md", "size": 6}, {"type": "file", "path": "README.md", "size": 6}]
EOF
owl pull hf://evil/dup
if [ "$RC" -ne 0 ]; then pass hostile_duplicate_refused; else fail hostile_duplicate_refused "pull exited 0"; fi
expect_contains hostile_duplicate_named "$ERR" "README.md"
# A URL's file name comes from the URL as given; ".." is refused.
owl pull "$BASE/files/.."
if [ "$RC" -ne 0 ]; then pass url_dotdot_name_refused; else fail url_dotdot_name_refused "pull exited 0"; fi
expect_contains url_dotdot_name_says_why "$ERR" "unsafe file name"

# --- two pulls of the same file into one home at once ------------------------------
mkdir -p "$SRV/hub/slow/one"
mk_st "$SRV/hub/slow/one/model.safetensors" $((3 << 20)) 1
hsize=$(stat -c %s "$SRV/hub/slow/one/model.safetensors")
hsum=$(sha "$SRV/hub/slow/one/model.safetensors")
listing slow/one <<EOF
[{"type": "file", "path": "model.safetensors", "size": $hsize, "lfs": {"oid": "$hsum", "size": $hsize}}]
EOF
mk_st "$SRV/files/u.safetensors" $((3 << 20)) 2
usize=$(stat -c %s "$SRV/files/u.safetensors")
usum=$(sha "$SRV/files/u.safetensors")
concurrent() { # LABEL SOURCE SIZE SHA
  "$OWL_BIN" pull "$2" --name "$1-a" >"$T/$1-a.out" 2>"$T/$1-a.err" &
  local pa=$!
  "$OWL_BIN" pull "$2" --name "$1-b" >"$T/$1-b.out" 2>"$T/$1-b.err" &
  local pb=$! ra rb
  wait "$pa"; ra=$?
  wait "$pb"; rb=$?
  if [ "$ra" -eq 0 ] || [ "$rb" -eq 0 ]; then pass "$1_one_pull_succeeds"; else fail "$1_one_pull_succeeds" "exits $ra $rb: $(cat "$T/$1-a.err" "$T/$1-b.err")"; fi
  local x r
  for x in a b; do
    r=$ra; [ "$x" = b ] && r=$rb
    if [ "$r" -eq 0 ]; then
      check_blob "$1_$x" "$1-$x" "$3" "$4"
    else
      # a clean failure: a message, and no version
      [ -s "$T/$1-$x.err" ] && pass "$1_${x}_fails_with_message" || fail "$1_${x}_fails_with_message" "exit $r, no message"
      owl list "$1-$x" --json
      expect_eq "$1_${x}_failure_registers_nothing" "$(json 'len(d)')" "0"
    fi
  done
  owl verify
  expect_rc "$1_verify_passes" 0
}
concurrent hubsame hf://slow/one "$hsize" "$hsum"
concurrent urlsame "$BASE/slow/u.safetensors" "$usize" "$usum"

# --- a resume across a file that changed on the server --------------------------------
# The first answer drops half-way; the file then changes (new ETag). A resume
# must send If-Range, get the whole new file, and register exactly it.
mk_st "$SRV/files/mid.safetensors" $((1 << 20)) 3
mk_st "$SRV/files/mid.safetensors.new" $((1 << 20)) 4
owl pull "$BASE/change/mid.safetensors" --name mid
expect_rc changed_file_pull 0
expect_contains changed_file_no_digest_note "$OUT" "checked only against itself"
check_blob changed_file mid "$(stat -c %s "$SRV/files/mid.safetensors.new")" "$(sha "$SRV/files/mid.safetensors.new")"
resume_line=$(grep '^GET /change/mid.safetensors range=bytes' "$SLOG" | head -1)
expect_contains changed_file_resume_sends_if_range "$resume_line" 'if-range="'
# No ETag, no Last-Modified: nothing to resume against, so the retry starts over.
mk_st "$SRV/files/nv.safetensors" $((1 << 20)) 5
mk_st "$SRV/files/nv.safetensors.new" $((1 << 20)) 6
owl pull "$BASE/noval/nv.safetensors" --name nv
expect_rc no_validator_pull 0
check_blob no_validator nv "$(stat -c %s "$SRV/files/nv.safetensors.new")" "$(sha "$SRV/files/nv.safetensors.new")"
n=$(grep -c '^GET /noval/nv.safetensors range=bytes' "$SLOG")
expect_eq no_validator_never_sends_range "$n" "0"
# A server that ignores If-Range answers with the new file's bytes at our
# offset: its ETag gives it away, and the pull starts over.
mk_st "$SRV/files/nai.safetensors" $((1 << 20)) 13
mk_st "$SRV/files/nai.safetensors.new" $((1 << 20)) 14
owl pull "$BASE/naive/nai.safetensors" --name nai
expect_rc naive_server_pull 0
check_blob naive_server nai "$(stat -c %s "$SRV/files/nai.safetensors.new")" "$(sha "$SRV/files/nai.safetensors.new")"
expect_eq naive_server_answer_refused "$(grep -c '^GET /naive/nai.safetensors range=- if-range=- 200' "$SLOG")" "2"
# Across processes: a pull killed mid-file, the file replaced, the next pull.
mk_st "$SRV/files/x.safetensors" $((3 << 20)) 7
"$OWL_BIN" pull "$BASE/slow/x.safetensors" --name x >/dev/null 2>&1 &
xp=$!
sleep 1.2
kill -9 "$xp"; wait "$xp" 2>/dev/null
mk_st "$SRV/files/x.safetensors" $((3 << 20)) 8
touch -d '+1 minute' "$SRV/files/x.safetensors"
owl pull "$BASE/slow/x.safetensors" --name x
expect_rc changed_after_kill_pull 0
check_blob changed_after_kill x "$(stat -c %s "$SRV/files/x.safetensors")" "$(sha "$SRV/files/x.safetensors")"
# Ctrl-C (SIGINT) stops a pull at its next check: a clear message, nothing
# registered, the partial file kept, and the next pull resumes it.
mk_st "$SRV/files/c.safetensors" $((3 << 20)) 15
"$OWL_BIN" pull "$BASE/slow/c.safetensors" --name c >"$T/c.out" 2>"$T/c.err" &
cp=$!
sleep 1
kill -INT "$cp"; wait "$cp"; crc=$?
[ "$crc" -eq 1 ] && grep -q "cancelled" "$T/c.err" && pass interrupted_pull_cancelled || fail interrupted_pull_cancelled "exit $crc: $(tail -2 "$T/c.err")"
owl list
expect_not_contains interrupted_pull_registers_nothing "$OUT" "c@"
ls "$OWL_HOME"/tmp/downloads/*.part >/dev/null 2>&1 && pass interrupted_pull_keeps_partial || fail interrupted_pull_keeps_partial "no partial download left"
owl pull "$BASE/slow/c.safetensors" --name c
expect_rc interrupted_pull_resumes 0
check_blob interrupted_resumed c "$(stat -c %s "$SRV/files/c.safetensors")" "$(sha "$SRV/files/c.safetensors")"
grep -q '^GET /slow/c.safetensors range=bytes=[1-9]' "$SLOG" && pass interrupted_pull_resumed_with_range || fail interrupted_pull_resumed_with_range "$(grep c.safetensors "$SLOG")"
# With --sha256 the digest pins the file: no "checked only against itself".
owl pull "$BASE/files/x.safetensors" --name x2 --sha256 "$(sha "$SRV/files/x.safetensors")"
expect_rc pinned_pull 0
expect_not_contains pinned_pull_no_note "$OUT" "checked only against itself"

# --- a trickling server ----------------------------------------------------------------
mk_st "$SRV/files/t.safetensors" 65536 9
start=$SECONDS
OWL_MIN_RATE_WINDOW=2 timeout 45 "$OWL_BIN" pull "$BASE/trickle/t.safetensors" --name t >"$T/t.out" 2>"$T/t.err"
rc=$?
took=$((SECONDS - start))
expect_eq trickle_fails "$rc" "1"
[ "$took" -lt 30 ] && pass trickle_fails_quickly || fail trickle_fails_quickly "took ${took}s"
expect_contains trickle_names_server "$(cat "$T/t.err")" "127.0.0.1:$port"
expect_contains trickle_says_min_rate "$(cat "$T/t.err")" "slower than 10 KiB/s"
owl pull "$BASE/files/t.safetensors" --name t --min-rate lots
expect_rc min_rate_bad_value 2
owl pull "$BASE/files/t.safetensors" --name t --min-rate 100k
expect_rc min_rate_flag 0

# --- gc reclaims partial downloads no running pull owns --------------------------------
mk_st "$SRV/files/k.safetensors" $((3 << 20)) 10
mk_st "$SRV/files/r.safetensors" $((8 << 20)) 11
"$OWL_BIN" pull "$BASE/slow/k.safetensors" --name k >/dev/null 2>&1 &
kp=$!
sleep 1.2
kill -9 "$kp"; wait "$kp" 2>/dev/null
dead_parts=$(ls "$DL"/*.part 2>/dev/null | tr '\n' ' ')
dead_bytes=$(cat $dead_parts 2>/dev/null | wc -c)
[ "$dead_bytes" -gt 0 ] && pass killed_pull_left_partial || fail killed_pull_left_partial "no partial in $DL"
"$OWL_BIN" pull "$BASE/slow/r.safetensors" --name r >"$T/r.out" 2>"$T/r.err" &
rp=$!
sleep 1.2
live_part=""
for p in "$DL"/*.part; do [[ " $dead_parts " == *" $p "* ]] || live_part=$p; done
[ -n "$live_part" ] && pass running_pull_has_partial || fail running_pull_has_partial "$(ls -l "$DL")"
owl gc --dry-run --json
expect_eq gc_dry_run_counts_partials "$(json 'd["partial_bytes_freed"]')" "$dead_bytes"
for p in $dead_parts; do [ -e "$p" ] || fail gc_dry_run_keeps_partials "$p removed"; done
owl gc --json
expect_rc gc_with_partials 0
expect_eq gc_reports_partial_bytes "$(json 'd["partial_bytes_freed"]')" "$dead_bytes"
left=""
for p in $dead_parts; do [ -e "$p" ] && left="$left $p"; done
[ -z "$left" ] && pass gc_removes_dead_partials || fail gc_removes_dead_partials "left:$left"
if ! kill -0 "$rp" 2>/dev/null; then
  fail gc_keeps_running_partial "the running pull ended before gc could be checked against it"
elif [ -e "$live_part" ]; then
  pass gc_keeps_running_partial
else
  fail gc_keeps_running_partial "$live_part removed"
fi
wait "$rp"
expect_eq running_pull_survives_gc "$?" "0"
owl verify
expect_rc verify_after_gc 0
owl gc
expect_contains gc_human_output "$OUT" "partial downloads"

# --- a full disk -----------------------------------------------------------------------
mkdir -p "$T/small"
if [ "$(id -u)" != 0 ]; then
  echo "skip disk_full: needs root to mount a small tmpfs"
elif ! mount -t tmpfs -o size=2m tmpfs "$T/small" 2>/dev/null; then
  echo "skip disk_full: cannot mount a tmpfs here"
else
  on_exit "umount '$T/small'"
  mk_st "$SRV/files/full.safetensors" $((3 << 20)) 12
  OWL_HOME="$T/small/home" owl pull "$BASE/files/full.safetensors" --name full
  expect_rc disk_full_fails 1
  expect_contains disk_full_message "$ERR" "no space left on device while writing"
  expect_contains disk_full_free_and_needed "$ERR" "MiB free"
  expect_not_contains disk_full_not_curls_words "$ERR" "Failure writing output"
  umount "$T/small"
fi
