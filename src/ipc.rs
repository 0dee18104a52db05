//! Messages between the privileged monitor and the unprivileged network
//! process, as bytes. No I/O happens here (see `channel.rs`).
//!
//! The network process holds no key, no password and no MAC state: the
//! monitor chooses every nonce (and every ostiary-4 salt) and checks
//! every reply. The network process greets with a nonce from a small
//! batch the monitor issued ([`Down::Nonces`]), reads the fixed-length
//! reply and forwards it, with the nonce's handle and the peer, in a
//! [`Request::Verify`]. The monitor answers a wrong reply at once with a
//! [`Down::Verdict`]. For a valid one it first asks for the connection
//! ([`Down::Connection`]); the network process passes its descriptor in a
//! [`Request::Connection`], the monitor learns the peer from the kernel
//! and then gives its verdict and, for postern-2, later the signed ack it
//! computed itself ([`Down::Ack`]). Only valid replies pass descriptors.
//!
//! Network -> monitor messages are *untrusted*: a compromised network
//! process can send anything. They are exactly [`REQUEST_LEN`] bytes,
//! versioned, with every field range-checked by [`Request::decode`]; any
//! deviation ends that network process's session with the monitor, which
//! kills it and starts a fresh one with a fresh session
//! (`monitor/supervise.rs`).
//!
//! ```text
//! off len field
//!  0   1  version (3)
//!  1   1  kind: 1 verify, 2 fail, 3 lockout, 4 notice, 5 nonces,
//!         6 connection
//!  2   2  arg16 (BE): protocol (verify: 1 postern-2, 2 ostiary-4) |
//!         failure reason | notice code | nonces wanted (1..=NONCE_BATCH)
//!  4   4  arg32 (BE): failures the source has if this reply is refused
//!         (verify) | failure count | notice value
//!  8   4  config generation (BE): the one the connection began under
//! 12   1  listener index
//! 13   1  reserved, zero
//! 14   2  source port (BE)
//! 16  16  source address (IPv4-mapped for IPv4; never zero)
//! 32   8  nonce handle (BE): verify and connection (never zero); fail
//!         and the no-reply notice (zero: none), which give the nonce
//!         back; the pass-gave-up notice; zero otherwise
//! 40  48  reply (verify only): postern-2 48 bytes, or ostiary-4 32 bytes
//!         and 16 zero bytes; zero otherwise
//! ```
//!
//! A nonces request carries only version, kind, count and generation; a
//! connection request only version, kind, generation and handle; every
//! other byte is zero. A connection request carries exactly one
//! descriptor (the connection, SCM_RIGHTS); every other request none.
//!
//! Monitor -> network messages are trusted (the monitor wrote them) but
//! are still decoded without panics: nonces, verdicts, acks, and the
//! network part of the config (limits, listener sockets passed with
//! SCM_RIGHTS, exempt networks). No secret is among them.
//!
//! A network process started to replace one that died also gets, inside
//! its first config (between Begin and End), the lockout and rate state
//! the monitor mirrored from the events and verdicts ([`Down::Carry`]):
//!
//! ```text
//! off len field
//!  0   1  version (3)
//!  1   1  0x96
//!  2   1  record count n, 1..=48 (MAX_CARRY_BATCH)
//!  3 32n  records:
//!         +0  1  what: 1 source v4, 2 source v6, 3 network v4, 4 network v6
//!         +1  1  prefix length (source: 32 or 64; network: its length)
//!         +2  1  flags: bit 0 in good standing (sources only); others zero
//!         +3  1  reserved, zero
//!         +4  8  address bits (BE): IPv4 in the low 32, IPv6 the upper 64;
//!                host bits zero
//!        +12  4  failures counted toward lockout (BE)
//!        +16  8  lockout left, ms (BE; 0: not locked)
//!        +24  8  source: micro-tokens in its bucket; network: ms since
//!                its last counted failure (BE)
//! ```
//!
//! Message kinds, monitor -> network: 0x82 nonces, 0x83 verdict, 0x84
//! ack, 0x85 connection (send it: `[version, 0x85, handle (8, BE)]`),
//! 0x90 begin, 0x91 listener, 0x92 exempt, 0x94 end, 0x96 carry.
//! (0x81, 0x93 and 0x95 belonged to earlier versions and are unused.)

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::config::{IpNet, Limits, Protocol};
use crate::wire::{
    decode_addr, encode_addr, Ack, Reply, ACK_LEN, ADDR_LEN, NONCE_LEN, OSTIARY_REPLY_LEN,
    REPLY_LEN,
};

/// IPC format version.
pub const VERSION: u8 = 3;
/// Length of every network -> monitor message.
pub const REQUEST_LEN: usize = 88;
/// Largest monitor -> network message.
pub const MAX_DOWN_LEN: usize = 2048;
/// Most records in one [`Down::Carry`] message (3 + 48 x 32 bytes fits
/// [`MAX_DOWN_LEN`]).
pub const MAX_CARRY_BATCH: usize = 48;
/// Length of one carried record.
pub const CARRY_RECORD_LEN: usize = 32;

/// Most nonces the monitor issues in one [`Down::Nonces`], and the most
/// the network process keeps at hand. It asks for more when half are
/// used, so a greeting waits for a round trip only when more than half a
/// batch (16) of connections arrive during one refill, a single round
/// trip on the local socketpair; at the highest rates BENCHMARKS.md
/// records (about 12,000 handshakes per second) 16 connections take over
/// a millisecond to arrive. Small, so that what
/// a compromised network process holds unused is small too, and so that
/// a batch (3 + 40 bytes each, 1,283 bytes) fits one message.
pub const NONCE_BATCH: usize = 32;
/// How long the network process may keep an issued nonce before using it
/// (from when it received it). Older ones are thrown away unused.
pub const NONCE_KEEP: Duration = Duration::from_secs(5);
/// Time the monitor allows on top of [`NONCE_KEEP`] and the handshake
/// deadline for the IPC itself (a nonce is received a little after it
/// is issued, a verify request read a little after it is sent).
pub const NONCE_SLACK: Duration = Duration::from_secs(1);

/// Why a handshake failed. Stable names appear in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The reply matched no key.
    BadMac = 1,
    /// The peer closed before sending the whole reply.
    ShortReply = 2,
    /// The peer sent more than the reply.
    LongReply = 3,
    /// No complete reply before the deadline.
    Timeout = 4,
    /// The connection was reset or failed.
    Reset = 5,
    /// Evicted to make room for a newer handshake.
    Evicted = 6,
    /// A valid MAC whose asserted address is not the source (bind_source).
    BindMismatch = 7,
    /// The reply's nonce had expired or was already spent when the
    /// monitor checked it, or its listener was closed by a reload since
    /// (only the monitor logs this one).
    StaleNonce = 8,
}

