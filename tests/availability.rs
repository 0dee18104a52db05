//! Availability against address-rich attackers: each test replays one
//! attack on the real daemon, on loopback or in a network namespace it
//! creates (2001:db8::/32 routed to lo), and shows that a real operator
//! still gets in and that guessing stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use postern::mac::MacKey;
use postern::secret::Key;
use postern::wire::{self, Status, ACK_LEN, GREETING_LEN, REPLY_LEN};

const SEC: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A config with an IPv4 and an IPv6 listener and one action that can
/// run any number of times.
fn config(s: &Scratch, limits: &str, bind_source: bool) -> (String, Key) {
    let (k, b) = key();
    let cfg = format!(
        "{}[limits]\n{limits}\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[listen]]\naddress = \"[::1]:0\"\n\
         [[action]]\nname = \"door\"\nkey = \"{b}\"\nbind_source = {bind_source}\nsingle_instance = false\nrun = [\"/bin/true\"]\n",
        daemon_table(s),
    );
    (cfg, k)
}

/// The listener for `src`'s family.
fn to(d: &Daemon, src: IpAddr) -> SocketAddr {
    if src.is_ipv4() {
        d.listeners[0]
    } else {
        d.listeners[1]
    }
}

/// A postern-1 exchange from `src` that waits `rtt` between the greeting
/// and the reply (a slow link).
fn slow_trigger(to: SocketAddr, src: IpAddr, key: &Key, rtt: Duration) -> Outcome {
    let mut s = connect(to, Some(src));
    let Some(g) = read_greeting(&mut s) else {
        return Outcome::NoGreeting;
    };
    std::thread::sleep(rtt);
    let mk = MacKey::new(key.expose());
    let r = wire::reply(&mk, &g, None);
    if s.write_all(&r).is_err() {
        return Outcome::NoAck;
    }
    let mut a = [0u8; ACK_LEN];
    match s.read_exact(&mut a) {
        Ok(()) => match wire::verify_ack(&mk, &g, &r, &a) {
            Some(a) => Outcome::Ack(a.status),
            None => panic!("ack failed verification"),
        },
        Err(_) => Outcome::NoAck,
    }
}

/// One wrong guess from `src`: true if the server sent a greeting (and so
/// did a full verification of the garbage that followed).
fn guess(to: SocketAddr, src: IpAddr) -> bool {
    let mut s = connect(to, Some(src));
    s.set_read_timeout(Some(10 * SEC)).unwrap();
    let mut g = [0u8; GREETING_LEN];
    if s.read_exact(&mut g).is_err() {
        return false;
    }
    let _ = s.write_all(&[0x5a; REPLY_LEN]);
    let _ = drain(&mut s);
    true
}

/// The n-th /64 of 2001:db8:<net48>::/48, each in its own /56 while
/// n < 256.
fn v6_source(net48: u16, n: u32) -> IpAddr {
    let h4 = (((n % 256) << 8) | ((n / 256) % 256)) as u16;
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net48, h4, 0, 0, 0, 1))
}

// Goal: finding 1 — a flood of silent connections from fresh /64s of one
// /48 (300/s against 32 slots) neither evicts a slow operator from
// another network nor leaves it refused afterwards: all five attempts
// with a 300 ms round trip succeed.
#[test]
fn eviction_spares_a_slow_operator() {
    if !netns::enter("eviction_spares_a_slow_operator") {
        return;
    }
    let s = Scratch::new("evict-slow");
    let (cfg, k) = config(
        &s,
        "max_handshakes = 32\nhandshake_timeout = \"3s\"\nverify_per_second = 100000",
        false,
    );
    let d = Daemon::start(s, &cfg);
    let operator = ip("2001:db8:ffff:1::1");
    let port = to(&d, operator);
    assert_eq!(
        trigger_from(port, Some(operator), &k, None),
        Outcome::Ack(Status::Started)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) && start.elapsed() < 20 * SEC {
                // 300 per second, paced against the clock.
                let due = start + Duration::from_micros(u64::from(n) * 3333);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let src = IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    1,
                    (n % 65_536) as u16,
                    0,
                    0,
                    0,
                    1,
                ));
                held.push_back(connect(port, Some(src)));
                if held.len() > 400 {
                    held.pop_front();
                }
                n += 1;
            }
            n
        })
    };
    d.wait_log("limit max_handshakes=32", 10 * SEC);
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(slow_trigger(port, operator, &k, Duration::from_millis(300)));
    }
    stop.store(true, Ordering::SeqCst);
    let sent = flood.join().unwrap();
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ack(Status::Started)),
        "operator outcomes under a flood of {sent} connections: {outcomes:?}"
    );
    assert!(d.count("reason=evicted") > 0, "the flood never evicted");
    assert_eq!(
        d.count(&format!("fail src={operator}")),
        0,
        "the operator was evicted or counted"
    );
}

