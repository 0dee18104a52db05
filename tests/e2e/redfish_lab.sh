#!/usr/bin/env bash
# Power through a Redfish BMC, end to end: posternd runs
# conf/examples/redfish.toml with only its addresses, ports and paths
# replaced, and its actions (curl against the Redfish API) go to
# sushy-tools' Redfish emulator on loopback, over https with a certificate
# made here and HTTP basic authentication. The emulator's fake driver keeps
# one system's power state in memory and, like real hardware, carries a
# reset out 1 to 11 seconds after answering it; it drives no machine (the
# lab VM is driven through IPMI in bmc_lab.sh).
#
# Checks: the config passes --check; the emulator refuses a wrong
# password; with the emulator stopped (SIGSTOP), power-on is acknowledged
# as failed; power-on, power-reset and power-off are acknowledged only once
# the system reports the state asked for; the curl config file holding the
# password is readable by the actions' user only.
#
# Needs root and sushy-tools in /usr/local/lib/postern/lab/sushy
# (tests/lab/install-deps.sh); without them it fails when CI=true and is
# skipped otherwise. Prints "ok"/"not ok" lines and "N passed, M failed".
set -u
. "$(dirname "$0")/lib.sh"

EXAMPLE=$E2E_ROOT/conf/examples/redfish.toml
SUSHY=${SUSHY:-/usr/local/lib/postern/lab/sushy}

require_root "redfish_lab.sh (the actions run as nobody)"
require_tools "curl openssl python3" curl openssl "$SUSHY/bin/sushy-emulator" "$SUSHY/bin/python3"
find_binaries
lab_init
mkdir -p "$LAB/keys" "$LAB/tls" "$LAB/state" "$LAB/sushy-state"
chmod 700 "$LAB/keys"

SYSTEM=5f1e2c44-7b0e-4d3a-9a55-706f737465726e
PORT=$(free_port)
PASSWORD=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')

# The BMC's certificate, made here: the actions check it with --cacert.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=lab redfish bmc" \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$LAB/tls/bmc.key" \
    -out "$LAB/tls/bmc-ca.crt" 2>/dev/null
# The emulator's users (bcrypt, as Apache's htpasswd -B writes them).
"$SUSHY/bin/python3" -c 'import bcrypt, sys
print("postern:" + bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())' "$PASSWORD" \
    >"$LAB/htpasswd"
# The client side: a curl config file, readable by the actions' user only.
(umask 077 && printf 'user = "postern:%s"\n' "$PASSWORD" >"$LAB/redfish.curl")
chown nobody "$LAB/redfish.curl"
cat >"$LAB/emulator.conf" <<EOF
SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = $PORT
SUSHY_EMULATOR_SSL_CERT = '$LAB/tls/bmc-ca.crt'
SUSHY_EMULATOR_SSL_KEY = '$LAB/tls/bmc.key'
SUSHY_EMULATOR_AUTH_FILE = '$LAB/htpasswd'
SUSHY_EMULATOR_STATE_DIR = '$LAB/sushy-state'
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': '$SYSTEM', 'name': 'lab-server', 'power_state': 'Off', 'nics': []}]
EOF

for a in power-on power-off power-reset; do
    (umask 077 && "$POSTERN" keygen >"$LAB/keys/$a.key")
done
CONF=$LAB/redfish.toml
sed -e "s|/etc/postern/keys/|$LAB/keys/|g" \
    -e "s|/etc/postern/redfish.curl|$LAB/redfish.curl|g" \
    -e "s|/etc/postern/tls/bmc-ca.crt|$LAB/tls/bmc-ca.crt|g" \
    -e "s|^state_dir = \"/var/lib/postern\"|state_dir = \"$LAB/state\"|" \
    -e "s|\"0.0.0.0:7001\"|\"127.0.0.1:0\"|" \
    -e "s|https://10.0.0.20:443/redfish/v1/Systems/System.Embedded.1|https://127.0.0.1:$PORT/redfish/v1/Systems/$SYSTEM|g" \
    "$EXAMPLE" >"$CONF"
