//! Gates: opened by a trigger, closed by a deadline, recorded on disk, and
//! closed after a crash. Uses harmless programs (sleep, files); the real
//! sshd and relay are exercised by tests/e2e.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use postern::wire::Status;

const SEC: Duration = Duration::from_secs(1);

fn serve_config(s: &Scratch, b: &str, ttl: &str, extra: &str) -> String {
    format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"svc\"\nkey = \"{b}\"\nserve = [\"/bin/sh\", \"-c\", \"echo $$ > {pid}; exec sleep 300\"]\nttl = \"{ttl}\"\n{extra}",
        daemon_table(s),
        pid = s.path("serve.pid").display()
    )
}

fn door_config(s: &Scratch, b: &str, ttl: &str, run: &str, extra: &str) -> String {
    format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\nrun = [\"/bin/sh\", \"-c\", \"{run}\"]\nstop = [\"/bin/sh\", \"-c\", \"rm -f {open}; echo stopped >> {log}\"]\nttl = \"{ttl}\"\n{extra}",
        daemon_table(s),
        open = s.path("open").display(),
        log = s.path("stops").display(),
    )
}

fn touch_open(s: &Scratch) -> String {
    format!("touch {}", s.path("open").display())
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

// Goal: a serve gate starts its program on trigger, records it in the
// state file before the ack, and kills it at the deadline.
#[test]
fn serve_gate_opens_and_closes_at_deadline() {
    let s = Scratch::new("serve");
    let (k, b) = key();
    let cfg = serve_config(&s, &b, "1s", "");
    let pidfile = s.path("serve.pid");
    let state = s.path("state").join("gates.state");
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(recorded.contains("gate name=svc kind=serve"), "{recorded}");
    let pid: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    assert!(pid_alive(pid));
    assert!(recorded.contains(&format!("pid={pid}")), "{recorded}");
    d.wait_log("gate svc closed (deadline)", 10 * SEC);
    assert!(
        wait_gone(pid, 5 * SEC),
        "serve program survived its deadline"
    );
    let after = std::fs::read_to_string(&state).unwrap();
    assert!(!after.contains("name=svc"), "{after}");
}

// Goal: a run/stop gate runs `run`, then `stop` at the deadline; a second
// trigger while open answers "already active" and extends the deadline.
#[test]
fn run_stop_gate_extends_then_closes() {
    let s = Scratch::new("door");
    let (k, b) = key();
    // ttl 3 s, extended 1.5 s in: it closes at 4.5 s, not at 3 s. The
    // second trigger has 1.5 s of slack before the first deadline.
    let cfg = door_config(&s, &b, "3s", &touch_open(&s), "max_open = \"10s\"\n");
    let open = s.path("open");
    let d = Daemon::start(s, &cfg);
    let t0 = Instant::now();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert!(open.exists());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::AlreadyActive));
    d.wait_log("gate door extended", 5 * SEC);
    d.wait_log("gate door closed (deadline)", 10 * SEC);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(4400),
        "closed after {took:?}: the extension was ignored"
    );
    assert!(!open.exists());
}

// Goal: a failed start (non-zero exit) answers "failed", runs `stop`, and
// leaves the gate closed.
#[test]
fn failed_start_answers_failed_and_runs_stop() {
    let s = Scratch::new("failstart");
    let (k, b) = key();
    let cfg = door_config(&s, &b, "1m", "exit 3", "");
    let stops = s.path("stops");
    let state = s.path("state").join("gates.state");
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Failed));
    assert_eq!(wait_file(&stops, 5 * SEC).trim(), "stopped");
    let st = std::fs::read_to_string(&state).unwrap_or_default();
    assert!(!st.contains("name=door"), "{st}");
}

// Goal: a serve program that exits early closes its gate, and a serve
// program that cannot stay up answers "failed".
#[test]
fn serve_exit_closes_gate() {
    let s = Scratch::new("serveexit");
    let (k, b) = key();
    let (kdud, b2) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"brief\"\nkey = \"{b}\"\nserve = [\"/bin/sleep\", \"1\"]\nttl = \"1m\"\n\
         [[action]]\nname = \"dud\"\nkey = \"{b2}\"\nserve = [\"/bin/false\"]\nttl = \"1m\"\n",
        daemon_table(&s),

    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &kdud), Outcome::Ack(Status::Failed));
    d.wait_log("gate dud serve pid=", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.wait_log("gate brief serve exited early", 5 * SEC);
    d.wait_log("gate brief closed (serve exited)", 5 * SEC);
}

