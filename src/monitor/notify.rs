//! systemd's readiness protocol (`sd_notify`), without libsystemd: one
//! datagram to `$NOTIFY_SOCKET`, if set. Nothing happens outside systemd
//! or when the socket is gone; posternd never depends on the answer.
//!
//! - `READY=1` once the network process is up (`daemon.rs`, step 8);
//! - `EXTEND_TIMEOUT_USEC` before every wait for a gate's stop command
//!   (`gate.rs`): closing gates at start-up (recovery) or at a stop may
//!   take each stop's `timeout`, and systemd's start or stop timeout is
//!   pushed out by as much, so a slow stop is waited for, not killed.

use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to systemd, if posternd runs under it.
pub fn send(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let addr = if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(state.as_bytes(), &addr);
    }
}

/// Margin added to a command's own deadline: its process group is killed
/// at the deadline, and that takes a moment more.
const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// Tells systemd that whatever it is timing (start-up, a stop) may take
/// `wait` (plus a margin) from now.
pub fn extend(wait: Duration) {
    let usec = wait.saturating_add(EXTEND_MARGIN).as_micros();
    send(&format!("EXTEND_TIMEOUT_USEC={usec}"));
}
