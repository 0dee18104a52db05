//! One trigger, start to finish: connect, read the challenge, send the
//! reply in one write, and (postern-2) read and verify the ack.
//!
//! ```text
//! postern-2  <- tag 4, nonce 32   -> reply 48 (one write)   <- ack 38, or close
//! ostiary-4  <- salt 32           -> reply 32 (one write)   nothing comes back
//! ```
//!
//! Every read is of a fixed length into a fixed array under its own
//! deadline: `timeout` bounds the connect and the challenge; the ack is
//! awaited for `ack_wait`, by default the protocol's ack deadline
//! ([`wire::ACK_DEADLINE_SECS`]), because the server may be running a
//! gate's `run` before it answers. The greeting's four-byte tag is read
//! and checked before the rest, so a postern-2 client on an ostiary-4 (or
//! any other) port gives up at once instead of waiting for a timeout.

use std::fmt;
use std::io::IsTerminal;
use std::net::{IpAddr, Shutdown};
use std::time::{Duration, Instant};

use postern::mac::MacKey;
use postern::wire::{self, Ack, Greeting, ACK_LEN, GREETING_LEN, NONCE_LEN, OSTIARY_SALT_LEN};

use crate::deadline::{read_exact_by, write_all_by, IoFailure};
use crate::outcome::{NoAck, Outcome, Report};
use crate::proxy::Proxy;
use crate::target::Target;
use crate::transport::{connect, secs, ConnectError, Connection};

/// How long the connect and the challenge may each take unless
/// `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the ack unless `--ack-timeout` says otherwise: the
/// protocol's ack deadline.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(wire::ACK_DEADLINE_SECS);
/// After this long waiting for the ack, a trigger run on a terminal says
/// that it is waiting (once).
pub const ANNOUNCE_AFTER: Duration = Duration::from_secs(1);

/// A wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `postern-2`: HMAC reply with an authenticated ack (the default).
    Postern2,
    /// `ostiary-4`: HMAC reply, no ack.
    Ostiary4,
}

impl Protocol {
    /// Parses the spelling used on the command line and in the inventory.
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "postern-2" => Some(Protocol::Postern2),
            "ostiary-4" => Some(Protocol::Ostiary4),
            _ => None,
        }
    }

    /// The spelling used on the command line and in the inventory.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Postern2 => "postern-2",
            Protocol::Ostiary4 => "ostiary-4",
        }
    }
}

/// What answers the challenge. Key states are zeroized on drop.
#[derive(Debug, Clone)]
pub enum Credential {
    /// postern-2: the action key and the address to assert (`None`: any).
    Postern2 {
        /// The action key.
        key: MacKey,
        /// The asserted address.
        assert_addr: Option<IpAddr>,
    },
    /// ostiary-4: the password.
    Ostiary4 {
        /// The password, as an HMAC key.
        password: MacKey,
    },
}

impl Credential {
    /// The protocol this credential speaks.
    pub fn protocol(&self) -> Protocol {
        match self {
            Credential::Postern2 { .. } => Protocol::Postern2,
            Credential::Ostiary4 { .. } => Protocol::Ostiary4,
        }
    }
}

