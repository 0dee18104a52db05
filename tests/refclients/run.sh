#!/bin/sh
# Tests for the reference clients client/postern.sh and client/postern.py.
#
#   tests/refclients/run.sh
#
# 1. Vectors: each client's `selftest` against tests/vectors (postern.sh
#    under dash, bash and busybox sh; postern.py under python3).
# 2. Fake server: every client variant against tests/refclients/fake_server.py,
#    which plays posternd's side of one exchange and reports what it saw:
#    each ack status and reason with its seconds and output line, unknown
#    statuses and reasons, wrong key, missing/forged/truncated ack, bytes
#    after the ack, a postern-1 greeting and an ostiary-4-like server (exit
#    3, at once), closes, timeouts (the ack wait is its own, not --timeout),
#    the one "waiting for the server to start NAME..." line on a terminal
#    (under script(1)) and none elsewhere, ostiary-4, key sources and key
#    texts, host normalisation, file permissions, asserted addresses (the
#    ones the server refuses are refused with exit 64), IPv6 transport, and
#    (postern.py) HTTP and SOCKS5 proxies.
# 3. Real daemon: every variant against $POSTERND (default
#    target/debug/posternd; skipped, or under CI=true failed, without it):
#    started, already open, cooldown, open for another address, run failed,
#    bind_source, wrong key, a postern-2 client on the ostiary-4 port, the
#    waiting line on a terminal while a gate's run takes 2 s, ostiary-4.
# 4. Live daemon (optional): with POSTERN_TEST_DAEMON=host:port and
#    POSTERN_TEST_KEY_FILE=F, each variant triggers that daemon and must
#    exit with POSTERN_TEST_EXPECT (default 0).
#
# Client variants: dash+nc.openbsd, dash+nc.traditional, dash+socat,
# bash+devtcp, busybox (sh, nc and tools from busybox only), python3.
# Needs (Debian packages): dash bash socat netcat-openbsd
# netcat-traditional busybox openssl python3 coreutils bsdutils (script).
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
PD_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    [ -n "$PD_PID" ] && kill "$PD_PID" 2>/dev/null
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

# vector FILE CASE NAME: the value of NAME in case CASE of tests/vectors/FILE.
vector() {
    awk -v c="$2" -v n="$3" '
        /^case = / { cur = substr($0, 8) }
        cur == c && index($0, n " = ") == 1 { print substr($0, length(n) + 4); exit }
    ' "$VECTORS/$1"
}

KEY=$(vector postern-2.vectors 2 key)
WRONG_KEY=$(vector postern-2.vectors 3 key)
PASSPHRASE=$(vector kdf.vectors 1 passphrase)
MASTER=$(vector kdf.vectors 1 master)
# web-17 / console; WEB-17.Example.COM. / console; [2001:DB8::17]:7001 / sshd.
PASSPHRASE_KEY=$(vector kdf.vectors 1 passphrase_key)
FLEET_KEY=$(vector kdf.vectors 1 fleet_key)
PASSPHRASE_KEY_UPPER=$(vector kdf.vectors 2 passphrase_key)
FLEET_KEY_V6=$(vector kdf.vectors 3 fleet_key)
# The NFD passphrase of case 6 (web-17 / sshd): its bytes as typed.
NFD_HEX=$(vector kdf.vectors 6 passphrase_hex)
NFD_KEY=$(vector kdf.vectors 6 passphrase_key)
# The addresses the server refuses to act for (postern-2-negative.vectors).
REFUSED_ADDRS=$(awk '/^addr = / { a = substr($0, 8) } /^expect = refuse$/ { print a }' \
    "$VECTORS/postern-2-negative.vectors")
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
    printf ' \t%s\r\n' "$KEY" >"$W/key-spaced"
    printf '\302\240%s\n' "$KEY" >"$W/key-nbsp"
    printf '%s=\n' "$KEY" >"$W/key-overpadded"
    printf '%s\n' "${KEY%=}" >"$W/key-unpadded"
    "$PY" -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]) + b"\n")' "$NFD_HEX" \
        >"$W/passphrase-nfd"
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
    for a in sh od dd tr mkfifo mktemp ls rm sleep stty cat nc date; do
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

