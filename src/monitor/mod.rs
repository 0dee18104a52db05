//! The privileged monitor. It never reads network data: it binds the
//! listeners, starts the network process, and then only answers the
//! fixed-size requests that process sends (`ipc.rs`), after validating
//! each one. It alone holds the keys and passwords: it issues every
//! nonce and checks every reply (`session.rs`, `nonces.rs`, `verify.rs`).
//! Anything malformed ends the network process's session with a typed
//! reason (`session::SessionEnd`): the monitor kills that process and
//! starts a fresh one with a fresh session (`supervise.rs`); gates,
//! lockouts and rate limits survive.
//!
//! It owns everything privileged: running actions (identity switch,
//! deadlines, cooldowns, single instance), the gates and their state file,
//! logging, config reload (SIGHUP) and shutdown (SIGTERM, SIGINT, or the
//! `shutdown` builtin).

pub mod action;
pub mod cgroup;
pub mod childlog;
pub mod daemon;
pub mod gate;
pub mod init;
pub mod listen;
pub mod log;
pub mod nonces;
pub mod notify;
pub mod session;
pub mod state;
pub mod supervise;
pub mod verify;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::channel::Channel;
use crate::config::{self, ActionKind, Config, Protocol};
use crate::ipc::{Down, NetLimits, Notice, Request, MAX_CARRY_BATCH};
use crate::monitor::action::Spec;
use crate::monitor::gate::{Gates, Instance};
use crate::monitor::listen::{bind_listener, local_addr, ListenError};
use crate::monitor::log::{Level, Logger};
use crate::monitor::nonces::NonceTable;
use crate::monitor::session::{Session, SessionEnd};
use crate::monitor::verify::Keyring;
use crate::net::limits::SourceTable;
use crate::wire::{Answer, Reason, Status};

/// Most `on_lockout` commands running at once; more are skipped (logged).
pub const MAX_ON_LOCKOUT: usize = 8;
/// Most authenticated replies being handled at once (action running or
/// gate opening); beyond, the ack says "refused, busy" instead of work
/// piling up here. The network process waits for at most as many acks
/// (`net::MAX_PENDING_ACKS`).
pub const MAX_RUN_REQUESTS: usize = 64;
/// Extra time the network process waits for a run answer, beyond the
/// longest action deadline.
const ACK_SLACK: Duration = Duration::from_secs(5);

/// Config generations whose listeners and key slot count the monitor keeps,
/// to judge a request against the generation it was made under. A request
/// from an older one is stale: handled (logged, a run refused), never
/// fatal.
pub const KEPT_GENERATIONS: usize = 8;

/// Why the monitor stopped with an error.
#[derive(Debug)]
pub enum MonitorError {
    /// Restarts of the network process kept failing within the restart
    /// window (`supervise::Policy`); the message says how many and why.
    GaveUp(String),
    /// Setting something up failed.
    Setup(String),
}

impl core::fmt::Display for MonitorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MonitorError::GaveUp(m) | MonitorError::Setup(m) => f.write_str(m),
        }
    }
}

/// A bound listening socket, keyed by its configured address.
#[derive(Debug)]
pub struct Bound {
    /// As written in the config (port may be 0).
    pub configured: SocketAddr,
    /// The socket.
    pub fd: OwnedFd,
    /// Where it actually listens.
    pub local: SocketAddr,
}

