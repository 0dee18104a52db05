//! Integration tests: the real posternd on loopback, driven by raw sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use postern::mac::MacKey;
use postern::wire::{self, Status, REPLY_LEN};

const SEC: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A config with two `touch`-like actions writing `{addr}` into files.
fn two_actions(
    s: &Scratch,
    extra_limits: &str,
) -> (String, postern::secret::Key, postern::secret::Key) {
    let (ka, ba) = key();
    let (kb, bb) = key();
    let cfg = format!(
        "{}[limits]\n{extra_limits}\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[listen]]\naddress = \"[::1]:0\"\n\
         [[action]]\nname = \"alpha\"\nkey = \"{ba}\"\nrun = [\"/bin/sh\", \"-c\", \"echo \\\"$1 $POSTERN_ACTION $POSTERN_ADDR\\\" >> {a}\", \"sh\", \"{{addr}}\"]\n\
         [[action]]\nname = \"beta\"\nkey = \"{bb}\"\nrun = [\"/bin/sh\", \"-c\", \"echo $1 >> {b}\", \"sh\", \"{{addr}}\"]\n",
        daemon_table(s),
        a = s.path("alpha.out").display(),
        b = s.path("beta.out").display(),
    );
    (cfg, ka, kb)
}

// Goal: the correct key fires exactly its action, with {addr} and the
// environment substituted, on IPv4 and IPv6, and no other action.
#[test]
fn correct_key_fires_only_that_action() {
    let s = Scratch::new("fire");
    let (cfg, ka, _kb) = two_actions(&s, "");
    let alpha = s.path("alpha.out");
    let beta = s.path("beta.out");
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.listeners[0], &ka), Outcome::Ack(Status::Started));
    let out = wait_file(&alpha, 5 * SEC);
    assert_eq!(out.trim(), "127.0.0.1 alpha 127.0.0.1");
    d.wait_log("action alpha run", 5 * SEC);
    d.wait_log_n("action=alpha", 1, 5 * SEC);
    // IPv6 listener; the first run may still be finishing, so wait for it.
    d.wait_log("exit=0", 5 * SEC);
    assert_eq!(trigger(d.listeners[1], &ka), Outcome::Ack(Status::Started));
    d.wait_log_n("exit=0", 2, 5 * SEC);
    let out = std::fs::read_to_string(&alpha).unwrap();
    assert!(out.lines().any(|l| l == "::1 alpha ::1"), "{out}");
    assert!(!beta.exists(), "beta must not fire");
    assert!(d.lines().iter().any(|l| l.contains("ok src=127.0.0.1")
        && l.contains("action=alpha")
        && l.contains("status=started")));
}

// Goal: a wrong key fires nothing, gets no ack, and is logged as a
// failure with the source address.
#[test]
fn wrong_key_fires_nothing() {
    let s = Scratch::new("wrong");
    let (cfg, _ka, _kb) = two_actions(&s, "");
    let alpha = s.path("alpha.out");
    let d = Daemon::start(s, &cfg);
    let (other, _) = key();
    assert_eq!(trigger(d.addr(), &other), Outcome::NoAck);
    d.wait_log("fail src=127.0.0.1", 5 * SEC);
    assert!(d.lines().iter().any(|l| l.contains("reason=bad-mac")));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alpha.exists());
    assert_eq!(d.count("ok src="), 0);
}

// Goal: a reply of every length from 0 to len-1, and of len+1 (even with a
// valid MAC in front), counts as a failure and fires nothing.
#[test]
fn every_short_and_long_reply_is_a_failure() {
    let s = Scratch::new("lengths");
    let (cfg, ka, _) = two_actions(
        &s,
        "exempt = [\"127.0.0.0/8\"]\nrate_burst = 1000\nrate_per_minute = 60000",
    );
    let alpha = s.path("alpha.out");
    let d = Daemon::start(s, &cfg);
    for len in 0..REPLY_LEN {
        let mut c = connect(d.addr(), None);
        let g = read_greeting(&mut c).unwrap();
        let r = wire::reply(&MacKey::new(ka.expose()), &g, None);
        c.write_all(&r[..len]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no ack for a {len}-byte reply");
    }
    // Nothing at all, then a close, is "noreply" and not counted
    // (PROTOCOL.md); every other cut is a short-reply failure.
    d.wait_log_n("reason=short-reply", REPLY_LEN - 1, 10 * SEC);
    d.wait_log_n("noreply src=", 1, 10 * SEC);
    let mut c = connect(d.addr(), None);
    let g = read_greeting(&mut c).unwrap();
    let mut r = wire::reply(&MacKey::new(ka.expose()), &g, None).to_vec();
    r.push(0);
    c.write_all(&r).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no ack for a long reply");
    d.wait_log("reason=long-reply", 5 * SEC);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alpha.exists(), "nothing fires");
}

