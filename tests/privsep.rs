//! Privilege separation: the network process is jailed, it dies with the
//! monitor, actions switch identity, and systemd socket activation works.
//! (A forged request or a dead network process: tests/respawn.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
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

// Goal: "started" (and READY=1) means the network process is up, not
// only on its way: the moment the line appears, it is already jailed
// (its root is the empty chroot, its uid nobody's) and holds no file
// beyond its standard streams.
// Over many start-ups, so that a start-up that announces too early is
// caught in the window between exec and jail.
#[test]
fn started_means_the_network_process_is_up() {
    if !require_root("started_means_the_network_process_is_up") {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid = nobody.uid.as_raw().to_string();
    for i in 0..20 {
        let s = Scratch::new(&format!("up{i}"));
        let chroot = s.path("state").join("empty");
        let (cfg, _) = simple_config(&s, "nobody");
        let d = Daemon::start(s, &cfg);
        let net = d.network_pid();
        let root = std::fs::read_link(format!("/proc/{net}/root")).unwrap();
        let real_uid = status_field(net, "Uid");
        let files: Vec<String> = std::fs::read_dir(format!("/proc/{net}/fd"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) > Some(2))
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .filter(|t| t.starts_with('/'))
            .collect();
        assert_eq!(root, chroot, "start-up {i}: not jailed yet at \"started\"");
        assert_eq!(
            real_uid.split('\t').next(),
            Some(uid.as_str()),
            "start-up {i}"
        );
        assert!(
            files.is_empty(),
            "start-up {i}: holds {files:?} at \"started\""
        );
    }
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name
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

// Goal: a gate closed at start-up (its deadline passed while posternd was
// down) first pushes systemd's start timeout out by the stop's own
// timeout plus 5 s (EXTEND_TIMEOUT_USEC), so a slow stop is waited for;
// READY=1 comes only after it, once the network process is up.
#[test]
fn sd_notify_extends_the_start_for_a_stop_at_start_up() {
    let s = Scratch::new("notifystop");
    let (k, b) = key();
    let user = if is_root() {
        "nobody".to_string()
    } else {
        whoami()
    };
    let open = s.path("open");
    let cfg = format!(
        "{}user = \"{user}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\n\
         run = [\"/bin/sh\", \"-c\", \"touch {o}\"]\nstop = [\"/bin/sh\", \"-c\", \"rm -f {o}\"]\n\
         ttl = \"1s\"\ntimeout = \"7s\"\n",
        daemon_table(&s),
        o = open.display()
    );
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.child.kill().unwrap();
    let _ = d.child.wait();
    // Past the gate's 1 s deadline while posternd is down.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(open.exists());
    let scratch = std::mem::replace(&mut d.scratch, Scratch::new("notifystop-2"));
    drop(d);
    let sock_path = scratch.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(10 * SEC)).unwrap();
    let d2 = Daemon::start_with(scratch, &cfg, |cmd| cmd.env("NOTIFY_SOCKET", &sock_path));
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.last().map(String::as_str) != Some("READY=1") {
        let n = sock.recv(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert_eq!(got, ["EXTEND_TIMEOUT_USEC=12000000", "READY=1"]);
    assert!(!open.exists(), "the expired gate was closed before READY=1");
    assert!(d2.count("expired while posternd was down") == 1);
}
