//! The unprivileged network process: accept loops, limits, handshakes.
//!
//! It runs after `privsep::enter_jail` has chrooted it into an empty
//! directory and dropped every privilege. It learns its listeners, limits
//! and secrets from the monitor (`ipc.rs`), and the only thing it can ask
//! the monitor for is "run action i for address a" (plus log events).
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
//! 4. the greeting is written and exactly the reply length is read into a
//!    fixed array, all under one deadline;
//! 5. the reply is checked against every key slot in constant time; a
//!    slot whose validity has ended (an old key past its overlap window)
//!    counts as no match;
//! 6. on success the monitor is asked to run the action of the matched
//!    slot and the signed ack carries its answer; on failure the
//!    connection just closes.

pub mod limits;
pub mod privsep;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
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
    Carried, Down, NetLimits, Notice, Peer, Reason, Request, MAX_DOWN_LEN, REQUEST_LEN,
};
use crate::net::limits::{Admit, Slots, SourceTable, Strike};
use crate::secret::{Key, Password, KEY_LEN};
use crate::wire::{
    self, Answer, Reason as AckReason, Status, Verifier, OSTIARY_REPLY_LEN, OSTIARY_SALT_LEN,
    REPLY_LEN,
};

/// Authenticated requests waiting for the monitor's answer, at most.
pub const MAX_PENDING_ACKS: usize = 64;
/// Log events waiting for the monitor, at most; beyond, they are counted
/// and dropped (and the count is logged).
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// Accept failures are logged at most once in this long.
pub const ACCEPT_NOTE_INTERVAL: Duration = Duration::from_secs(30);

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

/// A key slot as the network process knows it (`ipc::Down::Slot`).
#[derive(Debug, Clone, Copy)]
struct SlotRef {
    /// Index in the generation's slot list, sent back in run requests.
    index: u16,
    bind_source: bool,
    /// Refused from this time on (seconds since the Unix epoch).
    until: Option<u64>,
}

impl SlotRef {
    /// Whether the slot may be accepted now: checked at verification, so
    /// an old key is refused from the first second after its window.
    fn valid_now(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.until.is_none_or(|until| now < until)
    }
}

/// The network part of one config generation.
struct NetConfig {
    generation: u32,
    limits: NetLimits,
    exempt: Vec<IpNet>,
    postern: Verifier,
    postern_slots: Vec<SlotRef>,
    ostiary: Verifier,
    ostiary_slots: Vec<SlotRef>,
    /// Lockout and rate state carried over from a network process that
    /// died (at most `lockout_table` records), imported once.
    carried: Vec<Carried>,
}

/// State shared by every task of the network process.
struct State {
    chan: Channel,
    config: RefCell<Rc<NetConfig>>,
    table: RefCell<SourceTable>,
    slots: RefCell<Slots<(Peer, u32, AbortHandle)>>,
    pending: RefCell<HashMap<u32, oneshot::Sender<Answer>>>,
    next_id: Cell<u32>,
    acks_in_flight: Cell<usize>,
    /// When an accept failure was last logged (at most one line per
    /// ACCEPT_NOTE_INTERVAL, however the failures and successes interleave).
    accept_error_noted: Cell<Option<Instant>>,
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

    /// Counts a failure of `peer`'s source (and its networks) and logs it.
    fn fail(self: &Rc<Self>, peer: Peer, reason: Reason, generation: u32) {
        let (strike, network) = {
            let mut t = self.table.borrow_mut();
            let strike = t.fail(peer.addr, std::time::Instant::now());
            (strike, t.take_locked_network())
        };
        let failures = match strike {
            Strike::Counted { failures } | Strike::LockedOut { failures } => failures,
            Strike::Exempt => 0,
        };
        self.send_in(
            Request::Fail {
                peer,
                reason,
                failures,
            },
            generation,
        );
        if let Strike::LockedOut { failures } = strike {
            self.send_in(Request::Lockout { peer, failures }, generation);
        }
        if let Some(net) = network {
            self.send_in(
                Request::Notice {
                    notice: Notice::NetworkLocked,
                    peer,
                    value: u32::from(net.prefix_len()),
                },
                generation,
            );
        }
        self.note_table_full(peer);
    }

