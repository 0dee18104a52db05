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

/// Runs `posternd --config PATH` until it exits, at most `limit` (then it
/// is killed); returns its exit status (None if killed) and its stderr.
fn run_bounded(config: &Path, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(posternd_bin())
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().unwrap())
}

fn door_cfg(s: &Scratch, state: &Path, b: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\nshutdown_grace = \"1s\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"door\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\n\
         stop = [\"/bin/sh\", \"-c\", \"echo stopped >> {}\"]\nttl = \"1m\"\n",
        state.display(),
        s.path("stops").display()
    )
}

// Goal: a state_dir another user owns (with gates.state.tmp planted as a
// link to a root-owned file, gates.state as a link to a root-only one),
// or one below a directory others can write, stops start-up with a
// message, and root neither writes through the links nor logs a line of
// the secret; in a root-owned state_dir, a planted link or FIFO is
// refused (every gate stopped) instead of followed or waited on.
#[test]
fn planted_state_files_cannot_turn_root() {
    if !require_root("planted_state_files_cannot_turn_root") {
        return;
    }
    let s = Scratch::new("plant");
    let (_, b) = key();
    let (uid, gid) = nobody();
    let victim = s.path("victim");
    std::fs::write(&victim, b"original\n").unwrap();
    let secret = s.path("secret");
    std::fs::write(&secret, b"TOPSECRET-FIRST-LINE\nmore\n").unwrap();
    set_mode(&secret, 0o600);

    // 1. Owned by another user, links planted.
    let state = s.path("theirs");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("gates.state.tmp")).unwrap();
    std::os::unix::fs::symlink(&secret, state.join("gates.state")).unwrap();
    chown(&state, uid, gid);
    let cfg = s.path("theirs.toml");
    write_private(&cfg, &door_cfg(&s, &state, &b));
    let (status, err) = run_bounded(&cfg, 10 * SEC);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"original\n",
        "root wrote through a planted link; log:\n{err}"
    );
    assert!(
        !err.contains("TOPSECRET"),
        "a root-only line was logged:\n{err}"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "started anyway:\n{err}"
    );
    assert!(
        err.contains(&format!("is owned by uid {uid}, not root"))
            && err.contains("chown root:root"),
        "{err}"
    );
    let out = check_config(&cfg);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("daemon.state_dir"),
        "{text}"
    );

    // 2. Root-owned, but below a directory others can write.
    let open = s.path("open");
    std::fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    let state2 = open.join("state");
    let cfg2 = s.path("open.toml");
    write_private(&cfg2, &door_cfg(&s, &state2, &b));
    let (status, err) = run_bounded(&cfg2, 10 * SEC);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "started anyway:\n{err}"
    );
    assert!(err.contains("writable by group or others"), "{err}");

    // 3. Root-owned and trusted, but a FIFO, then a link, planted in it.
    let state3 = s.path("ours");
    std::fs::create_dir(&state3).unwrap();
    set_mode(&state3, 0o700);
    nix::unistd::mkfifo(&state3.join("gates.state"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let stops = s.path("stops");
    let cfg3 = door_cfg(&s, &state3, &b);
    let d = Daemon::start(Scratch::new("plant-d1"), &cfg3);
    d.wait_log("not a regular file", 5 * SEC);
    assert_eq!(wait_file(&stops, 5 * SEC).trim(), "stopped");
    drop(d);
    std::fs::remove_file(state3.join("gates.state")).unwrap();
    std::os::unix::fs::symlink(&secret, state3.join("gates.state")).unwrap();
    let d = Daemon::start(Scratch::new("plant-d2"), &cfg3);
    d.wait_log("symbolic link", 5 * SEC);
    assert!(
        !d.lines().iter().any(|l| l.contains("TOPSECRET")),
        "{}",
        d.lines().join("\n")
    );
    drop(d);
    assert_eq!(std::fs::read(&victim).unwrap(), b"original\n");
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while pid_alive(pid) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn this_boot() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// An unrelated process group leader (a `sleep` in a group of its own).
fn bystander_group() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/bin/sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap()
}

// Goal: crash recovery never kills an unrelated process group: not one
// whose leader reuses the recorded serve pid (it started later than the
// recorded start time), and not one recorded with start time 0 (what was
// written when /proc could not be read).
#[test]
fn recovery_never_kills_an_unrelated_group() {
    let s = Scratch::new("reuse");
    let (_, b1) = key();
    let (_, b2) = key();
    let mut later = bystander_group();
    let mut zero = bystander_group();
    let state = s.path("state");
    std::fs::create_dir_all(&state).unwrap();
    set_mode(&state, 0o700);
    let now = postern::gate::unix_now();
    let boot = this_boot();
    std::fs::write(
        state.join("gates.state"),
        format!(
            "gate name=one kind=serve pid={} start={} boot={boot} opened={} deadline={} addr=192.0.2.1\n\
             gate name=two kind=serve pid={} start=0 boot={boot} opened={} deadline={} addr=192.0.2.2\n",
            later.id(),
            start_ticks(later.id()).saturating_sub(100),
            now - 5,
            now + 3600,
            zero.id(),
            now - 5,
            now + 3600,
        ),
    )
    .unwrap();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"one\"\nkey = \"{b1}\"\nserve = [\"/bin/sleep\", \"300\"]\nttl = \"1h\"\n\
         [[action]]\nname = \"two\"\nkey = \"{b2}\"\nserve = [\"/bin/sleep\", \"300\"]\nttl = \"1h\"\n",
        daemon_table(&s)
    );
    let d = Daemon::start(s, &cfg);
    d.wait_log("gate one (serve) closed at start-up", 5 * SEC);
    d.wait_log("gate two (serve) closed at start-up", 5 * SEC);
    // Killing is synchronous in recovery: by now it would have happened.
    std::thread::sleep(Duration::from_millis(100));
    let (l, z) = (pid_alive(later.id()), pid_alive(zero.id()));
    let _ = later.kill();
    let _ = zero.kill();
    let _ = later.wait();
    let _ = zero.wait();
    assert!(l, "a group whose leader reused the recorded pid was killed");
    assert!(
        z,
        "a group matched by a recorded start time of 0 was killed"
    );
    drop(d);
}

