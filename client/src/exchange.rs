//! One trigger as a state machine over a non-blocking socket, so that one
//! thread can drive thousands of them with poll(2) (see `fleet.rs`).
//!
//! The exchange is the one `trigger.rs` runs with blocking calls, step for
//! step, with the same deadlines: `timeout` bounds the connect (resolution
//! included), then the challenge, then the sending of the reply, each; the
//! ack is awaited for `ack_wait`. Every read is of a fixed length into a
//! fixed array. The engine asks [`Exchange::interest`] what to wait for,
//! calls [`Exchange::ready`] when poll(2) says the socket is ready (or in
//! error), and [`Exchange::expire`] once [`Exchange::deadline`] has passed.
//! Proxied jobs do not come here: their handshake runs on a thread.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
use postern::wire::{
    self, Ack, Greeting, ACK_LEN, GREETING_LEN, OSTIARY_REPLY_LEN, OSTIARY_SALT_LEN, REPLY_LEN,
};

use crate::deadline::{classify, IoFailure};
use crate::outcome::{NoAck, Outcome, Report};
use crate::plan::Job;
use crate::transport::{ConnectError, MAX_ADDRESSES};
use crate::trigger::{answer_error, challenge_error, Credential, NetError};

/// What the exchange waits for on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// The socket to become readable.
    Read,
    /// The socket to become writable (the connect, or the reply).
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the resolver (no socket yet).
    Resolving,
    /// A non-blocking connect is in progress.
    Connecting,
    /// Reading the greeting (postern-2) or the salt (ostiary-4).
    Challenge,
    /// Writing the reply.
    Sending,
    /// Reading the ack (postern-2).
    Ack,
}

/// One trigger in progress.
#[derive(Debug)]
pub struct Exchange<'j> {
    job: &'j Job,
    index: usize,
    credential: Credential,
    started: Instant,
    phase: Phase,
    deadline: Instant,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    last_error: Option<ConnectError>,
    stream: Option<TcpStream>,
    peer: Option<SocketAddr>,
    /// The greeting, or the ostiary-4 salt in its first 32 bytes.
    challenge: Greeting,
    got: usize,
    reply: [u8; REPLY_LEN],
    reply_len: usize,
    sent: usize,
    ack: Ack,
    ack_got: usize,
}

/// Creates a non-blocking TCP socket and starts connecting it to `addr`.
/// Returns the stream and whether the connect already completed.
fn begin_connect(addr: SocketAddr) -> io::Result<(TcpStream, bool)> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let done = match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => true,
        Err(Errno::EINPROGRESS | Errno::EINTR) => false,
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from(fd);
    // The reply must leave as one segment, at once.
    let _ = stream.set_nodelay(true);
    Ok((stream, done))
}

fn connect_error(addr: SocketAddr, e: &io::Error) -> ConnectError {
    match e.kind() {
        ErrorKind::ConnectionRefused => ConnectError::Refused { addr },
        _ => ConnectError::Other {
            addr,
            detail: e.to_string(),
        },
    }
}