/// Binds every listener of `config`, reusing sockets from `old` whose
/// configured address is unchanged. With `activated` descriptors (systemd
/// socket activation), every configured address must be one of them: a
/// listener systemd did not pass is an error, and a passed socket that no
/// `[[listen]]` names is closed with a warning returned to the caller.
pub fn bind_all(
    config: &Config,
    old: &mut Vec<Bound>,
    activated: Option<Vec<OwnedFd>>,
) -> Result<(Vec<Bound>, Vec<String>), ListenError> {
    let is_activated = activated.is_some();
    let mut passed: Vec<Bound> = Vec::new();
    if let Some(fds) = activated {
        for fd in fds {
            let local = local_addr(&fd).ok_or_else(|| {
                ListenError::Activation("a passed descriptor is not a TCP socket".into())
            })?;
            passed.push(Bound {
                configured: local,
                fd,
                local,
            });
        }
    }
    let mut out: Vec<Bound> = Vec::new();
    let mut failure = None;
    for l in &config.listeners {
        if is_activated {
            match passed.iter().position(|b| b.local == l.address) {
                Some(i) => {
                    let mut b = passed.swap_remove(i);
                    b.configured = l.address;
                    out.push(b);
                }
                None => {
                    failure = Some(ListenError::Activation(format!(
                        "[[listen]] address {} was not passed by systemd; make the .socket unit's ListenStream= match it",
                        l.address
                    )));
                    break;
                }
            }
            continue;
        }
        let reuse = old
            .iter()
            .position(|b| b.configured == l.address || b.local == l.address);
        match reuse {
            Some(i) => out.push(old.swap_remove(i)),
            None => match bind_listener(l.address) {
                Ok(fd) => {
                    let local = local_addr(&fd).unwrap_or(l.address);
                    out.push(Bound {
                        configured: l.address,
                        fd,
                        local,
                    });
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            },
        }
    }
    if let Some(e) = failure {
        // Give the reused sockets back, so a failed reload loses nothing.
        old.extend(out);
        return Err(e);
    }
    let warnings = passed
        .iter()
        .map(|b| {
            format!(
                "socket activation: passed socket {} matches no [[listen]]; closed",
                b.local
            )
        })
        .collect();
    Ok((out, warnings))
}

#[derive(Debug, Default)]
struct ActionState {
    running: usize,
    last_start: Option<Instant>,
}

/// Monitor state shared by its tasks.
struct Book {
    config: Rc<Config>,
    generation: u32,
    /// The config that the last reload replaced, with its generation:
    /// requests from handshakes that began under it are mapped onto the
    /// current config by [`Monitor::resolve`].
    previous: Option<(u32, Rc<Config>)>,
    bound: Vec<Bound>,
    actions: HashMap<String, ActionState>,
    on_lockout_running: usize,
    on_lockout_noted: bool,
    runs_in_flight: usize,
    /// Kept generations, oldest first; the last is the current one.
    generations: VecDeque<KeptGeneration>,
    /// The current config's key slots, prepared.
    keyring: Rc<Keyring>,
    /// The keyring of `previous`, with its generation.
    previous_keyring: Option<(u32, Rc<Keyring>)>,
}

/// (generation, listener names and protocols, key slot count).
type KeptGeneration = (u32, Vec<(String, Protocol)>, usize);

/// What a request's generation says about how to judge it.
enum Judge {
    /// A kept generation: its listener count.
    Known(usize),
    /// Older than every kept generation: nothing to range-check against;
    /// harmless, since every use of an index is a checked look-up.
    Stale,
}

impl Book {
    fn remember_generation(&mut self) {
        let names = self
            .bound
            .iter()
            .zip(self.config.listeners.iter())
            .map(|(x, l)| (x.local.to_string(), l.protocol))
            .collect();
        self.generations
            .push_back((self.generation, names, self.config.slots.len()));
        while self.generations.len() > KEPT_GENERATIONS {
            self.generations.pop_front();
        }
    }

    /// How to judge a request made under `generation` (0: the current
    /// one). `None` for a generation never sent: forged.
    fn judge(&self, generation: u32) -> Option<Judge> {
        let g = if generation == 0 {
            self.generation
        } else {
            generation
        };
        if let Some((_, names, _)) = self.generations.iter().find(|(n, _, _)| *n == g) {
            return Some(Judge::Known(names.len()));
        }
        // Generations count up (wrapping, skipping 0): one "behind" the
        // current by less than half the range is older.
        let behind = self.generation.wrapping_sub(g);
        (behind != 0 && behind < u32::MAX / 2).then_some(Judge::Stale)
    }

    /// The protocol of listener `index` in `generation` (0: current),
    /// if that generation is kept and has it.
    fn protocol_of(&self, generation: u32, index: u8) -> Option<Protocol> {
        let g = if generation == 0 {
            self.generation
        } else {
            generation
        };
        self.generations
            .iter()
            .find(|(n, _, _)| *n == g)
            .and_then(|(_, l, _)| l.get(usize::from(index)))
            .map(|(_, p)| *p)
    }
}

/// The monitor's signal handlers: SIGHUP reloads, SIGTERM and SIGINT stop.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Called before the "started" line and
    /// READY=1: from then on the signals' default actions (which would end
    /// the monitor, and with it every gate) no longer apply.
    pub fn install() -> Result<Signals, MonitorError> {
        let setup = |e: std::io::Error| MonitorError::Setup(format!("signal handler: {e}"));
        Ok(Signals {
            hup: signal(SignalKind::hangup()).map_err(setup)?,
            term: signal(SignalKind::terminate()).map_err(setup)?,
            int: signal(SignalKind::interrupt()).map_err(setup)?,
        })
    }
}