impl Reason {
    const ALL: [Reason; 8] = [
        Reason::BadMac,
        Reason::ShortReply,
        Reason::LongReply,
        Reason::Timeout,
        Reason::Reset,
        Reason::Evicted,
        Reason::BindMismatch,
        Reason::StaleNonce,
    ];

    /// Stable log name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::BadMac => "bad-mac",
            Reason::ShortReply => "short-reply",
            Reason::LongReply => "long-reply",
            Reason::Timeout => "timeout",
            Reason::Reset => "reset",
            Reason::Evicted => "evicted",
            Reason::BindMismatch => "bind-mismatch",
            Reason::StaleNonce => "stale-nonce",
        }
    }

    fn from_u16(v: u16) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u16 == v)
    }
}

/// A limit that was hit, logged once per episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// All handshake slots are busy; the oldest are being evicted.
    HandshakesFull = 1,
    /// The source table is full; sources are being forgotten.
    SourceTableFull = 2,
    /// A source is over its rate (carries the source).
    RateLimited = 3,
    /// accept() failed (e.g. out of file descriptors); value is errno.
    AcceptError = 4,
    /// The OS random generator failed; the connection was dropped.
    RandomFailed = 5,
    /// Log events were dropped because the monitor fell behind; value is
    /// how many. Its source address is unspecified (0.0.0.0).
    EventsDropped = 6,
    /// The shared verification budget of sources not in good standing is
    /// spent; value is the budget per second. Logged once per episode.
    OverBudget = 7,
    /// A network enclosing the source got locked out; value is its prefix
    /// length (24, 56 or 48).
    NetworkLocked = 8,
    /// A peer closed right after the challenge without sending a byte
    /// (not counted as a failure: PROTOCOL.md).
    NoReply = 9,
    /// No issued nonce was at hand in time for a new connection; it was
    /// closed before the greeting.
    NoNonce = 10,
    /// The kernel refused to pass a connection to the monitor
    /// (ETOOMANYREFS: the descriptors in flight from the network
    /// process's user exceed its open-file limit); it is being tried
    /// again until the handshake's deadline. Value: that limit. Once per
    /// episode.
    PassRefused = 11,
    /// A connection could not be passed before its handshake's deadline;
    /// nothing ran for it (not counted against the source). Carries the
    /// handle of its verified reply.
    PassGaveUp = 12,
}

impl Notice {
    const ALL: [Notice; 12] = [
        Notice::HandshakesFull,
        Notice::SourceTableFull,
        Notice::RateLimited,
        Notice::AcceptError,
        Notice::RandomFailed,
        Notice::EventsDropped,
        Notice::OverBudget,
        Notice::NetworkLocked,
        Notice::NoReply,
        Notice::NoNonce,
        Notice::PassRefused,
        Notice::PassGaveUp,
    ];

    fn from_u16(v: u16) -> Option<Notice> {
        Notice::ALL.into_iter().find(|n| *n as u16 == v)
    }
}

/// A connection's identity, as carried in every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Index of the listener it arrived on.
    pub listener: u8,
    /// Canonical source address.
    pub addr: IpAddr,
    /// Source port.
    pub port: u16,
}

/// The fixed-length reply a peer sent, by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBytes {
    /// A postern-2 reply: asserted address field and MAC.
    Postern2(Reply),
    /// An ostiary-4 reply: the MAC of the salt.
    Ostiary4([u8; OSTIARY_REPLY_LEN]),
}

impl ReplyBytes {
    /// The protocol it belongs to.
    pub fn protocol(&self) -> Protocol {
        match self {
            ReplyBytes::Postern2(_) => Protocol::Postern2,
            ReplyBytes::Ostiary4(_) => Protocol::Ostiary4,
        }
    }
}

/// A decoded network -> monitor message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Check this reply to the nonce `handle` names; answer with a
    /// [`Down::Verdict`], or, if its MAC is valid, first with a
    /// [`Down::Connection`] asking for the connection itself.
    Verify {
        /// The config generation the handshake began under.
        generation: u32,
        /// The nonce's handle, as issued ([`Down::Nonces`]); never zero.
        handle: u64,
        /// Who replied.
        peer: Peer,
        /// The reply, exactly as read.
        reply: ReplyBytes,
        /// The source's failure count if this reply is refused (0 for an
        /// exempt source), for the monitor's log line.
        failures: u32,
    },
    /// A failed handshake.
    Fail {
        /// Who failed.
        peer: Peer,
        /// Why.
        reason: Reason,
        /// Consecutive failures so far (0 for exempt sources).
        failures: u32,
        /// The nonce it was greeted with, given back (0: none).
        handle: u64,
    },
    /// A source was just locked out.
    Lockout {
        /// The source.
        peer: Peer,
        /// Failures that led to it.
        failures: u32,
    },
    /// A limit was hit.
    Notice {
        /// Which limit.
        notice: Notice,
        /// The connection that hit it.
        peer: Peer,
        /// A number that goes with it (errno, count).
        value: u32,
        /// The nonce of the connection, given back (0: none; only
        /// [`Notice::NoReply`] and [`Notice::PassGaveUp`] have one).
        handle: u64,
    },
    /// The connection of verified reply `handle`, in answer to
    /// [`Down::Connection`]: its descriptor comes with this request, and
    /// with no other.
    Connection {
        /// The verify request's nonce handle.
        handle: u64,
    },
    /// Issue up to `count` more nonces.
    Nonces {
        /// How many, 1..=[`NONCE_BATCH`].
        count: u16,
    },
}

/// Why an untrusted request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Not exactly [`REQUEST_LEN`] bytes.
    WrongSize(usize),
    /// Unknown version byte.
    Version(u8),
    /// Unknown kind byte.
    Kind(u8),
    /// A reserved byte or unused field is not zero.
    Reserved,
    /// The source address is missing.
    NoSource,
    /// A verify without a handle, or a handle where none belongs.
    Handle,
    /// Unknown failure reason, notice code or protocol.
    Code(u16),
    /// Listener index out of range.
    Listener(u8),
    /// A nonce count of zero or above [`NONCE_BATCH`].
    Count(u16),
}

