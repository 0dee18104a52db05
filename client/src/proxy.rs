//! Proxies: `http://HOST:PORT` (HTTP CONNECT) and `socks5://HOST:PORT`
//! (SOCKS5 without authentication, RFC 1928).
//!
//! Both handshakes read fixed-size fields into fixed arrays under the
//! connect deadline. The HTTP response header is read one byte at a time so
//! that no byte of the tunnelled stream (the server's greeting may follow in
//! the same segment) is consumed; it is bounded by [`MAX_HTTP_HEADER`].

use std::fmt;
use std::net::{IpAddr, TcpStream};
use std::time::Instant;

use crate::deadline::{read_exact_by, write_all_by, IoFailure};
use crate::target::{Target, TargetError};

/// Longest HTTP CONNECT response header accepted, in bytes.
pub const MAX_HTTP_HEADER: usize = 8 * 1024;
/// Port assumed for `http://` proxies without one.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Port assumed for `socks5://` proxies without one.
pub const DEFAULT_SOCKS_PORT: u16 = 1080;

const SOCKS_VERSION: u8 = 5;
const SOCKS_NO_AUTH: u8 = 0;
const SOCKS_NO_ACCEPTABLE: u8 = 0xff;
const SOCKS_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

/// The proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// HTTP CONNECT.
    Http,
    /// SOCKS5, no authentication.
    Socks5,
}

/// A proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    address: Target,
}

/// Why a proxy URL could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyUrlError {
    /// The scheme is not `http://`, `socks5://` or `socks5h://`.
    Scheme,
    /// The URL carries credentials, which postern does not send.
    Credentials,
    /// The URL has a path, query or fragment.
    Path,
    /// The proxy's host or port is invalid.
    Address(TargetError),
}

impl fmt::Display for ProxyUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyUrlError::Scheme => {
                f.write_str("proxy must be http://HOST:PORT or socks5://HOST:PORT")
            }
            ProxyUrlError::Credentials => {
                f.write_str("proxy credentials are not supported; remove USER@ from the proxy URL")
            }
            ProxyUrlError::Path => f.write_str("proxy URL must be just SCHEME://HOST:PORT"),
            ProxyUrlError::Address(e) => write!(f, "proxy address: {e}"),
        }
    }
}

impl std::error::Error for ProxyUrlError {}

/// Why a proxy handshake failed.
#[derive(Debug)]
pub enum ProxyError {
    /// The proxy did not answer before the connect deadline.
    TimedOut,
    /// The proxy closed the connection during the handshake.
    Closed,
    /// A socket error during the handshake.
    Io(String),
    /// HTTP: the response header is longer than [`MAX_HTTP_HEADER`].
    HeaderTooLong,
    /// HTTP: the response does not start with an HTTP/1.x status line.
    NotHttp,
    /// HTTP: the proxy answered with a non-2xx status.
    HttpStatus {
        /// The status code.
        code: u16,
        /// The reason phrase, printable ASCII only, shortened.
        reason: String,
    },
    /// SOCKS5: the proxy speaks another version or sent a malformed reply.
    NotSocks5,
    /// SOCKS5: the proxy wants authentication, which postern does not do.
    SocksAuthRequired,
    /// SOCKS5: the proxy refused the CONNECT with this reply code.
    SocksRefused(u8),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::TimedOut => f.write_str("proxy did not answer in time"),
            ProxyError::Closed => f.write_str("proxy closed the connection during the handshake"),
            ProxyError::Io(e) => write!(f, "proxy handshake failed: {e}"),
            ProxyError::HeaderTooLong => write!(
                f,
                "proxy response header is longer than {} KiB",
                MAX_HTTP_HEADER / 1024
            ),
            ProxyError::NotHttp => f.write_str("proxy did not answer with HTTP/1.x"),
            ProxyError::HttpStatus { code, reason } => {
                write!(f, "proxy refused: HTTP {code} {reason}")
            }
            ProxyError::NotSocks5 => f.write_str("proxy did not answer as a SOCKS5 server"),
            ProxyError::SocksAuthRequired => f.write_str(
                "proxy refused: SOCKS5 authentication required (only no-auth is supported)",
            ),
            ProxyError::SocksRefused(code) => {
                write!(
                    f,
                    "proxy refused: SOCKS5 {} (reply {code})",
                    socks_reply_text(*code)
                )
            }
        }
    }
}

