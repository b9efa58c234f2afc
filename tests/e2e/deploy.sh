#!/usr/bin/env bash
# Deployments end to end: create, set, history, pin and unpin, rollback, tag
# following through owl tag, adapters that must derive from the model, the
# license gate (a denial creates nothing), owl rm refused while a deployment
# uses the version, --json everywhere, API keys, and kill -9 during changes.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }

"$FX" --out "$T/m1" --seed 1 --preset tiny --quiet >/dev/null
"$FX" --out "$T/m2" --seed 2 --preset tiny --quiet >/dev/null
"$FX" --out "$T/other" --seed 3 --preset tiny --quiet >/dev/null
# A LoRA adapter folder for the tiny preset (PEFT's layout; owl registers it
# as an adapter derived from its --base).
python3 - "$T/lora" <<'EOF'
import json, os, struct, sys
d = sys.argv[1]
os.makedirs(d)
hdr = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
       {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]},
       "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
       {"dtype": "F32", "shape": [64, 4], "data_offsets": [1024, 2048]}}
h = json.dumps(hdr).encode()
with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h); f.write(b"\0" * 2048)
json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
          open(os.path.join(d, "adapter_config.json"), "w"))
EOF
owl pull "$T/m1" --name tiny --quiet
owl pull "$T/m2" --name tiny --quiet
owl pull "$T/other" --name other --quiet
owl pull "$T/lora" --name tiny-lora --base tiny@1 --quiet
expect_rc fixtures_pulled 0

# --- create, show, list --------------------------------------------------------------
owl deploy create web --model tiny@1 --adapter tiny-lora@1 --ctx 128 --use internal --port 8123 \
  --reason "first release" --json
expect_rc create 0
expect_eq create_revision "$(json 'd["revision"]')" "1"
expect_eq create_model "$(json 'd["current"]["model"]')" "tiny@1"
expect_eq create_adapter "$(json 'd["current"]["adapters"][0]["ref"]')" "tiny-lora@1"
expect_eq create_port "$(json 'd["current"]["port"]')" "8123"
expect_contains create_license_recorded "$(json 'd["current"]["license"]')" "tiny@1: allow"
digest1=$(json 'd["current"]["model_digest"]')
owl deploy show web
expect_contains show_text "$OUT" "tiny-lora@1  sha256:"
owl deploy create web --model tiny@1
expect_rc create_twice_refused 1
owl deploy create web2 --model other@1 --adapter tiny-lora@1
expect_rc foreign_adapter_refused 2
expect_contains foreign_adapter_names_both "$ERR" "tiny-lora@1 derives from tiny@1, not from the deployment's model other@1"
owl deploy create web3 --model tiny-lora@1
expect_rc adapter_as_model_refused 2
owl deploy create web4
expect_rc create_needs_model 2
owl deploy list --json
expect_eq list_json "$(json '[x["name"] for x in d]')" "['web']"

# --- set, history ----------------------------------------------------------------------------
owl deploy set web --model tiny@2 --no-adapters --reason "new weights"
expect_rc set_new_model 0
expect_contains set_says_revision "$OUT" "revision 2 serves tiny@2"
owl deploy set web --model tiny@1 --reason "keep adapters?"
owl deploy set web --tp 1 --reason "tp"
owl deploy history web
expect_rc history 0
expect_contains history_header "$OUT" "REV ACTION"
expect_contains history_why "$OUT" "new weights"
expect_contains history_license "$OUT" "license: tiny@2: allow"
expect_contains history_adapter_digest "$OUT" "tiny-lora@1("
owl deploy history web --json
expect_eq history_json_events "$(json '[e["action"] for e in d["events"]]')" "['create', 'set', 'set', 'set']"
expect_eq history_json_digest "$(json 'd["revisions"][0]["model_digest"]')" "$digest1"
expect_eq history_json_who "$(json 'd["events"][0]["who"]')" "$(id -un)"

