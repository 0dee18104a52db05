//! One network process's session with the monitor: its channel, the
//! nonces issued to it, and the handling of every request it sends.
//!
//! Each request is read whole into a fixed buffer, decoded and
//! range-checked (`ipc.rs`) before anything is done with it. Anything
//! malformed ends the session with a [`SessionEnd`] that says why; what
//! to do then is the supervisor's decision (`supervise.rs`: kill the
//! process, start a fresh one with a fresh session), not this module's.
//! A fresh session has an empty nonce table, so nothing issued to a dead
//! or replaced process is ever accepted.
//!
//! The verdicts given here feed the monitor's mirror of the network
//! process's lockout and rate state (`Monitor::mirror_verdict`): the
//! monitor verified the reply, so a success or a counted failure is its
//! own knowledge, not the network process's word.
//!
//! A reply whose MAC is valid is held while the monitor asks for its
//! connection (`Down::Connection`): only then does a descriptor cross the
//! socketpair, so a flood of wrong replies costs no descriptor passing,
//! and the peer an action runs for is the kernel's word (`getpeername`).
//!
//! Bounds: the nonce table has a fixed capacity, and so has the table of
//! verified replies awaiting their connection; answers that cannot be
//! sent at once wait in at most [`MAX_QUEUED_SENDS`] tasks, and while
//! that many wait no further request is read (the network process is
//! slowed down, the monitor's memory does not grow); authenticated
//! replies run at most `MAX_RUN_REQUESTS` at a time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::channel::Channel;
use crate::ipc::{Down, Peer, Reason, ReplyBytes, Request, Verdict, REQUEST_LEN};
use crate::monitor::action;
use crate::monitor::log::Level;
use crate::monitor::nonces::{NonceTable, TakeError};
use crate::monitor::verify::{connection_peer, Keyring, PeerError, Valid};
use crate::monitor::{Judge, Monitor, MAX_RUN_REQUESTS};
use crate::wire::{self, Answer, Reason as AckReason, Status, NONCE_LEN};

/// Answers waiting for room on the channel, at most; while this many
/// wait, the monitor reads no further request.
pub const MAX_QUEUED_SENDS: usize = 256;

/// Why a network process's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// A stop was asked (SIGTERM, SIGINT, the `shutdown` builtin).
    Stop,
    /// The network process exited; its status, if it could be read.
    Exited(Option<ExitStatus>),
    /// It sent something malformed or impossible for an honest network
    /// process: what (a fixed text; nothing it sent is quoted).
    Malformed(&'static str),
    /// The channel closed or failed.
    ChannelClosed,
}

impl core::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionEnd::Stop => f.write_str("stopped"),
            SessionEnd::Exited(Some(st)) => {
                write!(f, "exited ({})", action::Outcome::Exited(*st).describe())
            }
            SessionEnd::Exited(None) => f.write_str("exited (status unreadable)"),
            SessionEnd::Malformed(what) => write!(f, "sent a malformed request ({what})"),
            SessionEnd::ChannelClosed => f.write_str("closed its channel"),
        }
    }
}

/// The monitor's side of one network process.
pub struct Session {
    chan: Channel,
    nonces: RefCell<NonceTable>,
    /// Verified replies waiting for their connection, by nonce handle; at
    /// most the nonce table's capacity.
    awaiting: RefCell<HashMap<u64, Awaiting>>,
    queued: Cell<usize>,
    room: Notify,
    full_noted: Cell<bool>,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("nonces", &self.nonces.borrow().len())
            .field("awaiting", &self.awaiting.borrow().len())
            .field("queued", &self.queued.get())
            .finish()
    }
}

impl Session {
    /// A session on `chan` with an empty nonce table.
    pub fn new(chan: Channel, nonces: NonceTable) -> Rc<Session> {
        Rc::new(Session {
            chan,
            nonces: RefCell::new(nonces),
            awaiting: RefCell::new(HashMap::new()),
            queued: Cell::new(0),
            room: Notify::new(),
            full_noted: Cell::new(false),
        })
    }

    /// The channel to the network process.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Nonces issued and not yet used, given back or expired.
    pub fn nonces_outstanding(&self) -> usize {
        self.nonces.borrow().len()
    }

    /// The bound on [`nonces_outstanding`](Self::nonces_outstanding).
    pub fn nonce_capacity(&self) -> usize {
        self.nonces.borrow().capacity()
    }

    /// Nonce table slots ever allocated (never above the capacity).
    pub fn nonce_slots(&self) -> usize {
        self.nonces.borrow().allocated()
    }

    /// Verified replies waiting for their connection.
    pub fn awaiting_connections(&self) -> usize {
        self.awaiting.borrow().len()
    }

    /// Answers waiting for room on the channel.
    pub fn queued_sends(&self) -> usize {
        self.queued.get()
    }