// Goal: a serve program's descendants that left its process group
// (setsid) die with the gate: at its deadline, and at the start-up after
// a crash (the cgroup is recorded and killed whole).
#[test]
fn serve_descendants_after_setsid_die_with_the_gate() {
    if !require_root("serve_descendants_after_setsid_die_with_the_gate") {
        return;
    }
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(" - cgroup2 "),
        "no cgroup2 hierarchy: this test needs one"
    );
    let s = Scratch::new("setsid");
    let (k, b) = key();
    let pidfile = s.path("escaped.pid");
    let cfg = |ttl: &str| {
        format!(
            "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"svc\"\nkey = \"{b}\"\n\
             serve = [\"/bin/sh\", \"-c\", \"/usr/bin/setsid /bin/sleep 300 & echo $! > {p}.tmp; mv {p}.tmp {p}; exec /bin/sleep 300\"]\n\
             ttl = \"{ttl}\"\n",
            daemon_table(&s),
            p = pidfile.display()
        )
    };
    let (short, long) = (cfg("1s"), cfg("1h"));

    // At the deadline.
    let d = Daemon::start(Scratch::new("setsid-1"), &short);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let escaped: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    assert!(pid_alive(escaped));
    d.wait_log("gate svc closed (deadline)", 10 * SEC);
    let gone = wait_gone(escaped, 5 * SEC);
    if !gone {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(escaped as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(gone, "a setsid'd descendant outlived its gate");
    drop(d);
    std::fs::remove_file(&pidfile).unwrap();

    // After a crash.
    let mut d = Daemon::start(Scratch::new("setsid-2"), &long);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let escaped: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    d.child.kill().unwrap();
    let _ = d.child.wait();
    drop(d);
    assert!(
        pid_alive(escaped),
        "the escaped process should survive the crash"
    );
    let d2 = Daemon::start(Scratch::new("setsid-3"), &long);
    d2.wait_log("gate svc (serve) closed at start-up", 5 * SEC);
    let gone = wait_gone(escaped, 5 * SEC);
    if !gone {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(escaped as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        gone,
        "a setsid'd descendant survived the restart after a crash"
    );
    let leftover = d2.lines().join("\n");
    assert!(
        leftover.contains("left 1 process(es) by the previous posternd; killed"),
        "{leftover}"
    );
}
