#!/usr/bin/env bash
# Goal: the Debian packages install, work and purge as an operator would
# see it, checked on the installed files only:
#   1. dpkg -i postern-server and postern (built by pkg/build-debs, lintian
#      clean);
#   2. the _postern user, the files, their owners and modes, the conffiles
#      (/etc/postern/posternd.toml among them, with no key);
#   3. posternd refuses to start before init; posternd init writes only the
#      key next to the packaged config; posternd --check on it;
#   4. systemd-analyze verify on the installed units, and
#      systemd-analyze security --offline=true on the service, no higher
#      than the exposure SECURITY.md gives;
#   5. posternd started with the unit's ExecStart= command line;
#   6. triggered with the installed client, by the command init printed;
#   7. man -l of each page, and the installed bash, zsh and fish
#      completions driven by each shell;
#   an upgrade to a package with a new default config keeps the edited
#      conffile (dpkg --force-confold), the key and the modes;
#   8. dpkg -r keeps the config and the state, dpkg --purge leaves nothing
#      but the _postern user (README, "Install").
# As root only (it installs packages); outside CI it skips when not root or
# when a program is missing, and refuses to run where postern is already
# installed. /etc/postern and /var/lib/postern left by other tests are
# moved aside for the run and put back afterwards.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/completion.bash"

require_root "packages.sh (dpkg -i)"
require_tools "dpkg lintian scdoc man-db mandoc systemd bash zsh fish procps" \
    dpkg lintian scdoc man mandoc systemd-analyze bash zsh fish ps
DEBS=${POSTERN_DEBS:-$E2E_ROOT/target/debian}
if ! ls "$DEBS"/postern-server_*.deb "$DEBS"/postern_*.deb >/dev/null 2>&1; then
    require_tools "cargo-deb (cargo install --locked cargo-deb)" cargo-deb
    note "building the packages"
    bash "$E2E_ROOT/pkg/build-debs" >&2 || abort "pkg/build-debs"
fi
SERVER_DEB=$(ls -t "$DEBS"/postern-server_*.deb | head -n 1)
CLIENT_DEB=$(ls -t "$DEBS"/postern_*.deb | head -n 1)
for p in postern-server postern; do
    if dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q installed; then
        missing "$p is already installed here; this test installs and purges it"
    fi
done

lab_init
USER_BEFORE=no
getent passwd _postern >/dev/null && USER_BEFORE=yes
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
    if [ "$INSTALLED" = yes ] && ! dpkg_wait --purge postern postern-server >/dev/null; then
        # Never put saved directories back where a later purge would delete them.
        echo "not ok - cleanup: dpkg --purge failed; $LAB kept with what was moved aside"
        KEEP_LAB=1 # read by e2e_cleanup (lib.sh) after this hook
        export KEEP_LAB
        return
    fi
    if [ "$USER_BEFORE" = no ] && getent passwd _postern >/dev/null; then
        userdel _postern 2>/dev/null
        getent group _postern >/dev/null && groupdel _postern 2>/dev/null
    fi
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

# --- 1. lintian, then install ---------------------------------------------
if lintian --fail-on error,warning,info "$SERVER_DEB" "$CLIENT_DEB" >"$LAB/lintian" 2>&1; then
    pass "lintian: no error, warning or info tag"
else
    fail "lintian: $(grep -v '^N:' "$LAB/lintian" | tr '\n' ' ')"
fi
INSTALLED=yes
if dpkg_wait -i "$SERVER_DEB" "$CLIENT_DEB" >"$LAB/dpkg-i" 2>&1; then
    pass "dpkg -i postern-server postern"
else
    sed 's/^/#   /' "$LAB/dpkg-i"
    abort "dpkg -i postern-server postern"
fi
check "dpkg --verify: installed files match the packages" \
    bash -c '[ -z "$(dpkg --verify postern-server postern 2>&1)" ]'

