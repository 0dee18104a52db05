#!/usr/bin/env bash
# Where the time of one trigger goes: the stage breakdown in BENCHMARKS.md.
#
# Starts the release posternd (privilege-separated, as root) with one
# action that runs a tiny static C stamp program, records kernel
# tracepoints system-wide with `perf record` (process exec/fork/exit and
# the socket system calls that mark each step of the exchange), runs the
# real client RUNS times at an operator's pace (0.5 s apart), and prints,
# per stage, the median over the runs:
#
#   client start-up   client execve() entered -> its first socket()
#   connect           socket() -> connect() returned
#   greeting          connect() returned -> the nonce read returned
#                     (server: accept, getrandom, one write)
#   reply + verify    nonce read returned -> network process sends the
#                     request to the monitor (client MAC and write; server
#                     readv and the MAC check against every key)
#   request to monitor  network process sendmsg -> monitor recvmsg returned
#   spawn             monitor recvmsg returned -> the action's execve()
#                     entered (config lookup, pipes, fork, pre-exec hook)
#   exec              the action's execve() entered -> exec done (its first
#                     instruction runs right after)
#   ack               action exec done -> client has the 38-byte ack
#                     (monitor bookkeeping and log lines, IPC, ack MAC,
#                     write); overlaps the action's own start
#   client exit       ack read returned -> client process exit
#
# Tracepoints cost far less than strace (no stop per system call), but
# they are not free: totals here run a little above (e) of the load tool.
# Only processes this script starts are measured (filtered by PID) and
# stopped (by PID). Traffic goes only to 127.0.0.1.
#
# Usage: benches/stages.sh [RUNS]      (default 20; root, perf, cc, python3,
#        and tracefs mounted on /sys/kernel/tracing)
# Uses $POSTERND / $POSTERN if set, else target/release/{posternd,postern}.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-20}
posternd=${POSTERND:-$root/target/release/posternd}
postern=${POSTERN:-$root/target/release/postern}
skip() { echo "stages: skipped: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (system-wide tracepoints; privilege separation)"
command -v perf >/dev/null || skip "perf not installed"
command -v cc >/dev/null || skip "no C compiler for the stamp program"
command -v python3 >/dev/null || skip "python3 not installed"
[ -x "$posternd" ] && [ -x "$postern" ] || skip "build first: cargo build --release --workspace --bins"
if [ ! -d /sys/kernel/tracing/events/syscalls ]; then
    skip "no syscall tracepoints: mount tracefs first (mount -t tracefs nodev /sys/kernel/tracing)"
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/postern-stages.XXXXXX")
chmod 755 "$dir"
daemon="" recorder=""
cleanup() {
    [ -n "$recorder" ] && kill -INT "$recorder" 2>/dev/null && wait "$recorder" 2>/dev/null
    [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/stamp.c" <<'C'
#include <stdio.h>
#include <time.h>
int main(int argc, char **argv) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    if (argc < 2) return 64;
    FILE *f = fopen(argv[1], "w");
    if (!f) return 1;
    fprintf(f, "%lld%09ld\n", (long long)t.tv_sec, t.tv_nsec);
    return fclose(f) != 0;
}
C
cc -O2 -static "$dir/stamp.c" -o "$dir/stamp" 2>/dev/null || cc -O2 "$dir/stamp.c" -o "$dir/stamp" || exit 1
(umask 077 && "$postern" keygen >"$dir/key") || exit 1
(umask 077 && cat >"$dir/posternd.toml" <<TOML
[daemon]
state_dir = "$dir/state"
shutdown_grace = "1s"

[limits]
rate_burst = 1000
rate_per_minute = 60000

[[listen]]
address = "127.0.0.1:0"

[[action]]
name = "a0"
key = "$(cat "$dir/key")"
run = ["$dir/stamp", "$dir/stamp.out"]
single_instance = false
TOML
)
"$posternd" --config "$dir/posternd.toml" 2>"$dir/posternd.log" &
daemon=$!
port=""
for _ in $(seq 1000); do
    port=$(grep -o 'listeners=\[127\.0\.0\.1:[0-9]*' "$dir/posternd.log" 2>/dev/null | grep -o '[0-9]*$')
    [ -n "$port" ] && break
    kill -0 "$daemon" 2>/dev/null || break
    sleep 0.01
done
[ -n "$port" ] || { cat "$dir/posternd.log"; echo "stages: posternd did not start"; exit 1; }
network=""
for _ in $(seq 200); do
    network=$(cat "/proc/$daemon/task/$daemon/children" 2>/dev/null | awk '{print $1}')
    [ -n "$network" ] && break
    sleep 0.01
done
[ -n "$network" ] || { echo "stages: no network process"; exit 1; }

events=sched:sched_process_exec,sched:sched_process_fork,sched:sched_process_exit
for e in sys_enter_execve sys_enter_socket sys_exit_connect sys_enter_sendto \
    sys_exit_recvfrom sys_enter_sendmsg sys_exit_recvmsg sys_exit_readv; do
    events="$events,syscalls:$e"
done
perf record -q -a -e "$events" -o "$dir/perf.data" 2>"$dir/perf.err" &
recorder=$!
# perf writes its header once recording has started.
for _ in $(seq 500); do
    [ -s "$dir/perf.data" ] && break
    kill -0 "$recorder" 2>/dev/null || { cat "$dir/perf.err"; skip "perf record failed"; }
    sleep 0.01
done
sleep 0.2
: >"$dir/clients"
for i in $(seq "$runs"); do
    "$postern" trigger "127.0.0.1:$port" a0 --key-file "$dir/key" --timeout 5 >/dev/null &
    c=$!
    wait "$c" || { echo "stages: trigger $i failed"; exit 1; }
    echo "$c" >>"$dir/clients"
    sleep 0.5
done
sleep 0.1
kill -INT "$recorder"; wait "$recorder" 2>/dev/null; recorder=""
perf script -i "$dir/perf.data" -F pid,time,event,trace 2>/dev/null >"$dir/trace.txt"
echo "stages: $runs triggers 0.5 s apart; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$dir/trace.txt" "$daemon" "$network" "$dir/clients" <<'PY'
import re, sys, statistics
trace, mon, net, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
clients = [int(l) for l in open(clients) if l.strip()]
ev = []  # (time, pid, event, text)
for line in open(trace):
    m = re.match(r"\s*(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)", line)
    if m:
        ev.append((float(m.group(2)), int(m.group(1)), m.group(3), m.group(4)))
ev.sort()
def ret(t):  # syscall exit value
    v = int(t.split()[-1], 16)
    return v - (1 << 64) if v >= 1 << 63 else v
def find(after, pid, name, cond=lambda t: True):
    for (t, p, e, x) in ev:
        if t >= after and p == pid and e.endswith(name) and cond(x):
            return t, x
    raise LookupError(name)
stages = ["client start-up", "connect", "greeting", "reply + verify", "request to monitor",
          "spawn", "exec", "ack", "client exit"]
rows, totals, trips = [], [], []
for c in clients:
    try:
        t0, _ = find(0, c, "sys_enter_execve")
        sock, _ = find(t0, c, "sys_enter_socket")
        conn, _ = find(sock, c, "sys_exit_connect")
        nonce, _ = find(conn, c, "sys_exit_recvfrom", lambda x: ret(x) == 32)
        req, _ = find(nonce, net, "sys_enter_sendmsg")
        got, _ = find(req, mon, "sys_exit_recvmsg", lambda x: ret(x) > 0)
        fork, x = find(got, mon, "sched_process_fork")
        child = int(re.search(r"child_pid=(\d+)", x).group(1))
        cexec, _ = find(fork, child, "sys_enter_execve")
        act, _ = find(cexec, child, "sched_process_exec")
        ack, _ = find(act if act > req else req, c, "sys_exit_recvfrom", lambda x: ret(x) == 38)
        end, _ = find(ack, c, "sched_process_exit")
    except LookupError as e:
        print(f"  client {c}: event {e} not found; run skipped")
        continue
    rows.append([sock - t0, conn - sock, nonce - conn, req - nonce, got - req,
                 cexec - got, act - cexec, max(ack - act, 0.0), end - ack])
    totals.append(act - t0)
    trips.append(end - t0)
if not rows:
    sys.exit("stages: no complete run")
print(f"  {'stage':<20} {'median':>9} {'min':>9} {'max':>9}   (ms, {len(rows)} runs)")
for i, s in enumerate(stages):
    col = [r[i] * 1e3 for r in rows]
    print(f"  {s:<20} {statistics.median(col):9.3f} {min(col):9.3f} {max(col):9.3f}")
for name, col in [("trigger to action", totals), ("client round trip", trips)]:
    col = [v * 1e3 for v in col]
    print(f"  {name:<20} {statistics.median(col):9.3f} {min(col):9.3f} {max(col):9.3f}")
PY
