//! One trigger, start to finish: connect, read the challenge, send the
//! reply in one write, and (postern-2) read and verify the ack.
//!
//! ```text
//! postern-2  <- greeting 36   -> reply 48 (one write)   <- ack 33, or close
//! ostiary-4  <- salt 32       -> reply 32 (one write)   nothing comes back
//! ```
//!
//! Every read is of a fixed length into a fixed array under its own
//! deadline: `timeout` bounds the connect, the challenge and the ack wait
//! separately.

use std::fmt;
use std::net::{IpAddr, Shutdown};
use std::time::{Duration, Instant};

use postern::mac::MacKey;
use postern::wire::{self, Ack, Greeting, ACK_LEN, GREETING_LEN, OSTIARY_SALT_LEN};

use crate::deadline::{read_exact_by, write_all_by, IoFailure};
use crate::outcome::{NoAck, Outcome, Report};
use crate::proxy::Proxy;
use crate::target::Target;
use crate::transport::{connect, secs, ConnectError, Connection};

/// How long each phase may take unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
            NetError::BadGreeting => f.write_str("bad greeting: not a postern-2 server"),
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

/// Triggers one action: connects to `target` (through `proxy` if given)
/// and answers its challenge with `credential`. Never panics; every failure
/// is an [`Outcome`].
pub fn trigger(
    target: &Target,
    proxy: Option<&Proxy>,
    credential: &Credential,
    timeout: Duration,
) -> Report {
    let start = Instant::now();
    let (outcome, address) = match connect(target, proxy, timeout) {
        Err(e) => (
            Outcome::Unreachable(NetError::Connect(e)),
            target.to_string(),
        ),
        Ok(Connection { mut stream, peer }) => {
            let outcome = match credential {
                Credential::Postern2 { key, assert_addr } => {
                    postern2(&mut stream, key, *assert_addr, timeout)
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

fn challenge_error(e: IoFailure, timeout: Duration) -> Outcome {
    Outcome::Unreachable(match e {
        IoFailure::TimedOut => NetError::ChallengeTimeout(timeout),
        IoFailure::Closed { .. } | IoFailure::Reset => NetError::ChallengeClosed,
        IoFailure::Io(e) => NetError::Io(e.to_string()),
    })
}

/// After the reply, a close or reset is the server's way of saying no.
fn answer_error(e: IoFailure, timeout: Duration, sending: bool) -> Outcome {
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
    timeout: Duration,
) -> Outcome {
    let mut greeting: Greeting = [0u8; GREETING_LEN];
    if let Err(e) = read_exact_by(stream, &mut greeting, Instant::now() + timeout) {
        return challenge_error(e, timeout);
    }
    if !wire::greeting_is_valid(&greeting) {
        return Outcome::Unreachable(NetError::BadGreeting);
    }
    let reply = wire::reply(key, &greeting, assert_addr);
    if let Err(e) = write_all_by(stream, &reply, Instant::now() + timeout) {
        return answer_error(e, timeout, true);
    }
    let mut ack: Ack = [0u8; ACK_LEN];
    if let Err(e) = read_exact_by(stream, &mut ack, Instant::now() + timeout) {
        return answer_error(e, timeout, false);
    }
    match wire::verify_ack(key, &greeting, &reply, &ack) {
        Some(status) => Outcome::Acknowledged(status),
        None => Outcome::NoAck(NoAck::BadAck),
    }
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
            s.write_all(&wire::ack(&MacKey::new(&key), &g, &r, Status::Refused))
                .unwrap();
        });
        let cred = Credential::Postern2 {
            key: MacKey::new(&key),
            assert_addr: None,
        };
        let report = trigger(&target, None, &cred, Duration::from_secs(5));
        h.join().unwrap();
        assert!(matches!(
            report.outcome,
            Outcome::Acknowledged(Status::Refused)
        ));

        let (target, h) = serve(|mut s| {
            s.write_all(&wire::greeting(&[1; 32])).unwrap();
            let mut r = [0u8; wire::REPLY_LEN];
            s.read_exact(&mut r).unwrap();
        });
        let report = trigger(&target, None, &cred, Duration::from_secs(5));
        h.join().unwrap();
        assert!(
            matches!(report.outcome, Outcome::NoAck(NoAck::Closed)),
            "{:?}",
            report.outcome
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