# --- 2. the user, files, owners, modes --------------------------------------
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd _postern)
check "_postern exists" [ -n "${uid:-}" ]
check "_postern is a system user (uid $uid < 1000)" [ "${uid:-1000}" -lt 1000 ]
check "_postern has no home ($home) and no login shell ($shell)" \
    bash -c '[ "$1" = /nonexistent ] && case $2 in */nologin|/bin/false) true ;; *) false ;; esac' _ "$home" "$shell"
check "_postern's primary group is _postern" [ "$(getent group "$gid" | cut -d: -f1)" = _postern ]

# The maintainer-script fallback: without systemd-sysusers on PATH,
# postinst makes the same user with adduser.
if [ "$USER_BEFORE" = no ]; then
    mkdir "$LAB/nosysusers"
    for d in /usr/sbin /usr/bin /sbin /bin; do
        for p in "$d"/*; do
            n=${p##*/}
            [ "$n" = systemd-sysusers ] || [ -e "$LAB/nosysusers/$n" ] || ln -s "$p" "$LAB/nosysusers/$n"
        done
    done
    userdel _postern && { ! getent group _postern >/dev/null || groupdel _postern; }
    if PATH=$LAB/nosysusers sh /var/lib/dpkg/info/postern-server.postinst configure >"$LAB/fallback" 2>&1; then
        pass "postinst without systemd-sysusers"
    else
        fail "postinst without systemd-sysusers: $(tr '\n' ' ' <"$LAB/fallback")"
    fi
    IFS=: read -r _ _ uid2 _ gecos2 home2 shell2 < <(getent passwd _postern)
    check "the adduser fallback makes the same user ($gecos2, $home2, $shell2)" \
        bash -c '[ "${1%%,*}" = "postern network process" ] && [ "$2" = /nonexistent ] && [ "$3" = "$4" ] && [ -n "$5" ]' \
        _ "$gecos2" "$home2" "$shell2" "$shell" "$uid2"
    check "the fallback's user has its own group" bash -c 'getent group _postern >/dev/null'
    uid=${uid2:-$uid}
fi

# owner:group mode path
expect_stat() {
    local want="$1 $2" path=$3 got
    got=$(stat -c '%U:%G %a' "$path" 2>/dev/null)
    check "$path is $want (got ${got:-nothing})" [ "$got" = "$want" ]
}
expect_stat root:root 755 /usr/sbin/posternd
expect_stat root:root 755 /usr/bin/postern
expect_stat root:root 700 /etc/postern
expect_stat root:root 700 /var/lib/postern
expect_stat root:root 755 /var/lib/postern/empty
for f in /usr/lib/systemd/system/posternd.service /usr/lib/systemd/system/posternd.socket \
    /usr/lib/sysusers.d/postern.conf /usr/lib/tmpfiles.d/postern.conf \
    /etc/fail2ban/filter.d/postern.conf /etc/fail2ban/jail.d/postern.conf \
    /usr/share/man/man8/posternd.8.gz /usr/share/man/man5/posternd.toml.5.gz \
    /usr/share/man/man1/postern.1.gz \
    /usr/share/bash-completion/completions/postern \
    /usr/share/zsh/vendor-completions/_postern \
    /usr/share/fish/vendor_completions.d/postern.fish \
    /usr/share/doc/postern-server/examples/sshd-on-demand.toml; do
    expect_stat root:root 644 "$f"
done
expect_stat root:root 755 /usr/share/postern/postern.sh
expect_stat root:root 755 /usr/share/postern/postern.py
check "the fail2ban jail is installed but off" grep -qx 'enabled  = false' /etc/fail2ban/jail.d/postern.conf
dpkg-query --showformat='${Conffiles}\n' --show postern-server >"$LAB/conffiles"
sed 's/^/#   conffile: /' "$LAB/conffiles"
for f in /etc/postern/posternd.toml /etc/fail2ban/filter.d/postern.conf /etc/fail2ban/jail.d/postern.conf; do
    check "$f is a conffile" grep -q "^ $f [0-9a-f]\{32\}\$" "$LAB/conffiles"