// Goal: a peer that never answers is cut off at the handshake deadline.
#[test]
fn silent_peer_times_out() {
    let s = Scratch::new("silent");
    let (cfg, _, _) = two_actions(&s, "handshake_timeout = \"300ms\"");
    let d = Daemon::start(s, &cfg);
    let mut c = connect(d.addr(), None);
    read_greeting(&mut c).unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let took = t.elapsed();
    assert!(rest.is_empty());
    assert!(
        took >= Duration::from_millis(200) && took < 3 * SEC,
        "closed after {took:?}"
    );
    d.wait_log("reason=timeout", 5 * SEC);
}

// Goal: N failures lock a source out (no greeting at all), other sources
// are unaffected, and the lockout expires after its duration.
#[test]
fn lockout_after_n_failures_and_expiry() {
    let s = Scratch::new("lockout");
    let (cfg, ka, _) = two_actions(&s, "lockout_after = 3\nlockout_duration = \"1s\"");
    let d = Daemon::start(s, &cfg);
    let (bad, _) = key();
    let a = Some(ip("127.0.0.2"));
    for _ in 0..3 {
        assert_eq!(trigger_from(d.addr(), a, &bad, None), Outcome::NoAck);
    }
    d.wait_log("lockout src=127.0.0.2", 5 * SEC);
    assert_eq!(trigger_from(d.addr(), a, &ka, None), Outcome::NoGreeting);
    // Another source is still served.
    assert_eq!(
        trigger_from(d.addr(), Some(ip("127.0.0.3")), &ka, None),
        Outcome::Ack(Status::Started)
    );
    std::thread::sleep(Duration::from_millis(1200));
    d.wait_log("exit=0", 5 * SEC);
    assert_eq!(
        trigger_from(d.addr(), a, &ka, None),
        Outcome::Ack(Status::Started)
    );
}

// Goal: a locked source is closed before the greeting, so it learns
// nothing and costs nothing.
#[test]
fn locked_source_gets_no_greeting() {
    let s = Scratch::new("nogreet");
    let (cfg, _, _) = two_actions(&s, "lockout_after = 2\nlockout_duration = \"1m\"");
    let d = Daemon::start(s, &cfg);
    let (bad, _) = key();
    let a = Some(ip("127.0.0.4"));
    trigger_from(d.addr(), a, &bad, None);
    trigger_from(d.addr(), a, &bad, None);
    d.wait_log("lockout src=127.0.0.4", 5 * SEC);
    for _ in 0..5 {
        let mut c = connect(d.addr(), a);
        let mut buf = [0u8; 1];
        c.set_read_timeout(Some(5 * SEC)).unwrap();
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a locked source must get no greeting byte");
    }
}

// Goal: with every handshake slot held by silent peers, eviction of the
// oldest lets a real client through at once.
#[test]
fn eviction_lets_real_client_through() {
    let s = Scratch::new("evict");
    let (cfg, ka, _) = two_actions(
        &s,
        "max_handshakes = 8\nhandshake_timeout = \"30s\"\nrate_burst = 1000\nrate_per_minute = 60000\nexempt = [\"127.0.0.0/8\"]",
    );
    let d = Daemon::start(s, &cfg);
    let mut silent = Vec::new();
    for i in 0..40u8 {
        let mut c = connect(d.addr(), Some(ip(&format!("127.0.1.{}", i + 1))));
        read_greeting(&mut c).unwrap();
        silent.push(c);
    }
    d.wait_log("limit max_handshakes=8", 5 * SEC);
    let t = Instant::now();
    assert_eq!(
        trigger_from(d.addr(), Some(ip("127.0.2.1")), &ka, None),
        Outcome::Ack(Status::Started)
    );
    assert!(t.elapsed() < 2 * SEC, "real client took {:?}", t.elapsed());
    assert_eq!(
        d.count("limit max_handshakes=8"),
        1,
        "the limit is logged once, not per event"
    );
    d.wait_log_n("reason=evicted", 32, 5 * SEC);
}