/// The monitor.
pub struct Monitor {
    book: RefCell<Book>,
    logger: Arc<Logger>,
    /// The current network process's session (a fresh process gets a
    /// fresh one: [`attach`](Monitor::attach)).
    session: RefCell<Rc<Session>>,
    shutdown: Notify,
    gates: Rc<Gates>,
    /// The lockout and rate state of the network process, as its events
    /// and the monitor's own verdicts tell it (bounded by
    /// `lockout_table`), for a replacement to start from (`supervise.rs`).
    mirror: RefCell<SourceTable>,
    /// Run once, on the first well-formed request of a network process
    /// ([`when_up`](Monitor::when_up)).
    up: RefCell<Option<Box<dyn FnOnce()>>>,
}

/// A started network process and the monitor's end of its channel.
pub struct NetChild {
    /// The running process.
    pub child: Child,
    /// The monitor's end of the socketpair it inherited.
    pub chan: Channel,
}

impl Monitor {
    /// Wraps the running pieces. `chan` is the monitor end of the pair.
    pub fn new(
        config: Config,
        bound: Vec<Bound>,
        logger: Arc<Logger>,
        chan: Channel,
    ) -> Rc<Monitor> {
        let config = Rc::new(config);
        let gates = Gates::new(Rc::clone(&config), Arc::clone(&logger));
        let mirror = SourceTable::new(&config.limits);
        let keyring = Rc::new(Keyring::from_config(&config));
        if !keyring.lock() {
            logger.log(
                Level::Warning,
                "prepared keys could not be locked in memory (RLIMIT_MEMLOCK); they may be swapped",
            );
        }
        let session = Session::new(chan, nonce_table(&config));
        let mut book = Book {
            config,
            generation: 1,
            previous: None,
            bound,
            actions: HashMap::new(),
            on_lockout_running: 0,
            on_lockout_noted: false,
            runs_in_flight: 0,
            generations: VecDeque::new(),
            keyring,
            previous_keyring: None,
        };
        book.remember_generation();
        Rc::new(Monitor {
            book: RefCell::new(book),
            logger,
            session: RefCell::new(session),
            shutdown: Notify::new(),
            gates,
            mirror: RefCell::new(mirror),
            up: RefCell::new(None),
        })
    }

    /// Runs `f` once, when a network process first sends a well-formed
    /// request: by then it has been exec'd, jailed and configured, and it
    /// accepts next. Start-up says "started" (and READY=1) only then, not
    /// as soon as the config is on its way.
    pub fn when_up(&self, f: impl FnOnce() + 'static) {
        *self.up.borrow_mut() = Some(Box::new(f));
    }

    /// A network process is up (see [`when_up`](Monitor::when_up)).
    pub(super) fn network_up(&self) {
        let f = self.up.borrow_mut().take();
        if let Some(f) = f {
            f();
        }
    }

    fn log(&self, level: Level, msg: &str) {
        self.logger.log(level, msg);
    }

    /// The current network process's session.
    pub fn session(&self) -> Rc<Session> {
        Rc::clone(&self.session.borrow())
    }

    /// Starts a fresh session on `chan` (a new network process): an
    /// empty nonce table, nothing queued. The old session's nonces are
    /// forgotten, so nothing issued to a previous process is accepted.
    /// Call [`send_config`](Monitor::send_config) next.
    pub fn attach(&self, chan: Channel) {
        let config = Rc::clone(&self.book.borrow().config);
        *self.session.borrow_mut() = Session::new(chan, nonce_table(&config));
    }

    /// Sends the current config (limits, sockets, exempt networks; no
    /// secret) to the network process.
    pub async fn send_config(&self) -> std::io::Result<()> {
        self.send_config_with(false).await
    }

    /// Sends the current config; with `carry`, the mirrored lockout and
    /// rate state too, inside it (before End), so that a replacement
    /// network process holds them before its first accept.
    async fn send_config_with(&self, carry: bool) -> std::io::Result<()> {
        let session = self.session();
        let chan = session.channel();
        let (config, generation, fds): (Rc<Config>, u32, Vec<i32>) = {
            let b = self.book.borrow();
            (
                Rc::clone(&b.config),
                b.generation,
                b.bound.iter().map(|x| x.fd.as_raw_fd()).collect(),
            )
        };
        let l = &config.limits;
        let limits = NetLimits::of(
            l,
            // The monitor always answers well within the protocol's ack
            // deadline (config bounds every wait before an ack); the
            // network process gives up a little before it.
            Duration::from_secs(crate::wire::ACK_DEADLINE_SECS).saturating_sub(ACK_SLACK),
            config.daemon.shutdown_grace,
        );
        let begin = Down::Begin {
            generation,
            limits,
            listeners: config.listeners.len() as u16,
            exempt: l.exempt.len() as u16,
        };
        chan.send(&begin.encode(), &[]).await?;
        for (i, (listener, fd)) in config.listeners.iter().zip(fds.iter()).enumerate() {
            let msg = Down::Listener {
                index: i as u8,
                protocol: listener.protocol,
            };
            chan.send(&msg.encode(), &[*fd]).await?;
        }
        for net in &l.exempt {
            chan.send(&Down::Exempt(*net).encode(), &[]).await?;
        }
        if carry {
            let records = self.mirror.borrow().export(std::time::Instant::now());
            for batch in records.chunks(MAX_CARRY_BATCH) {
                chan.send(&Down::Carry(batch.to_vec()).encode(), &[])
                    .await?;
            }
        }
        chan.send(&Down::End.encode(), &[]).await
    }