done
expect_stat root:root 600 /etc/postern/posternd.toml
check "the packaged config runs the network process as _postern" grep -qx 'user = "_postern"' /etc/postern/posternd.toml
check "the packaged config names its key relative to itself" grep -qx 'key_file = "keys/hello.key"' /etc/postern/posternd.toml
PACKAGED=$(sha256sum </etc/postern/posternd.toml)
check "the unit runs /usr/sbin/posternd" grep -q '^ExecStart=/usr/sbin/posternd ' /usr/lib/systemd/system/posternd.service
check "the unit is conditioned on the config" \
    grep -qx 'ConditionPathExists=/etc/postern/posternd.toml' /usr/lib/systemd/system/posternd.service
check "the unit is not enabled" bash -c '! ls /etc/systemd/system/*.wants/posternd.* >/dev/null 2>&1'
check "nothing is configured yet: no key (/etc/postern holds: $(ls -A /etc/postern | tr '\n' ' '))" [ ! -e /etc/postern/keys ]

# --- 3. posternd init, posternd --check ------------------------------------
# Enabled before init, the unit's command fails at once, naming the key.
EXEC=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/posternd.service)
read -ra argv <<<"$EXEC"
timeout 10 "${argv[@]}" </dev/null >/dev/null 2>"$LAB/noinit.err"
rc=$?
check "before init, posternd refuses to start (exit $rc) naming the missing key: $(head -c 400 "$LAB/noinit.err" | tr '\n' ' ')" \
    bash -c '[ "$1" = 1 ] && grep -q "action\[1\]\.key_file.*keys/hello\.key does not exist" "$2"' _ "$rc" "$LAB/noinit.err"
if /usr/sbin/posternd init >"$LAB/init.out" 2>"$LAB/init.err"; then
    pass "posternd init"
else
    sed 's/^/#   /' "$LAB/init.err"
    abort "posternd init"
fi
sed 's/^/#   init: /' "$LAB/init.out"
check "init keeps the packaged config byte for byte" [ "$(sha256sum </etc/postern/posternd.toml)" = "$PACKAGED" ]
check "init says it kept the config and wrote the key" bash -c \
    'grep -qx "wrote /etc/postern/keys/hello.key (mode 600)" "$1" && grep -q "^kept /etc/postern/posternd.toml " "$1"' _ "$LAB/init.out"
etc_files=$(cd /etc/postern && find . | LC_ALL=C sort | tr '\n' ' ')
check "init wrote nothing else in /etc/postern (it holds: $etc_files)" \
    [ "$etc_files" = ". ./keys ./keys/hello.key ./posternd.toml " ]
expect_stat root:root 600 /etc/postern/posternd.toml
expect_stat root:root 600 /etc/postern/keys/hello.key
expect_stat root:root 700 /etc/postern/keys
check "posternd --check passes on the packaged config with init's key" \
    /usr/sbin/posternd --config /etc/postern/posternd.toml --check
# The operator edits the conffile: a free loopback port instead of 7001
# (kept through the upgrade below).
PORT=$(free_port)
sed -i "s/^address = \"0\.0\.0\.0:7001\"\$/address = \"127.0.0.1:$PORT\"/" /etc/postern/posternd.toml
check "the conffile is edited" grep -qx "address = \"127.0.0.1:$PORT\"" /etc/postern/posternd.toml
expect_stat root:root 600 /etc/postern/posternd.toml
check "posternd --check passes on the edited conffile" \
    /usr/sbin/posternd --config /etc/postern/posternd.toml --check
/usr/sbin/posternd init --action other >/dev/null 2>"$LAB/init-other.err"
rc=$?
check "init for another action refuses next to an edited config (exit $rc): $(cat "$LAB/init-other.err")" bash -c \
    '[ "$1" = 1 ] && grep -q "posternd.toml exists and is not what init would write" "$2" && [ ! -e /etc/postern/keys/other.key ]' _ "$rc" "$LAB/init-other.err"
