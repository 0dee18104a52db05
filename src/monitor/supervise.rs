//! The network process's supervisor: a dead or misbehaving network
//! process is replaced, and nothing the operator relies on goes with it.
//!
//! One *session* (a `session::Session`, served by [`Monitor::serve`])
//! serves one network process and ends with a typed [`SessionEnd`].
//! Unless a stop was asked, the supervisor then logs why, kills what is left of the process (through
//! its own process handle, never by name), and starts a fresh one after a
//! backoff ([`Policy`]), with a fresh session ([`Monitor::attach`]: an
//! empty nonce table, so no nonce issued to the old process is accepted
//! from anyone), handing it the current config, the same listening
//! sockets, and the lockout and rate state the monitor mirrored from the
//! old one's events and from its own verdicts on the replies the old one
//! forwarded ([`Monitor::mirror_event`], [`Monitor::mirror_verdict`],
//! `ipc::Down::Carry`).
//!
//! What survives a restart, and what cannot:
//! - every open gate, its deadline and its ceiling: they live here, in the
//!   monitor, not in the network process; a serve program keeps running;
//! - every lockout of a source or network, with the time it has left, and
//!   every source's strikes and good standing, as the events told them;
//! - a source that was refused for its rate: its bucket is empty as of
//!   the refusal and refills from there at `rate_per_minute`;
//! - not the tokens a source spent without ever being refused (they are
//!   not reported: it gets its bucket back, at most `rate_burst`
//!   handshakes more per restart), not events the network process dropped
//!   under a flood (counted in the log) or had not sent yet when it died
//!   (what it had sent is read to the channel's end), not the
//!   verification budget (a new process starts with a full one), and not
//!   the handshakes in progress: their connections close with the
//!   process; a run that the monitor was carrying out completes, but its
//!   ack cannot reach the client, whose `postern` reports no
//!   acknowledgement.
//!
//! While no network process runs, nothing accepts: the listening sockets
//! stay bound (the monitor holds them), so the kernel completes and queues
//! connections up to the listen backlog and refuses beyond it; the new
//! process serves the queue first.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::ipc::{Notice, Peer, Request, Verdict};
use crate::monitor::action;
use crate::monitor::log::Level;
use crate::monitor::session::SessionEnd;
use crate::monitor::{Monitor, MonitorError, NetChild, Signals};
use crate::net::limits::{Network, NETWORK_LOCKOUT};

/// When to restart the network process, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Restarts are counted over this sliding window.
    pub window: Duration,
    /// Restarts allowed within `window`; the next end gives up.
    pub max_restarts: usize,
    /// The wait before the second restart within the window (the first
    /// is immediate); it doubles with each further one.
    pub first_delay: Duration,
    /// The longest wait between restarts.
    pub max_delay: Duration,
}

/// The policy posternd runs with (README, posternd(8), SECURITY.md).
///
/// - The first restart is immediate: one crash costs the clients
///   nothing but the handshakes it cut off.
/// - Further ones wait 100 ms, 200 ms, ... up to 2 s: a crash loop
///   cannot spin a core, and 2 s stays well inside a waiting client's
///   timeout, so a client queued by the kernel meanwhile is still served.
/// - More than 10 restarts within 60 s gives up, exit status 1: a
///   process that cannot stay up (chroot gone, out of memory) would
///   otherwise be retried forever, silently. (A binary replaced or
///   removed on disk is not such a case: the replacement is started from
///   the binary the monitor runs, `/proc/self/exe`.)
///   That takes about 11 s of failures; systemd (Restart=on-failure)
///   then starts posternd again and the operator sees it. Ten in a
///   minute is far above anything but a loop: a process that lives at
///   least 6 s is never given up on.
pub const POLICY: Policy = Policy {
    window: Duration::from_secs(60),
    max_restarts: 10,
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
};