impl RequestError {
    /// A fixed description, for the log line that ends a session.
    pub fn name(self) -> &'static str {
        match self {
            RequestError::WrongSize(_) => "request of the wrong size",
            RequestError::Version(_) => "unknown request version",
            RequestError::Kind(_) => "unknown request kind",
            RequestError::Reserved => "reserved field not zero",
            RequestError::NoSource => "missing source address",
            RequestError::Handle => "nonce handle misplaced",
            RequestError::Code(_) => "unknown reason, notice or protocol code",
            RequestError::Listener(_) => "listener index out of range",
            RequestError::Count(_) => "nonce count out of range",
        }
    }
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::WrongSize(n) => write!(f, "request of {n} bytes, expected {REQUEST_LEN}"),
            RequestError::Version(v) => write!(f, "unknown request version {v}"),
            RequestError::Kind(k) => write!(f, "unknown request kind {k}"),
            RequestError::Reserved => f.write_str("reserved field not zero"),
            RequestError::NoSource => f.write_str("missing source address"),
            RequestError::Handle => f.write_str("nonce handle misplaced"),
            RequestError::Code(c) => write!(f, "unknown reason, notice or protocol code {c}"),
            RequestError::Listener(l) => write!(f, "listener index {l} out of range"),
            RequestError::Count(c) => write!(f, "nonce count {c} out of range"),
        }
    }
}

const KIND_VERIFY: u8 = 1;
const KIND_FAIL: u8 = 2;
const KIND_LOCKOUT: u8 = 3;
const KIND_NOTICE: u8 = 4;
const KIND_NONCES: u8 = 5;
const KIND_CONNECTION: u8 = 6;

const PROTO_POSTERN2: u16 = 1;
const PROTO_OSTIARY4: u16 = 2;

const OFF_HANDLE: usize = 32;
const OFF_REPLY: usize = 40;

fn put_peer(b: &mut [u8; REQUEST_LEN], p: &Peer) {
    b[12] = p.listener;
    b[14..16].copy_from_slice(&p.port.to_be_bytes());
    b[16..32].copy_from_slice(&encode_addr(Some(p.addr)));
}

fn addr16(b: &[u8]) -> [u8; ADDR_LEN] {
    let mut a = [0u8; ADDR_LEN];
    a.copy_from_slice(&b[..ADDR_LEN]);
    a
}

impl Request {
    /// Encodes a request made under config `generation` (a verify carries
    /// its own). The monitor judges the request against that generation,
    /// so a request from before a reload is never out of range.
    pub fn encode_for(&self, generation: u32) -> [u8; REQUEST_LEN] {
        let mut b = self.encode();
        if !matches!(self, Request::Verify { .. }) {
            b[8..12].copy_from_slice(&generation.to_be_bytes());
        }
        b
    }

    /// The config generation a request says it belongs to (0: none said,
    /// judge it against the current one). `None` if too short.
    pub fn generation_of(bytes: &[u8]) -> Option<u32> {
        let g = bytes.get(8..12)?;
        Some(u32::from_be_bytes([g[0], g[1], g[2], g[3]]))
    }

    /// Encodes the request (generation 0 unless a verify).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0] = VERSION;
        match self {
            Request::Verify {
                generation,
                handle,
                peer,
                reply,
                failures,
            } => {
                b[1] = KIND_VERIFY;
                let (proto, bytes): (u16, &[u8]) = match reply {
                    ReplyBytes::Postern2(r) => (PROTO_POSTERN2, r),
                    ReplyBytes::Ostiary4(r) => (PROTO_OSTIARY4, r),
                };
                b[2..4].copy_from_slice(&proto.to_be_bytes());
                b[4..8].copy_from_slice(&failures.to_be_bytes());
                b[8..12].copy_from_slice(&generation.to_be_bytes());
                put_peer(&mut b, peer);
                b[OFF_HANDLE..OFF_REPLY].copy_from_slice(&handle.to_be_bytes());
                b[OFF_REPLY..OFF_REPLY + bytes.len()].copy_from_slice(bytes);
            }
            Request::Fail {
                peer,
                reason,
                failures,
                handle,
            } => {
                b[1] = KIND_FAIL;
                b[2..4].copy_from_slice(&(*reason as u16).to_be_bytes());
                b[4..8].copy_from_slice(&failures.to_be_bytes());
                put_peer(&mut b, peer);
                b[OFF_HANDLE..OFF_REPLY].copy_from_slice(&handle.to_be_bytes());
            }
            Request::Lockout { peer, failures } => {
                b[1] = KIND_LOCKOUT;
                b[4..8].copy_from_slice(&failures.to_be_bytes());
                put_peer(&mut b, peer);
            }
            Request::Notice {
                notice,
                peer,
                value,
                handle,
            } => {
                b[1] = KIND_NOTICE;
                b[2..4].copy_from_slice(&(*notice as u16).to_be_bytes());
                b[4..8].copy_from_slice(&value.to_be_bytes());
                put_peer(&mut b, peer);
                b[OFF_HANDLE..OFF_REPLY].copy_from_slice(&handle.to_be_bytes());
            }
            Request::Nonces { count } => {
                b[1] = KIND_NONCES;
                b[2..4].copy_from_slice(&count.to_be_bytes());
            }
            Request::Connection { handle } => {
                b[1] = KIND_CONNECTION;
                b[OFF_HANDLE..OFF_REPLY].copy_from_slice(&handle.to_be_bytes());
            }
        }
        b
    }

    /// Decodes and range-checks an untrusted request. `listeners` is the
    /// listener count of the config generation the request belongs to
    /// (see [`generation_of`](Self::generation_of)); anything out of range
    /// is an error.
    pub fn decode(bytes: &[u8], listeners: usize) -> Result<Request, RequestError> {
        if bytes.len() != REQUEST_LEN {
            return Err(RequestError::WrongSize(bytes.len()));
        }
        if bytes[0] != VERSION {
            return Err(RequestError::Version(bytes[0]));
        }
        if bytes[13] != 0 {
            return Err(RequestError::Reserved);
        }
        let arg16 = u16::from_be_bytes([bytes[2], bytes[3]]);
        let arg32 = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let generation = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let mut h = [0u8; 8];
        h.copy_from_slice(&bytes[OFF_HANDLE..OFF_REPLY]);
        let handle = u64::from_be_bytes(h);
        let reply = &bytes[OFF_REPLY..];
        let kind = bytes[1];
        if kind == KIND_NONCES {
            // Nothing but the count (and the generation) may be set.
            if arg32 != 0 || bytes[12..OFF_REPLY].iter().any(|&x| x != 0) {
                return Err(RequestError::Reserved);
            }
            if reply.iter().any(|&x| x != 0) {
                return Err(RequestError::Reserved);
            }
            if arg16 == 0 || usize::from(arg16) > NONCE_BATCH {
                return Err(RequestError::Count(arg16));
            }
            return Ok(Request::Nonces { count: arg16 });
        }
        if kind == KIND_CONNECTION {
            // Nothing but the handle (and the generation) may be set.
            if arg16 != 0 || arg32 != 0 || bytes[12..OFF_HANDLE].iter().any(|&x| x != 0) {
                return Err(RequestError::Reserved);
            }
            if reply.iter().any(|&x| x != 0) {
                return Err(RequestError::Reserved);
            }
            if handle == 0 {
                return Err(RequestError::Handle);
            }
            return Ok(Request::Connection { handle });
        }
        let listener = bytes[12];
        if usize::from(listener) >= listeners {
            return Err(RequestError::Listener(listener));
        }
        let port = u16::from_be_bytes([bytes[14], bytes[15]]);
        let addr = decode_addr(&addr16(&bytes[16..32])).ok_or(RequestError::NoSource)?;
        let peer = Peer {
            listener,
            addr,
            port,
        };
        if kind != KIND_VERIFY && reply.iter().any(|&x| x != 0) {
            return Err(RequestError::Reserved);
        }
        match kind {
            KIND_VERIFY => {
                if handle == 0 {
                    return Err(RequestError::Handle);
                }
                let reply = match arg16 {
                    PROTO_POSTERN2 => {
                        let mut r = [0u8; REPLY_LEN];
                        r.copy_from_slice(&reply[..REPLY_LEN]);
                        ReplyBytes::Postern2(r)
                    }
                    PROTO_OSTIARY4 => {
                        if reply[OSTIARY_REPLY_LEN..].iter().any(|&x| x != 0) {
                            return Err(RequestError::Reserved);
                        }
                        let mut r = [0u8; OSTIARY_REPLY_LEN];
                        r.copy_from_slice(&reply[..OSTIARY_REPLY_LEN]);
                        ReplyBytes::Ostiary4(r)
                    }
                    c => return Err(RequestError::Code(c)),
                };
                Ok(Request::Verify {
                    generation,
                    handle,
                    peer,
                    reply,
                    failures: arg32,
                })
            }
            KIND_FAIL => {
                let reason = Reason::from_u16(arg16).ok_or(RequestError::Code(arg16))?;
                Ok(Request::Fail {
                    peer,
                    reason,
                    failures: arg32,
                    handle,
                })
            }
            KIND_LOCKOUT => {
                if arg16 != 0 {
                    return Err(RequestError::Reserved);
                }
                if handle != 0 {
                    return Err(RequestError::Handle);
                }
                Ok(Request::Lockout {
                    peer,
                    failures: arg32,
                })
            }
            KIND_NOTICE => {
                let notice = Notice::from_u16(arg16).ok_or(RequestError::Code(arg16))?;
                if handle != 0 && !matches!(notice, Notice::NoReply | Notice::PassGaveUp) {
                    return Err(RequestError::Handle);
                }
                Ok(Request::Notice {
                    notice,
                    peer,
                    value: arg32,
                    handle,
                })
            }
            k => Err(RequestError::Kind(k)),
        }
    }
}

