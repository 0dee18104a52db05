//! Fault injection against the real posternd. For each fault: posternd
//! keeps serving (a canary action still fires), logs a clear line, loses
//! no gate state, and never leaves a gate open past its deadline.
//!
//! Faults: the action program deleted or made non-executable after the
//! config was loaded, a program that hangs, exits non-zero, prints
//! megabytes, or leaves children behind; a gate's stop program missing;
//! the state directory read-only or full (private mount namespaces); no
//! syslog socket; the network process out of file descriptors
//! (prlimit); and state-file records from a clock that jumped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use postern::secret::Key;
use postern::wire::Status;

const SEC: Duration = Duration::from_secs(1);

/// The canary: a plain action that must keep working whatever else fails.
struct Canary {
    key: Key,
    out: PathBuf,
    table: String,
}

fn canary(s: &Scratch) -> Canary {
    let (key, b) = key();
    let out = s.path("canary.out");
    let table = format!(
        "[[action]]\nname = \"canary\"\nkey = \"{b}\"\nsingle_instance = false\n\
         run = [\"/bin/sh\", \"-c\", \"echo fired >> {}\"]\n",
        out.display()
    );
    Canary { key, out, table }
}

impl Canary {
    /// Fires the canary and waits for its marker line.
    fn fires(&self, d: &Daemon) {
        let before = line_count(&self.out);
        assert_eq!(trigger(d.addr(), &self.key), Outcome::Ack(Status::Started));
        let end = Instant::now() + 5 * SEC;
        while line_count(&self.out) <= before {
            assert!(Instant::now() < end, "the canary did not fire");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn base(s: &Scratch, daemon_extra: &str, actions: &str, c: &Canary) -> String {
    format!(
        "{}{daemon_extra}\n[limits]\nexempt = [\"127.0.0.0/8\"]\nrate_burst = 100000\nrate_per_minute = 100000\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n{actions}{}",
        daemon_table(s),
        c.table
    )
}

/// An executable shell script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn state_text(d: &Daemon) -> String {
    std::fs::read_to_string(d.scratch.path("state").join("gates.state")).unwrap_or_default()
}

/// A run/stop gate whose run and stop scripts live in the scratch
/// directory and mark `NAME.open` present while the gate is open.
fn door(s: &Scratch, name: &str, key_b64: &str, ttl: &str) -> (String, PathBuf) {
    let open = s.path(&format!("{name}.open"));
    let run = s.path(&format!("{name}-run.sh"));
    let stop = s.path(&format!("{name}-stop.sh"));
    script(&run, &format!("touch {}", open.display()));
    script(
        &stop,
        &format!(
            "rm -f {}; echo stopped >> {}.stops",
            open.display(),
            open.display()
        ),
    );
    (
        format!(
            "[[action]]\nname = \"{name}\"\nkey = \"{key_b64}\"\nrun = [\"{}\"]\nstop = [\"{}\"]\nttl = \"{ttl}\"\n",
            run.display(),
            stop.display()
        ),
        open,
    )
}

// Goal: an action program deleted after the config was loaded answers
// "failed", logs which program could not start, and recovers by itself
// once the program is back; other actions keep working.
#[test]
fn action_program_deleted_after_load() {
    let s = Scratch::new("deleted");
    let c = canary(&s);
    let (k, b) = key();
    let prog = s.path("act.sh");
    let out = s.path("act.out");
    script(&prog, &format!("echo ran >> {}", out.display()));
    let cfg = base(
        &s,
        "",
        &format!(
            "[[action]]\nname = \"act\"\nkey = \"{b}\"\nrun = [\"{}\"]\n",
            prog.display()
        ),
        &c,
    );
    let d = Daemon::start(s, &cfg);
    std::fs::remove_file(&prog).unwrap();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Failed));
    let line = d.wait_log("action act run failed to start", 5 * SEC);
    assert!(line.contains(&prog.display().to_string()), "{line}");
    c.fires(&d);
    // Back in place: works again, no restart needed, not stuck "busy".
    script(&prog, &format!("echo ran >> {}", out.display()));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert_eq!(wait_file(&out, 5 * SEC).trim(), "ran");
}

