//! Per-address gates (`per_address`, `max_addresses`) and closing actions
//! (`closes`): each address has its own instance, deadline, extension,
//! record and close; a closing action closes one instance now. Uses
//! harmless commands that keep one file per open address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use postern::secret::Key;
use postern::wire::{Reason, Status};

const SEC: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const A: &str = "192.0.2.1";
const B: &str = "192.0.2.2";
const C: &str = "192.0.2.3";

/// A per-address door ("door", at most 2 addresses) whose run and stop
/// keep one file per address and log each call, its closing action
/// ("door.close"), a door that is one gate ("one") and its closing action.
struct Doors {
    door: Key,
    close: Key,
    one: Key,
    one_close: Key,
    config: String,
}

fn doors(s: &Scratch, ttl: &str, extra: &str) -> Doors {
    let (door, b1) = key();
    let (close, b2) = key();
    let (one, b3) = key();
    let (one_close, b4) = key();
    let dir = s.path("open");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.display();
    let log = s.path("calls").display().to_string();
    let config = format!(
        "{daemon}[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"door\"\nkey = \"{b1}\"\n\
         run = [\"/bin/sh\", \"-c\", \"touch {dir}/$1; echo run $1 >> {log}\", \"run\", \"{{addr}}\"]\n\
         stop = [\"/bin/sh\", \"-c\", \"rm -f {dir}/$1; echo stop $1 >> {log}\", \"stop\", \"{{addr}}\"]\n\
         stop_all = [\"/bin/sh\", \"-c\", \"rm -f {dir}/*; echo stop_all >> {log}\"]\n\
         ttl = \"{ttl}\"\nper_address = true\nmax_addresses = 2\n{extra}\
         [[action]]\nname = \"door.close\"\nkey = \"{b2}\"\ncloses = \"door\"\n\
         [[action]]\nname = \"one\"\nkey = \"{b3}\"\n\
         run = [\"/bin/sh\", \"-c\", \"echo run-one >> {log}\"]\n\
         stop = [\"/bin/sh\", \"-c\", \"echo stop-one >> {log}\"]\nttl = \"1m\"\n\
         [[action]]\nname = \"one.close\"\nkey = \"{b4}\"\ncloses = \"one\"\n",
        daemon = daemon_table(s),
    );
    Doors {
        door,
        close,
        one,
        one_close,
        config,
    }
}

/// The ack for `key` asserting `addr`.
fn ask(d: &Daemon, key: &Key, addr: &str) -> postern::wire::Answer {
    match exchange(d.addr(), None, key, Some(ip(addr))) {
        Exchange::Ack(a) => a,
        other => panic!("no ack for {addr}: {other:?}"),
    }
}