# One executable per variant, $W/client-VARIANT ARGS..., so that a case
# can also run under script(1) on a pty.
for v in $VARIANTS; do
    case $v in
        dash+nc.openbsd) _c="PATH='$W/nc-openbsd':\"\$PATH\" POSTERN_TRANSPORT=nc exec '$DASH' '$SH_CLIENT'" ;;
        dash+nc.traditional) _c="PATH='$W/nc-trad':\"\$PATH\" POSTERN_TRANSPORT=nc exec '$DASH' '$SH_CLIENT'" ;;
        dash+socat) _c="POSTERN_TRANSPORT=socat exec '$DASH' '$SH_CLIENT'" ;;
        bash+devtcp) _c="POSTERN_TRANSPORT=devtcp exec '$BASH' '$SH_CLIENT'" ;;
        busybox) _c="PATH='$W/busybox' POSTERN_TRANSPORT=nc exec '$BUSYBOX' sh '$SH_CLIENT'" ;;
        python3) _c="exec '$(have "$PY")' '$PY_CLIENT'" ;;
    esac
    printf '#!/bin/sh\n%s "$@"\n' "$_c" >"$W/client-$v"
    chmod 755 "$W/client-$v"
done

# run_client VARIANT ARGS... (stdin and stdout are the caller's)
run_client() {
    _v=$1
    shift
    "$W/client-$_v" "$@"
}

SCRIPT=$(have script)

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
#   WANT_VERDICT: what the server must report, or "-" for no fake server
#   (the target is then a closed port, or 127.0.0.1:$REAL_PORT when
#   REAL_PORT is set). WANT_LINE: the client's output after "TARGET: "
#   (@TARGET@ in it stands for the target, @UNTIL@ for the local HH:MM
#   UNTIL_SECS seconds after the run), or "-" to check that stderr is not
#   empty instead. The client runs `CMD TARGET ARGS...` (CMD: trigger,
#   or close when set so).
# Per-case settings, reset after each case: CMD, SRV (fake server options), BIND,
# CLIENT_IN, PROXY, REAL_PORT, UNTIL_SECS, MAX_MS (the run must take less),
# ERR_EMPTY=1 (stderr must be empty), ERR_HAS (stderr must contain it),
# PTY=1 (run under script(1): stderr is a terminal, and is checked for
# exactly WAIT_LINES "waiting for the server to start ..." lines).
fake_case() {
    _v=$1 _name="$1: $2" _want_rc=$3 _want_verdict=$4 _want_line=$5
    shift 5
    SERVER_PID=
    if [ -n "${REAL_PORT:-}" ]; then
        PORT=$REAL_PORT
    elif [ "$_want_verdict" = - ]; then
        PORT=$(free_port)
    elif ! start_server; then
        fail "$_name" "fake server did not start"
        stop_server
        fake_reset
        return
    fi
    case $BIND in *:*) _target="[$BIND]:$PORT" ;; *) _target="$BIND:$PORT" ;; esac
    if [ -n "$PROXY" ]; then
        set -- "$@" --proxy "$PROXY://$_target"
        _target=$PROXY_TARGET
    fi
    _t0=$(date +%s)
    _m0=$(now_ms)
    if [ -n "${PTY:-}" ]; then
        _cmd="'$W/client-$_v' ${CMD:-trigger} '$_target'"
        for _a in "$@"; do _cmd="$_cmd '$_a'"; done
        SHELL=/bin/sh "$SCRIPT" -q -e -c "$_cmd <'$CLIENT_IN' >'$W/out'" "$W/err" </dev/null >/dev/null 2>&1
    else
        run_client "$_v" "${CMD:-trigger}" "$_target" "$@" <"$CLIENT_IN" >"$W/out" 2>"$W/err"
    fi
    _rc=$?
    _m1=$(now_ms)
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
    if [ "$_want_line" != - ]; then
        case $_want_line in
            *@UNTIL@*)
                # The HH:MM the client can have printed: from the start to the end of its run.
                _ok=
                for _u in $((_t0 + UNTIL_SECS - 1)) $((_t0 + UNTIL_SECS)) $((_t1 + UNTIL_SECS)); do
                    _hm=$(date -d "@$_u" +%H:%M)
                    _w="${_want_line%%@UNTIL@*}$_hm${_want_line#*@UNTIL@}"
                    [ "$_out" = "$_target: $_w" ] && _ok=1
                done
                [ -n "$_ok" ] || _problem="${_problem:+$_problem; }output '$_out', want '$_target: $_w' (or a minute before)"
                ;;
            *)
                [ "$_out" = "$_target: $_want_line" ] ||
                    _problem="${_problem:+$_problem; }output '$_out', want '$_target: $_want_line'"
                ;;
        esac
    fi
    if [ -n "${MAX_SECS:-}" ] && [ $((_t1 - _t0)) -gt "$MAX_SECS" ]; then
        _problem="${_problem:+$_problem; }took $((_t1 - _t0)) s, limit $MAX_SECS s"
    fi
    if [ -n "${MAX_MS:-}" ] && [ $((_m1 - _m0)) -ge "$MAX_MS" ]; then
        _problem="${_problem:+$_problem; }took $((_m1 - _m0)) ms, limit $MAX_MS ms"
    fi
    if [ -n "${ERR_EMPTY:-}" ] && [ -s "$W/err" ]; then
        _problem="${_problem:+$_problem; }stderr not empty"
    fi
    if [ -n "${ERR_HAS:-}" ] && ! grep -qF -- "$ERR_HAS" "$W/err"; then
        _problem="${_problem:+$_problem; }stderr does not name '$ERR_HAS'"
    fi
    if [ -n "${PTY:-}" ]; then
        _n=$(grep -c "^waiting for the server to ${WAIT_VERB:-start} ${WAIT_NAME:-the action}…" "$W/err")
        _all=$(grep -c "waiting for the server" "$W/err")
        [ "$_n" = "$WAIT_LINES" ] && [ "$_all" = "$WAIT_LINES" ] ||
            _problem="${_problem:+$_problem; }$_all waiting lines ($_n as wanted) on the terminal, want $WAIT_LINES"
    fi
    if [ -n "$_problem" ]; then
        fail "$_name" "$_problem$( [ -s "$W/err" ] && printf ' (stderr: %s)' "$(head -n 2 "$W/err" | tr '\n' ' ')")"
    else
        pass "$_name$( [ -n "${MAX_MS:-}" ] && printf ' (%s ms)' $((_m1 - _m0)))"
    fi
    fake_reset
}

