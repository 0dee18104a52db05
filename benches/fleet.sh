#!/usr/bin/env bash
# One trigger on thousands of hosts: the fleet figures in BENCHMARKS.md.
#
# Simulates a fleet on loopback: 64 posternd processes with 64 listeners
# each (4,096 hosts, host P-L on 127.1.P.L+1:7001), every host with its
# own action whose key is derived from one fleet master for that host
# (`postern key derive --master`), running /bin/true. Dead hosts are
# addresses where nothing listens (127.2.x.y:7001); hanging hosts accept
# and never greet (benches/fleet_hang.py on 127.3.x.y:7001). One inventory
# names them all, keyed by `master = true`, with four groups:
#
#   healthy-1024   the first 1,024 hosts
#   healthy-4096   all 4,096
#   degraded-1024  the same 1,024 slots with 10 % dead, 10 % hanging
#   degraded-4096  the same 4,096 slots with 10 % dead, 10 % hanging
#   outage-819     the 410 dead and 409 hanging hosts alone (a rack down):
#                  the client's own cost of dead hosts, without the
#                  servers' CPU time that the healthy hosts need
#
# and triggers each group RUNS times with `--timeout 5 --json`, with two
# clients in the same run: the client of commit $FLEET_BASE_REV (default
# 4fd07ca, a pool of threads, run with --parallel 64) built from git into
# its own directory, and the client of this tree (default --parallel).
# It reports, per client and group, the median wall time and the median
# peak RSS of the client process (GNU time's %M), and how many hosts
# succeeded (checked against what the group should give); also the CPU
# time of the client and of all the servers during each run (the servers
# share the machine's cores with the client, so their CPU time is a floor
# under the wall time of a healthy run). The machine's
# CPU model is read from /proc/cpuinfo at run time.
#
# Only loopback is used. Every process this script starts is listed in
# $pids and stopped by PID on exit; every wait loop is bounded.
#
# Usage: benches/fleet.sh [RUNS]     (default 3; python3, GNU time, git,
#        cargo; as root the posternds run privilege-separated as they do
#        in production)
# $FLEET_GROUPS and $FLEET_CLIENTS ("baseline new") choose what to run;
# $FLEET_SAVE, a directory, keeps each run's JSON output there.
# $FLEET_NEW_ARGS are extra options for the new client (e.g. "--parallel 256").
# $FLEET_KEEP_LOGS, a directory, keeps the posternds' logs there.
# $FLEET_ACTIONS: "gate" (default) makes each host's action a gate (run and
# stop /bin/true, ttl 1h) that the warm-up run opens, so that every measured
# trigger is answered "already-active" with no process started: the
# servers then cost what a host's own posternd costs (verify, ack), and the
# wall time is the client's. "run" starts /bin/true on every trigger: the
# 64 simulated servers then need about 1.2 ms of CPU per trigger on the
# client's cores, more than 2 cores give in 2 s for 4,096 hosts.
# Uses $POSTERND / $POSTERN if set, else target/release/{posternd,postern}
# (built if missing); $FLEET_BASELINE, if set, is the baseline client
# (else it is built into ${TMPDIR:-/tmp}/postern-fleet-$FLEET_BASE_REV).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
timeout=5
procs=64 per=64
base_rev=${FLEET_BASE_REV:-4fd07ca}
actions=${FLEET_ACTIONS:-gate}
case $actions in gate | run) ;; *) echo "fleet: FLEET_ACTIONS must be gate or run" >&2; exit 1 ;; esac
skip() { echo "fleet: skipped: $*"; exit 0; }
die() { echo "fleet: $*" >&2; exit 1; }
command -v python3 >/dev/null || skip "python3 not installed"
[ -x /usr/bin/time ] || skip "GNU time (/usr/bin/time) not installed"
case $runs in '' | *[!0-9]*) die "RUNS must be a number" ;; esac
if [ "$runs" -lt 1 ] || [ "$runs" -gt 50 ]; then die "RUNS must be 1 to 50"; fi

if [ -z "${POSTERND:-}" ] || [ -z "${POSTERN:-}" ]; then
    (cd "$root" && cargo build --release --bin posternd -p postern --quiet &&
        cargo build --release -p postern-client --bin postern --quiet) || die "build failed"
fi
target=${CARGO_TARGET_DIR:-$root/target}
posternd=${POSTERND:-$target/release/posternd}
postern=${POSTERN:-$target/release/postern}
baseline=${FLEET_BASELINE:-}
if [ -z "$baseline" ]; then
    bdir=${TMPDIR:-/tmp}/postern-fleet-$base_rev
    baseline=$bdir/target/release/postern
    if [ ! -x "$baseline" ]; then
        echo "fleet: building the client of $base_rev into $bdir"
        rm -rf "$bdir/src"
        mkdir -p "$bdir/src" || die "cannot create $bdir"
        git -C "$root" archive "$base_rev" | tar -x -C "$bdir/src" || die "git archive $base_rev failed"
        (cd "$bdir/src" && cargo build --release --quiet -p postern-client --bin postern \
            --target-dir "$bdir/target") || die "building $base_rev failed"
    fi
