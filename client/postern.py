#!/usr/bin/env python3
"""postern.py: reference postern-1 / ostiary-4 client, one file.

Python 3.8 or later, standard library only, so it runs unchanged in
Pythonista (iOS), Pydroid (Android) or any desktop Python. The
specification is PROTOCOL.md; `postern.py help` lists the options and
exit codes, which are the same as those of the Rust client `postern`
and of `postern.sh`.

Secrets are read from a mode-0600 file, an environment variable, or a
prompt without echo; they are never taken from the command line.
"""

import argparse
import base64
import getpass
import hashlib
import hmac
import ipaddress
import os
import socket
import stat
import sys
import time

PROG = "postern.py"
DEFAULT_PORT = 7001
DEFAULT_TIMEOUT = 10.0
PBKDF2_ITERATIONS = 600000
MAX_PASSWORD_LEN = 1024

GREETING_TAG = b"PST1"
GREETING_LEN = 36
ADDR_LEN = 16
REPLY_LEN = 48
ACK_LEN = 33
OSTIARY_SALT_LEN = 32

REPLY_LABEL = b"postern-1 reply\0"
ACK_LABEL = b"postern-1 ack\0"
PASSPHRASE_LABEL = b"postern-1 passphrase\0"
FLEET_LABEL = b"postern-1 fleet\0"

# Exit codes (PROTOCOL.md, "Client exit codes").
EX_OK = 0
EX_NOACK = 2
EX_NET = 3
EX_REFUSED = 4
EX_FAILED = 5
EX_USAGE = 64

STATUS = {
    1: (EX_OK, "accepted, action started"),
    2: (EX_OK, "accepted, already active"),
    3: (EX_REFUSED, "acknowledged, refused (cooldown, busy or address binding)"),
    4: (EX_FAILED, "acknowledged, failed to start"),
}

USAGE = """\
usage:
  {p} trigger HOST[:PORT] [KEY SOURCE] [--assert-addr ADDR] [--timeout SECS] [--proxy URL]
  {p} trigger HOST[:PORT] --protocol ostiary-4 [--password-file F] [--timeout SECS]
  {p} keygen
  {p} selftest VECTORS_DIR

key sources (postern-1; without one, the key is prompted for):
  --key-file F                          base64 key in F (mode 0600)
  --key-env VAR                         base64 key in environment variable VAR
  --passphrase --host-name N --action A key derived from a prompted passphrase
  --master F --host-name N --action A   key derived from a fleet master key in F

options:
  --assert-addr ADDR  bind the request to this IPv4 or IPv6 address
  --timeout SECS      whole-exchange deadline in seconds (default {t:g})
  --protocol P        postern-1 (default) or ostiary-4
  --password-file F   ostiary-4 password (one trailing newline is ignored)
  --proxy URL         connect through http://HOST:PORT (CONNECT) or
                      socks5://HOST:PORT (no authentication)

HOST[:PORT]: name, a.b.c.d, [v6] or [v6]:port; the default port is {d}.

exit codes: 0 accepted (ostiary-4: reply sent), 2 no or bad acknowledgement,
3 network error or timeout, 4 refused, 5 failed to start, 64 usage or
local setup error (unreadable key, key file open to group or others).
""".format(p=PROG, t=DEFAULT_TIMEOUT, d=DEFAULT_PORT)


