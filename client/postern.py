#!/usr/bin/env python3
"""postern.py: reference postern-2 / ostiary-4 client, one file.

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
DEFAULT_TIMEOUT = 30.0
PBKDF2_ITERATIONS = 600000
MAX_PASSWORD_LEN = 1024

GREETING_TAG = b"PST2"
GREETING_LEN = 36
ADDR_LEN = 16
REPLY_LEN = 48
ACK_LEN = 33
OSTIARY_SALT_LEN = 32

REPLY_LABEL = b"postern-2 reply\0"
ACK_LABEL = b"postern-2 ack\0"
PASSPHRASE_LABEL = b"postern-2 passphrase\0"
FLEET_LABEL = b"postern-2 fleet\0"

# Exit codes (PROTOCOL.md, "Client exit codes").
EX_OK = 0
EX_LOCAL = 1
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
  {p} trigger HOST[:PORT] [ACTION] [options]
  {p} keygen                   print a fresh base64 key
  {p} selftest VECTORS_DIR     check the computations against the test vectors

key sources (choose one; default: prompt for the base64 key):
  --key-file FILE       base64 key in FILE (must be chmod 600)
  --key-env VAR         base64 key (ostiary-4: the password) in variable VAR
  --passphrase          prompt for a passphrase; needs --action (and --host-name)
  --master FILE         derive from the fleet master key in FILE; needs --action
  --password-file FILE  ostiary-4 password in FILE (one trailing newline dropped)
  --action NAME         action name for derivation (also the 2nd positional)
  --host-name NAME      host name for derivation (default: HOST as given)

options:
  --protocol P          postern-2 (default) or ostiary-4
  --assert-addr ADDR    ask the server to bind the action to ADDR (postern-2)
  --timeout SECS        bound for connect, challenge and ack, each (default {t:g})
  --proxy URL           http://HOST:PORT (CONNECT) or socks5://HOST:PORT

HOST[:PORT]: a name, a.b.c.d, [v6] or [v6]:port; the default port is {d}.
Prompts read the terminal with echo off, or one line of standard input when
standard input is not a terminal.

exit codes: 0 accepted (started, already active; ostiary-4: reply sent),
1 local error (key, password, terminal), 2 no acknowledgement,
3 network error or timeout, 4 acknowledged but refused,
5 acknowledged but failed to start, 64 usage error.
""".format(p=PROG, t=DEFAULT_TIMEOUT, d=DEFAULT_PORT)


class Done(Exception):
    """Ends a trigger: the exit code and the one line to print."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


class LocalError(Exception):
    """A key, password or terminal could not be used (exit 1)."""


class UsageError(Exception):
    """The command line is wrong (exit 64)."""


# ---------------------------------------------------------------------------
# Primitives


def hmac_sha256(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


B64_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def key_from_b64(text, what="key"):
    """Base64 text -> 32-byte key, with the daemon's rules: standard
    alphabet, padding optional, canonical trailing bits, surrounding
    whitespace ignored. Messages never include the input."""
    prefix = "" if what == "key" else what + ": "
    bad = LocalError("%skey is not valid base64; generate one with `%s keygen`" % (prefix, PROG))
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
        raise LocalError("%skey decodes to %d bytes, but must be exactly 32; generate one with `%s keygen`"
                         % (prefix, n, PROG))
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
        raise LocalError("cannot read %s: %s" % (path, (e.strerror or str(e)).lower()))
    if not stat.S_ISREG(st.st_mode):
        raise LocalError("cannot read %s: not a regular file" % path)
    # Windows has no such mode bits; everywhere else they are checked.
    if os.name != "nt" and st.st_mode & 0o077:
        raise LocalError("%s is readable by group or others; run chmod 600 %s" % (path, path))


def read_private(path):
    check_private(path)
    try:
        with open(path, "rb") as f:
            return f.read(65536)
    except OSError as e:
        raise LocalError("cannot read %s: %s" % (path, (e.strerror or str(e)).lower()))


def prompt_secret(prompt):
    """A line from the terminal without echo, or from a non-terminal stdin."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def load_secret(args, target, host_name):
    """The key (postern-2) or password (ostiary-4) bytes."""
    env = None
    if args.key_env:
        env = os.environ.pop(args.key_env, None)
        if not env:
            raise LocalError("environment variable %s is not set" % args.key_env)
    if args.protocol == "ostiary-4":
        if args.password_file:
            pw = read_private(args.password_file)
            if pw.endswith(b"\r\n"):
                pw = pw[:-2]
            elif pw.endswith(b"\n"):
                pw = pw[:-1]
            if not pw:
                raise LocalError("%s is empty" % args.password_file)
        elif env is not None:
            pw = env.encode("utf-8")
        else:
            pw = prompt_secret("password for %s: " % target).encode("utf-8")
            if not pw:
                raise LocalError("empty password")
        if len(pw) > MAX_PASSWORD_LEN:
            raise LocalError("the password is longer than %d bytes" % MAX_PASSWORD_LEN)
        return pw
    if args.key_file:
        text = read_private(args.key_file).decode("ascii", "replace")
        return key_from_b64(text, args.key_file)
    if env is not None:
        return key_from_b64(env, "$" + args.key_env)
    if args.master:
        master = key_from_b64(read_private(args.master).decode("ascii", "replace"), args.master)
        return key_from_master(master, host_name, args.action)
    if args.passphrase:
        pp = prompt_secret("passphrase for %s: " % target)
        if not pp:
            raise LocalError("empty passphrase")
        return key_from_passphrase(pp.encode("utf-8"), host_name, args.action)
    text = prompt_secret("base64 key for %s: " % target)
    if not text:
        raise LocalError("empty key")
    return key_from_b64(text)


