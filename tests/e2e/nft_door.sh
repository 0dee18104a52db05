#!/usr/bin/env bash
# conf/examples/nftables-door.toml against real nftables, in a network
# namespace of its own (created here, deleted at the end), with posternd
# and the client run inside it by `ip netns exec`:
#   - two addresses each get their own element of the set, each carrying
#     the kernel's own timeout;
#   - each element is removed by posternd's stop at its own deadline, well
#     before the kernel's timeout;
#   - a closing action (postern close) removes one address's element now;
#   - SIGKILL of posternd, then a restart: an instance still open is
#     re-armed and removed at its deadline; one whose deadline passed while
#     posternd was down is removed at start-up; neither outlives its
#     deadline by more than the restart;
#   - with posternd gone for good, the kernel's timeout removes the element.
# The config is the example's, with a short ttl and kernel timeout, a
# loopback listener, and bind_source off (one host asserts every address
# here). Needs root, nft and ip.
set -u
. "$(dirname "$0")/lib.sh"

require_root "nft_door.sh"
require_tools "nftables iproute2" nft ip
find_binaries
lab_init

NS="postern-door-$$"
ns_cleanup() { ip netns del "$NS" 2>/dev/null; }
on_cleanup ns_cleanup
ip netns add "$NS" || abort "ip netns add $NS"
ip -n "$NS" link set lo up || abort "loopback up in $NS"
in_ns() { ip netns exec "$NS" "$@"; }

EXAMPLE=$E2E_ROOT/conf/examples/nftables-door.toml
# The ruleset is the one the example's comment documents.
awk '/ruleset it expects/ { on = 1; next }
     on && /^#   / { sub(/^#   /, ""); print; seen = 1; next }
     on && seen { exit }' "$EXAMPLE" >"$LAB/ruleset.nft"
in_ns nft -f "$LAB/ruleset.nft" || abort "the example's ruleset loads"
pass "the example's ruleset loads in $NS"

TTL=3
KERNEL=10
"$POSTERN" keygen | write_private "$LAB/door.key"
"$POSTERN" keygen | write_private "$LAB/door.close.key"
mkdir -p "$LAB/state"
sed -e "s|^state_dir = .*|state_dir = \"$LAB/state\"|" \
    -e 's|^address = "0.0.0.0:7001"|address = "127.0.0.1:7001"|' \
    -e "s|/etc/postern/keys/|$LAB/|" \
    -e "s|^ttl = \"10m\"|ttl = \"${TTL}s\"|" \
    -e "s|timeout 11m|timeout ${KERNEL}s|" \
    -e 's/^bind_source = true/bind_source = false/' \
    "$EXAMPLE" | write_private "$LAB/posternd.toml"
for want in "per_address = true" "timeout ${KERNEL}s" "ttl = \"${TTL}s\"" 'closes = "door"'; do
    grep -qF -- "$want" "$LAB/posternd.toml" || abort "test config has $want"
done

# posternd inside the namespace: `ip netns exec` execs it in place, so the
# pid start_posternd records is posternd's own.
printf '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' "$NS" "$POSTERND" >"$LAB/posternd-in-ns"
chmod 755 "$LAB/posternd-in-ns"
REAL_POSTERND=$POSTERND
POSTERND=$LAB/posternd-in-ns
start_posternd "$LAB/posternd.toml" "$LAB/log1" || abort "posternd starts in $NS"

A=192.0.2.10
B=192.0.2.11
C=192.0.2.12
D=192.0.2.13
E=192.0.2.14

client() { in_ns "$POSTERN" "$@" --timeout 5; }
open_for() { client trigger 127.0.0.1:7001 door --key-file "$LAB/door.key" --assert-addr "$1"; }
close_for() { client close 127.0.0.1:7001 door --key-file "$LAB/door.close.key" --assert-addr "$1"; }
elements() { in_ns nft list set inet filter postern_door; }
# has ADDR: the set has an element for ADDR.
has() { elements | grep -qE "(^|[^0-9.])$1 timeout"; }
lacks() { ! has "$1"; }

# --- each address its own element, each with the kernel's timeout ------
t0=$(now_ms)
out=$(open_for "$A")
check "A: the door opens ($out)" grep -q "accepted; door open for 3 s" <<<"$out"
out=$(open_for "$B")
check "B: its own door, not open-for-another-address ($out)" grep -q "accepted; door open for 3 s" <<<"$out"
check "A and B each have their own element" eval "has $A && has $B"
check "each element carries the kernel's timeout (${KERNEL}s)" \
    eval "[ \"\$(elements | grep -oE '$A timeout ${KERNEL}s|$B timeout ${KERNEL}s' | wc -l)\" = 2 ]"
