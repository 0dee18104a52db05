#!/usr/bin/env bash
# Gated sshd, end to end, with the real OpenSSH server and client:
#   1. serve: a trigger starts a supervised sshd (sshd -D) that refused
#      connections before; ssh logs in and runs a command; at the ttl the
#      port is refused again and no sshd of the test is left;
#   2. run + stop: the same with a daemonising sshd started by `run` (a
#      script that starts it and waits for its PidFile) and stopped by
#      `stop` (a script killing the pid from that PidFile);
#   3. hold_while: a gate with a 2 s ttl stays open while an ssh session is
#      established (a new login still works 3 s in), and closes within a
#      few seconds once the session ends;
#   4. crash safety: posternd SIGKILLed with a run + stop gate open leaves
#      sshd running (nobody closed it); started again after the deadline it
#      stops that sshd within 1 s; posternd SIGKILLed with a serve gate
#      open takes its sshd with it (PR_SET_PDEATHSIG) within 1 s.
#
# Needs root (sshd), and the Debian packages openssh-server,
# openssh-client, iproute2 (ss) and python3. Without them it fails when
# CI=true and is skipped otherwise. Runs $POSTERND and $POSTERN (default:
# ${CARGO_TARGET_DIR:-target}/debug), building them with cargo if needed.
# Everything lives in a mktemp -d lab and on 127.0.0.1; every process it
# starts is stopped by PID on exit. KEEP_LAB=1 keeps the lab.
#
# Prints one line per check and ends with "N passed, M failed"; exits 1 if
# any check failed. Takes about 20 s.
#
# Usage: tests/e2e/sshd.sh   (from anywhere)

# Checks run through check, wait_until and eval: single-quoted on purpose
# (SC2016), and functions called only that way are reachable (SC2317).
# shellcheck disable=SC2016,SC2317

set -u
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

SSHD=/usr/sbin/sshd
require_tools "openssh-server openssh-client iproute2 python3" \
    "$SSHD" ssh ssh-keygen ss python3 timeout
require_root "tests/e2e/sshd.sh (it starts sshd)"
find_binaries
lab_init
T_SCRIPT=$(now_ms)

# sshd refuses to start without its privilege-separation directory, which
# the ssh service normally creates at boot.
[ -d /run/sshd ] || mkdir -m 755 /run/sshd

# --- keys, sshd configs, helper scripts -----------------------------------

mkdir -m 700 "$LAB/keys" "$LAB/state"
ssh-keygen -q -t ed25519 -N '' -C postern-e2e-host -f "$LAB/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C postern-e2e-client -f "$LAB/client_ed25519"
cp "$LAB/client_ed25519.pub" "$LAB/authorized_keys"
chmod 600 "$LAB/authorized_keys"

# Without PAM, sshd refuses accounts whose password is locked with "!";
# PAM's account stage lets key logins into such accounts (as on a stock
# Debian or Ubuntu host).
USE_PAM=no
case $(getent shadow root 2>/dev/null | cut -d: -f2) in '!'*) USE_PAM=yes ;; esac

# sshd_config NAME PORT PIDFILE: writes $LAB/sshd-NAME.config.
sshd_config() {
    cat >"$LAB/sshd-$1.config" <<EOF
ListenAddress 127.0.0.1
Port $2
HostKey $LAB/host_ed25519
AuthorizedKeysFile $LAB/authorized_keys
# The lab lives under /tmp, which StrictModes would refuse.
StrictModes no
PidFile $3
UsePAM $USE_PAM
PermitRootLogin prohibit-password
AllowUsers root
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
EOF
}

P_SERVE=$(free_port)
P_RUN=$(free_port)
P_HOLD=$(free_port)
RUN_PIDFILE=$LAB/sshd-run.pid
sshd_config serve "$P_SERVE" none
sshd_config run "$P_RUN" "$RUN_PIDFILE"
sshd_config hold "$P_HOLD" none
for c in serve run hold; do
    if ! out=$("$SSHD" -t -f "$LAB/sshd-$c.config" 2>&1); then
        abort "sshd -t accepts sshd-$c.config: $out"
    fi
done
pass "three sshd configs on 127.0.0.1:$P_SERVE (serve), :$P_RUN (run/stop), :$P_HOLD (hold_while)"

# run for the run + stop gate: sshd daemonises; wait (at most 5 s) until
# the daemon has written its PidFile, which it does once it has bound its
# port and left posternd's process group (posternd kills what is left in
# that group when run exits, and a daemon caught between its fork and its
# setsid would be killed too).
cat >"$LAB/sshd-start.sh" <<EOF
#!/bin/sh
$SSHD -f "\$1" -E "\$3" || exit 1
i=0
until [ -s "\$2" ] && kill -0 "\$(cat "\$2")" 2>/dev/null; do
    i=\$((i + 1))
    [ "\$i" -le 50 ] || exit 1
    sleep 0.1
