#!/bin/sh
# Tests for the reference clients client/postern.sh and client/postern.py.
#
#   tests/refclients/run.sh
#
# 1. Vectors: each client's `selftest` against tests/vectors (postern.sh
#    under dash, bash and busybox sh; postern.py under python3).
# 2. Fake server: every client variant against tests/refclients/fake_server.py,
#    which plays posternd's side of one exchange and reports what it saw:
#    each ack status, wrong key, missing/forged/truncated ack, closes,
#    timeouts, ostiary-4, key sources, file permissions, asserted addresses,
#    IPv6 transport, and (postern.py) HTTP and SOCKS5 proxies.
# 3. Live daemon (optional): with POSTERN_TEST_DAEMON=host:port and
#    POSTERN_TEST_KEY_FILE=F, each variant triggers that daemon and must
#    exit with POSTERN_TEST_EXPECT (default 0).
#
# Client variants: dash+nc.openbsd, dash+nc.traditional, dash+socat,
# bash+devtcp, busybox (sh, nc and tools from busybox only), python3.
# Needs (Debian packages): dash bash socat netcat-openbsd
# netcat-traditional busybox openssl python3 coreutils.
#
# Prints one line per case and ends with "N passed, M failed"; exits 1 if
# anything failed. A missing tool is a skip, except under CI=true, where
# it is a failure. POSTERN_TEST_NO_IPV6=1 states that the host has no
# IPv6 loopback: the IPv6-transport cases are then skipped, even in CI.
# PYTHON=python3.8 runs the fake server and postern.py with another Python.
#
# Local errors (a key file readable by group or others, a missing or
# malformed key) exit 1, usage errors 64, as with the Rust client.

set -u
LC_ALL=C
export LC_ALL

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SH_CLIENT=$ROOT/client/postern.sh
PY_CLIENT=$ROOT/client/postern.py
VECTORS=$ROOT/tests/vectors
FAKE=$HERE/fake_server.py
PY=${PYTHON:-python3}
IN_CI=
[ "${CI:-}" = true ] && IN_CI=1

PASSED=0
FAILED=0

pass() {
    PASSED=$((PASSED + 1))
    printf 'ok   %s\n' "$1"
}

fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL %s: %s\n' "$1" "$2"
}

skip() {
    if [ -n "$IN_CI" ]; then
        fail "$1" "not run under CI=true: $2"
    else
        printf 'skip %s: %s\n' "$1" "$2"
    fi
}

W=$(mktemp -d "${TMPDIR:-/tmp}/postern-refclients.XXXXXX") || exit 1
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v "$PY" >/dev/null 2>&1 || {
    echo "FAIL setup: $PY not found (the fake server needs it)"
    echo "0 passed, 1 failed"
    exit 1
}

# ---------------------------------------------------------------------------
# Keys and files (vector keys: tests/vectors/*.vectors)

KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
WRONG_KEY=AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dw=
PASSPHRASE="correct horse battery staple"
PASSPHRASE_KEY=N99s1kxPiQ7EN2hKGjMWufqrEcetcWDcYwePx1DnP34=
MASTER=PD0+Pzg5Ojs0NTY3MDEyMywtLi8oKSorJCUmJyAhIiM=
FLEET_KEY=j/eHNJoiARjHkVaYYBdacit07fqjvGesQMDTqlGSriA=
# The same passphrase and master, derived for host 127.0.0.1, action console.
LOOPBACK_PASSPHRASE_KEY=$("$PY" -c '
import base64, hashlib, sys
salt = hashlib.sha256(b"postern-2 passphrase\x00127.0.0.1\x00console").digest()[:8]
print(base64.b64encode(hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(), salt, 600000, 32)).decode())
' "$PASSPHRASE")
LOOPBACK_FLEET_KEY=$("$PY" -c '
import base64, hashlib, hmac, sys
m = base64.b64decode(sys.argv[1])
print(base64.b64encode(hmac.new(m, b"postern-2 fleet\x00127.0.0.1\x00console", hashlib.sha256).digest()).decode())
' "$MASTER")

(
    umask 077
    printf '%s\n' "$KEY" >"$W/key"
    printf '%s\n' "$WRONG_KEY" >"$W/wrong-key"
    printf '%s\n' "$MASTER" >"$W/master"
    printf 'Sample\n' >"$W/password"
    printf 'not-Sample\n' >"$W/wrong-password"
    printf '%s\n' "$PASSPHRASE" >"$W/passphrase-input"
    printf '%s\n' "$KEY" >"$W/open-key"
    printf 'Sample\n' >"$W/open-password"
)
chmod 644 "$W/open-key" "$W/open-password"

# ---------------------------------------------------------------------------
# Client variants

VARIANTS=

# Adds variant $1 when tool $2 exists; otherwise skips it (fails under CI).
add_variant() {
    if [ -n "$2" ]; then
        VARIANTS="$VARIANTS $1"
    else
        skip "variant $1" "$3"
    fi
}

have() { command -v "$1" 2>/dev/null; }

NC_OPENBSD=$(have nc.openbsd)
if [ -z "$NC_OPENBSD" ] && nc -h 2>&1 | grep -qi openbsd; then NC_OPENBSD=$(have nc); fi
NC_TRAD=$(have nc.traditional)
if [ -n "$NC_OPENBSD" ]; then mkdir "$W/nc-openbsd" && ln -s "$NC_OPENBSD" "$W/nc-openbsd/nc"; fi
if [ -n "$NC_TRAD" ]; then mkdir "$W/nc-trad" && ln -s "$NC_TRAD" "$W/nc-trad/nc"; fi
BUSYBOX=$(have busybox)
if [ -n "$BUSYBOX" ] && ! "$BUSYBOX" --list 2>/dev/null | grep -qx nc; then BUSYBOX=; fi
if [ -n "$BUSYBOX" ]; then
    # A PATH with busybox applets and openssl only, as on iSH or a router.
    mkdir "$W/busybox"
    for a in sh od dd tr mkfifo mktemp ls rm sleep stty cat nc; do
        ln -s "$BUSYBOX" "$W/busybox/$a"
    done
    ln -s "$(command -v openssl)" "$W/busybox/openssl"
fi
DASH=$(have dash)
BASH=$(have bash)
SOCAT=$(have socat)
OPENSSL=$(have openssl)

if [ -z "$OPENSSL" ]; then
    skip "postern.sh" "openssl not found (apt-get install openssl)"
else
    [ -n "$DASH" ] && [ -n "$NC_OPENBSD" ] && _ok=1 || _ok=
    add_variant dash+nc.openbsd "$_ok" "needs dash and netcat-openbsd"
    [ -n "$DASH" ] && [ -n "$NC_TRAD" ] && _ok=1 || _ok=
    add_variant dash+nc.traditional "$_ok" "needs dash and netcat-traditional"
    [ -n "$DASH" ] && [ -n "$SOCAT" ] && _ok=1 || _ok=
    add_variant dash+socat "$_ok" "needs dash and socat"
    add_variant bash+devtcp "$BASH" "needs bash"
    add_variant busybox "$BUSYBOX" "needs busybox (with nc)"
fi
add_variant python3 "$(have "$PY")" "needs $PY"

# run_client VARIANT ARGS... (stdin and stdout are the caller's)
run_client() {
    _v=$1
    shift
    case $_v in
        dash+nc.openbsd) PATH="$W/nc-openbsd:$PATH" POSTERN_TRANSPORT=nc dash "$SH_CLIENT" "$@" ;;
        dash+nc.traditional) PATH="$W/nc-trad:$PATH" POSTERN_TRANSPORT=nc dash "$SH_CLIENT" "$@" ;;
        dash+socat) POSTERN_TRANSPORT=socat dash "$SH_CLIENT" "$@" ;;
        bash+devtcp) POSTERN_TRANSPORT=devtcp bash "$SH_CLIENT" "$@" ;;
        busybox) PATH="$W/busybox" POSTERN_TRANSPORT=nc "$BUSYBOX" sh "$SH_CLIENT" "$@" ;;
        python3) "$PY" "$PY_CLIENT" "$@" ;;
    esac
}

