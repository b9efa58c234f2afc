#!/usr/bin/env bash
# The license gate end to end: detection from cards, LICENSE texts and GGUF
# metadata, conflicts, conclusions, the default policy, approvals, derived
# versions and the naming rule, import denial, policy files, and the audit log.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
LIC="$OWL_SHARED/licenses"
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
fixture() { "$FX" --out "$T/$1" --seed 11 --preset tiny --quiet "${@:2}" >/dev/null 2>&1 || "$FX" --out "$T/$1" --seed 11 --preset tiny "${@:2}" >/dev/null; }

# --- the compiled-in data matches the catalog and the texts -----------------------
if [ -d "$LIC" ]; then
  "$OWL_BUILD/owl-license-data" "$OWL_ROOT/licenses/catalog.json" "$LIC" >"$T/license_data.c"
  if cmp -s "$T/license_data.c" "$OWL_ROOT/licenses/license_data.c"; then
    pass license_data_is_current
  else
    fail license_data_is_current "licenses/license_data.c is stale: run scripts/gen-license-data.sh"
  fi
fi

# --- every catalog id stated in a card ------------------------------------------------
ids=$(python3 -c "import json; print(' '.join(l['id'] for l in json.load(open('$OWL_ROOT/licenses/catalog.json'))['licenses'] if l['id'] not in ('unknown','other')))")
for id in $ids; do
  fixture "card-$id" --license "$id"
  owl pull "$T/card-$id" --name "card-$id" --json
  owl license show "card-$id" --json
  expect_eq "card_license_$id" "$(json 'd["license"]')" "$id"
done
owl license catalog --json
expect_eq catalog_has_24 "$(json 'len(d)')" "24"

# --- license: other with license_name, and no license at all --------------------------
fixture named --license other --license-name mrl
owl pull "$T/named" --name named
owl license show named --json
expect_eq card_license_name_mrl "$(json 'd["license"]')" "mrl"
fixture nolicense --license none
owl pull "$T/nolicense" --name nolicense --json
expect_contains no_license_is_unknown "$(json 'd["license"]')" "unknown"