fi
for b in "$posternd" "$postern" "$baseline"; do [ -x "$b" ] || die "missing $b"; done

dir=$(mktemp -d "${TMPDIR:-/tmp}/postern-fleet.XXXXXX") || die "mktemp failed"
chmod 755 "$dir"
pids=() daemons=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    [ -n "${FLEET_KEEP_LOGS:-}" ] && cp "$dir"/d*.log "$FLEET_KEEP_LOGS"/ 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "fleet: machine: ${cpu:-unknown CPU}, $(nproc) CPUs, $(uname -sr), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM"
echo "fleet: $((procs * per)) hosts as $procs posternd x $per listeners; timeout $timeout s; $runs runs each; baseline $base_rev"

(umask 077 && "$postern" keygen >"$dir/master.key") || die "keygen failed"

# Host index i (0..4095) is posternd i/64, listener i%64. The degraded
# groups put a dead host at every slot i%10==3 and a hanging one at i%10==7.
addr_of() { echo "127.$1.$(($2 / 256)).$(($2 % 256 + ${3:-0}))"; }
healthy_addr() { echo "127.1.$(($1 / per)).$(($1 % per + 1))"; }

echo "fleet: deriving $((procs * per)) host keys and writing the configs"
for p in $(seq 0 $((procs - 1))); do
    conf=$dir/d$p.toml
    {
        printf '[daemon]\nstate_dir = "%s"\nshutdown_grace = "1s"\n\n' "$dir/state$p"
        printf '[limits]\nrate_burst = 1000000\nrate_per_minute = 1000000\n'
        printf 'lockout_after = 1000000\nverify_per_second = 1000000\nexempt = ["127.0.0.0/8"]\n'
        for l in $(seq 0 $((per - 1))); do
            printf '\n[[listen]]\naddress = "%s:7001"\n' "$(healthy_addr $((p * per + l)))"
        done
        for l in $(seq 0 $((per - 1))); do
            i=$((p * per + l))
            key=$("$postern" key derive --master "$dir/master.key" --host "h$i" --action open) ||
                die "key derive failed"
            if [ "$actions" = gate ]; then
                printf '\n[[action]]\nname = "a%s"\nkey = "%s"\nrun = ["/bin/true"]\nstop = ["/bin/true"]\nttl = "1h"\n' "$l" "$key"
            else
                printf '\n[[action]]\nname = "a%s"\nkey = "%s"\nrun = ["/bin/true"]\nsingle_instance = false\n' "$l" "$key"
            fi
        done
    } >"$conf"
    chmod 600 "$conf"
done

{
    printf '[defaults]\nport = 7001\nmaster_file = "%s"\n\n[hosts]\n' "$dir/master.key"
    for i in $(seq 0 $((procs * per - 1))); do
        printf 'h%s = { address = "%s", actions = { open = { master = true } } }\n' "$i" "$(healthy_addr "$i")"
        case $((i % 10)) in
            3) printf 'd%s = { address = "%s", actions = { open = { master = true } } }\n' "$i" "$(addr_of 2 "$i")" ;;
            7) printf 'g%s = { address = "%s", actions = { open = { master = true } } }\n' "$i" "$(addr_of 3 "$i")" ;;
        esac
    done
    printf '\n[groups]\n'
    for n in 1024 $((procs * per)); do
        printf 'healthy-%s = [' "$n"
        for i in $(seq 0 $((n - 1))); do printf '"h%s",' "$i"; done
        printf ']\ndegraded-%s = [' "$n"
        for i in $(seq 0 $((n - 1))); do
            case $((i % 10)) in 3) printf '"d%s",' "$i" ;; 7) printf '"g%s",' "$i" ;; *) printf '"h%s",' "$i" ;; esac
        done
        printf ']\n'
    done
    # The dead and hanging hosts alone: a rack that is down.
    printf 'outage-%s = [' "$(((procs * per + 6) / 10 + (procs * per + 2) / 10))"
    for i in $(seq 0 $((procs * per - 1))); do
        case $((i % 10)) in 3) printf '"d%s",' "$i" ;; 7) printf '"g%s",' "$i" ;; esac
    done
    printf ']\n'
} >"$dir/hosts.toml"

hang_addrs=()
for i in $(seq 0 $((procs * per - 1))); do
    [ $((i % 10)) = 7 ] && hang_addrs+=("$(addr_of 3 "$i"):7001")
done
python3 "$root/benches/fleet_hang.py" "${hang_addrs[@]}" >"$dir/hang.out" 2>&1 &
pids+=($!)

echo "fleet: starting $procs posternd"
for p in $(seq 0 $((procs - 1))); do
    "$posternd" --config "$dir/d$p.toml" 2>"$dir/d$p.log" &
    pids+=($!)
    daemons+=($!)
