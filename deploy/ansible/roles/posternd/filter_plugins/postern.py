# Filters of the posternd role: fleet key derivation, the key layout of a
# host, and TOML rendering. They run on the controller, inside Ansible's
# templating, so the fleet master is read and used there and only the keys
# derived for one host travel to that host.
#
# The derivation is the one in PROTOCOL.md ("Deriving keys"):
#   key = HMAC-SHA256(master, "postern-2 fleet\0" || host || "\0" || action)
# where host is normalised as src/kdf.rs and client/postern.py normalise it.
# tests/e2e/ansible.sh checks it against tests/vectors/kdf.vectors and
# against `postern key derive`.

import base64
import hashlib
import hmac
import re

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # imported outside Ansible, by a test
    class AnsibleFilterError(Exception):
        pass

FLEET_LABEL = b"postern-2 fleet\0"
KEY_TEXT_SPACE = b" \t\r\n"
B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# RFC 3339 in UTC with a Z, to the second, as posternd reads overlap_until.
OVERLAP_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
# What the role writes itself: an action's table may not set these.
ROLE_ACTION_KEYS = frozenset(["name", "keys", "key", "key_file", "next_key_file",
                              "overlap_until", "password", "password_file"])
OPERATOR_KEYS = frozenset(["name", "master", "key", "next_master", "next_key", "overlap_until"])


def key_bytes(text, what):
    """Base64 key text -> 32 bytes, as strictly as posternd and the client
    read a key file: surrounding ASCII space, tab, CR and LF ignored; the
    standard alphabet; padding optional but right if present; canonical
    trailing bits. The message names WHAT, never the text."""
    bad = AnsibleFilterError(
        "%s is not a base64 key of 32 bytes; make one with `postern keygen`" % what)
    if text is None:
        raise bad
    if isinstance(text, bytes):
        raw = text
    else:
        raw = str(text).encode("utf-8", "surrogateescape")
    t = raw.strip(KEY_TEXT_SPACE)
    body = t.rstrip(b"=")
    pad = len(t) - len(body)
    if not body or pad > 2 or any(c not in B64_ALPHABET for c in body):
        raise bad
    if pad and len(t) % 4:
        raise bad
    try:
        out = base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except ValueError:
        raise bad
    if len(out) != 32 or base64.b64encode(out).rstrip(b"=") != body:
        raise bad
    return out


def normalise_host(host):
    """The host name as it goes into a derivation: "[v6]" and "[v6]:port"
    become v6; a name or IPv4 address with exactly one ':' loses its port;
    one trailing '.' goes; ASCII letters are lower-cased."""
    h = str(host).encode("utf-8", "surrogateescape")
    if h.startswith(b"["):
        end = h.find(b"]")
        h = h[1:end] if end >= 0 else h[1:]
    elif h.count(b":") == 1:
        h = h.split(b":")[0]
    if h.endswith(b"."):
        h = h[:-1]
    return h.lower()


def fleet_key(master, host, action):
    """The base64 key that MASTER (base64 text) derives for HOST and ACTION."""
    m = key_bytes(master, "the fleet master")
    msg = FLEET_LABEL + normalise_host(host) + b"\0" + str(action).encode("utf-8", "surrogateescape")
    return base64.b64encode(hmac.new(m, msg, hashlib.sha256).digest()).decode("ascii")


def _check_overlap(value, where):
    if not isinstance(value, str) or not OVERLAP_RE.match(value):
        raise AnsibleFilterError(
            "%s: overlap_until must be a UTC time such as \"2026-12-15T00:00:00Z\"" % where)