fake_reset() {
    SRV='' BIND=127.0.0.1 CLIENT_IN=/dev/null MAX_SECS='' MAX_MS='' PROXY='' REAL_PORT=''
    UNTIL_SECS='' ERR_EMPTY='' ERR_HAS='' PTY='' WAIT_LINES='' WAIT_NAME='' WAIT_VERB='' CMD=''
}

now_ms() {
    _ns=$(date +%s%N)
    echo $((_ns / 1000000))
}

fake_reset

NOACK="no acknowledgement (wrong key, locked out or refused)"
FORGED="no acknowledgement (the acknowledgement did not verify: wrong key or tampering)"
NOGREET="connection failed: server closed before sending its challenge"
NOT_P2="not a postern-2 greeting: the port looks like an ostiary-4 or other service; try --protocol ostiary-4"
TIMEDOUT="connection failed: timed out after"
OSTIARY="reply sent (ostiary-4 gives no acknowledgement)"

# reason_phrase N: the phrase of reason byte N (p2spec, src/wire.rs).
reason_phrase() {
    case $1 in
        1) echo "cooling down" ;;
        2) echo "the server is busy" ;;
        3) echo "the asserted address is not this connection's source (bind_source)" ;;
        4) echo "the asserted address cannot be acted for" ;;
        5) echo "it is open for another address" ;;
        6) echo "the server's config changed; try again" ;;
        7) echo "the server is shutting down" ;;
        8) echo "the gate is open for as many addresses as it allows" ;;
        16) echo "the program could not be started" ;;
        17) echo "the run command failed" ;;
        18) echo "the run command timed out" ;;
        19) echo "the served program exited at once" ;;
        20) echo "the server could not record the gate" ;;
        *) echo "reason $1" ;;
    esac
}

IPV6=
if [ "${POSTERN_TEST_NO_IPV6:-}" != 1 ] &&
    "$PY" -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
    IPV6=1
fi

if [ -z "$SCRIPT" ]; then
    skip "waiting line on a terminal" "script not found (apt-get install bsdutils)"
fi