// Goal: finding 2 — 400 /64s of one /48, three wrong guesses each, no
// longer guess freely: the /48 is locked after 16 x lockout_after
// failures, a fresh /64 in it gets no greeting, while an operator in good
// standing inside it and one from another /48 still get in.
#[test]
fn rotating_64s_lock_their_48() {
    if !netns::enter("rotating_64s_lock_their_48") {
        return;
    }
    let s = Scratch::new("rotate64");
    let (cfg, k) = config(&s, "verify_per_second = 100000", false);
    let d = Daemon::start(s, &cfg);
    let insider = ip("2001:db8:3:ffff::1");
    let port = to(&d, insider);
    assert_eq!(
        trigger_from(port, Some(insider), &k, None),
        Outcome::Ack(Status::Started)
    );
    let mut greeted = 0;
    for n in 0..400 {
        for _ in 0..3 {
            if guess(port, v6_source(3, n)) {
                greeted += 1;
            }
        }
    }
    let limit = 16 * 5;
    assert!(
        greeted <= limit,
        "{greeted} of 1200 guesses were verified; at most {limit} may be"
    );
    d.wait_log("source=2001:db8:3::/48", 5 * SEC);
    assert!(
        !guess(port, v6_source(3, 999)),
        "a fresh /64 in the locked /48 was served"
    );
    assert_eq!(
        trigger_from(port, Some(insider), &k, None),
        Outcome::Ack(Status::Started),
        "an operator in good standing inside the /48"
    );
    assert_eq!(
        trigger_from(port, Some(ip("2001:db8:4::1")), &k, None),
        Outcome::Ack(Status::Started),
        "an operator from another /48"
    );
}