class Done(Exception):
    """Ends a trigger: the exit code and the one line to print."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


class LocalError(Exception):
    """A usage or local setup problem (exit 64)."""


# ---------------------------------------------------------------------------
# Primitives


def hmac_sha256(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


B64_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def key_from_b64(text, what="key"):
    """Base64 text -> 32-byte key, with the daemon's rules: standard
    alphabet, padding optional, canonical trailing bits, surrounding
    whitespace ignored. Messages never include the input."""
    bad = LocalError("%s is not valid base64; generate one with `%s keygen`" % (what, PROG))
    t = text.strip()
    body = t.rstrip("=")
    pad = len(t) - len(body)
    if not body or any(c not in B64_ALPHABET for c in body) or pad > 2:
        raise bad
    if pad and len(t) % 4:
        raise bad
    if len(body) % 4 == 1:
        raise bad
    n = len(body) // 4 * 3 + max(len(body) % 4 - 1, 0)
    if n != 32:
        raise LocalError("%s decodes to %d bytes, but must be exactly 32; generate one with `%s keygen`"
                         % (what, n, PROG))
    raw = base64.b64decode(body + "=" * (-len(body) % 4))
    if base64.b64encode(raw).decode("ascii").rstrip("=") != body:
        raise bad
    return raw


def passphrase_salt(host, action):
    return hashlib.sha256(PASSPHRASE_LABEL + host.encode() + b"\0" + action.encode()).digest()[:8]


def key_from_passphrase(passphrase, host, action):
    return hashlib.pbkdf2_hmac("sha256", passphrase, passphrase_salt(host, action),
                               PBKDF2_ITERATIONS, 32)


def key_from_master(master, host, action):
    return hmac_sha256(master, FLEET_LABEL, host.encode(), b"\0", action.encode())


def parse_ip(text):
    """An IPv4 or IPv6 address, strictly (no zone id, no leading zeros)."""
    if "%" in text:
        raise ValueError("zone ids cannot be asserted")
    if ":" not in text:
        for part in text.split("."):
            if len(part) > 1 and part.startswith("0"):
                raise ValueError("not an IPv4 address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IPv%s address" % ("6" if ":" in text else "4"))


def addr_field(text):
    """The 16-byte asserted-address field: all zeros for none, IPv4 as
    ::ffff:a.b.c.d, IPv6 as is."""
    if text in (None, "", "none"):
        return bytes(ADDR_LEN)
    ip = parse_ip(text)
    if ip.version == 4:
        field = bytes(10) + b"\xff\xff" + ip.packed
    else:
        field = ip.packed
    if field in (bytes(16), bytes(10) + b"\xff\xff" + bytes(4)):
        raise ValueError("the unspecified address cannot be asserted; omit --assert-addr")
    return field


def reply_for(key, greeting, field):
    return field + hmac_sha256(key, REPLY_LABEL, greeting, field)


def ack_for(key, greeting, reply, status):
    s = bytes([status])
    return s + hmac_sha256(key, ACK_LABEL, greeting, reply, s)


def verify_ack(key, greeting, reply, ack):
    """The status (1..4) of a genuine ack, or None (forged, corrupted or
    unknown status). The MAC is compared in constant time."""
    if len(ack) != ACK_LEN:
        return None
    want = hmac_sha256(key, ACK_LABEL, greeting, reply, ack[:1])
    if not hmac.compare_digest(want, ack[1:]):
        return None
    return ack[0] if ack[0] in STATUS else None


# ---------------------------------------------------------------------------
# Reading secrets


def check_private(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise LocalError("%s: %s" % (path, e.strerror or e))
    if not stat.S_ISREG(st.st_mode):
        raise LocalError("%s: not a regular file" % path)
    # Windows has no such mode bits; everywhere else they are checked.
    if os.name != "nt" and st.st_mode & 0o077:
        raise LocalError("%s is readable by group or others; run chmod 600 %s" % (path, path))


def read_private(path):
    check_private(path)
    try:
        with open(path, "rb") as f:
            return f.read(65536)
    except OSError as e:
        raise LocalError("%s: %s" % (path, e.strerror or e))


def prompt_secret(prompt):
    """A line from the terminal without echo, or from a non-terminal stdin."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def load_secret(args, target):
    """The key (postern-1) or password (ostiary-4) bytes."""
    if args.protocol == "ostiary-4":
        if args.password_file:
            pw = read_private(args.password_file)
            if pw.endswith(b"\r\n"):
                pw = pw[:-2]
            elif pw.endswith(b"\n"):
                pw = pw[:-1]
        else:
            pw = prompt_secret("ostiary-4 password for %s: " % target).encode()
        if not pw:
            raise LocalError("the password is empty")
        if len(pw) > MAX_PASSWORD_LEN:
            raise LocalError("the password is longer than %d bytes" % MAX_PASSWORD_LEN)
        return pw
    if args.key_file:
        text = read_private(args.key_file).decode("ascii", "replace")
        return key_from_b64(text, args.key_file)
    if args.key_env:
        text = os.environ.pop(args.key_env, None)
        if not text:
            raise LocalError("environment variable %s is not set" % args.key_env)
        return key_from_b64(text, args.key_env)
    if args.master:
        master = key_from_b64(read_private(args.master).decode("ascii", "replace"), args.master)
        return key_from_master(master, args.host_name, args.action)
    if args.passphrase:
        pp = prompt_secret("passphrase for %s/%s: " % (args.host_name, args.action))
        if not pp:
            raise LocalError("the passphrase is empty")
        return key_from_passphrase(pp.encode("utf-8"), args.host_name, args.action)
    return key_from_b64(prompt_secret("key for %s (base64): " % target))


# ---------------------------------------------------------------------------
# Network


