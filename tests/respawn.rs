//! A dead or misbehaving network process is replaced, and gates,
//! lockouts and rate limits survive it: the real daemon with SIGKILL, and
//! the real supervisor driven in-process with stand-in children that send
//! malformed requests or never stay up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use postern::channel::{self, Channel};
use postern::config::LogTarget;
use postern::ipc::{Carried, Down, Peer, Reason, ReplyBytes, Request, MAX_DOWN_LEN, REQUEST_LEN};
use postern::monitor::log::Logger;
use postern::monitor::supervise::{self, Policy};
use postern::monitor::{Monitor, MonitorError, NetChild, Signals};
use postern::wire::{Status, REPLY_LEN};

const SEC: Duration = Duration::from_secs(1);

fn pid_in(line: &str) -> u32 {
    let at = line.find("network process pid=").unwrap() + "network process pid=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// One failed exchange from `from`: a greeting, a wrong reply, a close.
fn bad_reply(to: std::net::SocketAddr, from: IpAddr) {
    let mut s = connect(to, Some(from));
    assert!(read_greeting(&mut s).is_some(), "{from} got no greeting");
    s.write_all(&[0x5a; REPLY_LEN]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a wrong reply was answered");
}

fn greeted(to: std::net::SocketAddr, from: IpAddr) -> bool {
    let mut s = connect(to, Some(from));
    read_greeting(&mut s).is_some()
}

// Goal: while a serve gate is open, SIGKILL of the network process is
// survived: a new one serves a trigger within a second of the kill, the
// serve program keeps running until the gate's own deadline and is then
// stopped, and a source locked out before the kill is still locked out,
// as is one refused for its rate.
#[test]
fn sigkill_of_network_process_keeps_gate_and_lockout() {
    let s = Scratch::new("respawn");
    let (svc, b1) = key();
    let (ping, b2) = key();
    let ttl = Duration::from_secs(6);
    let pidfile = s.path("serve.pid");
    let cfg = format!(
        "{}[limits]\nlockout_after = 2\nrate_burst = 6\nrate_per_minute = 1\n[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"svc\"\nkey = \"{b1}\"\nserve = [\"/bin/sh\", \"-c\", \"echo $$ > {pid}; exec sleep 300\"]\nttl = \"{}s\"\n\
         [[action]]\nname = \"ping\"\nkey = \"{b2}\"\nsingle_instance = false\nrun = [\"/bin/true\"]\n",
        daemon_table(&s),
        ttl.as_secs(),
        pid = pidfile.display()
    );
    let mut d = Daemon::start(s, &cfg);
    d.restarts_expected = true;
    let net = pid_in(&d.wait_log("network process pid=", 5 * SEC));
    assert_eq!(net, d.network_pid(), "the log names another process");

    let opened = Instant::now();
    assert_eq!(trigger(d.addr(), &svc), Outcome::Ack(Status::Started));
    let serve: u32 = wait_file(&pidfile, 5 * SEC).trim().parse().unwrap();
    assert!(pid_alive(serve));

    // 127.0.0.2 fails twice (lockout_after = 2) and is locked out.
    let bad: IpAddr = "127.0.0.2".parse().unwrap();
    bad_reply(d.addr(), bad);
    bad_reply(d.addr(), bad);
    d.wait_log("lockout src=127.0.0.2", 5 * SEC);
    assert!(!greeted(d.addr(), bad), "not locked out before the kill");

    // 127.0.0.4 spends its burst of 6 (greeted, then closes: not a
    // failure) and is refused for its rate; one token comes back a minute.
    let fast: IpAddr = "127.0.0.4".parse().unwrap();
    for _ in 0..6 {
        assert!(greeted(d.addr(), fast));
    }
    assert!(!greeted(d.addr(), fast), "not rate-limited before the kill");
    d.wait_log("ratelimit src=127.0.0.4", 5 * SEC);

    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(net as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // A trigger sent at once waits in the listen queue, or meets the
    // dying process and gets nothing; then it is sent again.
    let served = loop {
        if let Outcome::Ack(st) = trigger(d.addr(), &ping) {
            assert_eq!(st, Status::Started);
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < 5 * SEC,
            "no trigger served after the kill"
        );
    };
    eprintln!("a trigger was served {served:?} after SIGKILL of the network process");
    assert!(served < SEC, "served {served:?} after the kill");
    let ended = d.wait_log(
        &format!("network process pid={net} exited (signal=9)"),
        5 * SEC,
    );
    assert!(ended.contains("kept"), "{ended}");
    let again = pid_in(&d.wait_log("started (restart 1 within 60s", 5 * SEC));
    assert_ne!(again, net);
    assert_eq!(again, d.network_pid());

    // The lockout survived; a clean source is still greeted.
    assert!(!greeted(d.addr(), bad), "the lockout did not survive");
    assert!(!greeted(d.addr(), fast), "the rate limit did not survive");
    assert!(greeted(d.addr(), "127.0.0.3".parse().unwrap()));

    // The gate stays open until its own deadline, then closes.
    assert!(
        pid_alive(serve),
        "the serve program died with the network process"
    );
    assert_eq!(d.count("gate svc closed"), 0, "{:?}", d.lines());
    d.wait_log("gate svc closed (deadline)", ttl + 10 * SEC);
    let closed = opened.elapsed();
    assert!(
        closed >= ttl,
        "closed {closed:?} after opening, before its deadline"
    );
    let end = Instant::now() + 5 * SEC;
    while pid_alive(serve) {
        assert!(Instant::now() < end, "serve program survived its deadline");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.count("network process failure"), 0);
}

/// posternd started from its own copy of the binary (so that the test
/// can remove or replace it), with one action.
fn start_from_copy(s: Scratch) -> (Daemon, std::path::PathBuf, postern::secret::Key) {
    let copy = s.path("posternd-copy");
    std::fs::copy(posternd_bin(), &copy).unwrap();
    let (k, b) = key();
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"a\"\nkey = \"{b}\"\nsingle_instance = false\nrun = [\"/bin/true\"]\n",
        daemon_table(&s)
    );
    let wrapper = [
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("shift; exec {} \"$@\"", copy.display()),
        "sh".to_string(),
    ];
    let mut d = Daemon::start_wrapped(s, &cfg, &wrapper);
    d.restarts_expected = true;
    (d, copy, k)
}

fn kill_network(d: &Daemon) -> u32 {
    let net = d.network_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(net as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    net
}

// Goal: a network process that dies after posternd's binary was replaced
// (a package upgrade renames a new file over it) or removed is replaced
// all the same, by the binary the monitor runs, and serves: an upgrade
// must not turn the next crash of the network process into an outage.
#[test]
fn binary_replaced_or_removed_network_process_still_replaced() {
    let s = Scratch::new("selfexe");
    let (d, copy, k) = start_from_copy(s);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));

    // Replaced: another file renamed over the path, as an upgrade does.
    let other = copy.with_file_name("other");
    std::fs::write(&other, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&other, &copy).unwrap();
    let net = kill_network(&d);
    d.wait_log(
        &format!("network process pid={net} exited (signal=9)"),
        5 * SEC,
    );
    d.wait_log("started (restart 1 within 60s", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));

    // Removed.
    std::fs::remove_file(&copy).unwrap();
    let net = kill_network(&d);
    d.wait_log(
        &format!("network process pid={net} exited (signal=9)"),
        5 * SEC,
    );
    d.wait_log("started (restart 2 within 60s", 5 * SEC);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    assert_eq!(d.count("restart failed"), 0, "{:?}", d.lines());
}