chmod 755 "$LAB"
if grep -v '^ *#' "$CONF" | grep -qE '/var/lib/postern|/etc/postern|0\.0\.0\.0|10\.0\.0\.20|System\.Embedded'; then
    fail "the test config is conf/examples/redfish.toml with the lab's addresses, ports and paths (a value was not replaced)"
else
    pass "the test config is conf/examples/redfish.toml with the lab's addresses, ports and paths"
fi
if out=$("$POSTERND" --config "$CONF" --check 2>&1); then
    pass "the config passes posternd --check"
else
    echo "$out" | sed 's/^/#   /'
    abort "the config fails posternd --check"
fi

"$SUSHY/bin/sushy-emulator" --config "$LAB/emulator.conf" --fake </dev/null >"$LAB/emulator.log" 2>&1 &
EMU=$!
track "$EMU"
redfish() { curl -sS --max-time 10 -K "$LAB/redfish.curl" --cacert "$LAB/tls/bmc-ca.crt" "$@"; }
power_state() {
    redfish "https://127.0.0.1:$PORT/redfish/v1/Systems/$SYSTEM" 2>/dev/null |
        sed -nE 's/.*"PowerState": *"([A-Za-z]+)".*/\1/p'
}
if wait_until 20 eval '[ "$(power_state)" = Off ]'; then
    pass "sushy-emulator answers Redfish over https on 127.0.0.1:$PORT: the system is Off"
else
    sed 's/^/#   emulator: /' "$LAB/emulator.log" | tail -n 20
    abort "sushy-emulator did not come up"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -u postern:wrong --cacert "$LAB/tls/bmc-ca.crt" \
    "https://127.0.0.1:$PORT/redfish/v1/Systems/$SYSTEM")
if [ "$code" = 401 ]; then
    pass "the emulator refuses a wrong password (HTTP 401)"
else
    fail "a wrong password got HTTP $code"
fi

if start_posternd "$CONF" "$LAB/posternd.log"; then
    pass "posternd started (port $PD_PORT)"
else
    abort "posternd did not start"
fi
trigger() {
    "$POSTERN" trigger "127.0.0.1:$PD_PORT" "$1" --key-file "$LAB/keys/$1.key" --timeout 120 \
        >"$LAB/trigger-$1.out" 2>&1
    trigger_rc=$?
    note "postern trigger $1: exit $trigger_rc"
}

kill -STOP "$EMU"
t=$(now_ms)
trigger power-on
kill -CONT "$EMU"
if [ "$trigger_rc" = 5 ]; then
    pass "a BMC that does not answer: power-on is acknowledged as failed (exit 5) after $((($(now_ms) - t) / 1000)) s"
else
    fail "power-on with the emulator stopped: exit $trigger_rc"
fi

for step in "power-on On" "power-reset On" "power-off Off"; do
    set -- $step
    t=$(now_ms)
    trigger "$1"
    state=$(power_state)
    if [ "$trigger_rc" = 0 ] && [ "$state" = "$2" ]; then
        pass "$1 is acknowledged once the system reports $2 (after $((($(now_ms) - t) / 1000)) s)"
    else
        fail "$1: exit $trigger_rc, PowerState '$state'"
    fi
done
if grep -q 'ForceRestart' "$LAB/posternd.log" "$LAB/emulator.log" 2>/dev/null ||
    grep -q 'POST /redfish/v1/Systems/.*/Actions/ComputerSystem.Reset' "$LAB/emulator.log"; then
    pass "the emulator received the Reset actions (its request log)"
else
    fail "no ComputerSystem.Reset request in the emulator's log"
fi
if [ "$(stat -c '%U %a' "$LAB/redfish.curl")" = "nobody 600" ] &&
    ! grep -qF -- "$PASSWORD" "$CONF"; then
    pass "the password is only in the curl config file (nobody, 600), not in the config or any argv"
else
    fail "the curl config file is $(stat -c '%U %a' "$LAB/redfish.curl")"
fi
finish
