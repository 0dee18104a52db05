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
    let now = postern::monitor::gate::unix_now();
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
// (setsid) and outlived a crash of posternd are killed at the next
// start-up: the gate's cgroup is recorded and killed whole.
#[test]
fn serve_descendants_after_setsid_die_at_restart() {
    if !require_root("serve_descendants_after_setsid_die_at_restart") {
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
    let long = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"svc\"\nkey = \"{b}\"\n\
         serve = [\"/bin/sh\", \"-c\", \"/usr/bin/setsid /bin/sleep 300 & echo $! > {p}.tmp; mv {p}.tmp {p}; exec /bin/sleep 300\"]\n\
         ttl = \"1h\"\n",
        daemon_table(&s),
        p = pidfile.display()
    );

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

fn vm_lck_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A config of `n` plain actions with fresh keys; the first action's key.
fn many_actions(s: &Scratch, n: usize) -> (String, postern::secret::Key) {
    let mut cfg = format!("{}[[listen]]\naddress = \"127.0.0.1:0\"\n", daemon_table(s));
    let mut first = None;
    for i in 0..n {
        let (k, b) = key();
        first.get_or_insert(k);
        cfg.push_str(&format!(
            "[[action]]\nname = \"a{i}\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\ncooldown = \"0s\"\nsingle_instance = false\n"
        ));
    }
    (cfg, first.unwrap())
}

/// Reloads `d` with `cfg` and waits until the network process uses it
/// (a trigger with its first key is acknowledged).
fn reload_to(d: &Daemon, cfg: &(String, postern::secret::Key), n: usize) {
    d.rewrite(&cfg.0);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_n("reloaded", n, 10 * SEC);
    let end = Instant::now() + 10 * SEC;
    while trigger(d.addr(), &cfg.1) != Outcome::Ack(Status::Started) {
        assert!(
            Instant::now() < end,
            "the reloaded config never took effect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Goal: after a reload, the monitor has the new keys locked in memory,
// and the network process's locked memory does not grow per reload.
#[test]
fn reload_relocks_keys_without_growth() {
    if !require_root("reload_relocks_keys_without_growth") {
        return;
    }
    let s = Scratch::new("mlock");
    let (small, _) = many_actions(&s, 1);
    let d = Daemon::start(s, &small);
    let net = d.network_pid();
    // The monitor: a config of 1000 actions holds its keys in an array of
    // actions at least this large, all of which must be locked.
    let needed_kb = (1000 * std::mem::size_of::<postern::config::Action>() / 1024) as u64;
    let before = vm_lck_kb(d.pid());
    reload_to(&d, &many_actions(&d.scratch, 1000), 1);
    let after = vm_lck_kb(d.pid());
    // The network process, over 12 more reloads of that size.
    let mut seen = vec![vm_lck_kb(net)];
    for i in 0..12 {
        reload_to(&d, &many_actions(&d.scratch, 1000), i + 2);
        seen.push(vm_lck_kb(net));
    }
    let (first, last) = (seen[0], *seen.last().unwrap());
    eprintln!("monitor VmLck {before} -> {after} KiB; network process {seen:?} KiB");
    assert!(
        after >= before + needed_kb,
        "monitor VmLck {before} -> {after} KiB after a reload to 1000 actions (>= {needed_kb} KiB more needed); network process {seen:?}"
    );
    assert!(
        last <= first + 16,
        "network process VmLck grew over 12 reloads: {seen:?} KiB"
    );
}

/// `posternd --check` on `text` written to `name` in `s`: (success, stderr).
fn check(s: &Scratch, name: &str, text: &str) -> (bool, String) {
    let path = s.path(name);
    write_private(&path, text);
    let out = check_config(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// Goal: ostiary-4 passwords that are one HMAC key with another (`pw` and
// `pw\0`; a password over 64 bytes and its SHA-256) are refused by
// --check, naming the key and the fix.
#[test]
fn ambiguous_ostiary_passwords_are_refused() {
    let s = Scratch::new("pw");
    let head = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"ostiary-4\"\n",
        daemon_table(&s)
    );
    let nul = format!(
        "{head}[[action]]\nname = \"a\"\npassword = \"pw\"\nrun = [\"/bin/true\"]\n\
         [[action]]\nname = \"b\"\npassword = \"pw\\u0000\"\nrun = [\"/bin/true\"]\n"
    );
    let (ok, err) = check(&s, "nul.toml", &nul);
    assert!(!ok, "pw and pw\\0 passed --check");
    assert!(
        err.contains("action[2].password") && err.contains("NUL byte") && err.contains("remove it"),
        "{err}"
    );
    let long = "x".repeat(65);
    let too_long =
        format!("{head}[[action]]\nname = \"a\"\npassword = \"{long}\"\nrun = [\"/bin/true\"]\n");
    let (ok, err) = check(&s, "long.toml", &too_long);
    assert!(!ok, "a 65-byte password passed --check");
    assert!(
        err.contains("action[1].password") && err.contains("at most 64"),
        "{err}"
    );
    let sixty_four = too_long.replace(&long, &"x".repeat(64));
    let (ok, err) = check(&s, "ok.toml", &sixty_four);
    assert!(ok, "{err}");
}

// Goal: `[daemon] group = "root"` for the network process is refused.
#[test]
fn network_process_group_root_is_refused() {
    let s = Scratch::new("grp");
    let (_, b) = key();
    let cfg = format!(
        "[daemon]\nstate_dir = \"{}\"\nuser = \"nobody\"\ngroup = \"root\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"a\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\n",
        s.path("state").display()
    );
    let (ok, err) = check(&s, "g.toml", &cfg);
    assert!(!ok, "group = root passed --check");
    assert!(
        err.contains("daemon.group") && err.contains("gid 0"),
        "{err}"
    );
}

// Goal: a key file is judged by the file actually opened: one owned by
// another user, or a symbolic link (even to a good file), is refused.
#[test]
fn key_files_are_checked_on_the_open_file() {
    if !require_root("key_files_are_checked_on_the_open_file") {
        return;
    }
    let s = Scratch::new("keyfile");
    let (_, b) = key();
    let (uid, gid) = nobody();
    let good = s.path("good.key");
    std::fs::write(&good, &b).unwrap();
    set_mode(&good, 0o600);
    let theirs = s.path("theirs.key");
    std::fs::write(&theirs, &b).unwrap();
    set_mode(&theirs, 0o600);
    chown(&theirs, uid, gid);
    let link = s.path("link.key");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let cfg = |file: &Path| {
        format!(
            "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"a\"\nkey_file = \"{}\"\nrun = [\"/bin/true\"]\n",
            daemon_table(&s),
            file.display()
        )
    };
    let (ok, err) = check(&s, "good.toml", &cfg(&good));
    assert!(ok, "{err}");
    let (ok, err) = check(&s, "theirs.toml", &cfg(&theirs));
    assert!(!ok, "a key file owned by uid {uid} passed --check");
    assert!(
        err.contains("action[1].key_file") && err.contains(&format!("owned by uid {uid}")),
        "{err}"
    );
    let (ok, err) = check(&s, "link.toml", &cfg(&link));
    assert!(!ok, "a key file reached through a link passed --check");
    assert!(err.contains("symbolic link"), "{err}");
}

// Goal: the config file is read with a bound: `--config /dev/zero` is
// refused at once (under a 512 MiB address-space limit, within 10 s)
// instead of reading until memory runs out.
#[test]
fn config_file_read_is_bounded() {
    let start = Instant::now();
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 524288; exec timeout 10 {} --config /dev/zero --check",
            posternd_bin()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("larger than"), "{err}");
    assert!(start.elapsed() < 10 * SEC);
}

// Goal: after an unreadable state record, the gate is closed without a
// made-up address: never `stop` with {addr} or POSTERN_ADDR = 0.0.0.0;
// `stop_all` closes the whole door when set, and a stop that uses
// {addr} without stop_all is refused by --check.
#[test]
fn unreadable_record_closes_the_whole_door() {
    let s = Scratch::new("unknown");
    let (_, b1) = key();
    let (_, b2) = key();
    let log = s.path("door.log");
    let state = s.path("state");
    std::fs::create_dir_all(&state).unwrap();
    set_mode(&state, 0o700);
    let now = postern::monitor::gate::unix_now();
    std::fs::write(
        state.join("gates.state"),
        format!(
            "gate name=env kind=walk pid=0 start=- boot=- opened={now} deadline={} addr=192.0.2.1\n\
             gate name=all kind=walk pid=0 start=- boot=- opened={now} deadline={} addr=192.0.2.2\n",
            now + 600,
            now + 600
        ),
    )
    .unwrap();
    let head = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n",
        daemon_table(&s)
    );
    let env_door = format!(
        "[[action]]\nname = \"env\"\nkey = \"{b1}\"\nrun = [\"/bin/true\"]\n\
         stop = [\"/bin/sh\", \"-c\", \"echo env-stop=[$POSTERN_ADDR] >> {l}\"]\nttl = \"1h\"\n",
        l = log.display()
    );
    // First the old behaviour's victim: a stop that reads POSTERN_ADDR.
    let d = Daemon::start(Scratch::new("unknown-1"), &format!("{head}{env_door}"));
    d.wait_log("gate env: record unreadable; stopping it", 5 * SEC);
    let text = wait_file(&log, 5 * SEC);
    assert!(
        !text.contains("0.0.0.0"),
        "stop ran for a made-up address:\n{text}"
    );
    assert_eq!(text.trim(), "env-stop=[]");
    drop(d);
    // A stop that uses {addr} needs stop_all.
    let addr_door = format!(
        "[[action]]\nname = \"all\"\nkey = \"{b2}\"\nrun = [\"/bin/true\"]\n\
         stop = [\"/bin/sh\", \"-c\", \"echo stop={{addr}} >> {l}\"]\nttl = \"1h\"\n",
        l = log.display()
    );
    let (ok, err) = check(&s, "noall.toml", &format!("{head}{addr_door}"));
    assert!(!ok, "stop with {{addr}} and no stop_all passed --check");
    assert!(
        err.contains("action[1].stop") && err.contains("add stop_all"),
        "{err}"
    );
    // With stop_all, the whole door is closed and stop never runs.
    std::fs::remove_file(&log).unwrap();
    let with_all = format!(
        "{head}{addr_door}stop_all = [\"/bin/sh\", \"-c\", \"echo stop_all >> {l}\"]\n",
        l = log.display()
    );
    std::fs::write(
        state.join("gates.state"),
        format!(
            "gate name=all kind=walk pid=0 start=- boot=- opened={now} deadline={} addr=192.0.2.2\n",
            now + 600
        ),
    )
    .unwrap();
    let d = Daemon::start(Scratch::new("unknown-2"), &with_all);
    d.wait_log("gate all stop_all (address unknown) exit=0", 5 * SEC);
    assert_eq!(wait_file(&log, 5 * SEC).trim(), "stop_all");
    drop(d);
    // And for a state file that cannot be read at all.
    std::fs::remove_file(&log).unwrap();
    std::fs::write(state.join("gates.state"), b"\xff\xfe not text").unwrap();
    let d = Daemon::start(Scratch::new("unknown-3"), &with_all);
    d.wait_log("stopping every gate", 5 * SEC);
    d.wait_log("gate all stop_all (address unknown) exit=0", 5 * SEC);
    assert_eq!(wait_file(&log, 5 * SEC).trim(), "stop_all");
}