# (A copy elsewhere: its key_file, relative to the config, made absolute.)
sed 's/^user = "_postern"$/user = "nobody"/; s|^key_file = "keys/|key_file = "/etc/postern/keys/|' \
    /etc/postern/posternd.toml >"$LAB/nobody.toml"
/usr/sbin/posternd --config "$LAB/nobody.toml" --check >/dev/null 2>"$LAB/nobody.err"
rc=$?
check "user = \"nobody\" passes --check (exit $rc) with a warning to use _postern" \
    bash -c '[ "$1" = 0 ] && grep -q "^warning: \[daemon\] user is \"nobody\".*set user = \"_postern\"" "$2"' _ "$rc" "$LAB/nobody.err"
key_before=$(sha256sum </etc/postern/keys/hello.key)
/usr/sbin/posternd init >/dev/null 2>"$LAB/init2.err"
rc=$?
check "a second init refuses (exit 1): $(cat "$LAB/init2.err")" bash -c \
    '[ "$1" = 1 ] && grep -q "hello.key exists" "$2"' _ "$rc" "$LAB/init2.err"
check "a second init leaves the key alone" [ "$(sha256sum </etc/postern/keys/hello.key)" = "$key_before" ]
TRIGGER=$(grep -m1 "^  postern trigger 127.0.0.1:7001 hello --key-file /etc/postern/keys/hello.key\$" "$LAB/init.out")
check "init prints the client command for this machine" [ -n "$TRIGGER" ]
# The same command, to the port the edited conffile listens on.
TRIGGER=${TRIGGER/127.0.0.1:7001/127.0.0.1:$PORT}

# The README's three commands: its trigger line is what init prints with
# its defaults (here written to a scratch directory, nothing bound).
sed -n '/^Then, the three commands:$/,/^```$/p' "$E2E_ROOT/README.md" | sed -n '/^sudo /p' >"$LAB/three"
check "the README gives three commands" [ "$(wc -l <"$LAB/three")" = 3 ]
check "the README's first two: posternd init, systemctl enable --now posternd" bash -c \
    '[ "$(sed -n 1p "$1")" = "sudo posternd init" ] && [ "$(sed -n 2p "$1")" = "sudo systemctl enable --now posternd" ]' _ "$LAB/three"
/usr/sbin/posternd init --dir "$LAB/readme" --state-dir "$LAB/readme-state" >"$LAB/readme.out" 2>&1
readme_trigger=$(sed -n 3p "$LAB/three" | sed "s|^sudo ||; s|/etc/postern/|$LAB/readme/|")
check "the README's trigger line is the one init prints by default: $readme_trigger" \
    grep -qxF "  $readme_trigger" "$LAB/readme.out"

# --- 4. systemd-analyze ----------------------------------------------------
if (cd / && systemd-analyze verify /usr/lib/systemd/system/posternd.service \
    /usr/lib/systemd/system/posternd.socket) >"$LAB/verify" 2>&1; then
    pass "systemd-analyze verify: the installed units"
else
    fail "systemd-analyze verify: $(tr '\n' ' ' <"$LAB/verify")"
fi
limit=$(sed -n 's/.*Overall exposure level for posternd\.service: \([0-9.]*\).*/\1/p' "$E2E_ROOT/SECURITY.md" | head -n 1)
exposure=$(systemd-analyze security --offline=true /usr/lib/systemd/system/posternd.service 2>&1 |
    sed -n 's/.*Overall exposure level for posternd\.service: \([0-9.]*\).*/\1/p')
check "exposure ${exposure:-?} is at most SECURITY.md's ${limit:-?}" \
    awk -v e="${exposure:-99}" -v l="${limit:-0}" 'BEGIN { exit !(e != "" && l != "" && e + 0 <= l + 0) }'

# --- 5. posternd as the unit starts it --------------------------------------
note "ExecStart: ${argv[*]}"
PD_LOG=$LAB/posternd.log
"${argv[@]}" </dev/null >/dev/null 2>"$PD_LOG" &
PD_PID=$!
track "$PD_PID"
if wait_log "$PD_LOG" " started " 10; then
    pass "posternd started by its ExecStart line"