    fn note_table_full(self: &Rc<Self>, peer: Peer) {
        let full = self.table.borrow_mut().take_full_note();
        if full {
            let cap = self.table.borrow().capacity() as u32;
            self.send(Request::Notice {
                notice: Notice::SourceTableFull,
                peer,
                value: cap,
            });
        }
    }
}

/// Serves until told to stop (Ok) or until the monitor is gone (Err).
/// Must run on a current-thread runtime inside a `LocalSet`.
pub async fn serve(chan_fd: OwnedFd) -> Result<(), NetError> {
    let chan = Channel::new(chan_fd).map_err(NetError::Channel)?;
    let mut buf = vec![0u8; MAX_DOWN_LEN];
    let (mut config, listeners) = receive_config(&chan, &mut buf, None).await?;
    let mut table = SourceTable::new(&to_limits(&config));
    // A replacement for a process that died: its predecessor's lockouts
    // and rate limits hold before the first accept.
    let now = std::time::Instant::now();
    for c in config.carried.drain(..) {
        table.import(&c, now);
    }
    let slots = Slots::new(config.limits.max_handshakes);
    lock_secrets(&config);
    let state = Rc::new(State {
        chan,
        config: RefCell::new(Rc::new(config)),
        table: RefCell::new(table),
        slots: RefCell::new(slots),
        pending: RefCell::new(HashMap::new()),
        next_id: Cell::new(1),
        acks_in_flight: Cell::new(0),
        accept_error_noted: Cell::new(None),
        lock_noted: Cell::new(false),
        events: RefCell::new(VecDeque::with_capacity(64)),
        events_ready: Notify::new(),
        events_dropped: Cell::new(0),
    });
    tokio::task::spawn_local(event_sender(Rc::clone(&state)));
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
                    Some(Down::Status { id, answer }) => {
                        if let Some(tx) = state.pending.borrow_mut().remove(&id) {
                            let _ = tx.send(answer);
                        }
                    }
                    Some(Down::Begin { generation, limits, listeners, exempt, slots }) => {
                        let first = Some((generation, limits, listeners, exempt, slots));
                        let (mut config, listeners) = receive_config(&state.chan, &mut buf, first).await?;
                        lock_secrets(&config);
                        let now = std::time::Instant::now();
                        state.table.borrow_mut().reconfigure(&to_limits(&config), now);
                        for c in config.carried.drain(..) {
                            state.table.borrow_mut().import(&c, now);
                        }
                        let excess = state.slots.borrow_mut().resize(config.limits.max_handshakes);
                        for (_, (_, _, h)) in excess {
                            h.abort();
                        }
                        for t in accept_tasks.drain(..) {
                            t.abort();
                        }
                        let old = std::mem::replace(&mut *state.config.borrow_mut(), Rc::new(config));
                        // Unlock the old keys before they are freed, then
                        // lock the new ones again (pages they share), so the
                        // locked memory does not grow per reload.
                        unlock_secrets(&old);
                        drop(old);
                        lock_secrets(&state.config.borrow());
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
                    if let Some(Down::Status { id, answer }) = Down::decode(&buf[..r.len]) {
                        if let Some(tx) = state.pending.borrow_mut().remove(&id) {
                            let _ = tx.send(answer);
                        }
                    }
                } else {
                    break;
                }
            }
        }
    }
    for (_, (_, _, h)) in state.slots.borrow_mut().drain() {
        h.abort();
    }
    Ok(())
}

fn to_limits(cfg: &NetConfig) -> Limits {
    let l = &cfg.limits;
    Limits {
        handshake_timeout: l.handshake_timeout,
        max_handshakes: l.max_handshakes,
        rate_burst: l.rate_burst,
        rate_per_minute: l.rate_per_minute,
        lockout_after: l.lockout_after,
        lockout_duration: l.lockout_duration,
        lockout_table: l.lockout_table,
        verify_per_second: l.verify_per_second,
        exempt: cfg.exempt.clone(),
    }
}