fn calls(s: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(s)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn state_of(d: &Daemon) -> String {
    std::fs::read_to_string(d.scratch.path("state").join("gates.state")).unwrap_or_default()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// Goal: two addresses each get their own instance of a per-address gate
// (not "open for another address"), each recorded in the state file, each
// extended and closed on its own deadline with its own {addr}; a third
// address past max_addresses is refused "addresses-full" with the seconds
// until the first closes, and may open once one has closed.
#[test]
fn each_address_has_its_own_instance() {
    let s = Scratch::new("doors-own");
    let g = doors(&s, "2s", "max_open = \"5s\"\n");
    let open = s.path("open");
    let log = s.path("calls");
    let d = Daemon::start(s, &g.config);
    let t0 = Instant::now();
    let a = ask(&d, &g.door, A);
    assert_eq!((a.status, a.seconds), (Status::Started, 2), "{a:?}");
    let b = ask(&d, &g.door, B);
    assert_eq!(b.status, Status::Started, "{b:?}");
    assert!(open.join(A).exists() && open.join(B).exists());
    let st = state_of(&d);
    for addr in [A, B] {
        assert!(
            st.contains(&format!("addr={addr} cgroup="))
                && st
                    .lines()
                    .any(|l| l.contains(&format!("addr={addr} ")) && l.ends_with(" per=address")),
            "{st}"
        );
    }
    assert_eq!(
        st.lines()
            .filter(|l| l.starts_with("gate name=door "))
            .count(),
        2,
        "{st}"
    );
    // Full: a third address is refused, and told when the first closes.
    let c = ask(&d, &g.door, C);
    assert_eq!(
        (c.status, c.reason),
        (Status::Refused, Reason::AddressesFull),
        "{c:?}"
    );
    assert!((1..=2).contains(&c.seconds), "{c:?}");
    assert!(!open.join(C).exists());
    // A's instance is extended; B's is not.
    std::thread::sleep(Duration::from_millis(1000));
    let again = ask(&d, &g.door, A);
    assert_eq!(again.status, Status::AlreadyActive, "{again:?}");
    d.wait_log(&format!("gate door@{A} extended"), 5 * SEC);
    d.wait_log(&format!("gate door@{B} closed (deadline)"), 10 * SEC);
    let b_closed = t0.elapsed();
    assert!(open.join(A).exists(), "A closed with B");
    assert!(!open.join(B).exists());
    // With B's instance gone, C has room.
    assert_eq!(ask(&d, &g.door, C).status, Status::Started);
    d.wait_log(&format!("gate door@{A} closed (deadline)"), 10 * SEC);
    let a_closed = t0.elapsed();
    assert!(
        b_closed >= Duration::from_millis(1900) && a_closed >= Duration::from_millis(2900),
        "B closed after {b_closed:?}, A after {a_closed:?}"
    );
    assert!(!open.join(A).exists());
    d.wait_log(&format!("gate door@{C} closed (deadline)"), 10 * SEC);
    let mut got = calls(&log);
    got.sort();
    assert_eq!(
        got,
        [
            format!("run {A}"),
            format!("run {B}"),
            format!("run {C}"),
            format!("stop {A}"),
            format!("stop {B}"),
            format!("stop {C}"),
        ],
        "every instance opened and closed exactly once, with its own address"
    );
    assert!(!state_of(&d).contains("name=door "), "{}", state_of(&d));
}

// Goal: a closing action closes the requesting address's instance now,
// through the gate's stop, and answers "closed"; the other address's
// instance stays open; closing again, or an address never opened, answers
// "not-open" and runs nothing; the closed address may open again.
#[test]
fn closing_action_closes_one_address_now() {
    let s = Scratch::new("doors-close");
    let g = doors(&s, "1m", "");
    let open = s.path("open");
    let log = s.path("calls");
    let d = Daemon::start(s, &g.config);
    assert_eq!(ask(&d, &g.door, A).status, Status::Started);
    assert_eq!(ask(&d, &g.door, B).status, Status::Started);
    let t0 = Instant::now();
    let closed = ask(&d, &g.close, A);
    assert_eq!(closed.status, Status::Closed, "{closed:?}");
    assert!(t0.elapsed() < 5 * SEC, "the close waited for something");
    // Acked after the stop ran, so the file is already gone.
    assert!(!open.join(A).exists(), "closed, but A's stop did not run");
    assert!(open.join(B).exists(), "closing A closed B");
    d.wait_log(&format!("gate door@{A} closed (closing action)"), 5 * SEC);
    let st = state_of(&d);
    assert!(!st.contains(&format!("addr={A} ")), "{st}");
    assert!(st.contains(&format!("addr={B} ")), "{st}");
    assert_eq!(ask(&d, &g.close, A).status, Status::NotOpen);
    assert_eq!(ask(&d, &g.close, C).status, Status::NotOpen);
    assert_eq!(ask(&d, &g.door, B).status, Status::AlreadyActive);
    let stops: Vec<String> = calls(&log)
        .into_iter()
        .filter(|l| l.starts_with("stop"))
        .collect();
    assert_eq!(stops, [format!("stop {A}")]);
    // The log names the closing action and its status.
    d.wait_log(
        &format!("action=door.close addr={A} status=closed"),
        5 * SEC,
    );
    d.wait_log(
        &format!("action=door.close addr={C} status=not-open"),
        5 * SEC,
    );
    // Open again after an early close.
    assert_eq!(ask(&d, &g.door, A).status, Status::Started);
    assert!(open.join(A).exists());
}

// Goal: a closing action for a gate that is one gate (not per address)
// closes it only for the address it is open for: from another address it
// is refused "open-for-other-address", as a trigger would be, and nothing
// is stopped.
#[test]
fn closing_a_single_gate_respects_its_address() {
    let s = Scratch::new("doors-one");
    let g = doors(&s, "1m", "");
    let log = s.path("calls");
    let d = Daemon::start(s, &g.config);
    assert_eq!(ask(&d, &g.one, A).status, Status::Started);
    let other = ask(&d, &g.one_close, B);
    assert_eq!(
        (other.status, other.reason),
        (Status::Refused, Reason::OpenForOther),
        "{other:?}"
    );
    assert!(!calls(&log).iter().any(|l| l == "stop-one"));
    assert_eq!(ask(&d, &g.one_close, A).status, Status::Closed);
    assert_eq!(
        calls(&log).iter().filter(|l| *l == "stop-one").count(),
        1,
        "{:?}",
        calls(&log)
    );
    assert_eq!(ask(&d, &g.one_close, A).status, Status::NotOpen);
    d.wait_log("gate one closed (closing action)", 5 * SEC);
}

// Goal: start-up recovery closes each recorded instance exactly, with its
// own address: an unexpired one is re-armed and closes at its deadline, an
// expired one is stopped at once, a record of one gate that is now per
// address is stopped with its recorded address; stop_all (and so no
// address) is never used, and no made-up address appears.
#[test]
fn recovery_closes_each_instance_exactly() {
    let s = Scratch::new("doors-recover");
    let g = doors(&s, "1m", "");
    let now = unix_now();
    std::fs::create_dir_all(s.path("state")).unwrap();
    for addr in [A, B, C] {
        std::fs::write(s.path("open").join(addr), b"").unwrap();
    }
    std::fs::write(
        s.path("state").join("gates.state"),
        format!(
            "gate name=door kind=run pid=0 start=- boot=- opened={now} deadline={} addr={A} cgroup=- per=address\n\
             gate name=door kind=run pid=0 start=- boot=- opened={} deadline={} addr={B} cgroup=- per=address\n\
             gate name=door kind=run pid=0 start=- boot=- opened={now} deadline={} addr={C} cgroup=- per=gate\n",
            now + 2,
            now - 100,
            now - 40,
            now + 60
        ),
    )
    .unwrap();
    let open = s.path("open");
    let log = s.path("calls");
    let d = Daemon::start(s, &g.config);
    d.wait_log(
        &format!("gate door@{B} expired while posternd was down"),
        5 * SEC,
    );
    d.wait_log(
        "gate door recorded as one gate, now configured per address",
        5 * SEC,
    );
    d.wait_log(&format!("gate door@{A} re-armed"), 5 * SEC);
    assert!(!open.join(B).exists() && !open.join(C).exists());
    assert!(
        open.join(A).exists(),
        "the unexpired instance was closed early"
    );
    d.wait_log(&format!("gate door@{A} closed (deadline)"), 10 * SEC);
    assert!(!open.join(A).exists());
    let mut got = calls(&log);
    got.sort();
    assert_eq!(
        got,
        [
            format!("stop {A}"),
            format!("stop {B}"),
            format!("stop {C}")
        ]
    );
    assert!(!d.lines().iter().any(|l| l.contains("0.0.0.0")));
}

// Goal: after SIGKILL of posternd, a restart re-arms every open instance
// from the state file and each closes at its own deadline with its own
// address, exactly once.
#[test]
fn crash_and_restart_close_each_instance() {
    let s = Scratch::new("doors-crash");
    let g = doors(&s, "3s", "extend = false\n");
    let open = s.path("open");
    let log = s.path("calls");
    let mut d = Daemon::start(s, &g.config);
    let t0 = Instant::now();
    assert_eq!(ask(&d, &g.door, A).status, Status::Started);
    assert_eq!(ask(&d, &g.door, B).status, Status::Started);
    d.child.kill().unwrap();
    let _ = d.child.wait();
    assert!(open.join(A).exists() && open.join(B).exists());
    let scratch = std::mem::replace(&mut d.scratch, Scratch::new("doors-crash-old"));
    drop(d);
    let d2 = Daemon::start(scratch, &g.config);
    d2.wait_log(&format!("gate door@{A} re-armed"), 5 * SEC);
    d2.wait_log(&format!("gate door@{B} re-armed"), 5 * SEC);
    d2.wait_log(&format!("gate door@{A} closed (deadline)"), 10 * SEC);
    d2.wait_log(&format!("gate door@{B} closed (deadline)"), 10 * SEC);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2000) && took < 8 * SEC,
        "{took:?}"
    );
    assert!(!open.join(A).exists() && !open.join(B).exists());
    let mut got = calls(&log);
    got.sort();
    assert_eq!(
        got,
        [
            format!("run {A}"),
            format!("run {B}"),
            format!("stop {A}"),
            format!("stop {B}")
        ]
    );
}

