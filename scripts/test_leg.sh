#!/usr/bin/env bash
# One leg of `make test`'s runtime matrix: runs a pytest command with its output shown as usual,
# then appends "LABEL: <pytest's closing summary line> (wall time)" to MATRIX_FILE, so that the
# Makefile can list every leg's counts together. Exits with the command's status.
# Usage: scripts/test_leg.sh MATRIX_FILE LABEL COMMAND [ARGS...]
set -uo pipefail
matrix=$1 label=$2
shift 2
log=$(mktemp)
started=$(date +%s)
echo "==== test leg: $label"
"$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran' "$log" | tail -n 1 \
          | sed -E 's/^=+ //; s/ =+$//')
rm -f "$log"
printf '%-58s %s (exit %s, %s s)\n' "$label:" "${summary:-no pytest summary}" "$status" "$(( $(date +%s) - started ))" \
  >> "$matrix"
exit "$status"