for v in $VARIANTS; do
    K=--key-file
    A="--mode ack --key-b64 $KEY"
    # Each status, with and without seconds, with and without an action name.
    SRV="$A --status 1 --expect-addr none"
    fake_case "$v" "started, no time, no name" 0 verified "accepted; the action started" $K "$W/key"
    SRV="$A --status 1 --seconds 900"
    UNTIL_SECS=900
    fake_case "$v" "started, gate open 900 s" 0 verified "accepted; sshd open for 15 min (until @UNTIL@)" \
        sshd $K "$W/key"
    SRV="$A --status 1 --seconds 5400"
    UNTIL_SECS=5400
    TZ=XYZ-5:30
    export TZ
    fake_case "$v" "started, 5400 s, local time of TZ=XYZ-5:30" 0 verified \
        "accepted; console open for 1 h 30 min (until @UNTIL@)" $K "$W/key" --action console
    unset TZ
    SRV="$A --status 2"
    fake_case "$v" "already active, no time" 0 verified "accepted; sshd already running" sshd $K "$W/key"
    SRV="$A --status 2 --seconds 600"
    UNTIL_SECS=600
    fake_case "$v" "already active, 600 s left" 0 verified \
        "accepted; the action already open, 10 min left (until @UNTIL@)" $K "$W/key"
    SRV="$A --status 3 --reason 1 --seconds 40"
    fake_case "$v" "refused, cooldown 40 s" 4 verified "refused: cooling down, try again in 40 s" $K "$W/key"
    SRV="$A --status 3 --reason 1 --seconds 3601"
    fake_case "$v" "refused, cooldown 3601 s" 4 verified "refused: cooling down, try again in 1 h 1 min" $K "$W/key"
    SRV="$A --status 3 --reason 5 --seconds 125"
    fake_case "$v" "refused, open for another address" 4 verified \
        "refused: it is open for another address, closes in 3 min" $K "$W/key"
    SRV="$A --status 3 --reason 8 --seconds 125"
    fake_case "$v" "refused, addresses full" 4 verified \
        "refused: it is open for as many addresses as it allows; the first closes in 3 min" $K "$W/key"
    for r in 2 3 4 6 7 8 200; do
        SRV="$A --status 3 --reason $r"
        fake_case "$v" "refused, reason $r" 4 verified "refused: $(reason_phrase $r)" $K "$W/key"
    done
    for r in 16 17 18 19 20 0 99; do
        SRV="$A --status 4 --reason $r"
        _p=$(reason_phrase $r)
        [ "$r" = 0 ] && _p="no reason given"
        fake_case "$v" "failed, reason $r" 5 verified "failed: $_p" $K "$W/key"
    done
    # Closing: closed and not-open are successes; for close, an opened gate
    # (the key was an opening action's) is a failure.
    SRV="$A --status 5"
    fake_case "$v" "closed" 0 verified "closed; sshd closed now" sshd $K "$W/key"
    SRV="$A --status 6"
    fake_case "$v" "not open" 0 verified "not open; the action was not open, nothing to close" $K "$W/key"
    SRV="$A --status 5"
    CMD=close
    fake_case "$v" "close: closed" 0 verified "closed; sshd closed now" sshd $K "$W/key"
    SRV="$A --status 6"
    CMD=close
    fake_case "$v" "close: not open" 0 verified "not open; sshd was not open, nothing to close" sshd $K "$W/key"
    SRV="$A --status 1 --seconds 600"
    CMD=close
    UNTIL_SECS=600
    fake_case "$v" "close with an opening key: exit 5" 5 verified \
        "accepted; sshd open for 10 min (until @UNTIL@)" sshd $K "$W/key"
    CMD=close
    fake_case "$v" "close without a GATE: usage" 64 - - $K "$W/key"
    # A genuine ack with a status the client does not know is no valid ack.
    for st in 0 7 9 255; do
        SRV="$A --status $st"
        fake_case "$v" "unknown status $st (valid MAC)" 2 verified \
            "no acknowledgement (status $st is not one this client knows)" $K "$W/key"
    done
    # Exactly 38 bytes are read: bytes after the ack change nothing.
    SRV="$A --status 1 --trailing 16"
    fake_case "$v" "16 bytes after the ack ignored" 0 verified "accepted; the action started" $K "$W/key"

    SRV="--mode ack --key-b64 $KEY"
    fake_case "$v" "wrong key, no ack" 2 bad-mac "$NOACK" $K "$W/wrong-key"
    SRV="--mode noack --key-b64 $KEY"
    fake_case "$v" "verified but no ack" 2 verified "$NOACK" $K "$W/key"
    SRV="--mode forged --key-b64 $KEY"
    fake_case "$v" "forged ack" 2 verified "$FORGED" $K "$W/key"
    SRV="--mode truncated --key-b64 $KEY"
    fake_case "$v" "33-byte (postern-1 length) ack, then close" 2 verified "$NOACK" $K "$W/key"
    # Not postern-2: the client closes at once, sends nothing, exit 3,
    # long before the server (10 s) or the client (30 s) would time out.
    SRV="--mode badgreeting"
    MAX_MS=3000
    fake_case "$v" "postern-1 greeting: closed at once" 3 sent-bad-greeting "$NOT_P2" $K "$W/key"
    SRV="--mode ostiary-like"
    MAX_MS=3000
    fake_case "$v" "ostiary-4-like server: closed at once" 3 sent-bad-greeting "$NOT_P2" $K "$W/key"
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
    # The ack has its own bound: --timeout does not cut it short, --ack-timeout does.
    SRV="$A --status 1 --ack-delay 3.5"
    fake_case "$v" "ack after 3.5 s with --timeout 2" 0 verified "accepted; the action started" \
        $K "$W/key" --timeout 2
    SRV="$A --status 1 --ack-delay 4"
    MAX_SECS=3
    fake_case "$v" "no ack within --ack-timeout 1" 3 verified \
        "$TIMEDOUT 1 s waiting for the acknowledgement" $K "$W/key" --ack-timeout 1
    # The waiting line: only on a terminal, once, after 1 s without an ack.
    SRV="$A --status 1 --ack-delay 2"
    ERR_EMPTY=1
    fake_case "$v" "ack after 2 s, stderr not a terminal: no waiting line" 0 verified \
        "accepted; sshd started" sshd $K "$W/key"
    if [ -n "$SCRIPT" ]; then
        SRV="$A --status 1 --ack-delay 2"
        PTY=1 WAIT_LINES=1 WAIT_NAME=sshd
        fake_case "$v" "ack after 2 s on a terminal: one waiting line" 0 verified \
            "accepted; sshd started" sshd $K "$W/key"
        SRV="$A --status 1 --ack-delay 2"
        PTY=1 WAIT_LINES=1 WAIT_NAME="the action"
        fake_case "$v" "ack after 2 s on a terminal, no action name" 0 verified \
            "accepted; the action started" $K "$W/key"
        SRV="$A --status 5 --ack-delay 2"
        PTY=1 WAIT_LINES=1 WAIT_NAME=sshd WAIT_VERB=close CMD=close
        fake_case "$v" "close acked after 2 s on a terminal: one waiting line" 0 verified \
            "closed; sshd closed now" sshd $K "$W/key"
        SRV="$A --status 1"
        PTY=1 WAIT_LINES=0
        fake_case "$v" "prompt ack on a terminal: no waiting line" 0 verified \
            "accepted; sshd started" sshd $K "$W/key"
    fi
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
    fake_case "$v" "key text with a no-break space around it (exit 1)" 1 - - $K "$W/key-nbsp"
    fake_case "$v" "key text with too much padding (exit 1)" 1 - - $K "$W/key-overpadded"
    fake_case "$v" "bad --assert-addr (exit 64)" 64 - - $K "$W/key" --assert-addr 1::2::3
    for a in $REFUSED_ADDRS; do
        ERR_HAS="--assert-addr $a"
        fake_case "$v" "--assert-addr $a refused (exit 64)" 64 - - $K "$W/key" --assert-addr "$a"
    done
    fake_case "$v" "unknown option (exit 64)" 64 - - $K "$W/key" --bogus
    fake_case "$v" "two key sources (exit 64)" 64 - - $K "$W/key" --master "$W/master" --action a
    fake_case "$v" "--host-name without derivation (exit 64)" 64 - - $K "$W/key" --host-name h
    fake_case "$v" "--passphrase without action (exit 64)" 64 - - --passphrase
    fake_case "$v" "ostiary-4 with --key-file (exit 64)" 64 - - --protocol ostiary-4 $K "$W/key"

    STARTED="accepted; the action started"
    SRV="--mode ack --key-b64 $KEY --expect-addr 203.0.113.7"
    fake_case "$v" "asserted IPv4" 0 verified "$STARTED" $K "$W/key" --assert-addr 203.0.113.7
    SRV="--mode ack --key-b64 $KEY --expect-addr 2001:db8::42"
    fake_case "$v" "asserted IPv6" 0 verified "$STARTED" $K "$W/key" --assert-addr 2001:DB8:0:0::42
    SRV="--mode ack --key-b64 $KEY --expect-addr ::ffff:192.0.2.1"
    fake_case "$v" "asserted IPv4-mapped IPv6" 0 verified "$STARTED" $K "$W/key" --assert-addr 192.0.2.1
    SRV="--mode ack --key-b64 $KEY --expect-addr ::1"
    fake_case "$v" "asserted ::1" 0 verified "$STARTED" $K "$W/key" --assert-addr ::1
    SRV="--mode ack --key-b64 $KEY --expect-addr 198.51.100.1"
    fake_case "$v" "asserted address mismatch seen by server" 2 bad-addr "$NOACK" $K "$W/key" --assert-addr 203.0.113.7

    # Key texts: surrounding ASCII space, tab, CR and LF are ignored;
    # padding is optional.
    SRV="--mode ack --key-b64 $KEY"
    fake_case "$v" "key file with space, tab and CRLF around the key" 0 verified "$STARTED" $K "$W/key-spaced"
    SRV="--mode ack --key-b64 $KEY"
    fake_case "$v" "unpadded key file" 0 verified "$STARTED" $K "$W/key-unpadded"
    POSTERN_TEST_KEY=$(printf '\t%s\r.' "$KEY")
    POSTERN_TEST_KEY=${POSTERN_TEST_KEY%.}
    export POSTERN_TEST_KEY
    SRV="--mode ack --key-b64 $KEY"
    fake_case "$v" "--key-env with tab and CR around the key" 0 verified "$STARTED" --key-env POSTERN_TEST_KEY
    unset POSTERN_TEST_KEY
    SRV="--mode ack --key-b64 $KEY"
    CLIENT_IN=$W/key
    fake_case "$v" "key on standard input" 0 verified "$STARTED"
    SRV="--mode ack --key-b64 $PASSPHRASE_KEY"
    CLIENT_IN=$W/passphrase-input
    fake_case "$v" "--passphrase (kdf case 1)" 0 verified "accepted; console started" \
        --passphrase --host-name web-17 --action console
    SRV="--mode ack --key-b64 $FLEET_KEY"
    fake_case "$v" "--master (kdf case 1)" 0 verified "accepted; console started" \
        --master "$W/master" --host-name web-17 --action console
    # Host normalisation: case, one trailing dot, brackets and port.
    SRV="--mode ack --key-b64 $PASSPHRASE_KEY_UPPER"
    CLIENT_IN=$W/passphrase-input
    fake_case "$v" "--passphrase --host-name WEB-17.Example.COM. (kdf case 2)" 0 verified \
        "accepted; console started" --passphrase --host-name WEB-17.Example.COM. --action console
    SRV="--mode ack --key-b64 $FLEET_KEY_V6"
    fake_case "$v" "--master --host-name [2001:DB8::17]:7001 (kdf case 3)" 0 verified \
        "accepted; sshd started" --master "$W/master" --host-name "[2001:DB8::17]:7001" --action sshd
    SRV="--mode ack --key-b64 $FLEET_KEY"
    fake_case "$v" "--master --host-name web-17:7001 (kdf case 4)" 0 verified \
        "accepted; console started" --master "$W/master" --host-name web-17:7001 console
    # Passphrase bytes as typed: the NFD text gives the NFD key.
    SRV="--mode ack --key-b64 $NFD_KEY"
    CLIENT_IN=$W/passphrase-nfd
    fake_case "$v" "--passphrase in Unicode NFD, bytes as typed (kdf case 6)" 0 verified \
        "accepted; sshd started" --passphrase --host-name web-17 --action sshd
    # Without --host-name, the host as given (here 127.0.0.1) is derived
    # for; the action may be the second positional.
    SRV="--mode ack --key-b64 $LOOPBACK_PASSPHRASE_KEY"
    CLIENT_IN=$W/passphrase-input
    fake_case "$v" "--passphrase, default host name, positional action" 0 verified "accepted; console started" \
        console --passphrase
    SRV="--mode ack --key-b64 $LOOPBACK_FLEET_KEY"
    fake_case "$v" "--master, default host name, positional action" 0 verified "accepted; console started" \
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
# 3. Real daemon

