//! `HOST[:PORT]`, as typed on the command line or written in the inventory.
//!
//! A host is an IP address or a DNS name made of letters, digits, `-`, `.`
//! and `_`. Nothing else gets through, so a host can be written into an
//! HTTP CONNECT line or a SOCKS5 request as it is.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The port postern-2 servers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7001;
/// Longest host name accepted (the DNS limit on a full name).
pub const MAX_HOST_LEN: usize = 253;

/// A host and a port to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
}

/// Why `HOST[:PORT]` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Nothing was given.
    Empty,
    /// The port is not a number from 1 to 65535.
    BadPort(String),
    /// The host is neither an IP address nor a valid host name.
    BadHost(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Empty => f.write_str("empty host"),
            TargetError::BadPort(t) => {
                write!(f, "bad port in {t:?}: use a number from 1 to 65535")
            }
            TargetError::BadHost(t) => write!(
                f,
                "{t:?} is not an IP address or host name (IPv6 with a port: [ADDR]:PORT)"
            ),
        }
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// Parses `HOST`, `HOST:PORT`, `IPV6` or `[IPV6]:PORT`; a missing port
    /// is `default_port`.
    pub fn parse(text: &str, default_port: u16) -> Result<Target, TargetError> {
        if text.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetError::BadHost(text.to_owned()))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(TargetError::BadHost(text.to_owned()));
            }
            let port = match after {
                "" => default_port,
                _ => match after.strip_prefix(':') {
                    Some(p) => {
                        parse_port(p).ok_or_else(|| TargetError::BadPort(text.to_owned()))?
                    }
                    None => return Err(TargetError::BadHost(text.to_owned())),
                },
            };
            return Target::new(host, port);
        }
        if text.parse::<IpAddr>().is_ok() {
            return Target::new(text, default_port);
        }
        match text.split_once(':') {
            Some((host, port)) => {
                let port = parse_port(port).ok_or_else(|| TargetError::BadPort(text.to_owned()))?;
                Target::new(host, port)
            }
            None => Target::new(text, default_port),
        }
    }

    /// A host (IP address or name, IPv6 without brackets) and a port.
    pub fn new(host: &str, port: u16) -> Result<Target, TargetError> {
        if host.is_empty() {
            return Err(TargetError::Empty);
        }
        if port == 0 {
            return Err(TargetError::BadPort(host.to_owned()));
        }
        if host.parse::<IpAddr>().is_err() && !is_host_name(host) {
            return Err(TargetError::BadHost(host.to_owned()));
        }
        Ok(Target {
            host: host.to_owned(),
            port,
        })
    }

    /// The host, IPv6 addresses without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// `host:port`, with IPv6 addresses in brackets.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

fn is_host_name(host: &str) -> bool {
    host.len() <= MAX_HOST_LEN
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Goal: every accepted spelling of HOST[:PORT] parses to the right
    // host and port, and prints back as a connectable authority.
    #[test]
    fn parses_hosts_and_ports() {
        let cases = [
            ("192.0.2.17", "192.0.2.17", 7001, "192.0.2.17:7001"),
            ("192.0.2.17:9", "192.0.2.17", 9, "192.0.2.17:9"),
            (
                "web-17.example",
                "web-17.example",
                7001,
                "web-17.example:7001",
            ),
            ("web_17:65535", "web_17", 65535, "web_17:65535"),
            ("2001:db8::1", "2001:db8::1", 7001, "[2001:db8::1]:7001"),
            ("[2001:db8::1]", "2001:db8::1", 7001, "[2001:db8::1]:7001"),
            ("[::1]:8000", "::1", 8000, "[::1]:8000"),
        ];
        for (text, host, port, shown) in cases {
            let t = Target::parse(text, DEFAULT_PORT).unwrap();
            assert_eq!((t.host(), t.port()), (host, port), "{text}");
            assert_eq!(t.to_string(), shown);
        }
    }

    // Goal: malformed targets are refused with the matching error.
    #[test]
    fn refuses_bad_targets() {
        assert_eq!(Target::parse("", 1), Err(TargetError::Empty));
        for bad in ["h:0", "h:70000", "h:", "h:x", "h:+5", "[::1]:"] {
            assert!(
                matches!(Target::parse(bad, 1), Err(TargetError::BadPort(_))),
                "{bad}"
            );
        }
        for bad in [
            "a b",
            "h\r\nX: y",
            "[::1",
            "[nope]:1",
            "-h",
            "[::1]x",
            "u@h",
            "a:b:c",
        ] {
            assert!(Target::parse(bad, 1).is_err(), "{bad}");
        }
        assert!(Target::new(&"a".repeat(254), 1).is_err());
        assert!(Target::new("h", 0).is_err());
    }
}