done
EOF
# stop: SIGTERM to the pid in the PidFile, then wait (at most 5 s) until
# that sshd has exited (or is a zombie waiting for init), so a closed gate
# means a closed port.
cat >"$LAB/sshd-stop.sh" <<'EOF'
#!/bin/sh
pid=$(cat "$1") || exit 1
kill "$pid" || exit 1
i=0
while kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*zombie' "/proc/$pid/status" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 50 ] || exit 1
    sleep 0.1
done
EOF
# hold_while: exit 0 while a TCP connection to port $1 is established
# (the check of conf/examples/sshd-on-demand.toml; ss -H prints one line
# per connection and no header).
cat >"$LAB/in-use.sh" <<'EOF'
#!/bin/sh
ss -Htn state established "( sport = :$1 )" | grep -q .
EOF
chmod 755 "$LAB/sshd-start.sh" "$LAB/sshd-stop.sh" "$LAB/in-use.sh"

for a in ssh ssh-run ssh-hold; do "$POSTERN" keygen | write_private "$LAB/keys/$a.key"; done
write_private "$LAB/posternd.toml" <<EOF
[daemon]
state_dir = "$LAB/state"
shutdown_grace = "1s"

[[listen]]
address = "127.0.0.1:0"

[[action]]
name = "ssh"
key_file = "$LAB/keys/ssh.key"
serve = ["$SSHD", "-D", "-e", "-f", "$LAB/sshd-serve.config"]
ttl = "4s"

[[action]]
name = "ssh-run"
key_file = "$LAB/keys/ssh-run.key"
run = ["$LAB/sshd-start.sh", "$LAB/sshd-run.config", "$RUN_PIDFILE", "$LAB/sshd-run.log"]
stop = ["$LAB/sshd-stop.sh", "$RUN_PIDFILE"]
ttl = "2s"
timeout = "10s"

[[action]]
name = "ssh-hold"
key_file = "$LAB/keys/ssh-hold.key"
serve = ["$SSHD", "-D", "-e", "-f", "$LAB/sshd-hold.config"]
ttl = "2s"
hold_while = ["$LAB/in-use.sh", "$P_HOLD"]
hold_interval = "1s"
max_open = "30s"
timeout = "5s"
EOF

# --- helpers ----------------------------------------------------------------

# ssh_to PORT COMMAND...: logs in as root with the lab's client key.
ssh_to() {
    local port=$1
    shift
    timeout 20 ssh -F /dev/null -p "$port" -i "$LAB/client_ed25519" \
        -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o ConnectTimeout=5 -o LogLevel=ERROR root@127.0.0.1 "$@"
}

# ssh_refused PORT: ssh fails with "Connection refused".
ssh_refused() {
    local err
    if err=$(ssh_to "$1" true 2>&1); then
        note "ssh to :$1 succeeded"
        return 1
    fi
    case $err in *"Connection refused"*) return 0 ;; esac
    note "ssh to :$1 failed otherwise: $err"
    return 1
}

# ssh_says PORT WORD: ssh runs `echo WORD` and prints exactly WORD.
ssh_says() {
    local out
    out=$(ssh_to "$1" echo "$2" 2>&1)
    [ "$out" = "$2" ] && return 0
    note "ssh to :$1 gave: $out"
    return 1
}

# trigger ACTION: postern trigger with ACTION's key; sets RC.
trigger() {
    timeout 30 "$POSTERN" trigger "127.0.0.1:$PD_PORT" --key-file "$LAB/keys/$1.key" --timeout 5 >"$LAB/trigger.out" 2>&1
    RC=$?
    [ "$RC" -eq 0 ] || note "postern trigger $1: exit $RC: $(cat "$LAB/trigger.out")"
}

listening() { port_listening "$1"; }
not_listening() { ! port_listening "$1"; }

