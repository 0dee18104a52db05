#!/usr/bin/python3
"""qmp.py: a small QEMU Machine Protocol client for the console lab.

Python standard library only. Used as a module (class QMP) by the tests and
as a program by the lab's power scripts:

    qmp.py SOCKET status                 print the run state (running, paused, ...)
    qmp.py SOCKET reset                  system_reset: the reset button
    qmp.py SOCKET powerdown [--grace S]  system_powerdown (the ACPI power
                                         button), then wait up to S seconds
                                         (default 30) for the guest to power
                                         off; exit 0 once off, 1 if it did not
    qmp.py SOCKET quit                   quit: pull the plug (QEMU exits)
    qmp.py SOCKET vga-text               print the 80x25 VGA text screen
    qmp.py SOCKET wait-text REGEX [--timeout S]
                                         poll the VGA text until REGEX matches
                                         (default 30 s); exit 1 on timeout
    qmp.py SOCKET screendump FILE [--format ppm|png]
                                         save the display as the QEMU process
                                         sees it (FILE is written by QEMU)
    qmp.py SOCKET command NAME [JSON]    any command; prints its JSON return

Every read and write has a deadline (--timeout-io, default 10 s); a reply
line is at most MAX_LINE bytes. Exit codes: 0 done, 1 the condition was
not met in time, 2 QMP error, 3 cannot connect or the connection broke,
64 usage.

The VGA text is read with the human monitor's `xp /4000bx 0xb8000`, which
reads guest-physical memory as the CPU sees it: 25 rows of 80 cells, each a
character byte and an attribute byte. The characters are code page 437;
bytes outside printable ASCII are shown as '.'.
"""

import argparse
import json
import os
import re
import socket
import sys
import time

#: Longest reply line accepted from QEMU, in bytes.
MAX_LINE = 1 << 20
#: VGA text mode 3: columns, rows, and where the text buffer lives.
VGA_COLS = 80
VGA_ROWS = 25
VGA_TEXT_BASE = 0xB8000


class QMPError(Exception):
    """QEMU answered a command with an error."""

    def __init__(self, command, error):
        self.command = command
        self.error_class = error.get("class", "GenericError")
        self.desc = error.get("desc", "")
        super().__init__(f"{command}: {self.error_class}: {self.desc}")


class Closed(Exception):
    """The connection closed (QEMU exited, or the peer went away)."""