// Goal: an action with bind_source refuses a reply whose asserted address
// is not the connection's source, and accepts the right one.
#[test]
fn bind_source_mismatch_refused() {
    let s = Scratch::new("bind");
    let (k, b) = key();
    let out = s.path("bound.out");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\nbind_source = true\nsingle_instance = false\nrun = [\"/bin/sh\", \"-c\", \"echo $1 >> {}\", \"sh\", \"{{addr}}\"]\n",
        daemon_table(&s),
        out.display()
    );
    let d = Daemon::start(s, &cfg);
    let src = Some(ip("127.0.0.5"));
    assert_eq!(
        trigger_from(d.addr(), src, &k, Some(ip("203.0.113.9"))),
        Outcome::Ack(Status::Refused)
    );
    assert_eq!(
        trigger_from(d.addr(), src, &k, None),
        Outcome::Ack(Status::Refused)
    );
    d.wait_log("reason=bind-mismatch", 5 * SEC);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!out.exists());
    assert_eq!(
        trigger_from(d.addr(), src, &k, src),
        Outcome::Ack(Status::Started)
    );
    assert_eq!(wait_file(&out, 5 * SEC).trim(), "127.0.0.5");
}

// Goal: an action past its timeout has its whole process group killed,
// including children it forked.
#[test]
fn action_timeout_kills_process_group() {
    let s = Scratch::new("timeout");
    let (k, b) = key();
    let pids = s.path("pids");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"hang\"\nkey = \"{b}\"\ntimeout = \"500ms\"\nrun = [\"/bin/sh\", \"-c\", \"sleep 300 & echo $! $$ > {}; wait\"]\n",
        daemon_table(&s),
        pids.display()
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let text = wait_file(&pids, 5 * SEC);
    let nums: Vec<u32> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(nums.iter().all(|p| pid_alive(*p)));
    d.wait_log("timeout; process group killed", 10 * SEC);
    let end = Instant::now() + 5 * SEC;
    while nums.iter().any(|p| pid_alive(*p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in nums {
        assert!(!pid_alive(p), "pid {p} survived the timeout");
    }
}

// Goal: single_instance answers "already active" while the action runs,
// and starts it again once it has finished.
#[test]
fn single_instance_holds() {
    let s = Scratch::new("single");
    let (k, b) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"slow\"\nkey = \"{b}\"\nrun = [\"/bin/sleep\", \"1\"]\n",
        daemon_table(&s)
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::AlreadyActive));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::AlreadyActive));
    d.wait_log("action slow run", 5 * SEC);
    d.wait_log("exit=0", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
}

// Goal: cooldown refuses a new start until it has passed.
#[test]
fn cooldown_refuses_until_passed() {
    let s = Scratch::new("cooldown");
    let (k, b) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"cool\"\nkey = \"{b}\"\ncooldown = \"1s\"\nrun = [\"/bin/true\"]\n",
        daemon_table(&s)
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    d.wait_log("exit=0", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Refused));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
}

// Goal: the shutdown builtin acknowledges and stops the daemon cleanly.
#[test]
fn shutdown_builtin_stops_daemon() {
    let s = Scratch::new("kill");
    let (k, b) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"stop-daemon\"\nkey = \"{b}\"\nbuiltin = \"shutdown\"\n",
        daemon_table(&s)
    );
    let mut d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    let st = d.wait_exit(10 * SEC).expect("daemon must exit");
    assert!(st.success(), "{st:?}");
    d.wait_log("stopped", 5 * SEC);
}

// Goal: SIGHUP with a valid config applies it and keeps lockout state;
// with an invalid config it logs the problem and keeps the old config.
#[test]
fn sighup_valid_and_invalid() {
    let s = Scratch::new("hup");
    let (k1, b1) = key();
    let (k2, b2) = key();
    let base = format!(
        "{}[limits]\nlockout_after = 2\nlockout_duration = \"1m\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"one\"\nkey = \"{b1}\"\nsingle_instance = false\nrun = [\"/bin/true\"]\n",
        daemon_table(&s)
    );
    let d = Daemon::start(s, &base);
    let port = d.addr().port();
    let (bad, _) = key();
    let locked = Some(ip("127.0.0.9"));
    trigger_from(d.addr(), locked, &bad, None);
    trigger_from(d.addr(), locked, &bad, None);
    d.wait_log("lockout src=127.0.0.9", 5 * SEC);
    // Valid: add a second action; keep the same port.
    let added = base.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + &format!("[[action]]\nname = \"two\"\nkey = \"{b2}\"\nrun = [\"/bin/true\"]\n");
    d.rewrite(&added);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reloaded", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k2), Outcome::Ack(Status::Started));
    assert_eq!(
        trigger_from(d.addr(), locked, &k1, None),
        Outcome::NoGreeting,
        "lockout survives reload"
    );
    // Invalid: the old config stays.
    d.rewrite("[[listen]]\naddress = \"not an address\"\n");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reload failed", 5 * SEC);
    assert!(d.count("reload rejected") >= 1);
    assert_eq!(trigger(d.addr(), &k1), Outcome::Ack(Status::Started));
    assert_eq!(trigger(d.addr(), &k2), Outcome::Ack(Status::Started));
}

