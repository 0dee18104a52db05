#!/bin/bash
# Builds the lab server's disk image from guest.S with binutils: a 1 MiB
# raw disk whose sector 0 is the boot sector, sector 1 the boot counter
# (zero: pristine) and sector 2 the console code. Nothing is downloaded.
#
# Usage: mkimage.sh OUT.img     (OUT.img is written anew, mode 0444)
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT.img" >&2
    exit 64
fi
src=$(dirname "$(readlink -f "$0")")/guest.S
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as --32 -o "$work/guest.o" "$src"
ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o "$work/guest.bin" "$work/guest.o"
size=$(stat -c %s "$work/guest.bin")
if [ "$size" -ne 1536 ]; then
    echo "$0: guest.bin is $size bytes; expected 1536 (boot sector, counter and code sector)" >&2
    exit 1
fi
truncate -s 1M "$work/guest.bin"
rm -f "$out"
cp "$work/guest.bin" "$out"
chmod 0444 "$out"