# --- pin, unpin, rollback --------------------------------------------------------------------
owl deploy pin web --reason "freeze for the audit"
expect_rc pin 0
owl deploy set web --ctx 64
expect_rc pinned_set_refused 1
expect_contains pinned_refusal_says_who "$ERR" "is pinned (by $(id -un)"
owl deploy rollback web
expect_rc pinned_rollback_refused 1
owl deploy show web --json
expect_eq pinned_in_json "$(json 'd["pinned"]')" "True"
expect_eq pin_reason_in_json "$(json 'd["pin"]["reason"]')" "freeze for the audit"
owl deploy unpin web
expect_rc unpin 0
owl deploy rollback web --reason "bad answers" --json
expect_rc rollback_previous 0
expect_eq rollback_to_previous "$(json 'd["revision"]')" "3"
owl deploy rollback web --to 1 --json
expect_eq rollback_to_1 "$(json 'd["revision"]')" "1"
expect_eq rollback_restores_adapter "$(json 'd["current"]["adapters"][0]["ref"]')" "tiny-lora@1"
owl deploy rollback web --to 99
expect_rc rollback_unknown_revision 1
expect_contains rollback_unknown_lists "$ERR" "revisions: 1, 2, 3, 4"
owl deploy history web --json
expect_eq history_after "$(json '[(e["action"], e["revision"]) for e in d["events"]][-4:]')" "[('pin', 4), ('unpin', 4), ('rollback', 3), ('rollback', 1)]"
expect_eq rollback_made_no_revision "$(json 'len(d["revisions"])')" "4"

# --- tag following -----------------------------------------------------------------------------
owl tag tiny@1 stable
owl deploy create svc --model tiny:stable --reason "follows stable"
expect_rc create_following 0
owl tag tiny@2 stable
expect_contains tag_moves_follower "$OUT" "deployment svc follows it"
owl deploy show svc --json
expect_eq follower_moved "$(json 'd["current"]["model"]')" "tiny@2"
expect_eq follower_revision "$(json 'd["revision"]')" "2"
expect_eq follower_follows "$(json 'd["follows"]')" "tiny:stable"
owl deploy pin svc
owl tag tiny@1 stable
owl deploy show svc --json
expect_eq pinned_does_not_follow "$(json 'd["current"]["model"]')" "tiny@2"
owl deploy unpin svc
owl deploy show svc --json
expect_eq unpinned_follows "$(json 'd["current"]["model"]')" "tiny@1"
owl deploy history svc --json
expect_eq follow_events "$(json '[e["action"] for e in d["events"]]')" "['create', 'follow', 'pin', 'unpin', 'follow']"
# A pull that sets the tag moves the follower too (its --json stays JSON).
owl pull "$T/m2" --name tiny --tag stable --json
expect_eq pull_tag_json_intact "$(json 'd["version"]')" "3"
expect_contains pull_tag_moves_follower "$ERR" "deployment svc follows it"
owl deploy show svc --json
expect_eq follower_moved_by_pull "$(json 'd["current"]["model"]')" "tiny@3"

# --- owl rm is refused while a revision uses the version -----------------------------------------
owl tag --delete tiny:stable
owl rm tiny@2
expect_rc rm_refused 3
expect_contains rm_names_deployments "$ERR" "deployments svc, web use it"
owl rm tiny-lora@1
expect_rc rm_adapter_refused 3
expect_contains rm_adapter_names "$ERR" "deployment web uses it"
owl rm other@1
expect_rc rm_unused_allowed 0

# --- the license gate: a denial creates nothing and is audited --------------------------------
owl policy add no-research-deploys --effect deny --action deploy --use research --priority 2000 \
  --message "research deployments need the lab's cluster"
owl deploy create lab --model tiny@1 --use research
expect_rc denied_create 3
expect_contains denied_create_says_nothing "$ERR" "No deployment was created"
owl deploy show lab
expect_rc denied_create_left_nothing 1
owl deploy set web --use research
expect_rc denied_set 3
owl deploy history web --json
expect_eq denied_set_made_no_revision "$(json 'len(d["revisions"])')" "4"
owl audit list --json
expect_eq denials_audited "$(json 'len([r for r in d if r["action"]=="deploy" and r["effect"]=="deny"])')" "2"
owl audit verify
expect_rc audit_chain_intact 0
owl deploy set web --use bogus
expect_rc bad_use 2