// Goal: when restarts keep failing (the network process's chroot is gone,
// so none can start), posternd gives up within the window and exits
// non-zero saying why.
#[test]
fn restarts_failing_within_the_window_exit_non_zero() {
    if !require_root("restarts_failing_within_the_window_exit_non_zero") {
        return;
    }
    let s = Scratch::new("giveup");
    let chroot = s.path("state").join("empty");
    let (mut d, _copy, _k) = start_from_copy(s);
    std::fs::remove_dir(&chroot).unwrap();
    let t0 = Instant::now();
    kill_network(&d);
    let st = d.wait_exit(40 * SEC).expect("posternd must give up");
    let took = t0.elapsed();
    assert!(!st.success(), "{st:?}");
    assert_eq!(st.code(), Some(1), "{st:?}");
    let last = d.wait_log("giving up", 5 * SEC);
    assert!(last.contains("10 restarts within 60s"), "{last}");
    assert!(took < Duration::from_secs(60), "gave up after {took:?}");
    eprintln!("gave up {took:?} after the kill");
}

/// A stand-in for the network process: a harmless real process (so that
/// killing and reaping are real) and the far end of its channel.
struct Fake {
    pid: u32,
    chan: Channel,
}

fn monitor(s: &Scratch, first: Channel) -> std::rc::Rc<Monitor> {
    std::fs::create_dir_all(s.path("state")).unwrap();
    let (k, b) = key();
    drop(k);
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let user = if is_root() {
        "nobody".to_string()
    } else {
        user
    };
    let cfg = format!(
        "{}user = \"{user}\"\n[limits]\nlockout_after = 3\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"a\"\nkey = \"{b}\"\nrun = [\"/bin/true\"]\n",
        daemon_table(s)
    );
    let path = s.path("c.toml");
    write_private(&path, &cfg);
    let config = postern::config::load(&path).unwrap();
    let logger = Arc::new(Logger::new(LogTarget::Stderr));
    let (bound, _) = postern::monitor::bind_all(&config, &mut Vec::new(), None).unwrap();
    Monitor::new(config, bound, logger, first)
}

