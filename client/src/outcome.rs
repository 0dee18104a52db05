//! What one trigger came to, and the exit code each outcome maps to.

use std::time::Duration;

use postern::wire::{Answer, Status};

use crate::trigger::NetError;

/// Process exit codes. For a group, the highest code among its hosts.
pub mod exit {
    /// Accepted: started or already active (ostiary-4: reply sent).
    pub const OK: u8 = 0;
    /// A local problem: a key, password, master or inventory file, the
    /// environment or the terminal could not be used. Nothing was sent.
    pub const LOCAL: u8 = 1;
    /// No acknowledgement: the server closed without one, or it did not
    /// verify (wrong key, locked out, refused).
    pub const NO_ACK: u8 = 2;
    /// Network error or timeout: DNS, connect, proxy, challenge, bad greeting.
    pub const NETWORK: u8 = 3;
    /// Acknowledged, but refused (cooldown, busy or address binding).
    pub const REFUSED: u8 = 4;
    /// Acknowledged, but the action failed to start.
    pub const FAILED: u8 = 5;
    /// The command line is wrong (sysexits EX_USAGE).
    pub const USAGE: u8 = 64;
}

/// Why no valid acknowledgement came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAck {
    /// The server closed the connection without one.
    Closed,
    /// An ack arrived but its MAC did not verify under our key.
    BadAck,
}

/// How one trigger ended.
#[derive(Debug)]
pub enum Outcome {
    /// postern-2: the server authenticated us and says what it did, why,
    /// and for how long.
    Acknowledged(Answer),
    /// ostiary-4: the reply went out; the protocol never answers.
    ReplySent,
    /// The reply went out, but no valid acknowledgement came back.
    NoAck(NoAck),
    /// The server could not be reached or did not send a usable challenge.
    Unreachable(NetError),
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Acknowledged(a) => match a.status {
                Status::Started | Status::AlreadyActive => exit::OK,
                Status::Closed | Status::NotOpen => exit::OK,
                Status::Refused => exit::REFUSED,
                Status::Failed => exit::FAILED,
            },
            Outcome::ReplySent => exit::OK,
            Outcome::NoAck(_) => exit::NO_ACK,
            Outcome::Unreachable(_) => exit::NETWORK,
        }
    }

    /// Whether this counts as success.
    pub fn is_success(&self) -> bool {
        self.exit_code() == exit::OK
    }

    /// The exit code for `postern close`: as [`Outcome::exit_code`],
    /// except that `started` and `already-active` are failures
    /// ([`exit::FAILED`]): the key was an opening action's, so the gate
    /// was opened (or left open), not closed.
    pub fn close_exit_code(&self) -> u8 {
        match self {
            Outcome::Acknowledged(a)
                if matches!(a.status, Status::Started | Status::AlreadyActive) =>
            {
                exit::FAILED
            }
            other => other.exit_code(),
        }
    }

    /// The exit code for a trigger (`closing` false) or for `postern
    /// close` (true).
    pub fn code_for(&self, closing: bool) -> u8 {
        if closing {
            self.close_exit_code()
        } else {
            self.exit_code()
        }
    }

    /// A stable, lower-case name, for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Acknowledged(a) => a.status.name(),
            Outcome::ReplySent => "sent",
            Outcome::NoAck(_) => "no-ack",
            Outcome::Unreachable(_) => "network-error",
        }
    }
}

/// One trigger's result, as shown to the user.
#[derive(Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// The address connected to (or the target, if none was reached).
    pub address: String,
    /// Time from the start of the connect to the outcome.
    pub latency: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: each outcome maps to its documented exit code, and only
    // started, already-active and ostiary-4 "sent" count as success.
    #[test]
    fn exit_codes() {
        let ack = |s| Outcome::Acknowledged(Answer::bare(s));
        let cases = [
            (ack(Status::Started), 0),
            (ack(Status::AlreadyActive), 0),
            (ack(Status::Closed), 0),
            (ack(Status::NotOpen), 0),
            (Outcome::ReplySent, 0),
            (Outcome::NoAck(NoAck::Closed), 2),
            (Outcome::NoAck(NoAck::BadAck), 2),
            (Outcome::Unreachable(NetError::BadGreeting), 3),
            (ack(Status::Refused), 4),
            (ack(Status::Failed), 5),
        ];
        for (o, code) in cases {
            assert_eq!(o.exit_code(), code, "{o:?}");
            assert_eq!(o.is_success(), code == 0);
            let opened = matches!(&o, Outcome::Acknowledged(a) if matches!(a.status, Status::Started | Status::AlreadyActive));
            let close = if opened { exit::FAILED } else { code };
            assert_eq!(o.close_exit_code(), close, "{o:?}");
        }
    }
}