/// Pins the prepared key states in RAM. Returns false if the system
/// refused (RLIMIT_MEMLOCK); keys then stay usable, only swappable.
fn lock_secrets(config: &NetConfig) -> bool {
    crate::sys::lock_slice(config.postern.prepared())
        & crate::sys::lock_slice(config.ostiary.prepared())
}

/// Undoes [`lock_secrets`] for a config about to be replaced.
fn unlock_secrets(config: &NetConfig) {
    crate::sys::unlock_slice(config.postern.prepared());
    crate::sys::unlock_slice(config.ostiary.prepared());
}

type BeginFields = (u32, NetLimits, u16, u16, u16);

/// Reads one whole config (Begin .. End) from the monitor.
async fn receive_config(
    chan: &Channel,
    buf: &mut [u8],
    mut first: Option<BeginFields>,
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
                    slots,
                }) => (generation, limits, listeners, exempt, slots),
                _ => return Err(NetError::Protocol("expected config")),
            }
        }
    };
    let (generation, limits, n_listeners, n_exempt, n_slots) = begin;
    let mut listeners = Vec::new();
    let mut exempt: Vec<IpNet> = Vec::new();
    let mut keys: Vec<(SlotRef, Key)> = Vec::new();
    let mut passwords: Vec<(SlotRef, Password)> = Vec::new();
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
            Some(Down::Slot {
                index,
                password,
                bind_source,
                until,
                secret,
            }) => {
                if usize::from(index) != keys.len() + passwords.len() {
                    return Err(NetError::Protocol("key slots out of order"));
                }
                let aref = SlotRef {
                    index,
                    bind_source,
                    until,
                };
                if password {
                    passwords.push((aref, secret));
                } else {
                    let bytes: [u8; KEY_LEN] = secret
                        .expose()
                        .try_into()
                        .map_err(|_| NetError::Protocol("key of wrong length"))?;
                    keys.push((aref, Key::from_bytes(bytes)));
                }
            }
            Some(Down::End) => break,
            Some(Down::Status { .. }) => {
                // A late answer for a request made under the old config;
                // its handshake has already timed out or will get none.
            }
            _ => return Err(NetError::Protocol("bad config record")),
        }
        buf[..r.len].fill(0);
    }
    if listeners.len() != usize::from(n_listeners)
        || exempt.len() != usize::from(n_exempt)
        || keys.len() + passwords.len() != usize::from(n_slots)
    {
        return Err(NetError::Protocol("config record counts disagree"));
    }
    let config = NetConfig {
        generation,
        exempt,
        postern: Verifier::from_keys(keys.iter().map(|(_, k)| k)),
        postern_slots: keys.iter().map(|(a, _)| *a).collect(),
        ostiary: Verifier::from_passwords(passwords.iter().map(|(_, p)| p)),
        ostiary_slots: passwords.iter().map(|(a, _)| *a).collect(),
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
            });
        }
        let generation = state.config.borrow().generation;
        let (id, evicted) = state.slots.borrow_mut().reserve();
        let task =
            tokio::task::spawn_local(connection(Rc::clone(&state), stream, peer, protocol, id));
        state
            .slots
            .borrow_mut()
            .insert(id, ip, (peer, generation, task.abort_handle()));
        if let Some((_, (old, old_generation, handle))) = evicted {
            // Not a failure of the evicted source: it only lost a race for
            // a slot (logged with failures=0, so fail2ban ignores it).
            handle.abort();
            state.send_in(
                Request::Fail {
                    peer: old,
                    reason: Reason::Evicted,
                    failures: 0,
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
/// failure. Only an authenticated reply needs this second look; any other
/// fails anyway.
fn sent_extra(stream: &TcpStream) -> bool {
    let mut one = [0u8; 1];
    matches!(stream.try_read(&mut one), Ok(n) if n > 0)
}

async fn connection(state: Rc<State>, stream: TcpStream, peer: Peer, protocol: Protocol, id: u64) {
    let guard = SlotGuard {
        state: Rc::clone(&state),
        id,
    };
    let cfg = Rc::clone(&state.config.borrow());
    let deadline = Instant::now() + cfg.limits.handshake_timeout;
    let _ = stream.set_nodelay(true);
    match protocol {
        Protocol::Postern2 => postern2(&state, &cfg, stream, peer, deadline, guard).await,
        Protocol::Ostiary4 => ostiary4(&state, &cfg, stream, peer, deadline, guard).await,
    }
}

/// The OS generator failed: drop the connection (never a weaker nonce).
fn random_failed(state: &Rc<State>, peer: Peer) {
    state.send(Request::Notice {
        notice: Notice::RandomFailed,
        peer,
        value: 0,
    });
}

/// Writes the greeting (or salt) under the handshake deadline; a failure
/// is recorded against the peer and reported as false.
async fn send_challenge(
    state: &Rc<State>,
    stream: &mut TcpStream,
    challenge: &[u8],
    peer: Peer,
    deadline: Instant,
    generation: u32,
) -> bool {
    match tokio::time::timeout_at(deadline, stream.write_all(challenge)).await {
        Ok(Ok(())) => true,
        Err(_) => {
            state.fail(peer, Reason::Timeout, generation);
            false
        }
        Ok(Err(_)) => {
            state.fail(peer, Reason::Reset, generation);
            false
        }
    }
}

async fn postern2(
    state: &Rc<State>,
    cfg: &Rc<NetConfig>,
    mut stream: TcpStream,
    peer: Peer,
    deadline: Instant,
    guard: SlotGuard,
) {
    let Ok(greeting) = wire::fresh_greeting() else {
        return random_failed(state, peer);
    };
    if !send_challenge(
        state,
        &mut stream,
        &greeting,
        peer,
        deadline,
        cfg.generation,
    )
    .await
    {
        return;
    }
    let reply: [u8; REPLY_LEN] = match read_reply(&stream, deadline).await {
        Ok(r) => r,
        Err((reason, got)) => return closed_or_failed(state, peer, reason, got, cfg.generation),
    };
    let Some((i, asserted)) = cfg.postern.check_reply(&greeting, &reply) else {
        return state.fail(peer, Reason::BadMac, cfg.generation);
    };
    if sent_extra(&stream) {
        return state.fail(peer, Reason::LongReply, cfg.generation);
    }
    let (Some(slot), Some(key)) = (cfg.postern_slots.get(i), cfg.postern.key(i)) else {
        return state.fail(peer, Reason::BadMac, cfg.generation);
    };
    // An old key past its overlap window: as if it matched nothing.
    if !slot.valid_now() {
        return state.fail(peer, Reason::BadMac, cfg.generation);
    }
    // Authenticated: free the pre-auth slot so this handshake can no longer
    // be evicted.
    drop(guard);
    let refuse = |why| Answer::because(Status::Refused, why);
    let answer = if slot.bind_source && asserted != Some(peer.addr) {
        // An authenticated reply from the wrong address (a relayed or
        // replayed exchange): a failure like any other, counted before
        // anything is forgiven, so repeated mismatches lock out.
        state.fail(peer, Reason::BindMismatch, cfg.generation);
        Some(refuse(AckReason::AddressBinding))
    } else {
        // Forgive the source's strikes; it is in good standing.
        state
            .table
            .borrow_mut()
            .succeed(peer.addr, std::time::Instant::now());
        if asserted.is_some_and(|a| !wire::asserted_allowed(a)) {
            Some(refuse(AckReason::AddressNotAllowed))
        } else {
            let target = asserted.unwrap_or(peer.addr);
            match ask_monitor(state, cfg, slot.index, peer, target).await {
                Asked::Answer(a) => Some(a),
                Asked::Busy => Some(refuse(AckReason::Busy)),
                Asked::NoAnswer => None,
            }
        }
    };
    let Some(answer) = answer else {
        return;
    };
    let ack = wire::ack(key, &greeting, &reply, answer);
    let _ = timeout(cfg.limits.handshake_timeout, stream.write_all(&ack)).await;
    let _ = stream.shutdown().await;
}

/// A handshake that ended before a whole reply: a peer that closed without
/// sending a single byte is not counted (a client on the wrong protocol
/// closes right after the challenge; PROTOCOL.md), anything else is a
/// failure of its source.
fn closed_or_failed(state: &Rc<State>, peer: Peer, reason: Reason, got: usize, generation: u32) {
    if reason == Reason::ShortReply && got == 0 {
        state.send_in(
            Request::Notice {
                notice: Notice::NoReply,
                peer,
                value: 0,
            },
            generation,
        );
    } else {
        state.fail(peer, reason, generation);
    }
}

async fn ostiary4(
    state: &Rc<State>,
    cfg: &Rc<NetConfig>,
    mut stream: TcpStream,
    peer: Peer,
    deadline: Instant,
    guard: SlotGuard,
) {
    let mut salt = [0u8; OSTIARY_SALT_LEN];
    if getrandom::getrandom(&mut salt).is_err() {
        return random_failed(state, peer);
    }
    if !send_challenge(state, &mut stream, &salt, peer, deadline, cfg.generation).await {
        return;
    }
    let reply: [u8; OSTIARY_REPLY_LEN] = match read_reply(&stream, deadline).await {
        Ok(r) => r,
        Err((reason, got)) => return closed_or_failed(state, peer, reason, got, cfg.generation),
    };
    let verdict = cfg.ostiary.check_ostiary(&salt, &reply);
    let Some(slot) = verdict
        .and_then(|i| cfg.ostiary_slots.get(i))
        .filter(|s| s.valid_now())
    else {
        return state.fail(peer, Reason::BadMac, cfg.generation);
    };
    if sent_extra(&stream) {
        return state.fail(peer, Reason::LongReply, cfg.generation);
    }
    drop(guard);
    // ostiary-4 sends nothing back: close first, then ask.
    drop(stream);
    state
        .table
        .borrow_mut()
        .succeed(peer.addr, std::time::Instant::now());
    let _ = ask_monitor(state, cfg, slot.index, peer, peer.addr).await;
}

/// What came of asking the monitor.
enum Asked {
    /// The monitor's answer.
    Answer(Answer),
    /// Too many authenticated requests are waiting already; not asked.
    Busy,
    /// The monitor did not answer in time, or the channel failed.
    NoAnswer,
}

/// Asks the monitor to run the action of key slot `slot` and waits for
/// its answer.
async fn ask_monitor(
    state: &Rc<State>,
    cfg: &NetConfig,
    slot: u16,
    peer: Peer,
    target: IpAddr,
) -> Asked {
    if state.acks_in_flight.get() >= MAX_PENDING_ACKS {
        if !state.lock_noted.replace(true) {
            state.send(Request::Notice {
                notice: Notice::HandshakesFull,
                peer,
                value: MAX_PENDING_ACKS as u32,
            });
        }
        return Asked::Busy;
    }
    state.lock_noted.set(false);
    state.acks_in_flight.set(state.acks_in_flight.get() + 1);
    let _ack_guard = AckGuard(Rc::clone(state));
    let id = state.next_id.get();
    state.next_id.set(id.wrapping_add(1).max(1));
    let (tx, rx) = oneshot::channel();
    state.pending.borrow_mut().insert(id, tx);
    let req = Request::Run {
        id,
        generation: cfg.generation,
        slot,
        peer,
        target,
    };
    if state.chan.send(&req.encode(), &[]).await.is_err() {
        state.pending.borrow_mut().remove(&id);
        return Asked::NoAnswer;
    }
    let answer = timeout(cfg.limits.ack_timeout, rx).await;
    state.pending.borrow_mut().remove(&id);
    match answer {
        Ok(Ok(answer)) => Asked::Answer(answer),
        _ => Asked::NoAnswer,
    }
}