else
    sed 's/^/#   posternd: /' "$PD_LOG"
    abort "posternd started by its ExecStart line"
fi
net_user=$(ps -o user= --ppid "$PD_PID" | head -n 1 | tr -d ' ')
check "the network process runs as _postern (got ${net_user:-none})" [ "$net_user" = _postern ]

# --- 6. a first trigger, by the command init printed ------------------------
read -ra cmd <<<"$TRIGGER"
cmd[0]=/usr/bin/postern
out=$("${cmd[@]}" 2>&1)
rc=$?
check "the printed command triggers it: $out" [ "$rc" = 0 ]
check "posternd logs ok action=hello" wait_log "$PD_LOG" "action=hello addr=127.0.0.1 status=started" 5
check "the action wrote /var/lib/postern/hello.log" wait_log /var/lib/postern/hello.log "hello triggered for 127.0.0.1" 5
# The single-file clients the package ships, with the same key.
if command -v openssl >/dev/null 2>&1; then
    # init's action has a 2 s cooldown from its last start: wait until
    # that start (the log line's file time) is 3 s old.
    wait_until 5 bash -c '[ $(($(date +%s) - $(stat -c %Y /var/lib/postern/hello.log))) -ge 3 ]'
    out=$(sh /usr/share/postern/postern.sh trigger "127.0.0.1:$PORT" --key-file /etc/postern/keys/hello.key 2>&1)
    check "the installed postern.sh triggers it: $out" [ $? = 0 ]
fi
kill -TERM "$PD_PID"
check "posternd stops on SIGTERM" wait_gone "$PD_PID" 10
wait "$PD_PID" 2>/dev/null

# An upgrade leaves the operator's files. First the same packages again;
# then a newer postern-server (this one, version +upgrade1) whose default
# config changed, so dpkg meets an edited conffile that the package also
# changed: --force-confold keeps the operator's, as answering the prompt
# "N" would, and dpkg puts the new default next to it as .dpkg-dist.
config_before=$(sha256sum </etc/postern/posternd.toml)
if dpkg_wait -i "$SERVER_DEB" "$CLIENT_DEB" >"$LAB/dpkg-i2" 2>&1; then
    pass "dpkg -i again (a reinstall)"
else
    fail "dpkg -i again: $(tr '\n' ' ' <"$LAB/dpkg-i2")"
fi
check "a reinstall keeps the edited conffile and the key" bash -c \
    '[ "$(sha256sum </etc/postern/posternd.toml)" = "$1" ] && [ "$(sha256sum </etc/postern/keys/hello.key)" = "$2" ]' \
    _ "$config_before" "$key_before"
UP=$LAB/upgrade
dpkg-deb -R "$SERVER_DEB" "$UP"
printf '# A new default in version +upgrade1.\n' >>"$UP/etc/postern/posternd.toml"
sed -i 's/^Version: .*/&+upgrade1/' "$UP/DEBIAN/control"
(cd "$UP" && sed -i "s|^[0-9a-f]\{32\}  etc/postern/posternd.toml\$|$(md5sum etc/postern/posternd.toml)|" DEBIAN/md5sums)
UP_DEB=$LAB/postern-server_upgrade1.deb
dpkg-deb --root-owner-group -Zxz --build "$UP" "$UP_DEB" >/dev/null
if dpkg_wait --force-confold -i "$UP_DEB" >"$LAB/dpkg-up" 2>&1; then
    pass "dpkg --force-confold -i: an upgrade to $(dpkg-query -W -f '${Version}' postern-server)"
else
    fail "dpkg --force-confold -i (upgrade): $(tr '\n' ' ' <"$LAB/dpkg-up")"
fi
sed 's/^/#   upgrade: /' "$LAB/dpkg-up"
check "the upgrade installed the new version" bash -c \
    '[[ $(dpkg-query -W -f "\${Version}" postern-server) == *+upgrade1 ]]'
