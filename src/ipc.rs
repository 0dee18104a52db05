//! Messages between the privileged monitor and the unprivileged network
//! process, as bytes. No I/O happens here (see `channel.rs`).
//!
//! Network -> monitor messages are *untrusted*: a compromised network
//! process can send anything. They are exactly [`REQUEST_LEN`] bytes,
//! versioned, with every field range-checked by [`Request::decode`]; any
//! deviation ends that network process's session: the monitor kills it
//! and starts a new one (`monitor/supervise.rs`).
//!
//! ```text
//! off len field
//!  0   1  version (1)
//!  1   1  kind: 1 run, 2 fail, 3 lockout, 4 notice
//!  2   2  arg16 (BE): key slot index | failure reason | notice code
//!  4   4  arg32 (BE): request id | failure count | notice value
//!  8   4  config generation (BE): the one the connection began under
//! 12   1  listener index
//! 13   1  reserved, zero
//! 14   2  source port (BE)
//! 16  16  source address (IPv4-mapped for IPv4; never zero)
//! 32  16  target address for {addr} (run only; zero otherwise)
//! ```
//!
//! Monitor -> network messages are trusted (the monitor wrote them) but
//! are still decoded without panics: a status for a run request, and the
//! network part of the config (limits, listener sockets passed with
//! SCM_RIGHTS, and the key slots: every secret of every action, in the
//! order of `Config::slots`, each with its action's `bind_source` and the
//! end of its validity).
//! A network process started to
//! replace one that died also gets, inside its first config (between
//! Begin and End), the lockout and rate state the monitor mirrored
//! ([`Down::Carry`]):
//!
//! ```text
//! off len field
//!  0   1  version (1)
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

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::{IpNet, Protocol};
use crate::secret::Password;
use crate::wire::{decode_addr, encode_addr, Answer, ACK_BODY_LEN, ADDR_LEN};

/// IPC format version.
pub const VERSION: u8 = 1;
/// Length of every network -> monitor message.
pub const REQUEST_LEN: usize = 48;
/// Largest monitor -> network message.
pub const MAX_DOWN_LEN: usize = 2048;
/// Most records in one [`Down::Carry`] message (3 + 48 x 32 bytes fits
/// [`MAX_DOWN_LEN`]).
pub const MAX_CARRY_BATCH: usize = 48;
/// Length of one carried record.
pub const CARRY_RECORD_LEN: usize = 32;

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
}

impl Reason {
    const ALL: [Reason; 7] = [
        Reason::BadMac,
        Reason::ShortReply,
        Reason::LongReply,
        Reason::Timeout,
        Reason::Reset,
        Reason::Evicted,
        Reason::BindMismatch,
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
}

impl Notice {
    const ALL: [Notice; 9] = [
        Notice::HandshakesFull,
        Notice::SourceTableFull,
        Notice::RateLimited,
        Notice::AcceptError,
        Notice::RandomFailed,
        Notice::EventsDropped,
        Notice::OverBudget,
        Notice::NetworkLocked,
        Notice::NoReply,
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

/// A decoded network -> monitor message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Run the action of key slot `slot` for `target`; answer with
    /// [`Down::Status`].
    Run {
        /// Correlates the answer.
        id: u32,
        /// The config generation the index refers to.
        generation: u32,
        /// Index of the key slot that matched (`Config::slots` of that
        /// generation): names the action and the key.
        slot: u16,
        /// Who asked.
        peer: Peer,
        /// The address `{addr}` stands for.
        target: IpAddr,
    },
    /// A failed handshake.
    Fail {
        /// Who failed.
        peer: Peer,
        /// Why.
        reason: Reason,
        /// Consecutive failures so far (0 for exempt sources).
        failures: u32,
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
    /// The target address is missing on a run, or present elsewhere.
    Target,
    /// Unknown failure reason or notice code.
    Code(u16),
    /// Listener index out of range.
    Listener(u8),
    /// Key slot index out of range.
    Slot(u16),
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::WrongSize(n) => write!(f, "request of {n} bytes, expected {REQUEST_LEN}"),
            RequestError::Version(v) => write!(f, "unknown request version {v}"),
            RequestError::Kind(k) => write!(f, "unknown request kind {k}"),
            RequestError::Reserved => f.write_str("reserved field not zero"),
            RequestError::NoSource => f.write_str("missing source address"),
            RequestError::Target => f.write_str("target address misplaced"),
            RequestError::Code(c) => write!(f, "unknown reason or notice code {c}"),
            RequestError::Listener(l) => write!(f, "listener index {l} out of range"),
            RequestError::Slot(a) => write!(f, "key slot index {a} out of range"),
        }
    }
}

impl RequestError {
    /// What was wrong, as fixed text (the log never carries values chosen
    /// by the network process beyond range-checked numbers).
    pub fn what(&self) -> &'static str {
        match self {
            RequestError::WrongSize(_) => "wrong size",
            RequestError::Version(_) => "unknown version",
            RequestError::Kind(_) => "unknown kind",
            RequestError::Reserved => "reserved field not zero",
            RequestError::NoSource => "missing source address",
            RequestError::Target => "target address misplaced",
            RequestError::Code(_) => "unknown reason or notice code",
            RequestError::Listener(_) => "listener index out of range",
            RequestError::Slot(_) => "key slot index out of range",
        }
    }
}

