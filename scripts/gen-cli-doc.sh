#!/usr/bin/env bash
# Writes docs/cli.md from the help text compiled into owl, so that the
# reference and `owl VERB --help` can never disagree (tests/e2e/cli.sh checks
# that the committed file matches). Usage: scripts/gen-cli-doc.sh [OWL_BIN] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/owl}
out=${2:-docs/cli.md}
{
  echo "# owl command reference"
  echo
  echo "Generated from \`owl help\` and \`owl VERB --help\` by \`scripts/gen-cli-doc.sh\`;"
  echo "do not edit by hand."
  echo
  echo '```'
  "$bin" --help
  echo '```'
  for verb in $("$bin" --help | awk '/^VERBS/{v=1;next} v && /^  [a-z]/{print $1}'); do
    echo
    echo "## owl $verb"
    echo
    echo '```'
    "$bin" "$verb" --help
    echo '```'
  done
} >"$out.tmp"
mv "$out.tmp" "$out"