// Goal: a reload that makes a per-address gate one gate closes its open
// instances at once, each with its own address, so that no address is
// ever open under two keys; the gate then opens as one gate.
#[test]
fn reload_changing_per_address_closes_instances() {
    let s = Scratch::new("doors-reload");
    let g = doors(&s, "1m", "");
    let open = s.path("open");
    let log = s.path("calls");
    let d = Daemon::start(s, &g.config);
    assert_eq!(ask(&d, &g.door, A).status, Status::Started);
    assert_eq!(ask(&d, &g.door, B).status, Status::Started);
    let one_gate = g
        .config
        .replace("per_address = true\nmax_addresses = 2\n", "");
    assert_ne!(one_gate, g.config);
    d.rewrite(&one_gate);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reloaded", 5 * SEC);
    for addr in [A, B] {
        d.wait_log(
            &format!("gate door@{addr} closed (per_address changed by a reload)"),
            5 * SEC,
        );
        assert!(!open.join(addr).exists(), "{addr} still open");
    }
    assert_eq!(ask(&d, &g.door, A).status, Status::Started);
    let b = ask(&d, &g.door, B);
    assert_eq!(
        (b.status, b.reason),
        (Status::Refused, Reason::OpenForOther)
    );
    let mut got = calls(&log);
    got.sort();
    assert_eq!(
        got,
        [
            format!("run {A}"),
            format!("run {A}"),
            format!("run {B}"),
            format!("stop {A}"),
            format!("stop {B}"),
        ]
    );
}