# ---------------------------------------------------------------------------
# 1. Vectors

selftest_case() { # name, then the command
    _n=$1
    shift
    if "$@" selftest "$VECTORS" >"$W/selftest.out" 2>&1; then
        pass "$_n: $(tail -n 1 "$W/selftest.out")"
    else
        fail "$_n" "$(grep -v '^ok' "$W/selftest.out" | head -n 5 | tr '\n' ' ')"
    fi
}

if [ -n "$OPENSSL" ]; then
    if [ -n "$DASH" ]; then selftest_case "vectors postern.sh (dash)" dash "$SH_CLIENT"
    else skip "vectors postern.sh (dash)" "dash not found (apt-get install dash)"; fi
    if [ -n "$BASH" ]; then selftest_case "vectors postern.sh (bash)" bash "$SH_CLIENT"
    else skip "vectors postern.sh (bash)" "bash not found"; fi
    if [ -n "$BUSYBOX" ]; then selftest_case "vectors postern.sh (busybox sh)" env PATH="$W/busybox" "$BUSYBOX" sh "$SH_CLIENT"
    else skip "vectors postern.sh (busybox sh)" "busybox not found (apt-get install busybox)"; fi
fi
selftest_case "vectors postern.py ($PY)" "$PY" "$PY_CLIENT"

# ---------------------------------------------------------------------------
# 2. Fake server

# Server options for the next case, word-split (no value contains a space).
SRV=
# Bind address for the next case.
BIND=127.0.0.1
# Standard input for the client in the next case.
CLIENT_IN=/dev/null
# Proxy scheme for the next case (the fake server then plays the proxy too,
# and the client's target is PROXY_TARGET).
PROXY=
PROXY_TARGET=

start_server() {
    rm -f "$W/port" "$W/result"
    # shellcheck disable=SC2086
    "$PY" "$FAKE" --port-file "$W/port" --result-file "$W/result" --bind "$BIND" \
        --accept-timeout 20 $SRV &
    SERVER_PID=$!
    _i=0
    while [ ! -s "$W/port" ]; do
        _i=$((_i + 1))
        [ "$_i" -gt 200 ] && return 1
        sleep 0.05
    done
    PORT=$(cat "$W/port")
}

stop_server() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
}