/// Why a trigger did not reach the point where the server could answer.
#[derive(Debug)]
pub enum NetError {
    /// No connection (DNS, refused, timeout, proxy).
    Connect(ConnectError),
    /// The challenge did not arrive within the timeout.
    ChallengeTimeout(Duration),
    /// The server closed the connection before the whole challenge arrived.
    ChallengeClosed,
    /// The greeting does not start with `PST2`: not a postern-2 server.
    BadGreeting,
    /// An address that cannot be acted for was to be asserted.
    Unassertable(IpAddr),
    /// The reply could not be sent within the timeout.
    SendTimeout(Duration),
    /// The server neither acked nor closed within the timeout.
    AckTimeout(Duration),
    /// Another socket error.
    Io(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Connect(e) => write!(f, "{e}"),
            NetError::ChallengeTimeout(t) => {
                write!(f, "timed out after {} waiting for the challenge", secs(*t))
            }
            NetError::ChallengeClosed => f.write_str(
                "server closed before sending its challenge (locked out, over its rate, or not a postern server)",
            ),
            NetError::BadGreeting => f.write_str(
                "not a postern-2 greeting: the port looks like an ostiary-4 or other service; try --protocol ostiary-4",
            ),
            NetError::Unassertable(a) => write!(f, "{a} cannot be asserted: it is unspecified, broadcast, multicast, link-local or IPv4-compatible"),
            NetError::SendTimeout(t) => write!(f, "timed out after {} sending the reply", secs(*t)),
            NetError::AckTimeout(t) => {
                write!(
                    f,
                    "timed out after {} waiting for the acknowledgement",
                    secs(*t)
                )
            }
            NetError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NetError {}

/// How long to wait, and whether to say so.
#[derive(Debug, Clone)]
pub struct Waits {
    /// Bound for the connect and for the challenge, each.
    pub timeout: Duration,
    /// Bound for the ack.
    pub ack_wait: Duration,
    /// When set, and standard error is a terminal, one line saying what
    /// the server is doing ("start sshd", "close sshd") is printed there
    /// once the ack has been awaited for [`ANNOUNCE_AFTER`].
    pub announce: Option<String>,
}

impl Waits {
    /// The defaults, with `timeout` for connect and challenge.
    pub fn new(timeout: Duration) -> Waits {
        Waits {
            timeout,
            ack_wait: DEFAULT_ACK_WAIT,
            announce: None,
        }
    }
}

/// Triggers one action: connects to `target` (through `proxy` if given)
/// and answers its challenge with `credential`. Never panics; every failure
/// is an [`Outcome`].
pub fn trigger(
    target: &Target,
    proxy: Option<&Proxy>,
    credential: &Credential,
    waits: &Waits,
) -> Report {
    let timeout = waits.timeout;
    let start = Instant::now();
    let (outcome, address) = match connect(target, proxy, timeout) {
        Err(e) => (
            Outcome::Unreachable(NetError::Connect(e)),
            target.to_string(),
        ),
        Ok(Connection { mut stream, peer }) => {
            let outcome = match credential {
                Credential::Postern2 { key, assert_addr } => {
                    postern2(&mut stream, key, *assert_addr, waits)
                }
                Credential::Ostiary4 { password } => ostiary4(&mut stream, password, timeout),
            };
            (outcome, peer)
        }
    };
    Report {
        outcome,
        address,
        latency: start.elapsed(),
    }
}

/// Before the reply, any failure means the server is not reachable.
pub(crate) fn challenge_error(e: IoFailure, timeout: Duration) -> Outcome {
    Outcome::Unreachable(match e {
        IoFailure::TimedOut => NetError::ChallengeTimeout(timeout),
        IoFailure::Closed { .. } | IoFailure::Reset => NetError::ChallengeClosed,
        IoFailure::Io(e) => NetError::Io(e.to_string()),
    })
}

/// After the reply, a close or reset is the server's way of saying no.
pub(crate) fn answer_error(e: IoFailure, timeout: Duration, sending: bool) -> Outcome {
    match e {
        IoFailure::Closed { .. } | IoFailure::Reset => Outcome::NoAck(NoAck::Closed),
        IoFailure::TimedOut if sending => Outcome::Unreachable(NetError::SendTimeout(timeout)),
        IoFailure::TimedOut => Outcome::Unreachable(NetError::AckTimeout(timeout)),
        IoFailure::Io(e) => Outcome::Unreachable(NetError::Io(e.to_string())),
    }
}

fn postern2(
    stream: &mut std::net::TcpStream,
    key: &MacKey,
    assert_addr: Option<IpAddr>,
    waits: &Waits,
) -> Outcome {
    let timeout = waits.timeout;
    if let Some(a) = assert_addr.filter(|a| !wire::asserted_allowed(*a)) {
        return Outcome::Unreachable(NetError::Unassertable(a));
    }
    let deadline = Instant::now() + timeout;
    let mut greeting: Greeting = [0u8; GREETING_LEN];
    let mut tag = [0u8; 4];
    if let Err(e) = read_exact_by(stream, &mut tag, deadline) {
        return challenge_error(e, timeout);
    }
    if !wire::tag_is_valid(&tag) {
        return Outcome::Unreachable(NetError::BadGreeting);
    }
    let mut nonce = [0u8; NONCE_LEN];
    if let Err(e) = read_exact_by(stream, &mut nonce, deadline) {
        return challenge_error(e, timeout);
    }
    greeting[..4].copy_from_slice(&tag);
    greeting[4..].copy_from_slice(&nonce);
    let reply = wire::reply(key, &greeting, assert_addr);
    if let Err(e) = write_all_by(stream, &reply, Instant::now() + timeout) {
        return answer_error(e, timeout, true);
    }
    let ack_deadline = Instant::now() + waits.ack_wait;
    if let Some(name) = &waits.announce {
        if std::io::stderr().is_terminal() && !answer_within(stream, ANNOUNCE_AFTER) {
            eprintln!("waiting for the server to {name}\u{2026}");
        }
    }
    let mut ack: Ack = [0u8; ACK_LEN];
    if let Err(e) = read_exact_by(stream, &mut ack, ack_deadline) {
        return answer_error(e, waits.ack_wait, false);
    }
    match wire::verify_ack(key, &greeting, &reply, &ack) {
        Some(answer) => Outcome::Acknowledged(answer),
        None => Outcome::NoAck(NoAck::BadAck),
    }
}

/// Whether the server sends something (or closes) within `wait`; looks
/// without consuming anything.
fn answer_within(stream: &std::net::TcpStream, wait: Duration) -> bool {
    if stream.set_read_timeout(Some(wait)).is_err() {
        return true;
    }
    let mut one = [0u8; 1];
    !matches!(stream.peek(&mut one), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

fn ostiary4(stream: &mut std::net::TcpStream, password: &MacKey, timeout: Duration) -> Outcome {
    let mut salt = [0u8; OSTIARY_SALT_LEN];
    if let Err(e) = read_exact_by(stream, &mut salt, Instant::now() + timeout) {
        return challenge_error(e, timeout);
    }
    let reply = wire::ostiary_reply(password, &salt);
    if let Err(e) = write_all_by(stream, &reply, Instant::now() + timeout) {
        return answer_error(e, timeout, true);
    }
    // Nothing comes back; a clean FIN tells the server the reply is whole.
    let _ = stream.shutdown(Shutdown::Write);
    Outcome::ReplySent
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use postern::wire::Status;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn serve(
        f: impl FnOnce(std::net::TcpStream) + Send + 'static,
    ) -> (Target, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            f(s);
        });
        (Target::new("127.0.0.1", port).unwrap(), h)
    }

    // Goal: a full postern-2 exchange against an in-process server yields
    // the server's status, and a close after the reply is "no ack".
    #[test]
    fn postern2_exchange() {
        let key = [7u8; 32];
        let (target, h) = serve(move |mut s| {
            let g = wire::greeting(&[9; 32]);
            s.write_all(&g).unwrap();
            let mut r = [0u8; wire::REPLY_LEN];
            s.read_exact(&mut r).unwrap();
            let answer =
                wire::Answer::because(Status::Refused, wire::Reason::Cooldown).with_seconds(40);
            s.write_all(&wire::ack(&MacKey::new(&key), &g, &r, answer))
                .unwrap();
        });
        let cred = Credential::Postern2 {
            key: MacKey::new(&key),
            assert_addr: None,
        };
        let report = trigger(&target, None, &cred, &Waits::new(Duration::from_secs(5)));
        h.join().unwrap();
        assert!(matches!(
            report.outcome,
            Outcome::Acknowledged(wire::Answer {
                status: Status::Refused,
                reason: wire::Reason::Cooldown,
                seconds: 40
            })
        ));

        let (target, h) = serve(|mut s| {
            s.write_all(&wire::greeting(&[1; 32])).unwrap();
            let mut r = [0u8; wire::REPLY_LEN];
            s.read_exact(&mut r).unwrap();
        });
        let report = trigger(&target, None, &cred, &Waits::new(Duration::from_secs(5)));
        h.join().unwrap();
        assert!(
            matches!(report.outcome, Outcome::NoAck(NoAck::Closed)),
            "{:?}",
            report.outcome
        );
    }

    // Goal: on an ostiary-4 port (32 random bytes, then silence) a
    // postern-2 client gives up as soon as it has read the tag, long
    // before its timeout, and sends nothing.
    #[test]
    fn ostiary_port_is_recognised_at_once() {
        let (target, h) = serve(|mut s| {
            s.write_all(&[0x5a; 32]).unwrap();
            let mut r = [0u8; 1];
            // Whatever the client does, it must not send a reply.
            assert_eq!(s.read(&mut r).unwrap_or(0), 0);
        });
        let cred = Credential::Postern2 {
            key: MacKey::new(&[7u8; 32]),
            assert_addr: None,
        };
        let t = Instant::now();
        let report = trigger(&target, None, &cred, &Waits::new(Duration::from_secs(20)));
        h.join().unwrap();
        assert!(
            matches!(report.outcome, Outcome::Unreachable(NetError::BadGreeting)),
            "{:?}",
            report.outcome
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t.elapsed()
        );
    }

    // Goal: protocol names round-trip and nothing else parses.
    #[test]
    fn protocol_names() {
        for p in [Protocol::Postern2, Protocol::Ostiary4] {
            assert_eq!(Protocol::parse(p.name()), Some(p));
        }
        assert_eq!(Protocol::parse("ostiary"), None);
    }
}