// Goal: a closing action that comes while `hold_while` runs does not wait
// for it: the check is stopped (its process group killed), `stop` runs,
// and the ack comes at once, not when the check would have ended.
#[test]
fn closing_during_hold_while_stops_the_check() {
    let s = Scratch::new("doors-hold");
    let (door, b1) = key();
    let (close, b2) = key();
    let checking = s.path("checking");
    let open = s.path("open");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"door\"\nkey = \"{b1}\"\n\
         run = [\"/bin/sh\", \"-c\", \"touch {o}\"]\nstop = [\"/bin/sh\", \"-c\", \"rm -f {o}\"]\n\
         ttl = \"1s\"\nmax_open = \"2m\"\ntimeout = \"60s\"\nhold_interval = \"60s\"\n\
         hold_while = [\"/bin/sh\", \"-c\", \"echo $$ > {c}; exec sleep 50\"]\n\
         [[action]]\nname = \"door.close\"\nkey = \"{b2}\"\ncloses = \"door\"\n",
        daemon_table(&s),
        o = open.display(),
        c = checking.display()
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &door), Outcome::Ack(Status::Started));
    // At the 1 s deadline the check starts, and would run for 50 s.
    let pid: u32 = wait_file(&checking, 5 * SEC).trim().parse().unwrap();
    assert!(pid_alive(pid));
    let t0 = Instant::now();
    assert_eq!(trigger(d.addr(), &close), Outcome::Ack(Status::Closed));
    assert!(t0.elapsed() < 3 * SEC, "took {:?}", t0.elapsed());
    assert!(!open.exists(), "acked closed before stop ran");
    d.wait_log("gate door hold_while stopped (closing action)", 5 * SEC);
    d.wait_log("gate door closed (closing action)", 5 * SEC);
    let end = Instant::now() + 5 * SEC;
    while pid_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pid_alive(pid), "the hold_while check outlived the close");
    assert_eq!(trigger(d.addr(), &door), Outcome::Ack(Status::Started));
}