# ---------------------------------------------------------------------------
# Network


def parse_target(text, default_port=DEFAULT_PORT):
    """HOST, HOST:PORT, [V6], [V6]:PORT or a bare IPv6 address."""
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise UsageError("%s: not a host name or address" % text)
        host = text[1:end]
        if end + 1 < len(text):
            port = text[end + 2:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or host.startswith("-") or any(
            not (c.isascii() and (c.isalnum() or c in "._:%-")) for c in host):
        raise UsageError("%s: not a host name or address" % text)
    if not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise UsageError("bad port in %s: use a number from 1 to 65535" % text)
    return host, int(port)


def secs(t):
    """Seconds as people write them: "30 s", "0.5 s"."""
    return "%d s" % t if t == int(t) else "%.1f s" % t


def authority(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def socks_reply_text(code):
    return {
        1: "general failure",
        2: "connection not allowed by ruleset",
        3: "network unreachable",
        4: "host unreachable",
        5: "connection refused",
        6: "TTL expired",
        7: "command not supported",
        8: "address type not supported",
    }.get(code, "unknown error")


def oserror_text(e):
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).lower()


class Conn:
    """One TCP connection. Every step (connect with any proxy handshake,
    the challenge, the reply, the ack) is bounded by `timeout` seconds,
    and reads are exact: short only when the peer closed."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.sock = None
        self.deadline = None

    def start(self):
        self.deadline = time.monotonic() + self.timeout

    def remaining(self):
        return max(self.deadline - time.monotonic(), 0.001)

    def connect(self, host, port, proxy):
        """Raises Done(EX_NET, ...) with the Rust client's wording."""
        self.start()
        where = authority(host, port)
        if proxy is None:
            self.sock = self._tcp(host, port, where)
            return
        kind, phost, pport = proxy
        url = "%s://%s" % (kind, authority(phost, pport))
        try:
            self.sock = socket.create_connection((phost, pport), timeout=self.remaining())
        except socket.timeout:
            raise Done(EX_NET, "connection failed: proxy %s: timed out" % url)
        except OSError as e:
            raise Done(EX_NET, "connection failed: proxy %s: %s" % (url, oserror_text(e)))
        try:
            if kind == "http":
                self._http_connect(where)
            else:
                self._socks5_connect(host, port)
        except ProxyFailure as e:
            raise Done(EX_NET, "connection failed: %s (%s)" % (e, url))

    def _tcp(self, host, port, where):
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise Done(EX_NET, "connection failed: cannot resolve %s: %s" % (host, e.strerror or e))
        if not infos:
            raise Done(EX_NET, "connection failed: %s has no address" % host)
        last = None
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.remaining())
            try:
                sock.connect(addr)
                return sock
            except socket.timeout:
                sock.close()
                raise Done(EX_NET, "connection failed: timed out after %s connecting to %s"
                           % (secs(self.timeout), where))
            except ConnectionRefusedError as e:
                last = ("refused", e)
            except OSError as e:
                last = ("other", e)
            sock.close()
        if last[0] == "refused":
            raise Done(EX_NET, "connection failed: connection refused by %s" % where)
        raise Done(EX_NET, "connection failed: cannot connect to %s: %s" % (where, oserror_text(last[1])))

    def read(self, n, on_timeout, on_close):
        """Exactly n bytes. On timeout raises Done(EX_NET, on_timeout); on a
        close or reset before n bytes, returns what came if on_close is
        None, else raises Done(*on_close)."""
        buf = b""
        while len(buf) < n:
            self.sock.settimeout(self.remaining())
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise Done(EX_NET, "connection failed: " + on_timeout)
            except ConnectionError:
                chunk = b""
            except OSError as e:
                raise Done(EX_NET, "connection failed: " + oserror_text(e))
            if not chunk:
                if on_close is None:
                    return buf
                raise Done(*on_close)
            buf += chunk
        return buf

    def send(self, data):
        self.sock.settimeout(self.remaining())
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Done(EX_NET, "connection failed: timed out after %s sending the reply"
                       % secs(self.timeout))
        except ConnectionError:
            raise Done(EX_NOACK, "no acknowledgement (wrong key, locked out or refused)")
        except OSError as e:
            raise Done(EX_NET, "connection failed: " + oserror_text(e))

    def close(self):
        if self.sock is not None:
            self.sock.close()

    # Proxies. Both read their answer exactly, byte by byte where the
    # length is not known, so no challenge byte is ever swallowed.

    def _proxy_read(self, n):
        buf = b""
        while len(buf) < n:
            self.sock.settimeout(self.remaining())
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise ProxyFailure("proxy did not answer in time")
            except OSError as e:
                raise ProxyFailure("proxy handshake failed: " + oserror_text(e))
            if not chunk:
                raise ProxyFailure("proxy closed the connection during the handshake")
            buf += chunk
        return buf

    def _proxy_send(self, data):
        self.sock.settimeout(self.remaining())
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProxyFailure("proxy did not answer in time")
        except OSError as e:
            raise ProxyFailure("proxy handshake failed: " + oserror_text(e))

    def _http_connect(self, where):
        self._proxy_send(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (where, where)).encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            if len(head) >= 8192:
                raise ProxyFailure("proxy response header is longer than 8 KiB")
            head += self._proxy_read(1)
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProxyFailure("proxy did not answer with HTTP/1.x")
        if parts[1] != "200":
            raise ProxyFailure("proxy refused: HTTP %s %s" % (parts[1], parts[2] if len(parts) > 2 else ""))

    def _socks5_connect(self, host, port):
        self._proxy_send(b"\x05\x01\x00")
        hello = self._proxy_read(2)
        if hello[0] != 5:
            raise ProxyFailure("proxy did not answer as a SOCKS5 server")
        if hello[1] != 0:
            raise ProxyFailure("proxy refused: SOCKS5 authentication required (only no-auth is supported)")
        try:
            ip = ipaddress.ip_address(host)
            dest = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        except ValueError:
            name = host.encode("idna")
            if len(name) > 255:
                raise ProxyFailure("host name too long for SOCKS5")
            dest = b"\x03" + bytes([len(name)]) + name
        self._proxy_send(b"\x05\x01\x00" + dest + port.to_bytes(2, "big"))
        head = self._proxy_read(4)
        if head[0] != 5:
            raise ProxyFailure("proxy did not answer as a SOCKS5 server")
        if head[1] != 0:
            raise ProxyFailure("proxy refused: SOCKS5 %s (reply %d)" % (socks_reply_text(head[1]), head[1]))
        if head[3] == 1:
            skip = 4
        elif head[3] == 4:
            skip = 16
        elif head[3] == 3:
            skip = self._proxy_read(1)[0]
        else:
            raise ProxyFailure("proxy did not answer as a SOCKS5 server")
        self._proxy_read(skip + 2)


