# The CLI frame: help, version, mistyped verbs, status with and without --json.
. "$(dirname "$0")/lib.sh"

owl --version
expect_rc version_exits_zero 0
expect_contains version_prints_number "$OUT" "owl "

owl help
expect_rc help_exits_zero 0
expect_contains help_lists_status "$OUT" "status"

owl statsu
expect_rc mistyped_verb_is_usage_error 2
expect_contains mistyped_verb_suggests "$ERR" "did you mean 'owl status'"

owl status --help
expect_rc verb_help_exits_zero 0
expect_contains verb_help_has_examples "$OUT" "EXAMPLES"

owl status
expect_rc status_exits_zero 0
expect_contains status_names_home "$OUT" "$OWL_HOME"
expect_contains status_answers_cuda "$OUT" "cuda:"

owl status --json
expect_rc status_json_exits_zero 0
if printf '%s' "$OUT" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["schema_version"]>=1; assert "cuda_usable" in d["gpu"]'; then
  pass status_json_is_valid
else
  fail status_json_is_valid "$OUT"
fi

other="$T/other-home"
"$OWL_BIN" --home "$other" status >/dev/null 2>&1
if [ -f "$other/owl.db" ]; then pass home_flag_wins_over_env; else fail home_flag_wins_over_env "no db in $other"; fi

# A database written by a newer owl is refused with a clear message.
sqlite3 "$OWL_HOME/owl.db" "INSERT INTO migrations VALUES ('registry', 999, 0, '9.9.9')"
owl status
expect_rc newer_database_refused 1
expect_contains newer_database_message "$ERR" "newer owl"

# Every verb's help has a USAGE line and an example.
owl help
for verb in $(printf '%s\n' "$OUT" | awk '/^VERBS/{v=1;next} v && /^  [a-z]/{print $1}'); do
  "$OWL_BIN" "$verb" --help >"$T/h" 2>&1
  if grep -q '^USAGE' "$T/h" && grep -q '^EXAMPLES' "$T/h"; then pass "help_complete_$verb"; else fail "help_complete_$verb" "missing USAGE or EXAMPLES"; fi
done

# docs/cli.md is generated from the help text; it must match the binary.
( cd "$OWL_ROOT" && bash scripts/gen-cli-doc.sh "$OWL_BIN" "$T/cli.md" )
if cmp -s "$T/cli.md" "$OWL_ROOT/docs/cli.md"; then pass docs_cli_matches_help; else fail docs_cli_matches_help "docs/cli.md is stale: run scripts/gen-cli-doc.sh"; fi
