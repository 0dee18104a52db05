#!/usr/bin/env bash
# Triggers through real proxies: tinyproxy (HTTP CONNECT) and Dante's
# danted (SOCKS5), each a private instance on a free 127.0.0.1 port,
# started in the foreground and stopped by PID. For the Rust `postern` and
# client/postern.py (postern.sh has no proxy support):
#
#   1. through each proxy, postern-2 and ostiary-4: exit 0, the action
#      fired, and the proxy's own log shows the tunnel to posternd's port;
#   2. a proxy that refuses: tinyproxy whose ConnectPort does not include
#      the port (403), and danted with a `socks block` rule for the port
#      (SOCKS5 reply 2): exit 3, "proxy refused: ..." naming the proxy,
#      nothing fired, and the proxy logged the refusal;
#   3. an unreachable proxy (a free port, nothing listening), http:// and
#      socks5://: exit 3, "proxy URL: connection refused".
#
# Needs tinyproxy, danted, ss and python3 (Debian: tinyproxy dante-server
# iproute2 python3). Without them it fails when CI=true and is skipped
# otherwise. System instances of tinyproxy or danted (started on package
# installation) are neither used nor touched. As root, danted runs its
# children as nobody. Runs $POSTERND and $POSTERN (default:
# ${CARGO_TARGET_DIR:-target}/debug), building them with cargo if needed.
# Everything lives in a mktemp -d lab and on 127.0.0.1; every process it
# starts is stopped by PID on exit. KEEP_LAB=1 keeps the lab.
#
# Prints one line per check and ends with "N passed, M failed"; exits 1 if
# any check failed. Takes about 10 s.
#
# Usage: tests/e2e/proxies.sh   (from anywhere)

set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

PY_CLIENT=$E2E_ROOT/client/postern.py
TINYPROXY=${TINYPROXY:-$(command -v tinyproxy || echo /usr/bin/tinyproxy)}
DANTED=${DANTED:-$(command -v danted || echo /usr/sbin/danted)}

require_tools "tinyproxy dante-server iproute2 python3 coreutils" \
    "$TINYPROXY" "$DANTED" ss python3 timeout
find_binaries
lab_init
T_SCRIPT=$(now_ms)

CLIENTS=(rust py)
export XDG_CONFIG_HOME="$LAB/xdg"
mkdir -p "$XDG_CONFIG_HOME"
KEYS=$LAB/keys
FIRED=$LAB/fired
mkdir -m 700 "$KEYS"
: >"$FIRED"

# --- helpers --------------------------------------------------------------

# run_client CLIENT ARGS...: `trigger ARGS...` with CLIENT; sets RC and OUT
# (stdout and stderr, one line).
run_client() {
    local client=$1
    shift
    local -a cmd
    case $client in
        rust) cmd=("$POSTERN") ;;
        py) cmd=(python3 "$PY_CLIENT") ;;
    esac
    timeout -k 2 30 "${cmd[@]}" trigger "$@" </dev/null >"$LAB/out" 2>&1
    RC=$?
    OUT=$(tr '\n' ' ' <"$LAB/out")
    OUT=${OUT% }
}

count() { grep -cE -- "$2" "$1" 2>/dev/null || true; }
# Called through wait_until, which shellcheck cannot follow.
# shellcheck disable=SC2317
count_above() { [ "$(count "$1" "$2")" -gt "$3" ]; }

# start_proxy NAME LOG COMMAND...: starts COMMAND in the background
# (tracked), its output into LOG; sets PROXY_PID. $PROXY_PORT must be
# listening within 10 s.
start_proxy() {
    local name=$1 log=$2
    shift 2
    "$@" </dev/null >"$log" 2>&1 &
    PROXY_PID=$!
    track "$PROXY_PID"
    if ! wait_until 10 port_listening "$PROXY_PORT"; then
        sed 's/^/#   /' "$log"
        abort "$name listens on 127.0.0.1:$PROXY_PORT"
    fi
}

# --- posternd ---------------------------------------------------------------

action() { # NAME SECRET-KEY FILE
    cat <<EOF

[[action]]
name = "$1"
$2 = "$3"
run = ["/bin/sh", "-c", "echo \"\$POSTERN_ACTION \$POSTERN_ADDR\" >> \"\$1\"", "sh", "$FIRED"]
EOF
}

