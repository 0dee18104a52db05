#!/usr/bin/env bash
# posternd behind an ssh relay, end to end, with the real OpenSSH server
# and client. All on 127.0.0.1, standing in for three hosts:
#
#   client --> tap --> relay sshd :FPORT ==ssh -R tunnel==> home posternd :P1
#
#   - home: posternd listens on 127.0.0.1:P1 (postern-2) and dials out to
#     the relay with `ssh -N -R 127.0.0.1:FPORT:127.0.0.1:P1`, so clients
#     reach it only through the relay's forwarded port FPORT;
#   - relay: a second sshd (own host key, one authorized key that may only
#     open that one remote forward);
#   - tap: a small python3 TCP relay between the client and FPORT that
#     records every byte crossing the relay hop.
#
# Checks: a trigger through the relay runs the action (exit 0, a marker
# file grows); the relay hop carries exactly 36 (greeting) + 48 (reply) +
# 38 (ack) bytes, the greeting starts with "PST2", no key material crosses
# it (neither the base64 key nor its raw bytes), and a second trigger gets
# a fresh nonce; a wrong key through the relay gets no ack (exit 2) and
# the hop carries the greeting and the reply only; with the tunnel closed,
# a trigger to the relay cannot connect.
#
# Needs root (sshd), and the Debian packages openssh-server,
# openssh-client, iproute2 (ss) and python3. Without them it fails when
# CI=true and is skipped otherwise. Runs $POSTERND and $POSTERN (default:
# ${CARGO_TARGET_DIR:-target}/debug), building them with cargo if needed.
# Everything lives in a mktemp -d lab; every process it starts is stopped
# by PID on exit. KEEP_LAB=1 keeps the lab.
#
# Prints one line per check and ends with "N passed, M failed"; exits 1 if
# any check failed. Takes a few seconds.
#
# Usage: tests/e2e/relay.sh   (from anywhere)

# Checks run through check, wait_until and eval: single-quoted on purpose
# (SC2016), and functions called only that way are reachable (SC2317).
# shellcheck disable=SC2016,SC2317

set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

SSHD=/usr/sbin/sshd
require_tools "openssh-server openssh-client iproute2 python3" \
    "$SSHD" ssh ssh-keygen ss python3 timeout
require_root "tests/e2e/relay.sh (it starts sshd)"
find_binaries
lab_init
T_SCRIPT=$(now_ms)

# sshd refuses to start without its privilege-separation directory, which
# the ssh service normally creates at boot.
[ -d /run/sshd ] || mkdir -m 755 /run/sshd
mkdir -m 700 "$LAB/keys" "$LAB/state" "$LAB/tap"

# --- the relay: sshd that allows one remote forward -----------------------

RPORT=$(free_port)
FPORT=$(free_port)
ssh-keygen -q -t ed25519 -N '' -C postern-e2e-relay -f "$LAB/relay_host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C postern-e2e-home -f "$LAB/home_ed25519"
# The home host's key may do nothing but listen on 127.0.0.1:FPORT.
printf 'restrict,port-forwarding,permitlisten="127.0.0.1:%s" %s\n' \
    "$FPORT" "$(cat "$LAB/home_ed25519.pub")" >"$LAB/relay_authorized_keys"
chmod 600 "$LAB/relay_authorized_keys"
# The home host knows the relay's host key in advance.
printf '[127.0.0.1]:%s %s\n' "$RPORT" "$(cut -d' ' -f1,2 "$LAB/relay_host_ed25519.pub")" \
    >"$LAB/relay_known_hosts"

# Without PAM, sshd refuses accounts whose password is locked with "!";
# PAM's account stage lets key logins into such accounts.
USE_PAM=no
case $(getent shadow root 2>/dev/null | cut -d: -f2) in '!'*) USE_PAM=yes ;; esac

cat >"$LAB/relay_sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $RPORT
HostKey $LAB/relay_host_ed25519
AuthorizedKeysFile $LAB/relay_authorized_keys
# The lab lives under /tmp, which StrictModes would refuse.
StrictModes no
PidFile none
UsePAM $USE_PAM
PermitRootLogin prohibit-password
AllowUsers root
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
# Remote forwards only, bound to loopback on the relay.
AllowTcpForwarding remote
GatewayPorts no
PermitListen 127.0.0.1:$FPORT
X11Forwarding no
PermitTTY no
EOF
if ! out=$("$SSHD" -t -f "$LAB/relay_sshd_config" 2>&1); then
    abort "sshd -t accepts the relay's config: $out"
