//! Local trust: nothing a local user can plant (in the state directory, in
//! inherited descriptors, in key files, in a recycled pid) makes root
//! write, read, kill or hang. Most tests need root (other users' files,
//! cgroups, the jail) and run under CI=true.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use postern::wire::Status;

const SEC: Duration = Duration::from_secs(1);

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !f() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Targets of a process's open descriptors 3 and up.
fn fd_targets(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().to_string();
        if n.parse::<u32>().unwrap() < 3 {
            continue;
        }
        let t = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push((n, t));
    }
    out
}

// Goal: a descriptor posternd inherits (fd 7 on a root-only file) is open
// neither in the jailed network process nor in any action.
#[test]
fn inherited_descriptor_reaches_neither_jail_nor_action() {
    if !require_root("inherited_descriptor_reaches_neither_jail_nor_action") {
        return;
    }
    let s = Scratch::new("fdleak");
    let secret = s.path("root-only");
    std::fs::write(&secret, b"root only\n").unwrap();
    set_mode(&secret, 0o600);
    let out = s.path("action-fds");
    let (k, b) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"fds\"\nkey = \"{b}\"\n\
         run = [\"/bin/sh\", \"-c\", \"ls -l /proc/$$/fd/ > {out}.tmp; mv {out}.tmp {out}\"]\n",
        daemon_table(&s),
        out = out.display()
    );
    let wrapper = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("exec 7< {}; exec \"$@\"", secret.display()),
        "sh".to_string(),
    ];
    let d = Daemon::start_wrapped(s, &cfg, &wrapper);
    let shown = secret.display().to_string();
    // The wrapper did hand it over: the monitor received fd 7.
    let monitor = fd_targets(d.pid());
    assert!(
        monitor.iter().any(|(n, t)| n == "7" && *t == shown),
        "the test's fd 7 did not reach posternd: {monitor:?}"
    );
    let net = fd_targets(d.network_pid());
    assert!(
        !net.iter().any(|(_, t)| *t == shown),
        "inherited descriptor open in the network process: {net:?}"
    );
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let listing = wait_file(&out, 5 * SEC);
    assert!(
        !listing.contains(&shown),
        "inherited descriptor open in an action:\n{listing}"
    );
    // The network process keeps only the channel and its listener (and
    // its runtime's own descriptors), never a regular file.
    assert!(
        !net.iter().any(|(_, t)| t.starts_with('/')),
        "the network process holds a file: {net:?}"
    );
}
