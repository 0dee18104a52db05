#!/usr/bin/env bash
# The emergency console through a BMC, end to end, with real programs: the
# lab's QEMU server behind a BMC simulator (OpenIPMI's ipmi_sim on a
# loopback UDP port: its chassis commands drive the VM through vm.sh, its
# serial-over-LAN is the VM's COM1), and posternd running
# conf/examples/ipmi.toml with only its addresses, ports and paths replaced
# (and the consoles' ttl): every power action is the real `ipmitool -I
# lanplus` against the simulator (and ipmitool's soft power off, the
# ACPI button, is checked too), the serial console is sol-gateway
# (xterm.js, `ipmitool sol activate`), the graphical console is
# console-gateway (noVNC), both over https/wss with a certificate made
# here. Headless Chromium types into both consoles, at a desktop size and
# at a phone's (412x915, touch), and the lines are read back from the
# guest: its VGA text over QMP, its serial log.
#
# Prints one line per check ("ok - ..." / "not ok - ...") and ends with
# "N passed, M failed". Needs root and what tests/lab/install-deps.sh
# installs; without them it fails when CI=true and is skipped otherwise.
# Screenshots and logs go to $ARTIFACTS (default: a new directory under
# /tmp, kept and printed). CONSOLE_TTL: the consoles' ttl in seconds (default
# 45). DOCS_SHOTS=DIR copies the phone screenshots there (docs/).
#
# Usage: tests/e2e/bmc_lab.sh      (from anywhere)
set -u
. "$(dirname "$0")/lib.sh"

LABSRC=$E2E_ROOT/tests/lab
EXAMPLE=$E2E_ROOT/conf/examples/ipmi.toml
CONSOLE_TTL=${CONSOLE_TTL:-45}
T0=$(now_ms)
elapsed_s() { echo $((($(now_ms) - T0) / 1000)); }

require_root "bmc_lab.sh (ipmi_sim drives QEMU; the gateways run as nobody)"
require_tools "ipmitool openipmi qemu-system-x86 qemu-utils websockify chromium nodejs openssl curl binutils util-linux iproute2" \
    ipmitool ipmi_sim qemu-system-x86_64 qemu-img websockify node openssl curl as ld flock setpriv ss \
    /usr/bin/python3 /usr/bin/chromium
for f in /usr/share/novnc/vnc.html "$LABSRC/node_modules/playwright-core/package.json" \
    "$LABSRC/node_modules/@xterm/xterm/lib/xterm.js"; do
    [ -e "$f" ] || missing "$f not found; as root run tests/lab/install-deps.sh"
done
find_binaries

lab_init
ARTIFACTS=${ARTIFACTS:-$(mktemp -d "${TMPDIR:-/tmp}/postern-bmc-artifacts.XXXXXX")}
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
note "lab: $LAB; artifacts: $ARTIFACTS"
VM=$LAB/vm
mkdir -p "$VM" "$LAB/state" "$LAB/keys" "$LAB/tls"
chmod 700 "$LAB/keys"

# ---- clean-up of what this script starts beyond lib.sh's tracking ------------