fi
"$SSHD" -D -e -f "$LAB/relay_sshd_config" </dev/null >/dev/null 2>"$LAB/relay.log" &
RELAY=$!
track "$RELAY"
check "relay sshd listens on 127.0.0.1:$RPORT" wait_until 10 port_listening "$RPORT"

# --- home: posternd on 127.0.0.1:P1, reachable through the tunnel ---------

KEY=$LAB/keys/mark.key
"$POSTERN" keygen | write_private "$KEY"
write_private "$LAB/posternd.toml" <<EOF
[daemon]
state_dir = "$LAB/state"
shutdown_grace = "1s"

[[listen]]
address = "127.0.0.1:0"
protocol = "postern-2"

[[action]]
name = "mark"
key_file = "$KEY"
run = ["/bin/sh", "-c", "echo \"\$1\" >> '$LAB/marker'", "sh", "{addr}"]
timeout = "5s"
EOF
if ! start_posternd "$LAB/posternd.toml" "$LAB/posternd.log"; then
    abort "posternd starts"
fi
P1=$PD_PORT
check "posternd listens on 127.0.0.1:$P1 only" log_has "listeners=[127.0.0.1:$P1(postern-2)] "

ssh -N -F /dev/null -p "$RPORT" -i "$LAB/home_ed25519" \
    -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$LAB/relay_known_hosts" \
    -o ExitOnForwardFailure=yes -o ServerAliveInterval=5 -o ConnectTimeout=5 \
    -R "127.0.0.1:$FPORT:127.0.0.1:$P1" root@127.0.0.1 \
    </dev/null >/dev/null 2>"$LAB/tunnel.log" &
TUNNEL=$!
track "$TUNNEL"
if wait_until 10 port_listening "$FPORT"; then
    pass "the home host's reverse tunnel: the relay listens on 127.0.0.1:$FPORT"
else
    sed 's/^/#   tunnel: /' "$LAB/tunnel.log"
    sed 's/^/#   relay: /' "$LAB/relay.log"
    abort "the reverse tunnel comes up"
fi
fwd_owner() { ss -Hltnp "( sport = :$FPORT )" | grep -q "pid=$1,"; }
check "the forwarded port belongs to the relay's sshd, not to posternd" eval '! fwd_owner "$PD_PID"'

# --- the tap: records what crosses the relay hop -------------------------

cat >"$LAB/tap.py" <<'EOF'
"""TCP relay 127.0.0.1:0 -> 127.0.0.1:TARGET that records both directions.

Usage: tap.py TARGET_PORT OUT_DIR. Writes OUT_DIR/port (its own port), and
per connection N: N.c2s, N.s2c (the bytes, as forwarded) and N.done.
"""
import os
import socket
import sys
import threading

target, out = int(sys.argv[1]), sys.argv[2]