impl Policy {
    /// The wait before a restart when `recent` restarts already happened
    /// within the window.
    pub fn delay(&self, recent: usize) -> Duration {
        if recent == 0 {
            return Duration::ZERO;
        }
        let doublings = u32::try_from(recent - 1).unwrap_or(u32::MAX).min(16);
        self.first_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }
}

/// How long a network process whose channel closed may take to exit
/// before it is killed, and how long what a process sent before it
/// exited is still read.
pub(super) const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Starts a network process (the real one: `daemon::spawn_network`; a
/// stand-in in tests).
pub type Spawn<'a> = &'a mut dyn FnMut() -> io::Result<NetChild>;

/// Serves until a stop is asked (Ok) or restarts keep failing (Err):
/// recovers the gates, then runs sessions with `first` and its
/// replacements, started by `spawn`, under `policy`.
pub async fn run(
    monitor: &Rc<Monitor>,
    first: Child,
    mut signals: Signals,
    spawn: Spawn<'_>,
    policy: &Policy,
) -> Result<(), MonitorError> {
    monitor.gates.recover().await;
    let mut child = first;
    let mut restarts: VecDeque<Instant> = VecDeque::with_capacity(policy.max_restarts + 1);
    loop {
        let pid = child.id().unwrap_or(0);
        let mut end = monitor.serve(&mut child, &mut signals).await;
        if end == SessionEnd::Stop {
            stop(monitor, Some(child)).await;
            return Ok(());
        }
        if end == SessionEnd::ChannelClosed {
            // A dying process closes its descriptors just before it
            // becomes a zombie: give it a moment, so the log says how it
            // ended rather than only that its channel closed.
            if let Ok(st) = tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                end = SessionEnd::Exited(st.ok());
            }
        }
        // Whatever is left of it goes, through its own handle; waiting
        // reaps it, so its pid cannot be reused under us.
        let _ = child.start_kill();
        let _ = child.wait().await;
        let killed = if matches!(end, SessionEnd::Exited(_)) {
            ""
        } else {
            "; killed"
        };
        monitor.log(
            Level::Err,
            &format!("network process pid={pid} {end}{killed}; starting a new one (gates, lockouts and rate limits kept)"),
        );
        child = loop {
            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= policy.window)
            {
                restarts.pop_front();
            }
            if restarts.len() >= policy.max_restarts {
                let msg = format!(
                    "network process: {} restarts within {}s did not keep it running; giving up (open gates stay in the state file for the next start)",
                    restarts.len(),
                    policy.window.as_secs()
                );
                monitor.log(Level::Err, &msg);
                return Err(MonitorError::GaveUp(msg));
            }
            let wait = policy.delay(restarts.len());
            restarts.push_back(now);
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = signals.term.recv() => return stopped(monitor).await,
                    _ = signals.int.recv() => return stopped(monitor).await,
                    _ = monitor.shutdown.notified() => return stopped(monitor).await,
                }
            }
            match start(monitor, spawn).await {
                Ok(c) => {
                    monitor.log(
                        Level::Notice,
                        &format!(
                            "network process pid={} started (restart {} within {}s, after {} ms)",
                            c.id().unwrap_or(0),
                            restarts.len(),
                            policy.window.as_secs(),
                            wait.as_millis()
                        ),
                    );
                    break c;
                }
                Err(e) => monitor.log(Level::Err, &format!("network process restart failed: {e}")),
            }
        };
    }
}

async fn stopped(monitor: &Rc<Monitor>) -> Result<(), MonitorError> {
    stop(monitor, None).await;
    Ok(())
}

/// Starts a replacement and hands it the config, the listeners and the
/// mirrored state; a process that cannot take them is killed.
async fn start(monitor: &Rc<Monitor>, spawn: Spawn<'_>) -> io::Result<Child> {
    let NetChild { mut child, chan } = spawn()?;
    monitor.attach(chan);
    if let Err(e) = monitor.send_config_with(true).await {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(io::Error::new(
            e.kind(),
            format!("cannot configure it: {e}"),
        ));
    }
    Ok(child)
}

