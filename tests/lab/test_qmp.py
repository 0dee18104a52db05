"""Unit tests for qmp.py against a fake QMP server on a unix socket.

Standard library only: python3 -m unittest tests/lab/test_qmp.py
"""

import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qmp  # noqa: E402

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}}, "capabilities": []}}


def xp_output(memory, base=qmp.VGA_TEXT_BASE):
    """What `xp /Nbx` prints for `memory`: 8 bytes a line."""
    lines = []
    for off in range(0, len(memory), 8):
        chunk = " ".join(f"0x{b:02x}" for b in memory[off:off + 8])
        lines.append(f"{base + off:016x}: {chunk}")
    return "\r\n".join(lines) + "\r\n"


def screen(*rows):
    """A VGA text buffer showing `rows` from the top-left, white on blue."""
    mem = bytearray()
    for r in range(qmp.VGA_ROWS):
        text = rows[r] if r < len(rows) else ""
        for c in range(qmp.VGA_COLS):
            mem += bytes([ord(text[c]) if c < len(text) else 0x20, 0x1F])
    return bytes(mem)


class FakeQEMU:
    """A scripted QMP peer: one connection, a greeting, and a handler per
    command that returns a list of messages to send back (events, then
    the reply; a float sleeps that long, "close" closes the connection), or
    None to close it at once."""

    def __init__(self, handlers, greeting=GREETING):
        self.dir = tempfile.mkdtemp(prefix="qmp-test-")
        self.path = os.path.join(self.dir, "qmp.sock")
        self.handlers = handlers
        self.greeting = greeting
        self.received = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            f = conn.makefile("rwb")
            f.write(json.dumps(self.greeting).encode() + b"\n")
            f.flush()
            for line in f:
                msg = json.loads(line)
                self.received.append(msg)
                name = msg["execute"]
                if name == "qmp_capabilities":
                    out = [{"return": {}}]
                else:
                    out = self.handlers[name](msg.get("arguments", {}))
                if out is None:
                    return
                for m in out:
                    if m == "close":
                        return
                    if isinstance(m, float):
                        time.sleep(m)
                        continue
                    f.write(json.dumps(m).encode() + b"\n")
                    f.flush()

    def close(self):
        self.server.close()
        self.thread.join(timeout=5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.rmdir(self.dir)

    def commands(self):
        return [m["execute"] for m in self.received]


def event(name, **data):
    ev = {"event": name, "timestamp": {"seconds": 0, "microseconds": 0}}
    if data:
        ev["data"] = data
    return ev


class QMPTest(unittest.TestCase):
    def fake(self, handlers, **kw):
        f = FakeQEMU(handlers, **kw)
        self.addCleanup(f.close)
        return f

    def test_negotiates_capabilities_first(self):
        """Goal: the greeting is read and qmp_capabilities is the first command."""
        f = self.fake({"query-status": lambda a: [{"return": {"status": "running", "running": True}}]})
        with qmp.QMP(f.path, timeout=2) as q:
            self.assertEqual(q.greeting["version"]["qemu"]["major"], 10)
            self.assertEqual(q.status(), "running")
        self.assertEqual(f.commands(), ["qmp_capabilities", "query-status"])

    def test_refuses_a_peer_without_greeting(self):
        """Goal: something that is not QMP is refused."""
        f = self.fake({}, greeting={"hello": 1})
        with self.assertRaises(qmp.Closed):
            qmp.QMP(f.path, timeout=2)

    def test_command_arguments_and_return(self):
        """Goal: arguments reach QEMU as given and the return value comes back."""
        f = self.fake({"screendump": lambda a: [{"return": {}}]})
        with qmp.QMP(f.path, timeout=2) as q:
            q.screendump("/tmp/x.png", "png")
        self.assertEqual(f.received[-1]["arguments"], {"filename": "/tmp/x.png", "format": "png"})

    def test_error_reply_raises(self):
        """Goal: an error reply raises QMPError with QEMU's class and text."""
        f = self.fake({"bogus": lambda a: [{"error": {"class": "CommandNotFound",
                                                      "desc": "The command bogus has not been found"}}]})
        with qmp.QMP(f.path, timeout=2) as q:
            with self.assertRaises(qmp.QMPError) as cm:
                q.command("bogus")
        self.assertEqual(cm.exception.error_class, "CommandNotFound")
        self.assertIn("bogus", str(cm.exception))

    def test_events_before_a_reply_are_kept(self):
        """Goal: an event that arrives before a reply is not lost."""
        f = self.fake({"system_reset": lambda a: [event("RESET", guest=False), {"return": {}}]})
        with qmp.QMP(f.path, timeout=2) as q:
            self.assertEqual(q.command("system_reset"), {})
            self.assertEqual(q.wait_event("RESET", 0.1)["event"], "RESET")

    def test_wait_event_skips_others_and_times_out(self):
        """Goal: wait_event returns the named event, keeps others, and has a deadline."""
        f = self.fake({"system_powerdown": lambda a: [{"return": {}}, 0.05, event("POWERDOWN"),
                                                      event("SHUTDOWN", guest=True)]})
        with qmp.QMP(f.path, timeout=2) as q:
            q.command("system_powerdown")
            self.assertEqual(q.wait_event("SHUTDOWN", 2)["data"]["guest"], True)
            self.assertEqual([e["event"] for e in q.events], ["POWERDOWN"])
            start = time.monotonic()
            with self.assertRaises(TimeoutError):
                q.wait_event("STOP", 0.2)
            self.assertLess(time.monotonic() - start, 1.5)

    def test_wait_status_polls(self):
        """Goal: wait_status polls query-status until the state is reached."""
        states = iter(["running", "running", "shutdown"])
        f = self.fake({"query-status": lambda a: [{"return": {"status": next(states)}}]})
        with qmp.QMP(f.path, timeout=2) as q:
            self.assertTrue(q.wait_status("shutdown", 2, interval=0.01))
        self.assertEqual(f.commands().count("query-status"), 3)

    def test_powerdown_until_shutdown_event(self):
        """Goal: powerdown presses the button and reports the guest powered off."""
        f = self.fake({"system_powerdown": lambda a: [{"return": {}}, event("POWERDOWN"), 0.05,
                                                      event("SHUTDOWN", guest=True)]})
        with qmp.QMP(f.path, timeout=2) as q:
            self.assertTrue(q.powerdown(2))

    def test_powerdown_counts_qemu_exiting_as_off(self):
        """Goal: QEMU closing the socket (it exited on the guest's power-off) is success."""
        f = self.fake({"system_powerdown": lambda a: [{"return": {}}, 0.05, "close"]})
        with qmp.QMP(f.path, timeout=2) as q:
            self.assertTrue(q.powerdown(2))

    def test_powerdown_gives_up_after_grace(self):
        """Goal: a guest that ignores the button is reported as still on."""
        f = self.fake({"system_powerdown": lambda a: [{"return": {}}],
                       "query-status": lambda a: [{"return": {"status": "running"}}]})
        with qmp.QMP(f.path, timeout=2) as q:
            start = time.monotonic()
            self.assertFalse(q.powerdown(0.3))
            self.assertLess(time.monotonic() - start, 2)

    def test_vga_text_from_xp(self):
        """Goal: the VGA buffer read through `xp` becomes 25 rows of 80 characters."""
        mem = screen("", "", "  POSTERN LAB SERVER", "  BOOT COUNT: 7", "  DISK: USED")
        f = self.fake({"human-monitor-command": lambda a: [{"return": xp_output(mem)}]})
        with qmp.QMP(f.path, timeout=2) as q:
            rows = q.vga_text()
        self.assertEqual(f.received[-1]["arguments"], {"command-line": "xp /4000bx 0xb8000"})
        self.assertEqual(len(rows), 25)
        self.assertTrue(all(len(r) == 80 for r in rows))
        self.assertEqual(rows[3].rstrip(), "  BOOT COUNT: 7")
        self.assertEqual(rows[4].rstrip(), "  DISK: USED")

    def test_parse_xp_rejects_short_output(self):
        """Goal: a truncated xp dump is an error, not a partial screen."""
        with self.assertRaises(ValueError):
            qmp.parse_xp(xp_output(b"\x41\x07" * 10), 4000)

    def test_timeout_without_reply(self):
        """Goal: a QEMU that never answers does not hang the client."""
        f = self.fake({"query-status": lambda a: [1.0]})
        with qmp.QMP(f.path, timeout=0.3) as q:
            with self.assertRaises(TimeoutError):
                q.status()

    def test_closed_connection(self):
        """Goal: QEMU closing mid-command raises Closed."""
        f = self.fake({"quit": lambda a: None})
        with qmp.QMP(f.path, timeout=2) as q:
            with self.assertRaises(qmp.Closed):
                q.command("quit")

    def test_cli_vga_text(self):
        """Goal: the command line prints the screen, trailing blanks trimmed."""
        mem = screen("POSTERN LAB SERVER")
        f = self.fake({"human-monitor-command": lambda a: [{"return": xp_output(mem)}]})
        out = tempfile.TemporaryFile("w+")
        old = sys.stdout
        sys.stdout = out
        try:
            rc = qmp.main([f.path, "vga-text"])
        finally:
            sys.stdout = old
        out.seek(0)
        self.assertEqual(rc, 0)
        self.assertEqual(out.read().splitlines()[0], "POSTERN LAB SERVER")

    def test_cli_cannot_connect(self):
        """Goal: a missing socket exits 3 with a message."""
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        err = tempfile.TemporaryFile("w+")
        old = sys.stderr
        sys.stderr = err
        try:
            rc = qmp.main([os.path.join(d, "none.sock"), "status"])
        finally:
            sys.stderr = old
        self.assertEqual(rc, 3)


if __name__ == "__main__":
    unittest.main()