class ProxyFailure(Exception):
    """The proxy handshake failed; the message says how."""


def parse_proxy(url):
    for scheme in ("http", "socks5", "socks5h"):
        prefix = scheme + "://"
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if rest.endswith("/"):
                rest = rest[:-1]
            if "@" in rest:
                raise UsageError("proxy credentials are not supported; remove USER@ from the proxy URL")
            if "/" in rest:
                raise UsageError("proxy URL must be just SCHEME://HOST:PORT")
            host, port = parse_target(rest, 8080 if scheme == "http" else 1080)
            return ("http" if scheme == "http" else "socks5", host, port)
    raise UsageError("proxy must be http://HOST:PORT or socks5://HOST:PORT")


NO_ACK = (EX_NOACK, "no acknowledgement (wrong key, locked out or refused)")
CLOSED_EARLY = (EX_NET, "connection failed: server closed before sending its challenge")


def trigger(args):
    """One exchange; always ends by raising Done."""
    host, port = parse_target(args.target)
    proxy = parse_proxy(args.proxy) if args.proxy else None
    field = None
    if args.protocol == "postern-2":
        try:
            field = addr_field(args.assert_addr)
        except ValueError as e:
            raise UsageError("--assert-addr %s: %s" % (args.assert_addr, e))
    # Load or derive the secret before connecting: the server's deadline
    # must not be spent on PBKDF2.
    secret = load_secret(args, args.target, args.host_name or host)
    conn = Conn(args.timeout)
    t = secs(args.timeout)
    try:
        conn.connect(host, port, proxy)
        conn.start()
        if args.protocol == "ostiary-4":
            salt = conn.read(OSTIARY_SALT_LEN, "timed out after %s waiting for the challenge" % t,
                             CLOSED_EARLY)
            conn.start()
            conn.send(hmac_sha256(secret, salt))
            # Nothing comes back; a clean FIN tells the server the reply is whole.
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            raise Done(EX_OK, "reply sent (ostiary-4 gives no acknowledgement)")
        greeting = conn.read(GREETING_LEN, "timed out after %s waiting for the challenge" % t,
                             CLOSED_EARLY)
        if greeting[:4] != GREETING_TAG:
            raise Done(EX_NET, "connection failed: bad greeting: not a postern-2 server")
        reply = reply_for(secret, greeting, field)
        conn.start()
        conn.send(reply)
        conn.start()
        # A close, even after part of an ack, is the server's way of saying no.
        ack = conn.read(ACK_LEN, "timed out after %s waiting for the acknowledgement" % t, NO_ACK)
        status = verify_ack(secret, greeting, reply, ack)
        if status is None:
            raise Done(EX_NOACK, "no acknowledgement (the acknowledgement did not verify: "
                                 "wrong key or tampering)")
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

    for c in read_vectors(os.path.join(vdir, "postern-2.vectors")):
        n = "postern-2 case %s" % c.get("case", "?")
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
    t.add_argument("positional_action", nargs="?")
    t.add_argument("--key-file")
    t.add_argument("--key-env")
    t.add_argument("--passphrase", action="store_true")
    t.add_argument("--master")
    t.add_argument("--password-file")
    t.add_argument("--host-name")
    t.add_argument("--action")
    t.add_argument("--assert-addr")
    t.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT)
    t.add_argument("--protocol", choices=["postern-2", "ostiary-4"], default="postern-2")
    t.add_argument("--proxy")
    sub.add_parser("keygen", add_help=False)
    s = sub.add_parser("selftest", add_help=False)
    s.add_argument("vectors_dir")
    return p