def key_layout(actions, keys_dir, next_master=None, overlap_until=None):
    """Where each action's keys go and what derives them, without any secret.

    Returns one dict per action, in order: name, options (the action's
    other posternd options), and either
      key_file [, next_key_file, overlap_until]        the fleet's key, or
      operators: [{name, key_file [, next_key_file, overlap_until]}]
    plus, for each file, a "sources" list of (path, kind, operator index)
    that keyring() turns into contents. Raises AnsibleFilterError naming the
    variable and the fix for every malformed entry."""
    if not isinstance(actions, list) or not actions:
        raise AnsibleFilterError("posternd_actions must be a non-empty list of actions")
    keys_dir = str(keys_dir).rstrip("/")
    if not keys_dir.startswith("/"):
        raise AnsibleFilterError("posternd_keys_dir must be an absolute path")
    rotating = next_master is not None and next_master != ""
    if rotating != (overlap_until is not None and overlap_until != ""):
        raise AnsibleFilterError(
            "postern_fleet_next_master and postern_overlap_until go together: set both or neither")
    if rotating:
        _check_overlap(overlap_until, "postern_overlap_until")
    seen = set()
    layout = []
    for i, a in enumerate(actions, 1):
        where = "posternd_actions[%d]" % i
        if not isinstance(a, dict):
            raise AnsibleFilterError("%s must be a mapping with a name" % where)
        name = a.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise AnsibleFilterError("%s.name must be 1-64 of A-Z a-z 0-9 . _ -" % where)
        if name in seen:
            raise AnsibleFilterError("%s.name %r is used twice; action names are unique" % (where, name))
        seen.add(name)
        where = "posternd_actions[%d] (%s)" % (i, name)
        for k in ("key", "key_file", "next_key_file", "overlap_until", "password", "password_file"):
            if k in a:
                raise AnsibleFilterError(
                    "%s sets %s; the role writes the keys: remove it (the fleet master derives "
                    "the action's key, or list operator keys under keys:)" % (where, k))
        options = {}
        for k in sorted(a):
            if k in ROLE_ACTION_KEYS:
                continue
            if not BARE_KEY_RE.match(str(k)):
                raise AnsibleFilterError("%s: %r is not a posternd option name" % (where, k))
            options[k] = a[k]
        entry = {"name": name, "options": options, "sources": []}
        ops = a.get("keys")
        if ops is None:
            entry["key_file"] = "%s/%s.key" % (keys_dir, name)
            entry["sources"].append((entry["key_file"], "fleet", None))
            if rotating:
                entry["next_key_file"] = "%s/%s.next.key" % (keys_dir, name)
                entry["overlap_until"] = overlap_until
                entry["sources"].append((entry["next_key_file"], "fleet_next", None))
        else:
            if not isinstance(ops, list) or not ops:
                raise AnsibleFilterError("%s.keys must be a non-empty list of operator keys" % where)
            entry["operators"] = []
            op_seen = set()
            for j, op in enumerate(ops):
                ow = "%s.keys[%d]" % (where, j + 1)
                if not isinstance(op, dict):
                    raise AnsibleFilterError("%s must be a mapping with a name" % ow)
                unknown = sorted(set(map(str, op)) - OPERATOR_KEYS)
                if unknown:
                    raise AnsibleFilterError(
                        "%s: unknown key %s; an operator key has name, master or key, and "
                        "optionally next_master or next_key with overlap_until" % (ow, unknown[0]))
                oname = op.get("name")
                if not isinstance(oname, str) or not NAME_RE.match(oname):
                    raise AnsibleFilterError("%s.name must be 1-64 of A-Z a-z 0-9 . _ -" % ow)
                if oname in op_seen:
                    raise AnsibleFilterError("%s.name %r is used twice in this action" % (ow, oname))
                op_seen.add(oname)
                ow = "%s (%s)" % (ow, oname)
                if ("master" in op) == ("key" in op):
                    raise AnsibleFilterError("%s needs exactly one of master or key" % ow)
                has_next = "next_master" in op or "next_key" in op
                if "next_master" in op and "next_key" in op:
                    raise AnsibleFilterError("%s: set next_master or next_key, not both" % ow)
                if has_next != ("overlap_until" in op):
                    raise AnsibleFilterError(
                        "%s: a successor (next_master or next_key) needs overlap_until, "
                        "and overlap_until needs a successor" % ow)
                o = {"name": oname, "key_file": "%s/%s.%s.key" % (keys_dir, name, oname)}
                entry["sources"].append((o["key_file"], "operator", j))
                if has_next:
                    _check_overlap(op["overlap_until"], ow)
                    o["next_key_file"] = "%s/%s.%s.next.key" % (keys_dir, name, oname)
                    o["overlap_until"] = op["overlap_until"]
                    entry["sources"].append((o["next_key_file"], "operator_next", j))
                entry["operators"].append(o)
        layout.append(entry)
    return layout


