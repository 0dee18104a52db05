//! postern-2 behaviour against the real daemon: what the ack says and
//! when, across reloads, slow gates, cooldowns and asserted addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use common::*;
use postern::mac::MacKey;
use postern::secret::Key;
use postern::wire::{self, Answer, Reason, Status, ACK_LEN, GREETING_LEN};

const SEC: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A connection that has its greeting and waits to send its reply.
struct Half {
    c: TcpStream,
    g: [u8; GREETING_LEN],
}

fn greeted(d: &Daemon) -> Half {
    let mut c = connect(d.addr(), None);
    let g = read_greeting(&mut c).expect("a greeting");
    Half { c, g }
}

impl Half {
    /// Sends the reply for `key` and reads the ack (or the close).
    fn finish(mut self, key: &Key, asserted: Option<IpAddr>) -> Option<Answer> {
        let mk = MacKey::new(key.expose());
        let r = wire::reply(&mk, &self.g, asserted);
        self.c.write_all(&r).unwrap();
        self.c.set_read_timeout(Some(60 * SEC)).unwrap();
        let rest = drain(&mut self.c);
        if rest.is_empty() {
            return None;
        }
        let ack: [u8; ACK_LEN] = rest.try_into().expect("an ack of 38 bytes");
        Some(wire::verify_ack(&mk, &self.g, &r, &ack).expect("a verified ack"))
    }
}

fn plain(s: &Scratch, b: &str, extra: &str) -> String {
    format!(
        "{}[limits]\nhandshake_timeout = \"30s\"\nexempt = [\"127.0.0.0/8\"]\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"one\"\nkey = \"{b}\"\nsingle_instance = false\nrun = [\"/bin/sh\", \"-c\", \"echo {{addr}} >> {out}\"]\n{extra}",
        daemon_table(s),
        out = s.path("one.out").display()
    )
}

// Goal: a handshake that began before a reload whose config leaves its
// action the same is served after it (it used to be refused); one whose
// action changed is refused with reason config-changed and runs nothing.
#[test]
fn trigger_across_a_reload() {
    let s = Scratch::new("p2-reload");
    let (k, b) = key();
    let out = s.path("one.out");
    let base = plain(&s, &b, "");
    let d = Daemon::start(s, &base);
    let fixed = base.replace("127.0.0.1:0", &d.addr().to_string());
    d.rewrite(&fixed);

    let h = greeted(&d);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_n("reloaded", 1, 5 * SEC);
    assert_eq!(h.finish(&k, None), Some(Answer::bare(Status::Started)));
    assert_eq!(wait_file(&out, 5 * SEC).trim(), "127.0.0.1");

    let h = greeted(&d);
    d.rewrite(&fixed.replace("echo {addr}", "echo changed {addr}"));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_n("reloaded", 2, 5 * SEC);
    assert_eq!(
        h.finish(&k, None),
        Some(Answer::because(Status::Refused, Reason::ConfigChanged))
    );
    d.wait_log("reason=config-changed", 5 * SEC);
    assert_eq!(line_count(&out), 1, "the changed action did not run");
}

// Goal: a second trigger that arrives while a gate's slow `run` is still
// running waits for that run and reports its outcome: when the run fails,
// both triggers are told "failed: run-failed", not "already active", and
// the run ran once.
#[test]
fn trigger_during_a_slow_run_waits_for_its_outcome() {
    let s = Scratch::new("p2-slow");
    let (k, b) = key();
    let started = s.path("started");
    let release = s.path("release");
    let runs = s.path("runs");
    let run = format!(
        "echo x >> {runs}; echo up > {started}; while [ ! -e {release} ]; do /bin/sleep 0.02; done; exit 1",
        runs = runs.display(),
        started = started.display(),
        release = release.display()
    );
    let config = format!(
        "{}[limits]\nhandshake_timeout = \"30s\"\nexempt = [\"127.0.0.0/8\"]\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\nrun = [\"/bin/sh\", \"-c\", \"{run}\"]\nstop = [\"/bin/true\"]\nttl = \"1m\"\ntimeout = \"30s\"\n",
        daemon_table(&s)
    );
    let d = Daemon::start(s, &config);
    let first = {
        let h = greeted(&d);
        let k = Key::from_bytes(*k.expose());
        std::thread::spawn(move || h.finish(&k, None))
    };
    wait_file(&started, 10 * SEC);
    let second = {
        let h = greeted(&d);
        let k = Key::from_bytes(*k.expose());
        std::thread::spawn(move || h.finish(&k, None))
    };
    d.wait_log("this trigger waits for the outcome", 10 * SEC);
    std::fs::write(&release, "").unwrap();
    let failed = Some(Answer::because(Status::Failed, Reason::RunFailed));
    assert_eq!(first.join().unwrap(), failed);
    assert_eq!(second.join().unwrap(), failed);
    assert_eq!(line_count(&runs), 1, "the run ran once");
}