POSTERND=${POSTERND:-$ROOT/target/debug/posternd}
stop_daemon() {
    if [ -n "$PD_PID" ]; then
        kill "$PD_PID" 2>/dev/null
        wait "$PD_PID" 2>/dev/null
    fi
    PD_PID=
}

# real_key NAME: a fresh key for action NAME in $W/real/NAME.key.
real_key() {
    (umask 077 && openssl rand -base64 32 >"$W/real/$1.key")
}

# real_action NAME LINES...: an [[action]] keyed by $W/real/NAME.key.
real_action() {
    _ra=$1
    shift
    real_key "$_ra"
    printf '\n[[action]]\nname = "%s"\nkey_file = "%s"\n' "$_ra" "$W/real/$_ra.key"
    for _rl in "$@"; do printf '%s\n' "$_rl"; done
}

if [ ! -x "$POSTERND" ]; then
    skip "real daemon" "$POSTERND not found (cargo build --bins, or set POSTERND)"
elif [ -z "$VARIANTS" ]; then
    skip "real daemon" "no client variant"
else
    mkdir -m 700 "$W/real"
    (umask 077 && printf 'Sample\n' >"$W/real/o4.pw")
    {
        cat <<EOF
[daemon]
state_dir = "$W/real/state"

[limits]
handshake_timeout = "10s"
rate_burst = 100000
rate_per_minute = 100000
lockout_after = 1000000
lockout_duration = "1h"

[[listen]]
address = "127.0.0.1:0"
protocol = "postern-2"

[[listen]]
address = "127.0.0.1:0"
protocol = "ostiary-4"

[[action]]
name = "o4"
password_file = "$W/real/o4.pw"
run = ["/bin/true"]
single_instance = false
EOF
        real_action fire 'run = ["/bin/true"]' 'single_instance = false'
        real_action fails 'run = ["/bin/false"]' 'stop = ["/bin/true"]' 'ttl = "1m"'
        real_action bound 'run = ["/bin/true"]' 'bind_source = true' 'single_instance = false'
        _i=0
        for v in $VARIANTS; do
            _i=$((_i + 1))
            real_action "gate$_i" 'run = ["/bin/true"]' 'stop = ["/bin/true"]' 'ttl = "15m"' 'extend = false'
            real_action "cool$_i" 'run = ["/bin/true"]' 'single_instance = false' 'cooldown = "1h"'
            real_action "other$_i" 'run = ["/bin/true"]' 'stop = ["/bin/true"]' 'ttl = "15m"'
            real_action "slow$_i" 'run = ["/bin/sleep", "2"]' 'stop = ["/bin/true"]' 'ttl = "1m"'
            real_action "door$_i" 'run = ["/bin/true", "{addr}"]' 'stop = ["/bin/true", "{addr}"]' \
                'stop_all = ["/bin/true"]' 'ttl = "15m"' 'per_address = true' 'max_addresses = 1'
            real_action "door$_i.close" "closes = \"door$_i\""
        done
    } >"$W/real/posternd.toml"
    chmod 600 "$W/real/posternd.toml"
    "$POSTERND" --config "$W/real/posternd.toml" </dev/null >/dev/null 2>"$W/real/posternd.log" &
    PD_PID=$!
    REAL_P2='' REAL_O4=''
    _end=$(($(now_ms) + 10000))
    while [ "$(now_ms)" -lt "$_end" ]; do
        _l=$(grep ' started .*listeners=' "$W/real/posternd.log" | head -n 1)
        if [ -n "$_l" ]; then
            REAL_P2=$(printf '%s\n' "$_l" | sed -n 's/.*127\.0\.0\.1:\([0-9]*\)(postern-2).*/\1/p')
            REAL_O4=$(printf '%s\n' "$_l" | sed -n 's/.*127\.0\.0\.1:\([0-9]*\)(ostiary-4).*/\1/p')
            break
        fi
        kill -0 "$PD_PID" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$REAL_P2" ] || [ -z "$REAL_O4" ]; then
        fail "real daemon" "posternd did not start: $(head -n 3 "$W/real/posternd.log" | tr '\n' ' ')"
        stop_daemon
    else
        pass "real daemon: posternd on 127.0.0.1:$REAL_P2 (postern-2) and 127.0.0.1:$REAL_O4 (ostiary-4)"
        _i=0
        for v in $VARIANTS; do
            _i=$((_i + 1))
            R=$W/real
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: plain run started" 0 - "accepted; fire started" fire --key-file "$R/fire.key"
            REAL_PORT=$REAL_P2 UNTIL_SECS=900
            fake_case "$v" "real: gate opened for 15 min" 0 - "accepted; gate$_i open for 15 min (until @UNTIL@)" \
                "gate$_i" --key-file "$R/gate$_i.key"
            REAL_PORT=$REAL_P2 UNTIL_SECS=900
            fake_case "$v" "real: gate already open" 0 - \
                "accepted; gate$_i already open, 15 min left (until @UNTIL@)" "gate$_i" --key-file "$R/gate$_i.key"
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: first run of a 1 h cooldown action" 0 - "accepted; cool$_i started" \
                "cool$_i" --key-file "$R/cool$_i.key"
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: cooldown" 4 - "refused: cooling down, try again in 1 h" \
                "cool$_i" --key-file "$R/cool$_i.key"
            REAL_PORT=$REAL_P2 UNTIL_SECS=900
            fake_case "$v" "real: gate opened for 192.0.2.7" 0 - "accepted; other$_i open for 15 min (until @UNTIL@)" \
                "other$_i" --key-file "$R/other$_i.key" --assert-addr 192.0.2.7
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: open for another address" 4 - \
                "refused: it is open for another address, closes in 15 min" \
                "other$_i" --key-file "$R/other$_i.key" --assert-addr 192.0.2.8
            # A door per address (at most one here), and closing it early.
            REAL_PORT=$REAL_P2 UNTIL_SECS=900
            fake_case "$v" "real: door opened for 192.0.2.7" 0 - "accepted; door$_i open for 15 min (until @UNTIL@)" \
                "door$_i" --key-file "$R/door$_i.key" --assert-addr 192.0.2.7
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: door full for 192.0.2.8" 4 - \
                "refused: it is open for as many addresses as it allows; the first closes in 15 min" \
                "door$_i" --key-file "$R/door$_i.key" --assert-addr 192.0.2.8
            REAL_PORT=$REAL_P2 CMD=close
            fake_case "$v" "real: close the door of 192.0.2.7" 0 - "closed; door$_i closed now" \
                "door$_i" --key-file "$R/door$_i.close.key" --assert-addr 192.0.2.7
            REAL_PORT=$REAL_P2 CMD=close
            fake_case "$v" "real: close it again" 0 - "not open; door$_i was not open, nothing to close" \
                "door$_i" --key-file "$R/door$_i.close.key" --assert-addr 192.0.2.7
            REAL_PORT=$REAL_P2 UNTIL_SECS=900
            fake_case "$v" "real: room again, door opened for 192.0.2.8" 0 - \
                "accepted; door$_i open for 15 min (until @UNTIL@)" \
                "door$_i" --key-file "$R/door$_i.key" --assert-addr 192.0.2.8
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: run failed" 5 - "failed: the run command failed" fails --key-file "$R/fails.key"
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: bind_source" 4 - \
                "refused: the asserted address is not this connection's source (bind_source)" \
                bound --key-file "$R/bound.key" --assert-addr 192.0.2.1
            REAL_PORT=$REAL_P2
            fake_case "$v" "real: wrong key" 2 - "$NOACK" --key-file "$W/wrong-key"
            REAL_PORT=$REAL_O4 MAX_MS=3000
            fake_case "$v" "real: postern-2 client on the ostiary-4 port, closed at once" 3 - "$NOT_P2" \
                --key-file "$R/fire.key"
            REAL_PORT=$REAL_O4
            fake_case "$v" "real: ostiary-4" 0 - "$OSTIARY" --protocol ostiary-4 --password-file "$R/o4.pw"
            if [ -n "$SCRIPT" ]; then
                REAL_PORT=$REAL_P2 UNTIL_SECS=60 PTY=1 WAIT_LINES=1 WAIT_NAME="slow$_i"
                fake_case "$v" "real: gate run of 2 s on a terminal: one waiting line" 0 - \
                    "accepted; slow$_i open for 1 min (until @UNTIL@)" "slow$_i" --key-file "$R/slow$_i.key"
            fi
        done
        stop_daemon
    fi
fi

# ---------------------------------------------------------------------------
# 4. Live daemon (optional)

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