    /// Serves one network process, `child`, over the current session,
    /// until it ends or a stop is asked; says which. Never exits the
    /// daemon and never touches the gates: the supervisor
    /// (`supervise.rs`) decides what follows. `signals` must have been
    /// installed before posternd said it had started, so that a SIGHUP or
    /// SIGTERM sent at once is handled, not fatal.
    pub async fn serve(self: &Rc<Self>, child: &mut Child, signals: &mut Signals) -> SessionEnd {
        // Once it has exited, what it sent before it died (a lockout, say)
        // is still read, up to the channel's end, for at most this long.
        let mut exited: Option<(Option<std::process::ExitStatus>, tokio::time::Instant)> = None;
        let closed = |exited: Option<(Option<std::process::ExitStatus>, _)>| {
            exited.map_or(SessionEnd::ChannelClosed, |(st, _)| SessionEnd::Exited(st))
        };
        loop {
            let drained_by = exited.map(|(_, t)| t);
            tokio::select! {
                // Cancel-safe: a request is read and handled whole, or
                // left on the channel.
                r = self.step() => match r {
                    Ok(()) => {}
                    Err(SessionEnd::ChannelClosed) => return closed(exited),
                    Err(end) => return end,
                },
                st = child.wait(), if exited.is_none() => {
                    exited = Some((st.ok(), tokio::time::Instant::now() + supervise::EXIT_GRACE));
                }
                _ = tokio::time::sleep_until(drained_by.unwrap_or_else(tokio::time::Instant::now)), if drained_by.is_some() => {
                    return closed(exited);
                }
                _ = signals.hup.recv() => self.reload().await,
                _ = signals.term.recv() => return SessionEnd::Stop,
                _ = signals.int.recv() => return SessionEnd::Stop,
                _ = self.shutdown.notified() => return SessionEnd::Stop,
            }
        }
    }

    /// The name of listener `index` of config `generation` (0: current);
    /// "?" if that generation is no longer kept.
    fn listener_name(&self, generation: u32, index: u8) -> String {
        let b = self.book.borrow();
        let g = if generation == 0 {
            b.generation
        } else {
            generation
        };
        b.generations
            .iter()
            .find(|(n, _, _)| *n == g)
            .and_then(|(_, names, _)| names.get(usize::from(index)).map(|(n, _)| n.clone()))
            .unwrap_or_else(|| "?".into())
    }