fn spawn_fake(
    program: &str,
    tx: &tokio::sync::mpsc::UnboundedSender<Fake>,
) -> std::io::Result<NetChild> {
    let (mine, theirs) = channel::pair()?;
    let child = tokio::process::Command::new(program)
        .arg("30")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let _ = tx.send(Fake {
        pid,
        chan: Channel::new(theirs)?,
    });
    Ok(NetChild {
        child,
        chan: Channel::new(mine)?,
    })
}

const FAST: Policy = Policy {
    window: Duration::from_secs(60),
    max_restarts: 3,
    first_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(5),
};

fn run_local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// Reads one whole config from a fake's end; returns the carried records.
async fn read_config(chan: &Channel) -> Vec<Carried> {
    let mut buf = vec![0u8; MAX_DOWN_LEN];
    let mut carried = Vec::new();
    let r = chan.recv(&mut buf).await.unwrap();
    assert!(
        matches!(Down::decode(&buf[..r.len]), Some(Down::Begin { .. })),
        "a replacement's config must start with Begin"
    );
    loop {
        let r = chan.recv(&mut buf).await.unwrap();
        assert!(r.len > 0, "channel closed inside the config");
        match Down::decode(&buf[..r.len]) {
            Some(Down::End) => return carried,
            Some(Down::Carry(records)) => carried.extend(records),
            Some(_) => {}
            None => panic!("undecodable config record"),
        }
    }
}

/// Reads a fake's channel up to the monitor's answer to a nonces request;
/// returns the first handle issued.
async fn first_nonce(chan: &Channel) -> u64 {
    let mut buf = vec![0u8; MAX_DOWN_LEN];
    loop {
        let r = chan.recv(&mut buf).await.unwrap();
        assert!(r.len > 0, "channel closed before the nonces");
        if let Some(Down::Nonces(list)) = Down::decode(&buf[..r.len]) {
            return list.first().expect("nonces issued").0;
        }
    }
}