# A free port with nothing listening.
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# fake_case VARIANT NAME WANT_RC WANT_VERDICT WANT_LINE [CLIENT ARGS...]
#   WANT_VERDICT: what the server must report, or "-" for no server (the
#   target is then a closed port). WANT_LINE: the client's output after
#   "TARGET: " (@TARGET@ in it stands for the target), or "-" to check
#   that stderr is not empty instead. The client runs
#   `trigger TARGET ARGS...`.
fake_case() {
    _v=$1 _name="$1: $2" _want_rc=$3 _want_verdict=$4 _want_line=$5
    shift 5
    if [ "$_want_verdict" = - ]; then
        PORT=$(free_port)
        SERVER_PID=
    elif ! start_server; then
        fail "$_name" "fake server did not start"
        stop_server
        return
    fi
    case $BIND in *:*) _target="[$BIND]:$PORT" ;; *) _target="$BIND:$PORT" ;; esac
    if [ -n "$PROXY" ]; then
        set -- "$@" --proxy "$PROXY://$_target"
        _target=$PROXY_TARGET
    fi
    _t0=$(date +%s)
    run_client "$_v" trigger "$_target" "$@" <"$CLIENT_IN" >"$W/out" 2>"$W/err"
    _rc=$?
    _t1=$(date +%s)
    _verdict=-
    if [ -n "$SERVER_PID" ]; then
        # The server exits once its one exchange is over (or it gives up).
        wait "$SERVER_PID"
        SERVER_PID=
        _verdict=$(cat "$W/result" 2>/dev/null || echo "(no result)")
    fi
    _out=$(cat "$W/out")
    _problem=
    [ "$_rc" = "$_want_rc" ] || _problem="exit $_rc, want $_want_rc"
    [ "$_verdict" = "$_want_verdict" ] || _problem="${_problem:+$_problem; }server saw $_verdict, want $_want_verdict"
    if [ "$_want_line" = - ]; then
        [ -s "$W/err" ] || _problem="${_problem:+$_problem; }no error message"
    else
        case $_want_line in
            *@TARGET@*) _want_line="${_want_line%%@TARGET@*}$_target${_want_line#*@TARGET@}" ;;
        esac
    fi
    if [ "$_want_line" != - ] && [ "$_out" != "$_target: $_want_line" ]; then
        _problem="${_problem:+$_problem; }output '$_out', want '$_target: $_want_line'"
    fi
    if [ -n "${MAX_SECS:-}" ] && [ $((_t1 - _t0)) -gt "$MAX_SECS" ]; then
        _problem="${_problem:+$_problem; }took $((_t1 - _t0)) s, limit $MAX_SECS s"
    fi
    if [ -n "$_problem" ]; then
        fail "$_name" "$_problem$( [ -s "$W/err" ] && printf ' (stderr: %s)' "$(head -n 2 "$W/err" | tr '\n' ' ')")"
    else
        pass "$_name"
    fi
    SRV='' BIND=127.0.0.1 CLIENT_IN=/dev/null MAX_SECS='' PROXY=''
}

STARTED="accepted, action started"
ACTIVE="accepted, already active"
REFUSED="acknowledged, refused (cooldown, busy or address binding)"
FAILEDS="acknowledged, failed to start"
NOACK="no acknowledgement (wrong key, locked out or refused)"
FORGED="no acknowledgement (the acknowledgement did not verify: wrong key or tampering)"
NOGREET="connection failed: server closed before sending its challenge"
BADGREET="connection failed: bad greeting: not a postern-2 server"
TIMEDOUT="connection failed: timed out after"
OSTIARY="reply sent (ostiary-4 gives no acknowledgement)"

IPV6=
if [ "${POSTERN_TEST_NO_IPV6:-}" != 1 ] &&
    "$PY" -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
    IPV6=1
fi

