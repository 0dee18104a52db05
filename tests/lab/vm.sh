#!/bin/bash
# vm.sh: power control and reimaging of the lab server, a QEMU virtual
# machine whose files all live in one lab directory:
#
#   base.img        the installed image, read-only (tests/lab/mkimage.sh)
#   overlay.qcow2   the server's disk: a qcow2 overlay on base.img
#   qmp.sock        QMP (power buttons, status, screen)
#   qemu.pid        the running QEMU's pid
#   serial.log      the server's serial console (COM1) output, appended to
#   lock            held while a command runs, so two never overlap
#
# Usage: vm.sh LABDIR COMMAND [--vnc HOST:DISPLAY] [--grace SECONDS]
#                              [--serial-tcp HOST:PORT]
#
#   power-on          start the machine (nothing to do if it is on)
#   power-off         press the ACPI power button; pull the plug if the
#                     guest is still on after the grace period
#   power-off-hard    pull the plug at once
#   power-button      press the ACPI power button and return at once
#   power-cycle       press the reset button (power on if it is off)
#   power-cycle-hard  pull the plug, then power on
#   reimage           power off, recreate the overlay from base.img, power on
#   status            print "on" or "off"
#
# --vnc  where QEMU's VNC server listens (default 127.0.0.1:1, port 5901);
#        keep it on loopback: the console gateway is the way in.
# --grace  seconds the guest gets to power off on the button (default 30).
# --serial-tcp  COM1 is also a TCP server on HOST:PORT (keep it on
#        loopback), for a BMC's serial-over-LAN to connect to: what the
#        guest writes still goes to serial.log, and what the connected
#        peer sends is the guest's serial input. Without it COM1 is
#        output only.
#
# Exits 0 when the machine ended up as asked, non-zero with a message on
# standard error otherwise. posternd runs it with a clean environment, so it
# relies on nothing but its arguments.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

usage() {
    echo "usage: $0 LABDIR power-on|power-off|power-off-hard|power-button|power-cycle|power-cycle-hard|reimage|status [--vnc HOST:DISPLAY] [--grace SECONDS] [--serial-tcp HOST:PORT]" >&2
    exit 64
}
die() {
    echo "vm.sh: $*" >&2
    exit 1
}