    fn handle(self: &Rc<Self>, req: Request, generation: u32) {
        self.mirror_event(&req);
        match req {
            // Handled by the session (`session.rs`).
            Request::Verify { .. } | Request::Nonces { .. } | Request::Connection { .. } => {}
            Request::Fail {
                peer,
                reason,
                failures,
                ..
            } => self.log_fail(peer, reason, failures, generation),
            Request::Lockout { peer, failures } => {
                let duration = self.book.borrow().config.limits.lockout_duration;
                let key = crate::net::limits::SourceKey::of(peer.addr);
                let source = key.to_string();
                self.log(
                    Level::Warning,
                    &format!(
                        "lockout src={} source={source} failures={failures} duration={}s",
                        peer.addr,
                        duration.as_secs()
                    ),
                );
                self.on_lockout(peer.addr, source, key.prefix_len(), false);
            }
            Request::Notice {
                notice,
                peer,
                value,
                ..
            } => {
                let listener = self.listener_name(generation, peer.listener);
                let line = match notice {
                    Notice::HandshakesFull => format!(
                        "limit max_handshakes={value} reached on listener={listener}; evicting the oldest pending handshakes"
                    ),
                    Notice::SourceTableFull => format!(
                        "limit lockout_table={value} full; forgetting the least recently seen sources"
                    ),
                    Notice::RateLimited => format!(
                        "ratelimit src={} listener={listener}; closing its connections until it slows down",
                        peer.addr
                    ),
                    Notice::AcceptError => format!(
                        "accept failed on listener={listener}: {}; retrying",
                        std::io::Error::from_raw_os_error(value as i32)
                    ),
                    Notice::RandomFailed => {
                        "error the OS random generator failed; connection dropped".to_string()
                    }
                    Notice::NoNonce => format!(
                        "limit nonces: none at hand for a connection on listener={listener}; closed before the greeting"
                    ),
                    Notice::EventsDropped => format!(
                        "limit log events: {value} dropped while the log fell behind a flood"
                    ),
                    Notice::OverBudget => format!(
                        "limit verify_per_second={value} reached; closing connections from sources not in good standing until it refills"
                    ),
                    Notice::NetworkLocked => {
                        let len = value.min(128) as u8;
                        let net = crate::net::limits::NETWORK_LOCKOUT
                            .iter()
                            .find(|(_, l, _)| *l == len)
                            .and_then(|&(family, l, factor)| {
                                crate::net::limits::Network::of(peer.addr, family, l).map(|n| (n, factor))
                            });
                        let Some((net, factor)) = net else {
                            return;
                        };
                        let (after, duration) = {
                            let b = self.book.borrow();
                            (b.config.limits.lockout_after.get(), b.config.limits.lockout_duration)
                        };
                        self.log(
                            Level::Warning,
                            &format!(
                                "lockout src={} source={net} failures={} duration={}s",
                                peer.addr,
                                after.saturating_mul(factor),
                                duration.as_secs()
                            ),
                        );
                        self.on_lockout(peer.addr, net.to_string(), len, true);
                        return;
                    }
                    Notice::NoReply => format!(
                        "noreply src={} port={} listener={listener}; closed after the challenge without replying (not counted)",
                        peer.addr, peer.port
                    ),
                    Notice::PassRefused => format!(
                        "limit inflight: the kernel refused to pass a connection to the monitor (ETOOMANYREFS: descriptors in flight from user {} exceed its open-file limit of {value}); retrying until the handshake's deadline; give the network process a user of its own",
                        self.book.borrow().config.daemon.user.name
                    ),
                    Notice::PassGaveUp => {
                        self.log(
                            Level::Err,
                            &format!(
                                "error src={} port={} listener={listener}: its connection could not be passed to the monitor before the handshake's deadline; nothing ran (not counted)",
                                peer.addr, peer.port
                            ),
                        );
                        return;
                    }
                };
                self.log(Level::Warning, &line);
            }
        }
    }

    /// `by=NAME`, and `key=old` or `key=next` for a key being rotated, for
    /// key slot `slot` of config `generation` (`by=?` if that generation
    /// is no longer kept).
    fn key_of(&self, generation: u32, slot: u16) -> String {
        let b = self.book.borrow();
        let config = if generation == b.generation {
            Some(&b.config)
        } else {
            b.previous
                .as_ref()
                .filter(|(g, _)| *g == generation)
                .map(|(_, c)| c)
        };
        let Some((config, slot)) =
            config.and_then(|c| c.slots.get(usize::from(slot)).map(|s| (c, s)))
        else {
            return "by=?".into();
        };
        match slot.role.log_name() {
            Some(role) => format!("by={} key={role}", config.slot_name(slot)),
            None => format!("by={}", config.slot_name(slot)),
        }
    }

