#!/usr/bin/env bash
# Prints the report that a hung test left (tests/conftest.py, TDANN_TEST_HANG_S): the innermost frames of each
# thread, then the test's node id as the last line. Without a report it prints nothing.
# Usage: bash scripts/hang_report.sh [REPORT]   (default pytest-hang.txt)
set -euo pipefail
REPORT=${1:-pytest-hang.txt}
[ -s "$REPORT" ] || exit 0
echo
echo "== a test hung; the 4 innermost frames of each thread (whole report: $REPORT)"
awk 'NR == 1 { next } /^(Thread|Current thread)/ { n = 0; print; next } /^  File/ && n < 4 { print; n++ }' "$REPORT" |
    head -80
echo "== hung: $(head -1 "$REPORT")"
