#!/usr/bin/env bash
# The emergency console lab, end to end, with real programs: a QEMU virtual
# server built from tests/lab/guest.S, its power buttons and reimaging
# behind posternd (vm.sh over QMP), and a browser console (websockify and
# noVNC) that exists only while posternd's `console` gate is open, seen by
# headless Chromium driven by playwright-core.
#
# The daemon's config is conf/examples/datacentre.toml with its paths,
# addresses, keys and the console's ttl replaced by the lab's; nothing else
# changes, so the example is what is tested.
#
# Checks, in order: the QMP client's unit tests; the image builds; the
# config passes --check; power-on boots a pristine disk (VGA text read over
# QMP, serial log); the console port refuses connections before the
# trigger; after it, the gateway refuses other addresses and the browser
# shows the VM's screen (the noVNC canvas equals QEMU's screendump, whose
# text QMP reads); power-cycle raises the boot count and the open viewer
# follows; power-cycle-hard raises it again; reimage brings back boot 1 on
# a pristine disk and leaves the base image's sha256 as it was; at the
# deadline the gateway's port closes, its process group is empty and the
# open viewer is disconnected; SIGKILL of posternd with a viewer open does
# the same, and the next posternd records the gate closed; power-off powers
# the guest down on the ACPI button; a power-on that cannot work is
# acknowledged as failed.
#
# Prints one line per check ("ok - ..." / "not ok - ...") and ends with
# "N passed, M failed"; exits 1 if any check failed. Needs root and the
# programs tests/lab/install-deps.sh installs; without them it fails when
# CI=true and is skipped otherwise. Screenshots and logs go to $ARTIFACTS
# (default: the lab directory, kept and printed).
#
# Usage: tests/e2e/console_lab.sh      (from anywhere)
#   POSTERND, POSTERN: the binaries (default ${CARGO_TARGET_DIR:-target}/debug,
#   built with cargo if missing). CONSOLE_TTL: the console's ttl in seconds
#   (default 40).

