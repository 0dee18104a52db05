//! The unprivileged network process: accept loops, limits, handshakes.
//!
//! It runs after `privsep::enter_jail` has chrooted it into an empty
//! directory and dropped every privilege. It learns its listeners and
//! limits from the monitor (`ipc.rs`). It holds no key, no password and no
//! MAC state: it greets with nonces the monitor issued (a small batch at
//! hand, [`crate::ipc::NONCE_BATCH`]), forwards each reply to the monitor
//! to be checked, and relays the ack the monitor signed. Besides that it
//! can only send log events, which the monitor turns into lines itself.
//!
//! One connection (see PROTOCOL.md):
//! 1. while every handshake slot is busy, a source with strikes, or one
//!    not in good standing whose network holds more than its fair share
//!    of the slots, is closed at once, with no greeting (and no token);
//! 2. a locked-out source (or one in a locked network, unless in good
//!    standing), an over-rate one, or one over the shared verification
//!    budget is closed at once, with no greeting;
//! 3. a handshake slot is reserved; if all are busy, the oldest handshake
//!    of the network holding the most slots is evicted (closed at once,
//!    not counted against its source);
//! 4. a nonce is taken from the batch at hand (waiting for a refill only
//!    when none is left), the greeting is written and exactly the reply
//!    length is read into a fixed array, all under one deadline;
//! 5. the reply, the nonce's handle and the peer go to the monitor, which
//!    checks the reply against every key slot (every key, password and
//!    successor of every action) in constant time, counts an old key past
//!    its overlap window as no match, and answers a wrong reply with a
//!    verdict at once; for a valid one it first asks for the connection
//!    itself, which is passed to it (SCM_RIGHTS) so that it learns the
//!    peer from the kernel, and then answers;
//! 6. on success the monitor runs the action of the matched slot and the
//!    network process relays the ack the monitor signed; on failure the
//!    connection just closes.

pub mod limits;
pub mod privsep;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{timeout, Instant};

use crate::channel::Channel;
use crate::config::{IpNet, Limits, Protocol};
use crate::ipc::{
    Carried, Down, IssuedNonce, NetLimits, Notice, Peer, Reason, ReplyBytes, Request, Verdict,
    MAX_DOWN_LEN, NONCE_BATCH, NONCE_KEEP, REQUEST_LEN,
};
use crate::net::limits::{Admit, Slots, SourceTable, Strike};
use crate::wire::{self, Ack, OSTIARY_REPLY_LEN, REPLY_LEN};

/// Authenticated handshakes waiting for the monitor's ack, at most.
pub const MAX_PENDING_ACKS: usize = 64;

/// After the monitor issued no nonce (its table full), the network
/// process asks again no sooner than this: a full table empties only as
/// handshakes end, and asking at once would only spin.
pub const NONCE_RETRY: Duration = Duration::from_millis(100);
/// Log events waiting for the monitor, at most; beyond, they are counted
/// and dropped (and the count is logged).
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// Accept failures are logged at most once in this long, and so are
/// refusals to pass a connection to the monitor.
pub const ACCEPT_NOTE_INTERVAL: Duration = Duration::from_secs(30);

/// A connection the kernel refused to pass to the monitor (ETOOMANYREFS:
/// too many descriptors in flight from this process's user, counted
/// across all of its processes) is passed again after this, doubling up
/// to [`PASS_RETRY_MAX`], until the handshake's deadline. The count falls
/// as soon as the receivers read, so waiting is the remedy; the first wait
/// is short because one receiver reading is often enough.
pub const PASS_RETRY_FIRST: Duration = Duration::from_millis(1);
/// The longest wait between two attempts to pass a connection.
pub const PASS_RETRY_MAX: Duration = Duration::from_millis(50);

/// After an accept failure that the spare descriptor cannot absorb (not
/// EMFILE, or no spare), the accept loop pauses this long: short, so a
/// failure never stalls it for long, and not zero, so it does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(2);

/// Why the network process stopped.
#[derive(Debug)]
pub enum NetError {
    /// The channel to the monitor failed or closed.
    Channel(std::io::Error),
    /// The monitor sent something undecodable or out of order.
    Protocol(&'static str),
    /// A listener could not be set up.
    Listener(std::io::Error),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Channel(e) => write!(f, "monitor channel: {e}"),
            NetError::Protocol(m) => write!(f, "monitor protocol: {m}"),
            NetError::Listener(e) => write!(f, "listener: {e}"),
        }
    }
}

/// The network part of one config generation (nothing secret).
struct NetConfig {
    generation: u32,
    limits: NetLimits,
    exempt: Vec<IpNet>,
    /// Lockout and rate state carried over from a network process that
    /// died (at most `lockout_table` records), imported once.
    carried: Vec<Carried>,
}

/// A handshake in a slot: its peer, the generation it began under, its
/// nonce's handle once it has one, and its task.
type SlotEntry = (Peer, u32, Rc<Cell<u64>>, AbortHandle);