def keyring(actions, host, keys_dir, master, next_master=None, overlap_until=None):
    """Every key file of HOST: a list of {path, content} (base64 and a
    newline), in layout order. Secret: use it only in no_log tasks."""
    if master is None or master == "":
        raise AnsibleFilterError(
            "postern_fleet_master is not set: give the fleet master (base64), for "
            "example from an Ansible Vault file on the controller")
    out = []
    for entry in key_layout(actions, keys_dir, next_master, overlap_until):
        ops = None
        for a in actions:
            if a.get("name") == entry["name"]:
                ops = a.get("keys")
        for path, kind, j in entry["sources"]:
            if kind == "fleet":
                key = fleet_key(master, host, entry["name"])
            elif kind == "fleet_next":
                key = fleet_key(next_master, host, entry["name"])
            else:
                op = ops[j]
                what = "posternd_actions (%s).keys[%d] (%s)" % (entry["name"], j + 1, op["name"])
                if kind == "operator":
                    if "master" in op:
                        key = fleet_key(op["master"], host, entry["name"])
                    else:
                        key = base64.b64encode(key_bytes(op["key"], what + ".key")).decode("ascii")
                elif "next_master" in op:
                    key = fleet_key(op["next_master"], host, entry["name"])
                else:
                    key = base64.b64encode(key_bytes(op["next_key"], what + ".next_key")).decode("ascii")
            out.append({"path": path, "content": key + "\n"})
    return out


def masters_ok(master, next_master=None):
    """True when the fleet master (and the next one, if set) is a key;
    else AnsibleFilterError naming the variable, never the value. No
    secret in the result: a task may call it without no_log."""
    if master is None or master == "":
        raise AnsibleFilterError(
            "postern_fleet_master is not set: give the fleet master (base64), for "
            "example from an Ansible Vault file on the controller")
    key_bytes(master, "postern_fleet_master (the fleet master)")
    if next_master is not None and next_master != "":
        key_bytes(next_master, "postern_fleet_next_master (the next fleet master)")
    return True


def key_paths(actions, keys_dir, next_master=None, overlap_until=None):
    """The paths of every key file of a host (no secret)."""
    return [p for e in key_layout(actions, keys_dir, next_master, overlap_until)
            for p, _, _ in e["sources"]]


def toml_value(v):
    """A TOML literal for a string, integer, boolean or list of those."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            c = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ch == "\r":
                out.append("\\r")
            elif c < 0x20 or c == 0x7F:
                out.append("\\u%04x" % c)
            elif 0xD800 <= c <= 0xDFFF:
                raise AnsibleFilterError("a config value holds a lone surrogate, which TOML cannot")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise AnsibleFilterError(
        "a posternd option value must be a string, an integer, a boolean or a list of those, "
        "not %s" % type(v).__name__)


def toml_table(d, where="a table"):
    """KEY = VALUE lines for a mapping, keys sorted."""
    if d is None:
        return ""
    if not isinstance(d, dict):
        raise AnsibleFilterError("%s must be a mapping of posternd options" % where)
    lines = []
    for k in sorted(d):
        if not BARE_KEY_RE.match(str(k)):
            raise AnsibleFilterError("%s: %r is not a posternd option name" % (where, k))
        if d[k] is None:
            continue
        lines.append("%s = %s" % (k, toml_value(d[k])))
    return "\n".join(lines)


class FilterModule(object):
    def filters(self):
        return {
            "postern_fleet_key": fleet_key,
            "postern_key_layout": key_layout,
            "postern_keyring": keyring,
            "postern_key_paths": key_paths,
            "postern_masters_ok": masters_ok,
            "postern_toml_value": toml_value,
            "postern_toml_table": toml_table,
        }