/// Network-side limits, as sent down by the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLimits {
    /// Reply deadline.
    pub handshake_timeout: Duration,
    /// Pending handshake bound.
    pub max_handshakes: NonZeroUsize,
    /// Token bucket size.
    pub rate_burst: NonZeroU32,
    /// Token refill per minute.
    pub rate_per_minute: NonZeroU32,
    /// Failures before lockout.
    pub lockout_after: NonZeroU32,
    /// Lockout duration.
    pub lockout_duration: Duration,
    /// Source table bound.
    pub lockout_table: NonZeroUsize,
    /// Full verifications per second for sources not in good standing.
    pub verify_per_second: NonZeroU32,
    /// How long to wait for the monitor's ack to an authenticated reply.
    pub ack_timeout: Duration,
    /// How long a graceful stop waits for running handshakes.
    pub shutdown_grace: Duration,
}

impl NetLimits {
    /// The network side of `[limits]` (the monitor's direction), with the
    /// two waits only the network process keeps. `exempt` travels as
    /// separate messages.
    pub fn of(l: &Limits, ack_timeout: Duration, shutdown_grace: Duration) -> NetLimits {
        NetLimits {
            handshake_timeout: l.handshake_timeout,
            max_handshakes: l.max_handshakes,
            rate_burst: l.rate_burst,
            rate_per_minute: l.rate_per_minute,
            lockout_after: l.lockout_after,
            lockout_duration: l.lockout_duration,
            lockout_table: l.lockout_table,
            verify_per_second: l.verify_per_second,
            ack_timeout,
            shutdown_grace,
        }
    }

    /// `[limits]` again, with `exempt` (the network process's direction,
    /// for its source table).
    pub fn limits(&self, exempt: Vec<IpNet>) -> Limits {
        Limits {
            handshake_timeout: self.handshake_timeout,
            max_handshakes: self.max_handshakes,
            rate_burst: self.rate_burst,
            rate_per_minute: self.rate_per_minute,
            lockout_after: self.lockout_after,
            lockout_duration: self.lockout_duration,
            lockout_table: self.lockout_table,
            verify_per_second: self.verify_per_second,
            exempt,
        }
    }
}

/// The monitor's verdict on a forwarded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No key matched, or the nonce was stale: a failure of the source.
    /// Nothing follows.
    Bad = 1,
    /// Authenticated: the source is forgiven. For postern-2 a
    /// [`Down::Ack`] follows once the action has been handled.
    Authenticated = 2,
    /// A valid MAC from the wrong address for a `bind_source` action: a
    /// failure of the source; a refusing [`Down::Ack`] follows.
    BindMismatch = 3,
}

impl Verdict {
    fn from_u8(v: u8) -> Option<Verdict> {
        [Verdict::Bad, Verdict::Authenticated, Verdict::BindMismatch]
            .into_iter()
            .find(|x| *x as u8 == v)
    }
}

/// One issued nonce: its handle and its bytes.
pub type IssuedNonce = (u64, [u8; NONCE_LEN]);

