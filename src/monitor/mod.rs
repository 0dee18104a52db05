//! The privileged monitor. It never reads network data: it binds the
//! listeners, starts the network process, and then only answers the
//! fixed-size requests that process sends (`ipc.rs`), after validating
//! each one. It alone holds the keys and passwords: it issues every
//! nonce and checks every reply (`session.rs`, `nonces.rs`, `verify.rs`).
//! Anything malformed ends the network process's session with a typed
//! reason (`session::SessionEnd`); the monitor then kills that process
//! and exits non-zero (fail closed; the supervisor restarts posternd).
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
pub mod session;
pub mod state;
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
use crate::ipc::{Down, NetLimits, Notice, Request};
use crate::monitor::action::Spec;
use crate::monitor::gate::Gates;
use crate::monitor::listen::{bind_listener, local_addr, ListenError};
use crate::monitor::log::{Level, Logger};
use crate::monitor::nonces::NonceTable;
use crate::monitor::session::{Session, SessionEnd};
use crate::monitor::verify::Keyring;
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

/// Config generations whose listeners and action count the monitor keeps,
/// to judge a request against the generation it was made under. A request
/// from an older one is stale: handled (logged, a run refused), never
/// fatal.
pub const KEPT_GENERATIONS: usize = 8;

/// Why the monitor stopped with an error.
#[derive(Debug)]
pub enum MonitorError {
    /// The network process sent a malformed request.
    Forged(String),
    /// The network process exited or the channel broke.
    NetworkGone(String),
    /// Setting something up failed.
    Setup(String),
}

impl core::fmt::Display for MonitorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MonitorError::Forged(m) => write!(
                f,
                "network process sent a malformed request ({m}); it was killed"
            ),
            MonitorError::NetworkGone(m) => write!(f, "network process gone: {m}"),
            MonitorError::Setup(m) => f.write_str(m),
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
    /// (generation, listener names and protocols, action count), oldest
    /// first; the last is the current generation.
    generations: VecDeque<KeptGeneration>,
    /// The current config's keys and passwords, prepared.
    keyring: Rc<Keyring>,
    /// The keyring of `previous`, with its generation.
    previous_keyring: Option<(u32, Rc<Keyring>)>,
}

/// (generation, listener names and protocols, action count).
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
            .push_back((self.generation, names, self.config.actions.len()));
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
    gates: Gates,
}

/// How the network process is started: its argv and the socketpair end
/// it inherits.
pub struct NetChild {
    /// The running process.
    pub child: Child,
}

impl Monitor {
    /// Wraps the running pieces. `chan` is the monitor end of the pair.
    pub fn new(
        config: Config,
        bound: Vec<Bound>,
        logger: Arc<Logger>,
        chan: Channel,
    ) -> Rc<Monitor> {
        let gates = Gates::new(&config, Arc::clone(&logger));
        let keyring = Rc::new(Keyring::from_config(&config));
        if !keyring.lock() {
            logger.log(
                Level::Warning,
                "prepared keys could not be locked in memory (RLIMIT_MEMLOCK); they may be swapped",
            );
        }
        let session = Session::new(chan, nonce_table(&config));
        let mut book = Book {
            config: Rc::new(config),
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
        })
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

    /// The gates.
    pub fn gates(&self) -> &Gates {
        &self.gates
    }

    /// The current config's action called `name`.
    pub fn action_named(&self, name: &str) -> Option<config::Action> {
        self.book
            .borrow()
            .config
            .actions
            .iter()
            .find(|a| a.name == name)
            .cloned()
    }

    /// The current config's actions.
    pub fn all_actions(&self) -> Vec<config::Action> {
        self.book.borrow().config.actions.clone()
    }

    /// Sends the current config (limits, sockets, exempt networks; no
    /// secret) to the network process.
    pub async fn send_config(&self) -> std::io::Result<()> {
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
        let limits = NetLimits {
            handshake_timeout: l.handshake_timeout,
            max_handshakes: l.max_handshakes,
            rate_burst: l.rate_burst,
            rate_per_minute: l.rate_per_minute,
            lockout_after: l.lockout_after,
            lockout_duration: l.lockout_duration,
            lockout_table: l.lockout_table,
            verify_per_second: l.verify_per_second,
            // The monitor always answers well within the protocol's ack
            // deadline (config bounds every wait before an ack); the
            // network process gives up a little before it.
            ack_timeout: Duration::from_secs(crate::wire::ACK_DEADLINE_SECS)
                .saturating_sub(ACK_SLACK),
            shutdown_grace: config.daemon.shutdown_grace,
        };
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
        chan.send(&Down::End.encode(), &[]).await
    }