{
    cat <<EOF
[daemon]
state_dir = "$LAB/state"

[limits]
rate_burst = 100000
rate_per_minute = 100000
lockout_after = 1000000

[[listen]]
address = "127.0.0.1:0"
protocol = "postern-2"

[[listen]]
address = "127.0.0.1:0"
protocol = "ostiary-4"
EOF
    for c in "${CLIENTS[@]}"; do
        for via in http socks; do
            "$POSTERN" keygen | write_private "$KEYS/$c-$via.key"
            head -c 18 /dev/urandom | base64 | write_private "$KEYS/$c-$via.pw"
            action "$c-$via-p1" key_file "$KEYS/$c-$via.key"
            action "$c-$via-o4" password_file "$KEYS/$c-$via.pw"
        done
    done
} | write_private "$LAB/posternd.toml"

start_posternd "$LAB/posternd.toml" "$LAB/posternd.log" || abort "posternd started"
P1=$PD_PORT
O4=$(sed -n 's/.* started .*[[ ]127\.0\.0\.1:\([0-9]*\)(ostiary-4).*/\1/p' "$PD_LOG" | head -n 1)
[ -n "$O4" ] || abort "posternd has an ostiary-4 listener"
pass "posternd on 127.0.0.1:$P1 (postern-2) and 127.0.0.1:$O4 (ostiary-4)"

# --- the proxies --------------------------------------------------------------

# Nothing listens on BLOCKED: danted refuses it by rule, before connecting.
BLOCKED=$(free_port)
UNREACHABLE=$(free_port)

# tinyproxy CONF PORT CONNECT-PORT...: a tinyproxy config file.
tinyproxy_conf() {
    local conf=$1 port=$2 p
    shift 2
    {
        echo "Port $port"
        echo "Listen 127.0.0.1"
        echo "Allow 127.0.0.1"
        echo "Timeout 30"
        echo "MaxClients 20"
        echo "LogLevel Info"
        for p in "$@"; do echo "ConnectPort $p"; done
        if [ "$(id -u)" -eq 0 ] && getent group nogroup >/dev/null; then
            echo "User nobody"
            echo "Group nogroup"
        fi
    } >"$conf"
}

HTTP_PORT=$(free_port)
tinyproxy_conf "$LAB/tinyproxy.conf" "$HTTP_PORT" "$P1" "$O4"
PROXY_PORT=$HTTP_PORT
start_proxy tinyproxy "$LAB/tinyproxy.log" "$TINYPROXY" -d -c "$LAB/tinyproxy.conf"
pass "tinyproxy on 127.0.0.1:$HTTP_PORT (ConnectPort $P1 $O4)"

# Allows CONNECT to 443 only, so posternd's port gets a 403.
DENY_PORT=$(free_port)
tinyproxy_conf "$LAB/tinyproxy-deny.conf" "$DENY_PORT" 443
PROXY_PORT=$DENY_PORT
start_proxy "refusing tinyproxy" "$LAB/tinyproxy-deny.log" "$TINYPROXY" -d -c "$LAB/tinyproxy-deny.conf"
pass "refusing tinyproxy on 127.0.0.1:$DENY_PORT (ConnectPort 443)"

SOCKS_PORT=$(free_port)
{
    echo "logoutput: $LAB/danted.log"
    echo "internal: 127.0.0.1 port = $SOCKS_PORT"
    echo "external: 127.0.0.1"
    echo "clientmethod: none"
    echo "socksmethod: none"
    if [ "$(id -u)" -eq 0 ]; then
        echo "user.privileged: root"
        echo "user.unprivileged: nobody"
    fi
    cat <<EOF
client pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: connect disconnect error
}
socks block {
    from: 127.0.0.0/8 to: 127.0.0.1/32 port = $BLOCKED
    log: connect error
}
socks pass {
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect disconnect error
}
EOF
} >"$LAB/danted.conf"
: >"$LAB/danted.log"
PROXY_PORT=$SOCKS_PORT
start_proxy danted "$LAB/danted.out" "$DANTED" -f "$LAB/danted.conf"
pass "danted on 127.0.0.1:$SOCKS_PORT (blocks port $BLOCKED)"

# --- triggers ---------------------------------------------------------------

# The proxy-log line that shows one tunnel to PORT.
http_tunnel() { echo "CONNECT 127\\.0\\.0\\.1:$1 HTTP"; }
socks_tunnel() { echo "tcp/connect \\[: .* -> .* 127\\.0\\.0\\.1\\.$1\$"; }
socks_block() { echo "block\\([0-9]+\\): tcp/connect \\]: .* 127\\.0\\.0\\.1\\.$1\$"; }