    /// Maps key slot `index` of config `generation` onto the current
    /// config: the current config and the index of the action to run. A
    /// request from a handshake that began before the last reload runs if
    /// its action is still configured with the same settings and the key
    /// that matched is still one of its keys, with the same name and
    /// secret; otherwise it is refused with [`Reason::ConfigChanged`] (a
    /// removed key is never accepted again). A slot whose validity has
    /// ended (an old key past its overlap window) is refused too. The
    /// error is the action's name and what happened, for the log.
    fn resolve(
        &self,
        generation: u32,
        index: u16,
    ) -> Result<(Rc<Config>, usize), (String, String)> {
        let b = self.book.borrow();
        let now = std::time::SystemTime::now();
        let index = usize::from(index);
        let expired = |config: &Config, slot: &config::KeySlot| {
            let action = config
                .actions
                .get(slot.action)
                .map_or("?", |a| a.name.as_str());
            (
                action.to_owned(),
                format!("key {} is past its overlap window", config.slot_name(slot)),
            )
        };
        let unknown = || ("?".to_owned(), "no longer known".to_owned());
        if generation == b.generation {
            return match b.config.slots.get(index) {
                Some(s) if s.valid_at(now) => Ok((Rc::clone(&b.config), s.action)),
                Some(s) => Err(expired(&b.config, s)),
                None => Err(unknown()),
            };
        }
        let Some((old_gen, old)) = b.previous.as_ref() else {
            return Err(unknown());
        };
        let Some(was) = old.slots.get(index).filter(|_| *old_gen == generation) else {
            return Err(unknown());
        };
        let Some(old_action) = old.actions.get(was.action) else {
            return Err(unknown());
        };
        let gone = || {
            (
                old_action.name.clone(),
                format!(
                    "changed, or key {} removed or changed, by a reload",
                    old.slot_name(was)
                ),
            )
        };
        let Some(now_action) = b
            .config
            .actions
            .iter()
            .position(|a| config::same_action(a, old_action))
        else {
            return Err(gone());
        };
        match config::same_slot(old, was, &b.config, now_action).and_then(|i| b.config.slots.get(i))
        {
            Some(s) if s.valid_at(now) => Ok((Rc::clone(&b.config), now_action)),
            Some(s) => Err(expired(&b.config, s)),
            None => Err(gone()),
        }
    }

    fn is_shutdown_action(&self, name: &str) -> bool {
        self.book
            .borrow()
            .config
            .actions
            .iter()
            .any(|a| a.name == name && matches!(a.kind, ActionKind::Shutdown))
    }

    /// Runs the action of key slot `slot` of config `generation` for
    /// `target` and says what happened: the ack's body, and the action's
    /// name for the log.
    async fn run_action(
        self: &Rc<Self>,
        generation: u32,
        slot: u16,
        target: IpAddr,
    ) -> (Answer, String) {
        let (config, index) = match self.resolve(generation, slot) {
            Ok(found) => found,
            Err((name, why)) => {
                self.log(
                    Level::Notice,
                    &format!("action {name}: {why}; request refused"),
                );
                return (
                    Answer::because(Status::Refused, Reason::ConfigChanged),
                    name,
                );
            }
        };
        let Some(action) = config.actions.get(index) else {
            return (
                Answer::because(Status::Refused, Reason::ConfigChanged),
                "?".into(),
            );
        };
        let name = action.name.clone();
        match &action.kind {
            ActionKind::Shutdown => return (Answer::bare(Status::Started), name),
            ActionKind::Close { gate } => {
                // Config validation names a gate of the same config here.
                let answer = match config.actions.iter().find(|a| a.name == *gate) {
                    Some(g) => self.gates.close_early(g, target).await,
                    None => Answer::because(Status::Refused, Reason::ConfigChanged),
                };
                return (answer, name);
            }
            _ => {}
        }
        // A trigger that arrives while this gate is being opened waits for
        // that outcome: a failure is reported as it is, a success is
        // answered below as an open gate.
        let instance = Instance::of(action, target);
        if self.gates.is_opening(&instance) {
            self.log(
                Level::Info,
                &format!(
                    "action {name}: its gate is being opened; this trigger waits for the outcome"
                ),
            );
        }
        if let Some(failed) = self.gates.wait_opening(&instance).await {
            return (failed, name);
        }
        if let Some(answer) = self.gates.try_extend(action, target).await {
            return (answer, name);
        }
        if let Some(full) = self.gates.full(action, target) {
            return (full, name);
        }
        // A per-address gate's instances are its single instances: one
        // address's opening does not hold back another's.
        let per_address = instance.addr.is_some();
        {
            let mut b = self.book.borrow_mut();
            let st = b.actions.entry(name.clone()).or_default();
            if action.single_instance && !per_address && st.running > 0 {
                return (Answer::bare(Status::AlreadyActive), name);
            }
            if let Some(last) = st.last_start {
                let since = last.elapsed();
                if since < action.cooldown {
                    let left = action.cooldown - since;
                    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                    return (
                        Answer::because(Status::Refused, Reason::Cooldown)
                            .with_seconds(u32::try_from(secs).unwrap_or(u32::MAX)),
                        name,
                    );
                }
            }
            st.running += 1;
            st.last_start = Some(Instant::now());
        }
        let answer = match &action.kind {
            ActionKind::Run { run, gate: None } => self.run_plain(&config, action, run, target),
            ActionKind::Run { gate: Some(_), .. } | ActionKind::Serve { .. } => {
                let answer = self.gates.open(action, target).await;
                self.finished(&name);
                answer
            }
            // Both were answered above, before any state was touched.
            ActionKind::Shutdown | ActionKind::Close { .. } => Answer::bare(Status::Started),
        };
        if answer.status == Status::Failed {
            // A failed start does not hold the single-instance slot.
            if let Some(st) = self.book.borrow_mut().actions.get_mut(&name) {
                st.last_start = None;
            }
        }
        (answer, name)
    }