impl std::error::Error for ProxyError {}

impl From<IoFailure> for ProxyError {
    fn from(e: IoFailure) -> Self {
        match e {
            IoFailure::TimedOut => ProxyError::TimedOut,
            IoFailure::Closed { .. } | IoFailure::Reset => ProxyError::Closed,
            IoFailure::Io(e) => ProxyError::Io(e.to_string()),
        }
    }
}

/// What an RFC 1928 reply code means.
pub fn socks_reply_text(code: u8) -> &'static str {
    match code {
        0 => "succeeded",
        1 => "general server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused by the target",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

impl Proxy {
    /// Parses `http://HOST[:PORT]`, `socks5://HOST[:PORT]` (or `socks5h://`,
    /// the same thing here: names are always sent to the proxy unresolved).
    pub fn parse(url: &str) -> Result<Proxy, ProxyUrlError> {
        let (kind, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
            (ProxyKind::Http, r, DEFAULT_HTTP_PORT)
        } else if let Some(r) = url.strip_prefix("socks5://") {
            (ProxyKind::Socks5, r, DEFAULT_SOCKS_PORT)
        } else if let Some(r) = url.strip_prefix("socks5h://") {
            (ProxyKind::Socks5, r, DEFAULT_SOCKS_PORT)
        } else {
            return Err(ProxyUrlError::Scheme);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(ProxyUrlError::Credentials);
        }
        if rest.contains(['/', '?', '#']) {
            return Err(ProxyUrlError::Path);
        }
        let address = Target::parse(rest, default_port).map_err(ProxyUrlError::Address)?;
        Ok(Proxy { kind, address })
    }

    /// The protocol.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// Where the proxy listens.
    pub fn address(&self) -> &Target {
        &self.address
    }

    /// Asks the proxy, already connected on `stream`, to open a tunnel to
    /// `target`. On success `stream` carries the target's bytes.
    pub fn open_tunnel(
        &self,
        stream: &mut TcpStream,
        target: &Target,
        deadline: Instant,
    ) -> Result<(), ProxyError> {
        match self.kind {
            ProxyKind::Http => http_connect(stream, target, deadline),
            ProxyKind::Socks5 => socks5_connect(stream, target, deadline),
        }
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ProxyKind::Http => write!(f, "http://{}", self.address),
            ProxyKind::Socks5 => write!(f, "socks5://{}", self.address),
        }
    }
}

fn http_connect(
    stream: &mut TcpStream,
    target: &Target,
    deadline: Instant,
) -> Result<(), ProxyError> {
    // `Target` admits no whitespace or control characters, so the
    // authority cannot break out of the request line.
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    write_all_by(stream, request.as_bytes(), deadline)?;

    let mut head = [0u8; MAX_HTTP_HEADER];
    let mut len = 0usize;
    loop {
        if len == head.len() {
            return Err(ProxyError::HeaderTooLong);
        }
        read_exact_by(stream, &mut head[len..len + 1], deadline)?;
        len += 1;
        let h = &head[..len];
        if h.ends_with(b"\r\n\r\n") || h.ends_with(b"\n\n") {
            break;
        }
    }
    let (code, reason) = parse_status_line(&head[..len]).ok_or(ProxyError::NotHttp)?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(ProxyError::HttpStatus { code, reason })
    }
}

