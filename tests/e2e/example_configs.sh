#!/usr/bin/env bash
# Every shipped config must pass `posternd --check` on a machine laid out
# as the examples expect: the programs they name installed (.ci/run
# installs them) and their key and password files present with mode 600.
# Missing key files are created with fresh keys (never overwritten), so
# this needs root; outside CI, without root, it skips.
set -u
cd "$(dirname "$0")/../.."
POSTERND="${POSTERND:-$PWD/target/debug/posternd}"
POSTERN="${POSTERN:-$PWD/target/debug/postern}"
pass=0 fail=0
ok() { echo "ok - $*"; pass=$((pass + 1)); }
bad() { echo "not ok - $*"; fail=$((fail + 1)); }

if [ "$(id -u)" != 0 ]; then
    if [ "${CI:-}" = true ]; then
        echo "example_configs.sh needs root under CI=true"; echo "0 passed, 1 failed"; exit 1
    fi
    echo "skipping example_configs.sh: needs root to lay out /etc/postern"; exit 0
fi
[ -x "$POSTERND" ] && [ -x "$POSTERN" ] || cargo build -q --workspace --bins || exit 1

# Key and password files the examples reference.
for f in $(grep -hoE '^(key_file|next_key_file|password_file) = "[^"]+"' conf/examples/*.toml conf/*.toml 2>/dev/null | sed -E 's/^[a-z_]+ = "([^"]+)"/\1/' | sort -u); do
    case "$f" in /etc/postern/*) ;; *) continue ;; esac
    [ -e "$f" ] && continue
    install -d -m 700 "$(dirname "$f")"
    case "$f" in
        */passwords/*) (umask 077; head -c 24 /dev/urandom | base64 > "$f") ;;
        *) (umask 077; "$POSTERN" keygen > "$f") ;;
    esac
done

for c in conf/demo.toml conf/examples/*.toml; do
    if out=$("$POSTERND" --config "$c" --check 2>&1); then
        ok "$c passes --check"
    else
        bad "$c fails --check:"; echo "$out" | sed 's/^/    /'
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