    fn finished(&self, name: &str) {
        if let Some(st) = self.book.borrow_mut().actions.get_mut(name) {
            st.running = st.running.saturating_sub(1);
        }
    }

    fn run_plain(
        self: &Rc<Self>,
        config: &Rc<Config>,
        action: &config::Action,
        run: &config::Argv,
        target: IpAddr,
    ) -> Answer {
        let spec = Spec {
            label: format!("action {} run", action.name),
            argv: run,
            addr: target.to_string(),
            action: &action.name,
            source: None,
            run_as: action.run_as.as_ref(),
            cwd: &config.daemon.state_dir,
        };
        match action::start(&spec, &self.logger) {
            Ok(started) => {
                let me = Rc::clone(self);
                let name = action.name.clone();
                let timeout = action.timeout;
                let pid = started.pid;
                self.log(
                    Level::Notice,
                    &format!("action {name} run pid={pid} started for addr={target}"),
                );
                tokio::task::spawn_local(async move {
                    let outcome = started.wait(timeout).await;
                    me.log(
                        Level::Notice,
                        &format!("action {name} run pid={pid} {}", outcome.describe()),
                    );
                    me.finished(&name);
                });
                Answer::bare(Status::Started)
            }
            Err(e) => {
                self.log(
                    Level::Err,
                    &format!(
                        "action {} run failed to start {}: {e}",
                        action.name,
                        run.program()
                    ),
                );
                self.finished(&action.name);
                Answer::because(Status::Failed, Reason::SpawnFailed)
            }
        }
    }

    /// Runs `[on_lockout]` for `source` (the locked-out source or, when
    /// `network`, network, as CIDR: `addr`'s first `len` bits), locked
    /// out by `addr`'s failure; a network only with `networks = true`.
    /// Never for what overlaps an `exempt` network: an honest network
    /// process never locks out an exempt source, and a network it locks
    /// may hold one, which a firewall ban of `{source}` would shut out.
    fn on_lockout(self: &Rc<Self>, addr: IpAddr, source: String, len: u8, network: bool) {
        let (config, state_dir) = {
            let b = self.book.borrow();
            (Rc::clone(&b.config), b.config.daemon.state_dir.clone())
        };
        let Some(cmd) = config
            .on_lockout
            .as_ref()
            .filter(|c| c.networks || !network)
        else {
            return;
        };
        let locked = crate::config::IpNet { addr, prefix: len };
        if let Some(e) = config.limits.exempt.iter().find(|e| e.overlaps(&locked)) {
            self.log(
                Level::Warning,
                &format!("on_lockout not run for addr={addr} source={source}: it overlaps exempt network {e}"),
            );
            return;
        }
        {
            let mut b = self.book.borrow_mut();
            if b.on_lockout_running >= MAX_ON_LOCKOUT {
                if !b.on_lockout_noted {
                    b.on_lockout_noted = true;
                    drop(b);
                    self.log(
                        Level::Warning,
                        &format!("limit on_lockout: {MAX_ON_LOCKOUT} already running; skipping until one ends"),
                    );
                }
                return;
            }
            b.on_lockout_running += 1;
            b.on_lockout_noted = false;
        }
        let spec = Spec {
            label: "on_lockout".into(),
            argv: &cmd.argv,
            addr: addr.to_string(),
            action: "on_lockout",
            source: Some(source.clone()),
            run_as: cmd.run_as.as_ref(),
            cwd: &state_dir,
        };
        let done = |me: &Rc<Monitor>| {
            let mut b = me.book.borrow_mut();
            b.on_lockout_running = b.on_lockout_running.saturating_sub(1);
        };
        match action::start(&spec, &self.logger) {
            Ok(started) => {
                let me = Rc::clone(self);
                let timeout = cmd.timeout;
                tokio::task::spawn_local(async move {
                    let outcome = started.wait(timeout).await;
                    me.log(
                        Level::Notice,
                        &format!(
                            "on_lockout for addr={addr} source={source} {}",
                            outcome.describe()
                        ),
                    );
                    done(&me);
                });
            }
            Err(e) => {
                self.log(
                    Level::Err,
                    &format!("on_lockout failed to start {}: {e}", cmd.argv.program()),
                );
                done(self);
            }
        }
    }