    pub(super) fn reconfigure(&self, config: &crate::config::Config) {
        let cap = NonceTable::capacity_for(config.limits.max_handshakes);
        self.nonces
            .borrow_mut()
            .reconfigure(cap, config.limits.handshake_timeout);
    }

    /// Sends `msg` now if the channel has room, else from a task (at most
    /// [`MAX_QUEUED_SENDS`] of them; beyond, a message is dropped, which
    /// the read side prevents by waiting for room first).
    fn post(self: &Rc<Self>, msg: Vec<u8>) {
        if self.queued.get() == 0 {
            match self.chan.try_send(&msg) {
                Ok(true) => return,
                Ok(false) => {}
                // The read side sees the broken channel and ends the session.
                Err(_) => return,
            }
        }
        if self.queued.get() >= MAX_QUEUED_SENDS {
            return;
        }
        self.queued.set(self.queued.get() + 1);
        let me = Rc::clone(self);
        tokio::task::spawn_local(async move {
            let _ = me.chan.send(&msg, &[]).await;
            me.queued.set(me.queued.get().saturating_sub(1));
            me.room.notify_waiters();
        });
    }

    /// Waits until fewer than [`MAX_QUEUED_SENDS`] answers are queued,
    /// less the two one request can cause.
    async fn wait_room(&self) {
        while self.queued.get() + 2 > MAX_QUEUED_SENDS {
            let notified = self.room.notified();
            if self.queued.get() + 2 <= MAX_QUEUED_SENDS {
                break;
            }
            notified.await;
        }
    }
}

impl Monitor {
    /// Serves the current session until it ends, and says why. Used by
    /// [`run`](Monitor::run) one request at a time, and whole by anything
    /// that drives a session directly.
    pub async fn serve_session(self: &Rc<Self>) -> SessionEnd {
        loop {
            if let Err(end) = self.step().await {
                return end;
            }
        }
    }

    /// Reads and handles one request of the current session. Cancel-safe:
    /// a request is either read and handled whole, or left on the
    /// channel.
    pub(super) async fn step(self: &Rc<Self>) -> Result<(), SessionEnd> {
        let session = self.session();
        session.wait_room().await;
        let mut buf = [0u8; REQUEST_LEN + 1];
        let r = session
            .chan
            .recv(&mut buf)
            .await
            .map_err(|_| SessionEnd::ChannelClosed)?;
        if r.len == 0 && r.fds.is_empty() {
            return Err(SessionEnd::ChannelClosed);
        }
        let len = if r.truncated { REQUEST_LEN + 1 } else { r.len };
        let bytes = &buf[..len.min(buf.len())];
        // Judged against the generation it was made under: a handshake
        // that began before a reload may name a listener the new config
        // no longer has.
        let generation = Request::generation_of(bytes).unwrap_or(0);
        let judge = self.book.borrow().judge(generation);
        let listeners = match judge {
            Some(Judge::Known(l)) => l,
            Some(Judge::Stale) => usize::from(u8::MAX) + 1,
            None => return Err(SessionEnd::Malformed("an unknown config generation")),
        };
        let req = Request::decode(bytes, listeners).map_err(|e| SessionEnd::Malformed(e.name()))?;
        self.network_up();
        let mut fds = r.fds;
        match req {
            Request::Verify {
                generation,
                handle,
                peer,
                reply,
                failures,
            } => {
                if !fds.is_empty() {
                    return Err(SessionEnd::Malformed("a descriptor with a request"));
                }
                let asked = Asked {
                    generation,
                    handle,
                    peer,
                    reply,
                    failures,
                };
                self.verify(&session, asked)
            }
            Request::Connection { handle } => {
                let (Some(fd), true) = (fds.pop(), fds.is_empty()) else {
                    return Err(SessionEnd::Malformed(
                        "a connection request without exactly one descriptor",
                    ));
                };
                self.connection(&session, handle, fd)
            }
            Request::Nonces { count } => {
                if !fds.is_empty() {
                    return Err(SessionEnd::Malformed("a descriptor with a request"));
                }
                self.issue(&session, usize::from(count));
                Ok(())
            }
            other => {
                if !fds.is_empty() {
                    return Err(SessionEnd::Malformed("a descriptor with a request"));
                }
                if let Request::Fail { handle, .. }
                | Request::Notice {
                    handle,
                    notice: crate::ipc::Notice::NoReply,
                    ..
                } = other
                {
                    session.nonces.borrow_mut().release(handle);
                }
                if let Request::Notice {
                    handle,
                    notice: crate::ipc::Notice::PassGaveUp,
                    ..
                } = other
                {
                    session.awaiting.borrow_mut().remove(&handle);
                }
                self.handle(other, generation);
                Ok(())
            }
        }
    }