// Goal: an action program made non-executable after load answers
// "failed" with a clear log line; a gate whose run program went the same
// way answers "failed", runs its stop, and records nothing.
#[test]
fn action_program_not_executable_after_load() {
    let s = Scratch::new("noexec");
    let c = canary(&s);
    let (k, b) = key();
    let (kg, bg) = key();
    let prog = s.path("act.sh");
    script(&prog, "true");
    let (gate, open) = door(&s, "door", &bg, "1m");
    let gate_run = s.path("door-run.sh");
    let cfg = base(
        &s,
        "",
        &format!(
            "[[action]]\nname = \"act\"\nkey = \"{b}\"\nrun = [\"{}\"]\n{gate}",
            prog.display()
        ),
        &c,
    );
    let d = Daemon::start(s, &cfg);
    for p in [&prog, &gate_run] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Failed));
    let line = d.wait_log("action act run failed to start", 5 * SEC);
    assert!(line.to_lowercase().contains("permission denied"), "{line}");
    assert_eq!(trigger(d.addr(), &kg), Outcome::Ack(Status::Failed));
    d.wait_log("gate door run failed to start", 5 * SEC);
    // Its stop ran anyway (fail closed) and nothing is recorded open.
    let stops = PathBuf::from(format!("{}.stops", open.display()));
    assert_eq!(wait_file(&stops, 5 * SEC).trim(), "stopped");
    assert!(!state_text(&d).contains("name=door"));
    assert!(!open.exists());
    c.fires(&d);
}

// Goal: a hanging action is killed at its timeout (its whole group), is
// logged as such, and does not hold its single-instance slot afterwards;
// a hanging gate stop is killed the same way and the gate is still
// closed and forgotten.
#[test]
fn hanging_action_and_hanging_stop_are_killed() {
    let s = Scratch::new("hang");
    let c = canary(&s);
    let (k, b) = key();
    let (kg, bg) = key();
    let pidfile = s.path("hang.pid");
    let open = s.path("door.open");
    let cfg = base(
        &s,
        "",
        &format!(
            "[[action]]\nname = \"hang\"\nkey = \"{b}\"\ntimeout = \"700ms\"\n\
             run = [\"/bin/sh\", \"-c\", \"echo $$ > {pid}; sleep 300\"]\n\
             [[action]]\nname = \"door\"\nkey = \"{bg}\"\ntimeout = \"700ms\"\nttl = \"1s\"\n\
             run = [\"/bin/sh\", \"-c\", \"touch {open}\"]\n\
             stop = [\"/bin/sh\", \"-c\", \"rm -f {open}; sleep 300\"]\n",
            pid = pidfile.display(),
            open = open.display()
        ),
        &c,
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let pid: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::AlreadyActive));
    d.wait_log("action hang run pid=", 5 * SEC);
    d.wait_log("timeout; process group killed", 10 * SEC);
    let end = Instant::now() + 5 * SEC;
    while pid_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_alive(pid), "the hung action survived its timeout");
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));

    assert_eq!(trigger(d.addr(), &kg), Outcome::Ack(Status::Started));
    assert!(open.exists());
    d.wait_log("gate door stop timeout; process group killed", 10 * SEC);
    d.wait_log("gate door closed (deadline)", 5 * SEC);
    assert!(!open.exists());
    assert!(!state_text(&d).contains("name=door"));
    c.fires(&d);
}

