//! A key per operator and rotation without lockout, against the real
//! daemon: the ok line names the key, removing a key revokes exactly that
//! operator (also for a reply verified before the reload), a successor
//! overlaps its predecessor until `overlap_until` and no second longer,
//! and a fleet rotates from one master to the next without a lockout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use postern::config::format_utc;
use postern::kdf;
use postern::mac::MacKey;
use postern::secret::{b64_encode, Key};
use postern::wire::{self, Answer, Reason, Status, ACK_LEN, GREETING_LEN};

const SEC: Duration = Duration::from_secs(1);

/// Limits that never lock loopback out: wrong keys are part of every test.
const LIMITS: &str = "[limits]\nhandshake_timeout = \"30s\"\nrate_burst = 1000\nrate_per_minute = 60000\nexempt = [\"127.0.0.0/8\"]\n";

/// One `[[action.key]]` table; `next` is a successor and its window's end.
fn named(name: &str, key: &Key, next: Option<(&Key, SystemTime)>) -> String {
    let mut t = format!(
        "[[action.key]]\nname = \"{name}\"\nkey = \"{}\"\n",
        b64_encode(key.expose())
    );
    if let Some((k, until)) = next {
        t.push_str(&format!(
            "next_key = \"{}\"\noverlap_until = \"{}\"\n",
            b64_encode(k.expose()),
            format_utc(until)
        ));
    }
    t
}

/// A config with action `door` (its keys given as tables) and action
/// `solo` with a single unnamed key; each run appends a line to a file.
fn door_config(s: &Scratch, addr: &str, door_keys: &str, solo: &Key) -> String {
    format!(
        "{}{LIMITS}[[listen]]\naddress = \"{addr}\"\n\
         [[action]]\nname = \"solo\"\nkey = \"{}\"\nsingle_instance = false\nrun = [\"/bin/sh\", \"-c\", \"echo solo >> {out}\"]\n\
         [[action]]\nname = \"door\"\nsingle_instance = false\nrun = [\"/bin/sh\", \"-c\", \"echo door >> {out}\"]\n{door_keys}",
        daemon_table(s),
        b64_encode(solo.expose()),
        out = s.path("runs").display()
    )
}

fn fresh() -> Key {
    Key::generate().unwrap()
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
    /// Sends the reply for `key` and reads the ack (`None`: closed).
    fn finish(mut self, key: &Key) -> Option<Answer> {
        let mk = MacKey::new(key.expose());
        let r = wire::reply(&mk, &self.g, None);
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

/// Whole seconds `secs` or more from now: a window's end.
fn soon(secs: u64) -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(now.as_secs() + secs + 1)
}

/// Waits until the clock has reached `t` (the event is the time itself).
fn wait_until(t: SystemTime) {
    while let Ok(left) = t.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(5));
    }
}

fn ok_line(d: &Daemon, n: usize, action: &str, tail: &str) {
    d.wait_log_n(
        &format!("action={action} addr=127.0.0.1 status=started {tail}"),
        n,
        5 * SEC,
    );
}

// Goal: the ok line names the operator whose key matched (by=NAME), the
// single unnamed key is by=-, and a wrong key is the unchanged fail line.
#[test]
fn the_ok_line_names_the_operator() {
    let s = Scratch::new("keys-named");
    let (alice, bob, solo) = (fresh(), fresh(), fresh());
    let keys = [named("alice", &alice, None), named("bob", &bob, None)].concat();
    let config = door_config(&s, "127.0.0.1:0", &keys, &solo);
    let d = Daemon::start(s, &config);
    assert_eq!(trigger(d.addr(), &alice), Outcome::Ack(Status::Started));
    ok_line(&d, 1, "door", "by=alice");
    assert_eq!(trigger(d.addr(), &bob), Outcome::Ack(Status::Started));
    ok_line(&d, 1, "door", "by=bob");
    assert_eq!(trigger(d.addr(), &solo), Outcome::Ack(Status::Started));
    ok_line(&d, 1, "solo", "by=-");
    assert_eq!(trigger(d.addr(), &fresh()), Outcome::NoAck);
    let fail = d.wait_log("fail src=127.0.0.1", 5 * SEC);
    assert!(
        fail.ends_with("reason=bad-mac failures=0"),
        "fail line changed: {fail}"
    );
    assert_eq!(d.count("by=alice"), 1);
    assert_eq!(d.count("by=bob"), 1);
}