# through CLIENT VIA PROTO: one trigger through the proxy VIA (http or
# socks) with protocol PROTO (p1 or o4).
through() {
    local c=$1 via=$2 proto=$3 port url log pattern before v=ok
    local -a secret
    if [ "$proto" = p1 ]; then
        port=$P1
        secret=(--key-file "$KEYS/$c-$via.key")
    else
        port=$O4
        secret=(--protocol ostiary-4 --password-file "$KEYS/$c-$via.pw")
    fi
    if [ "$via" = http ]; then
        url=http://127.0.0.1:$HTTP_PORT log=$LAB/tinyproxy.log pattern=$(http_tunnel "$port")
    else
        url=socks5://127.0.0.1:$SOCKS_PORT log=$LAB/danted.log pattern=$(socks_tunnel "$port")
    fi
    before=$(count "$log" "$pattern")
    run_client "$c" "127.0.0.1:$port" "${secret[@]}" --proxy "$url" --timeout 5
    if [ "$RC" -ne 0 ]; then
        v="exit $RC: $OUT"
    elif ! wait_log "$FIRED" "$c-$via-$proto 127.0.0.1" 5; then
        v="exit 0 but the action did not fire"
    elif ! wait_until 5 count_above "$log" "$pattern" "$before"; then
        v="the proxy's log shows no tunnel to port $port"
    fi
    local what="$c $proto through $url: exit 0, fired, the proxy logged the tunnel"
    if [ "$v" = ok ]; then pass "$what"; else fail "$what ($v)"; fi
}

# fails CLIENT WHAT MESSAGE-REGEX ARGS...: the trigger exits 3 with a
# message matching MESSAGE-REGEX, and nothing fires.
fails() {
    local c=$1 what=$2 want=$3 lines v=ok
    shift 3
    lines=$(wc -l <"$FIRED")
    run_client "$c" "$@" --timeout 5
    if [ "$RC" -ne 3 ]; then
        v="exit $RC, expected 3: $OUT"
    elif ! printf '%s\n' "$OUT" | grep -qE -- "$want"; then
        v="message does not match /$want/: $OUT"
    elif [ "$(wc -l <"$FIRED")" -ne "$lines" ]; then
        v="an action fired"
    fi
    if [ "$v" = ok ]; then pass "$c $what: exit 3 ($OUT)"; else fail "$c $what ($v)"; fi
}

for c in "${CLIENTS[@]}"; do
    note "$c"
    for via in http socks; do
        through "$c" "$via" p1
        through "$c" "$via" o4
    done

    before=$(count "$LAB/tinyproxy-deny.log" "Refused CONNECT method on port $P1")
    fails "$c" "through a tinyproxy that refuses the port (403)" \
        "connection failed: proxy refused: HTTP 403 .*\\(http://127\\.0\\.0\\.1:$DENY_PORT\\)" \
        "127.0.0.1:$P1" --key-file "$KEYS/$c-http.key" --proxy "http://127.0.0.1:$DENY_PORT"
    check "$c: the refusing tinyproxy logged the refused CONNECT" \
        wait_until 5 count_above "$LAB/tinyproxy-deny.log" "Refused CONNECT method on port $P1" "$before"

    before=$(count "$LAB/danted.log" "$(socks_block "$BLOCKED")")
    fails "$c" "through a danted that blocks the port (SOCKS5 reply 2)" \
        "connection failed: proxy refused: SOCKS5 .*\\(reply 2\\) \\(socks5://127\\.0\\.0\\.1:$SOCKS_PORT\\)" \
        "127.0.0.1:$BLOCKED" --key-file "$KEYS/$c-socks.key" --proxy "socks5://127.0.0.1:$SOCKS_PORT"
    check "$c: danted logged the blocked connect" \
        wait_until 5 count_above "$LAB/danted.log" "$(socks_block "$BLOCKED")" "$before"

    for scheme in http socks5; do
        fails "$c" "through an unreachable $scheme:// proxy" \
            "connection failed: proxy $scheme://127\\.0\\.0\\.1:$UNREACHABLE: connection refused" \
            "127.0.0.1:$P1" --key-file "$KEYS/$c-http.key" --proxy "$scheme://127.0.0.1:$UNREACHABLE"
    done
done

note "took $(($(now_ms) - T_SCRIPT)) ms"
finish
