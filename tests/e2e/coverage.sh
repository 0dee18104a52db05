#!/usr/bin/env bash
# Line coverage of the daemon (src/) and the client (client/src/) over the
# whole test suite, with cargo-tarpaulin's LLVM engine (no llvm-tools
# component needed). Prints the figure per file and for src/ and client/,
# and fails if src/ falls below COVERAGE_MIN percent (default 85).
#
#   POSTERN_COVERAGE=1 tests/e2e/coverage.sh
#
# On demand only: the first run installs cargo-tarpaulin (about 8 minutes
# of compiling), and every run builds the workspace instrumented and runs
# all tests again (about 2-4 minutes), which CI does not need on every
# push. The HTML report lands in target/coverage/ (or
# $CARGO_TARGET_DIR/coverage/).
#
# What it cannot see: the network process is started with an empty
# environment (so LLVM_PROFILE_FILE does not reach it) and, as root,
# chrooted into an empty directory, so its own run of the jail code
# (privsep.rs, sys.rs) and of its signal handling is not counted; the
# handshake code itself is counted through the in-process test in
# tests/props.rs.
set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$E2E_ROOT" || exit 1

if [ "${POSTERN_COVERAGE:-}" != 1 ]; then
    echo "skip: coverage is measured on demand: POSTERN_COVERAGE=1 $0"
    exit 0
fi
if ! cargo tarpaulin --version >/dev/null 2>&1; then
    note "installing cargo-tarpaulin (several minutes)"
    cargo install cargo-tarpaulin --locked >/dev/null 2>&1 ||
        abort "cargo install cargo-tarpaulin --locked"
fi
require_tools python3 python3

base=${CARGO_TARGET_DIR:-$E2E_ROOT/target}
out="$base/coverage"
mkdir -p "$out"
if ! cargo tarpaulin --engine llvm --workspace --skip-clean \
    --target-dir "$base/tarpaulin-build" \
    --exclude-files 'fuzz/*' 'benches/*' \
    --out Json --out Html --output-dir "$out" --timeout 900 >"$out/run.log" 2>&1; then
    tail -40 "$out/run.log"
    abort "cargo tarpaulin (tests failed or the run broke; log in $out/run.log)"
fi
pass "instrumented test run"

min=${COVERAGE_MIN:-85}
summarize() {
    python3 - "$out/tarpaulin-report.json" "$min" <<'EOF'

import json, sys
report, minimum = sys.argv[1], float(sys.argv[2])
totals = {}
for f in json.load(open(report))["files"]:
    path = "/".join(f["path"])
    group = "client/src" if "/client/src/" in path else "src"
    name = group + "/" + path.rsplit("/", 1)[-1]
    if f["coverable"] == 0:
        continue
    c, n = totals.get(group, (0, 0))
    totals[group] = (c + f["covered"], n + f["coverable"])
    print(f"# {name:28s} {f['covered']:5d}/{f['coverable']:<5d} {100 * f['covered'] / f['coverable']:5.1f}%")
for group, (c, n) in sorted(totals.items()):
    print(f"# {group + '/':28s} {c:5d}/{n:<5d} {100 * c / n:5.1f}%")
c, n = totals.get("src", (0, 1))
sys.exit(0 if 100 * c / n >= minimum else 1)
EOF
}
if summarize; then
    pass "src/ coverage at least ${min}%"
else
    fail "src/ coverage below ${min}%"
fi
finish