    /// SIGHUP: load the config again; keep the old one if the new one is
    /// invalid or its listeners cannot be bound. Lockout state lives in the
    /// network process (and its mirror here) and survives; the keyring is
    /// rebuilt, the one before kept for handshakes that began under it.
    async fn reload(&self) {
        let path: PathBuf = self.book.borrow().config.path.clone();
        let new = match config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    self.log(Level::Err, &format!("reload rejected: {e}"));
                }
                self.log(Level::Err, "reload failed; keeping the running config");
                return;
            }
        };
        let mut old = std::mem::take(&mut self.book.borrow_mut().bound);
        let bound = match bind_all(&new, &mut old, None) {
            Ok((b, _)) => b,
            Err(e) => {
                let restored = {
                    let b = self.book.borrow();
                    restore(old, &b.config)
                };
                self.book.borrow_mut().bound = restored;
                self.log(
                    Level::Err,
                    &format!("reload failed: {e}; keeping the running config"),
                );
                return;
            }
        };
        // Sockets left in `old` are no longer configured; dropping them
        // closes the monitor's copy (the network process drops its own).
        drop(old);
        self.logger.retarget(new.daemon.log);
        // As at start-up: an overlap window that has passed, a readable
        // file with inline secrets.
        for w in &new.warnings {
            self.log(Level::Warning, &format!("config: {w}"));
        }
        let new = Rc::new(new);
        self.gates.reconfigure(Rc::clone(&new));
        self.mirror
            .borrow_mut()
            .reconfigure(&new.limits, std::time::Instant::now());
        let retired = {
            let mut b = self.book.borrow_mut();
            // The replaced config stays as `previous`, so that requests from
            // handshakes that began under it can still be mapped; the one
            // it replaces in turn is retired.
            let old_config = std::mem::replace(&mut b.config, new);
            let generation = b.generation;
            let retired = b.previous.replace((generation, old_config));
            let keyring = Rc::new(Keyring::from_config(&b.config));
            let old_keyring = std::mem::replace(&mut b.keyring, keyring);
            let retired_keyring = b.previous_keyring.replace((generation, old_keyring));
            if let Some((_, k)) = retired_keyring {
                // Unlocked before it is freed (unless a running action
                // still holds it, which frees it later, unlocked or not).
                if let Ok(k) = Rc::try_unwrap(k) {
                    k.unlock();
                }
            }
            if !b.keyring.lock() {
                drop(b);
                self.log(
                    Level::Warning,
                    "prepared keys could not be locked in memory (RLIMIT_MEMLOCK); they may be swapped",
                );
                b = self.book.borrow_mut();
            }
            b.generation = b.generation.wrapping_add(1).max(1);
            b.bound = bound;
            b.remember_generation();
            retired
        };
        self.session().reconfigure(&self.book.borrow().config);
        // Retired keys are unlocked before they are freed (unless a running
        // action still holds them), then the new ones locked.
        if let Some(Ok(old)) = retired.map(|(_, c)| Rc::try_unwrap(c)) {
            crate::monitor::daemon::unlock_keys(&old);
        }
        let current = Rc::clone(&self.book.borrow().config);
        if !crate::monitor::daemon::lock_keys(&current) {
            self.log(
                Level::Warning,
                "keys could not be locked in memory (RLIMIT_MEMLOCK); they may be swapped",
            );
        }
        match self.send_config().await {
            Ok(()) => self.log(Level::Notice, &format!("reloaded {}", path.display())),
            Err(e) => self.log(
                Level::Err,
                &format!("reload: sending config to the network process failed: {e}"),
            ),
        }
    }
}

/// A fresh nonce table sized for `config`.
fn nonce_table(config: &Config) -> NonceTable {
    NonceTable::new(
        NonceTable::capacity_for(config.limits.max_handshakes),
        config.limits.handshake_timeout,
    )
}

/// Puts sockets back in config order after a failed reload.
fn restore(mut old: Vec<Bound>, config: &Config) -> Vec<Bound> {
    let mut out = Vec::new();
    for l in &config.listeners {
        if let Some(i) = old.iter().position(|b| b.configured == l.address) {
            out.push(old.swap_remove(i));
        }
    }
    out
}

/// Protocols present in a config, for the start-up log line.
pub fn describe_listeners(config: &Config, bound: &[Bound]) -> String {
    config
        .listeners
        .iter()
        .zip(bound.iter())
        .map(|(l, b)| {
            format!(
                "{}({})",
                b.local,
                match l.protocol {
                    Protocol::Postern2 => "postern-2",
                    Protocol::Ostiary4 => "ostiary-4",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}
