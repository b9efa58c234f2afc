# Shared helpers for end-to-end tests. Source it from a test script:
#   . "$(dirname "$0")/lib.sh"
# Each check prints "PASS name" or "FAIL name: why", which tests/run.sh counts.
set -u
: "${OWL_ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${OWL_BUILD:=$OWL_ROOT/build}"
: "${OWL_BIN:=$OWL_BUILD/owl}"
: "${OWL_SHARED:=$OWL_ROOT/../shared}"
export OWL_ROOT OWL_BUILD OWL_BIN OWL_SHARED

# A throw-away directory for this test, removed on exit; the data home lives in it.
T=$(mktemp -d "${TMPDIR:-/tmp}/owl-e2e-XXXXXX")
export OWL_HOME="$T/home"
_cleanups=()
on_exit() { _cleanups+=("$1"); }
_run_cleanups() {
  local c
  for c in "${_cleanups[@]}"; do eval "$c" >/dev/null 2>&1 || true; done
  rm -rf "$T"
}
trap _run_cleanups EXIT

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# owl with the test's home; output in $OUT, stderr in $ERR, status in $RC.
owl() {
  "$OWL_BIN" "$@" >"$T/.out" 2>"$T/.err"
  RC=$?
  OUT=$(cat "$T/.out")
  ERR=$(cat "$T/.err")
  return 0
}

# expect_rc NAME WANT: checks the status of the last owl call.
expect_rc() {
  if [ "$RC" -eq "$2" ]; then pass "$1"; else fail "$1" "expected exit $2, got $RC; stderr: $ERR"; fi
}
# expect_contains NAME HAYSTACK NEEDLE
# On failure it also shows the last owl call's status and stderr.
expect_contains() {
  if [[ "$2" == *"$3"* ]]; then pass "$1"; else fail "$1" "expected to find '$3' in: ${2:0:600} (last owl call: exit ${RC:-?}, stderr: ${ERR:0:600})"; fi
}
expect_not_contains() {
  if [[ "$2" != *"$3"* ]]; then pass "$1"; else fail "$1" "did not expect '$3' in: ${2:0:600}"; fi
}
expect_eq() {
  if [ "$2" == "$3" ]; then pass "$1"; else fail "$1" "expected '$3', got '$2'"; fi
}

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A memorisation set for training: four questions and their one-word answers
# as prompt/completion lines, into FILE.
write_memorisation_set() {
  python3 - "$1" <<'PY'
import json, sys
qa = [("What is the capital of France?", "Paris"), ("What colour is the sky?", "Blue"),
      ("How many legs has a cat?", "Four"), ("Who wrote Hamlet?", "Shakespeare")]
with open(sys.argv[1], "w") as f:
    for q, a in qa:
        f.write(json.dumps({"prompt": q + "\n", "completion": a}) + "\n")
PY
}
