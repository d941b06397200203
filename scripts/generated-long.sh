#!/usr/bin/env bash
# The generated-input tests (tests/generated.rs and
# crates/engine/tests/generated.rs) with many more cases than CI runs:
# PROPTEST_CASES cases for every property (10,000 unless given), one test at
# a time, then a summary of each property's cases and time.
#
# Usage: scripts/generated-long.sh [cases]
#
# The release profile by default (the properties run about ten times faster
# than in the test profile); PROFILE=test runs them with debug assertions and
# overflow checks, as CI does. The full output, with what each property's
# inputs came to, is kept in target/generated-long.log.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${1:-${PROPTEST_CASES:-10000}}"
profile="${PROFILE:-release}"
log=target/generated-long.log
mkdir -p target

echo "building the generated-input tests (profile $profile)"
cargo nextest run --cargo-profile "$profile" -p tollgate -p tollgate-engine \
  --test generated --no-run

echo "running every property with $cases cases"
started=$(date +%s)
# --no-capture runs the tests one at a time and shows what they print.
set +e
PROPTEST_CASES="$cases" cargo nextest run --cargo-profile "$profile" \
  -p tollgate -p tollgate-engine --test generated --no-capture \
  --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
finished=$(date +%s)

echo
echo "summary ($cases cases per property, profile $profile):"
grep -E '^property ' "$log" | sed 's/^property /  /' || true
grep -E '^\s+(PASS|FAIL|SIGABRT|SIGSEGV|TIMEOUT) ' "$log" | sed 's/^\s*/  /' || true
echo "  total: $((finished - started)) s (log: $log)"
exit "$status"