// Goal: a non-zero exit is logged with its code (the action did start,
// so the trigger was "started"); a gate whose run exits non-zero is
// "failed" and closed at once.
#[test]
fn nonzero_exit_is_logged() {
    let s = Scratch::new("exit3");
    let c = canary(&s);
    let (k, b) = key();
    let (kg, bg) = key();
    let cfg = base(
        &s,
        "",
        &format!(
            "[[action]]\nname = \"three\"\nkey = \"{b}\"\nrun = [\"/bin/sh\", \"-c\", \"exit 3\"]\n\
             [[action]]\nname = \"door\"\nkey = \"{bg}\"\nttl = \"1m\"\nrun = [\"/bin/sh\", \"-c\", \"exit 7\"]\nstop = [\"/bin/true\"]\n"
        ),
        &c,
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.wait_log("exit=3", 5 * SEC);
    assert_eq!(trigger(d.addr(), &kg), Outcome::Ack(Status::Failed));
    d.wait_log("gate door run exit=7", 5 * SEC);
    assert!(!state_text(&d).contains("name=door"));
    c.fires(&d);
}

// Goal: an action printing megabytes (short lines on stdout, one endless
// line on stderr) gets at most 64 KiB into the log, then one "output
// truncated" line; it is drained so it finishes, and the daemon's memory
// stays where it was.
#[test]
fn megabytes_of_output_are_bounded() {
    let s = Scratch::new("mega");
    let c = canary(&s);
    let (k, b) = key();
    let (k2, b2) = key();
    let cfg = base(
        &s,
        "",
        &format!(
            "[[action]]\nname = \"mega\"\nkey = \"{b}\"\n\
             run = [\"/bin/sh\", \"-c\", \"yes 0123456789abcdef | head -c 8000000\"]\n\
             [[action]]\nname = \"wide\"\nkey = \"{b2}\"\n\
             run = [\"/bin/sh\", \"-c\", \"head -c 4000000 /dev/zero | tr '\\\\000' x >&2\"]\n"
        ),
        &c,
    );
    let d = Daemon::start(s, &cfg);
    c.fires(&d);
    let rss0 = rss_kb(d.pid());
    let t0 = Instant::now();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.wait_log("action mega run pid=", 5 * SEC);
    d.wait_log_n(" exit=0", 2, 30 * SEC);
    eprintln!("8 MB of output drained in {:?}", t0.elapsed());
    let truncated = d.wait_log("output truncated after 65536 bytes", 5 * SEC);
    assert!(truncated.contains("action mega run pid="), "{truncated}");
    assert_eq!(d.count("output truncated"), 1);
    let logged: usize = d
        .lines()
        .iter()
        .filter(|l| l.contains("mega run pid=") && l.contains("stdout: "))
        .map(|l| l.len())
        .sum();
    let lines = d.count("stdout: 0123456789abcdef");
    assert!(lines <= 65536 / 17 + 1, "{lines} output lines logged");
    assert!(logged < 512 * 1024, "{logged} bytes of log for one run");

    assert_eq!(trigger(d.addr(), &k2), Outcome::Ack(Status::Started));
    d.wait_log_n(" exit=0", 3, 30 * SEC);
    d.wait_log("action wide run pid=", 5 * SEC);
    d.wait_log("[line cut]", 5 * SEC);
    let longest = d.lines().iter().map(String::len).max().unwrap_or(0);
    assert!(longest <= 1200, "a log line of {longest} bytes");
    let rss1 = rss_kb(d.pid());
    eprintln!("monitor rss {rss0} -> {rss1} KiB");
    assert!(rss1 < rss0 + 8 * 1024, "monitor grew {rss0} -> {rss1} KiB");
    c.fires(&d);
}

// Goal: children that outlive their command: a timed-out action's group
// is killed whole; a serve gate's children die with its group at the
// deadline; a command that exits leaving a child running is logged.
#[test]
fn children_that_outlive_their_command() {
    let s = Scratch::new("orphans");
    let c = canary(&s);
    let (kt, bt) = key();
    let (ks, bs) = key();
    let (kl, bl) = key();
    let tpids = s.path("timeout.pids");
    let spids = s.path("serve.pids");
    let lpid = s.path("left.pid");
    let cfg = base(
        &s,
        "",
        &format!(
            "[[action]]\nname = \"forks\"\nkey = \"{bt}\"\ntimeout = \"600ms\"\n\
             run = [\"/bin/sh\", \"-c\", \"sleep 300 & a=$!; sleep 300 & echo $a $! $$ > {t}; wait\"]\n\
             [[action]]\nname = \"svc\"\nkey = \"{bs}\"\nttl = \"1s\"\n\
             serve = [\"/bin/sh\", \"-c\", \"sleep 300 & echo $! $$ > {sp}; exec sleep 300\"]\n\
             [[action]]\nname = \"leaver\"\nkey = \"{bl}\"\n\
             run = [\"/bin/sh\", \"-c\", \"sleep 300 & echo $! > {l}\"]\n",
            t = tpids.display(),
            sp = spids.display(),
            l = lpid.display()
        ),
        &c,
    );
    let d = Daemon::start(s, &cfg);
    let pids = |p: &Path| -> Vec<u32> {
        wait_file(p, 5 * SEC)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect()
    };
    let all_gone = |ps: &[u32]| {
        let end = Instant::now() + 8 * SEC;
        while ps.iter().any(|p| pid_alive(*p)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        ps.iter().all(|p| !pid_alive(*p))
    };
    assert_eq!(trigger(d.addr(), &kt), Outcome::Ack(Status::Started));
    assert_eq!(trigger(d.addr(), &ks), Outcome::Ack(Status::Started));
    let t = pids(&tpids);
    let sv = pids(&spids);
    assert!(t.iter().chain(&sv).all(|p| pid_alive(*p)));
    assert!(all_gone(&t), "timed-out group survived: {t:?}");
    d.wait_log("gate svc closed (deadline)", 10 * SEC);
    assert!(all_gone(&sv), "serve group survived its gate: {sv:?}");

    assert_eq!(trigger(d.addr(), &kl), Outcome::Ack(Status::Started));
    let left = pids(&lpid)[0];
    let line = d.wait_log("processes it started are still running", 5 * SEC);
    assert!(line.contains("action leaver run"), "{line}");
    // Ours to clean up: the notice is all posternd promises here.
    action_cleanup(left);
    c.fires(&d);
}

fn action_cleanup(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

// Goal: a gate's stop program deleted while the gate is open: at the
// deadline posternd says, at error level, that it could not run the stop
// (naming the program), still forgets the gate (the state file does not
// keep a gate it cannot act on), and keeps serving.
#[test]
fn gate_stop_program_missing_at_deadline() {
    let s = Scratch::new("nostop");
    let c = canary(&s);
    let (k, b) = key();
    let (gate, open) = door(&s, "door", &b, "1s");
    let stop = s.path("door-stop.sh");
    let cfg = base(&s, "", &gate, &c);
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert!(state_text(&d).contains("name=door"));
    std::fs::remove_file(&stop).unwrap();
    let line = d.wait_log("gate door stop failed to start", 10 * SEC);
    assert!(line.contains(&stop.display().to_string()), "{line}");
    d.wait_log("gate door closed (deadline)", 5 * SEC);
    assert!(open.exists(), "nothing could remove it: the log says so");
    assert!(!state_text(&d).contains("name=door"));
    c.fires(&d);
}

/// Runs posternd in a private mount namespace after `setup` (shell) ran
/// there.
fn start_in_mount_ns(s: Scratch, cfg: &str, setup: &str) -> Daemon {
    let wrapper: Vec<String> = vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        format!("set -e; {setup}; exec \"$@\""),
        "sh".into(),
    ];
    Daemon::start_wrapped(s, cfg, &wrapper)
}

// Goal: with the state directory read-only (a read-only bind mount in a
// private mount namespace), start-up says gates will refuse to open; a
// gate trigger runs, cannot be recorded, so it is closed at once (its
// stop runs) and answered "failed"; plain actions keep working.
#[test]
fn state_dir_read_only() {
    if !require_root("state_dir_read_only") {
        return;
    }
    let s = Scratch::new("rostate");
    let c = canary(&s);
    let (k, b) = key();
    let (gate, open) = door(&s, "door", &b, "1m");
    let state = s.path("state");
    std::fs::create_dir_all(state.join("empty")).unwrap();
    let cfg = base(&s, "", &gate, &c);
    let st = state.display().to_string();
    let d = start_in_mount_ns(
        s,
        &cfg,
        &format!("mount --bind {st} {st}; mount -o remount,bind,ro {st}"),
    );
    d.wait_log("not writable", 5 * SEC);
    assert!(d
        .lines()
        .iter()
        .any(|l| l.contains("gates will refuse to open")));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Failed));
    let line = d.wait_log("cannot record it in the state file", 5 * SEC);
    assert!(line.contains("closing it now"), "{line}");
    d.wait_log("gate door closed (state file unwritable)", 5 * SEC);
    assert!(!open.exists(), "the unrecorded gate was closed");
    let stops = PathBuf::from(format!("{}.stops", open.display()));
    assert_eq!(std::fs::read_to_string(stops).unwrap().trim(), "stopped");
    c.fires(&d);
}