MAX_SECS=
for v in $VARIANTS; do
    K=--key-file
    SRV="--mode ack --status 1 --key-b64 $KEY --expect-addr none"
    fake_case "$v" "started" 0 verified "$STARTED" $K "$W/key"
    SRV="--mode ack --status 2 --key-b64 $KEY"
    fake_case "$v" "already active" 0 verified "$ACTIVE" $K "$W/key"
    SRV="--mode ack --status 3 --key-b64 $KEY"
    fake_case "$v" "refused" 4 verified "$REFUSED" $K "$W/key"
    SRV="--mode ack --status 4 --key-b64 $KEY"
    fake_case "$v" "failed" 5 verified "$FAILEDS" $K "$W/key"
    SRV="--mode ack --key-b64 $KEY"
    fake_case "$v" "wrong key, no ack" 2 bad-mac "$NOACK" $K "$W/wrong-key"
    SRV="--mode noack --key-b64 $KEY"
    fake_case "$v" "verified but no ack" 2 verified "$NOACK" $K "$W/key"
    SRV="--mode forged --key-b64 $KEY"
    fake_case "$v" "forged ack" 2 verified "$FORGED" $K "$W/key"
    SRV="--mode truncated --key-b64 $KEY"
    fake_case "$v" "truncated ack" 2 verified "$NOACK" $K "$W/key"
    SRV="--mode badgreeting --key-b64 $KEY"
    fake_case "$v" "bad greeting" 3 sent-bad-greeting "$BADGREET" $K "$W/key"
    # OpenBSD nc keeps waiting after the server's close while its input is
    # open, so a close before the greeting ends in the timeout there.
    SRV="--mode close"
    if [ "$v" = dash+nc.openbsd ]; then
        MAX_SECS=4
        fake_case "$v" "closed before greeting (timeout)" 3 closed \
            "$TIMEDOUT 2 s waiting for the challenge" $K "$W/key" --timeout 2
    else
        fake_case "$v" "closed before greeting" 3 closed "$NOGREET" $K "$W/key" --timeout 5
    fi
    SRV="--mode silent"
    MAX_SECS=4
    fake_case "$v" "silent server, --timeout 1" 3 client-closed \
        "$TIMEDOUT 1 s waiting for the challenge" $K "$W/key" --timeout 1
    # OpenBSD nc says nothing about why it could not connect.
    _why="connection refused by @TARGET@"
    [ "$v" = dash+nc.openbsd ] && _why="cannot connect to @TARGET@"
    fake_case "$v" "connection refused" 3 - "connection failed: $_why" $K "$W/key"

    SRV="--mode ostiary --password Sample"
    fake_case "$v" "ostiary-4" 0 verified "$OSTIARY" --protocol ostiary-4 --password-file "$W/password"
    SRV="--mode ostiary --password Sample"
    fake_case "$v" "ostiary-4 wrong password (undetectable)" 0 bad-mac "$OSTIARY" \
        --protocol ostiary-4 --password-file "$W/wrong-password"

    export POSTERN_TEST_PASSWORD=Sample
    SRV="--mode ostiary --password Sample"
    fake_case "$v" "ostiary-4 password from --key-env" 0 verified "$OSTIARY" \
        --protocol ostiary-4 --key-env POSTERN_TEST_PASSWORD
    unset POSTERN_TEST_PASSWORD

    # Local errors exit 1 before connecting; usage errors exit 64.
    fake_case "$v" "key file mode 0644 refused (exit 1)" 1 - - $K "$W/open-key"
    fake_case "$v" "password file mode 0644 refused (exit 1)" 1 - - --protocol ostiary-4 --password-file "$W/open-password"
    fake_case "$v" "missing key file (exit 1)" 1 - - $K "$W/no-such-file"
    fake_case "$v" "malformed key (exit 1)" 1 - - $K "$W/password"
    fake_case "$v" "bad --assert-addr (exit 64)" 64 - - $K "$W/key" --assert-addr 1::2::3
    fake_case "$v" "unknown option (exit 64)" 64 - - $K "$W/key" --bogus
    fake_case "$v" "two key sources (exit 64)" 64 - - $K "$W/key" --master "$W/master" --action a
    fake_case "$v" "--host-name without derivation (exit 64)" 64 - - $K "$W/key" --host-name h
    fake_case "$v" "--passphrase without action (exit 64)" 64 - - --passphrase
    fake_case "$v" "ostiary-4 with --key-file (exit 64)" 64 - - --protocol ostiary-4 $K "$W/key"

    SRV="--mode ack --key-b64 $KEY --expect-addr 203.0.113.7"
    fake_case "$v" "asserted IPv4" 0 verified "$STARTED" $K "$W/key" --assert-addr 203.0.113.7
    SRV="--mode ack --key-b64 $KEY --expect-addr 2001:db8::42"
    fake_case "$v" "asserted IPv6" 0 verified "$STARTED" $K "$W/key" --assert-addr 2001:DB8:0:0::42
    SRV="--mode ack --key-b64 $KEY --expect-addr ::ffff:192.0.2.1"
    fake_case "$v" "asserted IPv4-mapped IPv6" 0 verified "$STARTED" $K "$W/key" --assert-addr 192.0.2.1
    SRV="--mode ack --key-b64 $KEY --expect-addr 198.51.100.1"
    fake_case "$v" "asserted address mismatch seen by server" 2 bad-addr "$NOACK" $K "$W/key" --assert-addr 203.0.113.7

    export POSTERN_TEST_KEY="$KEY"
    SRV="--mode ack --key-b64 $KEY"
    fake_case "$v" "--key-env" 0 verified "$STARTED" --key-env POSTERN_TEST_KEY
    unset POSTERN_TEST_KEY
    SRV="--mode ack --key-b64 $KEY"
    CLIENT_IN=$W/key
    fake_case "$v" "key on standard input" 0 verified "$STARTED"
    SRV="--mode ack --key-b64 $PASSPHRASE_KEY"
    CLIENT_IN=$W/passphrase-input
    fake_case "$v" "--passphrase" 0 verified "$STARTED" --passphrase --host-name web-17 --action console
    SRV="--mode ack --key-b64 $FLEET_KEY"
    fake_case "$v" "--master" 0 verified "$STARTED" --master "$W/master" --host-name web-17 --action console
    # Without --host-name, the host as given (here 127.0.0.1) is derived
    # for; the action may be the second positional.
    SRV="--mode ack --key-b64 $LOOPBACK_PASSPHRASE_KEY"
    CLIENT_IN=$W/passphrase-input
    fake_case "$v" "--passphrase, default host name, positional action" 0 verified "$STARTED" \
        console --passphrase
    SRV="--mode ack --key-b64 $LOOPBACK_FLEET_KEY"
    fake_case "$v" "--master, default host name, positional action" 0 verified "$STARTED" \
        console --master "$W/master"

    if [ "$v" = dash+nc.traditional ]; then
        # Known limitation: traditional nc speaks IPv4 only.
        BIND=::1
        fake_case "$v" "IPv6 transport unsupported by this nc" 3 - \
            "connection failed: cannot connect to @TARGET@: Unknown host" $K "$W/key"
    elif [ -n "$IPV6" ]; then
        SRV="--mode ack --key-b64 $KEY"
        BIND=::1
        fake_case "$v" "IPv6 transport" 0 verified "$STARTED" $K "$W/key"
    elif [ "${POSTERN_TEST_NO_IPV6:-}" = 1 ]; then
        printf 'skip %s: IPv6 transport: POSTERN_TEST_NO_IPV6=1\n' "$v"
    else
        skip "$v: IPv6 transport" "no IPv6 loopback (set POSTERN_TEST_NO_IPV6=1 to state that)"
    fi

    if [ "$v" = python3 ]; then
        for PROXY_TARGET in target.example:7001 "[2001:db8::1]:7001" 192.0.2.9:7001; do
            for p in http socks5; do
                SRV="--mode ack --key-b64 $KEY --proxy $p --proxy-target $PROXY_TARGET"
                PROXY=$p
                fake_case "$v" "$p proxy to $PROXY_TARGET" 0 verified "$STARTED" $K "$W/key"
            done
        done
    fi
done

# ---------------------------------------------------------------------------
# 3. Live daemon (optional)

if [ -n "${POSTERN_TEST_DAEMON:-}" ]; then
    _want=${POSTERN_TEST_EXPECT:-0}
    for v in $VARIANTS; do
        if [ -z "${POSTERN_TEST_KEY_FILE:-}" ]; then
            fail "$v: live $POSTERN_TEST_DAEMON" "POSTERN_TEST_KEY_FILE is not set"
            continue
        fi
        _out=$(run_client "$v" trigger "$POSTERN_TEST_DAEMON" --key-file "$POSTERN_TEST_KEY_FILE" 2>&1 </dev/null)
        _rc=$?
        if [ "$_rc" = "$_want" ]; then
            pass "$v: live $_out"
        else
            fail "$v: live $POSTERN_TEST_DAEMON" "exit $_rc, want $_want: $_out"
        fi
    done
fi

printf '%s passed, %s failed\n' "$PASSED" "$FAILED"
[ "$FAILED" -eq 0 ]
