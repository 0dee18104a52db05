#!/usr/bin/env bash
# The interop matrix: every client against a real posternd, both protocols.
#
# Clients: the Rust `postern`; client/postern.sh under dash with socat,
# under dash with OpenBSD nc, and under bash with /dev/tcp; client/postern.py
# under python3. Cases, for each client:
#
#   postern-2  fire        the right key: exit 0, the action's line appears
#              wrong       a wrong key: exit 2, a bad-mac line, nothing fired
#              assert      --assert-addr 127.0.0.1 on a bind_source action:
#                          exit 0 and fired; --assert-addr 127.0.0.2: exit 4,
#                          a bind-mismatch line, nothing fired
#              passphrase  --passphrase (read from standard input, which is
#                          not a terminal) with --host-name and --action; the
#                          server holds the key `postern key from-passphrase`
#                          printed: exit 0 and fired
#              fleet       --master with --host-name and --action; the server
#                          holds the key `postern key derive` printed
#   ostiary-4  fire        the right password: exit 0 and fired
#              wrong       a wrong password: exit 0 (ostiary-4 has no
#                          acknowledgement), a bad-mac line, nothing fired
#   both       lockout     a posternd of its own per client and protocol
#                          (lockout_after = 2, lockout_duration = 1h): the
#                          right key is accepted once, two wrong attempts lock
#                          127.0.0.1 out, then the right key again must fail
#                          (a locked source gets no greeting: exit 2 or 3,
#                          shown in the table) and must not fire.
#
# No client can choose its source address, and every connection to a
# 127/8 address leaves from 127.0.0.1, so each lockout scenario locks
# 127.0.0.1 itself in a daemon that serves only that scenario. The main
# daemon gets a high lockout threshold and rate limit so that the wrong
# attempts of the other cases never lock anything.
#
# Needs dash, bash, socat, nc (netcat-openbsd), openssl and python3 (Debian:
# dash socat netcat-openbsd openssl python3). Without them it fails when
# CI=true and is skipped otherwise. Runs $POSTERND and $POSTERN (default:
# ${CARGO_TARGET_DIR:-target}/debug), building them with cargo if needed.
# Needs no root. Everything lives in a mktemp -d lab and on 127.0.0.1;
# every process it starts is stopped by PID on exit. KEEP_LAB=1 keeps the
# lab.
#
# Prints one line per check, then the matrix, and ends with
# "N passed, M failed"; exits 1 if any check failed. Takes about a minute
# (most of it the debug build's PBKDF2 and the nc transport's timeouts).
#
# Usage: tests/e2e/interop.sh   (from anywhere)

set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

SH_CLIENT=$E2E_ROOT/client/postern.sh
PY_CLIENT=$E2E_ROOT/client/postern.py

require_tools "dash socat netcat-openbsd openssl python3 coreutils" \
    dash bash socat nc openssl python3 timeout
find_binaries
lab_init
T_SCRIPT=$(now_ms)

CLIENTS=(rust sh-dash sh-dash-nc sh-bash py)
CASES=(p1-fire p1-wrong assert-ok assert-bad passphrase fleet p1-lockout o4-fire o4-wrong o4-lockout)
declare -A RESULT=()

# The Rust client must not pick up an inventory from the invoking user.
export XDG_CONFIG_HOME="$LAB/xdg"
mkdir -p "$XDG_CONFIG_HOME"

KEYS=$LAB/keys
FIRED=$LAB/fired
HOST_NAME=gate.example
PASSPHRASE='interop passphrase: seven bridges of Koenigsberg'
mkdir -m 700 "$KEYS"
: >"$FIRED"

# --- helpers --------------------------------------------------------------

# run_client CLIENT STDIN ARGS...: `trigger ARGS...` with CLIENT, its
# standard input from the file STDIN; sets RC and OUT (stdout and stderr,
# one line). Bounded by timeout(1) in case a client hangs.
run_client() {
    local client=$1 input=$2
    shift 2
    local -a cmd
    case $client in
        rust) cmd=("$POSTERN") ;;
        sh-dash) cmd=(env POSTERN_TRANSPORT=socat dash "$SH_CLIENT") ;;
        sh-dash-nc) cmd=(env POSTERN_TRANSPORT=nc dash "$SH_CLIENT") ;;
        sh-bash) cmd=(env POSTERN_TRANSPORT=devtcp bash "$SH_CLIENT") ;;
        py) cmd=(python3 "$PY_CLIENT") ;;
    esac
    timeout -k 2 30 "${cmd[@]}" trigger "$@" <"$input" >"$LAB/out" 2>&1
    RC=$?
    OUT=$(tr '\n' ' ' <"$LAB/out")
    OUT=${OUT% }
}

