#!/usr/bin/env bash
# The audit log's anchor outside the database: logs/audit-head gets one line
# per decision; deleting the newest rows and rewinding the stored head, or
# rewriting rows and recomputing the whole chain, is caught by `owl audit
# verify` (exit 4, naming the gap or the row); an anchor that lags the
# database (a crash after a commit) is accepted; signed checkpoints catch a
# rewind of both the database and the anchor file.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
"$FX" --out "$T/m" --seed 9 --preset tiny --license mit >/dev/null
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
HEADF="$OWL_HOME/logs/audit-head"
DB="$OWL_HOME/owl.db"
nrows() { sqlite3 "$DB" "SELECT COUNT(*) FROM audit_log"; }

for i in 1 2 3 4 5 6; do owl pull "$T/m" --name m; done
expect_rc six_pulls 0
expect_eq six_decisions_audited "$(nrows)" "6"
expect_eq anchor_has_a_line_per_decision "$(wc -l <"$HEADF")" "6"
last=$(tail -1 "$HEADF")
want="6 $(sqlite3 "$DB" "SELECT hash FROM audit_log WHERE id=6") "
expect_eq anchor_line_is_seq_hash_time "${last:0:${#want}}" "$want"
[[ "$last" =~ ^6\ [0-9a-f]{64}\ [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$ ]] && pass anchor_line_format || fail anchor_line_format "$last"
owl audit verify
expect_rc intact_log_verifies 0
expect_contains verify_reports_anchor "$OUT" "logs/audit-head: 6 lines"

# Several owl processes deciding at once: lines may land out of order, each one whole.
for i in 1 2 3 4 5 6 7 8; do "$OWL_BIN" license set m@1 mit --reason "parallel $i" >/dev/null 2>&1 & done
wait
expect_eq parallel_decisions_audited "$(nrows)" "14"
expect_eq parallel_decisions_anchored "$(wc -l <"$HEADF")" "14"
owl audit verify
expect_rc parallel_anchors_verify 0

# The anchor may lag the database (a crash between commit and anchor write).
cp "$HEADF" "$T/head.full"
grep -v '^14 ' "$T/head.full" >"$HEADF"
owl audit verify
expect_rc lagging_anchor_is_accepted 0
expect_contains lagging_anchor_reported "$OUT" "up to row 13 (newer rows are not anchored yet)"
# ...and a last line that a crash cut short is skipped.
cp "$T/head.full" "$HEADF"
printf '15 0123abcd' >>"$HEADF"
owl audit verify
expect_rc torn_last_line_is_skipped 0
cp "$T/head.full" "$HEADF"

# A signed checkpoint, kept outside the home.
openssl genpkey -algorithm ed25519 -out "$T/audit.pem" 2>/dev/null
openssl pkey -in "$T/audit.pem" -pubout -out "$T/audit.pub" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$T/other.pem" 2>/dev/null
openssl pkey -in "$T/other.pem" -pubout -out "$T/other.pub" 2>/dev/null
owl audit checkpoint --sign "$T/audit.pem" --out "$T/ck14.ckpt"
expect_rc checkpoint_signed 0
expect_contains checkpoint_names_row "$OUT" "row 14"
owl audit verify --pub "$T/audit.pub" --checkpoint "$T/ck14.ckpt"
expect_rc checkpoint_verifies 0
expect_contains checkpoint_signature_checked "$OUT" "signatures verified"
owl audit verify --pub "$T/other.pub" --checkpoint "$T/ck14.ckpt"
expect_rc checkpoint_wrong_key_exit_4 4
expect_contains checkpoint_wrong_key_named "$ERR" "does not verify"
sed 's/^seq 14$/seq 13/' "$T/ck14.ckpt" >"$T/forged.ckpt"
owl audit verify --pub "$T/audit.pub" --checkpoint "$T/forged.ckpt"
expect_rc forged_checkpoint_exit_4 4
owl audit checkpoint --sign "$T/audit.pub"
expect_rc checkpoint_needs_private_key 2
owl audit checkpoint --sign "$T/audit.pem"
expect_rc checkpoint_in_home 0
ls "$OWL_HOME"/logs/audit-checkpoints/*.ckpt >/dev/null 2>&1 && pass checkpoint_kept_in_home || fail checkpoint_kept_in_home "no file"
rm -f "$OWL_HOME"/logs/audit-checkpoints/*.ckpt

# --- attacks -------------------------------------------------------------------------------
cp "$DB" "$T/db.clean"
cp "$HEADF" "$T/head.clean"
restore() { rm -f "$DB-wal" "$DB-shm"; cp "$T/db.clean" "$DB"; cp "$T/head.clean" "$HEADF"; }

# 1. Delete the newest rows and rewind the stored head: the chain is consistent, the anchor is not.
sqlite3 "$DB" "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id > 11;
  UPDATE license_meta SET value = '11:' || (SELECT hash FROM audit_log WHERE id = 11) WHERE key = 'audit_head';"
owl audit verify
expect_rc truncated_log_exit_4 4
expect_contains truncated_log_names_gap "$ERR" "rows 12 to 14 were removed"
expect_contains truncated_log_names_anchor "$ERR" "logs/audit-head line"
owl audit verify --json
expect_rc truncated_log_json_exit_4 4
expect_eq truncated_log_json_not_ok "$(json 'd["ok"]')" "False"
owl audit checkpoint --sign "$T/audit.pem" --out "$T/bad.ckpt"
expect_rc checkpoint_refuses_broken_log 4
# 2. ...and truncate the anchor file too: only a checkpoint kept elsewhere still tells.
grep -v -E '^1[234] ' "$T/head.clean" >"$HEADF"
owl audit verify
expect_rc rewound_anchor_undetectable_without_checkpoint 0
owl audit verify --pub "$T/audit.pub" --checkpoint "$T/ck14.ckpt"
expect_rc rewound_anchor_caught_by_checkpoint 4
expect_contains rewound_anchor_checkpoint_named "$ERR" "checkpoint '$T/ck14.ckpt'"
restore

# 3. Rewrite a row and recompute every later hash and the head: the anchored hashes differ.
sqlite3 "$DB" "DROP TRIGGER audit_log_no_update;"
python3 - "$DB" <<'EOF'
import hashlib, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT id, at, actor, action, subject, version_id, use, effect, rule, license,"
                  " evidence FROM audit_log ORDER BY id").fetchall()
prev = "0" * 64
for r in rows:
    r = list(r)
    if r[0] == 3:
        r[7] = "deny"
    h = hashlib.sha256()
    h.update(prev.encode())
    h.update(("\x1f%d\x1f%d\x1f%d\x1f" % (r[0], r[1], r[5])).encode())
    for f in (r[2], r[3], r[4], r[6], r[7], r[8], r[9], r[10], ""):
        h.update((f or "").encode() + b"\x1f")
    new = h.hexdigest()
    db.execute("UPDATE audit_log SET effect=?, prev_hash=?, hash=? WHERE id=?", (r[7], prev, new, r[0]))
    prev = new
db.execute("UPDATE license_meta SET value=? WHERE key='audit_head'", ("%d:%s" % (rows[-1][0], prev),))
db.commit()
EOF
owl audit verify
expect_rc rewritten_chain_exit_4 4
expect_contains rewritten_chain_names_row "$ERR" "row 3"
expect_contains rewritten_chain_says_rewritten "$ERR" "rewritten"
restore

# 4. A malformed anchor line is itself an integrity failure.
sed -i '2s/.*/2 not-a-hash/' "$HEADF"
owl audit verify
expect_rc malformed_anchor_exit_4 4
expect_contains malformed_anchor_named "$ERR" "logs/audit-head line 2"
restore
owl audit verify
expect_rc restored_log_verifies 0

# Syslog anchoring is optional and never breaks a decision when no syslog runs.
OWL_AUDIT_SYSLOG=1 owl license set m@1 mit --reason syslog
expect_rc syslog_anchor_optional 0
expect_eq syslog_anchor_still_in_file "$(wc -l <"$HEADF")" "15"