class QMP:
    """One QMP connection over a unix socket.

    Connecting reads the greeting and negotiates capabilities. Events that
    arrive while waiting for a reply are kept, in order, for wait_event().
    """

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self._buf = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            greeting = self._read_message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise Closed(f"{path}: not a QMP greeting: {greeting!r}")
            self.greeting = greeting["QMP"]
            self.command("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- wire -------------------------------------------------------------

    def _read_line(self, deadline):
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from QEMU in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no reply from QEMU in time") from None
            except OSError as e:
                raise Closed(str(e)) from None
            if not chunk:
                raise Closed("QEMU closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_LINE and b"\n" not in self._buf:
                raise Closed(f"reply line longer than {MAX_LINE} bytes")
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _read_message(self, deadline):
        while True:
            line = self._read_line(deadline).strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise Closed(f"not JSON: {line[:80]!r}") from None
            if not isinstance(msg, dict):
                raise Closed(f"not a JSON object: {line[:80]!r}")
            return msg

    def _send(self, obj):
        data = json.dumps(obj).encode() + b"\n"
        self._sock.settimeout(self.timeout)
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise Closed(str(e)) from None

    # -- API --------------------------------------------------------------

    def command(self, name, **arguments):
        """Runs one command and returns its "return" value.

        Raises QMPError on an error reply, TimeoutError after `timeout`
        seconds without a reply, Closed if the connection ends first.
        """
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
            elif "return" in reply:
                return reply["return"]
            elif "error" in reply:
                raise QMPError(name, reply["error"])
            # Anything else (a stray greeting) is ignored.

    def wait_event(self, names, timeout):
        """Returns the first event named in `names` (kept or new).

        Raises TimeoutError after `timeout` seconds, Closed if the
        connection ends first.
        """
        if isinstance(names, str):
            names = (names,)
        for i, ev in enumerate(self.events):
            if ev.get("event") in names:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_message(deadline)
            if "event" not in msg:
                continue
            if msg["event"] in names:
                return msg
            self.events.append(msg)

    def status(self):
        """The run state: "running", "paused", "shutdown", ..."""
        return self.command("query-status")["status"]

    def wait_status(self, wanted, timeout, interval=0.1):
        """Polls query-status until it is `wanted`; returns True, or False
        once `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            if self.status() == wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def hmp(self, command_line):
        """Runs a human-monitor command and returns its text output."""
        return self.command("human-monitor-command", **{"command-line": command_line})

    def vga_memory(self):
        """The 4000 bytes of the VGA text buffer (character, attribute)."""
        size = VGA_COLS * VGA_ROWS * 2
        return parse_xp(self.hmp(f"xp /{size}bx {VGA_TEXT_BASE:#x}"), size)

    def vga_text(self):
        """The VGA text screen as 25 strings of 80 characters."""
        return vga_lines(self.vga_memory())

    def screendump(self, filename, fmt=None):
        """Saves the display to `filename` (written by QEMU itself)."""
        args = {"filename": os.path.abspath(filename)}
        if fmt:
            args["format"] = fmt
        self.command("screendump", **args)

    def powerdown(self, grace):
        """Presses the ACPI power button and waits up to `grace` seconds
        for the guest to power off. True once it is off: a SHUTDOWN event,
        the connection closing (QEMU exited), or the "shutdown" state."""
        self.command("system_powerdown")
        deadline = time.monotonic() + grace
        try:
            self.wait_event("SHUTDOWN", grace)
            return True
        except Closed:
            return True
        except TimeoutError:
            pass
        try:
            left = max(0.0, deadline - time.monotonic())
            return self.wait_status("shutdown", left)
        except Closed:
            return True


def parse_xp(text, size):
    """Bytes from the output of `xp /Nbx ADDR`.

    Each line is "ADDRESS: 0xHH 0xHH ...". Raises ValueError unless
    exactly `size` bytes are found.
    """
    out = bytearray()
    for line in text.splitlines():
        if ":" not in line:
            continue
        _, values = line.split(":", 1)
        for v in values.split():
            out.append(int(v, 16))
    if len(out) != size:
        raise ValueError(f"xp gave {len(out)} bytes, expected {size}")
    return bytes(out)


def vga_lines(memory, cols=VGA_COLS):
    """Turns character/attribute pairs into rows of text."""
    chars = "".join(chr(b) if 0x20 <= b < 0x7F else "." if b else " " for b in memory[0::2])
    return [chars[i:i + cols] for i in range(0, len(chars), cols)]


def main(argv=None):
    p = argparse.ArgumentParser(prog="qmp.py", description="QMP client for the console lab")
    p.add_argument("socket", help="QMP unix socket")
    p.add_argument("--timeout-io", type=float, default=10.0, help="per-reply deadline (s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    sub.add_parser("reset")
    sub.add_parser("quit")
    sub.add_parser("vga-text")
    pd = sub.add_parser("powerdown")
    pd.add_argument("--grace", type=float, default=30.0)
    wt = sub.add_parser("wait-text")
    wt.add_argument("regex")
    wt.add_argument("--timeout", type=float, default=30.0)
    sd = sub.add_parser("screendump")
    sd.add_argument("file")
    sd.add_argument("--format", choices=["ppm", "png"])
    cm = sub.add_parser("command")
    cm.add_argument("name")
    cm.add_argument("arguments", nargs="?", default="{}")
    args = p.parse_args(argv)

    try:
        q = QMP(args.socket, args.timeout_io)
    except (OSError, Closed, TimeoutError) as e:
        print(f"qmp.py: cannot talk to {args.socket}: {e}", file=sys.stderr)
        return 3
    try:
        with q:
            if args.cmd == "status":
                print(q.status())
            elif args.cmd == "reset":
                q.command("system_reset")
            elif args.cmd == "quit":
                try:
                    q.command("quit")
                except Closed:
                    pass  # QEMU may close before it answers
            elif args.cmd == "vga-text":
                print("\n".join(line.rstrip() for line in q.vga_text()))
            elif args.cmd == "powerdown":
                if not q.powerdown(args.grace):
                    print(f"qmp.py: guest still on after {args.grace:g}s", file=sys.stderr)
                    return 1
            elif args.cmd == "wait-text":
                pattern = re.compile(args.regex)
                deadline = time.monotonic() + args.timeout
                while True:
                    text = "\n".join(line.rstrip() for line in q.vga_text())
                    if pattern.search(text):
                        print(text)
                        return 0
                    if time.monotonic() >= deadline:
                        print(text)
                        print(f"qmp.py: {args.regex!r} not on screen after {args.timeout:g}s",
                              file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            elif args.cmd == "screendump":
                q.screendump(args.file, args.format)
            elif args.cmd == "command":
                print(json.dumps(q.command(args.name, **json.loads(args.arguments))))
    except QMPError as e:
        print(f"qmp.py: {e}", file=sys.stderr)
        return 2
    except (Closed, TimeoutError, OSError) as e:
        print(f"qmp.py: {args.socket}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