// Goal: removing one key and reloading revokes that operator only: their
// key is refused from then on, including a reply to a greeting sent
// before the reload (verified under the old config, refused by the
// monitor), while the other operator's old-generation reply still runs.
// A key re-keyed under the same name is revoked the same way.
#[test]
fn removing_a_key_revokes_one_operator() {
    let s = Scratch::new("keys-revoke");
    let runs = s.path("runs");
    let (alice, bob, solo) = (fresh(), fresh(), fresh());
    let both = [named("alice", &alice, None), named("bob", &bob, None)].concat();
    let base = door_config(&s, "127.0.0.1:0", &both, &solo);
    let d = Daemon::start(s, &base);
    let addr = d.addr().to_string();
    let cfg = |keys: &str| door_config(&d.scratch, &addr, keys, &solo);
    d.rewrite(&cfg(&both));

    // Greeted under generation 1, answered after alice is removed.
    let (ha, hb) = (greeted(&d), greeted(&d));
    d.rewrite(&cfg(&named("bob", &bob, None)));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_n("reloaded", 1, 5 * SEC);
    assert_eq!(
        ha.finish(&alice),
        Some(Answer::because(Status::Refused, Reason::ConfigChanged)),
        "a reply verified before the reload is not run for a removed key"
    );
    d.wait_log(
        "action door: changed, or key alice removed or changed, by a reload; request refused",
        5 * SEC,
    );
    assert_eq!(hb.finish(&bob), Some(Answer::bare(Status::Started)));
    ok_line(&d, 1, "door", "by=bob");
    assert_eq!(trigger(d.addr(), &alice), Outcome::NoAck);
    d.wait_log("reason=bad-mac", 5 * SEC);
    assert_eq!(trigger(d.addr(), &bob), Outcome::Ack(Status::Started));
    ok_line(&d, 2, "door", "by=bob");
    assert_eq!(d.count("by=alice"), 1, "only the refused reply names alice");

    // Bob re-keyed under his own name: his old key is revoked too.
    let bob2 = fresh();
    let hb = greeted(&d);
    d.rewrite(&cfg(&named("bob", &bob2, None)));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_n("reloaded", 2, 5 * SEC);
    assert_eq!(
        hb.finish(&bob),
        Some(Answer::because(Status::Refused, Reason::ConfigChanged))
    );
    assert_eq!(trigger(d.addr(), &bob), Outcome::NoAck);
    assert_eq!(trigger(d.addr(), &bob2), Outcome::Ack(Status::Started));
    // Each accepted reply's run has finished before its lines are counted.
    d.wait_log_n(" exit=0", 3, 5 * SEC);
    assert_eq!(
        line_count(&runs),
        3,
        "door ran for bob's three accepted replies only"
    );
}

// Goal: during the overlap window both the old key and its successor are
// accepted, and the log says which (key=old, key=next); from the first
// second after overlap_until only the successor is: a fresh exchange
// with the old key fails as bad-mac, and so does a reply to a greeting
// sent inside the window but answered after it.
#[test]
fn a_successor_overlaps_until_the_window_ends() {
    let s = Scratch::new("keys-window");
    let (old, new, solo) = (fresh(), fresh(), fresh());
    let until = soon(3);
    let keys = named("alice", &old, Some((&new, until)));
    let config = door_config(&s, "127.0.0.1:0", &keys, &solo);
    let d = Daemon::start(s, &config);
    assert_eq!(trigger(d.addr(), &old), Outcome::Ack(Status::Started));
    ok_line(&d, 1, "door", "by=alice key=old");
    assert_eq!(trigger(d.addr(), &new), Outcome::Ack(Status::Started));
    ok_line(&d, 1, "door", "by=alice key=next");
    let late = greeted(&d);
    assert!(
        SystemTime::now() < until,
        "the checks inside the window took longer than the window; the machine is too slow for this test"
    );

    wait_until(until);
    assert_eq!(late.finish(&old), None, "a reply after the window's end");
    assert_eq!(trigger(d.addr(), &old), Outcome::NoAck);
    d.wait_log_n("reason=bad-mac", 2, 5 * SEC);
    assert_eq!(trigger(d.addr(), &new), Outcome::Ack(Status::Started));
    ok_line(&d, 2, "door", "by=alice key=next");
    assert_eq!(d.count("key=old"), 1);
}

// Goal: a daemon (re)started or reloaded after a window has ended warns
// that the old key is no longer accepted and refuses it; the successor
// works.
#[test]
fn a_past_window_warns_and_refuses_the_old_key() {
    let s = Scratch::new("keys-past");
    let (old, new, solo) = (fresh(), fresh(), fresh());
    let until = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let keys = named("alice", &old, Some((&new, until)));
    let config = door_config(&s, "127.0.0.1:0", &keys, &solo);
    let d = Daemon::start(s, &config);
    let warning =
        "overlap_until 2023-11-14T22:13:20Z has passed, so only the successor is accepted";
    d.wait_log(warning, 5 * SEC);
    assert_eq!(trigger(d.addr(), &old), Outcome::NoAck);
    assert_eq!(trigger(d.addr(), &new), Outcome::Ack(Status::Started));
    ok_line(&d, 1, "door", "by=alice key=next");
    // A reload says so again, until the config is tidied.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_n("reloaded", 1, 5 * SEC);
    d.wait_log_n(warning, 2, 5 * SEC);
    assert_eq!(trigger(d.addr(), &old), Outcome::NoAck);
}