    /// Runs until shutdown. Returns Ok on a clean stop. `signals` must have
    /// been installed before posternd said it had started, so that a
    /// SIGHUP or SIGTERM sent at once is handled, not fatal.
    pub async fn run(
        self: &Rc<Self>,
        mut net: NetChild,
        signals: Signals,
    ) -> Result<(), MonitorError> {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = signals;
        self.gates.recover(self).await;
        let result = loop {
            tokio::select! {
                r = self.step() => {
                    if let Err(end) = r {
                        break Err(end.into());
                    }
                }
                st = net.child.wait() => {
                    let how = match st {
                        Ok(s) => action::Outcome::Exited(s).describe(),
                        Err(e) => e.to_string(),
                    };
                    break Err(MonitorError::NetworkGone(format!("exited ({how})")));
                }
                _ = hup.recv() => self.reload().await,
                _ = term.recv() => break Ok(()),
                _ = int.recv() => break Ok(()),
                _ = self.shutdown.notified() => break Ok(()),
            }
        };
        match &result {
            Ok(()) => {
                self.log(Level::Notice, "stop requested; finishing handshakes");
                if let Some(pid) = net.child.id() {
                    action::kill_group_or_pid(pid, nix::sys::signal::Signal::SIGTERM);
                }
                let grace =
                    self.book.borrow().config.daemon.shutdown_grace + Duration::from_secs(1);
                if tokio::time::timeout(grace, net.child.wait()).await.is_err() {
                    let _ = net.child.start_kill();
                    let _ = net.child.wait().await;
                }
                let config = Rc::clone(&self.book.borrow().config);
                if config.daemon.stop_on_exit {
                    self.gates.close_all("shutdown", &config).await;
                }
                self.log(Level::Notice, "stopped");
            }
            Err(e) => {
                let _ = net.child.start_kill();
                let _ = net.child.wait().await;
                self.log(Level::Err, &format!("{e}; stopping"));
                let config = Rc::clone(&self.book.borrow().config);
                self.gates
                    .close_all("network process failure", &config)
                    .await;
            }
        }
        result
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
        match req {
            // Handled by the session (`session.rs`).
            Request::Verify { .. } | Request::Nonces { .. } => {}
            Request::Fail {
                peer,
                reason,
                failures,
                ..
            } => self.log_fail(peer, reason, failures, generation),
            Request::Lockout { peer, failures } => {
                let duration = self.book.borrow().config.limits.lockout_duration;
                self.log(
                    Level::Warning,
                    &format!(
                        "lockout src={} source={} failures={failures} duration={}s",
                        peer.addr,
                        crate::net::limits::SourceKey::of(peer.addr),
                        duration.as_secs()
                    ),
                );
                self.on_lockout(peer.addr);
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
                        format!(
                            "lockout src={} source={net} failures={} duration={}s",
                            peer.addr,
                            after.saturating_mul(factor),
                            duration.as_secs()
                        )
                    }
                    Notice::NoReply => format!(
                        "noreply src={} port={} listener={listener}; closed after the challenge without replying (not counted)",
                        peer.addr, peer.port
                    ),
                };
                self.log(Level::Warning, &line);
            }
        }
    }

    /// Maps action `index` of config `generation` onto the current config.
    /// A request from a handshake that began before the last reload runs
    /// if its action is still configured with the same secret and the same
    /// settings; otherwise it is refused with [`Reason::ConfigChanged`].
    fn resolve(&self, generation: u32, index: u16) -> Result<(Rc<Config>, usize), String> {
        let b = self.book.borrow();
        let index = usize::from(index);
        if generation == b.generation {
            return match b.config.actions.get(index) {
                Some(_) => Ok((Rc::clone(&b.config), index)),
                None => Err("?".into()),
            };
        }
        let Some((old_gen, old)) = b.previous.as_ref() else {
            return Err("?".into());
        };
        let Some(was) = old.actions.get(index).filter(|_| *old_gen == generation) else {
            return Err("?".into());
        };
        match b
            .config
            .actions
            .iter()
            .position(|a| config::same_action(a, was))
        {
            Some(now) => Ok((Rc::clone(&b.config), now)),
            None => Err(was.name.clone()),
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

    /// Runs action `index` of config `generation` for `target` and says
    /// what happened: the ack's body, and the action's name for the log.
    async fn run_action(
        self: &Rc<Self>,
        generation: u32,
        index: u16,
        target: IpAddr,
    ) -> (Answer, String) {
        let (config, index) = match self.resolve(generation, index) {
            Ok(found) => found,
            Err(name) => {
                self.log(
                    Level::Notice,
                    &format!("action {name}: changed or removed by a reload; request refused"),
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
        if matches!(action.kind, ActionKind::Shutdown) {
            return (Answer::bare(Status::Started), name);
        }
        // A trigger that arrives while this gate is being opened waits for
        // that outcome: a failure is reported as it is, a success is
        // answered below as an open gate.
        if self.gates.is_opening(&name) {
            self.log(
                Level::Info,
                &format!(
                    "action {name}: its gate is being opened; this trigger waits for the outcome"
                ),
            );
        }
        if let Some(failed) = self.gates.wait_opening(&name).await {
            return (failed, name);
        }
        if let Some(answer) = self.gates.try_extend(&name, action, target).await {
            return (answer, name);
        }
        {
            let mut b = self.book.borrow_mut();
            let st = b.actions.entry(name.clone()).or_default();
            if action.single_instance && st.running > 0 {
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
                let answer = self.gates.open(self, &config, action, target).await;
                self.finished(&name);
                answer
            }
            ActionKind::Shutdown => Answer::bare(Status::Started),
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

    fn on_lockout(self: &Rc<Self>, addr: IpAddr) {
        let (config, state_dir) = {
            let b = self.book.borrow();
            (Rc::clone(&b.config), b.config.daemon.state_dir.clone())
        };
        let Some(cmd) = config.on_lockout.as_ref() else {
            return;
        };
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
                        &format!("on_lockout for addr={addr} {}", outcome.describe()),
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
    /// network process and survives.
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
        self.gates.reconfigure(&new);
        let retired = {
            let mut b = self.book.borrow_mut();
            // The replaced config stays as `previous`, so that requests from
            // handshakes that began under it can still be mapped; the one
            // it replaces in turn is retired.
            let old_config = std::mem::replace(&mut b.config, Rc::new(new));
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

impl From<SessionEnd> for MonitorError {
    fn from(end: SessionEnd) -> MonitorError {
        match end {
            SessionEnd::Malformed(what) => MonitorError::Forged(what.to_string()),
            SessionEnd::Exited(how) => MonitorError::NetworkGone(format!("exited ({how})")),
            SessionEnd::ChannelClosed => MonitorError::NetworkGone("channel closed".into()),
        }
    }
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
