#!/usr/bin/env python3
"""A scripted stand-in for posternd, for testing the reference clients.

It accepts exactly one connection, plays the server side of postern-2 or
ostiary-4 in the way --mode says, writes one word describing what it saw
to --result-file, and exits. Standard library only.

Modes:
  ack          greeting; verify the reply (MAC and, with --expect-addr, the
               address field); on success, after --ack-delay seconds, send
               the 38-byte ack with --status, --reason and --seconds (and
               then --trailing more bytes, which a client must ignore).
  noack        greeting; verify the reply; close without an ack.
  forged       greeting; verify the reply; send an ack with a random MAC.
  truncated    greeting; verify the reply; send only the first 33 ack
               bytes (a postern-1 ack's length) and close.
  silent       send nothing; wait for the client to give up.
  close        close at once, before any greeting.
  badgreeting  send a postern-1 greeting ("PST1" || nonce) and wait.
  ostiary      send a 32-byte salt; verify HMAC-SHA256(password, salt).
  ostiary-like send a 32-byte salt as an ostiary-4 server does, then wait
               up to 10 s for a 32-byte reply, as it does.

Results: verified, bad-mac, bad-addr, short-reply, long-reply,
client-closed, timeout, closed, sent-bad-greeting (the client then sent
nothing and closed), bad-greeting-answered (it sent something).

With --proxy http or --proxy socks5 it first plays an HTTP CONNECT or a
SOCKS5 (no authentication) proxy, checks that the client asked for
--proxy-target, answers success, then plays the server on the same
connection.
"""

import argparse
import base64
import hashlib
import hmac
import ipaddress
import os
import select
import socket
import sys
import time

REPLY_LABEL = b"PST2-R\0"
ACK_LABEL = b"PST2-A\0"
# The salt of tests/vectors/postern-2-negative.vectors, case 10: no "PST2".
OSTIARY_LIKE_SALT = hashlib.sha256(b"salt").digest()
DEADLINE = 10.0


def mac(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def read_exact(conn, n):
    """Up to n bytes; fewer only if the peer closed or the deadline passed."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except (socket.timeout, ConnectionError):
            break
        if not chunk:
            break
        buf += chunk
    return buf


def sent_more(conn):
    """Whether the peer sent anything past the fixed length (a FIN is fine)."""
    r, _, _ = select.select([conn], [], [], 0.1)
    if not r:
        return False
    try:
        return bool(conn.recv(1, socket.MSG_PEEK))
    except ConnectionError:
        return False


def addr_field(text):
    if text in (None, "", "none"):
        return bytes(16)
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


def play_proxy(conn, kind, target):
    if kind == "http":
        head = b""
        while not head.endswith(b"\r\n\r\n") and len(head) < 8192:
            c = conn.recv(1)
            if not c:
                return "proxy-closed"
            head += c
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or parts[0] != "CONNECT" or parts[1] != target:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return "proxy-bad-request:" + line
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return None
    # SOCKS5, no authentication.
    hello = read_exact(conn, 2)
    if len(hello) != 2 or hello[0] != 5:
        return "proxy-bad-hello"
    methods = read_exact(conn, hello[1])
    if 0 not in methods:
        conn.sendall(b"\x05\xff")
        return "proxy-no-method"
    conn.sendall(b"\x05\x00")
    req = read_exact(conn, 4)
    if len(req) != 4 or req[:3] != b"\x05\x01\x00":
        return "proxy-bad-request"
    if req[3] == 1:
        host = str(ipaddress.ip_address(read_exact(conn, 4)))
    elif req[3] == 4:
        host = "[%s]" % ipaddress.ip_address(read_exact(conn, 16))
    elif req[3] == 3:
        host = read_exact(conn, read_exact(conn, 1)[0]).decode("latin-1")
    else:
        return "proxy-bad-atyp"
    port = int.from_bytes(read_exact(conn, 2), "big")
    if "%s:%d" % (host, port) != target:
        conn.sendall(b"\x05\x02\x00\x01" + bytes(6))
        return "proxy-bad-target:%s:%d" % (host, port)
    conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
    return None


def play(conn, args, key):
    mode = args.mode
    if mode == "close":
        return "closed"
    if mode == "silent":
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            r, _, _ = select.select([conn], [], [], end - time.monotonic())
            if r:
                try:
                    if not conn.recv(64):
                        return "client-closed"
                except ConnectionError:
                    return "client-closed"
        return "timeout"
    if mode == "ostiary":
        salt = os.urandom(32)
        conn.sendall(salt)
        reply = read_exact(conn, 32)
        if len(reply) < 32:
            return "short-reply"
        if sent_more(conn):
            return "long-reply"
        ok = hmac.compare_digest(reply, mac(args.password.encode(), salt))
        return "verified" if ok else "bad-mac"
    if mode in ("badgreeting", "ostiary-like"):
        conn.sendall(b"PST1" + os.urandom(32) if mode == "badgreeting" else OSTIARY_LIKE_SALT)
        got = read_exact(conn, 48 if mode == "badgreeting" else 32)
        return "bad-greeting-answered" if got else "sent-bad-greeting"
    greeting = b"PST2" + os.urandom(32)
    conn.sendall(greeting)
    reply = read_exact(conn, 48)
    if len(reply) < 48:
        return "short-reply"
    if sent_more(conn):
        return "long-reply"
    field, got = reply[:16], reply[16:]
    if not hmac.compare_digest(got, mac(key, REPLY_LABEL, greeting[4:], field)):
        return "bad-mac"
    if args.expect_addr is not None and field != addr_field(args.expect_addr):
        return "bad-addr"
    if mode == "noack":
        return "verified"
    body = bytes([args.status, args.reason]) + args.seconds.to_bytes(4, "big")
    ack = body + mac(key, ACK_LABEL, greeting, reply, body)
    if mode == "forged":
        ack = body + os.urandom(32)
    elif mode == "truncated":
        ack = ack[:33]
    if args.ack_delay:
        time.sleep(args.ack_delay)
    try:
        conn.sendall(ack + os.urandom(args.trailing))
    except OSError:
        return "client-closed"
    return "verified"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port-file", required=True, help="write the bound port here")
    p.add_argument("--result-file", required=True, help="write the verdict here")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--mode", default="ack",
                   choices=["ack", "noack", "forged", "truncated", "silent", "close",
                            "badgreeting", "ostiary", "ostiary-like"])
    p.add_argument("--status", type=int, default=1)
    p.add_argument("--reason", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--ack-delay", type=float, default=0.0, help="seconds before the ack")
    p.add_argument("--trailing", type=int, default=0, help="bytes sent after the ack")
    p.add_argument("--key-b64", default="", help="the postern-2 key (test keys only)")
    p.add_argument("--password", default="", help="the ostiary-4 password")
    p.add_argument("--expect-addr", default=None, help="required asserted address or 'none'")
    p.add_argument("--proxy", choices=["http", "socks5"], default=None)
    p.add_argument("--proxy-target", default="")
    p.add_argument("--accept-timeout", type=float, default=30.0)
    args = p.parse_args()
    key = base64.b64decode(args.key_b64) if args.key_b64 else b""

    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, 0))
    srv.listen(1)
    srv.settimeout(args.accept_timeout)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.getsockname()[1])
    os.rename(tmp, args.port_file)
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        verdict = "no-connection"
    else:
        conn.settimeout(DEADLINE)
        verdict = None
        if args.proxy:
            verdict = play_proxy(conn, args.proxy, args.proxy_target)
        if verdict is None:
            verdict = play(conn, args, key)
        conn.close()
    srv.close()
    with open(args.result_file, "w") as f:
        f.write(verdict + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
