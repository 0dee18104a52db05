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
import select
import socket
import stat
import sys
import time

PROG = "postern.py"
DEFAULT_PORT = 7001
DEFAULT_TIMEOUT = 30.0
# The server sends the ack within 300 s of the reply (wire::ACK_DEADLINE_SECS):
# a gate's run may take that long.
DEFAULT_ACK_TIMEOUT = 300.0
# On a terminal, one line after this long without an ack.
WAIT_NOTICE_AFTER = 1.0
PBKDF2_ITERATIONS = 600000
MAX_PASSWORD_LEN = 1024

GREETING_TAG = b"PST2"
GREETING_LEN = 36
ADDR_LEN = 16
REPLY_LEN = 48
ACK_BODY_LEN = 6
ACK_LEN = 38
OSTIARY_SALT_LEN = 32

REPLY_LABEL = b"PST2-R\0"
ACK_LABEL = b"PST2-A\0"
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

# Ack statuses: byte -> (name, exit code). 5 and 6 answer closing actions.
STATUS = {
    1: ("started", EX_OK),
    2: ("already-active", EX_OK),
    3: ("refused", EX_REFUSED),
    4: ("failed", EX_FAILED),
    5: ("closed", EX_OK),
    6: ("not-open", EX_OK),
}

# "close HOST GATE" triggers GATE's closing action, named GATE + this
# unless --action names it.
CLOSE_SUFFIX = ".close"

# Ack reasons: byte -> (name, phrase). Unknown bytes are shown as "reason N".
REASONS = {
    0: ("none", "no reason given"),
    1: ("cooldown", "cooling down"),
    2: ("busy", "the server is busy"),
    3: ("address-binding", "the asserted address is not this connection's source (bind_source)"),
    4: ("address-not-allowed", "the asserted address cannot be acted for"),
    5: ("open-for-other-address", "it is open for another address"),
    6: ("config-changed", "the server's config changed; try again"),
    7: ("shutting-down", "the server is shutting down"),
    8: ("addresses-full", "the gate is open for as many addresses as it allows"),
    16: ("spawn-failed", "the program could not be started"),
    17: ("run-failed", "the run command failed"),
    18: ("run-timed-out", "the run command timed out"),
    19: ("serve-exited", "the served program exited at once"),
    20: ("state-unwritable", "the server could not record the gate"),
}

NOT_POSTERN_2 = ("not a postern-2 greeting: the port looks like an ostiary-4 or other service; "
                 "try --protocol ostiary-4")

USAGE = """\
usage:
  {p} trigger HOST[:PORT] [ACTION] [options]
  {p} close HOST[:PORT] GATE [options]
                               close gate GATE now with the key of its closing
                               action, GATE.close (or --action NAME)
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
  --timeout SECS        bound for connect and challenge, each (default {t:g})
  --ack-timeout SECS    bound for the acknowledgement (default {a:g}: the server
                        answers within 300 s, a gate's run may take that long)
  --proxy URL           http://HOST:PORT (CONNECT) or socks5://HOST:PORT

HOST[:PORT]: a name, a.b.c.d, [v6] or [v6]:port; the default port is {d}.
Prompts read the terminal with echo off, or one line of standard input when
standard input is not a terminal.

exit codes: 0 accepted (started, already active, closed, not open;
ostiary-4: reply sent), 1 local error (key, password, terminal),
2 no acknowledgement, 3 network error or timeout, 4 acknowledged but
refused, 5 acknowledged but failed to start (close: the server started or
kept the gate open, so the key was an opening action's), 64 usage error.
""".format(p=PROG, t=DEFAULT_TIMEOUT, a=DEFAULT_ACK_TIMEOUT, d=DEFAULT_PORT)


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


B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


KEY_TEXT_SPACE = b" \t\r\n"