fn wait_reaped(pid: u32) {
    let end = Instant::now() + 5 * SEC;
    while pid_alive(pid) {
        assert!(Instant::now() < end, "stand-in {pid} was not killed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// Goal: a network process that sends anything malformed (an index out of
// range, a short, long or garbage request, an unknown config generation,
// a descriptor, a reply to a nonce it was never issued) is killed and
// replaced by the real supervisor, and the replacement gets the config
// with the lockout the first one reported; well-formed requests in
// between end nothing. The replacement's session is fresh: a nonce issued
// to a process that was replaced is not one the new session issued.
#[test]
fn malformed_request_kills_and_replaces() {
    let peer = Peer {
        listener: 0,
        addr: "192.0.2.77".parse().unwrap(),
        port: 1,
    };
    let fail = Request::Fail {
        peer,
        reason: Reason::BadMac,
        failures: 1,
        handle: 0,
    }
    .encode()
    .to_vec();
    let out_of_range = Request::Fail {
        peer: Peer {
            listener: 7,
            ..peer
        },
        reason: Reason::BadMac,
        failures: 1,
        handle: 0,
    }
    .encode()
    .to_vec();
    let mut short = fail.clone();
    short.pop();
    let mut long = fail.clone();
    long.push(0);
    let garbage: Vec<u8> = (0..REQUEST_LEN as u8)
        .map(|i| i.wrapping_mul(151).wrapping_add(7))
        .collect();
    let mut unknown_generation = fail.clone();
    unknown_generation[8..12].copy_from_slice(&999u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("out-of-range index", out_of_range, false),
        ("short", short, false),
        ("long", long, false),
        ("garbage", garbage, false),
        ("unknown generation", unknown_generation, false),
        ("descriptor", fail.clone(), true),
        // Filled in below with a handle issued to an earlier stand-in.
        ("a nonce issued to a replaced process", Vec::new(), true),
    ];
    let policy = Policy {
        max_restarts: cases.len(),
        ..FAST
    };
    let s = Scratch::new("malformed");
    run_local(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut spawn = move || spawn_fake("/bin/sleep", &tx);
        let first = spawn().unwrap();
        let m = monitor(&s, first.chan);
        let signals = Signals::install().unwrap();
        let test = async {
            let mut fake = rx.recv().await.unwrap();
            let lockout = Request::Lockout { peer, failures: 3 }.encode().to_vec();
            let mut issued_earlier = 0u64;
            for (i, (what, bytes, with_fd)) in cases.iter().enumerate() {
                let chan = &fake.chan;
                // Well-formed first: counted, and on the first stand-in a
                // lockout, which every replacement must get.
                chan.send(&fail, &[]).await.unwrap();
                if i == 0 {
                    chan.send(&lockout, &[]).await.unwrap();
                    // Nonces for this process; the last stand-in replies
                    // to one of them.
                    let ask = Request::Nonces { count: 2 }.encode().to_vec();
                    chan.send(&ask, &[]).await.unwrap();
                    issued_earlier = first_nonce(chan).await;
                }
                let bytes = if bytes.is_empty() {
                    Request::Verify {
                        generation: 1,
                        handle: issued_earlier,
                        peer,
                        reply: ReplyBytes::Postern2([0x5a; REPLY_LEN]),
                        failures: 1,
                    }
                    .encode()
                    .to_vec()
                } else {
                    bytes.clone()
                };
                // Any open descriptor will do; standard error is always there.
                let fd = [std::io::stderr().as_raw_fd()];
                let fds: &[i32] = if *with_fd { &fd } else { &[] };
                chan.send(&bytes, fds).await.unwrap();
                let next = tokio::time::timeout(5 * SEC, rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: not replaced"))
                    .unwrap();
                wait_reaped(fake.pid);
                let carried = read_config(&next.chan).await;
                let locked = carried.iter().any(|c| {
                    matches!(c, Carried::Source { v6: false, bits, locked_for, .. }
                        if *bits == 0xc000_024d && !locked_for.is_zero())
                });
                assert!(locked, "{what}: the lockout was not carried: {carried:?}");
                fake = next;
            }
            assert!(
                rx.try_recv().is_err(),
                "a well-formed request ended a session"
            );
        };
        tokio::select! {
            r = supervise::run(&m, first.child, signals, &mut spawn, &policy) => {
                panic!("the supervisor stopped: {r:?}")
            }
            () = test => {}
        }
    });
}

// Goal: stand-ins that never stay up (they exit at once), or that cannot
// be started at all, make the supervisor give up after the policy's
// restarts within its window, with a message that says so.
#[test]
fn restarts_that_keep_failing_give_up() {
    for program in ["/bin/false", "/nonexistent/posternd"] {
        let s = Scratch::new("failing");
        run_local(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let good = spawn_fake("/bin/false", &tx).unwrap();
            let mut spawn = move || spawn_fake(program, &tx);
            let m = monitor(&s, good.chan);
            let signals = Signals::install().unwrap();
            let r = tokio::time::timeout(
                10 * SEC,
                supervise::run(&m, good.child, signals, &mut spawn, &FAST),
            )
            .await
            .expect("the supervisor must give up");
            let Err(MonitorError::GaveUp(msg)) = r else {
                panic!("{program}: {r:?}");
            };
            assert!(msg.contains("3 restarts within 60s"), "{msg}");
            assert!(msg.contains("giving up"), "{msg}");
            let mut started = 0;
            while rx.try_recv().is_ok() {
                started += 1;
            }
            let expected = if program == "/bin/false" { 1 + 3 } else { 1 };
            assert_eq!(started, expected, "{program}");
        });
    }
}

// Goal: what a network process sent before it died is not lost, even
// when its death is noticed first: lockouts of 20 sources, waiting in the
// channel when the monitor learns that the process is gone, all reach its
// replacement.
#[test]
fn events_sent_before_death_are_carried() {
    let s = Scratch::new("lastwords");
    run_local(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut spawn = move || spawn_fake("/bin/sleep", &tx);
        let first = spawn().unwrap();
        let m = monitor(&s, first.chan);
        let signals = Signals::install().unwrap();
        let test = async {
            let fake = rx.recv().await.unwrap();
            // Dead first (a zombie: the monitor can reap it at once), then
            // its last words queued, all before the monitor runs again.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(fake.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let end = Instant::now() + 5 * SEC;
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", fake.pid)).unwrap();
                let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
                if state == Some('Z') {
                    break;
                }
                assert!(Instant::now() < end, "the stand-in did not die: {stat}");
                std::thread::yield_now();
            }
            for n in 1..=20u8 {
                let peer = Peer {
                    listener: 0,
                    addr: IpAddr::from([198, 51, 100, n]),
                    port: 1,
                };
                let lockout = Request::Lockout { peer, failures: 3 }.encode();
                fake.chan.send(&lockout, &[]).await.unwrap();
            }
            let next = tokio::time::timeout(5 * SEC, rx.recv())
                .await
                .expect("not replaced")
                .unwrap();
            let carried = read_config(&next.chan).await;
            let locked = carried
                .iter()
                .filter(
                    |c| matches!(c, Carried::Source { locked_for, .. } if !locked_for.is_zero()),
                )
                .count();
            assert_eq!(locked, 20, "{carried:?}");
        };
        tokio::select! {
            r = supervise::run(&m, first.child, signals, &mut spawn, &FAST) => {
                panic!("the supervisor stopped: {r:?}")
            }
            () = test => {}
        }
    });
}