// Goal: an ostiary-4 listener accepts HMAC-SHA256(password, salt) exactly
// as Ostiary 4.0 computes it (the published vector), sends nothing back,
// and fires the action; a wrong password fires nothing.
#[test]
fn ostiary_vector_mode() {
    let salt: [u8; 32] = hex("f2abdc79cfcc1b109ebc8e9fa65605e9d7a3fe9a2be2fe119356a800cf418c1f")
        .try_into()
        .unwrap();
    let want = hex("72f5556a4e4c61cdfd198426718c4ba72db2a169c619cfa453f5410ea2821129");
    assert_eq!(
        wire::ostiary_reply(&MacKey::new(b"Sample"), &salt).to_vec(),
        want
    );

    let s = Scratch::new("ostiary");
    let out = s.path("ost.out");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"ostiary-4\"\n[[action]]\nname = \"old\"\npassword = \"Sample\"\nrun = [\"/bin/sh\", \"-c\", \"echo $POSTERN_ADDR >> {}\"]\n",
        daemon_table(&s),
        out.display()
    );
    let d = Daemon::start(s, &cfg);
    let exchange = |pw: &[u8]| {
        let mut c = connect(d.addr(), None);
        let mut salt = [0u8; 32];
        c.read_exact(&mut salt).unwrap();
        c.write_all(&wire::ostiary_reply(&MacKey::new(pw), &salt))
            .unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        rest
    };
    assert!(exchange(b"Wrong").is_empty());
    d.wait_log("reason=bad-mac", 5 * SEC);
    assert!(
        exchange(b"Sample").is_empty(),
        "ostiary-4 sends nothing back"
    );
    assert_eq!(wait_file(&out, 5 * SEC).trim(), "127.0.0.1");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// Goal: `--check` accepts a valid config and rejects an invalid one with
// exit 1 and a message naming the file.
#[test]
fn check_mode_exit_codes() {
    let s = Scratch::new("check");
    let (cfg, _, _) = two_actions(&s, "");
    let good = s.path("good.toml");
    write_private(&good, &cfg);
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_posternd"))
        .arg("--config")
        .arg(&good)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let bad = s.path("bad.toml");
    write_private(&bad, "[[listen]]\naddress = \"127.0.0.1:0\"\nbogus = 1\n");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_posternd"))
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("bad.toml"), "{err}");
}

// Goal: while every slot is busy, a source that has failed since its last
// success gets no greeting, while a clean source still evicts the oldest.
#[test]
fn struck_sources_refused_at_capacity() {
    let s = Scratch::new("struck");
    let (cfg, ka, _) = two_actions(
        &s,
        "max_handshakes = 4\nhandshake_timeout = \"30s\"\nrate_burst = 1000\nrate_per_minute = 60000\nlockout_after = 100",
    );
    let d = Daemon::start(s, &cfg);
    let (bad, _) = key();
    let struck = Some(ip("127.0.3.1"));
    assert_eq!(trigger_from(d.addr(), struck, &bad, None), Outcome::NoAck);
    d.wait_log("fail src=127.0.3.1", 5 * SEC);
    let mut silent = Vec::new();
    for i in 0..4u8 {
        let mut c = connect(d.addr(), Some(ip(&format!("127.0.4.{}", i + 1))));
        read_greeting(&mut c).unwrap();
        silent.push(c);
    }
    // Full: the struck source is closed before the greeting...
    assert_eq!(
        trigger_from(d.addr(), struck, &ka, None),
        Outcome::NoGreeting
    );
    // ...while a clean source evicts the oldest holder and gets through.
    assert_eq!(
        trigger_from(d.addr(), Some(ip("127.0.5.1")), &ka, None),
        Outcome::Ack(Status::Started)
    );
    d.wait_log("reason=evicted", 5 * SEC);
}

// Goal: a SIGHUP sent the moment posternd says it has started (what
// `systemctl reload` may do right after READY=1) reloads it; it used to
// arrive before the monitor's handler existed and kill the monitor.
#[test]
fn sighup_right_after_start_reloads() {
    for i in 0..20 {
        let s = Scratch::new(&format!("early-hup-{i}"));
        let (_, b) = key();
        let config = format!(
            "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"one\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\n",
            daemon_table(&s)
        );
        let mut d = Daemon::start(s, &config);
        d.signal(nix::sys::signal::Signal::SIGHUP);
        d.wait_log("reloaded", 10 * SEC);
        assert!(
            d.wait_exit(Duration::from_millis(1)).is_none(),
            "run {i}: posternd died"
        );
    }
}