// Goal: with the state directory full (a 16 KiB tmpfs filled up, in a
// private mount namespace) a gate cannot be recorded: "failed", closed at
// once; once space is freed the same gate opens and is recorded, with
// no restart.
#[test]
fn state_dir_full() {
    if !require_root("state_dir_full") {
        return;
    }
    let s = Scratch::new("fullstate");
    let c = canary(&s);
    let (k, b) = key();
    let (gate, open) = door(&s, "door", &b, "2s");
    let state = s.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let cfg = base(&s, "", &gate, &c);
    let st = state.display().to_string();
    let d = start_in_mount_ns(
        s,
        &cfg,
        &format!(
            "mount -t tmpfs -o size=16k,mode=700 postern-full {st}; mkdir {st}/empty; \
             head -c 1000000 /dev/zero > {st}/fill 2>/dev/null || true"
        ),
    );
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Failed));
    let line = d.wait_log("cannot record it in the state file", 5 * SEC);
    assert!(line.to_lowercase().contains("no space"), "{line}");
    d.wait_log("gate door closed (state file unwritable)", 5 * SEC);
    assert!(!open.exists());
    c.fires(&d);
    // Free the space from outside, through the daemon's own view.
    let fill = format!("/proc/{}/root{st}/fill", d.pid());
    std::fs::remove_file(&fill).unwrap();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert!(open.exists());
    let recorded =
        std::fs::read_to_string(format!("/proc/{}/root{st}/gates.state", d.pid())).unwrap();
    assert!(recorded.contains("gate name=door kind=run"), "{recorded}");
    d.wait_log("gate door closed (deadline)", 10 * SEC);
    assert!(!open.exists());
}