check "the state file records both instances" \
    eval "grep -q 'addr=$A .*per=address' '$LAB/state/gates.state' && grep -q 'addr=$B .*per=address' '$LAB/state/gates.state'"

# --- each expires on time, by posternd's stop ----------------------------
for x in "$A" "$B"; do
    if wait_log "$PD_LOG" "gate door@$x closed (deadline)" 10; then
        took=$(($(now_ms) - t0))
        check "$x: removed at its deadline (${took} ms after opening; ttl ${TTL}s, kernel ${KERNEL}s)" \
            eval "lacks $x && [ $took -ge $((TTL * 1000 - 500)) ] && [ $took -lt $((KERNEL * 1000 - 2000)) ]"
    else
        fail "$x: no close at the deadline"
    fi
done
check "posternd's stop succeeded for each" eval "[ \"\$(grep -c 'gate door@192.0.2.1[01] stop exit=0' '$PD_LOG')\" = 2 ]"

# --- closing early ---------------------------------------------------------
open_for "$A" >/dev/null
open_for "$B" >/dev/null
out=$(close_for "$A")
check "close A: closed ($out)" grep -q "closed; door closed now" <<<"$out"
check "close A: A's element gone at once, B's still there" eval "lacks $A && has $B"
out=$(close_for "$A")
check "close A again: not open ($out)" grep -q "not open; door was not open" <<<"$out"
# The second such line: the first was B's earlier instance.
closed_twice() { [ "$(grep -cF "gate door@$B closed (deadline)" "$PD_LOG")" -ge 2 ]; }
check "B still closes at its own deadline" eval "wait_until 10 closed_twice && lacks $B"

# --- SIGKILL, restart: re-armed, and expired while down ----------------
t1=$(now_ms)
open_for "$C" >/dev/null
kill_posternd KILL
check "C: element left behind by the SIGKILL" has "$C"
start_posternd "$LAB/posternd.toml" "$LAB/log2" || abort "posternd restarts"
up=$(($(now_ms) - t1))
check "C: re-armed at restart" wait_log "$PD_LOG" "gate door@$C re-armed" 5
if wait_log "$PD_LOG" "gate door@$C closed (deadline)" 10; then
    took=$(($(now_ms) - t1))
    # Due at its deadline, or (a restart slower than the ttl) 1 s after
    # posternd is back; a second of slack for the stop itself.
    due=$((TTL * 1000))
    [ $((up + 1000)) -gt "$due" ] && due=$((up + 1000))
    check "C: removed at its deadline after the restart (${took} ms; back after ${up} ms)" \
        eval "lacks $C && [ $took -lt $((due + 1500)) ]"
else
    fail "C: no close after the restart"
fi

open_for "$D" >/dev/null
deadline=$(sed -n "s/.* deadline=\([0-9]*\) addr=$D .*/\1/p" "$LAB/state/gates.state")
kill_posternd KILL
past_deadline() { [ "$(date +%s)" -gt "$deadline" ]; }
if [ -n "$deadline" ] && wait_until $((TTL + 3)) past_deadline; then
    check "D: posternd down past D's deadline, the element is still there" has "$D"
else
    fail "D: its deadline never passed (recorded: ${deadline:-none})"
fi
start_posternd "$LAB/posternd.toml" "$LAB/log3" || abort "posternd restarts again"
check "D: stopped at start-up" \
    wait_log "$PD_LOG" "gate door@$D expired while posternd was down; stopped at start-up" 5
check "D: no element past its deadline once posternd is back" lacks "$D"
check "D: before the kernel's timeout could have done it" \
    eval "[ \$(date +%s) -lt $((deadline + KERNEL - TTL)) ]"
check "no made-up address in any log" eval "! grep -h '0\.0\.0\.0' '$LAB/log1' '$LAB/log2' '$LAB/log3'"

# --- posternd gone for good: the kernel's own timeout -------------------
t2=$(now_ms)
open_for "$E" >/dev/null
kill_posternd KILL
if wait_until $((KERNEL + 5)) lacks "$E"; then
    took=$(($(now_ms) - t2))
    check "E: the kernel removed it on its own timeout (${took} ms; timeout ${KERNEL}s)" \
        eval "[ $took -ge $((KERNEL * 1000 - 1000)) ]"
else
    fail "E: the kernel's timeout did not remove the element"
fi
# The record is still there; a restart stops it, and the stop succeeds
# although the element is already gone.
start_posternd "$LAB/posternd.toml" "$LAB/log4" || abort "posternd restarts a third time"
check "E: stopped at start-up, its stop succeeding without the element" \
    eval "wait_log '$PD_LOG' 'gate door@$E stop exit=0' 5"
POSTERND=$REAL_POSTERND
finish
