//! Reaching a server: name resolution and TCP connect under one deadline,
//! directly or through a proxy.
//!
//! The system resolver has no timeout of its own, so it runs on a helper
//! thread and is abandoned if the deadline passes first.

use std::fmt;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::proxy::{Proxy, ProxyError};
use crate::target::Target;

/// At most this many resolved addresses are tried, in resolver order.
pub const MAX_ADDRESSES: usize = 16;

/// A connected stream.
#[derive(Debug)]
pub struct Connection {
    /// The stream to the server (through the tunnel, with a proxy).
    pub stream: TcpStream,
    /// The server's address as connected: the socket address directly, the
    /// target as given through a proxy.
    pub peer: String,
}

/// Why no connection could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The resolver found no such name, or failed.
    Resolve {
        /// The name.
        host: String,
        /// The resolver's message.
        detail: String,
    },
    /// The resolver did not answer before the deadline.
    ResolveTimeout {
        /// The name.
        host: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The name resolved to no address.
    NoAddress {
        /// The name.
        host: String,
    },
    /// The server refused the connection (nothing listens on the port).
    Refused {
        /// The address tried last.
        addr: SocketAddr,
    },
    /// No connection was established before the deadline.
    TimedOut {
        /// The target.
        target: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Another socket error (unreachable network, and so on).
    Other {
        /// The address tried last.
        addr: SocketAddr,
        /// The system's message.
        detail: String,
    },
    /// The proxy itself could not be reached.
    ProxyUnreachable {
        /// The proxy URL.
        proxy: String,
        /// Why.
        cause: Box<ConnectError>,
    },
    /// The proxy was reached but did not open the tunnel.
    Proxy {
        /// The proxy URL.
        proxy: String,
        /// Why.
        cause: ProxyError,
    },
}

/// Seconds, as people write them: `30 s`, `0.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve { host, detail } => write!(f, "cannot resolve {host}: {detail}"),
            ConnectError::ResolveTimeout { host, timeout } => {
                write!(
                    f,
                    "cannot resolve {host}: no answer within {}",
                    secs(*timeout)
                )
            }
            ConnectError::NoAddress { host } => write!(f, "{host} has no address"),
            ConnectError::Refused { addr } => write!(f, "connection refused by {addr}"),
            ConnectError::TimedOut { target, timeout } => {
                write!(
                    f,
                    "timed out after {} connecting to {target}",
                    secs(*timeout)
                )
            }
            ConnectError::Other { addr, detail } => write!(f, "cannot connect to {addr}: {detail}"),
            ConnectError::ProxyUnreachable { proxy, cause } => write!(f, "proxy {proxy}: {cause}"),
            ConnectError::Proxy { proxy, cause } => write!(f, "{cause} ({proxy})"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connects to `target`, through `proxy` if given. `timeout` bounds name
/// resolution, the TCP connect and the proxy handshake together.
pub fn connect(
    target: &Target,
    proxy: Option<&Proxy>,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + timeout;
    match proxy {
        None => {
            let (stream, addr) = connect_tcp(target, deadline, timeout)?;
            Ok(Connection {
                stream,
                peer: addr.to_string(),
            })
        }
        Some(proxy) => {
            let (mut stream, _) = connect_tcp(proxy.address(), deadline, timeout).map_err(|e| {
                ConnectError::ProxyUnreachable {
                    proxy: proxy.to_string(),
                    cause: Box::new(e),
                }
            })?;
            proxy
                .open_tunnel(&mut stream, target, deadline)
                .map_err(|cause| ConnectError::Proxy {
                    proxy: proxy.to_string(),
                    cause,
                })?;
            Ok(Connection {
                stream,
                peer: target.to_string(),
            })
        }
    }
}

fn resolve(
    target: &Target,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(ip) = target.ip() {
        return Ok(vec![SocketAddr::new(ip, target.port())]);
    }
    let host = target.host().to_owned();
    let port = target.port();
    let (tx, rx) = mpsc::channel();
    let lookup = host.clone();
    std::thread::Builder::new()
        .name("resolve".to_owned())
        .spawn(move || {
            let r = (lookup.as_str(), port)
                .to_socket_addrs()
                .map(|it| it.take(MAX_ADDRESSES).collect::<Vec<_>>());
            // The receiver is gone if the deadline passed; nothing to do.
            let _ = tx.send(r);
        })
        .map_err(|e| ConnectError::Resolve {
            host: host.clone(),
            detail: e.to_string(),
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(Ok(addrs)) if addrs.is_empty() => Err(ConnectError::NoAddress { host }),
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(ConnectError::Resolve {
            host,
            detail: e.to_string(),
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ConnectError::ResolveTimeout { host, timeout }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ConnectError::Resolve {
            host,
            detail: "resolver failed".to_owned(),
        }),
    }
}

fn connect_tcp(
    target: &Target,
    deadline: Instant,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let timed_out = || ConnectError::TimedOut {
        target: target.to_string(),
        timeout,
    };
    let mut last = None;
    for addr in resolve(target, deadline, timeout)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => {
                // The reply must leave as one segment, at once.
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Err(e) => {
                last = Some(match e.kind() {
                    ErrorKind::ConnectionRefused => ConnectError::Refused { addr },
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => timed_out(),
                    _ => ConnectError::Other {
                        addr,
                        detail: e.to_string(),
                    },
                });
            }
        }
    }
    Err(last.unwrap_or_else(timed_out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    // Goal: a closed port is reported as "connection refused", and a live
    // one connects and names its address.
    #[test]
    fn refused_and_connected() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target::new("127.0.0.1", port).unwrap();
        let c = connect(&target, None, Duration::from_secs(5)).unwrap();
        assert_eq!(c.peer, format!("127.0.0.1:{port}"));
        drop(listener);
        let e = connect(&target, None, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ConnectError::Refused { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("connection refused by 127.0.0.1:{port}")
        );
    }

    // Goal: durations print the way people write them.
    #[test]
    fn seconds_format() {
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5 s");
    }
}