check "an upgrade keeps the edited conffile and the key" bash -c \
    '[ "$(sha256sum </etc/postern/posternd.toml)" = "$1" ] && [ "$(sha256sum </etc/postern/keys/hello.key)" = "$2" ]' \
    _ "$config_before" "$key_before"
check "the new default is beside it, as posternd.toml.dpkg-dist" \
    cmp -s /etc/postern/posternd.toml.dpkg-dist "$UP/etc/postern/posternd.toml"
expect_stat root:root 600 /etc/postern/posternd.toml
expect_stat root:root 700 /etc/postern
expect_stat root:root 700 /etc/postern/keys

# --- 7. man pages and completions -----------------------------------------
for page in /usr/share/man/man8/posternd.8.gz /usr/share/man/man5/posternd.toml.5.gz \
    /usr/share/man/man1/postern.1.gz; do
    MANWIDTH=80 man --warnings -P cat -l "$page" >"$LAB/page" 2>"$LAB/page.warn"
    check "man -l $page renders without warnings" \
        bash -c '[ ! -s "$1" ] && grep -q SYNOPSIS "$2" && grep -q "SEE ALSO" "$2"' _ "$LAB/page.warn" "$LAB/page"
    check "mandoc -Tlint -W warning $page is silent" \
        bash -c '[ -z "$(mandoc -Tlint -W warning "$1" 2>&1)" ]' _ "$page"
done
for name in posternd posternd.toml postern; do
    check "man -w $name finds the installed page" bash -c 'man -w "$1" | grep -q "^/usr/share/man/"' _ "$name"
done
(
    PATH=/usr/sbin:/usr/bin:/sbin:/bin
    INVDIR=$LAB/inv
    completion_inventory "$INVDIR"
    export XDG_CONFIG_HOME=$INVDIR
    check_completions bash /usr/share/bash-completion/completions/postern
    check_completions zsh /usr/share/zsh/vendor-completions
    check_completions fish ""
    echo "$passed $failed" >"$LAB/counts"
)
read -r passed failed <"$LAB/counts"

# --- 8. remove, then purge ------------------------------------------------
check "dpkg -r postern postern-server" dpkg_wait -r postern postern-server
check "remove keeps the edited conffile" bash -c '[ "$(sha256sum </etc/postern/posternd.toml)" = "$1" ]' _ "$config_before"
check "remove leaves postern-server's conffiles known to dpkg" bash -c \
    '[ "$(dpkg-query -W -f "\${Status}" postern-server)" = "deinstall ok config-files" ]'
expect_stat root:root 700 /etc/postern
check "remove keeps the key" [ -f /etc/postern/keys/hello.key ]
check "remove keeps the state directory" [ -d /var/lib/postern ]
check "remove takes posternd away" [ ! -e /usr/sbin/posternd ]
check "remove keeps the conffiles" [ -f /etc/fail2ban/jail.d/postern.conf ]
check "dpkg --purge postern postern-server" dpkg_wait --purge postern postern-server
INSTALLED=no
check "purge removes /etc/postern (conffile, key, .dpkg-dist)" [ ! -e /etc/postern ]
check "purge removes /var/lib/postern" [ ! -e /var/lib/postern ]
check "purge: dpkg knows neither package" bash -c \
    '! dpkg-query -W -f "\${Status}\n" postern-server postern 2>/dev/null | grep -q installed'
snapshot >"$LAB/after"
LC_ALL=C comm -13 "$LAB/before" "$LAB/after" >"$LAB/added"
LC_ALL=C comm -23 "$LAB/before" "$LAB/after" >"$LAB/removed"
check "purge leaves no file or directory behind: $(tr '\n' ' ' <"$LAB/added")" [ ! -s "$LAB/added" ]
check "purge removes nothing that was there before: $(tr '\n' ' ' <"$LAB/removed")" [ ! -s "$LAB/removed" ]
check "purge keeps the _postern user, as documented" bash -c 'getent passwd _postern >/dev/null'
finish