// Goal: SIGKILL of posternd takes a serve program with it (PDEATHSIG),
// and the next start-up clears the record.
#[test]
fn crash_kills_serve_program() {
    let s = Scratch::new("crashserve");
    let (k, b) = key();
    let cfg = serve_config(&s, &b, "1m", "");
    let pidfile = s.path("serve.pid");
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let pid: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    d.child.kill().unwrap();
    let _ = d.child.wait();
    assert!(wait_gone(pid, 5 * SEC), "serve program outlived posternd");
    let scratch = std::mem::replace(&mut d.scratch, Scratch::new("dummy"));
    drop(d);
    let d2 = Daemon::start(scratch, &cfg);
    d2.wait_log("gate svc (serve) closed at start-up", 5 * SEC);
}

// Goal: a run/stop gate whose deadline passed while posternd was dead is
// stopped within a second of the next start-up.
#[test]
fn crash_then_restart_stops_expired_gate() {
    let s = Scratch::new("crashdoor");
    let (k, b) = key();
    let cfg = door_config(&s, &b, "1s", &touch_open(&s), "");
    let open = s.path("open");
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert!(open.exists());
    d.child.kill().unwrap();
    let _ = d.child.wait();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(open.exists(), "nobody closed it while posternd was dead");
    let scratch = std::mem::replace(&mut d.scratch, Scratch::new("dummy"));
    drop(d);
    let t = Instant::now();
    let d2 = Daemon::start(scratch, &cfg);
    d2.wait_log("expired while posternd was down", 5 * SEC);
    assert!(!open.exists());
    assert!(t.elapsed() < 2 * SEC, "took {:?}", t.elapsed());
}

// Goal: an unexpired run/stop gate is re-armed after a restart and closed
// at its original deadline.
#[test]
fn restart_rearms_unexpired_gate() {
    let s = Scratch::new("rearm");
    let (k, b) = key();
    let cfg = door_config(&s, &b, "3s", &touch_open(&s), "");
    let open = s.path("open");
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let scratch = std::mem::replace(&mut d.scratch, Scratch::new("dummy"));
    drop(d);
    let d2 = Daemon::start(scratch, &cfg);
    d2.wait_log("gate door re-armed", 5 * SEC);
    assert!(open.exists());
    d2.wait_log("gate door closed (deadline)", 10 * SEC);
    assert!(!open.exists());
}

// Goal: a corrupt state file never prevents start-up; it is logged and
// every gate is stopped.
#[test]
fn corrupt_state_file_stops_every_gate() {
    let s = Scratch::new("corrupt");
    let (_k, b) = key();
    let cfg = door_config(&s, &b, "1m", &touch_open(&s), "");
    std::fs::create_dir_all(s.path("state")).unwrap();
    std::fs::write(
        s.path("state").join("gates.state"),
        b"\xff\xfe garbage \x00",
    )
    .unwrap();
    let stops = s.path("stops");
    let d = Daemon::start(s, &cfg);
    d.wait_log("unreadable", 5 * SEC);
    assert_eq!(wait_file(&stops, 5 * SEC).trim(), "stopped");
}

// Goal: hold_while keeps a gate open while it exits 0, and never past
// max_open.
#[test]
fn hold_while_extends_up_to_max_open() {
    let s = Scratch::new("hold");
    let (k, b) = key();
    let busy = s.path("busy");
    let extra = format!(
        "hold_while = [\"/bin/sh\", \"-c\", \"test -e {}\"]\nhold_interval = \"1s\"\nmax_open = \"4s\"\n",
        busy.display()
    );
    let cfg = door_config(&s, &b, "1s", &touch_open(&s), &extra);
    let open = s.path("open");
    std::fs::write(&busy, b"").unwrap();
    let d = Daemon::start(s, &cfg);
    let t0 = Instant::now();
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.wait_log("gate door held open", 5 * SEC);
    d.wait_log("gate door closed (deadline)", 10 * SEC);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_millis(7000),
        "closed after {took:?}"
    );
    assert!(!open.exists());
}

