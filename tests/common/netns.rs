//! A network namespace per test, for attacks that need many source
//! addresses: 2001:db8::/32 is routed to lo inside it (any of its
//! addresses can be bound), and 127.0.0.0/8 is local as always. Creating
//! one needs root; CI runs as root and must not skip.
//!
//! The calling test runs again inside the namespace (`ip netns exec`,
//! this test binary, that one test) and does its work there; the outer
//! run creates the namespace, waits for the inner one, and deletes it.

use std::path::PathBuf;
use std::process::Command;

/// Set in the inner run: the marker file it must create.
const INNER: &str = "POSTERN_NETNS_MARKER";

/// Deletes the namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {} failed", args.join(" "));
}

/// True in the inner run: the caller then does its work, in the
/// namespace. In the outer run, runs test `name` inside a fresh namespace,
/// asserts that it ran and passed, and returns false (also when skipping
/// without root outside CI).
pub fn enter(name: &str) -> bool {
    if let Some(marker) = std::env::var_os(INNER) {
        std::fs::write(PathBuf::from(marker), name).unwrap();
        return true;
    }
    if !super::require_root(name) {
        return false;
    }
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ns = Netns(format!("postern-{}-{n}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &ns.0,
        "-6",
        "route",
        "add",
        "local",
        "2001:db8::/32",
        "dev",
        "lo",
    ]);
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-qw",
            "net.ipv6.ip_nonlocal_bind=1",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl in {}", ns.0);
    let scratch = super::Scratch::new("netns");
    let marker = scratch.path("ran");
    let st = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, &marker)
        .status()
        .unwrap();
    assert!(st.success(), "{name} failed inside namespace {}", ns.0);
    assert!(
        marker.exists(),
        "{name} did not run inside namespace {}",
        ns.0
    );
    false
}