def pipe(src, dst, path):
    with open(path, "wb") as f:
        while True:
            try:
                data = src.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            f.write(data)
            f.flush()
            try:
                dst.sendall(data)
            except OSError:
                break
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def handle(client, n):
    base = os.path.join(out, str(n))
    client.settimeout(20)
    try:
        upstream = socket.create_connection(("127.0.0.1", target), timeout=20)
    except OSError:
        client.close()
        open(base + ".done", "w").close()
        return
    ts = [
        threading.Thread(target=pipe, args=(client, upstream, base + ".c2s")),
        threading.Thread(target=pipe, args=(upstream, client, base + ".s2c")),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    client.close()
    upstream.close()
    open(base + ".done", "w").close()

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(8)
with open(os.path.join(out, "port.tmp"), "w") as f:
    f.write("%d\n" % srv.getsockname()[1])
os.rename(os.path.join(out, "port.tmp"), os.path.join(out, "port"))
n = 0
while True:
    c, _ = srv.accept()
    n += 1
    threading.Thread(target=handle, args=(c, n), daemon=True).start()
EOF
python3 "$LAB/tap.py" "$FPORT" "$LAB/tap" </dev/null >/dev/null 2>"$LAB/tap.log" &
track $!
if wait_until 10 test -s "$LAB/tap/port"; then
    TPORT=$(cat "$LAB/tap/port")
    pass "tap on 127.0.0.1:$TPORT forwards to the relay's 127.0.0.1:$FPORT"
else
    abort "the tap starts"
fi

# trigger KEYFILE N: postern trigger through the tap (connection N); sets RC
# and waits for the tap to finish recording.
trigger() {
    local t0
    t0=$(now_ms)
    timeout 30 "$POSTERN" trigger "127.0.0.1:$TPORT" --key-file "$1" --timeout 10 >"$LAB/trigger.out" 2>&1
    RC=$?
    LATENCY=$(($(now_ms) - t0))
    note "postern trigger: exit $RC in $LATENCY ms: $(cat "$LAB/trigger.out")"
    wait_until 10 test -e "$LAB/tap/$2.done"
}

marks() { [ -f "$LAB/marker" ] && wc -l <"$LAB/marker" || echo 0; }

# inspect N KEYFILE: what the tap recorded on connection N, as
# "c2s=BYTES s2c=BYTES tag=... key_b64=no key_raw=no distinct=N".
inspect() {
    python3 - "$LAB/tap/$1" "$2" <<'EOF'
import base64, sys
base, keyfile = sys.argv[1], sys.argv[2]
c2s = open(base + ".c2s", "rb").read()
s2c = open(base + ".s2c", "rb").read()
b64 = open(keyfile, "rb").read().strip()
raw = base64.b64decode(b64)
both = c2s + s2c
print("c2s=%d s2c=%d tag=%s key_b64=%s key_raw=%s distinct=%d" % (
    len(c2s), len(s2c), s2c[:4].decode("ascii", "replace"),
    "yes" if b64 in both else "no",
    "yes" if raw in both else "no",
    len(set(s2c[4:36]))))
EOF
}

# --- 1. a trigger through the relay ---------------------------------------

trigger "$KEY" 1
check "trigger through the relay exits 0 ($LATENCY ms)" [ "$RC" -eq 0 ]
check "the action ran (marker file has 1 line)" wait_until 5 eval '[ "$(marks)" -eq 1 ]'
check "posternd logs the trigger" wait_log "$PD_LOG" "action=mark addr=127.0.0.1 status=started" 5
one=$(inspect 1 "$KEY")
note "tap, connection 1: $one"
check "the relay hop carried 48 bytes out (reply) and 74 back (greeting 36 + ack 38)" \
    eval '[[ "$one" == "c2s=48 s2c=74 "* ]]'
check "the greeting starts with PST2" eval '[[ "$one" == *" tag=PST2 "* ]]'
check "no key crossed the relay (base64 or raw)" eval '[[ "$one" == *" key_b64=no key_raw=no "* ]]'
check "the nonce looks random (at least 16 distinct byte values in 32)" \
    eval '[ "${one##*distinct=}" -ge 16 ]'

# --- 2. a second trigger: a fresh nonce ----------------------------------

trigger "$KEY" 2
check "second trigger through the relay exits 0" [ "$RC" -eq 0 ]
check "the action ran again (marker file has 2 lines)" wait_until 5 eval '[ "$(marks)" -eq 2 ]'
two=$(inspect 2 "$KEY")
note "tap, connection 2: $two"
check "second exchange: 48 bytes out, 74 back, no key" \
    eval '[[ "$two" == "c2s=48 s2c=74 tag=PST2 key_b64=no key_raw=no "* ]]'
differ() { ! cmp -s <(head -c 36 "$LAB/tap/1.s2c") <(head -c 36 "$LAB/tap/2.s2c"); }
check "the second greeting carries a different nonce" differ
replies_differ() { ! cmp -s "$LAB/tap/1.c2s" "$LAB/tap/2.c2s"; }
check "and so the second reply differs from the first" replies_differ

# --- 3. a wrong key through the relay -------------------------------------

WRONG=$LAB/keys/wrong.key
"$POSTERN" keygen | write_private "$WRONG"
trigger "$WRONG" 3
check "a wrong key through the relay gets no ack (exit $RC, expected 2)" [ "$RC" -eq 2 ]
three=$(inspect 3 "$WRONG")
note "tap, connection 3: $three"
check "the hop carried the greeting and the reply only (48 out, 36 back)" \
    eval '[[ "$three" == "c2s=48 s2c=36 tag=PST2 key_b64=no key_raw=no "* ]]'
check "posternd logs the failure" wait_log "$PD_LOG" "reason=bad-mac" 5
sleep 0.3
check "the action did not run (marker file still has 2 lines)" [ "$(marks)" -eq 2 ]

# --- 4. the relay is the only way in: without the tunnel, no trigger ------

stop_pid "$TUNNEL"
check "the tunnel closed, the relay no longer listens on $FPORT" wait_until 5 eval '! port_listening "$FPORT"'
timeout 30 "$POSTERN" trigger "127.0.0.1:$FPORT" --key-file "$KEY" --timeout 5 >/dev/null 2>&1
rc=$?
check "a trigger to the relay now cannot connect (exit $rc, expected 3)" [ "$rc" -eq 3 ]
check "the action did not run" [ "$(marks)" -eq 2 ]

note "took $(($(now_ms) - T_SCRIPT)) ms"
finish