/// Parses `HTTP/1.x NNN reason` from the first line of `head`.
fn parse_status_line(head: &[u8]) -> Option<(u16, String)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = &head[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (_, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let code_bytes = rest.get(..3)?;
    if !code_bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = code_bytes
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    let reason: String = rest[3..]
        .iter()
        .skip_while(|&&b| b == b' ')
        .take(80)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    Some((code, reason))
}

fn socks5_connect(
    stream: &mut TcpStream,
    target: &Target,
    deadline: Instant,
) -> Result<(), ProxyError> {
    write_all_by(stream, &[SOCKS_VERSION, 1, SOCKS_NO_AUTH], deadline)?;
    let mut choice = [0u8; 2];
    read_exact_by(stream, &mut choice, deadline)?;
    match choice {
        [SOCKS_VERSION, SOCKS_NO_AUTH] => {}
        [SOCKS_VERSION, SOCKS_NO_ACCEPTABLE] => return Err(ProxyError::SocksAuthRequired),
        _ => return Err(ProxyError::NotSocks5),
    }

    // VER CMD RSV ATYP DST.ADDR DST.PORT; a name is at most 255 bytes.
    let mut request = [0u8; 4 + 1 + 255 + 2];
    request[..3].copy_from_slice(&[SOCKS_VERSION, SOCKS_CONNECT, 0]);
    let mut n = 4;
    match target.ip() {
        Some(IpAddr::V4(v4)) => {
            request[3] = ATYP_V4;
            request[n..n + 4].copy_from_slice(&v4.octets());
            n += 4;
        }
        Some(IpAddr::V6(v6)) => {
            request[3] = ATYP_V6;
            request[n..n + 16].copy_from_slice(&v6.octets());
            n += 16;
        }
        None => {
            let name = target.host().as_bytes();
            // `Target` bounds names to MAX_HOST_LEN (253) bytes.
            let len = u8::try_from(name.len()).map_err(|_| ProxyError::NotSocks5)?;
            request[3] = ATYP_NAME;
            request[n] = len;
            n += 1;
            request[n..n + name.len()].copy_from_slice(name);
            n += name.len();
        }
    }
    request[n..n + 2].copy_from_slice(&target.port().to_be_bytes());
    n += 2;
    write_all_by(stream, &request[..n], deadline)?;

    let mut head = [0u8; 4];
    read_exact_by(stream, &mut head, deadline)?;
    if head[0] != SOCKS_VERSION {
        return Err(ProxyError::NotSocks5);
    }
    if head[1] != 0 {
        return Err(ProxyError::SocksRefused(head[1]));
    }
    // Drain BND.ADDR and BND.PORT so the tunnel starts at the target's bytes.
    let addr_len = match head[3] {
        ATYP_V4 => 4,
        ATYP_V6 => 16,
        ATYP_NAME => {
            let mut l = [0u8; 1];
            read_exact_by(stream, &mut l, deadline)?;
            usize::from(l[0])
        }
        _ => return Err(ProxyError::NotSocks5),
    };
    let mut bound = [0u8; 255 + 2];
    read_exact_by(stream, &mut bound[..addr_len + 2], deadline)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Goal: proxy URLs parse to kind and address; credentials, paths and
    // unknown schemes are refused.
    #[test]
    fn parses_proxy_urls() {
        let p = Proxy::parse("http://127.0.0.1:3128").unwrap();
        assert_eq!(
            (p.kind(), p.address().to_string().as_str()),
            (ProxyKind::Http, "127.0.0.1:3128")
        );
        let p = Proxy::parse("socks5://[::1]/").unwrap();
        assert_eq!(
            (p.kind(), p.address().port()),
            (ProxyKind::Socks5, DEFAULT_SOCKS_PORT)
        );
        assert_eq!(p.to_string(), "socks5://[::1]:1080");
        assert_eq!(
            Proxy::parse("socks5h://gw:9").unwrap().kind(),
            ProxyKind::Socks5
        );
        assert_eq!(Proxy::parse("https://gw:1"), Err(ProxyUrlError::Scheme));
        assert_eq!(Proxy::parse("gw:1"), Err(ProxyUrlError::Scheme));
        assert_eq!(
            Proxy::parse("http://u:p@gw:1"),
            Err(ProxyUrlError::Credentials)
        );
        assert_eq!(Proxy::parse("http://gw:1/x"), Err(ProxyUrlError::Path));
        assert!(matches!(
            Proxy::parse("http://gw:0"),
            Err(ProxyUrlError::Address(_))
        ));
    }

    // Goal: HTTP status lines parse; garbage does not, and reason phrases
    // are cleaned of control characters.
    #[test]
    fn parses_status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some((200, "Connection established".to_owned()))
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 403\r\n\r\n"),
            Some((403, String::new()))
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 407 a\x1bb\r\n\r\n"),
            Some((407, "a?b".to_owned()))
        );
        assert_eq!(parse_status_line(b"SSH-2.0-x\r\n\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2x0 no\r\n\r\n"), None);
    }

    // Goal: every RFC 1928 reply code has a message of its own.
    #[test]
    fn socks_codes_have_messages() {
        let texts: Vec<&str> = (0..=9).map(socks_reply_text).collect();
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(texts.iter().filter(|x| *x == t).count(), 1, "code {i}");
        }
        assert_eq!(socks_reply_text(200), "unassigned reply code");
    }
}