def check_combination(a):
    """Usage rules, as the Rust client has them."""
    if a.positional_action is not None:
        if a.action is not None:
            raise UsageError("give the action once: ACTION or --action")
        a.action = a.positional_action
    for name in ("key_file", "key_env", "master", "password_file", "host_name", "action",
                 "assert_addr", "proxy"):
        if getattr(a, name) == "":
            raise UsageError("--%s needs a value" % name.replace("_", "-"))
    sources = sum(bool(x) for x in (a.key_file, a.key_env, a.passphrase, a.master, a.password_file))
    if sources > 1:
        raise UsageError("choose one key source: --key-file, --key-env, --passphrase, --master "
                         "or --password-file")
    derives = bool(a.passphrase or a.master)
    if a.protocol == "postern-2" and a.password_file:
        raise UsageError("--password-file is for --protocol ostiary-4")
    if a.protocol == "ostiary-4":
        if a.key_file or derives:
            raise UsageError("ostiary-4 takes a password: use --password-file, --key-env or the prompt")
        if a.assert_addr:
            raise UsageError("--assert-addr needs postern-2; ostiary-4 cannot carry an address")
    if a.host_name and not derives:
        raise UsageError("--host-name only applies to --passphrase and --master")
    if derives and not a.action:
        raise UsageError("--passphrase and --master need --action NAME")
    if a.key_env is not None and not (a.key_env.replace("_", "a").isalnum()
                                      and a.key_env.isascii() and not a.key_env[:1].isdigit()):
        raise UsageError("--key-env needs a variable name")


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
    except UsageError as e:
        sys.stderr.write("%s: %s\nrun \"%s help\" for usage\n" % (PROG, e, PROG))
        return EX_USAGE
    except LocalError as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        return EX_LOCAL
    except Done as d:
        print("%s: %s" % (args.target, d.message))
        return d.code
    except KeyboardInterrupt:
        return 130
    return EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