# count FILE TEXT: lines of FILE containing TEXT.
count() {
    grep -cF -- "$2" "$1" 2>/dev/null || true
}

# Called through wait_until, which shellcheck cannot follow.
# shellcheck disable=SC2317
# count_above FILE TEXT N: more than N lines of FILE contain TEXT.
count_above() {
    [ "$(count "$1" "$2")" -gt "$3" ]
}

# record CLIENT CASE VERDICT DESCRIPTION: one report line and one matrix
# cell (VERDICT: "ok", "ok(N)" or anything else for a failure).
record() {
    local client=$1 case=$2 verdict=$3 what=$4
    case $verdict in
        ok*) RESULT[$client/$case]=$verdict; pass "$client: $what" ;;
        *) RESULT[$client/$case]=FAIL; fail "$client: $what ($verdict)" ;;
    esac
}

# keygen FILE: a fresh key in FILE, mode 600.
keygen() {
    "$POSTERN" keygen | write_private "$1"
}

# password FILE: a fresh ostiary-4 password in FILE, mode 600.
password() {
    head -c 18 /dev/urandom | base64 | write_private "$1"
}

# action NAME SECRET-KEY FILE [EXTRA-LINE]: an [[action]] table that
# appends "NAME ADDR" to $FIRED. SECRET-KEY is key_file or password_file.
action() {
    cat <<EOF

[[action]]
name = "$1"
$2 = "$3"
run = ["/bin/sh", "-c", "echo \"\$POSTERN_ACTION \$POSTERN_ADDR\" >> \"\$1\"", "sh", "$FIRED"]
${4:-}
EOF
}

# daemon_head STATE-DIR LOCKOUT-AFTER: [daemon], [limits] and both listeners.
daemon_head() {
    cat <<EOF
[daemon]
state_dir = "$1"

[limits]
handshake_timeout = "5s"
rate_burst = 100000
rate_per_minute = 100000
lockout_after = $2
lockout_duration = "1h"

[[listen]]
address = "127.0.0.1:0"
protocol = "postern-2"

[[listen]]
address = "127.0.0.1:0"
protocol = "ostiary-4"
EOF
}

# The ostiary-4 port of the daemon start_posternd just started.
o4_port() {
    sed -n 's/.* started .*[[ ]127\.0\.0\.1:\([0-9]*\)(ostiary-4).*/\1/p' "$PD_LOG" | head -n 1
}

# --- keys and the main daemon -----------------------------------------------

note "keys: one per client and action, a fleet master, a passphrase"
# PBKDF2 in a debug build takes seconds: derive while the rest is set up.
printf '%s\n' "$PASSPHRASE" | write_private "$LAB/passphrase"
"$POSTERN" key from-passphrase --host "$HOST_NAME" --action pass \
    <"$LAB/passphrase" >"$LAB/pass.out" 2>"$LAB/pass.err" &
DERIVE_PID=$!
track "$DERIVE_PID"

keygen "$KEYS/master"
"$POSTERN" key derive --master "$KEYS/master" --host "$HOST_NAME" --action fleet |
    write_private "$KEYS/fleet.derived"
keygen "$KEYS/wrong.key"
password "$KEYS/wrong.pw"
for c in "${CLIENTS[@]}"; do
    keygen "$KEYS/$c-fire.key"
    keygen "$KEYS/$c-bind.key"
    password "$KEYS/$c-o4.pw"
done

wait "$DERIVE_PID"
rc=$?
if [ $rc -ne 0 ] || ! grep -qE '^[A-Za-z0-9+/]{43}=$' "$LAB/pass.out"; then
    sed 's/^/#   /' "$LAB/pass.err"
    abort "postern key from-passphrase printed a key (exit $rc)"
fi
write_private "$KEYS/pass.derived" <"$LAB/pass.out"
pass "postern key from-passphrase and postern key derive printed the server's derived keys"

{
    daemon_head "$LAB/state" 1000000
    for c in "${CLIENTS[@]}"; do
        action "$c-fire" key_file "$KEYS/$c-fire.key"
        action "$c-bind" key_file "$KEYS/$c-bind.key" "bind_source = true"
        action "$c-o4" password_file "$KEYS/$c-o4.pw"
    done
    # Shared by every client: each trigger must run it again.
    action pass key_file "$KEYS/pass.derived" "single_instance = false"
    action fleet key_file "$KEYS/fleet.derived" "single_instance = false"
} | write_private "$LAB/main.toml"