    fn issue(self: &Rc<Self>, session: &Rc<Session>, count: usize) {
        let (list, random_failed) = session
            .nonces
            .borrow_mut()
            .issue_many(count, Instant::now());
        if random_failed {
            self.log(
                Level::Err,
                "error the OS random generator failed; nonces not issued",
            );
        }
        if list.is_empty() && !random_failed {
            if !session.full_noted.replace(true) {
                let cap = session.nonce_capacity();
                self.log(
                    Level::Warning,
                    &format!("limit nonces: {cap} outstanding; issuing none until some are used or expire"),
                );
            }
        } else {
            session.full_noted.set(false);
        }
        session.post(Down::Nonces(list).encode());
    }

    /// The keyring a reply made under `generation` is checked with, and
    /// the generation its action indexes refer to: that generation's if
    /// still kept (the current or the one before), else the current.
    fn keyring_for(&self, generation: u32) -> (u32, Rc<Keyring>) {
        let b = self.book.borrow();
        match &b.previous_keyring {
            Some((g, k)) if *g == generation && generation != b.generation => (*g, Rc::clone(k)),
            _ => (b.generation, Rc::clone(&b.keyring)),
        }
    }

    /// Checks a forwarded reply against the nonce it names. A wrong one
    /// is answered with a verdict at once; a valid one is held, and its
    /// connection asked for ([`connection`](Self::connection) goes on).
    fn verify(self: &Rc<Self>, session: &Rc<Session>, asked: Asked) -> Result<(), SessionEnd> {
        let Asked {
            generation,
            handle,
            peer,
            reply,
            failures,
        } = asked;
        let expected = self.book.borrow().protocol_of(generation, peer.listener);
        if expected.is_some_and(|p| p != reply.protocol()) {
            return Err(SessionEnd::Malformed(
                "a reply of the wrong protocol for its listener",
            ));
        }
        let verdict = |v: Verdict| Down::Verdict { handle, verdict: v }.encode();
        let now = Instant::now();
        let nonce = match session.nonces.borrow_mut().take(handle, now) {
            Ok(n) => n,
            Err(TakeError::NeverIssued) => {
                return Err(SessionEnd::Malformed("a reply to a nonce never issued"))
            }
            Err(TakeError::Stale) => {
                self.log_fail(peer, Reason::StaleNonce, failures, generation);
                self.mirror_verdict(peer, Verdict::Bad, failures);
                session.post(verdict(Verdict::Bad));
                return Ok(());
            }
        };
        let asked_generation = generation;
        let (generation, keyring) = self.keyring_for(generation);
        let Some(valid) = keyring.check(&nonce, &reply) else {
            self.log_fail(peer, Reason::BadMac, failures, generation);
            self.mirror_verdict(peer, Verdict::Bad, failures);
            session.post(verdict(Verdict::Bad));
            return Ok(());
        };
        // Authenticated, if the connection is who the network process
        // says it is: hold the reply and ask for the connection itself.
        let timeout = self.book.borrow().config.limits.handshake_timeout;
        let cap = session.nonce_capacity();
        let mut awaiting = session.awaiting.borrow_mut();
        if awaiting.len() >= cap {
            // Only a network process that never sends the connections it
            // is asked for fills this: forget those past any deadline.
            awaiting.retain(|_, a| now.saturating_duration_since(a.at) < timeout);
        }
        if awaiting.len() >= cap {
            drop(awaiting);
            self.log(
                Level::Warning,
                &format!("limit connections awaited: {cap}; refusing a verified reply"),
            );
            session.post(verdict(Verdict::Bad));
            return Ok(());
        }
        awaiting.insert(
            handle,
            Awaiting {
                at: now,
                asked_generation,
                generation,
                keyring,
                nonce,
                reply,
                valid,
                peer,
                failures,
            },
        );
        drop(awaiting);
        session.post(Down::Connection { handle }.encode());
        Ok(())
    }

