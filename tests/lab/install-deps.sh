#!/usr/bin/env bash
# Installs what tests/e2e/console_lab.sh and tests/e2e/bmc_lab.sh need:
# QEMU (system emulator and qemu-img), websockify, noVNC, Chromium,
# binutils, Python 3, OpenIPMI's ipmi_sim (the BMC simulator), ipmitool,
# openssl and curl, Node.js with npm, and from the committed
# package-lock.json into tests/lab/node_modules: xterm.js (@xterm/xterm,
# @xterm/addon-fit: the serial console's terminal) and playwright-core (it
# drives /usr/bin/chromium and never downloads a browser), and from PyPI
# sushy-tools (a Redfish emulator) into its own virtual environment. It also installs
# the lab's programs into /usr/local/lib/postern/lab, where
# conf/examples/datacentre.toml and conf/examples/ipmi.toml name them.
#
# Run as root after `apt-get update`:
#
#   bash tests/lab/install-deps.sh
#
# qemu-utils may already come from Debian's bookworm-backports suite, and
# bookworm's qemu-system-x86 then conflicts with it. So the backports suite
# is added beside the configured sources, on the same mirror as the
# existing Debian entries (read from the apt sources at run time), and QEMU
# is installed from it. On a release other than bookworm nothing is added
# and QEMU comes from the configured suites.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
LAB=$(cd "$(dirname "$0")" && pwd)
SUSHY_TOOLS_VERSION=2.2.0

if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: run as root (apt-get install)" >&2
    exit 1
fi

# The Debian mirror the machine already uses: the first URI of an entry
# whose suites include the release itself (not -security), from deb822
# .sources files or one-line .list files.
debian_mirror() {
    local release=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v rel="$release" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; types = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^[ \t]*#/) continue
                    if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = " " $i " "; sub(/^ Suites:/, "", suites) }
                    if ($i ~ /^Types:/)  { types = $i }
                }
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && suites ~ ("[ \t]" rel "[ \t]")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v rel="$release" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == rel) { print $i; exit }
            }' "$f"
    done
}

. /etc/os-release
codename=${VERSION_CODENAME:-}
qemu_target=()
if [ "$codename" = bookworm ]; then
    mirror=$(debian_mirror bookworm | head -n1)
    if [ -z "$mirror" ]; then
        echo "install-deps.sh: no Debian bookworm entry found in the apt sources" >&2
        exit 1
    fi
    list=/etc/apt/sources.list.d/postern-lab-backports.list
    line="deb $mirror bookworm-backports main"
    if [ "$(cat "$list" 2>/dev/null)" != "$line" ]; then
        echo "$line" > "$list"
        apt-get update -q
    fi
    qemu_target=(-t bookworm-backports)
fi

apt-get install -y -q --no-install-recommends "${qemu_target[@]}" \
    qemu-system-x86 qemu-utils
apt-get install -y -q --no-install-recommends \
    websockify novnc chromium fonts-dejavu-core \
    binutils python3 ca-certificates procps util-linux \
    openipmi ipmitool openssl curl iproute2 python3-venv

# Node.js 20 or later (playwright-core's minimum): the machine's own if it
# has one, else the distribution's.
if ! command -v node >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends nodejs
fi
if ! command -v npm >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends npm
fi

# The npm packages: no install step of theirs downloads anything.
(cd "$LAB" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

# sushy-tools' Redfish emulator (tests/e2e/redfish_lab.sh), from PyPI into
# its own virtual environment; Debian does not package it.
SUSHY=/usr/local/lib/postern/lab/sushy
if ! "$SUSHY/bin/pip" show sushy-tools 2>/dev/null | grep -qx "Version: $SUSHY_TOOLS_VERSION"; then
    install -d -m 755 /usr/local/lib/postern/lab
    rm -rf "$SUSHY"
    /usr/bin/python3 -m venv "$SUSHY"
    "$SUSHY/bin/pip" install -q --disable-pip-version-check "sushy-tools==$SUSHY_TOOLS_VERSION"
fi

# The lab's programs, where the example configs expect them; sol-gateway
# finds its page (sol-web) and xterm.js (node_modules/@xterm) beside it.
install -d -m 755 /usr/local/lib/postern/lab /usr/local/lib/postern/lab/sol-web \
    /usr/local/lib/postern/lab/node_modules
install -m 755 "$LAB/vm.sh" "$LAB/qmp.py" "$LAB/console-gateway" "$LAB/mkimage.sh" \
    "$LAB/sol-gateway" "$LAB/bmc-sim" "$LAB/bmc-chassis" /usr/local/lib/postern/lab/
install -m 644 "$LAB/guest.S" /usr/local/lib/postern/lab/
install -m 644 "$LAB/sol-web/index.html" /usr/local/lib/postern/lab/sol-web/
rm -rf /usr/local/lib/postern/lab/node_modules/@xterm
cp -r "$LAB/node_modules/@xterm" /usr/local/lib/postern/lab/node_modules/
chmod -R a+rX /usr/local/lib/postern/lab