start_posternd "$LAB/main.toml" "$LAB/main.log" || abort "the main posternd started"
MAIN_LOG=$PD_LOG
P1=$PD_PORT
O4=$(o4_port)
[ -n "$O4" ] || abort "the main posternd has an ostiary-4 listener"
pass "main posternd on 127.0.0.1:$P1 (postern-2) and 127.0.0.1:$O4 (ostiary-4)"

# --- cases against the main daemon -------------------------------------------

# fires CLIENT CASE WHAT LINE: the last run exited 0 and LINE reached $FIRED.
fires() {
    local v=ok
    if [ "$RC" -ne 0 ]; then
        v="exit $RC: $OUT"
    elif ! wait_log "$FIRED" "$4" 5; then
        v="exit 0 but no '$4' line"
    fi
    record "$1" "$2" "$v" "$3"
}

# fires_again CLIENT CASE WHAT LINE BEFORE: the last run exited 0 and $FIRED
# got one more LINE than BEFORE.
fires_again() {
    local v=ok
    if [ "$RC" -ne 0 ]; then
        v="exit $RC: $OUT"
    elif ! wait_until 5 count_above "$FIRED" "$4" "$5"; then
        v="exit 0 but no new '$4' line"
    fi
    record "$1" "$2" "$v" "$3"
}

# refused CLIENT CASE WHAT WANT-RC REASON LOG-BEFORE FIRED-BEFORE: the last
# run exited WANT-RC, the main log got a new "reason=REASON" line, and
# nothing fired.
refused() {
    local v=ok
    if [ "$RC" -ne "$4" ]; then
        v="exit $RC, expected $4: $OUT"
    elif ! wait_until 5 count_above "$MAIN_LOG" "reason=$5" "$6"; then
        v="no new reason=$5 line in posternd's log"
    elif [ "$(wc -l <"$FIRED")" -ne "$7" ]; then
        v="an action fired"
    fi
    record "$1" "$2" "$v" "$3"
}

bad_macs() { count "$MAIN_LOG" "reason=bad-mac"; }
mismatches() { count "$MAIN_LOG" "reason=bind-mismatch"; }
fired_lines() { wc -l <"$FIRED"; }

for c in "${CLIENTS[@]}"; do
    note "$c against the main posternd"

    run_client "$c" /dev/null "127.0.0.1:$P1" --key-file "$KEYS/$c-fire.key" --timeout 5
    fires "$c" p1-fire "postern-2 right key: exit 0, action fired" "$c-fire 127.0.0.1"

    b=$(bad_macs) f=$(fired_lines)
    run_client "$c" /dev/null "127.0.0.1:$P1" --key-file "$KEYS/wrong.key" --timeout 5
    refused "$c" p1-wrong "postern-2 wrong key: exit 2, bad-mac logged, nothing fired" 2 bad-mac "$b" "$f"

    run_client "$c" /dev/null "127.0.0.1:$P1" --key-file "$KEYS/$c-bind.key" \
        --assert-addr 127.0.0.1 --timeout 5
    fires "$c" assert-ok "--assert-addr 127.0.0.1, bind_source action: exit 0, fired for 127.0.0.1" \
        "$c-bind 127.0.0.1"

    b=$(mismatches) f=$(fired_lines)
    run_client "$c" /dev/null "127.0.0.1:$P1" --key-file "$KEYS/$c-bind.key" \
        --assert-addr 127.0.0.2 --timeout 5
    refused "$c" assert-bad "--assert-addr 127.0.0.2, bind_source action: exit 4, bind-mismatch logged, nothing fired" \
        4 bind-mismatch "$b" "$f"

    # --passphrase reads one line of standard input when it is not a terminal.
    n=$(count "$FIRED" "pass 127.0.0.1")
    run_client "$c" "$LAB/passphrase" "127.0.0.1:$P1" --passphrase \
        --host-name "$HOST_NAME" --action pass --timeout 5
    fires_again "$c" passphrase "--passphrase on stdin: the key from-passphrase derived is accepted" \
        "pass 127.0.0.1" "$n"

    n=$(count "$FIRED" "fleet 127.0.0.1")
    run_client "$c" /dev/null "127.0.0.1:$P1" --master "$KEYS/master" \
        --host-name "$HOST_NAME" --action fleet --timeout 5
    fires_again "$c" fleet "--master: the key postern key derive printed is accepted" \
        "fleet 127.0.0.1" "$n"

    run_client "$c" /dev/null "127.0.0.1:$O4" --protocol ostiary-4 \
        --password-file "$KEYS/$c-o4.pw" --timeout 5
    fires "$c" o4-fire "ostiary-4 right password: exit 0, action fired" "$c-o4 127.0.0.1"

    b=$(bad_macs) f=$(fired_lines)
    run_client "$c" /dev/null "127.0.0.1:$O4" --protocol ostiary-4 \
        --password-file "$KEYS/wrong.pw" --timeout 5
    refused "$c" o4-wrong "ostiary-4 wrong password: exit 0 (no ack), bad-mac logged, nothing fired" \
        0 bad-mac "$b" "$f"