// Goal: a trigger that extends a gate while its `hold_while` check runs
// keeps it open even when that check then fails: the gate closes at the
// extended deadline (after a second check), not when the first check
// ends.
#[test]
fn extension_during_a_failing_hold_while_holds() {
    let s = Scratch::new("doors-holdext");
    let (door, b1) = key();
    let checks = s.path("checks");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"door\"\nkey = \"{b1}\"\n\
         run = [\"/bin/true\"]\nstop = [\"/bin/true\"]\n\
         ttl = \"4s\"\nmax_open = \"2m\"\nhold_interval = \"30s\"\n\
         hold_while = [\"/bin/sh\", \"-c\", \"echo $$ >> {c}; sleep 2; exit 1\"]\n",
        daemon_table(&s),
        c = checks.display()
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &door), Outcome::Ack(Status::Started));
    // The first check starts at the 4 s deadline and fails 2 s later;
    // the trigger meanwhile moves the deadline 4 s out.
    let _ = wait_file(&checks, 10 * SEC);
    assert_eq!(
        trigger(d.addr(), &door),
        Outcome::Ack(Status::AlreadyActive)
    );
    d.wait_log("gate door extended", 5 * SEC);
    d.wait_log("gate door closed (deadline)", 20 * SEC);
    assert_eq!(
        line_count(&checks),
        2,
        "closed before its extended deadline"
    );
}

// Goal: closing a serve gate early stops its program the way its deadline
// does (SIGTERM to the group, through the timer that holds the child), and
// the ack comes once the program is gone.
#[test]
fn closing_a_serve_gate_stops_its_program() {
    let s = Scratch::new("doors-serve");
    let (svc, b1) = key();
    let (close, b2) = key();
    let pidfile = s.path("serve.pid");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"svc\"\nkey = \"{b1}\"\nserve = [\"/bin/sh\", \"-c\", \"echo $$ > {}; exec sleep 300\"]\nttl = \"1m\"\n\
         [[action]]\nname = \"svc.close\"\nkey = \"{b2}\"\ncloses = \"svc\"\n",
        daemon_table(&s),
        pidfile.display()
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &svc), Outcome::Ack(Status::Started));
    let pid: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    assert!(pid_alive(pid));
    let t0 = Instant::now();
    assert_eq!(trigger(d.addr(), &close), Outcome::Ack(Status::Closed));
    assert!(t0.elapsed() < 2 * SEC, "took {:?}", t0.elapsed());
    assert!(
        !pid_alive(pid),
        "acked closed with the program still running"
    );
    d.wait_log("gate svc closed (closing action)", 5 * SEC);
    assert_eq!(trigger(d.addr(), &close), Outcome::Ack(Status::NotOpen));
    assert!(!state_of(&d).contains("name=svc "), "{}", state_of(&d));
}
