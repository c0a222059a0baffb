#!/usr/bin/env bash
# Set up ndfs with its test dependencies and run the whole test suite.
# Fails when any test fails and when no test ran (pytest exit 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test || exit 1
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" = 5 ]; then echo "no tests ran: failing" >&2; exit 1; fi
exit "$status"
