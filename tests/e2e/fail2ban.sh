#!/usr/bin/env bash
# Checks conf/fail2ban/filter.d/postern.conf with the real fail2ban-regex:
#   1. sample lines in every form posternd's lines reach fail2ban in
#      (journal with stderr, journal or syslog file with syslog, bare
#      stderr; IPv4 and IPv6): fail and lockout lines must yield the right
#      address, every other line must yield none;
#   2. live: a real posternd on 127.0.0.1 (port 0) gets one good trigger and
#      enough wrong ones to lock the client out; its own stderr must give
#      exactly the fail and lockout lines, and nothing else.
#
# Prints one line per check and ends with "N passed, M failed"; exits 1 if
# any check failed. Without fail2ban-regex it fails when CI=true and is
# skipped otherwise. The live part runs $POSTERND and $POSTERN (default:
# ${CARGO_TARGET_DIR:-target}/debug), building them with cargo if needed.
#
# Usage: tests/e2e/fail2ban.sh   (from anywhere)

set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FILTER="$ROOT/conf/fail2ban/filter.d/postern.conf"
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

if ! command -v fail2ban-regex >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        fail "fail2ban-regex not found (install fail2ban)"
        finish
    fi
    echo "skip: fail2ban-regex not found; install fail2ban (apt-get install fail2ban) to run these checks"
    exit 0
fi

# expect ADDR LINE: the filter must match LINE and report ADDR;
# expect "" LINE: it must not match LINE at all.
expect() {
    local want=$1 line=$2 got
    got=$(fail2ban-regex -o ip "$line" "$FILTER" 2>&1)
    local rc=$?
    if [ $rc -ne 0 ]; then
        fail "fail2ban-regex exited $rc on: $line"
        echo "     $got"
    elif [ "$got" = "$want" ]; then
        if [ -n "$want" ]; then pass "match $want: $line"; else pass "no match: $line"; fi
    else
        fail "expected '${want:-no match}', got '${got:-no match}': $line"
    fi
}

T='posternd[812]:'
FAIL4='fail src=192.0.2.7 port=50112 listener=0.0.0.0:7001 reason=bad-mac failures=1'
FAIL6='fail src=2001:db8::7 port=50113 listener=[::]:7001 reason=timeout failures=4'
LOCK4='lockout src=192.0.2.7 source=192.0.2.7/32 failures=5 duration=900s'
LOCK6='lockout src=2001:db8::7 source=2001:db8::/64 failures=5 duration=900s'

echo "# sample lines"
# Journal, log = "stderr": the systemd backend shows the tag twice.
expect 192.0.2.7   "host $T $T $FAIL4"
expect 2001:db8::7 "host $T $T $LOCK6"
# Journal or syslog file, log = "syslog": classic and RFC 3339 timestamps.
expect 192.0.2.7   "Jan  5 10:00:00 host $T $LOCK4"
expect 2001:db8::7 "Jan  5 10:00:01 host $T $FAIL6"
expect 192.0.2.7   "2024-01-05T10:00:02.123456+00:00 host $T $FAIL4"
expect 2001:db8::7 "2024-01-05T10:00:03.123456+00:00 host $T $LOCK6"
# Bare standard error.
expect 192.0.2.7   "$T $FAIL4"
expect 2001:db8::7 "$T $LOCK6"
expect 198.51.100.9 "$T fail src=198.51.100.9 port=0 listener=0.0.0.0:7001 reason=evicted failures=2"
# Lines that must not match.
expect "" "Jan  5 10:00:04 host $T ok src=192.0.2.8 port=50200 listener=0.0.0.0:7001 action=sshd addr=192.0.2.8 status=started"
expect "" "Jan  5 10:00:04 host $T ok src=192.0.2.8 port=50200 listener=0.0.0.0:7001 action=sshd addr=192.0.2.8 status=started by=alice key=old"
expect "" "Jan  5 10:00:04 host $T action sshd: key alice is past its overlap window; request refused"
expect "" "Jan  5 10:00:04 host $T started version=0.1.0 listeners=[0.0.0.0:7001(postern-2)] actions=1"
expect "" "Jan  5 10:00:04 host $T ratelimit src=192.0.2.9 listener=0.0.0.0:7001; closing its connections until it slows down"
expect "" "Jan  5 10:00:04 host $T limit max_handshakes=256 reached on listener=0.0.0.0:7001; evicting the oldest pending handshakes"
# An exempt source: logged with failures=0, never counted.
expect "" "Jan  5 10:00:04 host $T fail src=10.0.0.5 port=50300 listener=0.0.0.0:7001 reason=bad-mac failures=0"
# Another program, and action output quoting a fail line.
expect "" "Jan  5 10:00:04 host otherd[9]: $FAIL4"
expect "" "Jan  5 10:00:04 host $T action x run pid=5 stdout: $FAIL4"