// Goal: log = "syslog" with no listener on /dev/log: posternd serves,
// and writes to stderr instead, saying so exactly once. Where the
// machine has a /dev/log, it is hidden by an empty file bind-mounted
// over it in a private mount namespace (root only).
#[test]
fn syslog_socket_absent_falls_back_to_stderr() {
    let s = Scratch::new("nosyslog");
    let c = canary(&s);
    let cfg = base(&s, "log = \"syslog\"\n", "", &c);
    let d = if Path::new("/dev/log").exists() {
        if !require_root("syslog_socket_absent_falls_back_to_stderr") {
            return;
        }
        let empty = s.path("not-a-socket");
        std::fs::write(&empty, b"").unwrap();
        start_in_mount_ns(
            s,
            &cfg,
            &format!("mount --bind {} /dev/log", empty.display()),
        )
    } else {
        Daemon::start(s, &cfg)
    };
    // The "started" line itself came through the fallback.
    c.fires(&d);
    c.fires(&d);
    d.wait_log_n("ok src=127.0.0.1", 2, 5 * SEC);
    assert_eq!(
        d.count("syslog socket /dev/log unavailable; writing to stderr"),
        1,
        "the fallback is announced once:\n{}",
        d.lines().join("\n")
    );
}

// Goal: the network process out of file descriptors (its RLIMIT_NOFILE
// lowered under it with prlimit while silent peers hold handshakes):
// accept fails, is logged once (held down for 30 s), and posternd serves
// again as soon as descriptors free up.
#[test]
fn network_process_out_of_descriptors() {
    if !require_root("network_process_out_of_descriptors") {
        return;
    }
    let s = Scratch::new("emfile");
    let c = canary(&s);
    let cfg = base(&s, "", "", &c).replace("rate_burst", "handshake_timeout = \"30s\"\nrate_burst");
    let d = Daemon::start(s, &cfg);
    c.fires(&d);
    let net = d.network_pid();
    let open_now = fd_count(net);
    let limit = open_now + 2;
    // prlimit(2) on another process needs CAP_SYS_RESOURCE, or the
    // caller's real ids to match the target's: take the network process's
    // own ids for the call (containers often drop the capability).
    let ids = |field: &str| -> String {
        std::fs::read_to_string(format!("/proc/{net}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap()
    };
    let st = std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", ids("Uid:")))
        .arg(format!("--regid={}", ids("Gid:")))
        .arg("--clear-groups")
        .arg("prlimit")
        .arg(format!("--pid={net}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(st.success(), "prlimit on the network process");
    // Two silent peers take the last descriptors; the rest queue up.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut h = connect(d.addr(), None);
        read_greeting(&mut h).unwrap();
        held.push(h);
    }
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(connect(d.addr(), None));
    }
    let line = d.wait_log("accept failed on listener=", 5 * SEC);
    let first = Instant::now();
    assert!(
        line.to_lowercase().contains("too many open files"),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.count("accept failed"), 1, "logged once per episode");
    // Free them: the queue drains and a real trigger is served.
    drop(held);
    drop(queued);
    let t = Instant::now();
    c.fires(&d);
    assert!(t.elapsed() < 5 * SEC);
    // Near the limit accepts succeed and fail in turn as the queued peers
    // refill the freed descriptors; still one line for the whole run (the
    // note is held down for 30 s), never one per failed accept (there
    // were dozens of retries).
    assert!(
        first.elapsed() < 30 * SEC,
        "the test ran past the hold-down"
    );
    assert_eq!(d.count("accept failed"), 1, "{}", d.lines().join("\n"));
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

// Goal: records written under a clock that later jumped: a gate
// "opened" in the future and one whose deadline passed are stopped at
// start-up; a current one is re-armed and closed at its deadline; a
// serve record naming a live pid whose start time does not match is
// never signalled (pid reuse), and all of them leave the state file.
#[test]
fn state_records_from_a_jumping_clock() {
    let s = Scratch::new("clock");
    let c = canary(&s);
    let (_, b1) = key();
    let (_, b2) = key();
    let (_, b3) = key();
    let (_, b4) = key();
    let (future, future_open) = door(&s, "future", &b1, "1h");
    let (past, past_open) = door(&s, "past", &b2, "1h");
    let (live, live_open) = door(&s, "live", &b3, "1h");
    let svc = format!("[[action]]\nname = \"svc\"\nkey = \"{b4}\"\nserve = [\"/bin/sleep\", \"300\"]\nttl = \"1h\"\n");
    for p in [&future_open, &past_open, &live_open] {
        std::fs::write(p, b"").unwrap();
    }
    let mut bystander = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let now = postern::monitor::gate::unix_now();
    let state = s.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("gates.state"),
        format!(
            "# test\n\
             gate name=future kind=run pid=0 start=0 boot=- opened={} deadline={} addr=192.0.2.1\n\
             gate name=past kind=run pid=0 start=0 boot=- opened={} deadline={} addr=192.0.2.2\n\
             gate name=live kind=run pid=0 start=0 boot=- opened={} deadline={} addr=192.0.2.3\n\
             gate name=svc kind=serve pid={} start=1 boot={} opened={} deadline={} addr=192.0.2.4\n",
            now + 86_400,
            now + 90_000,
            now - 86_400,
            now - 10,
            now - 5,
            now + 2,
            bystander.id(),
            boot_id(),
            now - 5,
            now + 3600,
        ),
    )
    .unwrap();
    let cfg = base(&s, "", &format!("{future}{past}{live}{svc}"), &c);
    let t0 = Instant::now();
    let d = Daemon::start(s, &cfg);
    d.wait_log("gate future expired while posternd was down", 5 * SEC);
    d.wait_log("gate past expired while posternd was down", 5 * SEC);
    d.wait_log("gate live re-armed", 5 * SEC);
    d.wait_log("gate svc (serve) closed at start-up", 5 * SEC);
    assert!(!future_open.exists() && !past_open.exists());
    assert!(live_open.exists());
    assert!(pid_alive(bystander.id()), "a reused pid was signalled");
    d.wait_log("gate live closed (deadline)", 10 * SEC);
    assert!(!live_open.exists());
    assert!(t0.elapsed() < 10 * SEC);
    let text = state_text(&d);
    assert!(!text.contains("name="), "{text}");
    c.fires(&d);
    let _ = bystander.kill();
    let _ = bystander.wait();
}

// Goal: a damaged state file fails closed: a record whose name is
// readable but whose fields are not has its gate stopped; a record for
// an action no longer configured is reported (its stop is unknown); both
// leave the file; start-up and service go on.
#[test]
fn damaged_state_records_fail_closed() {
    let s = Scratch::new("damaged");
    let c = canary(&s);
    let (_, b) = key();
    let (gate, open) = door(&s, "door", &b, "1h");
    std::fs::write(&open, b"").unwrap();
    let state = s.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let now = postern::monitor::gate::unix_now();
    std::fs::write(
        state.join("gates.state"),
        format!(
            "gate name=door kind=walk pid=0 start=0 boot=- opened={now} deadline={} addr=192.0.2.1\n\
             gate name=ghost kind=run pid=0 start=0 boot=- opened={now} deadline={} addr=192.0.2.2\n",
            now + 600,
            now + 600
        ),
    )
    .unwrap();
    let cfg = base(&s, "", &gate, &c);
    let d = Daemon::start(s, &cfg);
    d.wait_log("gate door: record unreadable; stopping it", 5 * SEC);
    d.wait_log("gate ghost recorded open but no longer configured", 5 * SEC);
    let stops = PathBuf::from(format!("{}.stops", open.display()));
    assert_eq!(wait_file(&stops, 5 * SEC).trim(), "stopped");
    assert!(!open.exists());
    // Start-up rewrites the file once every record has been dealt with.
    let end = Instant::now() + 5 * SEC;
    while state_text(&d).contains("name=") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = state_text(&d);
    assert!(!text.contains("name="), "{text}");
    c.fires(&d);
}

// Goal: a state file that cannot be read at all (a directory in its
// place) stops every gate at start-up; since it cannot be rewritten
// either, gates refuse to open ("failed", stop run) while plain actions
// keep working.
#[test]
fn unreadable_state_file_stops_every_gate() {
    let s = Scratch::new("statedir");
    let c = canary(&s);
    let (k, b) = key();
    let (gate, open) = door(&s, "door", &b, "1h");
    std::fs::write(&open, b"").unwrap();
    std::fs::create_dir_all(s.path("state").join("gates.state")).unwrap();
    std::fs::write(s.path("state").join("gates.state").join("x"), b"").unwrap();
    let cfg = base(&s, "", &gate, &c);
    let d = Daemon::start(s, &cfg);
    d.wait_log("unreadable", 5 * SEC);
    d.wait_log("stopping every gate", 5 * SEC);
    let stops = PathBuf::from(format!("{}.stops", open.display()));
    assert_eq!(wait_file(&stops, 5 * SEC).trim(), "stopped");
    d.wait_log("gates will refuse to open", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Failed));
    d.wait_log("closing it now", 5 * SEC);
    assert!(!open.exists());
    c.fires(&d);
}

// Goal: a hold_while program deleted while its gate is open: at the
// deadline posternd logs that it could not start it and closes the gate
// on time rather than holding it open.
#[test]
fn hold_while_program_missing_closes_on_time() {
    let s = Scratch::new("nohold");
    let c = canary(&s);
    let (k, b) = key();
    let (gate, open) = door(&s, "door", &b, "1s");
    let hold = s.path("busy.sh");
    script(&hold, "exit 0");
    let gate = format!(
        "{gate}hold_while = [\"{}\"]\nhold_interval = \"5s\"\n",
        hold.display()
    );
    let cfg = base(&s, "", &gate, &c);
    let d = Daemon::start(s, &cfg);
    let t0 = Instant::now();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    std::fs::remove_file(&hold).unwrap();
    d.wait_log("gate door hold_while failed to start", 5 * SEC);
    d.wait_log("gate door closed (deadline)", 5 * SEC);
    assert!(
        t0.elapsed() < 4 * SEC,
        "held past its deadline: {:?}",
        t0.elapsed()
    );
    assert!(!open.exists());
    c.fires(&d);
}

// Goal: an [on_lockout] program deleted after load: the lockout still
// happens and is logged, the failure to start the program is logged, and
// the daemon keeps serving everybody else.
#[test]
fn on_lockout_program_missing() {
    let s = Scratch::new("nolockcmd");
    let c = canary(&s);
    let prog = s.path("report.sh");
    script(&prog, "true");
    let cfg = format!(
        "{}[on_lockout]\nrun = [\"{}\", \"{{addr}}\"]\n[limits]\nlockout_after = 1\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n{}",
        daemon_table(&s),
        prog.display(),
        c.table
    );
    let d = Daemon::start(s, &cfg);
    std::fs::remove_file(&prog).unwrap();
    let (bad, _) = key();
    let src = Some("127.0.0.66".parse().unwrap());
    assert_eq!(trigger_from(d.addr(), src, &bad, None), Outcome::NoAck);
    d.wait_log("lockout src=127.0.0.66", 5 * SEC);
    let line = d.wait_log("on_lockout failed to start", 5 * SEC);
    assert!(line.contains(&prog.display().to_string()), "{line}");
    assert_eq!(
        trigger_from(d.addr(), src, &c.key, None),
        Outcome::NoGreeting
    );
    c.fires(&d);
}

// Goal: start-up fails closed, with exit status 1 and a message saying
// what to fix, when a listener's port is taken, when the state directory
// cannot be created, and when the config is invalid.
#[test]
fn startup_failures_exit_nonzero_with_a_message() {
    let s = Scratch::new("startfail");
    let c = canary(&s);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(s.path("afile"), b"").unwrap();
    let cases = [
        (
            "port",
            base(&s, "", "", &c).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
            format!("cannot listen on 127.0.0.1:{port}"),
        ),
        (
            "state",
            format!(
                "[daemon]\nstate_dir = \"{}/sub/state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n{}",
                s.path("afile").display(),
                c.table
            ),
            "cannot create it".to_string(),
        ),
        (
            "config",
            "[[listen]]\naddress = \"127.0.0.1:0\"\n".to_string(),
            "fix the config".to_string(),
        ),
    ];
    for (what, cfg, want) in cases {
        let path = s.path(&format!("{what}.toml"));
        write_private(&path, &cfg);
        let mut child = std::process::Command::new(posternd_bin())
            .arg("--config")
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + 10 * SEC;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("{what}: posternd did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(&want), "{what}: {err}");
    }
    drop(taken);
}

// Goal: a reload (SIGHUP) whose new listener cannot be bound is refused
// as a whole: the running config, its listeners and its actions stay.
#[test]
fn reload_that_cannot_bind_keeps_the_running_config() {
    let s = Scratch::new("reloadbind");
    let c = canary(&s);
    let cfg = base(&s, "", "", &c);
    let d = Daemon::start(s, &cfg);
    let port = d.addr().port();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let (k2, b2) = key();
    let new = cfg.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + &format!(
            "[[listen]]\naddress = \"127.0.0.1:{busy}\"\n[[action]]\nname = \"new\"\nkey = \"{b2}\"\nrun = [\"/bin/true\"]\n"
        );
    d.rewrite(&new);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let line = d.wait_log("reload failed", 5 * SEC);
    assert!(line.contains(&format!("127.0.0.1:{busy}")), "{line}");
    assert_eq!(
        trigger(d.addr(), &k2),
        Outcome::NoAck,
        "the new action is not live"
    );
    c.fires(&d);
    drop(taken);
    // Once the port is free, the same reload goes through.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reloaded", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k2), Outcome::Ack(Status::Started));
    c.fires(&d);
}

// Goal: syslog that works, goes away, and comes back (root: a private
// mount namespace with its own /dev, holding a socket this test serves):
// lines arrive as syslog datagrams; while the socket is gone they go to
// stderr, announced once; when it is back they go to syslog again.
#[test]
fn syslog_goes_away_and_comes_back() {
    if !require_root("syslog_goes_away_and_comes_back") {
        return;
    }
    use std::os::unix::net::UnixDatagram;
    let s = Scratch::new("syslogflap");
    let c = canary(&s);
    let sock = s.path("log.sock");
    let server = UnixDatagram::bind(&sock).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = base(
        &s,
        "log = \"syslog\"\nsyslog_facility = \"local3\"\n",
        "",
        &c,
    );
    let olddev = s.path("olddev");
    std::fs::create_dir_all(&olddev).unwrap();
    let setup = format!(
        "mount --bind /dev {o}; mount -t tmpfs -o mode=755 postern-dev /dev; \
         for f in null zero urandom random; do touch /dev/$f; mount --bind {o}/$f /dev/$f; done; \
         ln -s {sock} /dev/log",
        o = olddev.display(),
        sock = sock.display()
    );
    // start_wrapped waits for "started" on stderr, which syslog takes:
    // read it from the socket instead.
    let wrapper: Vec<String> = vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        format!("set -e; {setup}; exec \"$@\""),
        "sh".into(),
    ];
    let path = s.path("posternd.toml");
    write_private(&path, &cfg);
    let mut child = KillOnDrop(
        std::process::Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(posternd_bin())
            .arg("--config")
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let sink = std::sync::Arc::clone(&stderr_lines);
        let err = child.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
    }
    let recv_until = |needle: &str| -> String {
        let end = Instant::now() + 10 * SEC;
        let mut buf = [0u8; 2048];
        loop {
            assert!(Instant::now() < end, "no syslog line with {needle:?}");
            if let Ok(n) = server.recv(&mut buf) {
                let line = String::from_utf8_lossy(&buf[..n]).to_string();
                if line.contains(needle) {
                    return line;
                }
            }
        }
    };
    let started = recv_until("started version=");
    // local3 (19) * 8 + notice (5) = 157.
    assert!(started.starts_with("<157>posternd["), "{started}");
    let listen: std::net::SocketAddr = {
        let a = started.split("listeners=[").nth(1).unwrap();
        a[..a.find('(').unwrap()].parse().unwrap()
    };
    assert_eq!(trigger(listen, &c.key), Outcome::Ack(Status::Started));
    recv_until("ok src=127.0.0.1");
    // The syslog daemon goes away.
    drop(server);
    std::fs::remove_file(&sock).unwrap();
    for _ in 0..2 {
        assert_eq!(trigger(listen, &c.key), Outcome::Ack(Status::Started));
    }
    let end = Instant::now() + 5 * SEC;
    while stderr_lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("ok src="))
        .count()
        < 2
    {
        assert!(Instant::now() < end, "{:?}", stderr_lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let fallbacks = stderr_lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("unavailable; writing to stderr"))
        .count();
    assert_eq!(fallbacks, 1);
    // And comes back.
    let server = UnixDatagram::bind(&sock).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(trigger(listen, &c.key), Outcome::Ack(Status::Started));
    let end = Instant::now() + 10 * SEC;
    let mut buf = [0u8; 2048];
    let mut back = false;
    while !back && Instant::now() < end {
        if let Ok(n) = server.recv(&mut buf) {
            back = String::from_utf8_lossy(&buf[..n]).contains("ok src=127.0.0.1");
        }
    }
    assert!(back, "syslog not used again once it returned");
    drop(child);
}

/// Stops a posternd started by hand (SIGTERM, then SIGKILL), even when
/// the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + 5 * SEC;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