/// State shared by every task of the network process.
struct State {
    chan: Channel,
    config: RefCell<Rc<NetConfig>>,
    table: RefCell<SourceTable>,
    /// (peer, generation, nonce handle, task) of each handshake in a slot.
    slots: RefCell<Slots<SlotEntry>>,
    /// Verdicts (or requests for the connection) awaited, by nonce
    /// handle (at most one per slot).
    verdicts: RefCell<HashMap<u64, oneshot::Sender<Step>>>,
    /// Acks awaited, by nonce handle.
    acks: RefCell<HashMap<u64, oneshot::Sender<Ack>>>,
    acks_in_flight: Cell<usize>,
    /// Nonces at hand: (when received, handle, nonce), oldest first; at
    /// most NONCE_BATCH.
    pool: RefCell<VecDeque<(std::time::Instant, IssuedNonce)>>,
    /// A refill has been asked for and not answered yet.
    refill_asked: Cell<bool>,
    /// No refill is asked for before this (the monitor had none).
    refill_after: Cell<Option<Instant>>,
    pool_ready: Notify,
    no_nonce_noted: Cell<bool>,
    /// When an accept failure was last logged (at most one line per
    /// ACCEPT_NOTE_INTERVAL, however the failures and successes interleave).
    accept_error_noted: Cell<Option<Instant>>,
    /// When a refused connection pass was last logged (at most one line
    /// per ACCEPT_NOTE_INTERVAL).
    pass_refused_noted: Cell<Option<Instant>>,
    lock_noted: Cell<bool>,
    events: RefCell<VecDeque<[u8; REQUEST_LEN]>>,
    events_ready: Notify,
    events_dropped: Cell<u32>,
}

