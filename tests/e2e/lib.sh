# shellcheck shell=bash
# Shared helpers for the end-to-end scripts in tests/e2e/. Source it, do
# not run it.
#
# What it gives a script:
#   - counters and report lines: pass, fail, check, finish
#     ("ok - ..." / "not ok - ...", then "N passed, M failed");
#   - require_tools: skip (or, with CI=true, fail) when a program is
#     missing; require_root likewise;
#   - find_binaries: $POSTERND and $POSTERN, built with cargo if missing;
#   - lab_init: a private mktemp -d lab directory and an EXIT trap that
#     stops every process the script started (track PID), by PID only;
#   - free_port, port_open, wait_until, wait_log, wait_gone, now_ms;
#   - start_posternd: a real posternd on 127.0.0.1:0, its port read from
#     its "started" line;
#   - dpkg_wait: dpkg, waiting while another dpkg or apt holds its lock.
#
# Every wait is bounded. Nothing listens anywhere but 127.0.0.1.

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "not ok - $*"; }
note() { echo "# $*"; }

# check DESCRIPTION COMMAND...: one report line for COMMAND's exit status.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# Prints the count line and exits: 0 when nothing failed, 1 otherwise.
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && exit 0
    exit 1
}

# Stops right here: a check that everything after it depends on failed.
abort() {
    fail "$*"
    note "stopping: later checks depend on this one"
    finish
}

# A required tool is missing: fail when CI=true, else skip the script.
missing() {
    if [ "${CI:-}" = "true" ]; then
        fail "$1"
        finish
    fi
    echo "skip: $1"
    exit 0
}

# require_tools "DEBIAN-PACKAGES" PROGRAM...: every PROGRAM must be found.
require_tools() {
    local pkgs=$1 p
    shift
    for p in "$@"; do
        if ! command -v "$p" >/dev/null 2>&1 && [ ! -x "$p" ]; then
            missing "$p not found; install it with: apt-get install $pkgs"
        fi
    done
}

require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        missing "$1 must run as root"
    fi
}

# Sets POSTERND and POSTERN (default: ${CARGO_TARGET_DIR:-ROOT/target}/debug),
# building both with cargo when either is missing.
find_binaries() {
    local dir=${CARGO_TARGET_DIR:-$E2E_ROOT/target}
    POSTERND=${POSTERND:-$dir/debug/posternd}
    POSTERN=${POSTERN:-$dir/debug/postern}
    if { [ ! -x "$POSTERND" ] || [ ! -x "$POSTERN" ]; } && command -v cargo >/dev/null 2>&1; then
        note "building posternd and postern"
        (cd "$E2E_ROOT" && cargo build --quiet --workspace --bins) >&2
    fi
    if [ ! -x "$POSTERND" ] || [ ! -x "$POSTERN" ]; then
        missing "posternd or postern not found ($POSTERND, $POSTERN); run cargo build --workspace --bins"
    fi
}

# --- the lab and the processes in it ------------------------------------

TRACKED=()
CLEANUP_HOOKS=()

# track PID: stop PID (SIGTERM, then SIGKILL) when the script exits.
track() { TRACKED+=("$1"); }

# on_cleanup FUNCTION: run FUNCTION first when the script exits.
on_cleanup() { CLEANUP_HOOKS+=("$1"); }

# alive PID: the process exists and is not a zombie (an exited process
# waiting for a slow init to reap it counts as gone).
alive() {
    local s
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 1
    s=${s##*) }
    [ "${s%% *}" != Z ]
}

# stop_pid PID [GRACE-SECONDS]: SIGTERM, wait up to GRACE (default 3),
# then SIGKILL; reaps it if it is our child.
stop_pid() {
    local pid=$1 grace=${2:-3}
    alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    wait_gone "$pid" "$grace" || kill -KILL "$pid" 2>/dev/null
    wait_gone "$pid" 2
    wait "$pid" 2>/dev/null
    return 0
}

# PIDs of the processes whose command line names the lab directory (the
# programs the tests started there: daemons, sshd listeners, clients).
lab_pids() {
    local d p cmd
    [ -n "${LAB:-}" ] || return 0
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = "$$" ] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
        case $cmd in *"$LAB/"*) echo "$p" ;; esac
    done
}