BMC_PID=
OPERATOR_PIDS=()
qemu_pid() {
    local pid
    pid=$(cat "$VM/qemu.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "unix:$VM/qmp.sock,server=on,wait=off" || return 1
    echo "$pid"
}
# Live members of process group $1.
live_in_group() {
    local group=$1 f line
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        set -- ${line##*) }
        if [ "$3" = "$group" ] && [ "$1" != Z ]; then echo "${line%% *}"; fi
    done
}
bmc_cleanup() {
    local pid
    for pid in "${OPERATOR_PIDS[@]}"; do stop_pid "$pid" 2; done
    [ -n "$PD_PID" ] && stop_pid "$PD_PID" 5
    if pid=$(qemu_pid); then
        "$LABSRC/qmp.py" "$VM/qmp.sock" quit >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null
    fi
    [ -n "$BMC_PID" ] && { kill -CONT "$BMC_PID" 2>/dev/null; stop_pid "$BMC_PID" 2; }
    cp "$VM/serial.log" "$LAB/bmc/chassis.log" "$ARTIFACTS/" 2>/dev/null
}
on_cleanup bmc_cleanup

# ---- helpers -------------------------------------------------------------------

free_udp_port() {
    python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
udp_bound() { ss -Hlun "( sport = :$1 )" 2>/dev/null | grep -q .; }
qmp() { "$LABSRC/qmp.py" "$VM/qmp.sock" "$@"; }
# screen NAME REGEX [TIMEOUT]: REGEX shows on the VGA text; the text goes to
# $ARTIFACTS/NAME.txt.
screen() { qmp wait-text "$2" --timeout "${3:-20}" >"$ARTIFACTS/$1.txt" 2>&1; }
serial_has() { grep -qF -- "$1" "$VM/serial.log"; }
ipmi() { # the operator's own ipmitool, as the shipped config runs it
    ipmitool -I lanplus -C 3 -N 1 -R 3 -H 127.0.0.1 -p "$BMC_PORT" -U postern -f "$LAB/ipmi-password" "$@"
}
power_is() { ipmi chassis power status 2>/dev/null | grep -q " is $1\$"; }
# SOL payload instances active on the BMC: the bitmap of Get Payload
# Activation Status (IPMI 2.0 24.4) for payload type 1; "00" is none.
sol_active() { ipmi raw 0x06 0x4a 0x01 2>/dev/null | awk '{ print $2 }'; }
sol_free() { [ "$(sol_active)" = 00 ]; }
trigger_rc=
trigger() { # trigger ACTION [client options]: sets trigger_rc
    local name=$1
    shift
    "$POSTERN" trigger "127.0.0.1:$PD_PORT" "$name" --key-file "$LAB/keys/$name.key" \
        --timeout 90 "$@" >"$ARTIFACTS/trigger-$name.out" 2>&1
    trigger_rc=$?
    note "[$(elapsed_s) s] postern trigger $name: exit $trigger_rc"
}
gateway_pid() { # the pid from the last "gate NAME serve pid=N started"
    sed -nE "s/.*gate $1 serve pid=([0-9]+) started.*/\\1/p" "$PD_LOG" | tail -n1
}
# operator NAME vnc|sol URL [operator.mjs options]: a browser, in the
# background; its events go to $ARTIFACTS/NAME.events.
operator() {
    local name=$1 mode=$2 url=$3
    shift 3
    node "$LABSRC/operator.mjs" "$mode" "$url" "$ARTIFACTS/$name" --trust-spki "$SPKI" "$@" \
        >"$ARTIFACTS/$name.log" 2>&1 &
    OPERATOR_PIDS+=($!)
}
event() { grep -qE "^[0-9]+ $2( |\$)" "$ARTIFACTS/$1.events" 2>/dev/null; }
wait_event() { wait_until "$3" eval "event $1 '$2' || event $1 error" && event "$1" "$2"; }
events() { tr '\n' ';' <"$ARTIFACTS/$1.events" 2>/dev/null; }
refused_from_127_0_0_2() { # the gateway on port $1 serves 127.0.0.2 nothing
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.bind(("127.0.0.2", 0))
s.settimeout(5)
s.connect(("127.0.0.1", int(sys.argv[1])))
try:
    s.sendall(b"\x16\x03\x01\x00\x05hello")
    sys.exit(1 if s.recv(100) else 0)
except (ConnectionResetError, BrokenPipeError):
    sys.exit(0)
EOF
}

# ---- 1. the lab: image, keys, BMC password, certificate, config ---------------

check "the server image builds from tests/lab/guest.S" "$LABSRC/mkimage.sh" "$VM/base.img"

BMC_PORT=$(free_udp_port)
SERIAL_PORT=$(free_port)
WPORT=$(free_port)
SPORT=$(free_port)
VNC_DISPLAY=
for n in $(seq 140 199); do
    if ! port_listening $((5900 + n)); then VNC_DISPLAY=$n; break; fi
done
VNC_PORT=$((5900 + VNC_DISPLAY))

ACTIONS="power-on power-off power-reset power-cycle serial-console console"
for a in $ACTIONS; do
    (umask 077 && "$POSTERN" keygen >"$LAB/keys/$a.key")
done
# The BMC password: only the actions' user (nobody) can read it.
(umask 077 && head -c 12 /dev/urandom | base64 | tr -d '/+=' >"$LAB/ipmi-password")
chown nobody "$LAB/ipmi-password"
BMC_PASSWORD=$(cat "$LAB/ipmi-password")

# A certificate for 127.0.0.1, made here; the browsers trust exactly it
# (its public key's SHA-256), nothing else.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=postern lab console" \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$LAB/tls/console.key" \
    -out "$LAB/tls/console.crt" 2>/dev/null
chown nobody "$LAB/tls/console.key"
chmod 600 "$LAB/tls/console.key"
SPKI=$(openssl x509 -in "$LAB/tls/console.crt" -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64)

# The programs run as nobody: if nobody cannot reach the repository's
# copies, use copies in the lab directory.
GW_DIR=$LABSRC
if ! setpriv --reuid=nobody --regid=nogroup --clear-groups \
    test -x "$LABSRC/sol-gateway" -a -r "$LABSRC/node_modules/@xterm/xterm/lib/xterm.js" -a -r "$LABSRC/sol-web/index.html"; then
    GW_DIR=$LAB/bin
    install -d -m 755 "$GW_DIR"
    cp -r "$LABSRC/sol-gateway" "$LABSRC/console-gateway" "$LABSRC/sol-web" "$GW_DIR/"
    install -d -m 755 "$GW_DIR/node_modules"
    cp -r "$LABSRC/node_modules/@xterm" "$GW_DIR/node_modules/"
    chmod -R a+rX "$GW_DIR"
    note "nobody cannot reach $LABSRC; the gateways run from $GW_DIR"
fi

CONF=$LAB/ipmi.toml
sed -e "s|/usr/local/lib/postern/lab/|$GW_DIR/|g" \
    -e "s|/etc/postern/keys/|$LAB/keys/|g" \
    -e "s|/etc/postern/ipmi-password|$LAB/ipmi-password|g" \
    -e "s|/etc/postern/tls/|$LAB/tls/|g" \
    -e "s|^state_dir = \"/var/lib/postern\"|state_dir = \"$LAB/state\"|" \
    -e "s|\"0.0.0.0:7001\"|\"127.0.0.1:0\"|" \
    -e "s|\"0.0.0.0:6080\"|\"127.0.0.1:$WPORT\"|" \
    -e "s|\"0.0.0.0:6081\"|\"127.0.0.1:$SPORT\"|" \
    -e "s|\"10.0.0.20:5900\"|\"127.0.0.1:$VNC_PORT\"|" \
    -e "s|\"10.0.0.20\"|\"127.0.0.1\"|g" \
    -e "s|-H 10.0.0.20 -p 623 |-H 127.0.0.1 -p $BMC_PORT |g" \
    -e "s|\"-p\", \"623\"|\"-p\", \"$BMC_PORT\"|g" \
    -e "s|^ttl = \"15m\"|ttl = \"${CONSOLE_TTL}s\"|" \
    "$EXAMPLE" >"$CONF"
cp "$CONF" "$ARTIFACTS/ipmi.toml"
# Every replacement must have taken: the example's shape is the test's.
if grep -v '^ *#' "$CONF" | grep -qE '/usr/local/lib|/var/lib/postern|/etc/postern|0\.0\.0\.0|10\.0\.0\.20|"623"| 623 |"15m"'; then
    fail "the test config is conf/examples/ipmi.toml with the lab's addresses, ports and paths (a value was not replaced)"
else
    pass "the test config is conf/examples/ipmi.toml with the lab's addresses, ports, paths and a ${CONSOLE_TTL}s console ttl"
fi
if out=$("$POSTERND" --config "$CONF" --check 2>&1); then
    pass "the config passes posternd --check"
else
    echo "$out" | sed 's/^/#   /'
    abort "the config fails posternd --check"
fi

# ---- 2. the BMC -------------------------------------------------------------------

"$LABSRC/bmc-sim" "$LAB" --port "$BMC_PORT" --user postern --password-file "$LAB/ipmi-password" \
    --serial-tcp "127.0.0.1:$SERIAL_PORT" --vnc "127.0.0.1:$VNC_DISPLAY" \
    </dev/null >"$ARTIFACTS/ipmi_sim.log" 2>&1 &
BMC_PID=$!
if wait_until 10 udp_bound "$BMC_PORT" && wait_until 10 power_is off; then
    pass "ipmi_sim answers IPMI 2.0 (RMCP+, cipher suite 3) on 127.0.0.1:$BMC_PORT/udp: chassis power is off"
else
    sed 's/^/#   ipmi_sim: /' "$ARTIFACTS/ipmi_sim.log"
    abort "ipmi_sim did not come up on 127.0.0.1:$BMC_PORT/udp"
fi
if ! ipmitool -I lanplus -C 3 -N 1 -R 1 -H 127.0.0.1 -p "$BMC_PORT" -U postern -P wrong-password \
    chassis power status >/dev/null 2>&1; then
    pass "the BMC refuses a wrong password"
else
    fail "the BMC accepted a wrong password"
fi

if start_posternd "$CONF" "$ARTIFACTS/posternd-1.log"; then
    pass "posternd started (pid $PD_PID, port $PD_PORT)"
else
    abort "posternd did not start"
fi

# ---- 3. power through the BMC -----------------------------------------------------

# A BMC that does not answer: ipmi_sim stopped (SIGSTOP) for the trigger.
kill -STOP "$BMC_PID"
t=$(now_ms)
trigger power-on
kill -CONT "$BMC_PID"
if [ "$trigger_rc" = 5 ] && ! qemu_pid >/dev/null; then
    pass "a BMC that does not answer: power-on is acknowledged as failed (exit 5) after $((($(now_ms) - t) / 1000)) s"
else
    fail "power-on with the BMC stopped: exit $trigger_rc, QEMU: $(qemu_pid || echo none)"
fi

trigger power-on
if [ "$trigger_rc" = 0 ] && qemu_pid >/dev/null && power_is on &&
    screen vga-1-power-on 'BOOT COUNT: 1\n *DISK: PRISTINE'; then
    pass "power-on through the BMC: acknowledged, QEMU runs, the chassis reports on, BOOT COUNT: 1 on the screen"
else
    fail "power-on: exit $trigger_rc, QEMU $(qemu_pid || echo none); screen in $ARTIFACTS/vga-1-power-on.txt"
fi

OLD=$(qemu_pid)
trigger power-reset
if [ "$trigger_rc" = 0 ] && [ "$(qemu_pid)" = "$OLD" ] && screen vga-2-reset 'BOOT COUNT: 2\n *DISK: USED'; then
    pass "power-reset: the reset button, same QEMU (pid $OLD), BOOT COUNT: 2"
else
    fail "power-reset: exit $trigger_rc; screen in $ARTIFACTS/vga-2-reset.txt"
fi

OLD=$(qemu_pid)
trigger power-cycle
# At the acknowledgement the chassis already reports power on again.
at_ack=$(ipmi chassis power status 2>&1)
if [ "$trigger_rc" = 0 ] && [[ $at_ack == *" is on" ]] && NEW=$(qemu_pid) && [ "$NEW" != "$OLD" ] &&
    screen vga-3-cycle 'BOOT COUNT: 3\n *DISK: USED'; then
    pass "power-cycle is acknowledged only once the chassis reports on again ('$at_ack'): off, then a new QEMU (pid $OLD -> $NEW), BOOT COUNT: 3"
else
    fail "power-cycle: exit $trigger_rc, at the ack '$at_ack', QEMU $OLD -> $(qemu_pid || echo none)"
fi
if awk '/ set power 0/ { off = 1 } off && / set power 1/ { on = 1 } END { exit !on }' "$LAB/bmc/chassis.log"; then
    pass "the BMC carried out the cycle as power off, then power on (its chassis log)"
else
    fail "no 'set power 0' then 'set power 1' in the BMC's chassis log"
fi

# ---- 4. the serial console (SOL) over https/wss ------------------------------------

SOL_URL="https://127.0.0.1:$SPORT/"
if port_listening "$SPORT"; then
    fail "the serial console port $SPORT listens before the trigger"
else
    pass "before the trigger nothing listens on the serial console port $SPORT"
fi
trigger serial-console --assert-addr 127.0.0.1
wait_until 10 eval "[ -n \"\$(gateway_pid serial-console)\" ]"
SGW1=$(gateway_pid serial-console)
if [ "$trigger_rc" = 0 ] && [ -n "$SGW1" ] && wait_until 10 port_listening "$SPORT"; then
    pass "serial-console trigger accepted; sol-gateway pid $SGW1 listens on $SPORT"
else
    fail "serial-console: exit $trigger_rc, gateway ${SGW1:-none}"
fi
if curl -sS --max-time 10 --cacert "$LAB/tls/console.crt" "$SOL_URL" | grep -q 'xterm'; then
    pass "it serves the terminal page over https with the test's certificate (curl --cacert)"
else
    fail "no terminal page over https"
fi
if ! curl -sS --max-time 5 "http://127.0.0.1:$SPORT/" >/dev/null 2>&1; then
    pass "it speaks no plain http"
else
    fail "it answered plain http"
fi
check "it hangs up on an address the console was not opened for (127.0.0.2)" refused_from_127_0_0_2 "$SPORT"

operator sol-desktop sol "$SOL_URL" --type "sol from the desktop" --hold 0
if wait_event sol-desktop shown 45 && wait_until 10 serial_has "TYPED: sol from the desktop"; then
    pass "desktop browser: a line typed into the SOL web terminal reaches the guest (serial log: TYPED: sol from the desktop) and its answer shows in xterm.js"
else
    fail "SOL typing at desktop size: $(events sol-desktop)"
fi
if wait_event sol-desktop closed 20 && wait_until 10 sol_free; then
    pass "closing the browser ends its SOL session: the BMC shows no active SOL payload"
else
    fail "after the desktop browser left: SOL instances active: $(sol_active)"
fi

operator sol-phone sol "$SOL_URL" --phone --type "sol from a phone" --hold 120
if wait_event sol-phone shown 45 && wait_until 10 serial_has "TYPED: sol from a phone"; then
    pass "phone-sized browser (412x915, touch): a line typed into the SOL terminal reaches the guest and its answer shows"
else
    fail "SOL typing at phone size: $(events sol-phone)"
fi
if [ "$(sol_active)" = 01 ]; then
    pass "while the phone is connected the BMC has one SOL payload active"
else
    fail "SOL instances active with the phone connected: $(sol_active)"
fi
# The SOL client's argv and environment hold no password.
SOL_CLIENT=$(sed -nE 's/.*SOL client pid ([0-9]+) started.*/\1/p' "$PD_LOG" | tail -n1)
if [ -n "$SOL_CLIENT" ] && [ -r "/proc/$SOL_CLIENT/cmdline" ]; then
    tr '\0' ' ' <"/proc/$SOL_CLIENT/cmdline" >"$ARTIFACTS/sol-client.cmdline"
    tr '\0' '\n' <"/proc/$SOL_CLIENT/environ" >"$ARTIFACTS/sol-client.environ"
    if grep -q -- "-f $LAB/ipmi-password" "$ARTIFACTS/sol-client.cmdline" &&
        ! grep -qF -- "$BMC_PASSWORD" "$ARTIFACTS/sol-client.cmdline" "$ARTIFACTS/sol-client.environ" &&
        ! grep -q '^IPMI_PASSWORD=' "$ARTIFACTS/sol-client.environ"; then
        pass "the BMC password is in neither /proc/$SOL_CLIENT/cmdline ($(cut -c1-60 "$ARTIFACTS/sol-client.cmdline")...) nor its environ ($(paste -sd' ' "$ARTIFACTS/sol-client.environ")); ipmitool reads it with -f"
    else
        fail "the BMC password shows in the SOL client's cmdline or environ"
    fi
else
    fail "no SOL client pid in the log"
fi
if [ "$(stat -c '%U %a' "$LAB/ipmi-password")" = "nobody 600" ]; then
    pass "the password file is readable by the actions' user only (nobody, 600)"
else
    fail "the password file is $(stat -c '%U %a' "$LAB/ipmi-password")"
fi

note "[$(elapsed_s) s] waiting for the serial console's ${CONSOLE_TTL}s deadline"
if wait_until $((CONSOLE_TTL + 15)) log_has "gate serial-console closed (deadline)"; then
    pass "posternd closes the serial console at its deadline"
else
    fail "no 'gate serial-console closed (deadline)'"
fi
check "after the deadline nothing listens on $SPORT" wait_until 5 eval "! port_listening $SPORT"
if wait_until 5 eval "[ -z \"\$(live_in_group $SGW1)\" ]"; then
    pass "no sol-gateway process is left (process group $SGW1 is empty)"
else
    fail "left in group $SGW1: $(live_in_group "$SGW1" | tr '\n' ' ')"
fi
if wait_event sol-phone disconnected 10 && event sol-phone ws-closed; then
    pass "the phone's open terminal was disconnected (WebSocket closed)"
else
    fail "phone terminal after the deadline: $(events sol-phone)"
fi
if wait_until 10 eval "! alive $SOL_CLIENT" && wait_until 10 sol_free; then
    pass "closing the gate deactivated SOL on the BMC: the client (pid $SOL_CLIENT) is gone and no SOL payload is active"
else
    fail "after the deadline: SOL client alive: $(alive "$SOL_CLIENT" && echo yes || echo no), SOL active: $(sol_active)"
fi

# ---- 5. the graphical console (noVNC) over https/wss, keyboard and mouse ------------

VNC_URL="https://127.0.0.1:$WPORT/vnc.html?autoconnect=1&host=127.0.0.1&port=$WPORT&encrypt=1&reconnect=0&resize=scale"
trigger console --assert-addr 127.0.0.1
if [ "$trigger_rc" = 0 ] && wait_until 10 port_listening "$WPORT"; then
    pass "console trigger accepted; console-gateway listens on $WPORT (https)"
else
    fail "console: exit $trigger_rc"
fi
operator vnc-phone vnc "$VNC_URL" --phone --type "vnc from a phone" --shown-file "$ARTIFACTS/vnc-phone.shown" --hold 0
if wait_event vnc-phone typed 45 && screen vga-6-vnc-phone '> vnc from a phone\n *TYPED: vnc from a phone'; then
    touch "$ARTIFACTS/vnc-phone.shown"
    pass "phone-sized browser (412x915, touch): a line typed into noVNC reaches the guest (TYPED: vnc from a phone)"
else
    fail "noVNC typing at phone size: $(events vnc-phone); screen in $ARTIFACTS/vga-6-vnc-phone.txt"
fi
wait_event vnc-phone closed 20 >/dev/null
operator vnc-desktop vnc "$VNC_URL" --type "vnc from the desktop" --shown-file "$ARTIFACTS/vnc-desktop.shown" --hold 0
if wait_event vnc-desktop typed 45 && screen vga-4-vnc-desktop '> vnc from the desktop\n *TYPED: vnc from the desktop'; then
    touch "$ARTIFACTS/vnc-desktop.shown"
    pass "desktop browser: a line typed into noVNC reaches the guest's keyboard (VGA text over QMP: TYPED: vnc from the desktop)"
else
    fail "noVNC typing at desktop size: $(events vnc-desktop); screen in $ARTIFACTS/vga-4-vnc-desktop.txt"
fi
wait_event vnc-desktop closed 20 >/dev/null
operator vnc-click vnc "$VNC_URL" --click --shown-file "$ARTIFACTS/vnc-click.shown" --hold 0
if wait_event vnc-click clicked 45 && screen vga-5-click 'MOUSE: LEFT BUTTON'; then
    touch "$ARTIFACTS/vnc-click.shown"
    pass "a click on the noVNC canvas reaches the guest's PS/2 mouse (VGA text: MOUSE: LEFT BUTTON)"
else
    fail "mouse click: $(events vnc-click)"
fi
wait_event vnc-click closed 20 >/dev/null
for f in vnc-phone-typed.png sol-phone-typed.png vnc-desktop-typed.png sol-desktop-typed.png; do
    [ -s "$ARTIFACTS/$f" ] || fail "no screenshot $f"
done
if [ -n "${DOCS_SHOTS:-}" ]; then
    cp "$ARTIFACTS/vnc-phone-typed.png" "$DOCS_SHOTS/console-phone-vnc.png"
    cp "$ARTIFACTS/sol-phone-typed.png" "$DOCS_SHOTS/console-phone-sol.png"
fi

# ---- 6. posternd SIGKILLed with a serial console open -------------------------------

trigger serial-console --assert-addr 127.0.0.1
wait_until 10 eval "[ \"\$(gateway_pid serial-console)\" != \"$SGW1\" ]"
SGW2=$(gateway_pid serial-console)
operator sol-kill sol "$SOL_URL" --type "before the kill" --hold 120
if [ "$trigger_rc" = 0 ] && wait_event sol-kill shown 45 && [ "$(sol_active)" = 01 ]; then
    pass "the serial console opens again (gateway $SGW2), a browser types into it, SOL is active"
else
    fail "second serial console: exit $trigger_rc: $(events sol-kill)"
fi
SOL_CLIENT=$(sed -nE 's/.*SOL client pid ([0-9]+) started.*/\1/p' "$PD_LOG" | tail -n1)
kill_posternd KILL
if wait_until 5 eval "[ -z \"\$(live_in_group $SGW2)\" ]" && wait_until 5 eval "! port_listening $SPORT"; then
    pass "SIGKILL of posternd takes sol-gateway with it: group $SGW2 empty, port closed"
else
    fail "after SIGKILL: group $SGW2 has $(live_in_group "$SGW2" | tr '\n' ' ')"
fi
if wait_until 10 eval "! alive $SOL_CLIENT" && wait_until 10 sol_free; then
    pass "and SOL is deactivated on the BMC all the same (client pid $SOL_CLIENT gone, no active payload): the next operator is not locked out"
else
    fail "after SIGKILL: SOL active: $(sol_active)"
fi
check "the open terminal was disconnected" wait_event sol-kill disconnected 10

if start_posternd "$CONF" "$ARTIFACTS/posternd-2.log" && log_has "gate serial-console (serve) closed at start-up"; then
    pass "the next posternd records the serial console closed"
else
    fail "restarted posternd: $(grep -E 'gate|started' "$PD_LOG" | tr '\n' ';')"
fi

# ---- 7. power off -------------------------------------------------------------------

QEMU=$(qemu_pid)
trigger power-off
if [ "$trigger_rc" = 0 ] && ! alive "$QEMU" && power_is off; then
    pass "power-off through the BMC: acknowledged, QEMU gone, the chassis reports off"
else
    fail "power-off: exit $trigger_rc, QEMU $QEMU alive: $(alive "$QEMU" && echo yes || echo no)"
fi

# The BMC's soft power off (the ACPI button), straight from ipmitool: not
# one of the shipped actions, but a chassis command the lab BMC carries
# out like a real one.
if ipmi chassis power on >/dev/null && wait_until 20 power_is on &&
    screen vga-7-on-again 'BOOT COUNT: 4' && ipmi chassis power soft >/dev/null &&
    wait_until 30 power_is off && serial_has "POWER BUTTON PRESSED: POWERING OFF"; then
    pass "ipmitool chassis power soft presses the guest's ACPI button: it powers itself off and the chassis reports off"
else
    fail "soft power off: chassis $(ipmi chassis power status 2>&1)"
fi

note "done in $(elapsed_s) s; artifacts in $ARTIFACTS"
finish