/// Sends two round-robin rounds of wrong guesses from `sources` across
/// four threads, while an operator in good standing triggers every 100
/// ms; returns (guesses verified, guesses made, elapsed, operator
/// outcomes).
fn round_robin(
    d: &Daemon,
    k: &Key,
    sources: Arc<Vec<IpAddr>>,
    operator: IpAddr,
) -> (u64, u64, Duration, Vec<Outcome>) {
    let greeted = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ports = (d.listeners[0], d.listeners[1]);
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (sources, greeted, made) = (
                Arc::clone(&sources),
                Arc::clone(&greeted),
                Arc::clone(&made),
            );
            std::thread::spawn(move || {
                for _round in 0..2 {
                    for src in sources.iter().skip(w).step_by(4) {
                        if start.elapsed() > 120 * SEC {
                            return;
                        }
                        let port = if src.is_ipv4() { ports.0 } else { ports.1 };
                        made.fetch_add(1, Ordering::SeqCst);
                        if guess(port, *src) {
                            greeted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    let op = {
        let (done, k) = (Arc::clone(&done), Key::from_bytes(*k.expose()));
        let port = if operator.is_ipv4() { ports.0 } else { ports.1 };
        std::thread::spawn(move || {
            let mut out = Vec::new();
            while !done.load(Ordering::SeqCst) {
                out.push(trigger_from(port, Some(operator), &k, None));
                std::thread::sleep(Duration::from_millis(100));
            }
            out
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::SeqCst);
    let outcomes = op.join().unwrap();
    (
        greeted.load(Ordering::SeqCst),
        made.load(Ordering::SeqCst),
        elapsed,
        outcomes,
    )
}

/// The most guesses the verification budget lets through in `elapsed`:
/// its burst plus its rate, with one second of slack.
fn budget_bound(per_second: u64, elapsed: Duration) -> u64 {
    let burst = per_second * u64::from(postern::net::limits::VERIFY_BURST_SECONDS);
    burst + per_second * (elapsed.as_secs() + 1)
}

// Goal: finding 3 — 5,000 IPv4 sources, each in its own /24, cycling
// round-robin against the default 4,096-entry table, get no more full
// verifications than the global budget allows, while an operator in good
// standing triggers throughout.
#[test]
fn five_thousand_sources_meet_the_budget() {
    if !netns::enter("five_thousand_sources_meet_the_budget") {
        return;
    }
    let s = Scratch::new("rr5k");
    // The operator triggers ten times a second: let its own bucket allow it.
    let (cfg, k) = config(&s, "rate_burst = 100\nrate_per_minute = 6000", false);
    let d = Daemon::start(s, &cfg);
    let operator = ip("127.0.0.1");
    assert_eq!(
        trigger_from(d.listeners[0], Some(operator), &k, None),
        Outcome::Ack(Status::Started)
    );
    let sources: Vec<IpAddr> = (0..5000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 10 + (i / 256) as u8, (i % 256) as u8, 1)))
        .collect();
    let (greeted, made, elapsed, ops) = round_robin(&d, &k, Arc::new(sources), operator);
    let bound = budget_bound(200, elapsed);
    assert!(
        greeted <= bound,
        "{greeted} of {made} guesses verified in {elapsed:?}; the budget allows {bound}"
    );
    d.wait_log("limit verify_per_second=200", 5 * SEC);
    assert!(!ops.is_empty());
    assert!(
        ops.iter().all(|o| *o == Outcome::Ack(Status::Started)),
        "operator: {ops:?}"
    );
}

// Goal: finding 3 — 50,000 sources (IPv6 /64s, each in its own /48, and
// IPv4 hosts in their own /24s beyond the table size), cycling
// round-robin, get no more full verifications than the global budget
// allows, while an operator in good standing triggers throughout.
#[test]
fn fifty_thousand_sources_meet_the_budget() {
    if !netns::enter("fifty_thousand_sources_meet_the_budget") {
        return;
    }
    let s = Scratch::new("rr50k");
    let (cfg, k) = config(&s, "rate_burst = 100\nrate_per_minute = 6000", false);
    let d = Daemon::start(s, &cfg);
    let operator = ip("2001:db8:ffff:1::1");
    assert_eq!(
        trigger_from(d.listeners[1], Some(operator), &k, None),
        Outcome::Ack(Status::Started)
    );
    let mut sources: Vec<IpAddr> = (0..45_000u32)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, (i + 1) as u16, 0, 0, 0, 0, 1)))
        .collect();
    sources.extend(
        (0..5000u32)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 40 + (i / 256) as u8, (i % 256) as u8, 1))),
    );
    let (greeted, made, elapsed, ops) = round_robin(&d, &k, Arc::new(sources), operator);
    let bound = budget_bound(200, elapsed);
    assert!(
        greeted <= bound,
        "{greeted} of {made} guesses verified in {elapsed:?}; the budget allows {bound}"
    );
    assert!(made >= 100_000, "only {made} guesses made");
    assert!(
        ops.iter().all(|o| *o == Outcome::Ack(Status::Started)),
        "operator: {ops:?}"
    );
}

// Goal: finding 5 — a burst of 6,000 connections held open against 64
// handshake slots never runs the network process out of descriptors: no
// accept failure, and the operator is served right after.
#[test]
fn a_burst_does_not_exhaust_descriptors() {
    let s = Scratch::new("burst");
    let (cfg, k) = config(
        &s,
        "max_handshakes = 64\nverify_per_second = 100000\nrate_burst = 1000",
        false,
    );
    let d = Daemon::start(s, &cfg);
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < 8000 {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(16_384),
            hard,
        )
        .unwrap();
    }
    let port = d.listeners[0];
    let workers: Vec<_> = (0..6u32)
        .map(|w| {
            std::thread::spawn(move || {
                (0..1000u32)
                    .map(|i| {
                        let n = w * 1000 + i;
                        let src = IpAddr::V4(Ipv4Addr::new(
                            127,
                            60,
                            (n / 250) as u8,
                            (n % 250 + 1) as u8,
                        ));
                        connect(port, Some(src))
                    })
                    .collect::<Vec<TcpStream>>()
            })
        })
        .collect();
    let held: Vec<Vec<TcpStream>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = held.iter().map(|v| v.len()).sum();
    let t = Instant::now();
    assert_eq!(
        trigger_from(port, Some(ip("127.0.0.1")), &k, None),
        Outcome::Ack(Status::Started)
    );
    assert!(t.elapsed() < 2 * SEC, "operator waited {:?}", t.elapsed());
    drop(held);
    assert_eq!(
        d.count("accept failed"),
        0,
        "accept failed during a burst of {total}:\n{}",
        d.lines().join("\n")
    );
}