/// Sends queued log events to the monitor, in order, one at a time.
async fn event_sender(state: Rc<State>) {
    loop {
        let next = state.events.borrow_mut().pop_front();
        match next {
            Some(bytes) => {
                if state.chan.send(&bytes, &[]).await.is_err() {
                    // The main loop notices the dead channel and exits.
                    return;
                }
            }
            None => {
                let dropped = state.events_dropped.replace(0);
                if dropped > 0 {
                    let peer = Peer {
                        listener: 0,
                        addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                        port: 0,
                    };
                    let req = Request::Notice {
                        notice: Notice::EventsDropped,
                        peer,
                        value: dropped,
                        handle: 0,
                    };
                    let generation = state.config.borrow().generation;
                    if state
                        .chan
                        .send(&req.encode_for(generation), &[])
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                state.events_ready.notified().await;
            }
        }
    }
}

impl State {
    /// Queues a log event for the monitor, made under the current config.
    fn send(self: &Rc<Self>, req: Request) {
        let generation = self.config.borrow().generation;
        self.send_in(req, generation);
    }

    /// Queues a log event for the monitor, made under config `generation`
    /// (the monitor judges its listener index against that generation).
    /// The queue is bounded: if the monitor falls behind, events are
    /// dropped and counted, and the count is reported once the queue
    /// drains, so a flood cannot grow memory.
    fn send_in(self: &Rc<Self>, req: Request, generation: u32) {
        let mut q = self.events.borrow_mut();
        if q.len() >= MAX_QUEUED_EVENTS {
            self.events_dropped
                .set(self.events_dropped.get().saturating_add(1));
            return;
        }
        q.push_back(req.encode_for(generation));
        drop(q);
        self.events_ready.notify_one();
    }

    /// Counts a failure of `peer`'s source (and its networks) and logs
    /// it; `handle` (0: none) gives the handshake's nonce back.
    fn fail(self: &Rc<Self>, peer: Peer, reason: Reason, generation: u32, handle: u64) {
        let failures = self.strike(peer, generation);
        self.send_in(
            Request::Fail {
                peer,
                reason,
                failures,
                handle,
            },
            generation,
        );
    }

    /// Counts a failure of `peer`'s source (and its networks), with the
    /// lockout events it causes, and returns its failure count. The
    /// failure itself is logged by the caller or, for a refused reply,
    /// by the monitor.
    fn strike(self: &Rc<Self>, peer: Peer, generation: u32) -> u32 {
        let (strike, network) = {
            let mut t = self.table.borrow_mut();
            let strike = t.fail(peer.addr, std::time::Instant::now());
            (strike, t.take_locked_network())
        };
        let failures = match strike {
            Strike::Counted { failures } | Strike::LockedOut { failures } => failures,
            Strike::Exempt => 0,
        };
        if let Strike::LockedOut { failures } = strike {
            self.send_in(Request::Lockout { peer, failures }, generation);
        }
        if let Some(net) = network {
            self.send_in(
                Request::Notice {
                    notice: Notice::NetworkLocked,
                    peer,
                    value: u32::from(net.prefix_len()),
                    handle: 0,
                },
                generation,
            );
        }
        self.note_table_full(peer);
        failures
    }

    /// Hands a Down message that is not part of a config to whoever waits
    /// for it. Unknown handles (a handshake that gave up) are ignored.
    fn dispatch(self: &Rc<Self>, msg: Down) {
        match msg {
            Down::Nonces(list) => {
                let now = std::time::Instant::now();
                self.refill_asked.set(false);
                if list.is_empty() {
                    self.refill_after.set(Some(Instant::now() + NONCE_RETRY));
                }
                let mut pool = self.pool.borrow_mut();
                for n in list {
                    if pool.len() >= NONCE_BATCH {
                        break;
                    }
                    pool.push_back((now, n));
                }
                drop(pool);
                self.pool_ready.notify_waiters();
            }
            Down::Verdict { handle, verdict } => {
                if let Some(tx) = self.verdicts.borrow_mut().remove(&handle) {
                    let _ = tx.send(Step::Verdict(verdict));
                }
            }
            Down::Connection { handle } => {
                if let Some(tx) = self.verdicts.borrow_mut().remove(&handle) {
                    let _ = tx.send(Step::Connection);
                }
            }
            Down::Ack { handle, ack } => {
                if let Some(tx) = self.acks.borrow_mut().remove(&handle) {
                    let _ = tx.send(ack);
                }
            }
            _ => {}
        }
    }

    /// Asks the monitor for more nonces unless a request is out or the
    /// monitor just had none.
    fn ask_refill(self: &Rc<Self>) {
        if self.refill_asked.get() {
            return;
        }
        if self.refill_after.get().is_some_and(|t| Instant::now() < t) {
            return;
        }
        let want = NONCE_BATCH.saturating_sub(self.pool.borrow().len());
        if want == 0 {
            return;
        }
        self.refill_asked.set(true);
        let generation = self.config.borrow().generation;
        let req = Request::Nonces { count: want as u16 }.encode_for(generation);
        let me = Rc::clone(self);
        tokio::task::spawn_local(async move {
            if me.chan.send(&req, &[]).await.is_err() {
                // The main loop notices the dead channel and exits.
                me.refill_asked.set(false);
            }
        });
    }

    /// A fresh nonce for a new connection: from the batch at hand, or,
    /// when none is left, the next refill (waited for until `deadline`).
    /// Nonces kept longer than NONCE_KEEP are thrown away (the monitor
    /// lets them expire too). Asks for a refill once half the batch is
    /// used.
    async fn take_nonce(self: &Rc<Self>, deadline: Instant) -> Option<IssuedNonce> {
        loop {
            let now = std::time::Instant::now();
            let got = {
                let mut pool = self.pool.borrow_mut();
                while pool
                    .front()
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= NONCE_KEEP)
                {
                    pool.pop_front();
                }
                pool.pop_front().map(|(_, n)| n)
            };
            if self.pool.borrow().len() <= NONCE_BATCH / 2 {
                self.ask_refill();
            }
            if let Some(n) = got {
                self.no_nonce_noted.set(false);
                return Some(n);
            }
            let ready = self.pool_ready.notified();
            // Retry after NONCE_RETRY too: a refill refused for lack of
            // room is asked for again then.
            let wake = deadline.min(Instant::now() + NONCE_RETRY);
            let _ = tokio::time::timeout_at(wake, ready).await;
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    fn note_table_full(self: &Rc<Self>, peer: Peer) {
        let full = self.table.borrow_mut().take_full_note();
        if full {
            let cap = self.table.borrow().capacity() as u32;
            self.send(Request::Notice {
                notice: Notice::SourceTableFull,
                peer,
                value: cap,
                handle: 0,
            });
        }
    }
}

/// Serves until told to stop (Ok) or until the monitor is gone (Err).
/// Must run on a current-thread runtime inside a `LocalSet`.
pub async fn serve(chan_fd: OwnedFd) -> Result<(), NetError> {
    let chan = Channel::new(chan_fd).map_err(NetError::Channel)?;
    let mut buf = vec![0u8; MAX_DOWN_LEN];
    let (mut config, listeners) = receive_config(&chan, &mut buf, None, None).await?;
    let mut table = SourceTable::new(&to_limits(&config));
    // A replacement for a process that died: its predecessor's lockouts
    // and rate limits hold before the first accept.
    let now = std::time::Instant::now();
    for c in config.carried.drain(..) {
        table.import(&c, now);
    }
    let slots = Slots::new(config.limits.max_handshakes);
    let state = Rc::new(State {
        chan,
        config: RefCell::new(Rc::new(config)),
        table: RefCell::new(table),
        slots: RefCell::new(slots),
        verdicts: RefCell::new(HashMap::new()),
        acks: RefCell::new(HashMap::new()),
        acks_in_flight: Cell::new(0),
        pool: RefCell::new(VecDeque::with_capacity(NONCE_BATCH)),
        refill_asked: Cell::new(false),
        refill_after: Cell::new(None),
        pool_ready: Notify::new(),
        no_nonce_noted: Cell::new(false),
        accept_error_noted: Cell::new(None),
        pass_refused_noted: Cell::new(None),
        lock_noted: Cell::new(false),
        events: RefCell::new(VecDeque::with_capacity(64)),
        events_ready: Notify::new(),
        events_dropped: Cell::new(0),
    });
    tokio::task::spawn_local(event_sender(Rc::clone(&state)));
    // The first batch, before the first connection.
    state.ask_refill();
    let mut accept_tasks = start_listeners(&state, listeners)?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(NetError::Channel)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(NetError::Channel)?;
    // Reloads are the monitor's business: SIGHUP has been ignored since
    // before exec (see sys::drop_to_in_child), so a SIGHUP sent to every
    // posternd process (e.g. by `killall -HUP`) cannot kill this one.
    loop {
        tokio::select! {
            r = state.chan.recv(&mut buf) => {
                let r = r.map_err(NetError::Channel)?;
                if r.len == 0 && r.fds.is_empty() {
                    return Err(NetError::Protocol("monitor closed the channel"));
                }
                if r.truncated {
                    return Err(NetError::Protocol("oversized message"));
                }
                match Down::decode(&buf[..r.len]) {
                    Some(m) if m.is_answer() => state.dispatch(m),
                    Some(Down::Begin { generation, limits, listeners, exempt }) => {
                        let first = Some((generation, limits, listeners, exempt));
                        let (mut config, listeners) =
                            receive_config(&state.chan, &mut buf, first, Some(&state)).await?;
                        let now = std::time::Instant::now();
                        state.table.borrow_mut().reconfigure(&to_limits(&config), now);
                        for c in config.carried.drain(..) {
                            state.table.borrow_mut().import(&c, now);
                        }
                        let excess = state.slots.borrow_mut().resize(config.limits.max_handshakes);
                        for (_, (_, _, _, h)) in excess {
                            h.abort();
                        }
                        for t in accept_tasks.drain(..) {
                            t.abort();
                        }
                        *state.config.borrow_mut() = Rc::new(config);
                        accept_tasks = start_listeners(&state, listeners)?;
                    }
                    _ => return Err(NetError::Protocol("unexpected message")),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Graceful stop: no new connections; running handshakes get the grace.
    for t in accept_tasks.drain(..) {
        t.abort();
    }
    let grace = state.config.borrow().limits.shutdown_grace;
    let deadline = Instant::now() + grace;
    while (!state.slots.borrow().is_empty() || state.acks_in_flight.get() > 0)
        && Instant::now() < deadline
    {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            r = state.chan.recv(&mut buf) => {
                if let Ok(r) = r {
                    if r.len == 0 { break; }
                    if let Some(m) = Down::decode(&buf[..r.len]) {
                        state.dispatch(m);
                    }
                } else {
                    break;
                }
            }
        }
    }
    for (_, (_, _, _, h)) in state.slots.borrow_mut().drain() {
        h.abort();
    }
    Ok(())
}

fn to_limits(cfg: &NetConfig) -> Limits {
    cfg.limits.limits(cfg.exempt.clone())
}

type BeginFields = (u32, NetLimits, u16, u16);

/// Reads one whole config (Begin .. End) from the monitor.
/// Nonces, verdicts and acks that arrive in between are handed to
/// `state` (there is none before the first config).
async fn receive_config(
    chan: &Channel,
    buf: &mut [u8],
    mut first: Option<BeginFields>,
    state: Option<&Rc<State>>,
) -> Result<(NetConfig, Vec<(TcpListener, Protocol, u8)>), NetError> {
    let begin = match first.take() {
        Some(b) => b,
        None => {
            let r = chan.recv(buf).await.map_err(NetError::Channel)?;
            match Down::decode(&buf[..r.len]) {
                Some(Down::Begin {
                    generation,
                    limits,
                    listeners,
                    exempt,
                }) => (generation, limits, listeners, exempt),
                _ => return Err(NetError::Protocol("expected config")),
            }
        }
    };
    let (generation, limits, n_listeners, n_exempt) = begin;
    let mut listeners = Vec::new();
    let mut exempt: Vec<IpNet> = Vec::new();
    let mut carried: Vec<Carried> = Vec::new();
    loop {
        let mut r = chan.recv(buf).await.map_err(NetError::Channel)?;
        if r.len == 0 && r.fds.is_empty() {
            return Err(NetError::Protocol("monitor closed the channel"));
        }
        match Down::decode(&buf[..r.len]) {
            Some(Down::Listener { index, protocol }) => {
                let fd = r
                    .fds
                    .pop()
                    .ok_or(NetError::Protocol("listener without socket"))?;
                let std_listener = std::net::TcpListener::from(fd);
                std_listener
                    .set_nonblocking(true)
                    .map_err(NetError::Listener)?;
                let l = TcpListener::from_std(std_listener).map_err(NetError::Listener)?;
                listeners.push((l, protocol, index));
            }
            Some(Down::Exempt(net)) => exempt.push(net),
            Some(Down::Carry(records)) => {
                let room = limits.lockout_table.get().saturating_sub(carried.len());
                carried.extend(records.into_iter().take(room));
            }
            Some(Down::End) => break,
            Some(m) if m.is_answer() => {
                // Answers to handshakes in progress, sent while the
                // config was on its way.
                if let Some(state) = state {
                    state.dispatch(m);
                }
            }
            _ => return Err(NetError::Protocol("bad config record")),
        }
    }
    if listeners.len() != usize::from(n_listeners) || exempt.len() != usize::from(n_exempt) {
        return Err(NetError::Protocol("config record counts disagree"));
    }
    let config = NetConfig {
        generation,
        exempt,
        limits,
        carried,
    };
    Ok((config, listeners))
}

fn start_listeners(
    state: &Rc<State>,
    listeners: Vec<(TcpListener, Protocol, u8)>,
) -> Result<Vec<JoinHandle<()>>, NetError> {
    Ok(listeners
        .into_iter()
        .map(|(l, protocol, index)| {
            tokio::task::spawn_local(accept_loop(Rc::clone(state), l, protocol, index))
        })
        .collect())
}

async fn accept_loop(state: Rc<State>, listener: TcpListener, protocol: Protocol, index: u8) {
    // A spare descriptor (a duplicate of the listener): when accept fails
    // for lack of descriptors, it is closed to accept and close the
    // waiting connection at once, so the queue drains instead of stalling.
    let mut spare = dup_listener(&listener);
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                note_accept_error(&state, &listener, index, &e);
                let emfile = e.raw_os_error() == Some(nix::libc::EMFILE);
                if emfile && spare.take().is_some() {
                    // Only a connection already waiting (the zero timeout
                    // polls once): never wait here for a new one.
                    if let Ok(Ok((s, _))) = timeout(Duration::ZERO, listener.accept()).await {
                        drop(s);
                    }
                    spare = dup_listener(&listener);
                } else {
                    // Typically ENFILE or ENOBUFS: pause briefly so the loop
                    // does not spin, and keep serving.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    if spare.is_none() {
                        spare = dup_listener(&listener);
                    }
                }
                continue;
            }
        };
        let ip = wire::canonical_ip(addr.ip());
        let peer = Peer {
            listener: index,
            addr: ip,
            port: addr.port(),
        };
        // Under pressure (every slot busy), a source with strikes is closed
        // at once, without a greeting and before it takes a token, and so
        // is one whose network holds more than its fair share of the slots
        // (unless in good standing): a flood from known-bad sources or from
        // a few networks then costs an accept and a close, the accept
        // queue drains quickly, and clients from elsewhere take a slot.
        // Evictions are not strikes, so an evicted client is not refused.
        let refuse = {
            let slots = state.slots.borrow();
            let table = state.table.borrow();
            slots.is_full()
                && (table.has_strikes(ip) || (slots.over_share(ip) && !table.is_good(ip)))
        };
        if refuse {
            continue;
        }
        let admit = state
            .table
            .borrow_mut()
            .admit(ip, std::time::Instant::now());
        match admit {
            Admit::Yes => {}
            Admit::Locked => continue,
            Admit::RateLimited { first } => {
                if first {
                    state.send(Request::Notice {
                        notice: Notice::RateLimited,
                        peer,
                        value: 0,
                        handle: 0,
                    });
                }
                continue;
            }
            Admit::OverBudget { first } => {
                if first {
                    let value = state.config.borrow().limits.verify_per_second.get();
                    state.send(Request::Notice {
                        notice: Notice::OverBudget,
                        peer,
                        value,
                        handle: 0,
                    });
                }
                continue;
            }
        }
        state.note_table_full(peer);
        if state.slots.borrow_mut().take_full_note() {
            let cap = state.config.borrow().limits.max_handshakes.get() as u32;
            state.send(Request::Notice {
                notice: Notice::HandshakesFull,
                peer,
                value: cap,
                handle: 0,
            });
        }
        let generation = state.config.borrow().generation;
        let (id, evicted) = state.slots.borrow_mut().reserve();
        // The nonce the handshake greets with, once it has one: given back
        // with the eviction notice if it is evicted.
        let nonce = Rc::new(Cell::new(0));
        let task = tokio::task::spawn_local(connection(
            Rc::clone(&state),
            stream,
            peer,
            protocol,
            id,
            Rc::clone(&nonce),
        ));
        state
            .slots
            .borrow_mut()
            .insert(id, ip, (peer, generation, nonce, task.abort_handle()));
        if let Some((_, (old, old_generation, old_nonce, handle))) = evicted {
            // Not a failure of the evicted source: it only lost a race for
            // a slot (logged with failures=0, so fail2ban ignores it).
            handle.abort();
            state.verdicts.borrow_mut().remove(&old_nonce.get());
            state.acks.borrow_mut().remove(&old_nonce.get());
            state.send_in(
                Request::Fail {
                    peer: old,
                    reason: Reason::Evicted,
                    failures: 0,
                    handle: old_nonce.get(),
                },
                old_generation,
            );
            // Let the runtime drop the aborted task now, so its socket is
            // closed before the next accept, not after a burst of them.
            tokio::task::yield_now().await;
        }
    }
}

/// Logs an accept failure, at most once per ACCEPT_NOTE_INTERVAL (near
/// the limit, accepts succeed and fail in turn, so "once until the next
/// success" would still flood).
fn note_accept_error(state: &Rc<State>, listener: &TcpListener, index: u8, e: &std::io::Error) {
    let now = Instant::now();
    let due = match state.accept_error_noted.get() {
        None => true,
        Some(last) => now.saturating_duration_since(last) >= ACCEPT_NOTE_INTERVAL,
    };
    if due {
        state.accept_error_noted.set(Some(now));
        let peer = Peer {
            listener: index,
            addr: local_ip(listener),
            port: 0,
        };
        let errno = e.raw_os_error().unwrap_or(0) as u32;
        state.send(Request::Notice {
            notice: Notice::AcceptError,
            peer,
            value: errno,
            handle: 0,
        });
    }
}

/// A duplicate of the listener's descriptor, held as the spare.
fn dup_listener(listener: &TcpListener) -> Option<OwnedFd> {
    use std::os::fd::AsFd;
    listener.as_fd().try_clone_to_owned().ok()
}

fn local_ip(l: &TcpListener) -> IpAddr {
    l.local_addr()
        .map(|a: SocketAddr| wire::canonical_ip(a.ip()))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Frees the handshake slot however the task ends (done, failed, aborted).
struct SlotGuard {
    state: Rc<State>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.slots.try_borrow_mut() {
            s.remove(self.id);
        }
    }
}

/// Counts an authenticated handshake awaiting the monitor.
struct AckGuard(Rc<State>);

impl Drop for AckGuard {
    fn drop(&mut self) {
        self.0
            .acks_in_flight
            .set(self.0.acks_in_flight.get().saturating_sub(1));
    }
}

/// Reads a reply of exactly `N` bytes under `deadline` into a fixed array,
/// with a one-byte array behind it in the same vectored read: a byte sent
/// past the reply that is already there is seen at once (a long reply),
/// without another system call. Never reads more than `N + 1` bytes, and
/// maps every failure to its reason and how many bytes had arrived.
async fn read_reply<const N: usize>(
    stream: &TcpStream,
    deadline: Instant,
) -> Result<[u8; N], (Reason, usize)> {
    let mut reply = [0u8; N];
    let mut extra = [0u8; 1];
    let mut got = 0;
    // Each pass reads at least one byte, or waits for readiness under the
    // deadline (a spurious wake-up just waits again).
    while got < N {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Err((Reason::Timeout, got)),
            Ok(Err(_)) => return Err((Reason::Reset, got)),
            Ok(Ok(())) => {}
        }
        let mut bufs = [
            IoSliceMut::new(&mut reply[got..]),
            IoSliceMut::new(&mut extra),
        ];
        match stream.try_read_vectored(&mut bufs) {
            Ok(0) => return Err((Reason::ShortReply, got)),
            Ok(n) if got + n > N => return Err((Reason::LongReply, got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err((Reason::Reset, got)),
        }
    }
    Ok(reply)
}

/// Whether the peer sent anything past the fixed reply since it was read.
/// Looks without waiting, into a one-byte array: a byte already there is a
/// failure. Made before the reply goes to the monitor, which may act on it
/// at once.
fn sent_extra(stream: &TcpStream) -> bool {
    let mut one = [0u8; 1];
    matches!(stream.try_read(&mut one), Ok(n) if n > 0)
}

async fn connection(
    state: Rc<State>,
    stream: TcpStream,
    peer: Peer,
    protocol: Protocol,
    id: u64,
    nonce_cell: Rc<Cell<u64>>,
) {
    let guard = SlotGuard {
        state: Rc::clone(&state),
        id,
    };
    let cfg = Rc::clone(&state.config.borrow());
    let deadline = Instant::now() + cfg.limits.handshake_timeout;
    let _ = stream.set_nodelay(true);
    let Some((handle, nonce)) = state.take_nonce(deadline).await else {
        if !state.no_nonce_noted.replace(true) {
            state.send_in(
                Request::Notice {
                    notice: Notice::NoNonce,
                    peer,
                    value: 0,
                    handle: 0,
                },
                cfg.generation,
            );
        }
        return;
    };
    nonce_cell.set(handle);
    let hs = Handshake {
        state: &state,
        cfg: &cfg,
        peer,
        handle,
        deadline,
    };
    match protocol {
        Protocol::Postern2 => postern2(hs, stream, &nonce, guard).await,
        Protocol::Ostiary4 => ostiary4(hs, stream, &nonce, guard).await,
    }
}

/// What every step of one handshake needs.
#[derive(Clone, Copy)]
struct Handshake<'a> {
    state: &'a Rc<State>,
    cfg: &'a Rc<NetConfig>,
    peer: Peer,
    /// The nonce's handle (it goes back to the monitor with the outcome).
    handle: u64,
    deadline: Instant,
}

impl Handshake<'_> {
    fn fail(&self, reason: Reason) {
        self.state
            .fail(self.peer, reason, self.cfg.generation, self.handle);
    }

    /// Writes the greeting (or salt) under the handshake deadline; a
    /// failure is recorded against the peer and reported as false.
    async fn send_challenge(&self, stream: &mut TcpStream, challenge: &[u8]) -> bool {
        match tokio::time::timeout_at(self.deadline, stream.write_all(challenge)).await {
            Ok(Ok(())) => true,
            Err(_) => {
                self.fail(Reason::Timeout);
                false
            }
            Ok(Err(_)) => {
                self.fail(Reason::Reset);
                false
            }
        }
    }

    /// A handshake that ended before a whole reply: a peer that closed
    /// without sending a single byte is not counted (a client on the wrong
    /// protocol closes right after the challenge; PROTOCOL.md), anything
    /// else is a failure of its source.
    fn closed_or_failed(&self, reason: Reason, got: usize) {
        if reason == Reason::ShortReply && got == 0 {
            self.state.send_in(
                Request::Notice {
                    notice: Notice::NoReply,
                    peer: self.peer,
                    value: 0,
                    handle: self.handle,
                },
                self.cfg.generation,
            );
        } else {
            self.fail(reason);
        }
    }

    /// Reads the reply, checks that nothing follows it, and has the
    /// monitor check it. `None`: the handshake is over (its failure
    /// recorded), else the verdict and where the ack will arrive (if
    /// `acked`, the protocol has one, and the verdict is not bad).
    async fn verify<const N: usize>(
        &self,
        stream: &TcpStream,
        wrap: fn([u8; N]) -> ReplyBytes,
        acked: bool,
    ) -> Option<(Verdict, oneshot::Receiver<Ack>)> {
        let reply: [u8; N] = match read_reply(stream, self.deadline).await {
            Ok(r) => r,
            Err((reason, got)) => {
                self.closed_or_failed(reason, got);
                return None;
            }
        };
        if sent_extra(stream) {
            self.fail(Reason::LongReply);
            return None;
        }
        let failures = self.state.table.borrow().next_failures(self.peer.addr);
        let req = Request::Verify {
            generation: self.cfg.generation,
            handle: self.handle,
            peer: self.peer,
            reply: wrap(reply),
            failures,
        };
        // Both answers are awaited before asking: they may arrive before
        // this task runs again.
        let (vtx, vrx) = oneshot::channel();
        let (atx, arx) = oneshot::channel();
        self.state.verdicts.borrow_mut().insert(self.handle, vtx);
        self.state.acks.borrow_mut().insert(self.handle, atx);
        let _forget = Forget(self.state, self.handle);
        if self.state.chan.send(&req.encode(), &[]).await.is_err() {
            return None;
        }
        // The monitor answers at once; it is given the handshake's own
        // time again, and a missing verdict is a timeout of the source.
        let mut step = timeout(self.cfg.limits.handshake_timeout, vrx).await;
        if let Ok(Ok(Step::Connection)) = step {
            // The MAC is valid: the monitor wants the connection itself.
            let (vtx, vrx) = oneshot::channel();
            self.state.verdicts.borrow_mut().insert(self.handle, vtx);
            if !self.pass_connection(stream).await {
                return None;
            }
            step = timeout(self.cfg.limits.handshake_timeout, vrx).await;
        }
        match step {
            Ok(Ok(Step::Verdict(v))) => {
                if v != Verdict::Authenticated {
                    // The monitor logged it; the network process counts it.
                    self.state.strike(self.peer, self.cfg.generation);
                }
                if acked && v != Verdict::Bad {
                    // The ack is still to come: only the verdict is done.
                    std::mem::forget(_forget);
                    self.state.verdicts.borrow_mut().remove(&self.handle);
                }
                Some((v, arx))
            }
            _ => {
                self.state
                    .fail(self.peer, Reason::Timeout, self.cfg.generation, 0);
                None
            }
        }
    }

    /// Passes the connection to the monitor, trying again while the kernel
    /// refuses for too many descriptors in flight (see
    /// [`PASS_RETRY_FIRST`]), until the handshake's deadline. False if it
    /// could not be passed: the monitor is told (nothing runs, and the
    /// source is not blamed), or the channel is gone.
    async fn pass_connection(&self, stream: &TcpStream) -> bool {
        let req = Request::Connection {
            handle: self.handle,
        }
        .encode_for(self.cfg.generation);
        let fd = stream.as_raw_fd();
        let mut wait = PASS_RETRY_FIRST;
        loop {
            match self.state.chan.send(&req, &[fd]).await {
                Ok(()) => return true,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETOOMANYREFS as i32) => {}
                Err(_) => return false,
            }
            let now = Instant::now();
            let due = self
                .state
                .pass_refused_noted
                .get()
                .is_none_or(|last| now.saturating_duration_since(last) >= ACCEPT_NOTE_INTERVAL);
            if due {
                self.state.pass_refused_noted.set(Some(now));
                let limit =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                        .map_or(0, |(soft, _)| u32::try_from(soft).unwrap_or(u32::MAX));
                self.state.send_in(
                    Request::Notice {
                        notice: Notice::PassRefused,
                        peer: self.peer,
                        value: limit,
                        handle: 0,
                    },
                    self.cfg.generation,
                );
            }
            if now + wait >= self.deadline {
                self.state.send_in(
                    Request::Notice {
                        notice: Notice::PassGaveUp,
                        peer: self.peer,
                        value: 0,
                        handle: self.handle,
                    },
                    self.cfg.generation,
                );
                return false;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(PASS_RETRY_MAX);
        }
    }

    /// Waits for the ack of an authenticated or bind-mismatched reply and
    /// sends it to the peer.
    async fn relay_ack(&self, mut stream: TcpStream, ack: oneshot::Receiver<Ack>) {
        let _forget = Forget(self.state, self.handle);
        if self.state.acks_in_flight.get() >= MAX_PENDING_ACKS {
            if !self.state.lock_noted.replace(true) {
                self.state.send(Request::Notice {
                    notice: Notice::HandshakesFull,
                    peer: self.peer,
                    value: MAX_PENDING_ACKS as u32,
                    handle: 0,
                });
            }
            return;
        }
        self.state.lock_noted.set(false);
        self.state
            .acks_in_flight
            .set(self.state.acks_in_flight.get() + 1);
        let _ack_guard = AckGuard(Rc::clone(self.state));
        let Ok(Ok(ack)) = timeout(self.cfg.limits.ack_timeout, ack).await else {
            return;
        };
        let _ = timeout(self.cfg.limits.handshake_timeout, stream.write_all(&ack)).await;
        let _ = stream.shutdown().await;
    }
}