// Goal: with a gate open for address A, a trigger for B is refused with
// reason open-for-other-address and the seconds until it closes (nothing
// is done for B); a trigger for A is "already active" with its seconds.
#[test]
fn gate_open_for_another_address() {
    let s = Scratch::new("p2-other");
    let (k, b) = key();
    let log = s.path("runs");
    let config = format!(
        "{}[limits]\nexempt = [\"127.0.0.0/8\"]\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\nrun = [\"/bin/sh\", \"-c\", \"echo {{addr}} >> {log}\"]\nstop = [\"/bin/true\"]\nttl = \"10m\"\n",
        daemon_table(&s),
        log = log.display()
    );
    let d = Daemon::start(s, &config);
    let a = Some(ip("192.0.2.10"));
    let got = exchange(d.addr(), None, &k, a);
    let Exchange::Ack(first) = got else {
        panic!("{got:?}")
    };
    assert_eq!(first.status, Status::Started);
    assert!((599..=600).contains(&first.seconds), "{first:?}");
    let Exchange::Ack(other) = exchange(d.addr(), None, &k, Some(ip("192.0.2.20"))) else {
        panic!("no ack")
    };
    assert_eq!(
        (other.status, other.reason),
        (Status::Refused, Reason::OpenForOther)
    );
    assert!((590..=600).contains(&other.seconds), "{other:?}");
    let Exchange::Ack(same) = exchange(d.addr(), None, &k, a) else {
        panic!("no ack")
    };
    assert_eq!(
        (same.status, same.reason),
        (Status::AlreadyActive, Reason::None)
    );
    assert!((590..=600).contains(&same.seconds), "{same:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "192.0.2.10\n");
}

// Goal: a trigger inside the action's cooldown is refused with reason
// cooldown and the seconds until a retry can succeed.
#[test]
fn cooldown_says_when_to_retry() {
    let s = Scratch::new("p2-cool");
    let (k, b) = key();
    let d = Daemon::start(
        Scratch::new("p2-cool-d"),
        &plain(&s, &b, "cooldown = \"1m\"\n"),
    );
    assert_eq!(
        exchange(d.addr(), None, &k, None),
        Exchange::Ack(Answer::bare(Status::Started))
    );
    let Exchange::Ack(a) = exchange(d.addr(), None, &k, None) else {
        panic!("no ack")
    };
    assert_eq!((a.status, a.reason), (Status::Refused, Reason::Cooldown));
    assert!((50..=60).contains(&a.seconds), "{a:?}");
}

// Goal: the server refuses to act for an unspecified, broadcast,
// multicast, link-local or IPv4-compatible asserted address (and the
// IPv4-mapped forms), with reason address-not-allowed: nothing runs, and
// it is not counted as a failure.
#[test]
fn unusable_asserted_addresses_are_refused() {
    let s = Scratch::new("p2-addr");
    let (k, b) = key();
    let out = s.path("one.out");
    let config = plain(&s, &b, "");
    let d = Daemon::start(s, &config);
    for a in [
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "ff02::1",
        "::ffff:0.0.0.0",
        "::ffff:239.1.2.3",
        "::192.0.2.1",
        "fe80::1",
    ] {
        assert_eq!(
            exchange(d.addr(), None, &k, Some(ip(a))),
            Exchange::Ack(Answer::because(Status::Refused, Reason::AddressNotAllowed)),
            "{a}"
        );
    }
    assert!(!out.exists(), "nothing ran");
    assert_eq!(d.count("fail src="), 0);
    assert_eq!(
        exchange(d.addr(), None, &k, Some(ip("192.0.2.1"))),
        Exchange::Ack(Answer::bare(Status::Started))
    );
    assert_eq!(wait_file(&out, 5 * SEC).trim(), "192.0.2.1");
}

// Goal: a peer that closes right after the greeting without a byte (a
// client on the wrong protocol) is logged as noreply and never counts
// towards lockout; one byte and a close still does.
#[test]
fn close_after_the_greeting_is_not_counted() {
    let s = Scratch::new("p2-noreply");
    let (k, b) = key();
    let config = format!(
        "{}[limits]\nlockout_after = 2\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"one\"\nkey = \"{b}\"\nsingle_instance = false\nrun = [\"/bin/true\"]\n",
        daemon_table(&s)
    );
    let d = Daemon::start(s, &config);
    for _ in 0..5 {
        let mut c = connect(d.addr(), None);
        read_greeting(&mut c).expect("greeted");
        drop(c);
    }
    d.wait_log_n("noreply src=127.0.0.1", 5, 5 * SEC);
    assert_eq!(d.count("lockout src="), 0);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    for _ in 0..2 {
        let mut c = connect(d.addr(), None);
        read_greeting(&mut c).expect("greeted");
        c.write_all(&[0]).unwrap();
        drop(c);
    }
    d.wait_log("lockout src=127.0.0.1", 5 * SEC);
}

// Goal: the ack for a gate comes within the protocol's ack deadline
// because --check refuses a gate whose run timeout could exceed it.
#[test]
fn check_bounds_a_gates_run_timeout() {
    let s = Scratch::new("p2-gate-timeout");
    let (_, b) = key();
    let cfg = |t: &str| {
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\nstop = [\"/bin/true\"]\nttl = \"1m\"\ntimeout = \"{t}\"\n"
        )
    };
    let ok = s.path("ok.toml");
    write_private(&ok, &cfg("2m"));
    assert!(check_config(&ok).status.success());
    let bad = s.path("bad.toml");
    write_private(&bad, &cfg("121s"));
    let out = check_config(&bad);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("action[1].timeout") && text.contains("at most 120s"),
        "{text}"
    );
}
