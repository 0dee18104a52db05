#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a short fixed time
# from its committed seed corpus; any crash, panic, hang or leak fails it.
#
#   tests/e2e/fuzz_smoke.sh                      # 15 s per target (CI)
#   FUZZ_SECONDS=3600 tests/e2e/fuzz_smoke.sh    # the long run
#   FUZZ_TARGETS="handshake ipc" tests/e2e/fuzz_smoke.sh
#
# cargo-fuzz is installed when missing under CI=true (about 30 s to
# build); elsewhere the script skips without it. Targets are built with
# --sanitizer none, which works on stable Rust (panics and overflow checks
# are the oracle; there is no unsafe code to sanitize outside sys.rs).
# New inputs go to a scratch directory, never into fuzz/corpus; crashes
# are kept in fuzz/artifacts/TARGET/ (ignored by git) with the command
# that reproduces them.
set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$E2E_ROOT" || exit 1

secs=${FUZZ_SECONDS:-15}

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        note "installing cargo-fuzz"
        cargo install cargo-fuzz --locked >/dev/null 2>&1 ||
            abort "cargo install cargo-fuzz --locked"
    else
        missing "cargo-fuzz not found; install it with: cargo install cargo-fuzz --locked"
    fi
fi

cd fuzz || abort "no fuzz/ directory"
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
[ -n "$targets" ] || abort "cargo fuzz list found no target"

start=$(date +%s)
if cargo fuzz build --sanitizer none >build.log 2>&1; then
    pass "fuzz targets build ($(($(date +%s) - start)) s)"
    rm -f build.log
else
    tail -30 build.log
    rm -f build.log
    abort "fuzz targets build"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    log="$scratch/$t.log"
    cargo fuzz run --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=1024 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        pass "fuzz $t: ${execs:-0} inputs in ${secs} s, no failure"
    else
        fail "fuzz $t (exit $rc) after ${execs:-?} inputs"
        grep -E "panicked|ERROR|SUMMARY|Reproduce|cargo fuzz run|crash-|timeout-|leak-|oom-" "$log" |
            head -20 | sed 's/^/    /'
    fi
done
finish