def key_from_b64(text, what="key"):
    """Key text (str or bytes) -> 32-byte key: surrounding ASCII space,
    tab, CR and LF ignored (no other whitespace); the rest standard base64
    (A-Z a-z 0-9 + /), padding optional but exactly right if present,
    canonical trailing bits, exactly 32 bytes. Messages never include the
    input."""
    prefix = "" if what == "key" else what + ": "
    bad = LocalError("%skey is not valid base64; generate one with `%s keygen`" % (prefix, PROG))
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    t = text.strip(KEY_TEXT_SPACE)
    body = t.rstrip(b"=")
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
    raw = base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    if base64.b64encode(raw).rstrip(b"=") != body:
        raise bad
    return raw


def normalise_host(host):
    """The host name as it goes into a salt or fleet message (bytes):
    "[v6]" or "[v6]:port" -> v6; a name or IPv4 with exactly one ':' loses
    ":port"; then one trailing "." goes; then ASCII letters are lower-cased,
    other bytes unchanged. No IPv6 re-compression."""
    if isinstance(host, str):
        host = host.encode("utf-8", "surrogateescape")
    if host.startswith(b"["):
        end = host.find(b"]")
        host = host[1:end] if end >= 0 else host[1:]
    elif host.count(b":") == 1:
        host = host.split(b":")[0]
    if host.endswith(b"."):
        host = host[:-1]
    return host.lower()  # bytes.lower() changes A-Z only


def text_bytes(t):
    return t if isinstance(t, bytes) else t.encode("utf-8", "surrogateescape")


def passphrase_salt(host, action):
    return hashlib.sha256(PASSPHRASE_LABEL + normalise_host(host) + b"\0"
                          + text_bytes(action)).digest()[:8]


def key_from_passphrase(passphrase, host, action):
    return hashlib.pbkdf2_hmac("sha256", passphrase, passphrase_salt(host, action),
                               PBKDF2_ITERATIONS, 32)


