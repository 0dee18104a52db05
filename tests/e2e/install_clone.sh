#!/usr/bin/env bash
# Goal: the README's "From a clone, with cargo" commands work word for
# word, as root in the repository: they are read from the README and run
# one by one, then posternd init, posternd as the installed unit's
# ExecStart= line starts it, and the trigger command init printed.
# Two differences from an operator's machine, both said here: init gets
# --listen 127.0.0.1:PORT (a free loopback port instead of 0.0.0.0:7001),
# and without systemd as PID 1 `systemctl daemon-reload` cannot run and
# posternd is started by its ExecStart= line instead of systemctl.
# Afterwards everything the commands made is removed again, and what was
# there before (/etc/postern, /var/lib/postern, cargo's /usr/local
# records) is put back.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

require_root "install_clone.sh (installs into /usr/local)"
require_tools "cargo (rustup), systemd" cargo systemd-sysusers
for f in /usr/local/bin/posternd /usr/local/bin/postern /etc/systemd/system/posternd.service; do
    [ -e "$f" ] && missing "$f exists here; this test installs and removes it"
done
if getent passwd _postern >/dev/null; then
    missing "the _postern user exists here; this test creates and removes it"
fi

lab_init
SAVED=()
for d in /etc/postern /var/lib/postern /usr/local/.crates.toml /usr/local/.crates2.json; do
    if [ -e "$d" ]; then
        mkdir -p "$LAB/saved$(dirname "$d")"
        cp -a "$d" "$LAB/saved$d"
        SAVED+=("$d")
        # The commands must find no config of someone else's.
        case $d in /etc/postern | /var/lib/postern) rm -rf "$d" ;; esac
    fi
done
restore() {
    rm -f /usr/local/bin/posternd /usr/local/bin/postern /etc/systemd/system/posternd.service
    rm -rf /etc/postern /var/lib/postern /usr/local/.crates.toml /usr/local/.crates2.json
    if getent passwd _postern >/dev/null; then
        userdel _postern 2>/dev/null
    fi
    getent group _postern >/dev/null && groupdel _postern 2>/dev/null
    local d
    for d in "${SAVED[@]}"; do
        rm -rf "$d"
        cp -a "$LAB/saved$d" "$d"
    done
}
on_cleanup restore

# The README's block, as written.
sed -n '/^### From a clone, with cargo$/,/^### \|^## /p' "$E2E_ROOT/README.md" |
    sed -n '/^```sh$/,/^```$/p' | sed '1d;$d' >"$LAB/commands"
check "the README has the clone commands" [ -s "$LAB/commands" ]
cd "$E2E_ROOT" || abort "cd $E2E_ROOT"
while IFS= read -r line; do
    [ -n "$line" ] || continue
    if [ "$line" = "systemctl daemon-reload" ] && [ ! -d /run/systemd/system ]; then
        note "not run (systemd is not PID 1 here): $line"
        continue
    fi
    if bash -c "$line" >"$LAB/out" 2>&1; then
        pass "README: $line"
    else
        sed 's/^/#   /' "$LAB/out" | tail -n 20
        abort "README: $line"
    fi
done <"$LAB/commands"
cd / || abort "cd /"

check "/usr/local/bin/posternd is installed" [ -x /usr/local/bin/posternd ]
check "/usr/local/bin/postern is installed" [ -x /usr/local/bin/postern ]
check "the _postern user exists" bash -c 'getent passwd _postern >/dev/null'
check "the unit runs /usr/local/bin/posternd" \
    grep -q '^ExecStart=/usr/local/bin/posternd ' /etc/systemd/system/posternd.service
if (cd / && systemd-analyze verify /etc/systemd/system/posternd.service) >"$LAB/verify" 2>&1; then
    pass "systemd-analyze verify: the installed unit"
else
    # Its Documentation= names man pages that this install path leaves in docs/man/.
    if grep -v "man posternd" "$LAB/verify" | grep -q .; then
        fail "systemd-analyze verify: $(tr '\n' ' ' <"$LAB/verify")"
    else
        pass "systemd-analyze verify: the installed unit (only its man: links are not installed)"
    fi
fi

PORT=$(free_port)
/usr/local/bin/posternd init --listen "127.0.0.1:$PORT" >"$LAB/init.out" 2>&1 || {
    sed 's/^/#   /' "$LAB/init.out"
    abort "posternd init"
}
pass "posternd init"
check "init's config runs the network process as _postern" grep -qx 'user = "_postern"' /etc/postern/posternd.toml
read -ra argv <<<"$(sed -n 's/^ExecStart=//p' /etc/systemd/system/posternd.service)"
PD_LOG=$LAB/posternd.log
"${argv[@]}" </dev/null >/dev/null 2>"$PD_LOG" &
PD_PID=$!
track "$PD_PID"
if wait_log "$PD_LOG" " started " 10; then
    pass "posternd started by the unit's ExecStart line"
else
    sed 's/^/#   posternd: /' "$PD_LOG"
    abort "posternd started by the unit's ExecStart line"
fi
TRIGGER=$(grep -m1 "^  postern trigger 127.0.0.1:$PORT hello " "$LAB/init.out")
read -ra cmd <<<"$TRIGGER"
out=$(PATH=/usr/local/bin:/usr/bin:/bin "${cmd[@]}" 2>&1)
check "the printed command triggers it: $out" [ $? = 0 ]
check "the action ran" wait_log /var/lib/postern/hello.log "hello triggered for 127.0.0.1" 5
kill -TERM "$PD_PID"
check "posternd stops on SIGTERM" wait_gone "$PD_PID" 10
wait "$PD_PID" 2>/dev/null
finish
