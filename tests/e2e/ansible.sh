#!/usr/bin/env bash
# Goal: the Ansible role (deploy/ansible/) deploys posternd as a fleet
# would, checked on this machine with ansible-core from PyPI and a local
# connection:
#   1. the role's Python derivation reproduces tests/vectors/kdf.vectors;
#   2. a first run of deploy/ansible/site.yml installs postern-server from
#      the .deb, writes posternd.toml (checked by posternd --check) and the
#      host's keys (root, 0600, each the key `postern key derive` gives for
#      the master and this host), enables the unit; the master is nowhere
#      on the host nor in Ansible's output;
#   3. posternd, started with the unit's ExecStart= line (systemd is not
#      PID 1 here: tests/e2e/packages.sh does the same), is triggered by the
#      client deriving its key from the master;
#   4. a second run changes nothing (changed=0) and reloads nothing;
#   5. --check --diff: on a host never deployed it installs nothing;
#      unchanged variables show changed=0; a new action
#      shows its diff and changes nothing on disk; the rotation and
#      operator-key shapes render as posternd.toml(5) will read them, with
#      no secret in the output;
#   6. a new action: its key and the config change, the handler reloads
#      posternd (SIGHUP), the new action answers to its derived key;
#      removing it again removes its key file;
#   7. a config posternd --check refuses is never installed, and the
#      running daemon keeps working;
#   8. the fleet master rotated through the role: the successor's key
#      written, the action's key becomes a [[action.key]] table "fleet"
#      with next_key_file and overlap_until, both masters open the door
#      during the window (by=fleet key=old / key=next); after the
#      promotion only the new master opens it;
#   9. cleanup: posternd stopped by PID, the package purged, nothing left
#      under /etc, /usr or /var/lib.
# As root only (it installs packages). Outside CI it skips when not root
# or when a program is missing, and refuses to run where postern-server is
# already installed. /etc/postern and /var/lib/postern left by other tests
# are moved aside for the run and put back afterwards.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

# The version deploy/ansible/requirements.txt pins (.ci/run installs it).
REQUIREMENTS=$E2E_ROOT/deploy/ansible/requirements.txt
ANSIBLE_CORE_VERSION=$(sed -n 's/^ansible-core==//p' "$REQUIREMENTS")

require_root "ansible.sh (installs postern-server)"
require_tools "python3 python3-venv python3-apt dpkg systemd" python3 dpkg systemctl
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing "python3 -m venv does not work; install it with: apt-get install python3-venv"
fi
if ! /usr/bin/python3 -c 'import apt_pkg' 2>/dev/null; then
    missing "ansible's apt module needs python3-apt; install it with: apt-get install python3-apt"
fi
find_binaries
DEBS=${POSTERN_DEBS:-$E2E_ROOT/target/debian}
if ! ls "$DEBS"/postern-server_*.deb >/dev/null 2>&1; then
    require_tools "cargo-deb (cargo install --locked cargo-deb)" cargo-deb
    note "building the packages"
    bash "$E2E_ROOT/pkg/build-debs" >&2 || abort "pkg/build-debs"
fi
SERVER_DEB=$(ls -t "$DEBS"/postern-server_*.deb | head -n 1)
for p in postern-server postern; do
    if dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q installed; then
        missing "$p is already installed here; this test installs and purges postern-server"
    fi
done

lab_init
USER_BEFORE=no
getent passwd _postern >/dev/null && USER_BEFORE=yes
ROOT_ANSIBLE_BEFORE=no
[ -e /root/.ansible ] && ROOT_ANSIBLE_BEFORE=yes
SAVED=()
for d in /etc/postern /var/lib/postern; do
    if [ -e "$d" ]; then
        mkdir -p "$LAB/saved$(dirname "$d")"
        mv "$d" "$LAB/saved$d"
        SAVED+=("$d")
        note "moved $d aside for the run"
    fi
done
INSTALLED=no
restore() {
    if [ "$INSTALLED" = yes ] && ! dpkg_wait --purge postern-server >/dev/null; then
        echo "not ok - cleanup: dpkg --purge postern-server failed; $LAB kept with what was moved aside"
        KEEP_LAB=1 # read by e2e_cleanup (lib.sh) after this hook
        export KEEP_LAB
        return
    fi
    if [ "$USER_BEFORE" = no ] && getent passwd _postern >/dev/null; then
        userdel _postern 2>/dev/null
        getent group _postern >/dev/null && groupdel _postern 2>/dev/null
    fi
    [ "$ROOT_ANSIBLE_BEFORE" = no ] && rm -rf /root/.ansible
    local d
    for d in "${SAVED[@]}"; do
        rm -rf "$d"
        mv "$LAB/saved$d" "$d"
    done
}
on_cleanup restore