# sshd processes of this test: /usr/sbin/sshd whose command line names the
# lab (listeners), and the processes they started (sessions).
lab_sshd_pids() {
    local p
    for p in $(lab_pids); do
        [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$SSHD" ] && echo "$p"
    done
}

# ppid_of PID: its parent's pid (field 4 of /proc/PID/stat, counted after
# the ")" that ends the command name).
ppid_of() {
    local s
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 0
    s=${s##*) }
    read -r _ s _ <<<"$s"
    echo "$s"
}

# children PID: the pids of PID's direct children.
children() {
    local f p
    for f in /proc/[0-9]*; do
        p=${f#/proc/}
        [ "$(ppid_of "$p")" = "$1" ] && echo "$p"
    done
    return 0
}

# no_sshd_left PID...: none of PIDs, and no sshd of the lab, is running.
no_sshd_left() {
    local p left=""
    for p in "$@" $(lab_sshd_pids); do
        alive "$p" && left="$left $p"
    done
    [ -z "$left" ] && return 0
    note "still running:$left"
    return 1
}

between() { [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }

serve_pid() { sed -n "s/.*gate $1 serve pid=\([0-9]*\) started.*/\1/p" "$PD_LOG" | tail -n 1; }

# --- 1. serve ---------------------------------------------------------------

if ! start_posternd "$LAB/posternd.toml" "$LAB/posternd-1.log"; then
    abort "posternd starts"
fi
pass "posternd started on 127.0.0.1:$PD_PORT"

note "1. serve: sshd -D supervised by posternd, ttl 4s"
check "serve: before the trigger, ssh to :$P_SERVE is refused" ssh_refused "$P_SERVE"
t0=$(now_ms)
trigger ssh
t_ack=$(now_ms)
check "serve: postern trigger exits 0 ($((t_ack - t0)) ms)" [ "$RC" -eq 0 ]
check "serve: posternd logs the gate open" log_has "gate ssh open for addr=127.0.0.1 ttl=4s"
pid=$(serve_pid ssh)
check "serve: posternd logs the serve pid ($pid)" [ -n "$pid" ]
check "serve: sshd listens on :$P_SERVE" wait_until 5 listening "$P_SERVE"
check "serve: sshd's stderr reaches posternd's log, one clean line each" \
    wait_until 5 grep -q "gate ssh serve pid=$pid stderr: Server listening on 127.0.0.1 port $P_SERVE\.\$" "$PD_LOG"
check "serve: ssh logs in and runs a command" ssh_says "$P_SERVE" hello-from-sshd
check "serve: the sshd listener is posternd's child" [ "$(ppid_of "${pid:-0}")" = "$PD_PID" ]
if wait_log "$PD_LOG" "gate ssh closed (deadline)" 15; then
    t_close=$(now_ms)
    took=$((t_close - t0))
    check "serve: closed at the ttl (${took} ms after the trigger)" between "$took" 3900 6500
else
    fail "serve: gate closed (deadline) within 15 s"
fi
check "serve: after the ttl, ssh to :$P_SERVE is refused" ssh_refused "$P_SERVE"
check "serve: no sshd of the test remains" no_sshd_left "${pid:-}"

# --- 2. run + stop ----------------------------------------------------------

note "2. run + stop: a daemonising sshd, ttl 2s"
check "run/stop: before the trigger, ssh to :$P_RUN is refused" ssh_refused "$P_RUN"
t0=$(now_ms)
trigger ssh-run
check "run/stop: postern trigger exits 0 ($(($(now_ms) - t0)) ms)" [ "$RC" -eq 0 ]
check "run/stop: posternd logs run exit=0" log_has "gate ssh-run run exit=0"
check "run/stop: sshd listens on :$P_RUN" wait_until 5 listening "$P_RUN"
check "run/stop: ssh logs in and runs a command" ssh_says "$P_RUN" hello-from-sshd-run
runpid=$(cat "$RUN_PIDFILE" 2>/dev/null)
check "run/stop: sshd wrote its PidFile ($runpid)" alive "$runpid"
if wait_log "$PD_LOG" "gate ssh-run closed (deadline)" 15; then
    took=$(($(now_ms) - t0))
    check "run/stop: closed at the ttl (${took} ms after the trigger)" between "$took" 1900 5000
else
    fail "run/stop: gate closed (deadline) within 15 s"
fi
check "run/stop: posternd logs stop exit=0" log_has "gate ssh-run stop exit=0"
check "run/stop: after the ttl, ssh to :$P_RUN is refused" ssh_refused "$P_RUN"
check "run/stop: no sshd of the test remains" no_sshd_left "${runpid:-}"

# --- 3. hold_while ------------------------------------------------------------

note "3. hold_while: ttl 2s, held 1s at a time while a session is established"
t0=$(now_ms)
trigger ssh-hold
check "hold: postern trigger exits 0" [ "$RC" -eq 0 ]
holdpid=$(serve_pid ssh-hold)
check "hold: sshd listens on :$P_HOLD" wait_until 5 listening "$P_HOLD"
ssh_to "$P_HOLD" 'echo session-up; sleep 6; echo session-done' >"$LAB/session.out" 2>&1 &
SESSION=$!
track "$SESSION"
check "hold: a 6 s ssh session is up" wait_log "$LAB/session.out" session-up 10
sessions=$(children "${holdpid:-0}")
# Past the ttl (2 s) by a second.
wait_until 5 eval '[ $(($(now_ms) - t0)) -ge 3000 ]'
check "hold: posternd logs the gate held open" log_has "gate ssh-hold held open: still in use"
check "hold: 3 s after a 2 s ttl, a new ssh login works ($(($(now_ms) - t0)) ms)" ssh_says "$P_HOLD" still-open
check "hold: the gate is not closed while the session lasts" eval '! log_has "gate ssh-hold closed"'
if wait_gone "$SESSION" 15; then
    wait "$SESSION" 2>/dev/null
    t_end=$(now_ms)
    check "hold: the session ran to its end" grep -q session-done "$LAB/session.out"
    if wait_log "$PD_LOG" "gate ssh-hold closed (deadline)" 10; then
        took=$(($(now_ms) - t_end))
        check "hold: closed ${took} ms after the session ended (open $(($(now_ms) - t0)) ms)" [ "$took" -le 4000 ]
    else
        fail "hold: gate closed within 10 s of the session's end"
    fi
else
    fail "hold: the ssh session ended within 15 s"
fi
check "hold: afterwards, ssh to :$P_HOLD is refused" ssh_refused "$P_HOLD"
# shellcheck disable=SC2086 # $sessions: zero or more pids
check "hold: no sshd of the test remains" no_sshd_left "${holdpid:-}" $sessions

# --- 4. crash safety ----------------------------------------------------------

note "4a. crash with a run + stop gate open, restart after its deadline"
t0=$(now_ms)
trigger ssh-run
check "crash run/stop: postern trigger exits 0" [ "$RC" -eq 0 ]
check "crash run/stop: sshd listens on :$P_RUN" wait_until 5 listening "$P_RUN"
runpid=$(cat "$RUN_PIDFILE" 2>/dev/null)
deadline=$(sed -n 's/^gate name=ssh-run .* deadline=\([0-9]*\) .*/\1/p' "$LAB/state/gates.state" 2>/dev/null)
check "crash run/stop: the gate is in the state file (deadline $deadline)" [ -n "$deadline" ]
kill_posternd KILL
check "crash run/stop: sshd still accepts after posternd was SIGKILLed" ssh_says "$P_RUN" still-here
# Past the recorded deadline (whole seconds) and the ttl, by half a second.
wait_until 10 eval '[ "$(date +%s)" -gt "${deadline:-0}" ] && [ $(($(now_ms) - t0)) -ge 2500 ]'
check "crash run/stop: past the deadline, nobody closed it ($(($(now_ms) - t0)) ms after the trigger)" ssh_says "$P_RUN" past-deadline
t_start=$(now_ms)
if start_posternd "$LAB/posternd.toml" "$LAB/posternd-2.log"; then
    pass "crash run/stop: posternd started again on 127.0.0.1:$PD_PORT"
else
    abort "posternd starts again"
fi
if wait_until 5 not_listening "$P_RUN"; then
    took=$(($(now_ms) - t_start))
    check "crash run/stop: sshd stopped ${took} ms after posternd was started again" [ "$took" -le 1000 ]
else
    fail "crash run/stop: sshd stopped after posternd was started again"
fi
check "crash run/stop: posternd logs it" wait_log "$PD_LOG" "gate ssh-run expired while posternd was down; stopped at start-up" 5
check "crash run/stop: ssh to :$P_RUN is refused" ssh_refused "$P_RUN"
check "crash run/stop: no sshd of the test remains" no_sshd_left "${runpid:-}"

note "4b. crash with a serve gate open"
trigger ssh
check "crash serve: postern trigger exits 0" [ "$RC" -eq 0 ]
pid=$(serve_pid ssh)
check "crash serve: sshd listens on :$P_SERVE" wait_until 5 listening "$P_SERVE"
check "crash serve: ssh logs in" ssh_says "$P_SERVE" before-crash
t_kill=$(now_ms)
kill_posternd KILL
if wait_until 5 not_listening "$P_SERVE"; then
    took=$(($(now_ms) - t_kill))
    check "crash serve: sshd died with posternd (port closed ${took} ms after SIGKILL)" [ "$took" -le 1000 ]
else
    fail "crash serve: sshd died with posternd"
fi
check "crash serve: ssh to :$P_SERVE is refused" ssh_refused "$P_SERVE"
check "crash serve: no sshd of the test remains" no_sshd_left "${pid:-}"
if start_posternd "$LAB/posternd.toml" "$LAB/posternd-3.log"; then
    check "crash serve: the next start-up clears the record" wait_log "$PD_LOG" "gate ssh (serve) closed at start-up" 5
    kill_posternd TERM
    wait "$PD_PID" 2>/dev/null
    check "posternd exits on SIGTERM, the state file lists no gate" eval '! grep -q "^gate " "$LAB/state/gates.state"'
else
    fail "crash serve: posternd starts again"
fi

note "took $(($(now_ms) - T_SCRIPT)) ms"
finish