// Goal: finding 6 — a handshake begun on listener 2 that ends after a
// reload leaving one listener is logged and harmless: the daemon stays up
// and serves.
#[test]
fn reload_with_fewer_listeners_survives_a_stale_handshake() {
    let s = Scratch::new("stale");
    let (cfg, k) = config(&s, "handshake_timeout = \"1s\"", false);
    let one = cfg.replace("[[listen]]\naddress = \"[::1]:0\"\n", "");
    assert_ne!(one, cfg);
    let mut d = Daemon::start(s, &cfg);
    let mut silent = connect(d.listeners[1], None);
    read_greeting(&mut silent).unwrap();
    d.rewrite(&one);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reloaded", 5 * SEC);
    d.wait_log("reason=timeout", 5 * SEC);
    assert_eq!(
        trigger(d.listeners[0], &k),
        Outcome::Ack(Status::Started),
        "log:\n{}",
        d.lines().join("\n")
    );
    assert!(
        d.wait_exit(Duration::from_millis(100)).is_none(),
        "daemon exited"
    );
    assert_eq!(d.count("out of range"), 0);
}

// Goal: finding 7 — exempt networks that --check used to pass and start-up
// then refused: ::/0 now starts and reloads; IPv4-mapped networks are
// refused by --check, naming the key and the IPv4 network to write.
#[test]
fn check_passes_only_exempt_networks_that_load() {
    let s = Scratch::new("mapped");
    let (plain, k) = config(&s, "", false);
    for (net, refused) in [
        ("::/0", None),
        ("::ffff:0.0.0.0/96", Some("write it as IPv4, \"0.0.0.0/0\"")),
        (
            "::ffff:10.0.0.0/104",
            Some("write it as IPv4, \"10.0.0.0/8\""),
        ),
    ] {
        let cfg = plain.replace("[limits]\n", &format!("[limits]\nexempt = [\"{net}\"]\n"));
        let path = s.path("check.toml");
        write_private(&path, &cfg);
        let out = check_config(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        match refused {
            Some(fix) => {
                assert!(!out.status.success(), "{net}: --check passed");
                assert!(
                    err.contains("limits.exempt") && err.contains(fix),
                    "{net}: {err}"
                );
            }
            None => {
                assert!(out.status.success(), "{net}: --check failed: {err}");
                let d = Daemon::start(Scratch::new("mapped-start"), &cfg);
                assert_eq!(trigger(d.listeners[0], &k), Outcome::Ack(Status::Started));
            }
        }
    }
    // A running daemon given ::/0 on SIGHUP reloads and keeps serving.
    let mut d = Daemon::start(s, &plain);
    d.rewrite(&plain.replace("[limits]\n", "[limits]\nexempt = [\"::/0\"]\n"));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reloaded", 5 * SEC);
    assert_eq!(trigger(d.listeners[0], &k), Outcome::Ack(Status::Started));
    assert!(
        d.wait_exit(Duration::from_millis(100)).is_none(),
        "daemon exited"
    );
    // A network process that died on the reload would be replaced, and
    // the trigger above served by its replacement: it must not have died.
    assert_eq!(d.count("starting a new one"), 0, "{:?}", d.lines());
}

// Goal: finding 8 — authenticated replies from the wrong address for a
// bind_source action count as consecutive failures and lock the source
// out after lockout_after of them.
#[test]
fn bind_mismatch_counts_toward_lockout() {
    let s = Scratch::new("bindlock");
    let (cfg, k) = config(&s, "lockout_after = 3", true);
    let d = Daemon::start(s, &cfg);
    let src = Some(ip("127.0.0.5"));
    for _ in 0..3 {
        assert_eq!(
            trigger_from(d.listeners[0], src, &k, Some(ip("203.0.113.9"))),
            Outcome::Ack(Status::Refused)
        );
    }
    d.wait_log("reason=bind-mismatch failures=3", 5 * SEC);
    d.wait_log("lockout src=127.0.0.5", 5 * SEC);
    assert_eq!(
        trigger_from(d.listeners[0], src, &k, src),
        Outcome::NoGreeting,
        "a locked-out source was served"
    );
}