impl<'j> Exchange<'j> {
    /// Starts job number `index`, answering with `credential`. With an IP
    /// target the connect begins at once; a named target waits for
    /// [`Exchange::resolved`]. Returns the report at once if the job is
    /// already over (every address refused on the spot).
    pub fn start(
        job: &'j Job,
        index: usize,
        credential: Credential,
    ) -> Result<Exchange<'j>, (usize, Report)> {
        let now = Instant::now();
        let mut ex = Exchange {
            job,
            index,
            credential,
            started: now,
            phase: Phase::Resolving,
            deadline: now + job.timeout,
            addrs: Vec::new(),
            next_addr: 0,
            last_error: None,
            stream: None,
            peer: None,
            challenge: [0u8; GREETING_LEN],
            got: 0,
            reply: [0u8; REPLY_LEN],
            reply_len: 0,
            sent: 0,
            ack: [0u8; ACK_LEN],
            ack_got: 0,
        };
        match job.target.ip() {
            Some(ip) => {
                ex.addrs.push(SocketAddr::new(ip, job.target.port()));
                ex.settle(|ex| ex.connect_next())
            }
            None => Ok(ex),
        }
    }

    /// Which job this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// When the job started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the current step times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the exchange waits for the resolver.
    pub fn is_resolving(&self) -> bool {
        self.phase == Phase::Resolving
    }

    /// The socket and what to wait for on it (none while resolving).
    pub fn interest(&self) -> Option<(BorrowedFd<'_>, Wants)> {
        let wants = match self.phase {
            Phase::Resolving => return None,
            Phase::Connecting | Phase::Sending => Wants::Write,
            Phase::Challenge | Phase::Ack => Wants::Read,
        };
        self.stream.as_ref().map(|s| (s.as_fd(), wants))
    }

    /// Runs `step`, then either keeps the exchange or hands back its report.
    fn settle(
        mut self,
        step: impl FnOnce(&mut Self) -> Option<Outcome>,
    ) -> Result<Exchange<'j>, (usize, Report)> {
        match step(&mut self) {
            None => Ok(self),
            Some(outcome) => Err(self.finish(outcome)),
        }
    }

    /// The resolver's answer for a named target.
    pub fn resolved(
        self,
        answer: io::Result<Vec<SocketAddr>>,
    ) -> Result<Exchange<'j>, (usize, Report)> {
        self.settle(|ex| {
            let host = ex.job.target.host().to_owned();
            match answer {
                Ok(addrs) if addrs.is_empty() => Some(Outcome::Unreachable(NetError::Connect(
                    ConnectError::NoAddress { host },
                ))),
                Ok(addrs) => {
                    ex.addrs = addrs.into_iter().take(MAX_ADDRESSES).collect();
                    ex.connect_next()
                }
                Err(e) => Some(Outcome::Unreachable(NetError::Connect(
                    ConnectError::Resolve {
                        host,
                        detail: e.to_string(),
                    },
                ))),
            }
        })
    }

    /// poll(2) reported the socket ready (or in error, or hung up).
    pub fn ready(self) -> Result<Exchange<'j>, (usize, Report)> {
        self.settle(|ex| match ex.phase {
            Phase::Resolving => None,
            Phase::Connecting => ex.connect_done(),
            _ => ex.drive(),
        })
    }

    /// The deadline has passed: the report for the step that timed out.
    pub fn expire(self) -> (usize, Report) {
        let timeout = self.job.timeout;
        let outcome = match self.phase {
            Phase::Resolving => {
                Outcome::Unreachable(NetError::Connect(ConnectError::ResolveTimeout {
                    host: self.job.target.host().to_owned(),
                    timeout,
                }))
            }
            Phase::Connecting => Outcome::Unreachable(NetError::Connect(ConnectError::TimedOut {
                target: self.job.target.to_string(),
                timeout,
            })),
            Phase::Challenge => challenge_error(IoFailure::TimedOut, timeout),
            Phase::Sending => answer_error(IoFailure::TimedOut, timeout, true),
            Phase::Ack => answer_error(IoFailure::TimedOut, self.job.ack_wait, false),
        };
        self.finish(outcome)
    }

    fn finish(self, outcome: Outcome) -> (usize, Report) {
        let address = match (self.phase, self.peer) {
            (Phase::Resolving | Phase::Connecting, _) | (_, None) => self.job.target.to_string(),
            (_, Some(peer)) => peer.to_string(),
        };
        (
            self.index,
            Report {
                outcome,
                address,
                latency: self.started.elapsed(),
            },
        )
    }

    /// Starts connecting to the next address; an outcome once none is left.
    fn connect_next(&mut self) -> Option<Outcome> {
        self.phase = Phase::Connecting;
        self.stream = None;
        while let Some(&addr) = self.addrs.get(self.next_addr) {
            self.next_addr += 1;
            match begin_connect(addr) {
                Ok((stream, done)) => {
                    self.stream = Some(stream);
                    self.peer = Some(addr);
                    if done {
                        return self.connected();
                    }
                    return None;
                }
                Err(e) => self.last_error = Some(connect_error(addr, &e)),
            }
        }
        let e = self
            .last_error
            .take()
            .unwrap_or_else(|| ConnectError::TimedOut {
                target: self.job.target.to_string(),
                timeout: self.job.timeout,
            });
        Some(Outcome::Unreachable(NetError::Connect(e)))
    }

    fn connect_done(&mut self) -> Option<Outcome> {
        let failure = match self.stream.as_ref().map(TcpStream::take_error) {
            Some(Ok(None)) => None,
            Some(Ok(Some(e)) | Err(e)) => Some(e),
            None => Some(io::Error::from(ErrorKind::NotConnected)),
        };
        match (failure, self.peer) {
            (None, _) => self.connected(),
            (Some(e), Some(addr)) => {
                self.last_error = Some(connect_error(addr, &e));
                self.connect_next()
            }
            (Some(_), None) => self.connect_next(),
        }
    }

    fn connected(&mut self) -> Option<Outcome> {
        if let Credential::Postern2 {
            assert_addr: Some(a),
            ..
        } = self.credential
        {
            if !wire::asserted_allowed(a) {
                return Some(Outcome::Unreachable(NetError::Unassertable(a)));
            }
        }
        self.phase = Phase::Challenge;
        self.deadline = Instant::now() + self.job.timeout;
        self.drive()
    }

    fn challenge_len(&self) -> usize {
        match self.credential {
            Credential::Postern2 { .. } => GREETING_LEN,
            Credential::Ostiary4 { .. } => OSTIARY_SALT_LEN,
        }
    }

    /// Reads and writes as far as the socket allows without blocking.
    fn drive(&mut self) -> Option<Outcome> {
        let timeout = self.job.timeout;
        let want = self.challenge_len();
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Some(Outcome::Unreachable(NetError::Io(
                    "no connection".to_owned(),
                )));
            };
            match self.phase {
                Phase::Resolving | Phase::Connecting => return None,
                Phase::Challenge => match read_some(stream, &mut self.challenge[self.got..want]) {
                    Got::Later => return None,
                    Got::Failed(e) => return Some(challenge_error(e, timeout)),
                    Got::Bytes(n) => {
                        let before = self.got;
                        self.got += n;
                        if let (Credential::Postern2 { .. }, true) =
                            (&self.credential, before < 4 && self.got >= 4)
                        {
                            let mut tag = [0u8; 4];
                            tag.copy_from_slice(&self.challenge[..4]);
                            if !wire::tag_is_valid(&tag) {
                                return Some(Outcome::Unreachable(NetError::BadGreeting));
                            }
                        }
                        if self.got == want {
                            self.make_reply();
                            self.phase = Phase::Sending;
                            self.deadline = Instant::now() + timeout;
                        }
                    }
                },
                Phase::Sending => match stream.write(&self.reply[self.sent..self.reply_len]) {
                    Ok(0) => {
                        return Some(answer_error(IoFailure::Closed { got: 0 }, timeout, true))
                    }
                    Ok(n) => {
                        self.sent += n;
                        if self.sent < self.reply_len {
                            continue;
                        }
                        if matches!(self.credential, Credential::Ostiary4 { .. }) {
                            // Nothing comes back; a clean FIN tells the
                            // server the reply is whole.
                            let _ = stream.shutdown(Shutdown::Write);
                            return Some(Outcome::ReplySent);
                        }
                        self.phase = Phase::Ack;
                        self.deadline = Instant::now() + self.job.ack_wait;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                    Err(e) => return Some(answer_error(classify(e), timeout, true)),
                },
                Phase::Ack => match read_some(stream, &mut self.ack[self.ack_got..]) {
                    Got::Later => return None,
                    Got::Failed(e) => return Some(answer_error(e, self.job.ack_wait, false)),
                    Got::Bytes(n) => {
                        self.ack_got += n;
                        if self.ack_got == ACK_LEN {
                            return Some(self.verify());
                        }
                    }
                },
            }
        }
    }

    fn make_reply(&mut self) {
        match &self.credential {
            Credential::Postern2 { key, assert_addr } => {
                self.reply = wire::reply(key, &self.challenge, *assert_addr);
                self.reply_len = REPLY_LEN;
            }
            Credential::Ostiary4 { password } => {
                let mut salt = [0u8; OSTIARY_SALT_LEN];
                salt.copy_from_slice(&self.challenge[..OSTIARY_SALT_LEN]);
                let r = wire::ostiary_reply(password, &salt);
                self.reply[..OSTIARY_REPLY_LEN].copy_from_slice(&r);
                self.reply_len = OSTIARY_REPLY_LEN;
            }
        }
    }

    fn verify(&self) -> Outcome {
        match &self.credential {
            Credential::Postern2 { key, .. } => {
                match wire::verify_ack(key, &self.challenge, &self.reply, &self.ack) {
                    Some(answer) => Outcome::Acknowledged(answer),
                    None => Outcome::NoAck(NoAck::BadAck),
                }
            }
            // An ostiary-4 exchange ends when its reply is sent.
            Credential::Ostiary4 { .. } => Outcome::ReplySent,
        }
    }

    /// How long the job has run.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

enum Got {
    Bytes(usize),
    Later,
    Failed(IoFailure),
}

/// One non-blocking read into `buf` (never empty here).
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Got {
    loop {
        return match stream.read(buf) {
            Ok(0) => Got::Failed(IoFailure::Closed { got: 0 }),
            Ok(n) => Got::Bytes(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => Got::Later,
            Err(e) => Got::Failed(classify(e)),
        };
    }
}