const KIND_RUN: u8 = 1;
const KIND_FAIL: u8 = 2;
const KIND_LOCKOUT: u8 = 3;
const KIND_NOTICE: u8 = 4;

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
    /// Encodes a request made under config `generation` (a run carries
    /// its own). The monitor judges the request against that generation,
    /// so a request from before a reload is never out of range.
    pub fn encode_for(&self, generation: u32) -> [u8; REQUEST_LEN] {
        let mut b = self.encode();
        if !matches!(self, Request::Run { .. }) {
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

    /// Encodes the request (generation 0 unless a run).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0] = VERSION;
        match self {
            Request::Run {
                id,
                generation,
                slot,
                peer,
                target,
            } => {
                b[1] = KIND_RUN;
                b[2..4].copy_from_slice(&slot.to_be_bytes());
                b[4..8].copy_from_slice(&id.to_be_bytes());
                b[8..12].copy_from_slice(&generation.to_be_bytes());
                put_peer(&mut b, peer);
                b[32..48].copy_from_slice(&encode_addr(Some(*target)));
            }
            Request::Fail {
                peer,
                reason,
                failures,
            } => {
                b[1] = KIND_FAIL;
                b[2..4].copy_from_slice(&(*reason as u16).to_be_bytes());
                b[4..8].copy_from_slice(&failures.to_be_bytes());
                put_peer(&mut b, peer);
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
            } => {
                b[1] = KIND_NOTICE;
                b[2..4].copy_from_slice(&(*notice as u16).to_be_bytes());
                b[4..8].copy_from_slice(&value.to_be_bytes());
                put_peer(&mut b, peer);
            }
        }
        b
    }

    /// Decodes and range-checks an untrusted request. `listeners` and
    /// `slots` are the counts of the config generation the request
    /// belongs to (see [`generation_of`](Self::generation_of)); anything
    /// out of range is an error.
    pub fn decode(bytes: &[u8], listeners: usize, slots: usize) -> Result<Request, RequestError> {
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
        let listener = bytes[12];
        if usize::from(listener) >= listeners {
            return Err(RequestError::Listener(listener));
        }
        let port = u16::from_be_bytes([bytes[14], bytes[15]]);
        let addr = decode_addr(&addr16(&bytes[16..32])).ok_or(RequestError::NoSource)?;
        let target = decode_addr(&addr16(&bytes[32..48]));
        let peer = Peer {
            listener,
            addr,
            port,
        };
        let kind = bytes[1];
        if kind != KIND_RUN && target.is_some() {
            return Err(RequestError::Target);
        }
        match kind {
            KIND_RUN => {
                if usize::from(arg16) >= slots {
                    return Err(RequestError::Slot(arg16));
                }
                let target = target.ok_or(RequestError::Target)?;
                Ok(Request::Run {
                    id: arg32,
                    generation,
                    slot: arg16,
                    peer,
                    target,
                })
            }
            KIND_FAIL => {
                let reason = Reason::from_u16(arg16).ok_or(RequestError::Code(arg16))?;
                Ok(Request::Fail {
                    peer,
                    reason,
                    failures: arg32,
                })
            }
            KIND_LOCKOUT => {
                if arg16 != 0 {
                    return Err(RequestError::Reserved);
                }
                Ok(Request::Lockout {
                    peer,
                    failures: arg32,
                })
            }
            KIND_NOTICE => {
                let notice = Notice::from_u16(arg16).ok_or(RequestError::Code(arg16))?;
                Ok(Request::Notice {
                    notice,
                    peer,
                    value: arg32,
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
    /// How long to wait for the monitor's answer to a run request.
    pub ack_timeout: Duration,
    /// How long a graceful stop waits for running handshakes.
    pub shutdown_grace: Duration,
}

/// A decoded monitor -> network message.
#[derive(Debug)]
pub enum Down {
    /// Answer to [`Request::Run`].
    Status {
        /// The request's id.
        id: u32,
        /// What happened, why, and for how long: the ack's body.
        answer: Answer,
    },
    /// Start of a config; `listeners`, `exempt` and `slots` records follow.
    Begin {
        /// Generation number, echoed in run requests.
        generation: u32,
        /// Limits.
        limits: NetLimits,
        /// Listener records that follow.
        listeners: u16,
        /// Exempt-network records that follow.
        exempt: u16,
        /// Key slot records that follow.
        slots: u16,
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
    /// A key slot: one secret of one action (`Config::slots`).
    Slot {
        /// Slot index: records come in order, 0 first.
        index: u16,
        /// ostiary-4 password rather than postern-2 key.
        password: bool,
        /// Its action's `bind_source`: refuse unless the asserted address
        /// is the source.
        bind_source: bool,
        /// Refused from this time on (seconds since the Unix epoch): an
        /// old key whose overlap window ends then. `None`: no end.
        until: Option<u64>,
        /// The key or password bytes (redacted in Debug, zeroized on drop).
        secret: Password,
    },
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

const DOWN_STATUS: u8 = 0x81;
const DOWN_BEGIN: u8 = 0x90;
const DOWN_LISTENER: u8 = 0x91;
const DOWN_EXEMPT: u8 = 0x92;
const DOWN_SLOT: u8 = 0x95;
const DOWN_END: u8 = 0x94;
const DOWN_CARRY: u8 = 0x96;

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Down {
    /// Encodes the message.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(vec![VERSION]);
        match self {
            Down::Status { id, answer } => {
                b.push(DOWN_STATUS);
                b.extend_from_slice(&answer.to_bytes());
                b.extend_from_slice(&id.to_be_bytes());
            }
            Down::Begin {
                generation,
                limits: l,
                listeners,
                exempt,
                slots,
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
                b.extend_from_slice(&slots.to_be_bytes());
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
            Down::Slot {
                index,
                password,
                bind_source,
                until,
                secret,
            } => {
                b.push(DOWN_SLOT);
                b.push(
                    u8::from(*password)
                        | (u8::from(*bind_source) << 1)
                        | (u8::from(until.is_some()) << 2),
                );
                b.extend_from_slice(&index.to_be_bytes());
                b.extend_from_slice(&until.unwrap_or(0).to_be_bytes());
                let bytes = secret.expose();
                b.extend_from_slice(&(bytes.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
                b.extend_from_slice(bytes);
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
            DOWN_STATUS => {
                let mut body = [0u8; ACK_BODY_LEN];
                for b in body.iter_mut() {
                    *b = r.u8()?;
                }
                let answer = Answer::from_bytes(&body)?;
                Down::Status {
                    id: r.u32()?,
                    answer,
                }
            }
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
                    slots: r.u16()?,
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
            DOWN_SLOT => {
                let flags = r.u8()?;
                if flags & !0b111 != 0 {
                    return None;
                }
                let index = r.u16()?;
                let until = r.u64()?;
                let len = usize::from(r.u16()?);
                let secret = Password::new(r.take(len)?.to_vec());
                Down::Slot {
                    index,
                    password: flags & 1 != 0,
                    bind_source: flags & 2 != 0,
                    until: (flags & 4 != 0).then_some(until),
                    secret,
                }
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

    // Goal: every request kind round-trips.
    #[test]
    fn request_roundtrip() {
        let reqs = [
            Request::Run {
                id: 7,
                generation: 3,
                slot: 2,
                peer: peer(),
                target: "2001:db8::1".parse().unwrap(),
            },
            Request::Fail {
                peer: peer(),
                reason: Reason::Timeout,
                failures: 2,
            },
            Request::Lockout {
                peer: peer(),
                failures: 5,
            },
            Request::Notice {
                notice: Notice::HandshakesFull,
                peer: peer(),
                value: 256,
            },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode(), 2, 3), Ok(r));
        }
    }

    // Goal: forged requests are rejected: wrong size, bad version, unknown
    // kind, out-of-range indexes, reserved bits, missing addresses.
    #[test]
    fn forged_requests_rejected() {
        let good = Request::Run {
            id: 1,
            generation: 1,
            slot: 2,
            peer: peer(),
            target: peer().addr,
        }
        .encode();
        assert_eq!(
            Request::decode(&good[..47], 2, 3),
            Err(RequestError::WrongSize(47))
        );
        assert_eq!(
            Request::decode(&[0u8; 49], 2, 3),
            Err(RequestError::WrongSize(49))
        );
        assert_eq!(Request::decode(&good, 2, 2), Err(RequestError::Slot(2)));
        assert_eq!(Request::decode(&good, 1, 3), Err(RequestError::Listener(1)));
        let mut b = good;
        b[0] = 9;
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::Version(9)));
        let mut b = good;
        b[1] = 77;
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::Target));
        let mut b = good;
        b[13] = 1;
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::Reserved));
        let mut b = good;
        b[32..48].fill(0);
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::Target));
        let mut b = good;
        b[16..32].fill(0);
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::NoSource));
        let fail = Request::Fail {
            peer: peer(),
            reason: Reason::BadMac,
            failures: 1,
        }
        .encode();
        let mut b = fail;
        b[2..4].copy_from_slice(&99u16.to_be_bytes());
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::Code(99)));
        let mut b = fail;
        b[1] = 77;
        assert_eq!(Request::decode(&b, 2, 3), Err(RequestError::Kind(77)));
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
            let _ = Request::decode(&g, 2, 3);
        }
    }

    // Goal: every down message round-trips and truncation is refused.
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
        let msgs = [
            Down::Status {
                id: 9,
                answer: Answer::bare(crate::wire::Status::AlreadyActive).with_seconds(600),
            },
            Down::Status {
                id: 10,
                answer: Answer::because(
                    crate::wire::Status::Refused,
                    crate::wire::Reason::Cooldown,
                )
                .with_seconds(40),
            },
            Down::Begin {
                generation: 4,
                limits: limits.clone(),
                listeners: 2,
                exempt: 1,
                slots: 3,
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
            Down::Slot {
                index: 2,
                password: true,
                bind_source: false,
                until: None,
                secret: Password::new(b"Sample".to_vec()),
            },
            Down::Slot {
                index: 3,
                password: false,
                bind_source: true,
                until: Some(1_797_292_800),
                secret: Password::new(vec![7; 32]),
            },
            Down::Slot {
                index: 4,
                password: false,
                bind_source: false,
                until: Some(0),
                secret: Password::new(vec![8; 32]),
            },
            Down::End,
        ];
        for m in &msgs {
            let enc = m.encode();
            let dec = Down::decode(&enc).unwrap();
            assert_eq!(format!("{dec:?}"), format!("{m:?}"));
            assert!(Down::decode(&enc[..enc.len() - 1]).is_none());
            let mut longer = enc.to_vec();
            longer.push(0);
            assert!(Down::decode(&longer).is_none());
        }
    }

    // Goal: a key slot record with an unknown flag bit is refused, and
    // its validity end survives the round trip only when flagged.
    #[test]
    fn slot_flags_are_strict() {
        let slot = Down::Slot {
            index: 0,
            password: false,
            bind_source: false,
            until: Some(5),
            secret: Password::new(vec![1; 32]),
        };
        let enc = slot.encode();
        assert!(matches!(
            Down::decode(&enc),
            Some(Down::Slot { until: Some(5), .. })
        ));
        for bit in 3..8 {
            let mut bad = enc.to_vec();
            bad[2] |= 1 << bit;
            assert!(Down::decode(&bad).is_none(), "flag bit {bit}");
        }
        let mut cleared = enc.to_vec();
        cleared[2] &= !4;
        assert!(matches!(
            Down::decode(&cleared),
            Some(Down::Slot { until: None, .. })
        ));
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
        };
        let b = fail.encode_for(7);
        assert_eq!(Request::generation_of(&b), Some(7));
        assert_eq!(Request::decode(&b, 2, 3), Ok(fail));
        assert_eq!(Request::generation_of(&fail.encode()), Some(0));
        assert_eq!(Request::generation_of(&b[..5]), None);
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