e2e_cleanup() {
    local h p i
    trap - EXIT INT TERM
    for h in "${CLEANUP_HOOKS[@]}"; do "$h"; done
    # Newest first: clients before the daemons they talk to.
    for ((i = ${#TRACKED[@]} - 1; i >= 0; i--)); do stop_pid "${TRACKED[i]}"; done
    # Whatever is left in the lab (a daemonised sshd, a session), by PID.
    for p in $(lab_pids); do stop_pid "$p" 1; done
    if [ -n "${LAB:-}" ] && [ -z "${KEEP_LAB:-}" ]; then rm -rf "$LAB"; fi
}

# Creates the lab directory ($LAB) and installs the cleanup trap. Set
# KEEP_LAB=1 to keep it for a post-mortem.
lab_init() {
    LAB=$(mktemp -d "${TMPDIR:-/tmp}/postern-e2e.XXXXXX")
    chmod 755 "$LAB"
    trap e2e_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [ -n "${KEEP_LAB:-}" ] && note "lab: $LAB"
    return 0
}

# --- time, ports, waiting -------------------------------------------------

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# A port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c ': </dev/tcp/127.0.0.1/'"$1" 2>/dev/null
}

# port_listening PORT: a listening socket on 127.0.0.1:PORT, seen without
# connecting to it (a connection would reach whatever is behind it).
port_listening() {
    ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .
}

# wait_until SECONDS COMMAND...: polls COMMAND every 50 ms; false on timeout.
wait_until() {
    local limit=$1 end
    shift
    end=$(($(now_ms) + limit * 1000))
    while ! "$@"; do
        [ "$(now_ms)" -ge "$end" ] && return 1
        sleep 0.05
    done
}

# wait_log FILE TEXT SECONDS: FILE gets a line containing TEXT.
wait_log() {
    wait_until "$3" grep -qF -- "$2" "$1"
}

# wait_gone PID SECONDS: the process has exited.
wait_gone() {
    local pid=$1
    wait_until "$2" eval "! alive $pid"
}

# --- posternd -------------------------------------------------------------

PD_PID=""
PD_PORT=""
PD_LOG=""

# start_posternd CONFIG LOG: starts posternd in the background (tracked),
# waits for its "started" line and sets PD_PID, PD_PORT (the first
# postern-2 listener) and PD_LOG. False if it did not start in 10 s.
start_posternd() {
    PD_LOG=$2
    PD_PORT=""
    "$POSTERND" --config "$1" </dev/null >/dev/null 2>"$PD_LOG" &
    PD_PID=$!
    track "$PD_PID"
    local end=$(($(now_ms) + 10000))
    while [ "$(now_ms)" -lt "$end" ]; do
        PD_PORT=$(sed -n 's/.* started .*listeners=\[127\.0\.0\.1:\([0-9]*\)(postern-2).*/\1/p' "$PD_LOG" | head -n 1)
        [ -n "$PD_PORT" ] && return 0
        alive "$PD_PID" || break
        sleep 0.05
    done
    sed 's/^/#   posternd: /' "$PD_LOG"
    return 1
}

# log_has TEXT: posternd's log ($PD_LOG) has a line containing TEXT.
log_has() { grep -qF -- "$1" "$PD_LOG"; }

# kill_posternd SIGNAL: signals $PD_PID and reaps it (bounded).
kill_posternd() {
    # stderr off: bash would report the signal that ended its job.
    {
        kill "-$1" "$PD_PID"
        wait_gone "$PD_PID" 10
        wait "$PD_PID"
    } 2>/dev/null
    return 0
}

# --- packages ---------------------------------------------------------------

# dpkg_wait ARGS...: dpkg ARGS, waiting (at most 120 s) while another dpkg
# or apt holds dpkg's lock; prints dpkg's output.
dpkg_wait() {
    local end=$(($(now_ms) + 120000)) out rc
    while :; do
        out=$(dpkg "$@" 2>&1)
        rc=$?
        if [ "$rc" -ne 0 ] && grep -qiE 'lock(ed)? (by|was locked)|lock-frontend|database is locked' <<<"$out" &&
            [ "$(now_ms)" -lt "$end" ]; then
            sleep 0.2
            continue
        fi
        printf '%s\n' "$out"
        return "$rc"
    done
}

# write_private FILE: standard input into FILE, mode 600.
write_private() {
    (umask 077 && cat >"$1")
}
