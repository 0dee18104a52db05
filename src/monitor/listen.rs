//! Listening sockets: bound by the monitor (so privileged ports work), or
//! inherited from systemd socket activation, then handed to the network
//! process with SCM_RIGHTS.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};

/// Listen backlog: large enough that a flood fills the handshake slots
/// (where eviction handles it) rather than the kernel queue.
pub const BACKLOG: i32 = 1024;

/// Why a listener could not be set up.
#[derive(Debug)]
pub enum ListenError {
    /// A system call failed for this address.
    Bind(SocketAddr, nix::Error),
    /// LISTEN_FDS was set but a descriptor is unusable or unexpected.
    Activation(String),
}

impl core::fmt::Display for ListenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ListenError::Bind(a, e) => write!(
                f,
                "cannot listen on {a}: {e}; check that no other program uses the port and that the address is local"
            ),
            ListenError::Activation(m) => write!(f, "socket activation: {m}"),
        }
    }
}

/// Binds and listens on `addr` (IPv6 sockets are IPv6-only, so `0.0.0.0`
/// and `[::]` can both be configured on one port).
pub fn bind_listener(addr: SocketAddr) -> Result<OwnedFd, ListenError> {
    let err = |e| ListenError::Bind(addr, e);
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(err)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(err)?;
    let backlog = Backlog::new(BACKLOG).map_err(err)?;
    listen(&fd, backlog).map_err(err)?;
    Ok(fd)
}

/// The address a socket is bound to.
pub fn local_addr<F: AsFd>(fd: &F) -> Option<SocketAddr> {
    let ss: SockaddrStorage = getsockname(fd.as_fd().as_raw_fd()).ok()?;
    if let Some(v4) = ss.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    ss.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Descriptors passed by systemd (`LISTEN_PID` = our pid, `LISTEN_FDS` =
/// n, descriptors 3..3+n). Returns `None` when not socket-activated. The
/// variables are removed so nothing we start inherits them.
pub fn activation_fds() -> Result<Option<Vec<OwnedFd>>, ListenError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    let n: i32 = fds
        .trim()
        .parse()
        .map_err(|_| ListenError::Activation(format!("LISTEN_FDS={fds} is not a number")))?;
    if !(1..=64).contains(&n) {
        return Err(ListenError::Activation(format!(
            "LISTEN_FDS={n} out of range 1..64"
        )));
    }
    let mut out = Vec::new();
    for raw in 3..3 + n {
        let fd = crate::sys::adopt_fd(raw)
            .ok_or_else(|| ListenError::Activation(format!("descriptor {raw} is not open")))?;
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| ListenError::Activation(format!("descriptor {raw}: {e}")))?;
        out.push(fd);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Goal: binding port 0 on IPv4 and IPv6 loopback yields a real port,
    // and an address in use gives an error that names it.
    #[test]
    fn bind_and_conflict() {
        let fd = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = local_addr(&fd).unwrap();
        assert_ne!(a.port(), 0);
        let e = bind_listener(a).unwrap_err().to_string();
        assert!(e.contains(&a.to_string()), "{e}");
        if let Ok(fd6) = bind_listener("[::1]:0".parse().unwrap()) {
            assert!(local_addr(&fd6).unwrap().is_ipv6());
        }
    }
}