/// What the monitor answers a verify request with: a verdict, or (for a
/// valid MAC) first a request for the connection.
#[derive(Debug)]
enum Step {
    Verdict(Verdict),
    Connection,
}

/// Forgets the verdict and ack awaited for a handle however the task ends.
struct Forget<'a>(&'a Rc<State>, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut v) = self.0.verdicts.try_borrow_mut() {
            v.remove(&self.1);
        }
        if let Ok(mut a) = self.0.acks.try_borrow_mut() {
            a.remove(&self.1);
        }
    }
}

async fn postern2(
    hs: Handshake<'_>,
    mut stream: TcpStream,
    nonce: &[u8; wire::NONCE_LEN],
    guard: SlotGuard,
) {
    let greeting = wire::greeting(nonce);
    if !hs.send_challenge(&mut stream, &greeting).await {
        return;
    }
    let Some((verdict, ack)) = hs
        .verify::<REPLY_LEN>(&stream, ReplyBytes::Postern2, true)
        .await
    else {
        return;
    };
    match verdict {
        Verdict::Bad => {}
        Verdict::BindMismatch => {
            // Counted as a failure (above); the monitor signs a refusal.
            drop(guard);
            hs.relay_ack(stream, ack).await;
        }
        Verdict::Authenticated => {
            // Free the pre-auth slot so this handshake can no longer be
            // evicted, and forgive the source's strikes.
            drop(guard);
            hs.state
                .table
                .borrow_mut()
                .succeed(hs.peer.addr, std::time::Instant::now());
            hs.relay_ack(stream, ack).await;
        }
    }
}

async fn ostiary4(
    hs: Handshake<'_>,
    mut stream: TcpStream,
    salt: &[u8; wire::OSTIARY_SALT_LEN],
    guard: SlotGuard,
) {
    if !hs.send_challenge(&mut stream, salt).await {
        return;
    }
    let Some((verdict, _)) = hs
        .verify::<OSTIARY_REPLY_LEN>(&stream, ReplyBytes::Ostiary4, false)
        .await
    else {
        return;
    };
    drop(guard);
    // ostiary-4 sends nothing back.
    drop(stream);
    if verdict == Verdict::Authenticated {
        hs.state
            .table
            .borrow_mut()
            .succeed(hs.peer.addr, std::time::Instant::now());
    }
}