[ $# -ge 2 ] || usage
LAB=$1
CMD=$2
shift 2
VNC=127.0.0.1:1
GRACE=30
SERIAL_TCP=
while [ $# -gt 0 ]; do
    case $1 in
        --vnc) [ $# -ge 2 ] || usage; VNC=$2; shift 2 ;;
        --grace) [ $# -ge 2 ] || usage; GRACE=$2; shift 2 ;;
        --serial-tcp) [ $# -ge 2 ] || usage; SERIAL_TCP=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ $VNC =~ ^[0-9.]+:[0-9]+$ ]] || die "--vnc wants HOST:DISPLAY (e.g. 127.0.0.1:1), not '$VNC'"
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace wants whole seconds, not '$GRACE'"
[ -z "$SERIAL_TCP" ] || [[ $SERIAL_TCP =~ ^[0-9.]+:[0-9]+$ ]] ||
    die "--serial-tcp wants HOST:PORT (e.g. 127.0.0.1:7023), not '$SERIAL_TCP'"

[ -d "$LAB" ] || die "lab directory $LAB does not exist"
LAB=$(cd "$LAB" && pwd)
HERE=$(dirname "$(readlink -f "$0")")
QMP_PY=$HERE/qmp.py
SOCK=$LAB/qmp.sock
PIDFILE=$LAB/qemu.pid

exec 9>"$LAB/lock"
flock -w 120 9 || die "another power command still holds $LAB/lock"

# The pid of this lab's QEMU, if it runs: the pid file's process, and only
# if its command line names this lab's QMP socket (never a reused pid).
qemu_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "unix:$SOCK,server=on,wait=off" || return 1
    echo "$pid"
}

# Waits up to $2 seconds for process $1 to end.
wait_gone() {
    local pid=$1 tries=$(($2 * 10))
    while [ -e "/proc/$pid" ] && [ "$tries" -gt 0 ]; do
        sleep 0.1
        tries=$((tries - 1))
    done
    [ ! -e "/proc/$pid" ]
}

qmp() {
    "$QMP_PY" "$SOCK" "$@"
}

power_on() {
    if pid=$(qemu_pid); then
        echo "power-on: already on (pid $pid)"
        return 0
    fi
    [ -f "$LAB/base.img" ] || die "no $LAB/base.img: install the server image first"
    [ -f "$LAB/overlay.qcow2" ] || new_overlay
    rm -f "$SOCK" "$PIDFILE"
    local serial="file,id=serial0,path=$LAB/serial.log,append=on"
    if [ -n "$SERIAL_TCP" ]; then
        serial="socket,id=serial0,host=${SERIAL_TCP%:*},port=${SERIAL_TCP##*:},server=on,wait=off,nodelay=on"
        serial+=",logfile=$LAB/serial.log,logappend=on"
    fi
    # -daemonize: QEMU leaves this process group and session, so it
    # outlives this command (posternd kills what a command leaves in its
    # group). Errors before it detaches reach standard error.
    qemu-system-x86_64 \
        -name postern-lab -machine pc,accel=tcg -m 16 \
        -nodefaults -no-user-config -vga std -display none \
        -drive "file=$LAB/overlay.qcow2,format=qcow2,if=ide,index=0" -boot c \
        -vnc "$VNC" \
        -qmp "unix:$SOCK,server=on,wait=off" \
        -chardev "$serial" -serial chardev:serial0 \
        -pidfile "$PIDFILE" -daemonize 9>&-
    local tries=100
    until qmp status >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || die "power-on: QEMU started but its QMP socket does not answer"
        sleep 0.1
    done
    echo "power-on: on (pid $(qemu_pid || echo ?))"
}

# Stops QEMU: quit over QMP, then SIGKILL to the verified pid.
pull_plug() {
    local pid=$1
    qmp quit >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 10; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "QEMU pid $pid does not exit"
    fi
    rm -f "$SOCK" "$PIDFILE"
}

power_off() {
    local pid
    if ! pid=$(qemu_pid); then
        echo "power-off: already off"
        return 0
    fi
    if qmp powerdown --grace "$GRACE"; then
        # The guest powered off; QEMU exits on its own.
        if wait_gone "$pid" 10; then
            rm -f "$SOCK" "$PIDFILE"
            echo "power-off: off (guest powered down on the ACPI button)"
            return 0
        fi
    else
        echo "power-off: the guest ignored the power button for ${GRACE}s; pulling the plug" >&2
    fi
    pull_plug "$pid"
    echo "power-off: off (hard)"
}

power_off_hard() {
    local pid
    if pid=$(qemu_pid); then
        pull_plug "$pid"
    fi
    echo "power-off: off (hard)"
}

new_overlay() {
    rm -f "$LAB/overlay.qcow2"
    # The backing file is named relative to the overlay, so the lab
    # directory can move; QEMU opens it read-only.
    (cd "$LAB" && qemu-img create -q -f qcow2 -b base.img -F raw overlay.qcow2)
}

case $CMD in
    power-on) power_on ;;
    power-off) power_off ;;
    power-off-hard) power_off_hard ;;
    power-button)
        qemu_pid >/dev/null || die "power-button: the machine is off"
        qmp command system_powerdown >/dev/null
        echo "power-button: pressed"
        ;;
    power-cycle)
        if qemu_pid >/dev/null; then
            qmp reset
            echo "power-cycle: reset"
        else
            power_on
        fi
        ;;
    power-cycle-hard)
        power_off_hard
        power_on
        ;;
    reimage)
        [ -f "$LAB/base.img" ] || die "no $LAB/base.img to reimage from"
        power_off
        new_overlay
        echo "reimage: overlay recreated from base.img"
        power_on
        ;;
    status)
        if qemu_pid >/dev/null; then echo on; else echo off; fi
        ;;
    *) usage ;;
esac