# What is on the machine before: everything under /etc, /usr and /var/lib
# but dpkg's and apt's own databases and caches.
snapshot() {
    find /etc /usr /var/lib -xdev \
        \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/ucf \
        -o -path /var/lib/man-db -o -path /var/cache \) -prune -o -print 2>/dev/null |
        LC_ALL=C sort
}
snapshot >"$LAB/before"

# --- ansible-core from PyPI, in a venv in the target directory ------------
# .ci/run makes it; outside CI this does, once.
VENV=${CARGO_TARGET_DIR:-$E2E_ROOT/target}/ansible-venv
if [ "$("$VENV/bin/ansible-playbook" --version 2>/dev/null | sed -n 's/.*\[core \([^]]*\)\].*/\1/p')" != "$ANSIBLE_CORE_VERSION" ]; then
    note "installing ansible-core $ANSIBLE_CORE_VERSION into $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >"$LAB/venv.log" 2>&1 ||
        ! "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            -r "$REQUIREMENTS" >>"$LAB/venv.log" 2>&1; then
        sed 's/^/#   /' "$LAB/venv.log"
        missing "pip install -r deploy/ansible/requirements.txt failed"
    fi
fi
PLAYBOOK=$VENV/bin/ansible-playbook
version=$("$PLAYBOOK" --version 2>&1)
note "${version%%$'\n'*}"
# Ansible's own files in the lab: nothing in root's home, nothing kept.
export ANSIBLE_CONFIG=$E2E_ROOT/deploy/ansible/ansible.cfg
export ANSIBLE_HOME=$LAB/ansible-home
export ANSIBLE_LOCAL_TEMP=$LAB/ansible-tmp
export ANSIBLE_REMOTE_TMP=$LAB/ansible-remote-tmp
export ANSIBLE_NOCOLOR=1
export ANSIBLE_FORCE_COLOR=0
export ANSIBLE_STDOUT_CALLBACK=default
export PYTHONDONTWRITEBYTECODE=1

# --- 1. the role's derivation against the vectors --------------------------
if "$VENV/bin/python3" - "$E2E_ROOT/deploy/ansible/roles/posternd/filter_plugins/postern.py" \
    "$E2E_ROOT/tests/vectors/kdf.vectors" >"$LAB/vectors.out" 2>&1 <<'EOF'; then