/// The fleet test's hosts: each a real posternd on its own loopback port.
const FLEET: usize = 6;

fn fleet_config(s: &Scratch, addr: &str, keys: &str) -> String {
    format!(
        "{}{LIMITS}[[listen]]\naddress = \"{addr}\"\n[[action]]\nname = \"sshd\"\nsingle_instance = false\nrun = [\"/bin/true\"]\n{keys}",
        daemon_table(s)
    )
}

// Goal: a fleet rotates from one master to the next without a lockout,
// as docs/rotation.md describes: hosts hold keys derived from both
// masters until the window ends. With half the fleet already rotated
// (only the new key) and half in the overlap (both keys), the new master
// works everywhere and the old one only on the overlapping half; once
// the window has ended the old master works nowhere.
#[test]
fn a_fleet_rotates_without_lockout() {
    let (m_old, m_new) = (fresh(), fresh());
    let host = |i: usize| format!("host-{i}.example");
    let derived = |m: &Key, i: usize| kdf::key_from_master(m, &host(i), "sshd");
    // Step 0: every host holds the key derived from the old master.
    let mut hosts = Vec::new();
    for i in 0..FLEET {
        let s = Scratch::new(&format!("fleet-{i}"));
        let keys = named("ops", &derived(&m_old, i), None);
        let config = fleet_config(&s, "127.0.0.1:0", &keys);
        hosts.push(Daemon::start(s, &config));
    }
    for (i, d) in hosts.iter().enumerate() {
        assert_eq!(
            trigger(d.addr(), &derived(&m_old, i)),
            Outcome::Ack(Status::Started)
        );
        assert_eq!(trigger(d.addr(), &derived(&m_new, i)), Outcome::NoAck);
    }
    // Step 1 (all hosts): add the successor with a window; here half the
    // fleet has moved on already and holds only the new key.
    let until = soon(4);
    for (i, d) in hosts.iter().enumerate() {
        let keys = if i < FLEET / 2 {
            named("ops", &derived(&m_new, i), None)
        } else {
            named(
                "ops",
                &derived(&m_old, i),
                Some((&derived(&m_new, i), until)),
            )
        };
        d.rewrite(&fleet_config(&d.scratch, &d.addr().to_string(), &keys));
        d.signal(nix::sys::signal::Signal::SIGHUP);
    }
    for d in &hosts {
        d.wait_log_n("reloaded", 1, 5 * SEC);
    }
    // Step 2: operators switch to the new master. It works everywhere.
    for (i, d) in hosts.iter().enumerate() {
        assert_eq!(
            trigger(d.addr(), &derived(&m_new, i)),
            Outcome::Ack(Status::Started),
            "host {i}"
        );
        let tail = if i < FLEET / 2 {
            "by=ops"
        } else {
            "by=ops key=next"
        };
        d.wait_log(
            &format!("action=sshd addr=127.0.0.1 status=started {tail}"),
            5 * SEC,
        );
    }
    // An operator still on the old master: the overlapping half only.
    for (i, d) in hosts.iter().enumerate() {
        let want = if i < FLEET / 2 {
            Outcome::NoAck
        } else {
            Outcome::Ack(Status::Started)
        };
        assert_eq!(trigger(d.addr(), &derived(&m_old, i)), want, "host {i}");
    }
    assert!(
        SystemTime::now() < until,
        "the checks inside the window took longer than the window; the machine is too slow for this test"
    );
    // Step 3: the window ends. The old master works nowhere, the new one
    // everywhere.
    wait_until(until);
    for (i, d) in hosts.iter().enumerate() {
        assert_eq!(
            trigger(d.addr(), &derived(&m_old, i)),
            Outcome::NoAck,
            "host {i}"
        );
        assert_eq!(
            trigger(d.addr(), &derived(&m_new, i)),
            Outcome::Ack(Status::Started),
            "host {i}"
        );
    }
    for (i, d) in hosts.iter().enumerate().skip(FLEET / 2) {
        assert_eq!(
            d.count("key=old"),
            1,
            "host {i}: the old key ran once, inside the window"
        );
    }
}
