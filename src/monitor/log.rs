//! Log output: standard error or the local syslog socket.
//!
//! Only the monitor writes log lines; the network process sends it fixed
//! events (`ipc.rs`) instead. Lines are `key=value` after a fixed verb, so
//! they are stable to match (the fail2ban filter in `conf/fail2ban/` relies
//! on the `fail src=` and `lockout src=` lines). The format is documented in
//! the README. Nothing secret (keys, passwords, nonces, replies) is ever
//! passed to this module.
//!
//! If the syslog socket is missing or refuses a line, the line goes to
//! standard error instead, and that fallback is itself reported once.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use crate::config::LogTarget;

/// Severity, as syslog numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed and needs an operator.
    Err = 3,
    /// Attack traffic or a limit hit.
    Warning = 4,
    /// Normal, significant events (a trigger, a start, a reload).
    Notice = 5,
    /// Routine detail (action output).
    Info = 6,
}

const SYSLOG_PATH: &str = "/dev/log";
/// Longest line handed to the sink; longer lines are cut.
pub const MAX_LINE: usize = 1024;

struct Inner {
    target: LogTarget,
    socket: Option<UnixDatagram>,
    fallback_noted: bool,
    /// A memory sink instead of the target: (capacity, the last lines).
    memory: Option<(usize, VecDeque<String>)>,
}

/// The process-wide log sink.
pub struct Logger {
    inner: Mutex<Inner>,
    ident: String,
    /// Standard error is the journal, which tags lines itself.
    journal: bool,
}

impl core::fmt::Debug for Logger {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Logger")
    }
}

impl Logger {
    /// A logger writing to `target`, tagged `posternd[pid]`.
    pub fn new(target: LogTarget) -> Logger {
        let logger = Logger {
            inner: Mutex::new(Inner {
                target,
                socket: None,
                fallback_noted: false,
                memory: None,
            }),
            ident: format!("posternd[{}]", std::process::id()),
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        };
        if let Ok(mut inner) = logger.inner.lock() {
            if matches!(target, LogTarget::Syslog { .. }) {
                inner.socket = connect();
            }
        }
        logger
    }

    /// A logger that keeps the last `capacity` lines in memory and writes
    /// nowhere (a retarget does not change that): for running the monitor
    /// embedded, where the lines are read back with
    /// [`lines`](Self::lines).
    pub fn memory(capacity: usize) -> Logger {
        let logger = Logger::new(LogTarget::Stderr);
        if let Ok(mut inner) = logger.inner.lock() {
            inner.memory = Some((capacity, VecDeque::with_capacity(capacity.min(1024))));
        }
        logger
    }

    /// The lines a [`memory`](Self::memory) logger holds, oldest first
    /// (empty for any other).
    pub fn lines(&self) -> Vec<String> {
        match self.inner.lock() {
            Ok(inner) => inner
                .memory
                .as_ref()
                .map(|(_, l)| l.iter().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Switches the target (after a reload).
    pub fn retarget(&self, target: LogTarget) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.target != target {
                inner.target = target;
                inner.socket = match target {
                    LogTarget::Syslog { .. } => connect(),
                    LogTarget::Stderr => None,
                };
                inner.fallback_noted = false;
            }
        }
    }

    /// Writes one line. Control characters are replaced, so a line can
    /// never be split or forged by what it quotes.
    pub fn log(&self, level: Level, msg: &str) {
        let mut line = String::with_capacity(msg.len().min(MAX_LINE));
        for c in msg.chars() {
            if line.len() + c.len_utf8() > MAX_LINE {
                break;
            }
            line.push(if c.is_control() { '?' } else { c });
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some((cap, lines)) = inner.memory.as_mut() {
            if lines.len() >= *cap {
                lines.pop_front();
            }
            lines.push_back(line);
            return;
        }
        if let LogTarget::Syslog { facility } = inner.target {
            if inner.socket.is_none() {
                inner.socket = connect();
            }
            let pri = u16::from(facility) * 8 + level as u16;
            let datagram = format!("<{pri}>{}: {line}", self.ident);
            let sent = inner
                .socket
                .as_ref()
                .is_some_and(|s| s.send(datagram.as_bytes()).is_ok());
            if sent {
                inner.fallback_noted = false;
                return;
            }
            inner.socket = None;
            if !inner.fallback_noted {
                inner.fallback_noted = true;
                self.stderr_line(
                    "log syslog socket /dev/log unavailable; writing to stderr until it returns",
                );
            }
        }
        self.stderr_line(&line);
    }
}

fn connect() -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok()?;
    s.connect(SYSLOG_PATH).ok()?;
    Some(s)
}

impl Logger {
    /// Under systemd the journal already records `posternd[PID]`, so the
    /// tag is left out there; elsewhere every line carries it.
    fn stderr_line(&self, line: &str) {
        // One write per line: stderr is unbuffered, and a single write(2)
        // also keeps lines whole when several processes share the stream.
        let text = if self.journal {
            format!("{line}\n")
        } else {
            format!("{}: {line}\n", self.ident)
        };
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Goal: lines reach a syslog-style datagram socket with the right
    // priority, and control characters cannot split a line.
    #[test]
    fn syslog_datagram_format() {
        let dir = std::env::temp_dir().join(format!("postern-log-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        let logger = Logger::new(LogTarget::Stderr);
        if let Ok(mut inner) = logger.inner.lock() {
            inner.target = LogTarget::Syslog { facility: 4 };
            inner.socket = Some(client);
        }
        logger.log(Level::Warning, "fail src=192.0.2.1\nforged=1");
        let mut buf = [0u8; 2048];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(got.starts_with("<36>posternd["), "{got}");
        assert!(got.ends_with(": fail src=192.0.2.1?forged=1"), "{got}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