/// A clean stop: running handshakes get `shutdown_grace`, then, with
/// `stop_on_exit`, every gate is closed.
async fn stop(monitor: &Rc<Monitor>, child: Option<Child>) {
    monitor.log(Level::Notice, "stop requested; finishing handshakes");
    if let Some(mut child) = child {
        if let Some(pid) = child.id() {
            action::kill_group_or_pid(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let grace = monitor.book.borrow().config.daemon.shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    let config = Rc::clone(&monitor.book.borrow().config);
    if config.daemon.stop_on_exit {
        monitor.gates.close_all("shutdown", &config).await;
    }
    monitor.log(Level::Notice, "stopped");
}

impl Monitor {
    /// Keeps the mirror of the network process's lockout and rate state
    /// up to date with one of its (decoded, range-checked) events: a
    /// counted failure (one without a reply: a timeout, a short or long
    /// reply), a lockout of a source or a network, a rate-limit refusal.
    /// Bounded by `lockout_table` like the table it mirrors; a
    /// compromised process can only make it say what it could enforce
    /// anyway. Successes, and failures of replies it forwarded, are the
    /// monitor's own verdicts ([`mirror_verdict`](Self::mirror_verdict)).
    pub(super) fn mirror_event(&self, req: &Request) {
        let now = Instant::now();
        let mut m = self.mirror.borrow_mut();
        match *req {
            // The session handles these; verdicts are mirrored there.
            Request::Verify { .. } | Request::Nonces { .. } | Request::Connection { .. } => {}
            // Zero failures: an exempt source or an eviction, not counted.
            Request::Fail { peer, failures, .. } if failures > 0 => {
                m.fail(peer.addr, now);
                let _ = m.take_locked_network();
            }
            Request::Fail { .. } => {}
            Request::Lockout { peer, .. } => m.lock_source(peer.addr, now),
            Request::Notice {
                notice: Notice::RateLimited,
                peer,
                ..
            } => m.drain_bucket(peer.addr, now),
            Request::Notice {
                notice: Notice::NetworkLocked,
                peer,
                value,
                ..
            } => {
                let net = NETWORK_LOCKOUT
                    .iter()
                    .find(|(_, len, _)| u32::from(*len) == value)
                    .and_then(|&(family, len, _)| Network::of(peer.addr, family, len));
                if let Some(net) = net {
                    m.lock_network(net, now);
                }
            }
            Request::Notice { .. } => {}
        }
    }

    /// Keeps the mirror up to date with the monitor's own verdict on a
    /// reply: "the monitor verified the reply" is the success signal (the
    /// source is forgiven and in good standing), and a refused reply is a
    /// failure the network process counts on hearing the verdict
    /// (`failures` is what it said the count would be; zero for an
    /// exempt source, not counted).
    pub(super) fn mirror_verdict(&self, peer: Peer, verdict: Verdict, failures: u32) {
        let now = Instant::now();
        let mut m = self.mirror.borrow_mut();
        match verdict {
            Verdict::Authenticated => m.succeed(peer.addr, now),
            Verdict::Bad | Verdict::BindMismatch if failures > 0 => {
                m.fail(peer.addr, now);
                let _ = m.take_locked_network();
            }
            Verdict::Bad | Verdict::BindMismatch => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the first restart is immediate, the next ones double from
    // 100 ms and stop at 2 s.
    #[test]
    fn backoff_doubles_to_its_ceiling() {
        let got: Vec<u128> = (0..8).map(|n| POLICY.delay(n).as_millis()).collect();
        assert_eq!(got, [0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(POLICY.delay(usize::MAX), Duration::from_secs(2));
        // Giving up takes the sum of the waits: about 11 s, inside the
        // window, so a process that never stays up is given up on.
        let total: Duration = (0..POLICY.max_restarts).map(|n| POLICY.delay(n)).sum();
        assert!(total < POLICY.window, "{total:?}");
    }
}