done

stop_pid "$PD_PID"

# --- lockout: one daemon per client and protocol ------------------------------

# lockout CLIENT PROTOCOL: right key once, two wrong attempts, then the
# right key from the locked-out 127.0.0.1.
lockout() {
    local c=$1 proto=$2 name="lock-$1-$2" dir="$LAB/lock-$1-$2"
    local -a right wrong
    mkdir -m 700 "$dir"
    if [ "$proto" = p1 ]; then
        keygen "$dir/key"
        right=(--key-file "$dir/key")
        wrong=(--key-file "$KEYS/wrong.key")
    else
        password "$dir/pw"
        right=(--protocol ostiary-4 --password-file "$dir/pw")
        wrong=(--protocol ostiary-4 --password-file "$KEYS/wrong.pw")
    fi
    {
        daemon_head "$dir/state" 2
        if [ "$proto" = p1 ]; then
            action "$name" key_file "$dir/key"
        else
            action "$name" password_file "$dir/pw"
        fi
    } | write_private "$dir/posternd.toml"
    if ! start_posternd "$dir/posternd.toml" "$dir/posternd.log"; then
        record "$c" "$proto-lockout" "posternd did not start" "$proto lockout"
        return
    fi
    local port=$PD_PORT what
    [ "$proto" = o4 ] && port=$(o4_port)
    if [ "$proto" = p1 ]; then what="postern-2"; else what="ostiary-4"; fi

    local v=ok wrc=()
    run_client "$c" /dev/null "127.0.0.1:$port" "${right[@]}" --timeout 5
    if [ "$RC" -ne 0 ] || ! wait_log "$FIRED" "$name 127.0.0.1" 5; then
        v="the right key did not work before the lockout (exit $RC: $OUT)"
    fi
    if [ "$v" = ok ]; then
        for _ in 1 2; do
            run_client "$c" /dev/null "127.0.0.1:$port" "${wrong[@]}" --timeout 5
            wrc+=("$RC")
        done
        if ! wait_log "$PD_LOG" "lockout src=127.0.0.1" 5; then
            v="two wrong attempts (exit ${wrc[*]}) did not lock 127.0.0.1 out"
        fi
    fi
    if [ "$v" = ok ]; then
        # A locked source is closed before the greeting; OpenBSD nc cannot
        # see that close and ends in the timeout, hence the short one.
        run_client "$c" /dev/null "127.0.0.1:$port" "${right[@]}" --timeout 3
        # Nothing may fire: give a wrongly started action time to show.
        sleep 0.3
        if [ "$RC" -eq 0 ]; then
            v="the right key was accepted from a locked-out source: $OUT"
        elif [ "$RC" -ne 2 ] && [ "$RC" -ne 3 ]; then
            v="exit $RC, expected 2 or 3: $OUT"
        elif [ "$(count "$FIRED" "$name 127.0.0.1")" -ne 1 ]; then
            v="the action fired for the locked-out source"
        else
            v="ok($RC)"
        fi
    fi
    record "$c" "$proto-lockout" "$v" "$what locked-out source: the right key fails without firing (exit ${RC}: ${OUT#*: })"
    stop_pid "$PD_PID"
}

for c in "${CLIENTS[@]}"; do
    note "$c against a locked-out source"
    lockout "$c" p1
    lockout "$c" o4
done

# --- the matrix --------------------------------------------------------------

note "interop matrix (ok(N): refused with exit N; -: not run)"
line=$(printf '%-11s' client)
for k in "${CASES[@]}"; do line+=$(printf ' %-10s' "$k"); done
note "$line"
for c in "${CLIENTS[@]}"; do
    line=$(printf '%-11s' "$c")
    for k in "${CASES[@]}"; do line+=$(printf ' %-10s' "${RESULT[$c/$k]:--}"); done
    note "${line%"${line##*[! ]}"}"
done
note "took $(($(now_ms) - T_SCRIPT)) ms"
finish