# --- LICENSE files recognised by their text ------------------------------------------------
for f in "$LIC"/*.txt; do
  name=$(basename "$f" .txt)
  want=$(python3 -c "
import json
cat = json.load(open('$OWL_ROOT/licenses/catalog.json'))
ids = [l['id'] for l in cat['licenses'] if '$name.txt' in l['texts']]
print(ids[0] if ids else '')")
  [ -n "$want" ] || continue
  fixture "file-$name" --license none --license-file "$f"
  owl pull "$T/file-$name" --name "file-$name"
  owl license show "file-$name" --json
  expect_eq "license_file_$name" "$(json 'd["license"]')" "$want"
done
# A near-miss: Llama 3.1's text with an added clause is not Llama 3.1.
python3 - "$LIC/llama3.1.txt" "$T/near.txt" <<'EOF'
import sys
t = open(sys.argv[1]).read()
i = t.index("2. Additional Commercial Terms")
open(sys.argv[2], "w").write(t[:i] + "1.e You may not use the Llama Materials to build any chatbot for the airline industry, and this restriction survives termination.\n\n" + t[i:])
EOF
fixture near --license none --license-file "$T/near.txt"
owl pull "$T/near" --name near
owl license show near --json
expect_eq near_miss_is_not_llama31 "$(json 'd["license"]')" "other"
expect_contains near_miss_evidence "$(json 'd["findings"][0]["evidence"]')" "resembles llama3.1"

# --- GGUF metadata ----------------------------------------------------------------------------
fixture gg --license none --gguf Q8_0 --gguf-only --gguf-license llama3.2
owl pull "$T/gg" --name gg
owl license show gg --json
expect_eq gguf_license "$(json 'd["license"]')" "llama3.2"
expect_eq gguf_source "$(json 'd["findings"][0]["source"]')" "gguf"

# --- safetensors __metadata__ ------------------------------------------------------------------
fixture stmeta --license none --st-metadata license=gemma
owl pull "$T/stmeta" --name stmeta
owl license show stmeta --json
expect_eq safetensors_metadata_license "$(json 'd["license"]')" "gemma"
expect_eq safetensors_metadata_source "$(json 'd["findings"][0]["source"]')" "safetensors"

# --- conflicts are reported, not resolved --------------------------------------------------------
fixture conflict --license apache-2.0 --license-file "$LIC/llama3.1.txt"
owl pull "$T/conflict" --name conflict --json
expect_contains conflict_at_pull "$(json 'd["license"]')" "conflict"
owl license show conflict --json
expect_eq conflict_status "$(json 'd["status"]')" "conflict"
owl policy test conflict --action deploy --use commercial
expect_rc conflict_commercial_needs_approval 3
expect_contains conflict_rule_named "$OUT" "approve-conflict"
owl policy test conflict --action deploy --use internal
expect_rc conflict_internal_allowed 0
owl license set conflict llama3.1 --reason "the LICENSE file is the vendor's; the card was wrong" --by legal
expect_rc license_set 0
owl license show conflict --json
expect_eq concluded_license "$(json 'd["license"]')" "llama3.1"
expect_eq concluded_status "$(json 'd["status"]')" "concluded"
expect_eq findings_kept_beside_conclusion "$(json 'len(d["findings"])')" "2"
owl license set conflict no-such-license --reason x
expect_rc license_set_unknown_id 2

# --- non-commercial, approvals and expiry -----------------------------------------------------------
owl policy test card-cc-by-nc-4.0 --action deploy --use internal
expect_rc nc_internal_deploy_allowed 0
owl policy test card-cc-by-nc-4.0 --action deploy --use commercial
expect_rc nc_commercial_deploy_needs_approval 3
owl approve card-cc-by-nc-4.0@1 --action deploy --use commercial --by legal --reason "license bought" --expires 2s
expect_rc approve 0
owl policy test card-cc-by-nc-4.0 --action deploy --use commercial --json
expect_rc approved_deploy_allowed 0
expect_contains approval_named "$(json 'd["approval"]')" "legal"
sleep 3
owl policy test card-cc-by-nc-4.0 --action deploy --use commercial
expect_rc expired_approval_refused 3

# --- organisation size ------------------------------------------------------------------------------
owl policy test card-llama3.1 --action deploy --use commercial
expect_rc llama_small_org_allowed 0
owl policy org set mau 900000000
owl policy test card-llama3.1 --action deploy --use commercial
expect_rc llama_over_700m_denied 3
expect_contains mau_reason "$OUT" "exceeds the threshold 700000000"
owl policy test card-qwen --action deploy --use commercial
expect_rc qwen_over_100m_denied 3
owl policy org set mau 50000000
owl policy test card-qwen --action deploy --use commercial
expect_rc qwen_under_100m_allowed 0

# --- derived versions inherit the base's license and its naming rule ----------------------------------
mkdir -p "$T/adapter"
python3 - "$T/adapter" <<'EOF'
import json, struct, sys
d = sys.argv[1]
json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
           "base_model_name_or_path": "card-llama3.1"}, open(d + "/adapter_config.json", "w"))
h = json.dumps({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight":
                {"dtype": "F32", "shape": [8, 64], "data_offsets": [0, 2048]}}).encode()
open(d + "/adapter_model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + bytes(2048))
EOF
# Naming a derived version against the license's rule is refused at import.
owl pull "$T/adapter" --name acme-support --base card-llama3.1@1
expect_rc derived_bad_name_import_denied 3
expect_contains derived_denial_names_rule "$ERR" "deny-derived-name"
expect_contains derived_denial_names_license "$ERR" "llama3.1"
owl list acme-support --json
expect_eq derived_denial_stores_nothing "$(json 'len(d)')" "0"
owl pull "$T/adapter" --name llama-acme-support --base card-llama3.1@1 --json
expect_rc derived_import 0
expect_eq derived_format "$(json 'd["format"]')" "adapter"
# The pull's own summary names the inherited license, not "unknown".
expect_contains derived_pull_says_inherited "$(json 'd["license"]')" "llama3.1 ("
expect_contains derived_pull_says_from_base "$(json 'd["license"]')" "from its base"
owl license show llama-acme-support --json
expect_eq derived_inherits_license "$(json 'd["license"]')" "llama3.1"
expect_eq derived_inherited_from "$(json 'd["inherited_from"]')" "card-llama3.1@1"
# Renaming it on the way out is checked too: policy test --as names the derivative.
owl policy test llama-acme-support --action export --as acme-support
expect_rc derived_rename_export_denied 3
expect_contains derived_rename_rule "$OUT" "deny-derived-name"
owl export llama-acme-support@1 "$T/llama-acme.tar"
expect_rc derived_good_name_export 0
tar -xOf "$T/llama-acme.tar" manifest.json >"$T/manifest.json"
OUT=$(cat "$T/manifest.json")
expect_contains bundle_carries_attribution "$(json 'd["license"]["attribution"]')" "Built with Llama"

# --- denial at import: nothing stored, exit 3 ------------------------------------------------------------
owl policy add no-nc-import --effect deny --category non-commercial --action import --priority 960 --message "no non-commercial models in this company"
expect_rc policy_add 0
fixture nc2 --license cc-by-nc-4.0
before=$(find "$OWL_HOME/blobs" -type f | wc -l)
owl pull "$T/nc2" --name nc2
expect_rc import_denied_exit_3 3
expect_contains import_denial_message "$ERR" "no-nc-import"
expect_eq import_denial_stores_no_blob "$(find "$OWL_HOME/blobs" -type f | wc -l)" "$before"
owl list nc2 --json
expect_eq import_denial_registers_nothing "$(json 'len(d)')" "0"
owl policy add bad --effect maybe
expect_rc policy_add_bad_effect 2
owl policy add bad2 --effect deny --when full-moon
expect_rc policy_add_unknown_condition 2

# --- policy files: export, import, replace ------------------------------------------------------------------
owl policy export "$T/policy.json"
expect_rc policy_export 0
OWL_HOME="$T/home2" owl policy import "$T/policy.json" --replace
expect_rc policy_import 0
OWL_HOME="$T/home2" owl policy list --json
expect_eq policy_round_trip "$(json 'len(d["rules"])')" "$(python3 -c "import json; print(len(json.load(open('$T/policy.json'))['rules']))")"
expect_eq policy_org_round_trip "$(json 'd["org"]["mau"]')" "50000000"
owl policy rm no-nc-import
expect_rc policy_rm 0
owl policy rm no-nc-import
expect_rc policy_rm_missing 2

# --- audit ----------------------------------------------------------------------------------------------------
owl audit list --json
if [ "$(json 'len(d)')" -ge 3 ] && [ "$(json 'len([r for r in d if r["effect"]=="deny"])')" -ge 1 ]; then
  pass audit_lists_decisions
else
  fail audit_lists_decisions "$OUT"
fi
owl audit verify
expect_rc audit_verify_clean 0
sqlite3 "$OWL_HOME/owl.db" "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET effect='allow' WHERE effect='deny';"
owl audit verify
expect_rc audit_edit_detected 4
expect_contains audit_edit_names_row "$ERR" "edited"

# --- policy files are type-checked, field by field, and import all or nothing -----------------------------
export OWL_HOME="$T/home3"
owl policy list --json
before_rules=$(json 'len(d["rules"])')
# bad_policy NAME RULE-JSON EXPECTED: a file with one good rule and then RULE is refused.
bad_policy() {
  printf '{"owl_policy": 1, "rules": [{"name": "ok-rule", "effect": "allow", "priority": 5}, %s]}' "$2" >"$T/$1.json"
  owl policy import "$T/$1.json"
  expect_rc "policy_import_${1}_exit_2" 2
  expect_contains "policy_import_${1}_named" "$ERR" "$3"
}
bad_policy prio_string '{"name": "p1", "effect": "deny", "priority": "high"}' "rule 2 ('p1'): field 'priority' is a string, expected an integer"
bad_policy prio_real '{"name": "p2", "effect": "deny", "priority": 1.5}' "rule 2 ('p2'): field 'priority' is a real number, expected an integer"
bad_policy effect_int '{"name": "p3", "effect": 2}' "rule 2 ('p3'): field 'effect' is an integer, expected a string"
bad_policy license_list '{"name": "p4", "effect": "deny", "license": ["mit"]}' "rule 2 ('p4'): field 'license' is an array, expected a string"
bad_policy name_int '{"name": 7, "effect": "deny"}' "rule 2: field 'name' is an integer, expected a string"
bad_policy no_effect '{"name": "p5"}' "rule 2 ('p5'): field 'effect' is missing"
bad_policy typo_field '{"name": "p6", "effect": "deny", "prority": 5}' "rule 2 ('p6'): unknown field 'prority'"
bad_policy not_object '"deny everything"' "rule 2 is a string, expected an object"
bad_policy bad_cond '{"name": "p7", "effect": "deny", "when": "full-moon"}' "rule 2 ('p7'): unknown condition 'full-moon'"
printf '{"rules": [], "org": {"mau": 5}}' >"$T/org_int.json"
owl policy import "$T/org_int.json"
expect_rc policy_import_org_int_exit_2 2
expect_contains policy_import_org_int_named "$ERR" "org attribute 'mau' is an integer, expected a string"
owl policy list --json
expect_eq policy_bad_imports_change_nothing "$(json 'len(d["rules"])')" "$before_rules"
expect_eq policy_bad_imports_add_no_rule "$(json 'len([r for r in d["rules"] if r["name"] == "ok-rule"])')" "0"
owl policy add p-cli --effect deny --priority high
expect_rc policy_add_priority_word_refused 2
expect_contains policy_add_priority_word_named "$ERR" "--priority takes a whole number"

# --- approve --expires: a date in the past or a malformed one is refused ---------------------------------------
fixture exp-model --license cc-by-nc-4.0
owl pull "$T/exp-model" --name exp-model
owl audit list --json
audit_rows=$(json 'len(d)')
for bad in 2020-01-01 2026-02-31 2026-13-01 2027-1-1 yesterday 0d -5d 30x 2030-01-01T25:00 2030-01-01junk; do
  owl approve exp-model@1 --action deploy --use commercial --by legal --reason r --expires "$bad"
  expect_rc "approve_expires_${bad}_exit_2" 2
done
owl approve exp-model@1 --action deploy --use commercial --by legal --reason r --expires 2020-01-01
expect_contains approve_past_date_says_past "$ERR" "--expires 2020-01-01 is in the past"
owl approve exp-model@1 --action deploy --use commercial --by legal --reason r --expires 2026-02-31
expect_contains approve_impossible_date_named "$ERR" "'2026-02-31' is not a span"
owl audit list --json
expect_eq approve_refusals_record_nothing "$(json 'len(d)')" "$audit_rows"
owl policy test exp-model --action deploy --use commercial
expect_rc approve_refusals_approve_nothing 3
owl approve exp-model@1 --action deploy --use commercial --by legal --reason r --expires 2099-12-31T18:00Z
expect_rc approve_future_date 0
expect_contains approve_future_date_shown "$OUT" "2099-12-31T18:00:00Z"