// Goal: a clean shutdown (SIGTERM) stops every open gate.
#[test]
fn clean_shutdown_stops_gates() {
    let s = Scratch::new("stoponexit");
    let (k, b) = key();
    let cfg = door_config(&s, &b, "1m", &touch_open(&s), "");
    let open = s.path("open");
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert!(open.exists());
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let st = d.wait_exit(10 * SEC).expect("exits");
    assert!(st.success());
    assert!(!open.exists());
}

// Goal: a serve program run as another user still dies with posternd (the
// parent-death signal survives the identity switch).
#[test]
fn crash_kills_serve_program_of_other_user() {
    if !require_root("crash_kills_serve_program_of_other_user") {
        return;
    }
    let s = Scratch::new("crashserveuser");
    let (k, b) = key();
    let outdir = s.path("out");
    std::fs::create_dir_all(&outdir).unwrap();
    std::fs::set_permissions(&outdir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pidfile = outdir.join("serve.pid");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"svc\"\nkey = \"{b}\"\nuser = \"nobody\"\nserve = [\"/bin/sh\", \"-c\", \"echo $$ > {}; exec sleep 300\"]\nttl = \"1m\"\n",
        daemon_table(&s),
        pidfile.display()
    );
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let pid: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    d.child.kill().unwrap();
    let _ = d.child.wait();
    assert!(
        wait_gone(pid, 5 * SEC),
        "serve program of another user outlived posternd"
    );
}

// Goal: if a serve program's leader is gone but what it forked survives a
// crash, the next start-up finds them (in the gate's cgroup, which needs
// root) and kills them.
#[test]
fn restart_kills_orphaned_serve_children() {
    if !require_root("restart_kills_orphaned_serve_children") {
        return;
    }
    let s = Scratch::new("orphans");
    let (k, b) = key();
    let pidfile = s.path("child.pid");
    // The leader forks a child that ignores the parent-death signal's
    // reach (it is not the direct child) and then exits on SIGTERM only.
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"svc\"\nkey = \"{b}\"\nserve = [\"/bin/sh\", \"-c\", \"sleep 300 & echo $! > {}; wait\"]\nttl = \"1m\"\n",
        daemon_table(&s),
        pidfile.display()
    );
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let child: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    d.child.kill().unwrap();
    let _ = d.child.wait();
    // The shell (leader) dies with posternd; its `sleep` is orphaned.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pid_alive(child),
        "the grandchild should have survived the crash"
    );
    let scratch = std::mem::replace(&mut d.scratch, Scratch::new("dummy"));
    drop(d);
    let d2 = Daemon::start(scratch, &cfg);
    d2.wait_log(
        "left 1 process(es) by the previous posternd; killed",
        5 * SEC,
    );
    assert!(wait_gone(child, 5 * SEC));
}

// Goal: a recorded deadline beyond the gate's max_open (a stale or edited
// state file) is cut back to max_open from when the gate opened.
#[test]
fn rearm_clamps_recorded_deadline_to_max_open() {
    let s = Scratch::new("clamp");
    let (_k, b) = key();
    let cfg = door_config(&s, &b, "1s", &touch_open(&s), "max_open = \"2s\"\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::create_dir_all(s.path("state")).unwrap();
    std::fs::write(s.path("open"), b"").unwrap();
    std::fs::write(
        s.path("state").join("gates.state"),
        format!(
            "gate name=door kind=run pid=0 start=0 boot=- opened={now} deadline={} addr=127.0.0.1\n",
            now + 3600
        ),
    )
    .unwrap();
    let open = s.path("open");
    let t0 = Instant::now();
    let d = Daemon::start(s, &cfg);
    let line = d.wait_log("gate door re-armed", 5 * SEC);
    assert!(
        line.contains("closes in 1s") || line.contains("closes in 2s"),
        "{line}"
    );
    d.wait_log("gate door closed (deadline)", 10 * SEC);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!open.exists());
}