echo "# live posternd"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
POSTERND=${POSTERND:-$TARGET_DIR/debug/posternd}
POSTERN=${POSTERN:-$TARGET_DIR/debug/postern}
if { [ ! -x "$POSTERND" ] || [ ! -x "$POSTERN" ]; } && command -v cargo >/dev/null 2>&1; then
    (cd "$ROOT" && cargo build --quiet --workspace --bins) >/dev/null 2>&1
fi
if [ ! -x "$POSTERND" ] || [ ! -x "$POSTERN" ]; then
    if [ "${CI:-}" = "true" ]; then
        fail "posternd and postern not found ($POSTERND, $POSTERN)"
    else
        echo "skip: posternd and postern not found ($POSTERND, $POSTERN); run cargo build --workspace"
    fi
    finish
fi

WORK=$(mktemp -d)
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

GOOD=$("$POSTERN" keygen)
cat >"$WORK/posternd.toml" <<EOF
[daemon]
state_dir = "$WORK/state"
[limits]
lockout_after = 2
lockout_duration = "1m"
[[listen]]
address = "127.0.0.1:0"
[[action]]
name = "noop"
key = "$GOOD"
run = ["/bin/true"]
EOF
chmod 600 "$WORK/posternd.toml"

"$POSTERND" --config "$WORK/posternd.toml" 2>"$WORK/stderr.log" &
PID=$!
PORT=""
for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*started .*listeners=\[127\.0\.0\.1:\([0-9]*\)(postern-2).*/\1/p' "$WORK/stderr.log")
    [ -n "$PORT" ] && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$PORT" ]; then
    fail "posternd did not start:"
    sed 's/^/     /' "$WORK/stderr.log"
    finish
fi
pass "posternd started on 127.0.0.1:$PORT"

export POSTERN_E2E_KEY="$GOOD"
if "$POSTERN" trigger "127.0.0.1:$PORT" --key-env POSTERN_E2E_KEY --timeout 5 >/dev/null; then
    pass "right key accepted"
else
    fail "right key not accepted"
fi
POSTERN_E2E_KEY=$("$POSTERN" keygen)
for i in 1 2; do
    "$POSTERN" trigger "127.0.0.1:$PORT" --key-env POSTERN_E2E_KEY --timeout 5 >/dev/null
    rc=$?
    if [ $rc -eq 2 ]; then pass "wrong key $i: no acknowledgement"; else fail "wrong key $i: exit $rc, expected 2"; fi
done

# Wait for the lockout line, then stop posternd so its log is complete.
for _ in $(seq 1 50); do
    grep -q ' lockout src=' "$WORK/stderr.log" && break
    sleep 0.1
done
kill "$PID" 2>/dev/null
wait "$PID" 2>/dev/null
PID=""

got=$(fail2ban-regex -o ip "$WORK/stderr.log" "$FILTER" 2>&1 | sort | uniq -c | sed 's/^ *//')
if [ "$got" = "3 127.0.0.1" ]; then
    pass "posternd's own log: 2 fail lines and 1 lockout line match, for 127.0.0.1"
else
    fail "posternd's own log: expected '3 127.0.0.1', got '$got'"
    sed 's/^/     /' "$WORK/stderr.log"
fi
# Every line the filter took must be a fail or lockout line, and the log
# must hold lines it left alone (started, ok, action exit).
taken=$(fail2ban-regex -o msg "$WORK/stderr.log" "$FILTER" 2>/dev/null)
others=$(printf '%s\n' "$taken" | grep -cv -e ': fail src=' -e ': lockout src=' || true)
left=$(grep -c -e ': started ' -e ': ok src=' "$WORK/stderr.log" || true)
if [ "$others" -eq 0 ] && [ "$left" -eq 2 ] && ! printf '%s\n' "$taken" | grep -q -e ': started ' -e ': ok src='; then
    pass "posternd's started and ok lines do not match"
else
    fail "unexpected lines matched, or started/ok lines missing from the log"
    printf '%s\n' "$taken" | sed 's/^/     matched: /'
fi

finish