set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LABSRC=$ROOT/tests/lab
EXAMPLE=$ROOT/conf/examples/datacentre.toml
CONSOLE_TTL=${CONSOLE_TTL:-40}
T0=$(date +%s%N)
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $*"; }
bad() { failed=$((failed + 1)); echo "not ok - $*"; }
check() { # check DESCRIPTION COMMAND...: ok if COMMAND succeeds
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
elapsed() { echo $(( ($(date +%s%N) - T0) / 1000000 )); }
note() { echo "# [$(elapsed) ms] $*"; }

# ---- what the lab needs ------------------------------------------------------

missing=()
for p in qemu-system-x86_64 qemu-img websockify node as ld flock pgrep setpriv sha256sum; do
    command -v "$p" >/dev/null 2>&1 || missing+=("$p")
done
for f in /usr/bin/python3 /usr/bin/chromium /usr/share/novnc/vnc.html \
    "$LABSRC/node_modules/playwright-core/package.json"; do
    [ -e "$f" ] || missing+=("$f")
done
/usr/bin/python3 -c 'import websockify' 2>/dev/null || missing+=("python3-websockify")
if [ "$(id -u)" != 0 ]; then
    missing+=("root (posternd drops its network process to nobody; the gateway runs as nobody)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "${CI:-}" = true ]; then
        bad "missing for the console lab: ${missing[*]} (run tests/lab/install-deps.sh as root)"
        echo "$passed passed, $failed failed"
        exit 1
    fi
    echo "skip: console lab needs: ${missing[*]}; as root run tests/lab/install-deps.sh"
    exit 0
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
POSTERND=${POSTERND:-$TARGET/debug/posternd}
POSTERN=${POSTERN:-$TARGET/debug/postern}
if [ ! -x "$POSTERND" ] || [ ! -x "$POSTERN" ]; then
    (cd "$ROOT" && cargo build -q --workspace --bins) || {
        bad "cannot build posternd and postern"
        echo "$passed passed, $failed failed"
        exit 1
    }
fi

LAB=$(mktemp -d /tmp/postern-lab.XXXXXX)
chmod 755 "$LAB"
ARTIFACTS=${ARTIFACTS:-$LAB}
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
VM=$LAB/vm
mkdir -p "$VM" "$LAB/state" "$LAB/keys"
chmod 700 "$LAB/keys"
echo "# lab: $LAB"
echo "# artifacts: $ARTIFACTS"

# ---- clean-up: only the processes this script started, by pid ----------------

DAEMON_PID=
VIEWER_PIDS=()
GATEWAY_PGIDS=()
qemu_pid() {
    local pid
    pid=$(cat "$VM/qemu.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "unix:$VM/qmp.sock,server=on,wait=off" || return 1
    echo "$pid"
}
# Live (not zombie) members of process group $1, one pid a line.
live_in_group() {
    local group=$1 f line pid
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid=${line%% *}
        # After the command name: state ppid pgrp ...
        set -- ${line##*) }
        if [ "$3" = "$group" ] && [ "$1" != Z ]; then echo "$pid"; fi
    done
}
cleanup() {
    local pid pg
    for pid in "${VIEWER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        wait "$DAEMON_PID" 2>/dev/null
    fi
    for pg in "${GATEWAY_PGIDS[@]}"; do
        for pid in $(live_in_group "$pg"); do kill -KILL "$pid" 2>/dev/null; done
    done
    if pid=$(qemu_pid); then
        "$LABSRC/qmp.py" "$VM/qmp.sock" quit >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null
    fi
    for pid in "${VIEWER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ "$ARTIFACTS" != "$LAB" ]; then
        cp "$VM/serial.log" "$ARTIFACTS/" 2>/dev/null
        rm -rf "$LAB"
    fi
}
trap cleanup EXIT

finish() {
    note "done in $(( $(elapsed) / 1000 )) s; artifacts in $ARTIFACTS"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

# ---- helpers ------------------------------------------------------------------

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_free() {
    /usr/bin/python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
# True if something accepts connections on 127.0.0.1:$1.
port_open() {
    /usr/bin/python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null
}
# Waits up to $2 seconds for `$1` (a command string) to succeed.
wait_for() {
    local until=$(( $(date +%s) + $2 ))
    while ! eval "$1"; do
        [ "$(date +%s)" -lt "$until" ] || return 1
        sleep 0.2
    done
}
qmp() { "$LABSRC/qmp.py" "$VM/qmp.sock" "$@"; }
# screen REGEX [TIMEOUT]: waits for REGEX on the VGA text (read over QMP)
# and saves the text to $ARTIFACTS/$SHOT.txt.
screen() {
    qmp wait-text "$1" --timeout "${2:-20}" >"$ARTIFACTS/$SHOT.txt" 2>&1
}
trigger_out=
trigger_rc=
trigger() { # trigger ACTION [options]: sets trigger_out and trigger_rc
    local name=$1
    shift
    trigger_out=$("$POSTERN" trigger "127.0.0.1:$PORT" "$name" --key-file "$LAB/keys/$name.key" \
        --timeout 90 "$@" 2>&1)
    trigger_rc=$?
    note "postern trigger $name: exit $trigger_rc: $trigger_out"
}
accepted() { [ "$trigger_rc" = 0 ] && [[ $trigger_out == *": accepted; "* ]]; }
log_has() { grep -qE "$1" "$DLOG"; }
start_daemon() { # start_daemon LOGFILE
    DLOG=$1
    "$POSTERND" --config "$CONF" 2>"$DLOG" &
    DAEMON_PID=$!
    wait_for 'grep -q "started version=" "$DLOG" || ! kill -0 $DAEMON_PID 2>/dev/null' 20
    PORT=$(sed -nE 's/.*started version=[^ ]* listeners=\[127\.0\.0\.1:([0-9]+)\(postern-2\)\].*/\1/p' "$DLOG" | head -n1)
    [ -n "$PORT" ] && kill -0 "$DAEMON_PID" 2>/dev/null
}
# viewer NAME [viewer.mjs options]: a browser on the console, in the
# background; its events go to $ARTIFACTS/NAME.events.
viewer() {
    local name=$1
    shift
    node "$LABSRC/viewer.mjs" "$CONSOLE_URL" "$ARTIFACTS/$name" "$@" \
        >"$ARTIFACTS/$name.log" 2>&1 &
    VIEWER_PIDS+=($!)
}
event() { grep -qE "^[0-9]+ $2( |$)" "$ARTIFACTS/$1.events" 2>/dev/null; }
wait_event() { wait_for "event $1 '$2' || event $1 error" "$3" && event "$1" "$2"; }
gateway_pid() { # the pid from the last "gate console serve pid=N started" in $1
    sed -nE 's/.*gate console serve pid=([0-9]+) started.*/\1/p' "$1" | tail -n1
}
group_empty() { [ -z "$(live_in_group "$1")" ]; }

# ---- 1. the QMP client ---------------------------------------------------------

if out=$(cd "$LABSRC" && /usr/bin/python3 -m unittest test_qmp.py 2>&1); then
    ok "qmp.py unit tests ($(echo "$out" | grep -oE 'Ran [0-9]+ tests'))"
else
    bad "qmp.py unit tests"
    echo "$out" | tail -n 20 | sed 's/^/    /'
fi

# ---- 2. the lab: image, keys, config ------------------------------------------

check "the server image builds from tests/lab/guest.S" "$LABSRC/mkimage.sh" "$VM/base.img"
BASE_SHA=$(sha256sum "$VM/base.img" | cut -d' ' -f1)

DISPLAY_N=
for n in $(seq 20 99); do
    if port_free $((5900 + n)); then DISPLAY_N=$n; break; fi
done
VNC_PORT=$((5900 + DISPLAY_N))
WPORT=$(free_port)
CONSOLE_URL="http://127.0.0.1:$WPORT/vnc.html?autoconnect=1&host=127.0.0.1&port=$WPORT&reconnect=0&resize=off"

for a in power-on power-off power-cycle power-cycle-hard reimage console; do
    (umask 077 && "$POSTERN" keygen >"$LAB/keys/$a.key")
done

# The gateway runs as nobody: if nobody cannot reach the repository's copy,
# use one in the lab directory.
GATEWAY_DIR=$LABSRC
if ! setpriv --reuid=nobody --regid=nogroup --clear-groups test -x "$LABSRC/console-gateway"; then
    GATEWAY_DIR=$LAB/bin
    install -d -m 755 "$GATEWAY_DIR"
    install -m 755 "$LABSRC/console-gateway" "$GATEWAY_DIR/"
    note "nobody cannot reach $LABSRC; the gateway runs from $GATEWAY_DIR"
fi

CONF=$LAB/datacentre.toml
sed -e "s|/usr/local/lib/postern/lab/console-gateway|$GATEWAY_DIR/console-gateway|g" \
    -e "s|/usr/local/lib/postern/lab/|$LABSRC/|g" \
    -e "s|/var/lib/postern-lab|$VM|g" \
    -e "s|/etc/postern/keys/|$LAB/keys/|g" \
    -e "s|^state_dir = \"/var/lib/postern\"|state_dir = \"$LAB/state\"|" \
    -e "s|\"0.0.0.0:7001\"|\"127.0.0.1:0\"|" \
    -e "s|\"--vnc\", \"127.0.0.1:1\"|\"--vnc\", \"127.0.0.1:$DISPLAY_N\"|g" \
    -e "s|\"0.0.0.0:6080\"|\"127.0.0.1:$WPORT\"|" \
    -e "s|\"127.0.0.1:5901\"|\"127.0.0.1:$VNC_PORT\"|" \
    -e "s|^ttl = \"15m\"|ttl = \"${CONSOLE_TTL}s\"|" \
    "$EXAMPLE" >"$CONF"
[ "$ARTIFACTS" = "$LAB" ] || cp "$CONF" "$ARTIFACTS/datacentre.toml"
# Every replacement must have taken: the example's shape is the test's.
if grep -v '^ *#' "$CONF" | grep -qE '/usr/local/lib|/var/lib/postern|/etc/postern|0\.0\.0\.0|127\.0\.0\.1:1"|:5901|"15m"'; then
    bad "the test config is conf/examples/datacentre.toml with the lab's paths and ports (a value was not replaced)"
else
    ok "the test config is conf/examples/datacentre.toml with the lab's paths, ports and a ${CONSOLE_TTL}s console ttl"
fi
if out=$("$POSTERND" --config "$CONF" --check 2>&1); then
    ok "the config passes posternd --check"
else
    bad "the config fails posternd --check"
    echo "$out" | sed 's/^/    /'
    finish
fi

# ---- 3. posternd, power on ----------------------------------------------------

if start_daemon "$ARTIFACTS/posternd-1.log"; then
    ok "posternd started (pid $DAEMON_PID, port $PORT)"
else
    bad "posternd did not start"
    sed 's/^/    /' "$DLOG"
    finish
fi

trigger power-on
if accepted && qemu_pid >/dev/null; then
    ok "power-on is acknowledged once QEMU runs (pid $(qemu_pid))"
else
    bad "power-on: exit $trigger_rc, QEMU running: $(qemu_pid || echo no)"
fi
SHOT=vga-1-power-on
if screen 'POSTERN LAB SERVER[^\n]*\n *BOOT COUNT: 1\n *DISK: PRISTINE'; then
    ok "the console, read over QMP, shows the title, BOOT COUNT: 1 and DISK: PRISTINE"
else
    bad "power-on console text (see $ARTIFACTS/$SHOT.txt)"
    sed 's/^/    /' "$ARTIFACTS/$SHOT.txt"
fi
check "the serial log mirrors the console" \
    wait_for "grep -q 'POWER: ON, ACPI BUTTON ARMED' '$VM/serial.log'" 10

# ---- 4. the console ------------------------------------------------------------

if port_open "$WPORT"; then
    bad "the console port $WPORT accepts connections before the trigger"
else
    ok "before the trigger the console port $WPORT refuses connections"
fi

trigger console --assert-addr 127.0.0.1
wait_for "log_has 'gate console serve pid=[0-9]+ started'" 10
GW1=$(gateway_pid "$DLOG")
[ -n "$GW1" ] && GATEWAY_PGIDS+=("$GW1")
if accepted && [ -n "$GW1" ] && wait_for "port_open $WPORT" 10; then
    ok "console trigger accepted; gateway pid $GW1 listens on $WPORT"
else
    bad "console: exit $trigger_rc, gateway pid ${GW1:-none}, port open: $(port_open "$WPORT" && echo yes || echo no)"
fi

# Another address (127.0.0.2, still loopback) gets nothing.
if /usr/bin/python3 - "$WPORT" <<'EOF'
import socket, sys
s = socket.socket()
s.bind(("127.0.0.2", 0))
s.settimeout(5)
s.connect(("127.0.0.1", int(sys.argv[1])))
try:
    s.sendall(b"GET /vnc.html HTTP/1.0\r\n\r\n")
    sys.exit(1 if s.recv(100) else 0)
except ConnectionResetError:
    sys.exit(0)
EOF
then
    ok "the gateway hangs up on an address the console was not opened for (127.0.0.2)"
else
    bad "the gateway served 127.0.0.2"
fi

SHOT=vga-2-console
screen 'DISK: PRISTINE' 5
qmp screendump "$ARTIFACTS/screen-1.ppm"
qmp screendump "$ARTIFACTS/screen-1.png" --format png
viewer viewer-1 --expect "$ARTIFACTS/screen-1.ppm" --hold 120
if wait_event viewer-1 ready 40 && event viewer-1 match; then
    ok "headless Chromium shows the VM's console in noVNC: the canvas equals QEMU's screendump (BOOT COUNT: 1, DISK: PRISTINE over QMP)"
else
    bad "viewer 1: $(tr '\n' ';' <"$ARTIFACTS/viewer-1.events" 2>/dev/null)"
fi

# ---- 5. power-cycle, hard power-cycle, reimage ---------------------------------

trigger power-cycle
SHOT=vga-3-power-cycle
if accepted && screen 'BOOT COUNT: 2\n *DISK: USED'; then
    ok "power-cycle (reset button) reboots the server: BOOT COUNT: 2, DISK: USED over QMP"
else
    bad "power-cycle: exit $trigger_rc; screen in $ARTIFACTS/$SHOT.txt"
fi
qmp screendump "$ARTIFACTS/screen-2.ppm"
echo "expect $ARTIFACTS/screen-2.ppm reset" >>"$ARTIFACTS/viewer-1.cmd"
if wait_event viewer-1 'match-reset' 30; then
    ok "the open viewer follows the reset: its canvas equals the new screendump"
else
    bad "viewer 1 after the reset: $(tr '\n' ';' <"$ARTIFACTS/viewer-1.events")"
fi

OLD_QEMU=$(qemu_pid)
trigger power-cycle-hard
SHOT=vga-4-power-cycle-hard
if accepted && [ "$(qemu_pid)" != "$OLD_QEMU" ] && screen 'BOOT COUNT: 3\n *DISK: USED'; then
    ok "power-cycle-hard pulls the plug and powers on: new QEMU pid $(qemu_pid), BOOT COUNT: 3"
else
    bad "power-cycle-hard: exit $trigger_rc, pid ${OLD_QEMU} -> $(qemu_pid); screen in $ARTIFACTS/$SHOT.txt"
fi
# The viewer's VNC server went with the old QEMU.
wait_event viewer-1 disconnected 10 && note "viewer 1 disconnected with the old QEMU's VNC server"

trigger reimage
SHOT=vga-5-reimage
if accepted && screen 'BOOT COUNT: 1\n *DISK: PRISTINE'; then
    ok "reimage is acknowledged after the new overlay boots: BOOT COUNT: 1, DISK: PRISTINE"
else
    bad "reimage: exit $trigger_rc; screen in $ARTIFACTS/$SHOT.txt"
fi
if [ "$(sha256sum "$VM/base.img" | cut -d' ' -f1)" = "$BASE_SHA" ]; then
    ok "the base image's sha256 is unchanged ($BASE_SHA)"
else
    bad "the base image changed"
fi
if log_has 'ok src=127\.0\.0\.1 .*action=reimage .*status=started'; then
    ok "posternd logs the reimage trigger as started"
else
    bad "no 'ok ... action=reimage ... status=started' line in the log"
fi

qmp screendump "$ARTIFACTS/screen-3.ppm"
qmp screendump "$ARTIFACTS/screen-3.png" --format png
viewer viewer-2 --expect "$ARTIFACTS/screen-3.ppm" --hold 120
if wait_event viewer-2 ready 40 && event viewer-2 match; then
    ok "a new viewer shows the reimaged server (canvas equals screendump; screenshot $ARTIFACTS/viewer-2-page.png)"
else
    bad "viewer 2: $(tr '\n' ';' <"$ARTIFACTS/viewer-2.events" 2>/dev/null)"
fi

# ---- 6. the deadline -------------------------------------------------------------

note "waiting for the console's ${CONSOLE_TTL}s deadline"
if wait_for "log_has 'gate console closed \\(deadline\\)'" $((CONSOLE_TTL + 15)); then
    ok "posternd closes the console at its deadline"
else
    bad "no 'gate console closed (deadline)' within $((CONSOLE_TTL + 15))s"
fi
check "after the deadline the console port $WPORT refuses connections" wait_for "! port_open $WPORT" 5
if wait_for "group_empty $GW1" 5; then
    ok "no gateway process is left (process group $GW1 is empty)"
else
    bad "gateway processes left in group $GW1: $(live_in_group "$GW1" | tr '\n' ' ')"
fi
if wait_event viewer-2 disconnected 10 && event viewer-2 ws-closed; then
    ok "the open viewer was disconnected: WebSocket closed, noVNC shows '$(sed -nE 's/^[0-9]+ disconnected (.*)/\1/p' "$ARTIFACTS/viewer-2.events")'"
else
    bad "viewer 2 after the deadline: $(tr '\n' ';' <"$ARTIFACTS/viewer-2.events")"
fi

# ---- 7. posternd killed with the console open ------------------------------------

trigger console --assert-addr 127.0.0.1
wait_for "[ \"\$(gateway_pid \"\$DLOG\")\" != \"$GW1\" ]" 10
GW2=$(gateway_pid "$DLOG")
[ -n "$GW2" ] && GATEWAY_PGIDS+=("$GW2")
viewer viewer-3 --hold 120
if accepted && wait_event viewer-3 ready 40; then
    ok "the console opens again (gateway pid $GW2) and a viewer connects"
else
    bad "second console: exit $trigger_rc, gateway ${GW2:-none}: $(tr '\n' ';' <"$ARTIFACTS/viewer-3.events" 2>/dev/null)"
fi
if grep -q 'gate console serve pid=[0-9]* stderr: console-gateway: no parent-death signal inherited' "$DLOG"; then
    note "posternd's PR_SET_PDEATHSIG did not reach the gateway (cleared by the switch to user nobody); the gateway set its own"
fi
{ kill -KILL "$DAEMON_PID"; wait "$DAEMON_PID"; } 2>/dev/null
DAEMON_PID=
if wait_for "group_empty $GW2" 5 && wait_for "! port_open $WPORT" 5; then
    ok "SIGKILL of posternd takes the gateway with it: group $GW2 empty, port closed"
else
    bad "after SIGKILL of posternd: group $GW2 has $(live_in_group "$GW2" | tr '\n' ' '), port open: $(port_open "$WPORT" && echo yes || echo no)"
fi
if wait_event viewer-3 disconnected 10; then
    ok "the viewer that was open is disconnected"
else
    bad "viewer 3 after SIGKILL: $(tr '\n' ';' <"$ARTIFACTS/viewer-3.events")"
fi

if start_daemon "$ARTIFACTS/posternd-2.log" && log_has 'gate console \(serve\) closed at start-up'; then
    ok "the next posternd finds the console gate in its state file and records it closed"
else
    bad "restarted posternd: $(grep -E 'gate|started' "$DLOG" | tr '\n' ';')"
fi

# ---- 8. power off, and a failure acknowledged ------------------------------------

QEMU=$(qemu_pid)
trigger power-off
if accepted && ! kill -0 "$QEMU" 2>/dev/null && grep -q 'POWER BUTTON PRESSED: POWERING OFF' "$VM/serial.log"; then
    ok "power-off: the guest powers itself off on the ACPI button (serial log) and QEMU is gone"
else
    bad "power-off: exit $trigger_rc, QEMU $QEMU alive: $(kill -0 "$QEMU" 2>/dev/null && echo yes || echo no)"
fi

mv "$VM/base.img" "$VM/base.img.away"
trigger power-on
mv "$VM/base.img.away" "$VM/base.img"
if [ "$trigger_rc" = 5 ] && [[ $trigger_out == *": failed: "* ]] && ! qemu_pid >/dev/null; then
    ok "a power-on that cannot work (no base image) is acknowledged as failed (exit 5)"
else
    bad "power-on without a base image: exit $trigger_rc: $trigger_out"
fi

cp "$VM/serial.log" "$ARTIFACTS/serial.log" 2>/dev/null
finish
