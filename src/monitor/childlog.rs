//! The network process's standard error, drained by the monitor and
//! reported only as a count.
//!
//! The network process may be compromised, so nothing it writes may reach
//! the log as text (a forged `fail` line would reach fail2ban). Its
//! standard error is a pipe that the monitor reads into a fixed buffer
//! and throws away, counting bytes and lines; a count is logged at most
//! once per [`NOTE_INTERVAL`], and once more when the pipe closes. The
//! pipe is always drained, so a process that writes a lot never blocks
//! on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;

use crate::monitor::log::{Level, Logger};

/// The count is logged at most this often.
pub const NOTE_INTERVAL: Duration = Duration::from_secs(60);

/// Drains `stderr` from a task on the current `LocalSet` until it closes.
pub fn drain(stderr: ChildStderr, logger: Arc<Logger>) {
    tokio::task::spawn_local(drain_until_closed(stderr, logger));
}

/// Bytes and lines written since the last note.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Written {
    bytes: u64,
    lines: u64,
}

fn note(logger: &Logger, w: Written) {
    if w.bytes > 0 {
        logger.log(
            Level::Warning,
            &format!(
                "network process wrote {} line(s), {} byte(s) to standard error; not shown (it is untrusted)",
                w.lines, w.bytes
            ),
        );
    }
}

async fn drain_until_closed(mut stderr: ChildStderr, logger: Arc<Logger>) {
    let mut buf = [0u8; 4096];
    let mut pending = Written::default();
    let mut last: Option<Instant> = None;
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.bytes = pending.bytes.saturating_add(n as u64);
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        pending.lines = pending.lines.saturating_add(lines);
        let due = last.is_none_or(|t| t.elapsed() >= NOTE_INTERVAL);
        if due {
            note(&logger, pending);
            pending = Written::default();
            last = Some(Instant::now());
        }
    }
    note(&logger, pending);
}
