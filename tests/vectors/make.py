#!/usr/bin/env python3
"""Writes the postern-2 and key-derivation test vectors.

An implementation independent of the Rust code: only Python's standard
library (hmac, hashlib, base64). Run from anywhere:

    python3 tests/vectors/make.py

and commit the result; every implementation's tests read these files.
"""
import base64
import hashlib
import hmac
import ipaddress
import os
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
TAG = b"PST2"
REPLY_LABEL = b"PST2-R\x00"
ACK_LABEL = b"PST2-A\x00"
FLEET_LABEL = b"postern-2 fleet\x00"
PASSPHRASE_LABEL = b"postern-2 passphrase\x00"
ITERATIONS = 600000


def mac(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def addr_field(addr):
    if addr == "none":
        return bytes(16)
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


def body(status, reason, seconds):
    return bytes([status, reason]) + seconds.to_bytes(4, "big")


def ack(key, greeting, reply, status, reason, seconds):
    b = body(status, reason, seconds)
    return b + mac(key, ACK_LABEL + greeting + reply + b)


def reply(key, greeting, field):
    mac_input = REPLY_LABEL + greeting[4:] + field
    assert len(mac_input) == 55
    return mac_input, field + mac(key, mac_input)


POSITIVE = [
    (bytes(32), bytes(32), "none"),
    (bytes(range(32)), bytes(range(255, 223, -1)), "203.0.113.7"),
    (bytes((3 + 7 * i) & 0xFF for i in range(32)), bytes((1 + 13 * i) & 0xFF for i in range(32)), "2001:db8::42"),
    (bytes([0xA5] * 32), bytes([0x5A] * 32), "127.0.0.1"),
]

# (name, status, reason, seconds) of the acks written for every case: one
# per status.
ACKS = [
    ("ack_started", 1, 0, 900),
    ("ack_already_active", 2, 0, 600),
    ("ack_refused", 3, 1, 40),
    ("ack_failed", 4, 17, 0),
    ("ack_closed", 5, 0, 0),
    ("ack_not_open", 6, 0, 0),
]


def write_positive():
    out = [
        "# postern-2 test vectors (PROTOCOL.md, \"Test vectors\"). One case per",
        "# blank-line-separated block of `name = value` lines; `#` starts a comment.",
        "# key: base64 of the 32-byte key (key_hex: the same bytes in hex).",
        "# greeting: the 36 bytes the server sends. addr: the asserted address, or none.",
        "# mac_input = \"PST2-R\\0\" || nonce || addr_field (55 bytes)",
        "# reply = addr_field || HMAC-SHA256(key, mac_input)",
        "# ack_* = status || reason || seconds (4 bytes, big-endian) ||",
        "#         HMAC-SHA256(key, \"PST2-A\\0\" || greeting || reply || status || reason || seconds)",
        "# ack_started: status 1, reason 0, 900 s; ack_already_active: 2, 0, 600 s;",
        "# ack_refused: 3, reason 1 (cooldown), 40 s; ack_failed: 4, reason 17 (run-failed), 0 s;",
        "# ack_closed: 5, 0, 0 s; ack_not_open: 6, 0, 0 s.",
        "",
    ]
    for i, (key, nonce, addr) in enumerate(POSITIVE, 1):
        greeting = TAG + nonce
        field = addr_field(addr)
        mi, r = reply(key, greeting, field)
        out += [
            f"case = {i}",
            f"key = {base64.b64encode(key).decode()}",
            f"key_hex = {key.hex()}",
            f"greeting = {greeting.hex()}",
            f"addr = {addr}",
            f"addr_field = {field.hex()}",
            f"mac_input = {mi.hex()}",
            f"reply = {r.hex()}",
        ]
        for name, st, why, secs in ACKS:
            out.append(f"{name} = {ack(key, greeting, r, st, why, secs).hex()}")
        out.append("")
    with open(os.path.join(HERE, "postern-2.vectors"), "w") as f:
        f.write("\n".join(out))


def write_negative():
    key, nonce, addr = POSITIVE[1]
    greeting = TAG + nonce
    _, r = reply(key, greeting, addr_field(addr))
    good = ack(key, greeting, r, 1, 0, 900)
    cases = []
    # Acks a client must refuse (exit 2), or accept as shown.
    flipped = bytearray(good)
    flipped[-1] ^= 1
    cases.append(("ack", "the ack MAC's last bit flipped", good_ack_fields(key, greeting, r, bytes(flipped)), "reject"))
    relabelled = bytearray(good)
    relabelled[0] = 2
    cases.append(("ack", "status changed after the MAC was made", good_ack_fields(key, greeting, r, bytes(relabelled)), "reject"))
    longer = bytearray(good)
    longer[5] = 0xFF
    cases.append(("ack", "seconds changed after the MAC was made", good_ack_fields(key, greeting, r, bytes(longer)), "reject"))
    cases.append(("ack", "a valid MAC over an unknown status (9)", good_ack_fields(key, greeting, r, ack(key, greeting, r, 9, 0, 0)), "reject"))
    cases.append(("ack", "a valid MAC over status 0", good_ack_fields(key, greeting, r, ack(key, greeting, r, 0, 0, 0)), "reject"))
    cases.append(("ack", "a valid MAC over status 7, the first after not-open", good_ack_fields(key, greeting, r, ack(key, greeting, r, 7, 0, 0)), "reject"))
    other = bytes([0x42] * 32)
    cases.append(("ack", "an ack made under another key", good_ack_fields(key, greeting, r, ack(other, greeting, r, 1, 0, 900)), "reject"))
    cases.append(("ack", "an ack for another reply (a replayed ack)",
                  good_ack_fields(key, greeting, r, ack(key, greeting, reply(key, greeting, addr_field("none"))[1], 1, 0, 900)), "reject"))
    cases.append(("ack", "a valid MAC over an unknown reason (200): accepted, the reason shown as a number",
                  good_ack_fields(key, greeting, r, ack(key, greeting, r, 3, 200, 0)), "status=3 reason=200 seconds=0"))
    # Greetings a client must refuse before it sends anything (exit 3).
    cases.append(("greeting", "a postern-1 greeting", [("greeting", (b"PST1" + nonce).hex())], "reject"))
    cases.append(("greeting", "an ostiary-4 salt: 32 random bytes, no tag", [("greeting", hashlib.sha256(b"salt").digest().hex())], "reject"))
    cases.append(("greeting", "lower-case tag", [("greeting", (b"pst2" + nonce).hex())], "reject"))
    # Key texts: base64 of exactly 32 bytes; surrounding ASCII space, tab, CR, LF ignored.
    k = base64.b64encode(bytes(range(32))).decode()
    keytexts = [
        ("canonical, padded", k, bytes(range(32)).hex()),
        ("canonical, unpadded", k.rstrip("="), bytes(range(32)).hex()),
        ("surrounding spaces, tab and CRLF", " \t" + k + "\r\n", bytes(range(32)).hex()),
        ("non-canonical trailing bits: the last character leaves bits that are not zero", k[:-2] + "d=", "reject"),
        ("31 bytes", base64.b64encode(bytes(31)).decode(), "reject"),
        ("33 bytes", base64.b64encode(bytes(33)).decode(), "reject"),
        ("a space inside", k[:20] + " " + k[20:], "reject"),
        ("URL-safe alphabet", base64.urlsafe_b64encode(bytes([0xFB] * 32)).decode(), "reject"),
        ("too much padding", k + "=", "reject"),
        ("no-break space around it (not ASCII whitespace)", "\u00a0" + k, "reject"),
        ("empty", "", "reject"),
    ]
    for desc, text, expect in keytexts:
        cases.append(("key", desc, [("text_hex", text.encode().hex())], expect))
    # Asserted addresses the server refuses with status 3, reason 4
    # (address-not-allowed), and clients refuse to assert.
    for a in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",
              "::ffff:0.0.0.0", "::ffff:224.0.0.1", "::ffff:255.255.255.255", "::192.0.2.1", "fe80::1"]:
        cases.append(("addr", f"asserting {a}", [("addr", a), ("addr_field", addr_field(a).hex())], "refuse"))
    for a in ["192.0.2.1", "::1", "2001:db8::1", "::ffff:192.0.2.1", "127.0.0.1"]:
        cases.append(("addr", f"asserting {a}", [("addr", a), ("addr_field", addr_field(a).hex())], "allow"))
    out = [
        "# postern-2 negative vectors (PROTOCOL.md, \"Test vectors\"). Blocks of `name = value`.",
        "# check = ack: key_hex, greeting, reply, ack; expect = reject (no valid ack: exit 2), or the",
        "#   decoded body as status=N reason=N seconds=N.",
        "# check = greeting: a first read that is not a postern-2 greeting; expect = reject (exit 3).",
        "# check = key: text_hex is the key text's bytes; expect = reject, or the key's bytes in hex.",
        "# check = addr: an asserted address; expect = refuse (status 3, reason 4) or allow.",
        "",
    ]
    for i, (check, desc, fields, expect) in enumerate(cases, 1):
        out += [f"case = {i}", f"# {desc}", f"check = {check}"]
        out += [f"{n} = {v}" for n, v in fields]
        out += [f"expect = {expect}", ""]
    with open(os.path.join(HERE, "postern-2-negative.vectors"), "w") as f:
        f.write("\n".join(out))


