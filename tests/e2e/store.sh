#!/usr/bin/env bash
# The store under stress: a lost or truncated owl.db (refused, recovered, gc
# keeps the blobs), writers waiting for another process's lock, a concurrent
# `owl tag` during a many-file commit, archives with very many entries,
# duplicate entries, hostile bundle manifests and a read-only data home.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
"$FX" --out "$T/m" --seed 5 --preset tiny --license apache-2.0 --gguf Q8_0 >/dev/null
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
nblobs() { find "$OWL_HOME/blobs" -type f | wc -l; }
now() { date +%s.%N; }
elapsed() { python3 -c "print(round($2 - $1, 2))"; }

# An archive of the fixture plus N small distinct files (one blob each).
# mkarchive N OUT [extra python statements run with tarfile `t` open]
mkarchive() {
  python3 - "$1" "$2" "$T/m" "${3:-}" <<'EOF'
import io, os, sys, tarfile
n, out, src, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def add(t, name, data):
    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
with tarfile.open(out, 'w') as t:
    for f in sorted(os.listdir(src)):
        if f != 'model.gguf':
            t.add(os.path.join(src, f), arcname='mdl/' + f)
    for i in range(n):
        add(t, 'mdl/extra/%03d/f%06d.txt' % (i // 1000, i), ('file %d\n' % i).encode())
    exec(extra)
EOF
}

# --- a lost owl.db ----------------------------------------------------------
owl pull "$T/m" --name tiny -q
owl pull "$T/m/model.gguf" --name tinyq -q
expect_rc lost_setup_pulls 0
before=$(nblobs)
rm -f "$OWL_HOME"/owl.db "$OWL_HOME"/owl.db-wal "$OWL_HOME"/owl.db-shm
owl list
expect_rc lost_db_list_refused 1
expect_contains lost_db_says_what_happened "$ERR" "database owl.db is missing: it was lost or truncated"
expect_contains lost_db_says_what_to_do "$ERR" "owl recover"
owl gc
expect_rc lost_db_gc_refused 1
expect_eq lost_db_gc_deletes_no_blob "$(nblobs)" "$before"
[ ! -e "$OWL_HOME/owl.db" ] && pass lost_db_creates_no_database || fail lost_db_creates_no_database "owl.db was created"
: > "$OWL_HOME/owl.db"
owl gc
expect_rc truncated_db_gc_refused 1
expect_contains truncated_db_says_empty "$ERR" "empty (0 bytes)"
expect_eq truncated_db_gc_deletes_no_blob "$(nblobs)" "$before"

owl recover --json
expect_rc recover 0
expect_eq recover_counts_every_blob "$(json 'd["blobs"]')" "$before"
expect_eq recover_gguf_is_its_own_version "$(json 'd["gguf"]')" "1"
rmodel=$(json 'd["model"]')
owl list "$rmodel" --json
expect_eq recover_lists_versions "$(json 'sorted(v["format"] for v in d)')" "['files', 'gguf']"
owl gc
expect_rc gc_after_recover 0
expect_eq gc_after_recover_keeps_blobs "$(nblobs)" "$before"
owl verify
expect_rc verify_after_recover 0
owl list "$rmodel" --json
gref=$(json '[v["ref"] for v in d if v["format"] == "gguf"][0]')
owl run "$gref" "hello" --max-tokens 2 --temperature 0
expect_rc recovered_gguf_runs 0
owl recover
expect_contains recover_twice_finds_nothing "$OUT" "nothing to recover"

# An owl.db that is not a database is moved aside by recover, never overwritten.
printf 'this is not sqlite %.0s' $(seq 40) > "$OWL_HOME/owl.db"
rm -f "$OWL_HOME"/owl.db-wal "$OWL_HOME"/owl.db-shm
owl list
expect_rc garbage_db_refused 1
expect_contains garbage_db_names_recover "$ERR" "owl recover"
owl recover -q
expect_rc recover_garbage_db 0
ls "$OWL_HOME"/owl.db.broken-* >/dev/null 2>&1 && pass recover_keeps_broken_db || fail recover_keeps_broken_db "$(ls "$OWL_HOME")"

# --- writers wait for another process's lock --------------------------------
export OWL_HOME="$T/h2"
owl pull "$T/m" --name tiny -q
owl pull "$T/m" --name tiny -q
python3 - "$OWL_HOME/owl.db" 11 > "$T/holder.out" <<'EOF' &
import sqlite3, sys, time, os
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print(os.getpid(), flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
EOF
holder=$!
for _ in $(seq 50); do [ -s "$T/holder.out" ] && break; sleep 0.1; done
t0=$(now)
owl tag tiny@1 waited
t1=$(now)
wait $holder
expect_rc tag_waits_for_lock_held_11s 0
expect_contains tag_says_it_waits "$ERR" "waiting for another owl (pid $(cat "$T/holder.out"))"
echo "INFO owl tag waited $(elapsed "$t0" "$t1") s for an 11 s lock"
owl show tiny:waited
expect_rc tag_set_after_wait 0

# --- a concurrent `owl tag` during a many-file commit -----------------------
mkarchive 3000 "$T/a3000.tar"
t0=$(now)
"$OWL_BIN" pull "$T/a3000.tar" --name big -q > "$T/big.out" 2> "$T/big.err" &
pull=$!
max=0; n=0; tagfail=0
while kill -0 $pull 2>/dev/null; do
  a=$(date +%s%N)
  # Alternating versions: every call moves the tag, so every call writes.
  "$OWL_BIN" tag "tiny@$((n % 2 + 1))" moving -q 2>>"$T/tag.err" || tagfail=$((tagfail + 1))
  b=$(date +%s%N)
  [ $((b - a)) -gt $max ] && max=$((b - a))
  n=$((n + 1))
done
wait $pull; prc=$?
t1=$(now)
max=$(python3 -c "print(round($max / 1e9, 3))")
[ $prc -eq 0 ] && pass many_file_pull || fail many_file_pull "exit $prc: $(cat "$T/big.err")"
expect_eq concurrent_tags_all_succeed "$tagfail" "0"
python3 -c "import sys; sys.exit(0 if $max < 5 else 1)" && pass concurrent_tag_waits_briefly || fail concurrent_tag_waits_briefly "longest wait $max s"
echo "INFO 3000-file archive: pull $(elapsed "$t0" "$t1") s; $n concurrent 'owl tag' calls, longest $max s"

# Batched syncing: one syncfs per commit phase, not an fsync per file.
if command -v strace >/dev/null; then
  export OWL_HOME="$T/h3"
  strace -f -c -e trace=fsync,fdatasync,syncfs -o "$T/strace.txt" "$OWL_BIN" pull "$T/a3000.tar" --name big -q >/dev/null 2>&1
  nsync=$(awk '$NF=="fsync" || $NF=="fdatasync" {n += $(NF-1)} END {print n + 0}' "$T/strace.txt")
  [ "$nsync" -lt 100 ] && pass many_file_pull_syncs_in_batches || fail many_file_pull_syncs_in_batches "$nsync fsync calls for 3006 files"
else
  echo "SKIP many_file_pull_syncs_in_batches: strace is not installed"
fi

# --- archives with very many entries ----------------------------------------
export OWL_HOME="$T/h4"
owl pull "$T/m" --name tiny -q
before=$(nblobs)
OWL_MAX_ARCHIVE_ENTRIES=500 owl pull "$T/a3000.tar" --name big
expect_rc entry_limit_refused 1
expect_contains entry_limit_names_limit "$ERR" "more than 500 entries (OWL_MAX_ARCHIVE_ENTRIES)"
expect_eq entry_limit_stores_nothing "$(nblobs)" "$before"
mkarchive 10000 "$T/a10000.tar"
t0=$(now)
owl pull "$T/a10000.tar" --name big10k -q
t1=$(now)
expect_rc pull_10000_entries 0
after10k=$(nblobs)
python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 60 else 1)" && pass pull_10000_entries_under_60s || fail pull_10000_entries_under_60s "took $(elapsed "$t0" "$t1") s"
echo "INFO 10000-entry archive pulled (extract + validate + commit) in $(elapsed "$t0" "$t1") s"

# --- duplicate and hostile entries -------------------------------------------
mkarchive 0 "$T/dup.tar" "add(t, 'mdl/config.json', b'{}')"
owl pull "$T/dup.tar" --name dup
expect_rc duplicate_entry_exit_4 4
expect_contains duplicate_entry_named "$ERR" "config.json' appears twice"
mkarchive 0 "$T/nl.tar" "add(t, 'mdl/a\nb.json', b'{}')"
owl pull "$T/nl.tar" --name nl
expect_rc control_char_entry_exit_4 4
mkarchive 0 "$T/long.tar" "add(t, 'mdl/' + 'x' * 1100, b'{}')"
owl pull "$T/long.tar" --name long
expect_rc overlong_entry_exit_4 4
mkarchive 0 "$T/filedir.tar" "add(t, 'mdl/config.json/x', b'{}')"
owl pull "$T/filedir.tar" --name filedir
expect_rc file_then_folder_entry_exit_4 4
expect_eq hostile_entries_store_nothing "$(nblobs)" "$after10k"

# A bundle whose manifest lists a file twice, or a path with a NUL byte.
owl export tiny@1 "$T/b.tar"
expect_rc export_for_manifest_tests 0
for kind in dup nul; do
  python3 - "$T/b.tar" "$T/b-$kind.tar" "$kind" <<'EOF'
import io, json, sys, tarfile
src, out, kind = sys.argv[1:]
with tarfile.open(src) as s, tarfile.open(out, 'w') as t:
    for m in s.getmembers():
        data = s.extractfile(m).read()
        if m.name.endswith('manifest.json'):
            d = json.loads(data)
            if kind == 'dup':
                d['files'].append(dict(d['files'][0]))
            else:
                d['files'][0]['path'] = d['files'][0]['path'] + '\u0000../../evil'
            data = json.dumps(d).encode()
        m.size = len(data)
        t.addfile(m, io.BytesIO(data))
EOF
  owl import "$T/b-$kind.tar" --name "m$kind"
  expect_rc "manifest_${kind}_exit_4" 4
done

# --- a read-only data home ----------------------------------------------------
export OWL_HOME="$T/h5"
owl pull "$T/m" --name tiny -q
owl pull "$T/m/model.gguf" --name tinyq -q
ro_script="$T/ro.sh"
cat > "$ro_script" <<EOF
cd "$T"
ro() { name=\$1; shift; "$OWL_BIN" "\$@" > "$T/ro-\$name.out" 2> "$T/ro-\$name.err"; echo \$? > "$T/ro-\$name.rc"; }
ro list list --json
ro show show tiny@1
ro verify verify
ro license license show tiny@1
ro run run tinyq@1 hello --max-tokens 2 --temperature 0
ro tag tag tiny@1 x
ro policy policy add r --effect allow
ro pull pull "$T/m" --name again
EOF
ro_mode=""
if [ "$(id -u)" = 0 ]; then
  if unshare -m --propagation private true 2>/dev/null; then
    unshare -m --propagation private bash -c "mount --bind '$OWL_HOME' '$OWL_HOME' && mount -o remount,ro,bind '$OWL_HOME' && bash '$ro_script'" && ro_mode="a read-only bind mount"
  fi
elif [ "$(id -u)" != 0 ]; then
  chmod -R a-w "$OWL_HOME" && bash "$ro_script" && ro_mode="chmod -R a-w"
  chmod -R u+w "$OWL_HOME"
fi
if [ -z "$ro_mode" ]; then
  echo "SKIP read_only_home: running as root without mount namespaces (unshare -m), so no read-only home can be made"
else
  echo "INFO read-only home made with $ro_mode"
  rc_of() { cat "$T/ro-$1.rc" 2>/dev/null; }
  expect_eq ro_list_works "$(rc_of list)" 0
  expect_contains ro_list_shows_model "$(cat "$T/ro-list.out")" '"tiny@1"'
  expect_eq ro_show_works "$(rc_of show)" 0
  expect_eq ro_verify_works "$(rc_of verify)" 0
  expect_eq ro_license_show_works "$(rc_of license)" 0
  expect_eq ro_run_works "$(rc_of run)" 0
  expect_eq ro_tag_refused "$(rc_of tag)" 1
  expect_contains ro_tag_says_why "$(cat "$T/ro-tag.err")" "is read-only: 'owl tag' needs write access"
  expect_contains ro_policy_says_why "$(cat "$T/ro-policy.err")" "is read-only: 'owl policy add' needs write access"
  expect_contains ro_pull_says_why "$(cat "$T/ro-pull.err")" "is read-only: 'owl pull' needs write access"
  [ "$(cat "$T"/ro-*.err | grep -c 'unable to open database file')" = 0 ] && pass ro_no_sqlite_jargon || fail ro_no_sqlite_jargon "$(cat "$T"/ro-*.err)"
fi