/// A decoded monitor -> network message.
#[derive(Debug)]
pub enum Down {
    /// Fresh nonces (at most [`NONCE_BATCH`]), in answer to
    /// [`Request::Nonces`]; possibly fewer than asked, or none.
    Nonces(Vec<IssuedNonce>),
    /// The verdict on [`Request::Verify`] `handle`.
    Verdict {
        /// The request's nonce handle.
        handle: u64,
        /// What the monitor found.
        verdict: Verdict,
    },
    /// The MAC of [`Request::Verify`] `handle` is valid: send its
    /// connection ([`Request::Connection`]) so that the monitor learns
    /// the peer from the kernel; the verdict follows.
    Connection {
        /// The request's nonce handle.
        handle: u64,
    },
    /// The signed ack for the postern-2 handshake of nonce `handle`.
    Ack {
        /// The request's nonce handle.
        handle: u64,
        /// The ack, to send to the peer as it is.
        ack: Ack,
    },
    /// Start of a config; `listeners` and `exempt` records follow.
    Begin {
        /// Generation number, echoed in requests.
        generation: u32,
        /// Limits.
        limits: NetLimits,
        /// Listener records that follow.
        listeners: u16,
        /// Exempt-network records that follow.
        exempt: u16,
    },
    /// A listener; its socket arrives with the message.
    Listener {
        /// Index (order of `[[listen]]`).
        index: u8,
        /// Its protocol.
        protocol: Protocol,
    },
    /// A network exempt from lockout.
    Exempt(IpNet),
    /// End of a config: apply it.
    End,
    /// Lockout and rate state carried over to a network process that
    /// replaces one that died: 1 to [`MAX_CARRY_BATCH`] records, sent
    /// between Begin and End of its first config.
    Carry(Vec<Carried>),
}

/// The lockout and rate state of one source or network, as the monitor
/// mirrored it, handed to a fresh network process (`net::limits`
/// imports it). Durations are counted from when the message was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// A source: an IPv4 /32 or an IPv6 /64.
    Source {
        /// IPv6 (the upper 64 bits of the address) rather than IPv4 (the
        /// low 32 bits).
        v6: bool,
        /// The address bits.
        bits: u64,
        /// Consecutive failures since its last success or lockout.
        failures: u32,
        /// How long it stays locked out (zero: not locked).
        locked_for: Duration,
        /// Its last handshake succeeded.
        good: bool,
        /// Micro-tokens left in its bucket.
        tokens: u64,
    },
    /// A network enclosing sources (IPv4 /24, IPv6 /56 or /48).
    Network {
        /// IPv6 rather than IPv4.
        v6: bool,
        /// The address bits, host bits zero.
        bits: u64,
        /// Prefix length.
        len: u8,
        /// Recent failures from its sources.
        failures: u32,
        /// How long it stays locked out (zero: not locked).
        locked_for: Duration,
        /// Time since its last counted failure.
        since_failure: Duration,
    },
}

impl Carried {
    fn encode(&self, b: &mut Vec<u8>) {
        let (what, len, flags, bits, failures, locked, value) = match *self {
            Carried::Source {
                v6,
                bits,
                failures,
                locked_for,
                good,
                tokens,
            } => (
                if v6 { 2 } else { 1 },
                if v6 { 64 } else { 32 },
                u8::from(good),
                bits,
                failures,
                locked_for,
                tokens,
            ),
            Carried::Network {
                v6,
                bits,
                len,
                failures,
                locked_for,
                since_failure,
            } => (
                if v6 { 4 } else { 3 },
                len,
                0,
                bits,
                failures,
                locked_for,
                ms(since_failure),
            ),
        };
        b.extend_from_slice(&[what, len, flags, 0]);
        b.extend_from_slice(&bits.to_be_bytes());
        b.extend_from_slice(&failures.to_be_bytes());
        b.extend_from_slice(&ms(locked).to_be_bytes());
        b.extend_from_slice(&value.to_be_bytes());
    }

    fn decode(r: &mut Reader<'_>) -> Option<Carried> {
        let (what, len, flags, reserved) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
        let bits = r.u64()?;
        let failures = r.u32()?;
        let locked_for = Duration::from_millis(r.u64()?);
        let value = r.u64()?;
        let v6 = match what {
            1 | 3 => false,
            2 | 4 => true,
            _ => return None,
        };
        let width: u8 = if v6 { 64 } else { 32 };
        let source = what <= 2;
        if reserved != 0 || len > width || (source && len != width) {
            return None;
        }
        if flags & !u8::from(source) != 0 {
            return None;
        }
        // IPv4 lives in the low 32 bits; the host bits of a network are zero.
        let host = u32::from(width - len);
        let outside = if v6 { 0 } else { bits >> 32 };
        let host_bits = bits & 1u64.checked_shl(host).map_or(u64::MAX, |m| m - 1);
        if outside != 0 || host_bits != 0 {
            return None;
        }
        Some(if source {
            Carried::Source {
                v6,
                bits,
                failures,
                locked_for,
                good: flags & 1 != 0,
                tokens: value,
            }
        } else {
            Carried::Network {
                v6,
                bits,
                len,
                failures,
                locked_for,
                since_failure: Duration::from_millis(value),
            }
        })
    }
}