def good_ack_fields(key, greeting, r, a):
    return [("key_hex", key.hex()), ("greeting", greeting.hex()), ("reply", r.hex()), ("ack", a.hex())]


def normalise_host(host):
    """PROTOCOL.md, "Deriving keys": the host name that goes into a salt."""
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host[1:]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host.endswith("."):
        host = host[:-1]
    return "".join(c.lower() if c.isascii() else c for c in host)


def salt(host, action):
    return hashlib.sha256(PASSPHRASE_LABEL + host.encode() + b"\x00" + action.encode()).digest()[:8]


def write_kdf():
    master = bytes((0x3C ^ i) for i in range(32))
    out = [
        "# Key derivation vectors (PROTOCOL.md, \"Deriving keys\"). One case per block.",
        "# passphrase (UTF-8 text) or passphrase_hex (its bytes); host as typed; host_normalised as hashed;",
        "# salt = SHA-256(\"postern-2 passphrase\\0\" || host_normalised || \"\\0\" || action)[0..8]",
        "# passphrase_key = PBKDF2-HMAC-SHA256(passphrase bytes, salt, 600000, 32), base64",
        "# fleet_key = HMAC-SHA256(master, \"postern-2 fleet\\0\" || host_normalised || \"\\0\" || action), base64",
        "",
    ]
    cases = [
        ("correct horse battery staple".encode(), "web-17", "console"),
        ("correct horse battery staple".encode(), "WEB-17.Example.COM.", "console"),
        ("correct horse battery staple".encode(), "[2001:DB8::17]:7001", "sshd"),
        ("correct horse battery staple".encode(), "web-17:7001", "console"),
        (unicodedata.normalize("NFC", "pässwörd ünïcödé").encode(), "web-17", "sshd"),
        (unicodedata.normalize("NFD", "pässwörd ünïcödé").encode(), "web-17", "sshd"),
    ]
    for i, (pw, host, action) in enumerate(cases, 1):
        h = normalise_host(host)
        s = salt(h, action)
        key = hashlib.pbkdf2_hmac("sha256", pw, s, ITERATIONS, 32)
        fleet = hmac.new(master, FLEET_LABEL + h.encode() + b"\x00" + action.encode(), hashlib.sha256).digest()
        out += [f"case = {i}"]
        if pw.isascii():
            out.append(f"passphrase = {pw.decode()}")
        else:
            form = "NFC" if unicodedata.is_normalized("NFC", pw.decode()) else "NFD"
            out.append(f"# the same text in Unicode {form}: bytes as typed, so NFC and NFD give different keys")
        out += [
            f"passphrase_hex = {pw.hex()}",
            f"host = {host}",
            f"host_normalised = {h}",
            f"action = {action}",
            f"salt = {s.hex()}",
            f"iterations = {ITERATIONS}",
            f"passphrase_key = {base64.b64encode(key).decode()}",
            f"master = {base64.b64encode(master).decode()}",
            f"fleet_key = {base64.b64encode(fleet).decode()}",
            "",
        ]
    with open(os.path.join(HERE, "kdf.vectors"), "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    write_positive()
    write_negative()
    write_kdf()