# --- keys ------------------------------------------------------------------------------------
owl keys list --json
expect_eq no_keys "$OUT" "[]"
owl keys create --name ci
expect_rc key_create 0
key=$OUT
[[ "$key" =~ ^owl-[0-9a-f]{8}-[0-9a-f]{64}$ ]] && pass key_format || fail key_format "$key"
expect_contains key_shown_once_note "$ERR" "shown this once"
owl keys list
expect_contains key_listed_by_id "$OUT" "${key:0:12}"
expect_not_contains key_not_listed "$OUT" "$key"
if python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); sys.exit(1 if any(sys.argv[2] in str(v) for t in ('api_keys',) for r in c.execute('select * from '+t) for v in r) else 0)" "$OWL_HOME/owl.db" "$key"; then
  pass key_not_in_clear
else
  fail key_not_in_clear "the key is in owl.db"
fi
grep -rqF "$key" "$OWL_HOME" && fail key_not_in_home "found in the home" || pass key_not_in_home
owl keys revoke "${key:0:12}"
expect_rc key_revoke 0
owl keys list --json
expect_eq key_revoked "$(json 'd[0]["revoked"]')" "True"
owl keys create --json
expect_eq key_json "$(json 'd["key"].startswith(d["id"] + "-")')" "True"
owl keys revoke owl-nothex
expect_rc key_revoke_bad_id 2

# --- kill -9 during changes loses nothing --------------------------------------------------------
owl deploy create crash --model tiny@1 --quiet
( for i in $(seq 1 400); do "$OWL_BIN" deploy set crash --ctx $((i % 7 + 1)) --reason "r$i" --quiet >/dev/null 2>&1; done ) &
loop=$!
# Killed once a few changes are in, so that there is something to lose.
for _ in $(seq 1 100); do
  owl deploy show crash --json
  [ "$(json 'd["revision"]')" -ge 3 ] 2>/dev/null && break
  sleep 0.1
done
# The loop's current owl, killed wherever it is (often inside its transaction).
pkid=$(pgrep -P "$loop" -n owl || true)
[ -n "$pkid" ] && kill -9 "$pkid" 2>/dev/null
kill -9 "$loop" 2>/dev/null; wait "$loop" 2>/dev/null
pkid=$(pgrep -P "$loop" owl || true)
[ -n "$pkid" ] && kill -9 $pkid 2>/dev/null
sleep 0.2
owl deploy history crash --json
expect_rc history_after_kill 0
python3 - "$OUT" <<'EOF' && pass kill_left_history_consistent || fail kill_left_history_consistent "$OUT"
import json, sys
d = json.loads(sys.argv[1])
revs = [r["revision"] for r in d["revisions"]]
ev = [e for e in d["events"] if e["action"] in ("create", "set")]
ok = revs == list(range(1, len(revs) + 1)) and len(ev) == len(revs) and d["current"] == revs[-1]
ok = ok and all(e["revision"] == r for e, r in zip(ev, revs)) and len(revs) > 1
sys.exit(0 if ok else 1)
EOF
owl audit verify
expect_rc audit_intact_after_kill 0
python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])" "$OWL_HOME/owl.db" >"$T/ic"
expect_eq db_integrity_after_kill "$(cat "$T/ic")" "ok"
# A change killed while it waits for the lock another process holds leaves nothing.
owl deploy history crash --json
before=$(json 'len(d["events"])')
python3 - "$OWL_HOME/owl.db" "$T/locked" <<'EOF' &
import sqlite3, sys, time, os
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("begin immediate")
open(sys.argv[2], "w").close()
time.sleep(4)
c.execute("rollback")
EOF
holder=$!
for _ in $(seq 1 50); do [ -e "$T/locked" ] && break; sleep 0.1; done
"$OWL_BIN" deploy set crash --ctx 99 --quiet >/dev/null 2>&1 &
setter=$!
sleep 1
kill -9 "$setter" 2>/dev/null; wait "$setter" 2>/dev/null
wait "$holder"
owl deploy history crash --json
expect_eq killed_waiting_change_left_nothing "$(json 'len(d["events"])')" "$before"
owl deploy set crash --ctx 98 --json
expect_eq change_after_kill_works "$(json 'd["current"]["ctx"]')" "98"

# --- rm --------------------------------------------------------------------------------------------
owl deploy rm crash --json
expect_eq deploy_rm_json "$(json 'd["removed"]')" "True"
owl deploy show crash
expect_rc deploy_rm_gone 1
owl deploy bogus
expect_rc unknown_subcommand 2
