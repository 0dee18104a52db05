#!/usr/bin/env python3
"""Hosts that hang, for benches/fleet.sh: listens on every IP:PORT given,
accepts each connection and never writes to it, and closes it only when
the client does. Prints "ready N" once every address is bound.

Bounded: at most MAX_HELD connections are held (the oldest is closed to
make room), and the program exits after MAX_LIFETIME seconds whatever
happens. Addresses must be on loopback (127.0.0.0/8); others are refused.
"""
import collections
import ipaddress
import resource
import selectors
import socket
import sys
import time

MAX_HELD = 16384
MAX_LIFETIME = 3600.0


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    for arg in sys.argv[1:]:
        host, port = arg.rsplit(":", 1)
        if not ipaddress.ip_address(host).is_loopback:
            print(f"fleet_hang: {host} is not a loopback address", file=sys.stderr)
            return 64
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(1024)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "listen")
    print(f"ready {len(sys.argv) - 1}", flush=True)
    held = collections.OrderedDict()
    end = time.monotonic() + MAX_LIFETIME
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=1.0):
            if key.data == "listen":
                try:
                    conn, _ = key.fileobj.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                if len(held) >= MAX_HELD:
                    oldest, _ = held.popitem(last=False)
                    sel.unregister(oldest)
                    oldest.close()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "conn")
                held[conn] = None
                continue
            conn = key.fileobj
            try:
                data = conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                held.pop(conn, None)
                conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