done
for p in $(seq 0 $((procs - 1))); do
    up=""
    for _ in $(seq 1000); do
        grep -q 'started ' "$dir/d$p.log" 2>/dev/null && { up=1; break; }
        sleep 0.02
    done
    [ -n "$up" ] || { cat "$dir/d$p.log"; die "posternd $p did not start"; }
done
for _ in $(seq 500); do grep -q '^ready' "$dir/hang.out" && break; sleep 0.02; done
grep -q '^ready' "$dir/hang.out" || { cat "$dir/hang.out"; die "the hanging hosts did not start"; }

# CPU seconds used so far by every posternd process (monitor and network
# process) and the actions the monitors have reaped.
server_cpu() {
    local files=() kids=() p c
    for p in "${daemons[@]}"; do
        files+=("/proc/$p/stat")
        kids=()
        # One line without a newline: read fills kids and returns 1.
        read -r -a kids 2>/dev/null <"/proc/$p/task/$p/children"
        for c in "${kids[@]}"; do files+=("/proc/$c/stat"); done
    done
    awk -v hz="$(getconf CLK_TCK)" '{ s += $14 + $15 + $16 + $17 } END { printf "%.2f\n", s / hz }' "${files[@]}" 2>/dev/null
}

# One run: prints "WALL_S PEAK_KIB SUCCEEDED CPU_S SERVER_CPU_S" (CPU: the
# client's user + system time; the servers' during the run).
run_once() {
    local client=$1 group=$2 before after
    shift 2
    before=$(server_cpu)
    /usr/bin/time -f '%e %M %U %S' -o "$dir/time" "$client" trigger "@$group" open \
        --inventory "$dir/hosts.toml" --timeout "$timeout" --json "$@" >"$dir/out" 2>"$dir/err"
    local ok
    ok=$(grep -o '"succeeded":[0-9]*' "$dir/out" | grep -o '[0-9]*$')
    after=$(server_cpu)
    tail -1 "$dir/time" | awk -v ok="${ok:-0}" -v srv="$(echo "$before $after" | awk '{print $2 - $1}')" \
        '{ printf "%s %s %s %.2f %.2f\n", $1, $2, ok, $3 + $4, srv }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "fleet: warm-up run (actions: $actions)"
run_once "$postern" "healthy-$((procs * per))" >/dev/null

printf '\n| client | group | hosts | wall (median) | runs (s) | peak RSS (median) | client CPU (median) | servers CPU (median) | succeeded |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
clients=${FLEET_CLIENTS:-baseline new}
all=$((procs * per))
for group in ${FLEET_GROUPS:-healthy-1024 degraded-1024 healthy-$all degraded-$all outage-$(((all + 6) / 10 + (all + 2) / 10))}; do
    n=${group#*-}
    case $group in
        healthy-*) want=$n ;;
        outage-*) want=0 ;;
        *) want=$((n - (n + 6) / 10 - (n + 2) / 10)) ;;
    esac
    # The clients take turns, run by run, so that both see the same load.
    for which in $clients; do : >"$dir/results-$which"; done
    for k in $(seq "$runs"); do
        for which in $clients; do
            if [ "$which" = baseline ]; then client=$baseline extra=(--parallel 64)
            else client=$postern; read -r -a extra <<<"${FLEET_NEW_ARGS:-}"; fi
            run_once "$client" "$group" "${extra[@]}" >>"$dir/results-$which"
            [ -n "${FLEET_SAVE:-}" ] && cp "$dir/out" "$FLEET_SAVE/$group-$which-$k.json"
        done
    done
    for which in $clients; do
        r=$dir/results-$which
        if [ "$which" = baseline ]; then label="$base_rev, --parallel 64"
        else label="this tree, ${FLEET_NEW_ARGS:-default --parallel}"; fi
        wall=$(awk '{print $1}' "$r" | median)
        rss=$(awk '{print $2}' "$r" | median)
        cpu_s=$(awk '{print $4}' "$r" | median)
        srv_s=$(awk '{print $5}' "$r" | median)
        all=$(awk '{printf "%s%s", sep, $1; sep=" / "}' "$r")
        oks=$(awk '{print $3}' "$r" | sort -u | tr '\n' ' ' | sed 's/ $//')
        verdict=""
        [ "$oks" = "$want" ] || verdict=" (expected $want)"
        printf '| %s | %s | %s | %s s | %s | %.1f MiB | %s s | %s s | %s%s |\n' "$label" "${group%-*}" "$n" \
            "$wall" "$all" "$(echo "$rss" | awk '{print $1 / 1024}')" "$cpu_s" "$srv_s" "$oks" "$verdict"
    done
done
echo
echo "fleet: targets: 4,096 healthy <= 2 s; degraded <= timeout + 1 s = $((timeout + 1)) s"