import importlib.util, sys
spec = importlib.util.spec_from_file_location("postern_filters", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
cases, c = [], {}
for line in open(sys.argv[2], encoding="utf-8"):
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        continue
    k, _, v = line.partition(" = ")
    if k == "case" and c:
        cases.append(c)
        c = {}
    c[k] = v
cases.append(c)
n = 0
for c in cases:
    if "master" not in c:
        continue
    got = m.fleet_key(c["master"], c["host"], c["action"])
    if got != c["fleet_key"]:
        sys.exit("case %s: got %s, want %s" % (c["case"], got, c["fleet_key"]))
    n += 1
if n == 0:
    sys.exit("no fleet case in the vectors")
print(n)
EOF
    pass "the role's fleet derivation reproduces all $(cat "$LAB/vectors.out") fleet cases of kdf.vectors"
else
    fail "the role's fleet derivation against kdf.vectors: $(tr '\n' ' ' <"$LAB/vectors.out")"
fi
# The variables the filters refuse, each with a message naming the
# variable and never the secret; TOML values that round-trip.
if "$VENV/bin/python3" - "$E2E_ROOT/deploy/ansible/roles/posternd/filter_plugins/postern.py" \
    >"$LAB/filters.out" 2>&1 <<'EOF'; then
import base64, importlib.util, sys, tomllib
spec = importlib.util.spec_from_file_location("postern_filters", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
good = base64.b64encode(bytes(range(32))).decode()
act = [{"name": "sshd", "run": ["/bin/true"]}]
op = lambda **k: m.key_layout([{"name": "a", "keys": [dict(name="alice", **k)]}], "/k")
refused = [
    ("no master", lambda: m.keyring(act, "h", "/k", ""), "postern_fleet_master is not set"),
    ("master not base64", lambda: m.fleet_key("s3cr3t!!" + good, "h", "a"), "the fleet master is not a base64 key"),
    ("master of 31 bytes", lambda: m.fleet_key(base64.b64encode(b"x" * 31).decode(), "h", "a"), "of 32 bytes"),
    ("master with bad trailing bits", lambda: m.fleet_key(good[:-2] + "B=", "h", "a"), "not a base64 key"),
    ("next master without overlap", lambda: m.key_layout(act, "/k", good, None), "set both or neither"),
    ("overlap not UTC", lambda: m.key_layout(act, "/k", good, "2026-12-15"),
     "postern_overlap_until: overlap_until must be a UTC time"),
    ("action with key_file", lambda: m.key_layout([{"name": "a", "key_file": "x"}], "/k"),
     "posternd_actions[1] (a) sets key_file"),
    ("duplicate action", lambda: m.key_layout(act + act, "/k"), "used twice"),
    ("bad action name", lambda: m.key_layout([{"name": "a b"}], "/k"), "posternd_actions[1].name"),
    ("relative keys dir", lambda: m.key_layout(act, "keys"), "posternd_keys_dir must be an absolute path"),
    ("operator without secret", lambda: op(), "exactly one of master or key"),
    ("operator with master and key", lambda: op(master=good, key=good), "exactly one of master or key"),
    ("operator successor without overlap", lambda: op(key=good, next_key=good), "needs overlap_until"),
    ("operator overlap without successor", lambda: op(key=good, overlap_until="2026-12-15T00:00:00Z"),
     "overlap_until needs a successor"),
    ("operator unknown key", lambda: op(key=good, keyfile="x"), "unknown key keyfile"),
    ("operator key not base64",
     lambda: m.keyring([{"name": "a", "keys": [{"name": "alice", "key": "s3cr3t"}]}], "h", "/k", good),
     "keys[1] (alice).key is not a base64 key"),
    ("a float option", lambda: m.toml_table({"ttl": 1.5}), "must be a string, an integer"),
]
for what, f, want in refused:
    try:
        f()
    except m.AnsibleFilterError as e:
        if want not in str(e) or "s3cr3t" in str(e) or good in str(e):
            sys.exit("%s: message %r" % (what, str(e)))
    else:
        sys.exit("%s: accepted" % what)
for v in ["plain", 'quote " back \\ nl \n tab \t cr \r', "del \x7f nul \x00 esc \x1b",
          "unicode \u00e9\U0001f600", 7, True, ["a", 'b"']]:
    if tomllib.loads("x = " + m.toml_value(v))["x"] != v:
        sys.exit("toml_value(%r) = %s" % (v, m.toml_value(v)))
print(len(refused))
EOF
    pass "the filters refuse $(cat "$LAB/filters.out") malformed variables, naming them and no secret; TOML values round-trip"
else
    fail "the filters: $(tr '\n' ' ' <"$LAB/filters.out")"
fi

# --- the controller's files: master, inventory, variables ------------------
HOST=web-17.example
"$POSTERN" keygen | write_private "$LAB/fleet.master"
"$POSTERN" keygen | write_private "$LAB/fleet.next.master"
"$POSTERN" keygen | write_private "$LAB/alice.master"
MASTER=$(tr -d '\n' <"$LAB/fleet.master")
NEXT_MASTER=$(tr -d '\n' <"$LAB/fleet.next.master")
BOB_KEY=$("$POSTERN" keygen)
BOB_NEXT_KEY=$("$POSTERN" keygen)
PORT=$(free_port)
cat >"$LAB/hosts.yml" <<EOF
posternd:
  hosts:
    $HOST:
      ansible_connection: local
      ansible_host: 127.0.0.1
      ansible_python_interpreter: /usr/bin/python3
EOF
# base.yml: the variables of every run; later files add to them.
cat >"$LAB/base.yml" <<EOF
postern_fleet_master: "{{ lookup('ansible.builtin.file', '$LAB/fleet.master') }}"
posternd_package_deb: "$SERVER_DEB"
posternd_listen:
  - address: "127.0.0.1:$PORT"
posternd_limits:
  rate_burst: 20
  rate_per_minute: 120
posternd_actions:
  - name: hello
    run: ["/bin/sh", "-c", "echo \"deployed hello for \$1\" >> deployed.log", "sh", "{addr}"]
    cooldown: 1s
EOF
cat >"$LAB/second.yml" <<EOF
posternd_actions:
  - name: hello
    run: ["/bin/sh", "-c", "echo \"deployed hello for \$1\" >> deployed.log", "sh", "{addr}"]
    cooldown: 1s
  - name: second
    run: ["/bin/sh", "-c", "echo \"second for \$1\" >> deployed.log", "sh", "{addr}"]
EOF
cat >"$LAB/rotation.yml" <<EOF
postern_fleet_next_master: "{{ lookup('ansible.builtin.file', '$LAB/fleet.next.master') }}"
postern_overlap_until: "2026-12-15T00:00:00Z"
posternd_actions:
  - name: hello
    run: ["/bin/sh", "-c", "echo \"deployed hello for \$1\" >> deployed.log", "sh", "{addr}"]
    cooldown: 1s
  - name: console
    run: ["/bin/true"]
    keys:
      - name: alice
        master: "{{ lookup('ansible.builtin.file', '$LAB/alice.master') }}"
      - name: bob
        key: "$BOB_KEY"
        next_key: "$BOB_NEXT_KEY"
        overlap_until: "2026-12-01T00:00:00Z"
EOF
cat >"$LAB/invalid.yml" <<EOF
posternd_actions:
  - name: hello
    run: ["/bin/sh", "-c", "echo \"deployed hello for \$1\" >> deployed.log", "sh", "{addr}"]
    cooldown: forever
EOF

RUN=0
# play LOG ARGS...: ansible-playbook on site.yml with the lab inventory and
# base.yml (then ARGS); output in LOG; sets PLAY_RC, RECAP (the host's
# recap line), and CHANGED and FAILED from it.
play() {
    local log=$1 start
    shift
    RUN=$((RUN + 1))
    start=$(now_ms)
    (cd "$E2E_ROOT/deploy/ansible" &&
        "$PLAYBOOK" -i "$LAB/hosts.yml" site.yml -e "@$LAB/base.yml" "$@") >"$log" 2>&1
    PLAY_RC=$?
    RECAP=$(grep -E "^$HOST +: ok=" "$log" | tail -n 1 | tr -s ' ')
    CHANGED=$(sed -n 's/.* changed=\([0-9]*\).*/\1/p' <<<"$RECAP")
    FAILED=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$RECAP")
    note "run $RUN ($*): exit $PLAY_RC in $(($(now_ms) - start)) ms, $RECAP"
}
show() { sed 's/^/#   /' "$1"; }
# no_secret FILE: FILE names none of the masters nor the host's keys.
no_secret() {
    local s
    for s in "$MASTER" "$NEXT_MASTER" "$(tr -d '\n' <"$LAB/alice.master")" $(cat /etc/postern/keys/* 2>/dev/null); do
        grep -qF -- "$s" "$1" && return 1
    done
    return 0
}
derived() { "$POSTERN" key derive --master "$1" --host "$HOST" --action "$2"; }
# owner:group mode path
expect_stat() {
    local want="$1 $2" path=$3 got
    got=$(stat -c '%U:%G %a' "$path" 2>/dev/null)
    check "$path is $want (got ${got:-nothing})" [ "$got" = "$want" ]
}
etc_sum() { (cd /etc/postern && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum); }

# --- 2. the first run ------------------------------------------------------
INSTALLED=yes
play "$LAB/run0.log" -e '{"postern_fleet_master": ""}'
check "a run without the master fails before any change ($RECAP)" bash -c \
    '[ "$1" != 0 ] && [ "$2" = 0 ] && grep -q "postern_fleet_master is not set" "$3"' \
    _ "$PLAY_RC" "${CHANGED:-1}" "$LAB/run0.log"
play "$LAB/run0b.log" -e '{"postern_fleet_master": "s3cr3t-not-a-key"}'
check "a run with a malformed master fails before any change, naming it and not its value ($RECAP)" bash -c \
    '[ "$1" != 0 ] && [ "$2" = 0 ] && grep -q "postern_fleet_master (the fleet master) is not a base64 key" "$3" &&
     ! grep -q s3cr3t "$3"' _ "$PLAY_RC" "${CHANGED:-1}" "$LAB/run0b.log"
check "postern-server is not installed yet" bash -c '! dpkg-query -W -f "\${Status}" postern-server 2>/dev/null | grep -q " installed"'
play "$LAB/check0.log" --check --diff
check "--check --diff on a host never deployed shows the package and the key directory ($RECAP)" bash -c \
    '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" = 2 ] && grep -q "postern-server" "$4" && grep -qF "/etc/postern/keys" "$4"' \
    _ "$PLAY_RC" "${FAILED:-1}" "${CHANGED:-0}" "$LAB/check0.log"
[ "$PLAY_RC" = 0 ] || show "$LAB/check0.log"
check "and installs nothing" bash -c \
    '! dpkg-query -W -f "\${Status}" postern-server 2>/dev/null | grep -q " installed" && [ ! -e /etc/postern ]'
play "$LAB/run1.log"
if [ "$PLAY_RC" = 0 ] && [ "${FAILED:-1}" = 0 ]; then
    pass "first run: $RECAP"
else
    show "$LAB/run1.log"
    abort "first run (exit $PLAY_RC)"
fi
check "the first run changed something (changed=$CHANGED)" [ "${CHANGED:-0}" -gt 0 ]
check "postern-server is installed" bash -c \
    '[ "$(dpkg-query -W -f "\${Status}" postern-server 2>/dev/null)" = "install ok installed" ]'
expect_stat root:root 700 /etc/postern
expect_stat root:root 700 /etc/postern/keys
expect_stat root:root 600 /etc/postern/posternd.toml
expect_stat root:root 600 /etc/postern/keys/hello.key
check "the keys directory holds only hello.key (it holds: $(ls -A /etc/postern/keys | tr '\n' ' '))" \
    [ "$(ls -A /etc/postern/keys)" = hello.key ]
check "hello.key is postern key derive's key for $HOST and hello" \
    [ "$(cat /etc/postern/keys/hello.key)" = "$(derived "$LAB/fleet.master" hello)" ]
check "posternd.toml names the key and the listener" bash -c \
    'grep -qx "key_file = \"/etc/postern/keys/hello.key\"" "$1" && grep -qx "address = \"127.0.0.1:$2\"" "$1" &&
     grep -qx "rate_burst = 20" "$1"' _ /etc/postern/posternd.toml "$PORT"
check "posternd --check passes on the deployed config" \
    /usr/sbin/posternd --config /etc/postern/posternd.toml --check
check "the master is nowhere under /etc/postern or /var/lib/postern" bash -c \
    '! grep -rqF -- "$1" /etc/postern /var/lib/postern' _ "$MASTER"
check "Ansible's output holds no master and no key" no_secret "$LAB/run1.log"
check "the unit is enabled: $(systemctl is-enabled posternd.service 2>&1)" \
    bash -c '[ "$(systemctl is-enabled posternd.service 2>/dev/null)" = enabled ]'

# --- 3. posternd as the unit starts it, triggered from the master ----------
EXEC=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/posternd.service)
read -ra argv <<<"$EXEC"
note "ExecStart: ${argv[*]}"
PD_LOG=$LAB/posternd.log
: >"$PD_LOG"
"${argv[@]}" </dev/null >/dev/null 2>"$PD_LOG" &
PD_PID=$!
track "$PD_PID"
if wait_log "$PD_LOG" " started " 10; then
    pass "posternd started by its ExecStart line"
else
    show "$PD_LOG"
    abort "posternd started by its ExecStart line"
fi
# trigger ACTION [MASTER]: the client, its key derived from the fleet
# master (default $LAB/fleet.master) for this host; output in
# $LAB/trigger.out.
trigger() {
    "$POSTERN" trigger "127.0.0.1:$PORT" "$1" --master "${2:-$LAB/fleet.master}" \
        --host-name "$HOST" --timeout 5 --ack-timeout 10 >"$LAB/trigger.out" 2>&1
}
trigger hello
rc=$?
check "the client triggers hello with the key the master derives (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]
check "posternd logs ok action=hello" wait_log "$PD_LOG" "action=hello addr=127.0.0.1 status=started" 5
check "the action ran" wait_log /var/lib/postern/deployed.log "deployed hello for 127.0.0.1" 5
# The client's inventory from the Ansible inventory, then a trigger by the
# host's name and one of its group, keys derived from master_file.
(cd "$E2E_ROOT/deploy/ansible" &&
    "$VENV/bin/ansible-playbook" -i "$LAB/hosts.yml" client-inventory.yml -e "@$LAB/base.yml" \
        -e "postern_client_inventory=$LAB/client/hosts.toml" -e "postern_client_master_file=$LAB/fleet.master") \
    >"$LAB/client-inventory.log" 2>&1
rc=$?
check "client-inventory.yml writes the client's hosts.toml (exit $rc)" [ "$rc" = 0 ]
[ "$rc" = 0 ] || show "$LAB/client-inventory.log"
show "$LAB/client/hosts.toml"
expect_stat root:root 600 "$LAB/client/hosts.toml"
# hello's cooldown (1 s) runs from its last start: the log's file time.
after_cooldown() { wait_until 5 bash -c '[ $(($(date +%s) - $(stat -c %Y /var/lib/postern/deployed.log))) -ge 2 ]'; }
after_cooldown
"$POSTERN" trigger "$HOST" hello --inventory "$LAB/client/hosts.toml" --timeout 5 --ack-timeout 10 >"$LAB/trigger.out" 2>&1
rc=$?
check "postern trigger $HOST hello, from that inventory (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]
after_cooldown
"$POSTERN" trigger @posternd hello --inventory "$LAB/client/hosts.toml" --timeout 5 --ack-timeout 10 >"$LAB/trigger.out" 2>&1
rc=$?
check "postern trigger @posternd hello, the Ansible group (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]
check "posternd logs three starts of hello" wait_until 5 bash -c \
    '[ "$(grep -c "action=hello addr=127.0.0.1 status=started" "$1")" = 3 ]' _ "$PD_LOG"
RELOAD_ARGS=(-e "{\"posternd_reload_command\": [\"/bin/kill\", \"-HUP\", \"$PD_PID\"]}")

# --- 4. idempotence ----------------------------------------------------------
before=$(etc_sum)
play "$LAB/run2.log" "${RELOAD_ARGS[@]}"
if [ "$PLAY_RC" = 0 ] && [ "${FAILED:-1}" = 0 ] && [ "$CHANGED" = 0 ]; then
    pass "second run changes nothing: $RECAP"
else
    show "$LAB/run2.log"
    fail "second run: exit $PLAY_RC, $RECAP"
fi
check "the second run left /etc/postern as it was" [ "$(etc_sum)" = "$before" ]
check "the second run reloaded nothing" bash -c '! grep -q "reloaded " "$1"' _ "$PD_LOG"

# --- 5. --check --diff ------------------------------------------------------
play "$LAB/check1.log" --check --diff "${RELOAD_ARGS[@]}"
check "--check --diff with the same variables: changed=0 ($RECAP)" \
    bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" = 0 ]' _ "$PLAY_RC" "$FAILED" "$CHANGED"
play "$LAB/check2.log" --check --diff -e "@$LAB/second.yml" "${RELOAD_ARGS[@]}"
check "--check --diff with a new action reports changes ($RECAP)" \
    bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" -gt 0 ]' _ "$PLAY_RC" "$FAILED" "${CHANGED:-0}"
check "its diff shows the new action" grep -qx '+name = "second"' "$LAB/check2.log"
check "--check changed nothing on disk" [ "$(etc_sum)" = "$before" ]
check "--check reloaded nothing" bash -c '! grep -q "reloaded " "$1"' _ "$PD_LOG"
play "$LAB/check3.log" --check --diff -e "@$LAB/rotation.yml" "${RELOAD_ARGS[@]}"
check "--check --diff of a rotation and operator keys runs ($RECAP)" \
    bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" -gt 0 ]' _ "$PLAY_RC" "$FAILED" "${CHANGED:-0}"
sed -n '/^+\[\[action\]\]$/,$p' "$LAB/check3.log" | sed -n '/^[+ ]/p' >"$LAB/rotation.diff"
show "$LAB/rotation.diff"
check "a fleet rotation renders key_file, next_key_file and overlap_until" bash -c '
    grep -qx "+next_key_file = \"/etc/postern/keys/hello.next.key\"" "$1" &&
    grep -qx "+overlap_until = \"2026-12-15T00:00:00Z\"" "$1"' _ "$LAB/check3.log"
check "operator keys render as [[action.key]] tables, with a successor for bob" bash -c '
    tr "\n" "|" <"$1" | grep -qF "+[[action.key]]|+name = \"alice\"|+key_file = \"/etc/postern/keys/console.alice.key\"|+|+[[action.key]]|+name = \"bob\"|+key_file = \"/etc/postern/keys/console.bob.key\"|+next_key_file = \"/etc/postern/keys/console.bob.next.key\"|+overlap_until = \"2026-12-01T00:00:00Z\"|"' \
    _ "$LAB/rotation.diff"
check "the rotation's output holds no master and no key" bash -c '
    for s in "${@:2}"; do grep -qF -- "$s" "$1" && exit 1; done; exit 0' _ "$LAB/check3.log" \
    "$NEXT_MASTER" "$(derived "$LAB/fleet.next.master" hello)" "$(tr -d '\n' <"$LAB/alice.master")" \
    "$(derived "$LAB/alice.master" console)" "$BOB_KEY" "$BOB_NEXT_KEY"
check "--check wrote no successor key" [ ! -e /etc/postern/keys/hello.next.key ]

# --- 6. a change reloads; a removal removes its key -------------------------
play "$LAB/run3.log" -e "@$LAB/second.yml" "${RELOAD_ARGS[@]}"
check "a run with a new action: $RECAP" bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" -ge 3 ]' \
    _ "$PLAY_RC" "${FAILED:-1}" "${CHANGED:-0}"
check "the handler reloaded posternd (SIGHUP)" wait_log "$PD_LOG" "reloaded /etc/postern/posternd.toml" 10
expect_stat root:root 600 /etc/postern/keys/second.key
check "second.key is the master's key for $HOST and second" \
    [ "$(cat /etc/postern/keys/second.key)" = "$(derived "$LAB/fleet.master" second)" ]
trigger second
rc=$?
check "the reloaded posternd runs the new action for its derived key (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]
check "the new action ran" wait_log /var/lib/postern/deployed.log "second for 127.0.0.1" 5
reloads=$(grep -c "reloaded " "$PD_LOG")
play "$LAB/run4.log" "${RELOAD_ARGS[@]}"
check "a run without the action: $RECAP" bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" -ge 2 ]' \
    _ "$PLAY_RC" "${FAILED:-1}" "${CHANGED:-0}"
check "its key file is removed (keys: $(ls -A /etc/postern/keys | tr '\n' ' '))" [ ! -e /etc/postern/keys/second.key ]
check "posternd reloaded again" wait_until 10 bash -c '[ "$(grep -c "reloaded " "$1")" -gt "$2" ]' _ "$PD_LOG" "$reloads"
trigger second
rc=$?
check "the removed action no longer answers (exit $rc)" [ "$rc" != 0 ]
play "$LAB/run5.log" "${RELOAD_ARGS[@]}"
check "and the next run changes nothing: $RECAP" bash -c '[ "$1" = 0 ] && [ "$2" = 0 ]' _ "$PLAY_RC" "${CHANGED:-1}"

# --- 7. a config posternd refuses is not installed --------------------------
before=$(etc_sum)
reloads=$(grep -c "reloaded " "$PD_LOG")
play "$LAB/run6.log" -e "@$LAB/invalid.yml" "${RELOAD_ARGS[@]}"
check "a run with cooldown = \"forever\" fails ($RECAP)" bash -c '[ "$1" != 0 ] && [ "${2:-0}" -gt 0 ]' _ "$PLAY_RC" "$FAILED"
check "it fails in validate, with posternd's message naming the key" bash -c \
    'grep -q "failed to validate" "$1" && grep -q "action\\[1\\]\\.cooldown" "$1"' _ "$LAB/run6.log"
check "the refused config is not installed" [ "$(etc_sum)" = "$before" ]
check "nothing was reloaded" [ "$(grep -c "reloaded " "$PD_LOG")" = "$reloads" ]
after_cooldown
trigger hello
rc=$?
check "posternd still answers hello (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]

# --- 8. rotating the fleet master through the role --------------------------
# Step 3 of deploy/ansible/README.md's rotation: the successor's key is
# written, the action's key becomes a [[action.key]] table "fleet" with
# next_key_file and overlap_until, posternd reloads, and both masters open
# hello during the window (the ok line says which key matched). Step 6
# (promotion): after it only the new master opens hello.
WINDOW_END=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
reloads=$(grep -c "reloaded " "$PD_LOG")
play "$LAB/rotate.log" -e "{\"postern_fleet_next_master\": \"{{ lookup('ansible.builtin.file', '$LAB/fleet.next.master') }}\", \"postern_overlap_until\": \"$WINDOW_END\"}" "${RELOAD_ARGS[@]}"
check "the rotation's run succeeds ($RECAP)" bash -c '[ "$1" = 0 ] && [ "$2" = 0 ]' _ "$PLAY_RC" "${FAILED:-1}"
check "the rotation's run wrote hello.next.key, the next master's key for $HOST" bash -c \
    '[ "$(cat /etc/postern/keys/hello.next.key 2>/dev/null)" = "$1" ]' _ "$(derived "$LAB/fleet.next.master" hello)"
expect_stat root:root 600 /etc/postern/keys/hello.next.key
check "the rotation's output holds no master and no key" no_secret "$LAB/rotate.log"
check "posternd.toml names the successor and the window" bash -c \
    'grep -qx "next_key_file = \"/etc/postern/keys/hello.next.key\"" "$1" && grep -qx "overlap_until = \"$2\"" "$1"' \
    _ /etc/postern/posternd.toml "$WINDOW_END"
check "posternd reloaded" wait_until 10 bash -c '[ "$(grep -c "reloaded " "$1")" -gt "$2" ]' _ "$PD_LOG" "$reloads"
after_cooldown
trigger hello
rc=$?
check "during the window the old master opens hello (exit $rc)" [ "$rc" = 0 ]
check "the ok line names the old key" wait_until 5 grep -qE -- "action=hello .*status=started by=fleet key=old" "$PD_LOG"
after_cooldown
trigger hello "$LAB/fleet.next.master"
rc=$?
check "during the window the new master opens hello (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]
check "the ok line names the successor" wait_until 5 grep -qE -- "action=hello .*status=started by=fleet key=next" "$PD_LOG"
# Promotion: the next master becomes the master; no successor, no window.
reloads=$(grep -c "reloaded " "$PD_LOG")
play "$LAB/promote.log" -e "{\"postern_fleet_master\": \"{{ lookup('ansible.builtin.file', '$LAB/fleet.next.master') }}\"}" "${RELOAD_ARGS[@]}"
check "the promotion's run: $RECAP" bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && [ "$3" -ge 2 ]' \
    _ "$PLAY_RC" "${FAILED:-1}" "${CHANGED:-0}"
check "hello.key now holds the new master's key" \
    [ "$(cat /etc/postern/keys/hello.key)" = "$(derived "$LAB/fleet.next.master" hello)" ]
check "hello.next.key is gone (keys: $(ls -A /etc/postern/keys | tr '\n' ' '))" [ ! -e /etc/postern/keys/hello.next.key ]
check "the config names no successor" bash -c '! grep -q "next_key_file\|overlap_until" /etc/postern/posternd.toml'
check "posternd reloaded" wait_until 10 bash -c '[ "$(grep -c "reloaded " "$1")" -gt "$2" ]' _ "$PD_LOG" "$reloads"
after_cooldown
trigger hello "$LAB/fleet.next.master"
rc=$?
check "the new master opens hello (exit $rc): $(tr '\n' ' ' <"$LAB/trigger.out")" [ "$rc" = 0 ]
fails=$(grep -c "reason=bad-mac" "$PD_LOG")
after_cooldown
trigger hello
rc=$?
check "the old master opens nothing any more (exit $rc)" [ "$rc" != 0 ]
check "posternd logs the old master's try as bad-mac" \
    wait_until 5 bash -c '[ "$(grep -c "reason=bad-mac" "$1")" -gt "$2" ]' _ "$PD_LOG" "$fails"
play "$LAB/promote2.log" -e "{\"postern_fleet_master\": \"{{ lookup('ansible.builtin.file', '$LAB/fleet.next.master') }}\"}" "${RELOAD_ARGS[@]}"
check "after the promotion a run changes nothing: $RECAP" bash -c '[ "$1" = 0 ] && [ "$2" = 0 ]' _ "$PLAY_RC" "${CHANGED:-1}"

# --- 9. stop, purge ----------------------------------------------------------
kill -TERM "$PD_PID"
check "posternd stops on SIGTERM" wait_gone "$PD_PID" 10
wait "$PD_PID" 2>/dev/null
purge() { dpkg_wait --purge postern-server >"$LAB/purge.log"; }
check "dpkg --purge postern-server" purge
INSTALLED=no
check "purge removes /etc/postern and /var/lib/postern" bash -c '[ ! -e /etc/postern ] && [ ! -e /var/lib/postern ]'
if [ "$USER_BEFORE" = no ]; then
    userdel _postern 2>/dev/null
    getent group _postern >/dev/null && groupdel _postern 2>/dev/null
fi
snapshot >"$LAB/after"
LC_ALL=C comm -13 "$LAB/before" "$LAB/after" >"$LAB/added"
LC_ALL=C comm -23 "$LAB/before" "$LAB/after" >"$LAB/removed"
check "nothing is left behind: $(tr '\n' ' ' <"$LAB/added")" [ ! -s "$LAB/added" ]
check "nothing that was there is gone: $(tr '\n' ' ' <"$LAB/removed")" [ ! -s "$LAB/removed" ]
check "nothing in root's home" bash -c '[ "$1" = yes ] || [ ! -e /root/.ansible ]' _ "$ROOT_ANSIBLE_BEFORE"
finish