const DOWN_NONCES: u8 = 0x82;
const DOWN_VERDICT: u8 = 0x83;
const DOWN_ACK: u8 = 0x84;
const DOWN_CONNECTION: u8 = 0x85;
const DOWN_BEGIN: u8 = 0x90;
const DOWN_LISTENER: u8 = 0x91;
const DOWN_EXEMPT: u8 = 0x92;
const DOWN_END: u8 = 0x94;
const DOWN_CARRY: u8 = 0x96;

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Down {
    /// An answer to a handshake in progress (nonces, a verdict, a request
    /// for the connection, an ack), as opposed to part of a config.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            Down::Nonces(_) | Down::Verdict { .. } | Down::Connection { .. } | Down::Ack { .. }
        )
    }

    /// Encodes the message. A nonces message with more than
    /// [`NONCE_BATCH`] carries only the first that many.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![VERSION];
        match self {
            Down::Nonces(list) => {
                b.push(DOWN_NONCES);
                let n = list.len().min(NONCE_BATCH);
                b.push(n as u8);
                for (handle, nonce) in &list[..n] {
                    b.extend_from_slice(&handle.to_be_bytes());
                    b.extend_from_slice(nonce);
                }
            }
            Down::Verdict { handle, verdict } => {
                b.push(DOWN_VERDICT);
                b.extend_from_slice(&handle.to_be_bytes());
                b.push(*verdict as u8);
            }
            Down::Ack { handle, ack } => {
                b.push(DOWN_ACK);
                b.extend_from_slice(&handle.to_be_bytes());
                b.extend_from_slice(ack);
            }
            Down::Connection { handle } => {
                b.push(DOWN_CONNECTION);
                b.extend_from_slice(&handle.to_be_bytes());
            }
            Down::Begin {
                generation,
                limits: l,
                listeners,
                exempt,
            } => {
                b.push(DOWN_BEGIN);
                b.extend_from_slice(&generation.to_be_bytes());
                b.extend_from_slice(&ms(l.handshake_timeout).to_be_bytes());
                b.extend_from_slice(&(l.max_handshakes.get() as u64).to_be_bytes());
                b.extend_from_slice(&l.rate_burst.get().to_be_bytes());
                b.extend_from_slice(&l.rate_per_minute.get().to_be_bytes());
                b.extend_from_slice(&l.lockout_after.get().to_be_bytes());
                b.extend_from_slice(&ms(l.lockout_duration).to_be_bytes());
                b.extend_from_slice(&(l.lockout_table.get() as u64).to_be_bytes());
                b.extend_from_slice(&l.verify_per_second.get().to_be_bytes());
                b.extend_from_slice(&ms(l.ack_timeout).to_be_bytes());
                b.extend_from_slice(&ms(l.shutdown_grace).to_be_bytes());
                b.extend_from_slice(&listeners.to_be_bytes());
                b.extend_from_slice(&exempt.to_be_bytes());
            }
            Down::Listener { index, protocol } => {
                b.push(DOWN_LISTENER);
                b.push(*index);
                b.push(match protocol {
                    Protocol::Postern2 => 1,
                    Protocol::Ostiary4 => 2,
                });
            }
            Down::Exempt(net) => {
                b.push(DOWN_EXEMPT);
                b.push(net.prefix);
                b.push(u8::from(net.addr.is_ipv4()));
                b.extend_from_slice(&encode_addr(Some(net.addr)));
            }
            Down::End => b.push(DOWN_END),
            Down::Carry(records) => {
                // The encoder keeps the bound the decoder checks: a longer
                // batch is cut (the caller splits; see MAX_CARRY_BATCH).
                let n = records.len().min(MAX_CARRY_BATCH);
                b.push(DOWN_CARRY);
                b.push(n as u8);
                for c in &records[..n] {
                    c.encode(&mut b);
                }
            }
        }
        b
    }

    /// Decodes a message. `None` on anything malformed.
    pub fn decode(b: &[u8]) -> Option<Down> {
        let mut r = Reader { b, at: 0 };
        if r.u8()? != VERSION {
            return None;
        }
        let d = match r.u8()? {
            DOWN_NONCES => {
                let n = usize::from(r.u8()?);
                if n > NONCE_BATCH {
                    return None;
                }
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    let handle = r.u64()?;
                    let mut nonce = [0u8; NONCE_LEN];
                    nonce.copy_from_slice(r.take(NONCE_LEN)?);
                    if handle == 0 {
                        return None;
                    }
                    list.push((handle, nonce));
                }
                Down::Nonces(list)
            }
            DOWN_VERDICT => Down::Verdict {
                handle: r.u64()?,
                verdict: Verdict::from_u8(r.u8()?)?,
            },
            DOWN_ACK => {
                let handle = r.u64()?;
                let mut ack = [0u8; ACK_LEN];
                ack.copy_from_slice(r.take(ACK_LEN)?);
                Down::Ack { handle, ack }
            }
            DOWN_CONNECTION => Down::Connection { handle: r.u64()? },
            DOWN_BEGIN => {
                let generation = r.u32()?;
                let limits = NetLimits {
                    handshake_timeout: Duration::from_millis(r.u64()?),
                    max_handshakes: NonZeroUsize::new(usize::try_from(r.u64()?).ok()?)?,
                    rate_burst: NonZeroU32::new(r.u32()?)?,
                    rate_per_minute: NonZeroU32::new(r.u32()?)?,
                    lockout_after: NonZeroU32::new(r.u32()?)?,
                    lockout_duration: Duration::from_millis(r.u64()?),
                    lockout_table: NonZeroUsize::new(usize::try_from(r.u64()?).ok()?)?,
                    verify_per_second: NonZeroU32::new(r.u32()?)?,
                    ack_timeout: Duration::from_millis(r.u64()?),
                    shutdown_grace: Duration::from_millis(r.u64()?),
                };
                Down::Begin {
                    generation,
                    limits,
                    listeners: r.u16()?,
                    exempt: r.u16()?,
                }
            }
            DOWN_LISTENER => {
                let index = r.u8()?;
                let protocol = match r.u8()? {
                    1 => Protocol::Postern2,
                    2 => Protocol::Ostiary4,
                    _ => return None,
                };
                Down::Listener { index, protocol }
            }
            DOWN_EXEMPT => {
                let prefix = r.u8()?;
                let is_v4 = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                // Not decode_addr: a network's address may be all zeros
                // (::/0), and an IPv6 network is never folded to IPv4.
                let v6 = std::net::Ipv6Addr::from(addr16(r.take(ADDR_LEN)?));
                let addr = if is_v4 {
                    IpAddr::V4(v6.to_ipv4_mapped()?)
                } else {
                    IpAddr::V6(v6)
                };
                // IpNet::contains shifts by (32 or 128) - prefix: a longer
                // prefix would overflow there.
                if prefix > if is_v4 { 32 } else { 128 } {
                    return None;
                }
                Down::Exempt(IpNet { addr, prefix })
            }
            DOWN_END => Down::End,
            DOWN_CARRY => {
                let n = usize::from(r.u8()?);
                if n == 0 || n > MAX_CARRY_BATCH {
                    return None;
                }
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(Carried::decode(&mut r)?);
                }
                Down::Carry(records)
            }
            _ => return None,
        };
        if r.at != b.len() {
            return None;
        }
        Some(d)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let s = self.take(2)?;
        Some(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let s = self.take(4)?;
        Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Some(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn peer() -> Peer {
        Peer {
            listener: 1,
            addr: "192.0.2.5".parse().unwrap(),
            port: 4242,
        }
    }

    fn verify() -> Request {
        Request::Verify {
            generation: 3,
            handle: 0x0102_0304_0506_0708,
            peer: peer(),
            reply: ReplyBytes::Postern2([0xa5; REPLY_LEN]),
            failures: 2,
        }
    }

    // Goal: every request kind round-trips.
    #[test]
    fn request_roundtrip() {
        let reqs = [
            verify(),
            Request::Verify {
                generation: 1,
                handle: 9,
                peer: peer(),
                reply: ReplyBytes::Ostiary4([0x5a; OSTIARY_REPLY_LEN]),
                failures: 0,
            },
            Request::Fail {
                peer: peer(),
                reason: Reason::Timeout,
                failures: 2,
                handle: 77,
            },
            Request::Fail {
                peer: peer(),
                reason: Reason::StaleNonce,
                failures: 1,
                handle: 0,
            },
            Request::Lockout {
                peer: peer(),
                failures: 5,
            },
            Request::Notice {
                notice: Notice::HandshakesFull,
                peer: peer(),
                value: 256,
                handle: 0,
            },
            Request::Notice {
                notice: Notice::NoReply,
                peer: peer(),
                value: 0,
                handle: 12,
            },
            Request::Nonces { count: 1 },
            Request::Nonces {
                count: NONCE_BATCH as u16,
            },
            Request::Connection { handle: 41 },
            Request::Notice {
                notice: Notice::PassGaveUp,
                peer: peer(),
                value: 0,
                handle: 41,
            },
            Request::Notice {
                notice: Notice::PassRefused,
                peer: peer(),
                value: 832,
                handle: 0,
            },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode(), 2), Ok(r));
        }
    }

    // Goal: a connection request carries its handle and nothing else; any
    // other byte set, or no handle, is refused.
    #[test]
    fn connection_request_carries_only_its_handle() {
        let good = Request::Connection { handle: 5 }.encode_for(3);
        assert_eq!(
            Request::decode(&good, 0),
            Ok(Request::Connection { handle: 5 })
        );
        assert_eq!(Request::generation_of(&good), Some(3));
        for at in (2..8).chain(12..32).chain(40..REQUEST_LEN) {
            let mut b = good;
            b[at] = 1;
            assert_eq!(Request::decode(&b, 2), Err(RequestError::Reserved), "{at}");
        }
        let mut b = good;
        b[32..40].fill(0);
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Handle));
        // Only two notices give a handle back.
        let mut n = Request::Notice {
            notice: Notice::PassRefused,
            peer: peer(),
            value: 1,
            handle: 0,
        }
        .encode();
        n[32..40].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(Request::decode(&n, 2), Err(RequestError::Handle));
        let down = Down::Connection { handle: 5 }.encode();
        assert!(matches!(
            Down::decode(&down),
            Some(Down::Connection { handle: 5 })
        ));
        assert!(Down::decode(&down[..down.len() - 1]).is_none());
    }

    // Goal: forged requests are rejected: wrong size, bad version, unknown
    // kind, out-of-range fields, reserved bits, missing addresses, a
    // verify without a handle, handles and reply bytes where none belong.
    #[test]
    fn forged_requests_rejected() {
        let good = verify().encode();
        assert_eq!(
            Request::decode(&good[..REQUEST_LEN - 1], 2),
            Err(RequestError::WrongSize(REQUEST_LEN - 1))
        );
        assert_eq!(
            Request::decode(&[0u8; REQUEST_LEN + 1], 2),
            Err(RequestError::WrongSize(REQUEST_LEN + 1))
        );
        assert_eq!(Request::decode(&good, 1), Err(RequestError::Listener(1)));
        let mut b = good;
        b[0] = 1;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Version(1)));
        let mut b = good;
        b[1] = 77;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Reserved));
        let mut b = good;
        b[13] = 1;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Reserved));
        let mut b = good;
        b[32..40].fill(0);
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Handle));
        let mut b = good;
        b[16..32].fill(0);
        assert_eq!(Request::decode(&b, 2), Err(RequestError::NoSource));
        let mut b = good;
        b[2..4].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Code(3)));
        // An ostiary-4 reply is 32 bytes: the 16 after it must be zero.
        let mut b = good;
        b[2..4].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Reserved));
        let fail = Request::Fail {
            peer: peer(),
            reason: Reason::BadMac,
            failures: 1,
            handle: 0,
        }
        .encode();
        let mut b = fail;
        b[2..4].copy_from_slice(&99u16.to_be_bytes());
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Code(99)));
        let mut b = fail;
        b[1] = 77;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Kind(77)));
        let mut b = fail;
        b[60] = 1;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Reserved));
        let lockout = Request::Lockout {
            peer: peer(),
            failures: 5,
        }
        .encode();
        let mut b = lockout;
        b[39] = 1;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Handle));
        let notice = Request::Notice {
            notice: Notice::RateLimited,
            peer: peer(),
            value: 0,
            handle: 0,
        }
        .encode();
        let mut b = notice;
        b[39] = 1;
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Handle));
        let nonces = Request::Nonces { count: 4 }.encode();
        for (at, v) in [(12, 1u8), (16, 1), (33, 1), (50, 1), (5, 1)] {
            let mut b = nonces;
            b[at] = v;
            assert_eq!(Request::decode(&b, 2), Err(RequestError::Reserved), "{at}");
        }
        let mut b = nonces;
        b[2..4].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(Request::decode(&b, 2), Err(RequestError::Count(0)));
        let mut b = nonces;
        b[2..4].copy_from_slice(&(NONCE_BATCH as u16 + 1).to_be_bytes());
        assert_eq!(
            Request::decode(&b, 2),
            Err(RequestError::Count(NONCE_BATCH as u16 + 1))
        );
        // Random garbage never panics and is almost always rejected.
        let mut seed = 99u64;
        for _ in 0..10_000 {
            let mut g = [0u8; REQUEST_LEN];
            for x in g.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = (seed >> 56) as u8;
            }
            let _ = Request::decode(&g, 2);
        }
    }

    // Goal: every down message round-trips and truncation is refused; no
    // down message carries anything secret (there is no kind for it).
    #[test]
    fn down_roundtrip() {
        let limits = NetLimits {
            handshake_timeout: Duration::from_millis(5000),
            max_handshakes: NonZeroUsize::new(256).unwrap(),
            rate_burst: NonZeroU32::new(10).unwrap(),
            rate_per_minute: NonZeroU32::new(30).unwrap(),
            lockout_after: NonZeroU32::new(5).unwrap(),
            lockout_duration: Duration::from_secs(900),
            lockout_table: NonZeroUsize::new(4096).unwrap(),
            verify_per_second: NonZeroU32::new(200).unwrap(),
            ack_timeout: Duration::from_secs(70),
            shutdown_grace: Duration::from_secs(5),
        };
        let full: Vec<IssuedNonce> = (1..=NONCE_BATCH as u64)
            .map(|h| (h, [h as u8; NONCE_LEN]))
            .collect();
        let msgs = [
            Down::Nonces(vec![(5, [7u8; NONCE_LEN])]),
            Down::Nonces(full),
            Down::Verdict {
                handle: 9,
                verdict: Verdict::BindMismatch,
            },
            Down::Ack {
                handle: 10,
                ack: [3u8; ACK_LEN],
            },
            Down::Begin {
                generation: 4,
                limits: limits.clone(),
                listeners: 2,
                exempt: 1,
            },
            Down::Listener {
                index: 1,
                protocol: Protocol::Ostiary4,
            },
            Down::Exempt(IpNet {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8,
            }),
            Down::Exempt(IpNet {
                addr: "2001:db8::".parse().unwrap(),
                prefix: 32,
            }),
            Down::End,
        ];
        for m in &msgs {
            let enc = m.encode();
            assert!(enc.len() <= MAX_DOWN_LEN, "{m:?}");
            let dec = Down::decode(&enc).unwrap();
            assert_eq!(format!("{dec:?}"), format!("{m:?}"));
            assert!(Down::decode(&enc[..enc.len() - 1]).is_none());
            let mut longer = enc.to_vec();
            longer.push(0);
            assert!(Down::decode(&longer).is_none());
        }
        // A zero handle and an unknown verdict are refused.
        let mut z = Down::Nonces(vec![(5, [7u8; NONCE_LEN])]).encode();
        z[3..11].fill(0);
        assert!(Down::decode(&z).is_none());
        let mut v = Down::Verdict {
            handle: 1,
            verdict: Verdict::Bad,
        }
        .encode();
        v[10] = 9;
        assert!(Down::decode(&v).is_none());
    }

    // Goal: exempt networks with an all-zero address, or an IPv6 one that
    // covers the IPv4-mapped range, reach the network process unchanged
    // (they passed --check and once killed it).
    #[test]
    fn exempt_networks_with_zero_or_mapped_bits_roundtrip() {
        for (addr, prefix) in [("::", 0), ("::", 80), ("::ffff:0:0", 95), ("0.0.0.0", 0)] {
            let net = IpNet {
                addr: addr.parse().unwrap(),
                prefix,
            };
            let got = Down::decode(&Down::Exempt(net).encode());
            assert!(
                matches!(got, Some(Down::Exempt(n)) if n == net),
                "{addr}/{prefix}: {got:?}"
            );
        }
    }

    // Goal: every request carries the generation it was made under, and
    // decoding accepts it on every kind.
    #[test]
    fn requests_carry_their_generation() {
        let fail = Request::Fail {
            peer: peer(),
            reason: Reason::Timeout,
            failures: 2,
            handle: 4,
        };
        let b = fail.encode_for(7);
        assert_eq!(Request::generation_of(&b), Some(7));
        assert_eq!(Request::decode(&b, 2), Ok(fail));
        assert_eq!(Request::generation_of(&fail.encode()), Some(0));
        assert_eq!(Request::generation_of(&b[..5]), None);
        let n = Request::Nonces { count: 3 }.encode_for(9);
        assert_eq!(Request::generation_of(&n), Some(9));
        assert_eq!(Request::decode(&n, 2), Ok(Request::Nonces { count: 3 }));
    }

    fn carried() -> Vec<Carried> {
        vec![
            Carried::Source {
                v6: false,
                bits: 0xc000_0205,
                failures: 3,
                locked_for: Duration::from_millis(899_500),
                good: false,
                tokens: 0,
            },
            Carried::Source {
                v6: true,
                bits: 0x2001_0db8_0001_0002,
                failures: 0,
                locked_for: Duration::ZERO,
                good: true,
                tokens: 9_500_000,
            },
            Carried::Network {
                v6: false,
                bits: 0xc633_6400,
                len: 24,
                failures: 12,
                locked_for: Duration::ZERO,
                since_failure: Duration::from_millis(1500),
            },
            Carried::Network {
                v6: true,
                bits: 0x2001_0db8_0007_0000,
                len: 48,
                failures: 0,
                locked_for: Duration::from_secs(60),
                since_failure: Duration::ZERO,
            },
        ]
    }

    // Goal: carried lockout and rate state round-trips, one record or a
    // full batch, and truncation or extension is refused.
    #[test]
    fn carry_roundtrip() {
        let one = Down::Carry(carried());
        let full = Down::Carry(
            carried()
                .into_iter()
                .cycle()
                .take(MAX_CARRY_BATCH)
                .collect(),
        );
        for m in [one, full] {
            let enc = m.encode();
            assert!(enc.len() <= MAX_DOWN_LEN);
            let dec = Down::decode(&enc).unwrap();
            assert_eq!(format!("{dec:?}"), format!("{m:?}"));
            assert!(Down::decode(&enc[..enc.len() - 1]).is_none());
            let mut longer = enc.to_vec();
            longer.push(0);
            assert!(Down::decode(&longer).is_none());
        }
    }

    // Goal: a carried record out of range is refused, never panics: an
    // empty or oversized batch, an unknown kind, a source prefix that is
    // not the source width, a prefix longer than the family, host bits
    // set, IPv4 bits above 32, stray flags, a non-zero reserved byte.
    #[test]
    fn carry_out_of_range_refused() {
        let good = Down::Carry(vec![carried()[2]]).encode().to_vec();
        assert!(Down::decode(&good).is_some());
        let record = 3;
        let mutate = |at: usize, v: u8| {
            let mut b = good.clone();
            b[record + at] = v;
            b
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("count 0", {
                let mut b = good.clone();
                b[2] = 0;
                b.truncate(3);
                b
            }),
            ("count 49", {
                let mut b = good.clone();
                b[2] = 49;
                b
            }),
            ("kind 0", mutate(0, 0)),
            ("kind 5", mutate(0, 5)),
            ("v4 prefix 33", mutate(1, 33)),
            ("reserved", mutate(3, 1)),
            ("flags on a network", mutate(2, 1)),
            ("host bits", mutate(11, 1)),
            ("v4 above 32 bits", mutate(4, 1)),
            ("source prefix 24", {
                let mut b = mutate(0, 1);
                b[record + 1] = 24;
                b
            }),
        ];
        for (what, b) in cases {
            assert!(Down::decode(&b).is_none(), "{what}: accepted");
        }
        // Random bytes behind the carry header never panic.
        let mut seed = 7u64;
        for _ in 0..20_000 {
            let mut b = vec![VERSION, DOWN_CARRY, 1];
            for _ in 0..CARRY_RECORD_LEN {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b.push((seed >> 56) as u8);
            }
            let _ = Down::decode(&b);
        }
    }
}