def key_from_master(master, host, action):
    return hmac_sha256(master, FLEET_LABEL, normalise_host(host), b"\0", text_bytes(action))


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
    ::ffff:a.b.c.d, IPv6 as is. Encoding only: see assert_field."""
    if text in (None, "", "none"):
        return bytes(ADDR_LEN)
    ip = parse_ip(text)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


def why_not_assertable(field):
    """None if the address in `field` may be asserted, else why not. As the
    server (wire::asserted_allowed): the unspecified addresses, the IPv4
    broadcast, multicast, IPv6 link-local, IPv4-compatible ::a.b.c.d
    (except ::1), and the IPv4-mapped forms of the IPv4 ones."""
    if field == bytes(ADDR_LEN):
        return "the unspecified address cannot be asserted; omit --assert-addr"
    if field[:12] == bytes(10) + b"\xff\xff":
        v4 = field[12:]
        if v4 == bytes(4):
            return "the unspecified address cannot be asserted; omit --assert-addr"
        if v4 == b"\xff" * 4:
            return "the broadcast address cannot be asserted"
        if 224 <= v4[0] <= 239:
            return "a multicast address cannot be asserted"
        return None
    if field[0] == 0xFF:
        return "a multicast address cannot be asserted"
    if field[0] == 0xFE and field[1] & 0xC0 == 0x80:
        return "a link-local address cannot be asserted (there is no room for a zone)"
    if field[:12] == bytes(12) and field != bytes(15) + b"\x01":
        return "an IPv4-compatible address (::a.b.c.d) cannot be asserted; write a.b.c.d"
    return None


def assert_field(text):
    """The field for --assert-addr TEXT; ValueError if it cannot be asserted."""
    field = addr_field(text)
    if text not in (None, "", "none"):
        why = why_not_assertable(field)
        if why:
            raise ValueError(why)
    return field


def reply_for(key, greeting, field):
    return field + hmac_sha256(key, REPLY_LABEL, greeting[4:], field)


def ack_body(status, reason, seconds):
    return bytes([status, reason]) + seconds.to_bytes(4, "big")


def ack_for(key, greeting, reply, status, reason, seconds):
    body = ack_body(status, reason, seconds)
    return body + hmac_sha256(key, ACK_LABEL, greeting, reply, body)


BAD_MAC = "bad-mac"


def verify_ack(key, greeting, reply, ack):
    """(status, reason, seconds) of a genuine ack; BAD_MAC if the MAC does
    not verify (forged or corrupted); None for a genuine ack with a status
    this client does not know. The MAC is compared in constant time."""
    if len(ack) != ACK_LEN:
        return BAD_MAC
    body = ack[:ACK_BODY_LEN]
    want = hmac_sha256(key, ACK_LABEL, greeting, reply, body)
    if not hmac.compare_digest(want, ack[ACK_BODY_LEN:]):
        return BAD_MAC
    if body[0] not in STATUS:
        return None
    return body[0], body[1], int.from_bytes(body[2:], "big")


def is_postern2_tag(first4):
    """Whether the first four bytes read are the postern-2 tag."""
    return hmac.compare_digest(first4, GREETING_TAG) if len(first4) == 4 else False


def reason_name(reason):
    return REASONS[reason][0] if reason in REASONS else "unknown"


def reason_phrase(reason):
    return REASONS[reason][1] if reason in REASONS else "reason %d" % reason


def duration(n):
    """Seconds as a short span: "40 s", "15 min" (rounded up), "2 h", "1 h 5 min"."""
    if n < 60:
        return "%d s" % n
    m = (n + 59) // 60
    if m < 60:
        return "%d min" % m
    h, m = divmod(m, 60)
    return "%d h %d min" % (h, m) if m else "%d h" % h


def until(n, now=None):
    """Local HH:MM, n seconds from now ("?" past what the platform can show)."""
    try:
        return time.strftime("%H:%M", time.localtime((time.time() if now is None else now) + n))
    except (OverflowError, OSError, ValueError):
        return "?"


def answer_line(status, reason, seconds, name, now=None, closing=False):
    """(exit code, text after "TARGET: ") for a verified ack. With
    closing (the close command), a gate started or left open is a failure:
    the key was an opening action's."""
    name = name or "the action"
    code = STATUS[status][1]
    if closing and status in (1, 2):
        code = EX_FAILED
    if status == 1:
        if seconds:
            return code, "accepted; %s open for %s (until %s)" % (name, duration(seconds), until(seconds, now))
        return code, "accepted; %s started" % name
    if status == 2:
        if seconds:
            return code, "accepted; %s already open, %s left (until %s)" % (
                name, duration(seconds), until(seconds, now))
        return code, "accepted; %s already running" % name
    if status == 3:
        if reason == 1 and seconds:
            return code, "refused: cooling down, try again in %s" % duration(seconds)
        if reason == 5 and seconds:
            return code, "refused: it is open for another address, closes in %s" % duration(seconds)
        if reason == 8 and seconds:
            return code, ("refused: it is open for as many addresses as it allows; "
                          "the first closes in %s" % duration(seconds))
        return code, "refused: %s" % reason_phrase(reason)
    if status == 5:
        return code, "closed; %s closed now" % name
    if status == 6:
        return code, "not open; %s was not open, nothing to close" % name
    return code, "failed: %s" % reason_phrase(reason)


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
    """A line from the terminal without echo, or from a non-terminal stdin,
    as bytes exactly as typed (no Unicode normalisation)."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt).encode("utf-8", "surrogateescape")
    line = sys.stdin.buffer.readline()
    return line[:-1] if line.endswith(b"\n") else line


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
            pw = env.encode("utf-8", "surrogateescape")
        else:
            pw = prompt_secret("password for %s: " % target)
            if not pw:
                raise LocalError("empty password")
        if len(pw) > MAX_PASSWORD_LEN:
            raise LocalError("the password is longer than %d bytes" % MAX_PASSWORD_LEN)
        return pw
    if args.key_file:
        return key_from_b64(read_private(args.key_file), args.key_file)
    if env is not None:
        return key_from_b64(env, "$" + args.key_env)
    if args.master:
        master = key_from_b64(read_private(args.master), args.master)
        return key_from_master(master, host_name, args.action)
    if args.passphrase:
        pp = prompt_secret("passphrase for %s: " % target)
        if not pp:
            raise LocalError("empty passphrase")
        return key_from_passphrase(pp, host_name, args.action)
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
    the challenge, the reply) is bounded by `timeout` seconds, the ack by
    its own, and reads are exact: short only when the peer closed."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.sock = None
        self.deadline = None

    def start(self, timeout=None):
        self.deadline = time.monotonic() + (self.timeout if timeout is None else timeout)

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

    def quiet_for(self, secs):
        """Whether nothing (no byte, no close) arrives within secs."""
        try:
            r, _, _ = select.select([self.sock], [], [], secs)
        except (OSError, ValueError):
            return False
        return not r

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


def wait_notice(name, closing=None):
    """The one line shown on a terminal while the server works."""
    if closing:
        line = "waiting for the server to close %s\u2026\n" % closing
    else:
        line = "waiting for the server to start %s\u2026\n" % (name or "the action")
    try:
        sys.stderr.flush()
        sys.stderr.buffer.write(line.encode("utf-8"))
        sys.stderr.buffer.flush()
    except (AttributeError, OSError):
        pass


def trigger(args):
    """One exchange; always ends by raising Done."""
    host, port = parse_target(args.target)
    proxy = parse_proxy(args.proxy) if args.proxy else None
    field = None
    if args.protocol == "postern-2":
        try:
            field = assert_field(args.assert_addr)
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
        # The tag first: an ostiary-4 server sends 32 bytes and waits, so
        # reading 36 would only end in the timeout.
        tag = conn.read(len(GREETING_TAG), "timed out after %s waiting for the challenge" % t,
                        CLOSED_EARLY)
        if not is_postern2_tag(tag):
            raise Done(EX_NET, NOT_POSTERN_2)
        greeting = tag + conn.read(GREETING_LEN - len(GREETING_TAG),
                                   "timed out after %s waiting for the challenge" % t, CLOSED_EARLY)
        reply = reply_for(secret, greeting, field)
        conn.start()
        conn.send(reply)
        conn.start(args.ack_timeout)
        if (sys.stderr.isatty() and args.ack_timeout > WAIT_NOTICE_AFTER
                and conn.quiet_for(WAIT_NOTICE_AFTER)):
            wait_notice(args.action, args.gate)
        # A close, even after part of an ack, is the server's way of saying no.
        # Exactly 38 bytes are read; anything after them is never looked at.
        ack = conn.read(ACK_LEN, "timed out after %s waiting for the acknowledgement"
                        % secs(args.ack_timeout), NO_ACK)
        answer = verify_ack(secret, greeting, reply, ack)
        if answer == BAD_MAC:
            raise Done(EX_NOACK, "no acknowledgement (the acknowledgement did not verify: "
                                 "wrong key or tampering)")
        if answer is None:
            raise Done(EX_NOACK, "no acknowledgement (status %d is not one this client knows)" % ack[0])
        raise Done(*answer_line(answer[0], answer[1], answer[2], args.gate or args.action,
                                closing=bool(args.gate)))
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


# The acks every case of postern-2.vectors carries (its header).
VECTOR_ACKS = (("started", 1, 0, 900), ("already_active", 2, 0, 600),
               ("refused", 3, 1, 40), ("failed", 4, 17, 0),
               ("closed", 5, 0, 0), ("not_open", 6, 0, 0))


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

    def verdict(answer):
        if isinstance(answer, tuple):
            return "status=%d reason=%d seconds=%d" % answer
        return "reject"

    files = ("postern-2.vectors", "postern-2-negative.vectors", "ostiary-4.vectors", "kdf.vectors")
    missing = [f for f in files if not os.path.isfile(os.path.join(vdir, f))]
    if missing:
        raise LocalError("%s: not found in %s" % (", ".join(missing), vdir))

    for c in read_vectors(os.path.join(vdir, "postern-2.vectors")):
        n = "postern-2 case %s" % c.get("case", "?")
        key = bytes.fromhex(c["key_hex"])
        g = bytes.fromhex(c["greeting"])
        r = bytes.fromhex(c["reply"])
        check(n + " greeting tag", is_postern2_tag(g[:4]), True)
        check(n + " key", attempt(key_from_b64, c["key"]), c["key_hex"])
        check(n + " addr_field", attempt(assert_field, c["addr"]), c["addr_field"])
        check(n + " mac_input", hx(REPLY_LABEL + g[4:] + bytes.fromhex(c["addr_field"])), c["mac_input"])
        check(n + " reply", hx(reply_for(key, g, bytes.fromhex(c["addr_field"]))), c["reply"])
        for name, status, reason, seconds in VECTOR_ACKS:
            want = c["ack_" + name]
            check(n + " ack_" + name, hx(ack_for(key, g, r, status, reason, seconds)), want)
            check(n + " verify ack_" + name, verify_ack(key, g, r, bytes.fromhex(want)),
                  (status, reason, seconds))
        started = bytearray.fromhex(c["ack_started"])
        forged = bytes([2]) + bytes(started[1:])
        check(n + " forged status rejected", verify_ack(key, g, r, forged), BAD_MAC)
        started[-1] ^= 1
        check(n + " flipped mac rejected", verify_ack(key, g, r, bytes(started)), BAD_MAC)

    for c in read_vectors(os.path.join(vdir, "postern-2-negative.vectors")):
        n = "negative case %s (%s)" % (c.get("case", "?"), c.get("check", "?"))
        kind, expect = c.get("check"), c.get("expect")
        if kind == "ack":
            key, g, r, a = (bytes.fromhex(c[f]) for f in ("key_hex", "greeting", "reply", "ack"))
            answer = verify_ack(key, g, r, a)
            check(n, verdict(answer), expect)
            if isinstance(answer, tuple) and answer[1] not in REASONS:
                check(n + " shown as a number", answer_line(*answer, name=None)[1],
                      "refused: reason %d" % answer[1])
        elif kind == "greeting":
            check(n, "accept" if is_postern2_tag(bytes.fromhex(c["greeting"])[:4]) else "reject", expect)
        elif kind == "key":
            got = attempt(key_from_b64, bytes.fromhex(c["text_hex"]))
            check(n, "reject" if got.startswith("(error") else got, expect)
        elif kind == "addr":
            check(n + " field", attempt(addr_field, c["addr"]), c["addr_field"])
            got = attempt(assert_field, c["addr"])
            check(n + " " + c["addr"], "refuse" if got.startswith("(error") else "allow", expect)
        else:
            check(n, "unknown check", "ack, greeting, key or addr")

    for c in read_vectors(os.path.join(vdir, "ostiary-4.vectors")):
        check("ostiary-4 case %s reply" % c.get("case", "?"),
              hx(hmac_sha256(c["password"].encode(), bytes.fromhex(c["salt"]))), c["reply"])

    for c in read_vectors(os.path.join(vdir, "kdf.vectors")):
        n = "kdf case %s" % c.get("case", "?")
        pw = bytes.fromhex(c["passphrase_hex"])
        if "passphrase" in c:
            check(n + " passphrase bytes", hx(c["passphrase"].encode("utf-8")), c["passphrase_hex"])
        check(n + " host_normalised", normalise_host(c["host"]), c["host_normalised"].encode("utf-8"))
        check(n + " salt", hx(passphrase_salt(c["host"], c["action"])), c["salt"])
        check(n + " iterations", c["iterations"], str(PBKDF2_ITERATIONS))
        check(n + " passphrase_key", hx(key_from_passphrase(pw, c["host"], c["action"])),
              hx(key_from_b64(c["passphrase_key"])))
        check(n + " fleet_key",
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
                 "1.2.3.4.5", "::1.2.3", "g::1", "::", "0.0.0.0", "1:2:3:4:5:6:7:8::",
                 "febf::1", "::ffff:239.1.2.3", "::0.0.0.2"):
        check("addr %s rejected" % text,
              "rejected" if attempt(assert_field, text).startswith("(error") else "accepted",
              "rejected")
    for text in ("fec0::1", "::ffff:1.2.3.4", "223.255.255.255", "240.0.0.1", "fe7f::1"):
        check("addr %s allowed" % text,
              "rejected" if attempt(assert_field, text).startswith("(error") else "accepted",
              "accepted")
    for text in ("Zm9v", "!!!!", "Zm9=v", "Zh==",
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
                 "\x0bAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\x0c"):
        check("base64 %r rejected" % text,
              "rejected" if attempt(key_from_b64, text).startswith("(error") else "accepted",
              "rejected")
    check("base64 unpadded with whitespace",
          attempt(key_from_b64, "  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\r\n"),
          "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    for host, want in (("Web-17.Example.COM.", b"web-17.example.com"), ("[2001:DB8::1]", b"2001:db8::1"),
                       ("2001:DB8::1", b"2001:db8::1"), ("192.0.2.1:7001", b"192.0.2.1"),
                       ("h..", b"h."), ("W\u00c9b", b"w\xc3\x89b")):
        check("host %s normalised" % host, normalise_host(host), want)
    for n, want in ((0, "0 s"), (59, "59 s"), (60, "1 min"), (61, "2 min"), (900, "15 min"),
                    (3599, "1 h"), (3600, "1 h"), (3601, "1 h 1 min"), (5400, "1 h 30 min"),
                    (7200, "2 h"), (90000, "25 h")):
        check("duration %d" % n, duration(n), want)
    for (st, why, sec), want in (
            ((1, 0, 0), (EX_OK, "accepted; sshd started")),
            ((2, 0, 0), (EX_OK, "accepted; sshd already running")),
            ((3, 1, 40), (EX_REFUSED, "refused: cooling down, try again in 40 s")),
            ((3, 5, 120), (EX_REFUSED, "refused: it is open for another address, closes in 2 min")),
            ((3, 2, 0), (EX_REFUSED, "refused: the server is busy")),
            ((3, 4, 0), (EX_REFUSED, "refused: the asserted address cannot be acted for")),
            ((4, 17, 0), (EX_FAILED, "failed: the run command failed")),
            ((4, 99, 0), (EX_FAILED, "failed: reason 99")),
            ((5, 0, 0), (EX_OK, "closed; sshd closed now")),
            ((6, 0, 0), (EX_OK, "not open; sshd was not open, nothing to close")),
            ((3, 8, 90), (EX_REFUSED, "refused: it is open for as many addresses as it allows; "
                                      "the first closes in 2 min")),
            ((3, 8, 0), (EX_REFUSED, "refused: the gate is open for as many addresses as it allows"))):
        check("answer %d/%d/%d" % (st, why, sec), answer_line(st, why, sec, "sshd"), want)
    for st, want in ((1, EX_FAILED), (2, EX_FAILED), (5, EX_OK), (6, EX_OK), (3, EX_REFUSED)):
        check("close answer %d" % st, answer_line(st, 0, 0, "sshd", closing=True)[0], want)
    check("answer with no action name", answer_line(1, 0, 0, None)[1], "accepted; the action started")

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
    t.add_argument("--ack-timeout", type=positive_number, default=DEFAULT_ACK_TIMEOUT)
    t.add_argument("--protocol", choices=["postern-2", "ostiary-4"], default="postern-2")
    t.add_argument("--proxy")
    c = sub.add_parser("close", add_help=False, parents=[t])
    c.set_defaults(closing=True)
    sub.add_parser("keygen", add_help=False)
    s = sub.add_parser("selftest", add_help=False)
    s.add_argument("vectors_dir")
    return p


def check_combination(a):
    """Usage rules, as the Rust client has them."""
    a.gate = None
    if getattr(a, "closing", False):
        # close HOST GATE: the closing action is GATE.close unless --action.
        if a.positional_action is None:
            raise UsageError("close needs the GATE to close")
        a.gate = a.positional_action
        a.positional_action = None
        if a.action is None:
            a.action = a.gate + CLOSE_SUFFIX
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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # The ACTION positional may come after options (as with the other
    # clients); argparse would only take it before them.
    if (args.command in ("trigger", "close") and len(extra) == 1 and not extra[0].startswith("-")
            and args.positional_action is None):
        args.positional_action = extra[0]
    elif extra:
        parser.error("unrecognized arguments: %s" % " ".join(extra))
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
