//! Privilege separation: the network process is jailed, the monitor fails
//! closed on forged requests or a dead network process, actions switch
//! identity, and systemd socket activation works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use postern::channel::{self, Channel};
use postern::config::LogTarget;
use postern::ipc::{Peer, Reason, Request, REQUEST_LEN};
use postern::monitor::log::Logger;
use postern::monitor::{Monitor, MonitorError, NetChild};
use postern::wire::Status;

const SEC: Duration = Duration::from_secs(1);

fn simple_config(s: &Scratch, user: &str) -> (String, postern::secret::Key) {
    let (k, b) = key();
    let cfg = format!(
        "{}user = \"{user}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"a\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\n",
        daemon_table(s)
    );
    (cfg, k)
}

fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .map(|l| l[field.len() + 1..].trim().to_string())
        .unwrap_or_default()
}

// Goal: the network process runs as the unprivileged user (uid, gid, no
// supplementary groups), chrooted into the empty directory (so it cannot
// open /etc/passwd), with no_new_privs, not dumpable, and capped fds.
#[test]
fn network_process_is_jailed() {
    if !require_root("network_process_is_jailed") {
        return;
    }
    let s = Scratch::new("jail");
    let chroot = s.path("state").join("empty");
    let (cfg, k) = simple_config(&s, "nobody");
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let net = d.network_pid();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid = nobody.uid.as_raw().to_string();
    let gid = nobody.gid.as_raw().to_string();
    assert_eq!(
        status_field(net, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        status_field(net, "Gid"),
        format!("{gid}\t{gid}\t{gid}\t{gid}")
    );
    assert_eq!(status_field(net, "Groups"), "");
    assert_eq!(status_field(net, "NoNewPrivs"), "1");
    assert_eq!(status_field(net, "CapEff"), "0000000000000000");
    assert_eq!(status_field(net, "CapPrm"), "0000000000000000");
    let root = std::fs::read_link(format!("/proc/{net}/root")).unwrap();
    assert_eq!(root, chroot);
    assert_eq!(
        std::fs::read_dir(&chroot).unwrap().count(),
        0,
        "the chroot is empty"
    );
    // Seen from inside its root, /etc/passwd does not exist.
    assert!(!std::path::Path::new(&format!("/proc/{net}/root/etc/passwd")).exists());
    let limits = std::fs::read_to_string(format!("/proc/{net}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = files.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(soft < 1024, "{files}");
    // The monitor itself is not dumpable either: its /proc files are root's.
    assert_eq!(status_field(d.pid(), "Uid").split('\t').next(), Some("0"));
}

async fn forged(bytes: Vec<u8>) -> (Result<(), MonitorError>, u32) {
    let s = Scratch::new("forged");
    std::fs::create_dir_all(s.path("state")).unwrap();
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let (cfg, _) = simple_config(&s, &user);
    let path = s.path("c.toml");
    write_private(&path, &cfg);
    let config = postern::config::load(&path).unwrap();
    let (mine, theirs) = channel::pair().unwrap();
    let logger = Arc::new(Logger::new(LogTarget::Stderr));
    let (bound, _) = postern::monitor::bind_all(&config, &mut Vec::new(), None).unwrap();
    let m = Monitor::new(config, bound, logger, Channel::new(mine).unwrap());
    // A stand-in for the network process that the monitor must kill.
    let child = tokio::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let fake_net = Channel::new(theirs).unwrap();
    let sender = tokio::task::spawn_local(async move {
        fake_net.send(&bytes, &[]).await.unwrap();
        // Keep our end open until the monitor reacts.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(fake_net);
    });
    let r = tokio::time::timeout(
        Duration::from_secs(4),
        m.run(
            NetChild { child },
            postern::monitor::Signals::install().unwrap(),
        ),
    )
    .await
    .expect("monitor must react");
    sender.abort();
    (r, pid)
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name
}

fn run_local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

// Goal: the monitor treats a forged request (out-of-range index, wrong
// size, garbage) as fatal: it kills the network process and stops with an
// error (posternd then exits non-zero).
#[test]
fn forged_request_kills_daemon() {
    let peer = Peer {
        listener: 0,
        addr: "127.0.0.1".parse().unwrap(),
        port: 1,
    };
    let out_of_range = Request::Fail {
        peer: Peer {
            listener: 7,
            ..peer
        },
        reason: Reason::BadMac,
        failures: 1,
        handle: 0,
    }
    .encode()
    .to_vec();
    let mut short = Request::Fail {
        peer,
        reason: Reason::BadMac,
        failures: 1,
        handle: 0,
    }
    .encode()
    .to_vec();
    short.pop();
    let mut long = Request::Fail {
        peer,
        reason: Reason::BadMac,
        failures: 1,
        handle: 0,
    }
    .encode()
    .to_vec();
    long.push(0);
    let garbage: Vec<u8> = (0..REQUEST_LEN as u8)
        .map(|i| i.wrapping_mul(151).wrapping_add(7))
        .collect();
    for (what, bytes) in [
        ("out-of-range index", out_of_range),
        ("short", short),
        ("long", long),
        ("garbage", garbage),
    ] {
        let (r, pid) = run_local(forged(bytes));
        assert!(matches!(r, Err(MonitorError::Forged(_))), "{what}: {r:?}");
        assert!(
            !pid_alive(pid),
            "{what}: the network process must be killed"
        );
    }
    // Control: a well-formed request is not fatal (the monitor keeps
    // running until the test's timeout).
    let ok = Request::Fail {
        peer,
        reason: Reason::BadMac,
        failures: 1,
        handle: 0,
    }
    .encode()
    .to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = tokio::task::LocalSet::new().block_on(&rt, async {
        tokio::time::timeout(Duration::from_millis(500), forged(ok)).await
    });
    assert!(r.is_err(), "a valid request must not stop the monitor");
}

// Goal: killing the network process makes posternd exit non-zero at once,
// leaving no half-alive daemon behind.
#[test]
fn killing_network_process_stops_daemon() {
    let s = Scratch::new("killnet");
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let (cfg, _) = simple_config(&s, &user);
    let mut d = Daemon::start(s, &cfg);
    let net = d.network_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(net as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = d.wait_exit(5 * SEC).expect("posternd must exit");
    assert!(!st.success(), "{st:?}");
    d.wait_log("network process gone", 5 * SEC);
    assert!(!pid_alive(net));
}

// Goal: killing the monitor takes the network process down with it
// (PR_SET_PDEATHSIG), so no orphan keeps serving.
#[test]
fn killing_monitor_stops_network_process() {
    let s = Scratch::new("killmon");
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let (cfg, _) = simple_config(&s, &user);
    let mut d = Daemon::start(s, &cfg);
    let net = d.network_pid();
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let end = Instant::now() + 5 * SEC;
    while pid_alive(net) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pid_alive(net));
}

// Goal: an action with `user`/`group` runs with exactly that identity
// (uid, gid, and only that group).
#[test]
fn actions_run_as_configured_user() {
    if !require_root("actions_run_as_configured_user") {
        return;
    }
    let s = Scratch::new("runas");
    let outdir = s.path("out");
    std::fs::create_dir_all(&outdir).unwrap();
    std::fs::set_permissions(&outdir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = outdir.join("id");
    let (k, b) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"who\"\nkey = \"{b}\"\nuser = \"nobody\"\ngroup = \"nogroup\"\nrun = [\"/bin/sh\", \"-c\", \"echo $(id -u) $(id -g) $(id -G) > {}\"]\n",
        daemon_table(&s),
        out.display()
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let got = wait_file(&out, 5 * SEC);
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(got.trim(), format!("{nobody} {nogroup} {nogroup}"));
}

// Goal: with LISTEN_FDS/LISTEN_PID set as systemd does, posternd serves on
// the passed socket instead of binding its own.
#[test]
fn socket_activation() {
    let s = Scratch::new("activation");
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (k, b) = key();
    let cfg = format!(
        "{}user = \"{user}\"\n[[listen]]\naddress = \"{addr}\"\n[[action]]\nname = \"a\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\n",
        daemon_table(&s)
    );
    let fd = listener.as_raw_fd();
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let d = Daemon::start_with(s, &cfg, |cmd| {
        let exe = env!("CARGO_BIN_EXE_posternd");
        let program = cmd
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect::<Vec<_>>();
        let dup = if fd == 3 {
            String::new()
        } else {
            format!("exec 3<&{fd} {fd}<&-; ")
        };
        let script = format!(
            "{dup}LISTEN_PID=$$ LISTEN_FDS=1 exec {exe} {}",
            program.join(" ")
        );
        let mut sh = std::process::Command::new("/bin/bash");
        sh.arg("-c").arg(script);
        *cmd = sh;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
    });
    drop(listener);
    assert!(
        d.lines().iter().any(|l| l.contains("socket-activated")),
        "{:?}",
        d.lines()
    );
    assert_eq!(d.addr(), addr);
    assert_eq!(trigger(addr, &k), Outcome::Ack(Status::Started));
}

// Goal: a SIGHUP that reaches the network process too (e.g. `killall
// -HUP posternd`), even in the instant after it was started, neither
// kills it nor stops the daemon.
#[test]
fn sighup_to_network_process_is_harmless() {
    let s = Scratch::new("hupnet");
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let (cfg, k) = simple_config(&s, &user);
    let d = Daemon::start(s, &cfg);
    let net = d.network_pid();
    // Ignored from before exec, not caught by a handler installed later:
    // SIGHUP is bit 0 of the SigIgn mask.
    let status = std::fs::read_to_string(format!("/proc/{net}/status")).unwrap();
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(ign & 1, 1, "SIGHUP not ignored in the network process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(net as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reloaded", 5 * SEC);
    std::thread::sleep(Duration::from_millis(200));
    assert!(pid_alive(net));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
}

// Goal: with NOTIFY_SOCKET set (Type=notify), posternd sends READY=1 once
// it is configured and serving.
#[test]
fn sd_notify_ready() {
    let s = Scratch::new("notify");
    let sock_path = s.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(10 * SEC)).unwrap();
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let (cfg, k) = simple_config(&s, &user);
    let d = Daemon::start_with(s, &cfg, |cmd| cmd.env("NOTIFY_SOCKET", &sock_path));
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
}