def parse_target(text, default_port=DEFAULT_PORT):
    """HOST, HOST:PORT, [V6], [V6]:PORT or a bare IPv6 address."""
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise LocalError("%s: not a host name or address" % text)
        host = text[1:end]
        if end + 1 < len(text):
            port = text[end + 2:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or host.startswith("-") or any(
            not (c.isascii() and (c.isalnum() or c in "._:%-")) for c in host):
        raise LocalError("%s: not a host name or address" % text)
    if not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise LocalError("%s: bad port" % text)
    return host, int(port)


def reason(err):
    if isinstance(err, socket.timeout):
        return "timed out"
    if isinstance(err, socket.gaierror):
        return err.strerror or str(err)
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


class Conn:
    """One TCP connection under one deadline; reads are exact or short
    only at end of stream."""

    def __init__(self, deadline):
        self.deadline = deadline
        self.sock = None

    def remaining(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Done(EX_NET, "connection failed: timed out")
        return left

    def connect(self, host, port, proxy):
        try:
            if proxy is None:
                self.sock = socket.create_connection((host, port), timeout=self.remaining())
            else:
                scheme, phost, pport = proxy
                self.sock = socket.create_connection((phost, pport), timeout=self.remaining())
        except (OSError, socket.timeout) as e:
            raise Done(EX_NET, "connection failed: %s" % reason(e))
        if proxy is not None:
            if proxy[0] == "http":
                self.http_connect(host, port)
            else:
                self.socks5_connect(host, port)

    def read(self, n):
        buf = b""
        while len(buf) < n:
            self.sock.settimeout(self.remaining())
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise Done(EX_NET, "connection failed: timed out")
            except ConnectionError:
                break
            except OSError as e:
                raise Done(EX_NET, "connection failed: %s" % reason(e))
            if not chunk:
                break
            buf += chunk
        return buf

    def send(self, data):
        self.sock.settimeout(self.remaining())
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Done(EX_NET, "connection failed: timed out")
        except OSError as e:
            raise Done(EX_NET, "connection failed: %s" % reason(e))

    def close(self):
        if self.sock is not None:
            self.sock.close()

    # Proxies. Both read their answer exactly, byte by byte where the
    # length is not known, so no greeting byte is ever swallowed.

    def http_connect(self, host, port):
        authority = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        self.send(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            if len(head) >= 8192:
                raise Done(EX_NET, "connection failed: proxy: response too long")
            c = self.read(1)
            if not c:
                raise Done(EX_NET, "connection failed: proxy closed the connection")
            head += c
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
            raise Done(EX_NET, "connection failed: proxy: %s"
                       % head.split(b"\r\n", 1)[0].decode("latin-1"))

    def socks5_connect(self, host, port):
        self.send(b"\x05\x01\x00")
        if self.read(2) != b"\x05\x00":
            raise Done(EX_NET, "connection failed: proxy: socks5 needs authentication")
        try:
            ip = ipaddress.ip_address(host)
            dest = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        except ValueError:
            name = host.encode("idna")
            if len(name) > 255:
                raise Done(EX_NET, "connection failed: host name too long")
            dest = b"\x03" + bytes([len(name)]) + name
        self.send(b"\x05\x01\x00" + dest + port.to_bytes(2, "big"))
        head = self.read(4)
        if len(head) != 4 or head[0] != 5:
            raise Done(EX_NET, "connection failed: proxy: bad socks5 reply")
        if head[1] != 0:
            raise Done(EX_NET, "connection failed: proxy: socks5 error %d" % head[1])
        skip = {1: 4, 4: 16}.get(head[3])
        if head[3] == 3:
            n = self.read(1)
            skip = n[0] if n else None
        if skip is None:
            raise Done(EX_NET, "connection failed: proxy: bad socks5 reply")
        if len(self.read(skip + 2)) != skip + 2:
            raise Done(EX_NET, "connection failed: proxy closed the connection")


def parse_proxy(url):
    for scheme in ("http", "socks5", "socks5h"):
        prefix = scheme + "://"
        if url.startswith(prefix):
            host, port = parse_target(url[len(prefix):].rstrip("/"), 1080 if scheme != "http" else 8080)
            return ("http" if scheme == "http" else "socks5", host, port)
    raise LocalError("--proxy must be http://HOST:PORT or socks5://HOST:PORT")


def trigger(args):
    host, port = parse_target(args.target)
    target = args.target
    proxy = parse_proxy(args.proxy) if args.proxy else None
    # Load or derive the secret before connecting: the server's deadline
    # must not be spent on PBKDF2.
    secret = load_secret(args, target)
    field = None
    if args.protocol == "postern-1":
        try:
            field = addr_field(args.assert_addr)
        except ValueError as e:
            raise LocalError("--assert-addr %s: %s" % (args.assert_addr, e))
    conn = Conn(time.monotonic() + args.timeout)
    try:
        conn.connect(host, port, proxy)
        if args.protocol == "ostiary-4":
            salt = conn.read(OSTIARY_SALT_LEN)
            if len(salt) != OSTIARY_SALT_LEN:
                raise Done(EX_NOACK, "no salt (locked out, rate limited or busy)")
            conn.send(hmac_sha256(secret, salt))
            # Wait for the server's close so the reply is surely delivered.
            conn.read(1)
            raise Done(EX_OK, "reply sent (ostiary-4 gives no acknowledgement)")
        greeting = conn.read(GREETING_LEN)
        if len(greeting) != GREETING_LEN:
            raise Done(EX_NOACK, "no greeting (locked out, rate limited or busy)")
        if greeting[:4] != GREETING_TAG:
            raise Done(EX_NET, "connection failed: not a postern-1 server (bad greeting)")
        reply = reply_for(secret, greeting, field)
        conn.send(reply)
        ack = conn.read(ACK_LEN)
        if not ack:
            raise Done(EX_NOACK, "no acknowledgement (wrong key, locked out or refused)")
        if len(ack) != ACK_LEN:
            raise Done(EX_NOACK, "bad acknowledgement (truncated)")
        status = verify_ack(secret, greeting, reply, ack)
        if status is None:
            raise Done(EX_NOACK, "bad acknowledgement (forged or corrupted)")
        raise Done(*STATUS[status])
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Self-test against tests/vectors/*.vectors


def read_vectors(path):
    cases, cur = [], {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith("#"):
                continue
            if " = " in line:
                k, v = line.split(" = ", 1)
                cur[k] = v
            elif not line.strip() and cur:
                cases.append(cur)
                cur = {}
    if cur:
        cases.append(cur)
    return cases


def selftest(vdir):
    results = []

    def check(name, got, want):
        ok = got == want
        results.append(ok)
        if ok:
            print("ok   %s" % name)
        else:
            print("FAIL %s\n     got  %s\n     want %s" % (name, got, want))

    def hx(b):
        return b.hex() if isinstance(b, (bytes, bytearray)) else str(b)

    def attempt(fn, *a):
        try:
            return hx(fn(*a))
        except (LocalError, ValueError) as e:
            return "(error: %s)" % e

    for c in read_vectors(os.path.join(vdir, "postern-1.vectors")):
        n = "postern-1 case %s" % c.get("case", "?")
        key = bytes.fromhex(c["key_hex"])
        g = bytes.fromhex(c["greeting"])
        r = bytes.fromhex(c["reply"])
        check(n + " key", attempt(key_from_b64, c["key"]), c["key_hex"])
        check(n + " addr_field", attempt(addr_field, c["addr"]), c["addr_field"])
        check(n + " reply", hx(reply_for(key, g, bytes.fromhex(c["addr_field"]))), c["reply"])
        for status, name in ((1, "started"), (2, "already_active"), (3, "refused"), (4, "failed")):
            want = c["ack_" + name]
            check(n + " ack_" + name, hx(ack_for(key, g, r, status)), want)
            check(n + " verify ack_" + name, verify_ack(key, g, r, bytes.fromhex(want)), status)
        started = bytearray.fromhex(c["ack_started"])
        forged = bytes([2]) + bytes(started[1:])
        check(n + " forged status rejected", verify_ack(key, g, r, forged), None)
        started[-1] ^= 1
        check(n + " flipped mac rejected", verify_ack(key, g, r, bytes(started)), None)

    for c in read_vectors(os.path.join(vdir, "ostiary-4.vectors")):
        check("ostiary-4 case %s reply" % c.get("case", "?"),
              hx(hmac_sha256(c["password"].encode(), bytes.fromhex(c["salt"]))), c["reply"])

    for c in read_vectors(os.path.join(vdir, "kdf.vectors")):
        check("kdf salt", hx(passphrase_salt(c["host"], c["action"])), c["salt"])
        check("kdf iterations", c["iterations"], str(PBKDF2_ITERATIONS))
        check("kdf passphrase_key",
              hx(key_from_passphrase(c["passphrase"].encode(), c["host"], c["action"])),
              hx(key_from_b64(c["passphrase_key"])))
        check("kdf fleet_key",
              hx(key_from_master(key_from_b64(c["master"]), c["host"], c["action"])),
              hx(key_from_b64(c["fleet_key"])))

    check("hmac rfc4231 case 2", hx(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    check("hmac rfc4231 case 6",
          hx(hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")),
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    for text, want in (
            ("::1", "00000000000000000000000000000001"),
            ("2001:db8::", "20010db8000000000000000000000000"),
            ("fe80::1:2", "fe800000000000000000000000010002"),
            ("1:2:3:4:5:6:7:8", "00010002000300040005000600070008"),
            ("1:2:3:4:5:6:7::", "00010002000300040005000600070000"),
            ("::ffff:192.0.2.1", "00000000000000000000ffffc0000201"),
            ("64:ff9b::198.51.100.7", "0064ff9b0000000000000000c6336407"),
            ("2001:DB8:0:0:0:0:0:42", "20010db8000000000000000000000042"),
            ("10.1.2.3", "00000000000000000000ffff0a010203")):
        check("addr " + text, attempt(addr_field, text), want)
    for text in ("1:2:3:4:5:6:7:8:9", "1::2::3", "12345::1", ":1:2:3:4:5:6:7",
                 "1:2:3:4:5:6:7:", "fe80::1%eth0", "1.2.3", "1.2.3.256", "01.2.3.4",
                 "1.2.3.4.5", "::1.2.3", "g::1", "::", "0.0.0.0", "1:2:3:4:5:6:7:8::"):
        check("addr %s rejected" % text,
              "rejected" if attempt(addr_field, text).startswith("(error") else "accepted",
              "rejected")
    for text in ("Zm9v", "!!!!", "Zm9=v", "Zh==",
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="):
        check("base64 %s rejected" % text,
              "rejected" if attempt(key_from_b64, text).startswith("(error") else "accepted",
              "rejected")
    check("base64 unpadded with whitespace",
          attempt(key_from_b64, "  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n"),
          "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")

    passed = sum(results)
    print("%d passed, %d failed" % (passed, len(results) - passed))
    return 0 if all(results) else 1


# ---------------------------------------------------------------------------
# Command line


class Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write("%s: %s\nrun \"%s help\" for usage\n" % (PROG, message, PROG))
        sys.exit(EX_USAGE)


def positive_number(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds")
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError("must be between 0 and 86400 seconds")
    return v


def build_parser():
    p = Parser(prog=PROG, add_help=False)
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("trigger", add_help=False)
    t.add_argument("target")
    t.add_argument("--key-file")
    t.add_argument("--key-env")
    t.add_argument("--passphrase", action="store_true")
    t.add_argument("--master")
    t.add_argument("--host-name")
    t.add_argument("--action")
    t.add_argument("--assert-addr")
    t.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT)
    t.add_argument("--protocol", choices=["postern-1", "ostiary-4"], default="postern-1")
    t.add_argument("--password-file")
    t.add_argument("--proxy")
    sub.add_parser("keygen", add_help=False)
    s = sub.add_parser("selftest", add_help=False)
    s.add_argument("vectors_dir")
    for name in ("help", "-h", "--help"):
        sub.add_parser(name, add_help=False)
    return p


def check_combination(a):
    sources = sum(bool(x) for x in (a.key_file, a.key_env, a.passphrase, a.master))
    if a.protocol == "ostiary-4":
        if sources or a.host_name or a.action:
            raise LocalError("ostiary-4 takes a password (--password-file), not a key")
        if a.assert_addr:
            raise LocalError("ostiary-4 cannot assert an address")
        return
    if a.password_file:
        raise LocalError("--password-file is for --protocol ostiary-4")
    if sources > 1:
        raise LocalError("give one key source: --key-file, --key-env, --passphrase or --master")
    if a.passphrase or a.master:
        if not (a.host_name and a.action):
            raise LocalError("--passphrase and --master need --host-name and --action")
    elif a.host_name or a.action:
        raise LocalError("--host-name and --action go with --passphrase or --master")
    if a.key_env is not None and not (a.key_env.replace("_", "a").isalnum()
                                      and a.key_env.isascii() and not a.key_env[:1].isdigit()):
        raise LocalError("--key-env needs a variable name")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stderr.write(USAGE)
        return EX_USAGE
    if argv[0] in ("help", "-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
            print(base64.b64encode(os.urandom(32)).decode("ascii"))
            return 0
        if args.command == "selftest":
            return selftest(args.vectors_dir)
        check_combination(args)
        trigger(args)
    except LocalError as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        return EX_USAGE
    except Done as d:
        print("%s: %s" % (args.target, d.message))
        return d.code
    except KeyboardInterrupt:
        return 130
    return EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
