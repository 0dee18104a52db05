//! Running commands for actions: exec without a shell, a clean
//! environment, a separate process group, an identity switch, a deadline
//! that kills the whole group, and bounded output capture into the log.

use std::cell::Cell;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::config::{Argv, RunAs};
use crate::monitor::log::{Level, Logger};

/// The fixed PATH given to every command.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest output line logged; the rest of the line is cut.
pub const MAX_OUTPUT_LINE: usize = 512;
/// Output logged per run (both streams together); the rest is discarded.
pub const MAX_OUTPUT_PER_RUN: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL when a deadline kills a process group.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this status.
    Exited(ExitStatus),
    /// The deadline passed; its process group was killed.
    TimedOut,
    /// Waiting for it failed (should not happen).
    Lost,
}

impl Outcome {
    /// Exit 0 before the deadline.
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited(s) if s.success())
    }

    /// For log lines.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited(s) => {
                match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                    (Some(c), _) => format!("exit={c}"),
                    (None, Some(sig)) => format!("signal={sig}"),
                    _ => "exit=?".to_string(),
                }
            }
            Outcome::TimedOut => "timeout; process group killed".to_string(),
            Outcome::Lost => "lost".to_string(),
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// Label for log lines (`action NAME run`).
    pub label: String,
    /// The argv, before placeholder substitution.
    pub argv: &'a Argv,
    /// `{addr}` / `POSTERN_ADDR`.
    pub addr: String,
    /// `{action}` / `POSTERN_ACTION`.
    pub action: &'a str,
    /// `{source}` / `POSTERN_SOURCE`: only `[on_lockout]` has one.
    pub source: Option<String>,
    /// Identity to switch to.
    pub run_as: Option<&'a RunAs>,
    /// Working directory.
    pub cwd: &'a Path,
}

/// A started command.
#[derive(Debug)]
pub struct Started {
    /// The child (its pid is also its process group id).
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    logger: Arc<Logger>,
    label: String,
}

/// Starts a command: argv exec'd directly, environment holding only PATH,
/// POSTERN_ADDR and POSTERN_ACTION (and POSTERN_SOURCE for
/// `[on_lockout]`), stdin from /dev/null, stdout and
/// stderr into the log, its own process group, killed if posternd dies.
pub fn start(spec: &Spec<'_>, logger: &Arc<Logger>) -> std::io::Result<Started> {
    start_in(spec, logger, None)
}

/// Like [`start`], and the command joins `cgroup` before exec (so all it
/// ever starts can be killed together).
pub fn start_in(
    spec: &Spec<'_>,
    logger: &Arc<Logger>,
    cgroup: Option<&crate::monitor::cgroup::Cgroup>,
) -> std::io::Result<Started> {
    let argv = spec
        .argv
        .render(&spec.addr, spec.action, spec.source.as_deref());
    let mut cmd = Command::new(spec.argv.program());
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .env("PATH", PATH)
        .env("POSTERN_ADDR", &spec.addr)
        .env("POSTERN_ACTION", spec.action);
    if let Some(source) = &spec.source {
        cmd.env("POSTERN_SOURCE", source);
    }
    cmd.current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    crate::sys::drop_to_in_child(
        &mut cmd,
        spec.run_as.map(|r| (r.uid, r.gid)),
        true,
        false,
        cgroup.map(crate::monitor::cgroup::Cgroup::procs),
    );
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let budget = Rc::new(Cell::new(MAX_OUTPUT_PER_RUN));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::task::spawn_local(pump(
            out,
            Arc::clone(logger),
            format!("{} pid={pid} stdout", spec.label),
            Rc::clone(&budget),
        )));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::task::spawn_local(pump(
            err,
            Arc::clone(logger),
            format!("{} pid={pid} stderr", spec.label),
            budget,
        )));
    }
    Ok(Started {
        child,
        pid,
        pumps,
        logger: Arc::clone(logger),
        label: spec.label.clone(),
    })
}

impl Started {
    /// Hands over the child to a supervisor that waits for it itself; the
    /// output keeps flowing into the log until its pipes close.
    pub fn into_child(self) -> Child {
        self.child
    }

    /// Waits until the command exits or `deadline` passes; on the deadline
    /// the whole process group gets SIGTERM, then SIGKILL. When the main
    /// process exits in time, what it left running is not touched: a `run`
    /// command may legitimately start a daemon (which may still be in the
    /// group between its fork and its setsid); that is logged instead.
    pub async fn wait(mut self, deadline: Duration) -> Outcome {
        let outcome = match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(Ok(status)) => Outcome::Exited(status),
            Ok(Err(_)) => Outcome::Lost,
            Err(_) => {
                kill_group(self.pid, Signal::SIGTERM);
                if tokio::time::timeout(TERM_GRACE, self.child.wait())
                    .await
                    .is_err()
                {
                    kill_group(self.pid, Signal::SIGKILL);
                    let _ = self.child.wait().await;
                }
                kill_group(self.pid, Signal::SIGKILL);
                Outcome::TimedOut
            }
        };
        if matches!(outcome, Outcome::Exited(_)) && group_alive(self.pid) {
            self.logger.log(
                Level::Notice,
                &format!(
                    "{} pid={}: processes it started are still running in process group {}",
                    self.label, self.pid, self.pid
                ),
            );
        }
        // Give the pumps a moment to log what is left, then stop them: a
        // grandchild that escaped the group must not keep them alive.
        for p in self.pumps.drain(..) {
            let abort = p.abort_handle();
            if tokio::time::timeout(Duration::from_millis(200), p)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        outcome
    }
}

/// Sends `sig` to the process group led by `pid`, or to the process
/// alone if it leads none.
pub fn kill_group_or_pid(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        if raw > 1 && killpg(Pid::from_raw(raw), sig).is_err() {
            let _ = nix::sys::signal::kill(Pid::from_raw(raw), sig);
        }
    }
}

/// Whether any process is left in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    match i32::try_from(pgid) {
        Ok(raw) if raw > 1 => killpg(Pid::from_raw(raw), None).is_ok(),
        _ => false,
    }
}

/// Sends `sig` to process group `pgid`. A group that is already gone is
/// fine.
pub fn kill_group(pgid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pgid) {
        if raw > 1 {
            let _ = killpg(Pid::from_raw(raw), sig);
        }
    }
}

/// Copies a child's output into the log: lines cut at
/// [`MAX_OUTPUT_LINE`], at most `budget` bytes per run, then one
/// "truncated" line and silent draining so the child never blocks.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    logger: Arc<Logger>,
    label: String,
    budget: Rc<Cell<usize>>,
) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_OUTPUT_LINE);
    let mut cut = false;
    let mut noted = false;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if budget.get() == 0 {
                if !noted {
                    noted = true;
                    logger.log(
                        Level::Info,
                        &format!("{label}: output truncated after {MAX_OUTPUT_PER_RUN} bytes"),
                    );
                }
                break;
            }
            budget.set(budget.get() - 1);
            if b == b'\n' {
                emit(&logger, &label, &line, cut);
                line.clear();
                cut = false;
            } else if line.len() < MAX_OUTPUT_LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        emit(&logger, &label, &line, cut);
    }
}

fn emit(logger: &Logger, label: &str, line: &[u8], cut: bool) {
    // A CRLF line end (sshd -e writes them) is a line end, not a "?".
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let more = if cut { " [line cut]" } else { "" };
    logger.log(Level::Info, &format!("{label}: {text}{more}"));
}
