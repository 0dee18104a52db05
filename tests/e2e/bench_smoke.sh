#!/usr/bin/env bash
# Runs the load tool's smoke mode (cargo bench --bench load -- --smoke):
# every measure of BENCHMARKS.md (a: rejected-handshake throughput against
# the bare baseline, b: a trigger under attack, c: memory and idle
# wake-ups, d: verify cost, e: trigger-to-action latency) briefly, against
# the release posternd on loopback. It asserts nothing about speed, only
# that the tool exits 0 and that each measure reported a result row.
#
# One check: prints the tool's output, then "1 passed, 0 failed" or
# "0 passed, 1 failed" and exits 0 or 1. Uses $POSTERND and $POSTERN if
# set (else the tool builds them with cargo); honours $CARGO_TARGET_DIR.
#
# Usage: tests/e2e/bench_smoke.sh   (from anywhere)
set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$E2E_ROOT" || exit 1

out=$(mktemp "${TMPDIR:-/tmp}/postern-bench-smoke.XXXXXX")
trap 'rm -f "$out"' EXIT

start=$(date +%s)
timeout 900 cargo bench --bench load -- --smoke >"$out" 2>&1
rc=$?
cat "$out"
note "smoke run took $(($(date +%s) - start)) s, building included"

missing=""
# (f) needs root (a network namespace); without root it reports "n/a".
measures="a b c d e"
[ "$(id -u)" = 0 ] && measures="$measures f"
for m in $measures; do
    # A table row "| m | what | result | target | verdict |" whose result
    # holds a number.
    grep -Eq "^\| $m \| [^|]+ \| [^|]*[0-9][^|]* \|" "$out" || missing="$missing $m"
done
if [ $rc -ne 0 ]; then
    fail "cargo bench --bench load -- --smoke exited $rc"
elif [ -n "$missing" ]; then
    fail "no result row for measure(s):$missing"
else
    pass "every measure ($measures) ran and reported"
fi
finish