    /// The connection of a verified reply has come: the kernel says who
    /// is at its other end, and that decides what runs. A connection
    /// nobody asked for (or asked for so long ago that it was forgotten)
    /// is closed and ignored.
    fn connection(
        self: &Rc<Self>,
        session: &Rc<Session>,
        handle: u64,
        fd: OwnedFd,
    ) -> Result<(), SessionEnd> {
        let Some(a) = session.awaiting.borrow_mut().remove(&handle) else {
            return Ok(());
        };
        let Awaiting {
            asked_generation,
            generation,
            keyring,
            nonce,
            reply,
            valid,
            peer,
            failures,
            ..
        } = a;
        let verdict = |v: Verdict| Down::Verdict { handle, verdict: v }.encode();
        // From here on the source is the kernel's word, not the network
        // process's.
        let listeners: Vec<SocketAddr> = self.book.borrow().bound.iter().map(|b| b.local).collect();
        let real = match connection_peer(&fd, &listeners) {
            Ok(real) => real,
            Err(PeerError::Gone) => {
                // Reset right after its reply: who sent it cannot be
                // confirmed, so nothing runs.
                self.log_fail(peer, Reason::Reset, failures, generation);
                self.mirror_verdict(peer, Verdict::Bad, failures);
                session.post(verdict(Verdict::Bad));
                return Ok(());
            }
            Err(PeerError::NotOurs) if asked_generation != self.book.borrow().generation => {
                // Accepted on a listener a reload has since closed: stale,
                // not forged; nothing runs.
                self.log_fail(peer, Reason::StaleNonce, failures, generation);
                self.mirror_verdict(peer, Verdict::Bad, failures);
                session.post(verdict(Verdict::Bad));
                return Ok(());
            }
            Err(e) => return Err(SessionEnd::Malformed(e.name())),
        };
        drop(fd);
        if real.ip() != peer.addr || real.port() != peer.port {
            return Err(SessionEnd::Malformed(
                "a peer address that is not the connection's",
            ));
        }
        let source = real.ip();
        let refuse = |why| Answer::because(Status::Refused, why);
        let post_ack = |answer: Answer| {
            if let Some(ack) = keyring.ack(&valid, &nonce, &reply, answer) {
                session.post(Down::Ack { handle, ack }.encode());
            }
        };
        if valid.bind_source && valid.asserted != Some(source) {
            // A relayed or replayed exchange: a failure like any other.
            self.log_fail(peer, Reason::BindMismatch, failures, generation);
            self.mirror_verdict(peer, Verdict::BindMismatch, failures);
            session.post(verdict(Verdict::BindMismatch));
            post_ack(refuse(AckReason::AddressBinding));
            return Ok(());
        }
        self.mirror_verdict(peer, Verdict::Authenticated, failures);
        session.post(verdict(Verdict::Authenticated));
        if valid.asserted.is_some_and(|a| !wire::asserted_allowed(a)) {
            post_ack(refuse(AckReason::AddressNotAllowed));
            return Ok(());
        }
        let target = valid.asserted.unwrap_or(source);
        let admitted = {
            let mut b = self.book.borrow_mut();
            let ok = b.runs_in_flight < MAX_RUN_REQUESTS;
            if ok {
                b.runs_in_flight += 1;
            }
            ok
        };
        if !admitted {
            self.log(
                Level::Warning,
                &format!("limit run requests: {MAX_RUN_REQUESTS} in flight; refusing"),
            );
            post_ack(refuse(AckReason::Busy));
            return Ok(());
        }
        let me = Rc::clone(self);
        let session = Rc::clone(session);
        tokio::task::spawn_local(async move {
            let listener = me.listener_name(generation, peer.listener);
            let by = me.key_of(generation, valid.slot);
            let (answer, name) = me.run_action(generation, valid.slot, target).await;
            {
                let mut b = me.book.borrow_mut();
                b.runs_in_flight = b.runs_in_flight.saturating_sub(1);
            }
            let why = match answer.reason {
                AckReason::None => String::new(),
                r => format!(" reason={}", r.name()),
            };
            me.log(
                Level::Notice,
                &format!(
                    "ok src={} port={} listener={listener} action={name} addr={target} status={}{why} {by}",
                    source,
                    peer.port,
                    answer.status.name()
                ),
            );
            if let Some(ack) = keyring.ack(&valid, &nonce, &reply, answer) {
                let _ = session
                    .chan
                    .send(&Down::Ack { handle, ack }.encode(), &[])
                    .await;
            }
            if answer.status == Status::Started && me.is_shutdown_action(&name) {
                me.shutdown.notify_one();
            }
        });
        Ok(())
    }

    /// The `fail` line (the fail2ban filter matches it).
    pub(super) fn log_fail(&self, peer: Peer, reason: Reason, failures: u32, generation: u32) {
        self.log(
            Level::Warning,
            &format!(
                "fail src={} port={} listener={} reason={} failures={failures}",
                peer.addr,
                peer.port,
                self.listener_name(generation, peer.listener),
                reason.name()
            ),
        );
    }
}

/// A verified reply waiting for its connection.
struct Awaiting {
    /// When it was verified.
    at: Instant,
    /// The generation its handshake began under.
    asked_generation: u32,
    /// The generation of the keyring that verified it.
    generation: u32,
    keyring: Rc<Keyring>,
    nonce: [u8; NONCE_LEN],
    reply: ReplyBytes,
    valid: Valid,
    peer: Peer,
    failures: u32,
}

/// A decoded verify request's fields.
struct Asked {
    generation: u32,
    handle: u64,
    peer: Peer,
    reply: ReplyBytes,
    failures: u32,
}
