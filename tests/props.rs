//! Property tests: many random cases from a seeded PRNG (no dependency;
//! set POSTERN_TEST_SEED to replay a failing seed, which every failure
//! message prints).
//!
//! - Over random configs and random peers, against the real daemon: no
//!   action runs without a valid MAC, and each valid handshake runs its
//!   action exactly once or answers already-active (single instance) or
//!   refused (cooldown, bind_source).
//! - The source table never exceeds its bound and, while it need not
//!   forget anyone, locks exactly as a plain model does.
//! - The handshake slots never exceed theirs and always evict the oldest.
//! - The wire and IPC codecs: random replies never verify, random
//!   requests are refused or re-encode to the same bytes.
//! - Every opened gate is stopped by its deadline, under random ttls,
//!   extensions and ceilings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use postern::config::{IpNet, Limits};
use postern::ipc::{Down, Request, REQUEST_LEN};
use postern::mac::MacKey;
use postern::net::limits::{Admit, Network, Slots, SourceKey, SourceTable, Strike};
use postern::secret::Key;
use postern::wire::{self, Answer, Reason as AckReason, Status, Verifier, REPLY_LEN};

const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Random configs and random peers against the real daemon.

#[derive(Debug, Clone)]
struct ActionSpec {
    name: String,
    key: Key,
    single_instance: bool,
    cooldown_ms: u64,
    bind_source: bool,
    busy_ms: u64,
}

#[derive(Debug, Clone, Copy)]
enum Peer {
    /// A complete, valid reply under action `i`'s key.
    Valid { i: usize, assert: Assert },
    /// A key no action has.
    WrongKey,
    /// A valid reply with one bit flipped.
    Flipped { i: usize, bit: usize },
    /// A valid reply cut to `len` bytes, then EOF.
    Cut { i: usize, len: usize },
    /// A valid reply followed by `extra` bytes.
    Extended { i: usize, extra: usize },
    /// Random bytes.
    Noise { len: usize },
    /// A valid reply for an earlier greeting.
    Replay { i: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assert {
    Nothing,
    Source,
    Other,
}

fn random_peer(rng: &mut Prng, n: usize) -> Peer {
    let i = rng.below(n as u64) as usize;
    match rng.below(10) {
        0..=3 => Peer::Valid {
            i,
            assert: *rng.pick(&[Assert::Nothing, Assert::Source, Assert::Other]),
        },
        4 => Peer::WrongKey,
        5 => Peer::Flipped {
            i,
            bit: rng.below(REPLY_LEN as u64 * 8) as usize,
        },
        6 => Peer::Cut {
            i,
            len: rng.below(REPLY_LEN as u64) as usize,
        },
        7 => Peer::Extended {
            i,
            extra: rng.range(1, 64) as usize,
        },
        8 => Peer::Noise {
            len: rng.below(100) as usize,
        },
        _ => Peer::Replay { i },
    }
}

/// Plays one peer from loopback source `src`; returns the ack's status if
/// one came back (and verified).
fn play(
    to: std::net::SocketAddr,
    src: IpAddr,
    peer: Peer,
    actions: &[ActionSpec],
    rng: &mut Prng,
    old_greeting: &mut Option<[u8; wire::GREETING_LEN]>,
) -> Option<Status> {
    let other: IpAddr = "192.0.2.99".parse().unwrap();
    let mut c = connect(to, Some(src));
    let g = read_greeting(&mut c).expect("exempt loopback is always greeted");
    let mk = |i: usize| MacKey::new(actions[i].key.expose());
    let (bytes, signer): (Vec<u8>, Option<(usize, [u8; REPLY_LEN])>) = match peer {
        Peer::Valid { i, assert } => {
            let a = match assert {
                Assert::Nothing => None,
                Assert::Source => Some(src),
                Assert::Other => Some(other),
            };
            let r = wire::reply(&mk(i), &g, a);
            (r.to_vec(), Some((i, r)))
        }
        Peer::WrongKey => {
            let (k, _) = key();
            (
                wire::reply(&MacKey::new(k.expose()), &g, None).to_vec(),
                None,
            )
        }
        Peer::Flipped { i, bit } => {
            let mut r = wire::reply(&mk(i), &g, None);
            r[bit / 8] ^= 1 << (bit % 8);
            (r.to_vec(), None)
        }
        Peer::Cut { i, len } => (wire::reply(&mk(i), &g, None)[..len].to_vec(), None),
        Peer::Extended { i, extra } => {
            let mut v = wire::reply(&mk(i), &g, None).to_vec();
            v.extend(rng.bytes(extra));
            (v, None)
        }
        Peer::Noise { len } => (rng.bytes(len), None),
        Peer::Replay { i } => {
            let old = old_greeting.unwrap_or([7u8; wire::GREETING_LEN]);
            (wire::reply(&mk(i), &old, None).to_vec(), None)
        }
    };
    *old_greeting = Some(g);
    c.write_all(&bytes).unwrap();
    let _ = c.shutdown(Shutdown::Write);
    let rest = drain(&mut c);
    match signer {
        Some((i, r)) => {
            assert_eq!(
                rest.len(),
                wire::ACK_LEN,
                "a valid reply is always answered"
            );
            let mut a = [0u8; wire::ACK_LEN];
            a.copy_from_slice(&rest);
            let st = wire::verify_ack(&mk(i), &g, &r, &a);
            assert!(st.is_some(), "the ack verifies under the action's key");
            st.map(|a| a.status)
        }
        None => {
            assert!(rest.is_empty(), "{peer:?} got {} bytes back", rest.len());
            None
        }
    }
}

fn random_actions(rng: &mut Prng, dir: &std::path::Path) -> (Vec<ActionSpec>, String) {
    let n = rng.range(1, 4) as usize;
    let mut specs = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        let (k, b) = key();
        let spec = ActionSpec {
            name: format!("act{i}"),
            key: k,
            single_instance: rng.chance(50),
            cooldown_ms: *rng.pick(&[0, 0, 400, 1500]),
            bind_source: rng.chance(30),
            busy_ms: *rng.pick(&[0, 0, 300]),
        };
        text.push_str(&format!(
            "[[action]]\nname = \"{name}\"\nkey = \"{b}\"\nsingle_instance = {si}\nbind_source = {bs}\ncooldown = \"{cd}ms\"\n\
             run = [\"/bin/sh\", \"-c\", \"echo $1 >> {out}; sleep {busy}\", \"sh\", \"{{addr}}\"]\n",
            name = spec.name,
            si = spec.single_instance,
            bs = spec.bind_source,
            cd = spec.cooldown_ms,
            out = dir.join(format!("{}.out", spec.name)).display(),
            busy = spec.busy_ms as f64 / 1000.0,
        ));
        specs.push(spec);
    }
    (specs, text)
}

// Goal: over random configs (1-4 actions, random single_instance,
// cooldown, bind_source, run time) and random peers (valid, wrong key,
// flipped bit, cut, extended, noise, replayed), no action runs without a
// valid MAC, every valid reply gets a signed answer, and each "started"
// is exactly one run of exactly that action for exactly the address the
// rules give; "already active" only for single-instance actions and
// "refused" only for cooldowns and bind_source mismatches.
#[test]
fn random_configs_and_peers_fire_only_on_valid_macs() {
    let seed = Prng::seed(0x9e37_79b9);
    let mut rng = Prng::new(seed);
    let configs = 4;
    let peers_per_config = 60;
    let mut total_valid = 0;
    for round in 0..configs {
        let s = Scratch::new(&format!("prop{round}"));
        let (actions, text) = random_actions(&mut rng, &s.0);
        let cfg = format!(
            "{}[limits]\nexempt = [\"127.0.0.0/8\"]\nrate_burst = 100000\nrate_per_minute = 100000\nhandshake_timeout = \"500ms\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\n{text}",
            daemon_table(&s)
        );
        let outs: Vec<_> = actions
            .iter()
            .map(|a| s.path(&format!("{}.out", a.name)))
            .collect();
        let d = Daemon::start(s, &cfg);
        // Expected runs: per action, the addresses it must have run for.
        let mut expected: Vec<Vec<String>> = vec![Vec::new(); actions.len()];
        let mut old = None;
        for _ in 0..peers_per_config {
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, rng.range(1, 20) as u8));
            let peer = random_peer(&mut rng, actions.len());
            let st = play(d.addr(), src, peer, &actions, &mut rng, &mut old);
            let ctx = format!("seed {seed} round {round} {peer:?} {actions:?}");
            match (peer, st) {
                (Peer::Valid { i, assert }, Some(st)) => {
                    total_valid += 1;
                    let a = &actions[i];
                    let target = match assert {
                        Assert::Nothing => src,
                        Assert::Source => src,
                        Assert::Other => "192.0.2.99".parse().unwrap(),
                    };
                    let bound_ok = !a.bind_source || assert == Assert::Source;
                    match st {
                        Status::Started => {
                            assert!(bound_ok, "{ctx}: started despite bind_source");
                            expected[i].push(target.to_string());
                        }
                        // Busy: a single-instance action already started.
                        Status::AlreadyActive => assert!(
                            a.single_instance && !expected[i].is_empty(),
                            "{ctx}: already active"
                        ),
                        // Cooldown (after an earlier start) or bind_source.
                        Status::Refused => assert!(
                            !bound_ok || (a.cooldown_ms > 0 && !expected[i].is_empty()),
                            "{ctx}: refused"
                        ),
                        Status::Failed => panic!("{ctx}: /bin/sh failed to start"),
                        // No closing action is configured here.
                        Status::Closed | Status::NotOpen => {
                            panic!("{ctx}: {st:?} without a closing action")
                        }
                    }
                    if !bound_ok {
                        assert_eq!(st, Status::Refused, "{ctx}");
                    }
                }
                (Peer::Valid { .. }, None) => panic!("{ctx}: valid reply without ack"),
                (_, Some(st)) => panic!("{ctx}: invalid reply answered {st:?}"),
                (_, None) => {}
            }
            if rng.chance(10) {
                std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
            }
        }
        // Every run finishes; the marker files hold exactly the expected
        // runs (as multisets: runs of one action may overlap).
        let started: usize = expected.iter().map(Vec::len).sum();
        if started > 0 {
            d.wait_log_n(" exit=", started, 20 * SEC);
        }
        std::thread::sleep(Duration::from_millis(100));
        for (i, want) in expected.iter_mut().enumerate() {
            let mut got: Vec<String> = std::fs::read_to_string(&outs[i])
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            got.sort();
            want.sort();
            assert_eq!(
                &got, want,
                "seed {seed} round {round}: runs of {}",
                actions[i].name
            );
        }
        assert_eq!(d.count("ok src="), d.count("status="), "seed {seed}");
    }
    assert!(
        total_valid >= 40,
        "seed {seed}: only {total_valid} valid exchanges"
    );
}

// ---------------------------------------------------------------------------
// The source table.

#[derive(Debug, Default, Clone)]
struct ModelEntry {
    failures: u32,
    locked_until: Option<Instant>,
    good: bool,
}

/// A network's counter in the model: recent failures, forgotten after
/// lockout_duration without one.
#[derive(Debug, Clone)]
struct ModelNet {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// The enclosing networks of `ip` the table counts, with their factor.
fn model_networks(ip: IpAddr) -> Vec<(Network, u32)> {
    postern::net::limits::NETWORK_LOCKOUT
        .iter()
        .filter_map(|&(family, len, factor)| Network::of(ip, family, len).map(|n| (n, factor)))
        .collect()
}

fn random_limits(rng: &mut Prng, capacity: usize) -> Limits {
    Limits {
        handshake_timeout: SEC,
        max_handshakes: NonZeroUsize::new(8).unwrap(),
        rate_burst: NonZeroU32::new(rng.range(1, 5) as u32).unwrap(),
        rate_per_minute: NonZeroU32::new(rng.range(1, 120) as u32).unwrap(),
        lockout_after: NonZeroU32::new(rng.range(1, 5) as u32).unwrap(),
        lockout_duration: Duration::from_millis(rng.range(500, 60_000)),
        lockout_table: NonZeroUsize::new(capacity).unwrap(),
        // The model checks lockouts, not the budget: never let it run out.
        verify_per_second: NonZeroU32::new(1_000_000).unwrap(),
        exempt: if rng.chance(50) {
            vec![IpNet {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8,
            }]
        } else {
            Vec::new()
        },
    }
}

/// A pool of sources: IPv4 hosts (some exempt) and IPv6 hosts, several
/// per /64 so that /64 keying is exercised.
fn source_pool(rng: &mut Prng, n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|_| match rng.below(4) {
            0 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, rng.below(4) as u8)),
            1 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, rng.below(16) as u8)),
            _ => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                rng.below(3) as u16,
                rng.below(3) as u16,
                0,
                0,
                0,
                rng.next_u64() as u16,
            )),
        })
        .collect()
}

// Goal: under random sequences of admit / fail / succeed over random
// IPv4 and IPv6 sources at random times, the table never holds more than
// its capacity; an exempt source is never locked; and when the capacity
// is large enough that nothing need be forgotten, every answer matches a
// plain model of the lockout rules (per /32 and per /64, and per
// enclosing /24, /56 and /48, which a source in good standing passes).
#[test]
fn source_table_is_bounded_and_matches_the_model() {
    let seed = Prng::seed(0x7ab1e);
    let mut rng = Prng::new(seed);
    let mut ops_total = 0u64;
    for case in 0..1500 {
        let n = rng.range(1, 40) as usize;
        let pool = source_pool(&mut rng, n);
        let distinct = {
            let mut k: Vec<SourceKey> = pool.iter().map(|ip| SourceKey::of(*ip)).collect();
            k.sort();
            k.dedup();
            let mut n: Vec<Network> = pool
                .iter()
                .flat_map(|ip| model_networks(*ip).into_iter().map(|(n, _)| n))
                .collect();
            n.sort();
            n.dedup();
            k.len() + n.len()
        };
        let roomy = rng.chance(50);
        let capacity = if roomy {
            distinct + rng.below(4) as usize
        } else {
            rng.range(1, distinct.max(1) as u64) as usize
        };
        let limits = random_limits(&mut rng, capacity.max(1));
        let mut table = SourceTable::new(&limits);
        let mut model: HashMap<SourceKey, ModelEntry> = HashMap::new();
        let mut nets: HashMap<Network, ModelNet> = HashMap::new();
        let exempt = |ip: IpAddr| limits.exempt.iter().any(|n| n.contains(ip));
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..rng.range(10, 200) {
            ops_total += 1;
            now += Duration::from_millis(rng.below(3000));
            let ip = *rng.pick(&pool);
            let k = SourceKey::of(ip);
            let ctx = format!("seed {seed} case {case} ip {ip} capacity {capacity}");
            match rng.below(3) {
                0 => {
                    let got = table.admit(ip, now);
                    if exempt(ip) {
                        assert!(!matches!(got, Admit::Locked), "{ctx}: exempt locked");
                    }
                    let m = model.entry(k).or_default();
                    let own = m.locked_until.is_some_and(|t| t > now) && !exempt(ip);
                    if !own {
                        m.locked_until = None;
                    }
                    let net_locked = !m.good
                        && !exempt(ip)
                        && model_networks(ip).iter().any(|(n, _)| {
                            nets.get(n)
                                .is_some_and(|x| x.locked_until.is_some_and(|t| t > now))
                        });
                    let locked = own || net_locked;
                    if roomy {
                        assert_eq!(matches!(got, Admit::Locked), locked, "{ctx}: admit {got:?}");
                    }
                }
                1 => {
                    let got = table.fail(ip, now);
                    if exempt(ip) {
                        assert_eq!(got, Strike::Exempt, "{ctx}");
                        continue;
                    }
                    let after = limits.lockout_after.get();
                    for (n, factor) in model_networks(ip) {
                        let x = nets.entry(n).or_insert(ModelNet {
                            failures: 0,
                            last_failure: now,
                            locked_until: None,
                        });
                        if x.locked_until.is_some_and(|t| t <= now) {
                            x.locked_until = None;
                        }
                        if now.duration_since(x.last_failure) >= limits.lockout_duration {
                            x.failures = 0;
                        }
                        x.last_failure = now;
                        x.failures += 1;
                        if x.locked_until.is_none() && x.failures >= after * factor {
                            x.failures = 0;
                            x.locked_until = Some(now + limits.lockout_duration);
                        }
                    }
                    let m = model.entry(k).or_default();
                    m.good = false;
                    m.failures += 1;
                    let want = if m.failures >= after {
                        let f = m.failures;
                        m.failures = 0;
                        m.locked_until = Some(now + limits.lockout_duration);
                        Strike::LockedOut { failures: f }
                    } else {
                        Strike::Counted {
                            failures: m.failures,
                        }
                    };
                    if roomy {
                        assert_eq!(got, want, "{ctx}");
                    }
                }
                _ => {
                    table.succeed(ip, now);
                    let m = model.entry(k).or_default();
                    m.failures = 0;
                    m.good = true;
                }
            }
            assert!(
                table.len() <= capacity.max(1),
                "{ctx}: {} entries",
                table.len()
            );
            if roomy {
                for (ip2, m) in pool.iter().map(|ip| (ip, model.get(&SourceKey::of(*ip)))) {
                    let want = m.is_some_and(|m| m.locked_until.is_some_and(|t| t > now));
                    assert_eq!(table.is_locked(*ip2, now), want, "{ctx}: is_locked({ip2})");
                }
            }
            if table.take_full_note() {
                assert!(
                    table.len() >= capacity.max(1),
                    "{ctx}: full note below capacity"
                );
            }
        }
    }
    eprintln!("{ops_total} table operations in 1500 random sequences");
    assert!(ops_total > 100_000, "only {ops_total} operations");
}

// Goal: the handshake slots never hold more than their capacity and, at
// capacity or when shrunk, evict exactly what a plain model says: the
// oldest handshake of the network (/24, /48) holding the most slots, ties
// going to the network whose oldest handshake is oldest.
#[test]
fn slots_are_bounded_and_evict_from_the_busiest_network() {
    let seed = Prng::seed(0x51075);
    let mut rng = Prng::new(seed);
    let addrs: [IpAddr; 5] = [
        "192.0.2.1".parse().unwrap(),
        "192.0.2.77".parse().unwrap(),
        "198.51.100.1".parse().unwrap(),
        "2001:db8:1:2::1".parse().unwrap(),
        "2001:db8:1:3::1".parse().unwrap(),
    ];
    // The model's victim: index into `live` (ids in insertion order).
    let victim = |live: &[(u64, IpAddr)]| -> usize {
        let mut best: Option<(usize, usize)> = None; // (count, first index)
        for (i, (_, a)) in live.iter().enumerate() {
            let net = Network::widest(*a);
            if live[..i].iter().any(|(_, b)| Network::widest(*b) == net) {
                continue; // not this network's oldest
            }
            let count = live
                .iter()
                .filter(|(_, b)| Network::widest(*b) == net)
                .count();
            if best.is_none_or(|(c, _)| count > c) {
                best = Some((count, i));
            }
        }
        best.map_or(0, |(_, i)| i)
    };
    for case in 0..2000 {
        let mut cap = rng.range(1, 16) as usize;
        let mut slots: Slots<u64> = Slots::new(NonZeroUsize::new(cap).unwrap());
        let mut live: Vec<(u64, IpAddr)> = Vec::new();
        for _ in 0..rng.range(1, 100) {
            let ctx = format!("seed {seed} case {case}");
            match rng.below(10) {
                0..=5 => {
                    let a = *rng.pick(&addrs);
                    let (id, evicted) = slots.reserve();
                    if live.len() >= cap {
                        let (want, _) = live.remove(victim(&live));
                        assert_eq!(evicted.map(|(_, h)| h), Some(want), "{ctx}");
                    } else {
                        assert!(evicted.is_none(), "{ctx}");
                    }
                    slots.insert(id, a, id);
                    live.push((id, a));
                }
                6..=8 => {
                    if !live.is_empty() {
                        let i = rng.below(live.len() as u64) as usize;
                        slots.remove(live.remove(i).0);
                    }
                }
                _ => {
                    cap = rng.range(1, 16) as usize;
                    let out = slots.resize(NonZeroUsize::new(cap).unwrap());
                    let mut want = Vec::new();
                    while live.len() > cap {
                        want.push(live.remove(victim(&live)).0);
                    }
                    let got: Vec<u64> = out.into_iter().map(|(_, h)| h).collect();
                    assert_eq!(got, want, "{ctx}");
                }
            }
            assert!(slots.len() <= cap, "{ctx}");
            assert_eq!(slots.len(), live.len(), "{ctx}");
        }
    }
}

// ---------------------------------------------------------------------------
// Configs: what --check accepts, the network process loads.

/// A random `[limits] exempt` entry: plain, IPv4-mapped, all-zero,
/// covering the mapped range, with host bits set, or not a network.
fn random_exempt(rng: &mut Prng) -> String {
    let v4 = |rng: &mut Prng| Ipv4Addr::from(rng.next_u64() as u32);
    let mask4 = |a: Ipv4Addr, p: u32| {
        Ipv4Addr::from(u32::from(a) & u32::MAX.checked_shl(32 - p).unwrap_or(0))
    };
    let mask6 = |a: u128, p: u32| Ipv6Addr::from(a & u128::MAX.checked_shl(128 - p).unwrap_or(0));
    match rng.below(24) {
        0..=3 => {
            let p = rng.range(0, 32) as u32;
            format!("{}/{p}", mask4(v4(rng), p))
        }
        4..=7 => {
            let p = rng.range(0, 128) as u32;
            let a = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            format!("{}/{p}", mask6(a, p))
        }
        8 => {
            let p = rng.range(96, 128) as u32;
            let a = u128::from(u32::from(v4(rng))) | (0xffffu128 << 32);
            format!("{}/{p}", mask6(a, p))
        }
        9..=11 => rng
            .pick(&[
                "::/0",
                "0.0.0.0/0",
                "::/96",
                "::ffff:0:0/95",
                "::/80",
                "::1",
                "0.0.0.0",
                "::",
            ])
            .to_string(),
        12 => format!("{}", v4(rng)),
        13 => format!("{}/{}", v4(rng), rng.range(1, 31)),
        14 => rng
            .pick(&["intranet", "10.0.0.0/33", "::/129", "10.0.0.0/-1", ""])
            .to_string(),
        15 => format!("::ffff:{}", v4(rng)),
        16..=18 => format!("2001:db8:{:x}::/48", rng.below(65_536)),
        19..=21 => format!("fe80::/{}", rng.range(10, 64)),
        _ => format!("{}/24", mask4(v4(rng), 24)),
    }
}

/// A random `[limits]` table around the edges of every range (now and
/// then just past one); 127.0.0.0/8 is always exempt, so the test's own
/// trigger is never locked or over budget.
fn random_limits_table(rng: &mut Prng) -> String {
    let mut t = String::from("[limits]\n");
    let mut pick = |rng: &mut Prng, key: &str, valid: &[&str], invalid: &str| {
        if rng.chance(50) {
            let v = if rng.chance(3) {
                invalid
            } else {
                *rng.pick(valid)
            };
            t.push_str(&format!("{key} = {v}\n"));
        }
    };
    pick(
        rng,
        "handshake_timeout",
        &["\"1s\"", "\"100ms\"", "\"5s\"", "\"365d\""],
        "\"0s\"",
    );
    pick(rng, "max_handshakes", &["1", "256", "65536"], "65537");
    pick(rng, "rate_burst", &["1", "10", "1000000"], "0");
    pick(rng, "rate_per_minute", &["1", "30", "1000000"], "1000001");
    pick(rng, "lockout_after", &["1", "5", "1000000"], "0");
    pick(
        rng,
        "lockout_duration",
        &["\"1s\"", "\"15m\"", "\"365d\""],
        "\"0s\"",
    );
    pick(rng, "lockout_table", &["1", "4096", "262144"], "262145");
    pick(rng, "verify_per_second", &["1", "200", "1000000"], "0");
    let n = rng.below(4) as usize;
    let mut nets = vec!["\"127.0.0.0/8\"".to_string()];
    nets.extend((0..n).map(|_| format!("\"{}\"", random_exempt(rng))));
    t.push_str(&format!("exempt = [{}]\n", nets.join(", ")));
    t
}

// Goal: finding 7 — every generated config that `posternd --check`
// accepts also loads in the network process: a running daemon reloads
// into it and serves, and a fresh daemon starts on it; every config it
// refuses is refused by a reload too, and the daemon serves on.
#[test]
fn configs_that_pass_check_load_in_the_network_process() {
    let seed = Prng::seed(0xc4ec);
    let mut rng = Prng::new(seed);
    let s = Scratch::new("checkload");
    let (k, b) = key();
    let config = |s: &Scratch, limits: &str| {
        format!(
            "{}{limits}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"a\"\nkey = \"{b}\"\nsingle_instance = false\nrun = [\"/bin/true\"]\n",
            daemon_table(s)
        )
    };
    let mut d = Daemon::start(Scratch::new("checkload-d"), &config(&s, ""));
    let net = d.network_pid();
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..60u32 {
        let limits = random_limits_table(&mut rng);
        let cfg = config(&s, &limits);
        let ctx = format!("seed {seed} case {case}:\n{cfg}");
        let path = s.path("case.toml");
        write_private(&path, &cfg);
        let ok = check_config(&path).status.success();
        d.rewrite(&cfg);
        d.signal(nix::sys::signal::Signal::SIGHUP);
        if ok {
            accepted += 1;
            d.wait_log_n("reloaded", accepted, 10 * SEC);
            if accepted % 10 == 1 {
                let fs = Scratch::new("checkload-fresh");
                let fcfg = config(&fs, &limits);
                let fresh = Daemon::start(fs, &fcfg);
                let src = Some(IpAddr::V4(Ipv4Addr::new(127, 78, case as u8, 1)));
                assert_eq!(
                    trigger_from(fresh.addr(), src, &k, None),
                    Outcome::Ack(Status::Started),
                    "fresh start, {ctx}"
                );
            }
        } else {
            refused += 1;
            d.wait_log_n(
                "reload failed; keeping the running config",
                refused,
                10 * SEC,
            );
        }
        let src = Some(IpAddr::V4(Ipv4Addr::new(127, 77, case as u8, 1)));
        assert_eq!(
            trigger_from(d.addr(), src, &k, None),
            Outcome::Ack(Status::Started),
            "{ctx}"
        );
        assert!(
            d.wait_exit(Duration::ZERO).is_none(),
            "daemon exited, {ctx}"
        );
        assert!(pid_alive(net), "network process died, {ctx}");
    }
    eprintln!("{accepted} generated configs accepted and loaded, {refused} refused");
    assert!(
        accepted >= 10 && refused >= 10,
        "{accepted} accepted, {refused} refused"
    );
}

// ---------------------------------------------------------------------------
// Codecs.

// Goal: random replies never verify, real ones verify under exactly
// their own key, and acks carry exactly the status they were made with.
#[test]
fn random_replies_never_verify() {
    let seed = Prng::seed(0xacc);
    let mut rng = Prng::new(seed);
    let keys: Vec<Key> = (0..8).map(|_| key().0).collect();
    let v = Verifier::from_keys(&keys);
    for _ in 0..20_000 {
        let g = wire::greeting(&rng.bytes(32).try_into().unwrap());
        let mut r = [0u8; REPLY_LEN];
        r.copy_from_slice(&rng.bytes(REPLY_LEN));
        assert_eq!(v.check_reply(&g, &r), None, "seed {seed}");
        let i = rng.below(8) as usize;
        let mk = MacKey::new(keys[i].expose());
        let addr = if rng.chance(50) {
            Some(IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)))
        } else {
            None
        };
        let good = wire::reply(&mk, &g, addr);
        let want = addr.map(wire::canonical_ip);
        assert_eq!(v.check_reply(&g, &good), Some((i, want)), "seed {seed}");
        let st = Status::ALL[rng.below(Status::ALL.len() as u64) as usize];
        let why = AckReason::KNOWN[rng.below(AckReason::KNOWN.len() as u64) as usize];
        let answer = Answer::because(st, why).with_seconds(rng.below(100_000) as u32);
        let a = wire::ack(&mk, &g, &good, answer);
        assert_eq!(wire::verify_ack(&mk, &g, &good, &a), Some(answer));
        let j = (i + 1) % 8;
        assert_eq!(
            wire::verify_ack(&MacKey::new(keys[j].expose()), &g, &good, &a),
            None
        );
    }
}

// Goal: mutated requests (the untrusted direction) are refused or decode
// to a request that re-encodes to the very same bytes, and arbitrary
// monitor messages never panic the decoder or what uses its output (an
// exempt network with an impossible prefix is refused).
#[test]
fn ipc_decoding_is_total_and_exact() {
    let seed = Prng::seed(0x1bc);
    let mut rng = Prng::new(seed);
    let peer = postern::ipc::Peer {
        listener: 1,
        addr: "192.0.2.5".parse().unwrap(),
        port: 4242,
    };
    let base = Request::Verify {
        generation: 2,
        handle: 3 << 32 | 1,
        peer,
        reply: postern::ipc::ReplyBytes::Postern2([0x5a; wire::REPLY_LEN]),
        failures: 1,
    }
    .encode();
    let mut accepted = 0;
    for _ in 0..50_000 {
        let mut b = base;
        for _ in 0..rng.range(1, 4) {
            let i = rng.below(REQUEST_LEN as u64) as usize;
            b[i] = rng.next_u64() as u8;
        }
        if let Ok(req) = Request::decode(&b, 2) {
            accepted += 1;
            let generation = Request::generation_of(&b).unwrap();
            assert_eq!(req.encode_for(generation), b, "seed {seed}");
        }
        let len = rng.below(80) as usize;
        let bytes = rng.bytes(len);
        if let Some(Down::Exempt(net)) = Down::decode(&bytes) {
            let _ = net.contains(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let _ = net.contains(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
    }
    assert!(accepted > 100, "seed {seed}: mutations too destructive");
    // The regression the fuzzer found: prefixes beyond the family's bits.
    let mut v4 = vec![postern::ipc::VERSION, 0x92, 33, 1];
    v4.extend(wire::encode_addr(Some("10.0.0.0".parse().unwrap())));
    assert!(Down::decode(&v4).is_none(), "IPv4 /33 refused");
    let mut v6 = vec![postern::ipc::VERSION, 0x92, 129, 0];
    v6.extend(wire::encode_addr(Some("2001:db8::".parse().unwrap())));
    assert!(Down::decode(&v6).is_none(), "IPv6 /129 refused");
    v6[2] = 128;
    assert!(Down::decode(&v6).is_some(), "IPv6 /128 accepted");
}

// ---------------------------------------------------------------------------
// Gates close by their deadlines.

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[derive(Debug)]
struct GateSpec {
    key: Key,
    ttl_ms: u64,
    extend: bool,
    max_open_ms: u64,
}

/// What the test knows of one opening: bounds on its deadline.
#[derive(Debug)]
struct Opening {
    /// Earliest and latest possible deadline (ms since the epoch).
    lo: u64,
    hi: u64,
    /// Earliest and latest possible ceiling (opening time + max_open).
    ceil_lo: u64,
    ceil_hi: u64,
}

// Goal: under random gates (ttl 1-2 s, extend or not, max_open 1-3 ttls)
// and random triggers over 5 s, every gate that opened is closed, each
// close comes no earlier than its deadline and at most 1.5 s after it,
// where the deadline follows ttl, every extension and the ceiling.
#[test]
fn every_opened_gate_closes_by_its_deadline() {
    let seed = Prng::seed(0x6a7e);
    let mut rng = Prng::new(seed);
    let s = Scratch::new("propgates");
    let mut gates = Vec::new();
    let mut text = String::new();
    for i in 0..4 {
        let (k, b) = key();
        let ttl_ms = *rng.pick(&[1000, 1500, 2000]);
        let extend = rng.chance(60);
        let max_open_ms = ttl_ms * rng.range(1, 3);
        let marker = s.path(&format!("gate{i}.log"));
        text.push_str(&format!(
            "[[action]]\nname = \"gate{i}\"\nkey = \"{b}\"\n\
             run = [\"/bin/sh\", \"-c\", \"echo open $(date +%s%3N) >> {m}\"]\n\
             stop = [\"/bin/sh\", \"-c\", \"echo close $(date +%s%3N) >> {m}\"]\n\
             ttl = \"{ttl_ms}ms\"\nextend = {extend}\nmax_open = \"{max_open_ms}ms\"\n",
            m = marker.display()
        ));
        gates.push(GateSpec {
            key: k,
            ttl_ms,
            extend,
            max_open_ms,
        });
    }
    let cfg = format!(
        "{}[limits]\nexempt = [\"127.0.0.0/8\"]\nrate_burst = 100000\nrate_per_minute = 100000\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n{text}",
        daemon_table(&s)
    );
    let markers: Vec<_> = (0..gates.len())
        .map(|i| s.path(&format!("gate{i}.log")))
        .collect();
    let d = Daemon::start(s, &cfg);
    let mut openings: Vec<Vec<Opening>> = (0..gates.len()).map(|_| Vec::new()).collect();
    let start = Instant::now();
    let mut triggers = 0;
    while start.elapsed() < 5 * SEC {
        let i = rng.below(gates.len() as u64) as usize;
        let g = &gates[i];
        let before = now_ms();
        let out = trigger(d.addr(), &g.key);
        let after = now_ms();
        triggers += 1;
        let ctx = format!("seed {seed} {g:?}");
        match out {
            Outcome::Ack(Status::Started) => openings[i].push(Opening {
                lo: before + g.ttl_ms,
                hi: after + g.ttl_ms,
                ceil_lo: before + g.max_open_ms,
                ceil_hi: after + g.max_open_ms,
            }),
            Outcome::Ack(Status::AlreadyActive) => {
                let o = openings[i].last_mut().expect("already active means open");
                if g.extend {
                    // Moved to min(trigger time + ttl, ceiling) unless it
                    // was later already.
                    o.lo = o.lo.max((before + g.ttl_ms).min(o.ceil_lo));
                    o.hi = o.hi.max((after + g.ttl_ms).min(o.ceil_hi));
                }
            }
            other => panic!("{ctx}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(rng.range(50, 700)));
    }
    // Everything closes within the longest ceiling plus slack.
    let last = openings
        .iter()
        .flatten()
        .map(|o| o.hi.max(o.ceil_hi))
        .max()
        .unwrap_or(0);
    while now_ms() < last + 2000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut closed = 0;
    for (i, g) in gates.iter().enumerate() {
        let text = std::fs::read_to_string(&markers[i]).unwrap_or_default();
        let events: Vec<(&str, u64)> = text
            .lines()
            .map(|l| {
                let (what, ms) = l.split_once(' ').unwrap();
                (what, ms.trim().parse().unwrap())
            })
            .collect();
        let opens: Vec<u64> = events
            .iter()
            .filter(|e| e.0 == "open")
            .map(|e| e.1)
            .collect();
        let closes: Vec<u64> = events
            .iter()
            .filter(|e| e.0 == "close")
            .map(|e| e.1)
            .collect();
        let ctx = format!("seed {seed} {g:?}\n{text}");
        assert_eq!(opens.len(), openings[i].len(), "{ctx}: one run per start");
        assert_eq!(closes.len(), opens.len(), "{ctx}: every open gate closed");
        for ((o, c), m) in opens.iter().zip(&closes).zip(&openings[i]) {
            assert!(c > o, "{ctx}");
            assert!(
                *c + 50 >= m.lo,
                "{ctx}: closed at {c}, before its deadline {}",
                m.lo
            );
            assert!(
                *c <= m.hi + 1500,
                "{ctx}: closed at {c}, deadline was {}",
                m.hi
            );
            closed += 1;
        }
        // Opened and closed strictly in turn.
        for w in events.windows(2) {
            assert_ne!(w[0].0, w[1].0, "{ctx}: two opens or closes in a row");
        }
    }
    assert!(triggers >= 8, "seed {seed}: only {triggers} triggers");
    eprintln!("{triggers} triggers, {closed} gates opened and closed on time");
    assert_eq!(d.count("closed (deadline)"), closed);
}

// Goal (race): a trigger that arrives while a gate's stop command is
// still running must not have its fresh opening undone by that stop.
#[test]
fn reopen_during_stop_is_not_undone() {
    let s = Scratch::new("reopen");
    let (k, b) = key();
    let m = s.path("door.log");
    let cfg = format!(
        "{}[[listen]]\naddress = \"127.0.0.1:0\"\n[[action]]\nname = \"door\"\nkey = \"{b}\"\n\
         run = [\"/bin/sh\", \"-c\", \"echo open $(date +%s%3N) >> {m}\"]\n\
         stop = [\"/bin/sh\", \"-c\", \"sleep 0.6; echo close $(date +%s%3N) >> {m}\"]\n\
         ttl = \"1s\"\nextend = false\n",
        daemon_table(&s),
        m = m.display()
    );
    let d = Daemon::start(s, &cfg);
    assert_eq!(trigger(d.addr(), &k), Outcome::Ack(Status::Started));
    // The deadline passes at ~1 s; the stop runs until ~1.6 s.
    std::thread::sleep(Duration::from_millis(1250));
    let again = trigger(d.addr(), &k);
    std::thread::sleep(Duration::from_millis(3500));
    let text = std::fs::read_to_string(&m).unwrap();
    eprintln!("{again:?}\n{text}");
    let kinds: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    for w in kinds.windows(2) {
        assert_ne!(w[0], w[1], "open and close interleaved:\n{text}");
    }
}

// ---------------------------------------------------------------------------
// The network process in-process, with the test playing the monitor.

mod inproc {
    use super::*;
    use postern::channel::{self, Channel};
    use postern::config::Protocol;
    use postern::ipc::{NetLimits, Notice, Reason, ReplyBytes, Verdict, MAX_DOWN_LEN};
    use postern::secret::Password;
    use std::cell::RefCell;
    use std::os::fd::AsRawFd;
    use std::rc::Rc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Net {
        pub mon: Rc<Channel>,
        pub seen: Rc<RefCell<Vec<Ev>>>,
        keys: Rc<RefCell<HashMap<u32, Keys>>>,
        pub postern: std::net::SocketAddr,
        pub ostiary: std::net::SocketAddr,
        listeners: [std::net::TcpListener; 2],
        pub task: tokio::task::JoinHandle<Result<(), postern::net::NetError>>,
        pub recorder: tokio::task::JoinHandle<()>,
        /// While set, the monitor stops reading (it "falls behind").
        pub paused: Rc<std::cell::Cell<bool>>,
    }

    pub struct Setup<'a> {
        pub generation: u32,
        pub limits: NetLimits,
        pub exempt: &'a [IpNet],
        /// (key bytes, bind_source) for postern-2 actions 0..
        pub keys: &'a [([u8; 32], bool)],
        /// ostiary-4 passwords, as the actions after the keys.
        pub passwords: &'a [&'a [u8]],
    }

    pub fn limits() -> NetLimits {
        NetLimits {
            handshake_timeout: Duration::from_millis(400),
            max_handshakes: NonZeroUsize::new(16).unwrap(),
            rate_burst: NonZeroU32::new(1000).unwrap(),
            rate_per_minute: NonZeroU32::new(60_000).unwrap(),
            lockout_after: NonZeroU32::new(1000).unwrap(),
            lockout_duration: Duration::from_secs(60),
            lockout_table: NonZeroUsize::new(64).unwrap(),
            verify_per_second: NonZeroU32::new(1_000_000).unwrap(),
            ack_timeout: Duration::from_secs(3),
            shutdown_grace: Duration::from_secs(1),
        }
    }

    /// What the test monitor records: every request as it came, and for
    /// each verified reply the run it stands for.
    #[derive(Debug, Clone, Copy)]
    pub enum Ev {
        /// A request from the network process.
        Req(Request),
        /// An authenticated reply: the action it runs, for whom, under
        /// which generation.
        Run {
            action: u16,
            target: IpAddr,
            generation: u32,
        },
    }

    /// The keys of one generation, as the test monitor checks with them.
    struct Keys {
        postern: Verifier,
        bind: Vec<bool>,
        ostiary: Verifier,
    }

    fn keys_of(s: &Setup<'_>) -> Keys {
        let ks: Vec<Key> = s.keys.iter().map(|(k, _)| Key::from_bytes(*k)).collect();
        let ps: Vec<Password> = s
            .passwords
            .iter()
            .map(|p| Password::new(p.to_vec()))
            .collect();
        Keys {
            postern: Verifier::from_keys(ks.iter()),
            bind: s.keys.iter().map(|(_, b)| *b).collect(),
            ostiary: Verifier::from_passwords(ps.iter()),
        }
    }

    pub async fn send(mon: &Channel, listeners: &[std::net::TcpListener; 2], s: &Setup<'_>) {
        let begin = Down::Begin {
            generation: s.generation,
            limits: s.limits.clone(),
            listeners: 2,
            exempt: s.exempt.len() as u16,
        };
        mon.send(&begin.encode(), &[]).await.unwrap();
        for (i, (l, p)) in listeners
            .iter()
            .zip([Protocol::Postern2, Protocol::Ostiary4])
            .enumerate()
        {
            let m = Down::Listener {
                index: i as u8,
                protocol: p,
            };
            mon.send(&m.encode(), &[l.as_raw_fd()]).await.unwrap();
        }
        for n in s.exempt {
            mon.send(&Down::Exempt(*n).encode(), &[]).await.unwrap();
        }
        mon.send(&Down::End.encode(), &[]).await.unwrap();
    }

    impl Net {
        /// Starts `postern::net::serve` on a fresh channel; a test monitor
        /// task issues nonces, checks every reply with the setup's keys,
        /// records every request (each must decode, a verify must carry
        /// exactly one descriptor and name an issued nonce) and answers
        /// every authenticated reply with `status`.
        pub async fn start(s: &Setup<'_>, status: Status) -> Net {
            let answer = Answer::bare(status);
            let listeners = [
                std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
                std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            ];
            let (mon_fd, net_fd) = channel::pair().unwrap();
            let mon = Rc::new(Channel::new(mon_fd).unwrap());
            send(&mon, &listeners, s).await;
            let task = tokio::task::spawn_local(postern::net::serve(net_fd));
            let seen = Rc::new(RefCell::new(Vec::new()));
            let keys = Rc::new(RefCell::new(HashMap::from([(s.generation, keys_of(s))])));
            let (m2, s2, k2) = (Rc::clone(&mon), Rc::clone(&seen), Rc::clone(&keys));
            let paused = Rc::new(std::cell::Cell::new(false));
            let p2 = Rc::clone(&paused);
            let recorder = tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; MAX_DOWN_LEN];
                let mut issued: HashMap<u64, [u8; 32]> = HashMap::new();
                let mut next = 1u64;
                let mut waiting: HashMap<u64, (Vec<Ev>, Vec<Down>)> = HashMap::new();
                loop {
                    while p2.get() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let Ok(r) = m2.recv(&mut buf).await else {
                        return;
                    };
                    if r.len == 0 {
                        return;
                    }
                    assert!(!r.truncated);
                    let req = Request::decode(&buf[..r.len], 2)
                        .unwrap_or_else(|e| panic!("undecodable request: {e}"));
                    assert_eq!(
                        r.fds.len(),
                        usize::from(matches!(req, Request::Connection { .. })),
                        "{req:?}"
                    );
                    s2.borrow_mut().push(Ev::Req(req));
                    let down = |m: Down| {
                        let m2 = Rc::clone(&m2);
                        async move {
                            let _ = m2.send(&m.encode(), &[]).await;
                        }
                    };
                    match req {
                        Request::Nonces { count } => {
                            let mut list = Vec::new();
                            for _ in 0..count {
                                let mut n = [0u8; 32];
                                getrandom::getrandom(&mut n).unwrap();
                                issued.insert(next, n);
                                list.push((next, n));
                                next += 1;
                            }
                            down(Down::Nonces(list)).await;
                        }
                        Request::Verify {
                            generation,
                            handle,
                            peer,
                            reply,
                            failures,
                        } => {
                            let nonce = issued
                                .remove(&handle)
                                .unwrap_or_else(|| panic!("verify for nonce {handle} not issued"));
                            let mut outs = Vec::new();
                            let mut evs = Vec::new();
                            let mut valid = false;
                            {
                                let ks = k2.borrow();
                                let k = &ks[&generation];
                                let fail = |reason| {
                                    Ev::Req(Request::Fail {
                                        peer,
                                        reason,
                                        failures,
                                        handle,
                                    })
                                };
                                let verdict = |v| Down::Verdict { handle, verdict: v };
                                match reply {
                                    ReplyBytes::Postern2(r) => {
                                        let g = wire::greeting(&nonce);
                                        match k.postern.check_reply(&g, &r) {
                                            None => {
                                                evs.push(fail(Reason::BadMac));
                                                outs.push(verdict(Verdict::Bad));
                                            }
                                            Some((i, asserted)) => {
                                                valid = true;
                                                let mk = k.postern.key(i).unwrap();
                                                let (v, a) =
                                                    if k.bind[i] && asserted != Some(peer.addr) {
                                                        evs.push(fail(Reason::BindMismatch));
                                                        let a = Answer::because(
                                                            Status::Refused,
                                                            AckReason::AddressBinding,
                                                        );
                                                        (Verdict::BindMismatch, a)
                                                    } else {
                                                        evs.push(Ev::Run {
                                                            action: i as u16,
                                                            target: asserted.unwrap_or(peer.addr),
                                                            generation,
                                                        });
                                                        (Verdict::Authenticated, answer)
                                                    };
                                                outs.push(verdict(v));
                                                let ack = wire::ack(mk, &g, &r, a);
                                                outs.push(Down::Ack { handle, ack });
                                            }
                                        }
                                    }
                                    ReplyBytes::Ostiary4(r) => {
                                        match k.ostiary.check_ostiary(&nonce, &r) {
                                            None => {
                                                evs.push(fail(Reason::BadMac));
                                                outs.push(verdict(Verdict::Bad));
                                            }
                                            Some(j) => {
                                                valid = true;
                                                evs.push(Ev::Run {
                                                    action: (k.bind.len() + j) as u16,
                                                    target: peer.addr,
                                                    generation,
                                                });
                                                outs.push(verdict(Verdict::Authenticated));
                                            }
                                        }
                                    }
                                }
                            }
                            if valid {
                                // The connection first, as the monitor
                                // asks for it; the rest when it comes.
                                waiting.insert(handle, (evs, outs));
                                down(Down::Connection { handle }).await;
                            } else {
                                s2.borrow_mut().extend(evs);
                                for m in outs {
                                    down(m).await;
                                }
                            }
                        }
                        Request::Connection { handle } => {
                            let (evs, outs) = waiting
                                .remove(&handle)
                                .unwrap_or_else(|| panic!("connection {handle} not asked for"));
                            s2.borrow_mut().extend(evs);
                            for m in outs {
                                down(m).await;
                            }
                        }
                        _ => {}
                    }
                }
            });
            Net {
                postern: listeners[0].local_addr().unwrap(),
                ostiary: listeners[1].local_addr().unwrap(),
                listeners,
                mon,
                seen,
                keys,
                task,
                recorder,
                paused,
            }
        }

        pub async fn reload(&self, s: &Setup<'_>) {
            self.keys.borrow_mut().insert(s.generation, keys_of(s));
            send(&self.mon, &self.listeners, s).await;
            // Let it apply before the next connection.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        /// Runs and failures so far.
        pub fn ends(&self) -> usize {
            self.seen.borrow().iter().filter(|r| is_end(r)).count()
        }

        pub async fn wait_ends(&self, n: usize) {
            let end = Instant::now() + 5 * SEC;
            while self.ends() < n {
                assert!(
                    Instant::now() < end,
                    "{} of {n} outcomes: {:?}",
                    self.ends(),
                    self.seen.borrow()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        pub fn last_end(&self) -> Ev {
            *self.seen.borrow().iter().rev().find(|r| is_end(r)).unwrap()
        }
    }

    /// How a handshake ends: a run, a failure, or a close with nothing
    /// sent (not a failure).
    fn is_end(r: &Ev) -> bool {
        matches!(
            r,
            Ev::Run { .. }
                | Ev::Req(Request::Fail { .. })
                | Ev::Req(Request::Notice {
                    notice: postern::ipc::Notice::NoReply,
                    ..
                })
        )
    }

    pub async fn connect_from(to: std::net::SocketAddr, src: IpAddr) -> tokio::net::TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::new(src, 0)).unwrap();
        sock.connect(to).await.unwrap()
    }

    /// Reads up to `n` bytes, or fewer if the peer closes first.
    pub async fn read_some(s: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(5 * SEC, s.read(&mut out[got..])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(k)) => got += k,
            }
        }
        out.truncate(got);
        out
    }

    pub async fn rest(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        read_some(s, 4096).await
    }

    pub fn notices(seen: &[Ev], which: Notice) -> usize {
        seen.iter()
            .filter(|r| matches!(r, Ev::Req(Request::Notice { notice, .. }) if *notice == which))
            .count()
    }

    pub fn fail_reason(r: &Ev) -> Option<Reason> {
        match r {
            Ev::Req(Request::Fail { reason, .. }) => Some(*reason),
            _ => None,
        }
    }

    pub async fn write_all(s: &mut tokio::net::TcpStream, b: &[u8]) {
        let _ = s.write_all(b).await;
    }

    /// Half-close: shutdown(SHUT_WR).
    pub async fn half_close(s: &mut tokio::net::TcpStream) {
        let _ = s.shutdown().await;
    }
}

// Goal: the network process itself (postern::net::serve, in this
// process, the test playing the monitor), over random peers on both
// protocols: every request it sends decodes; every connection ends in
// exactly one run or one failure; runs happen only for valid MACs, for
// the right action and address, and get a verifying ack; failures carry
// the right reason; a reload swaps keys and limits; eviction, lockout and
// rate limiting each send their event once; and it stops when the
// monitor goes away.
#[test]
fn network_process_in_process_random_peers() {
    use inproc::*;
    use postern::ipc::{Notice, Reason};
    let seed = Prng::seed(0x0e7_0001);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut rng = Prng::new(seed);
        let keys: Vec<([u8; 32], bool)> = (0..3)
            .map(|i| {
                let mut k = [0u8; 32];
                k.copy_from_slice(&rng.bytes(32));
                (k, i == 2)
            })
            .collect();
        let exempt = [IpNet {
            addr: "127.0.0.0".parse().unwrap(),
            prefix: 24,
        }];
        let pw: &[u8] = b"Sample";
        let setup = Setup {
            generation: 1,
            limits: limits(),
            exempt: &exempt,
            keys: &keys,
            passwords: &[pw],
        };
        let net = Net::start(&setup, Status::Started).await;
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.77".parse().unwrap();
        let mut conns = 0;
        for case in 0..300 {
            let ctx = format!("seed {seed} case {case}");
            conns += 1;
            if rng.chance(15) {
                // ostiary-4: right or wrong password; nothing comes back.
                let mut c = connect_from(net.ostiary, src).await;
                let salt = read_some(&mut c, 32).await;
                assert_eq!(salt.len(), 32, "{ctx}");
                let right = rng.chance(50);
                let p: &[u8] = if right { pw } else { b"Simple" };
                let r = wire::ostiary_reply(&MacKey::new(p), &salt.try_into().unwrap());
                write_all(&mut c, &r).await;
                half_close(&mut c).await;
                assert!(rest(&mut c).await.is_empty(), "{ctx}");
                net.wait_ends(conns).await;
                match (right, net.last_end()) {
                    (true, Ev::Run { action, target, .. }) => {
                        assert_eq!((action, target), (3, src), "{ctx}")
                    }
                    (false, r) => assert_eq!(fail_reason(&r), Some(Reason::BadMac), "{ctx}"),
                    (_, r) => panic!("{ctx}: {r:?}"),
                }
                continue;
            }
            let mut c = connect_from(net.postern, src).await;
            let g: [u8; wire::GREETING_LEN] = read_some(&mut c, wire::GREETING_LEN)
                .await
                .try_into()
                .unwrap();
            let i = rng.below(3) as usize;
            let mk = MacKey::new(&keys[i].0);
            let asserted = *rng.pick(&[None, Some(src), Some(other)]);
            let good = wire::reply(&mk, &g, asserted);
            let kind = rng.below(6);
            let bytes: Vec<u8> = match kind {
                0 | 1 => good.to_vec(),
                2 => {
                    let mut b = good;
                    let bit = rng.below(REPLY_LEN as u64 * 8) as usize;
                    b[bit / 8] ^= 1 << (bit % 8);
                    b.to_vec()
                }
                3 => good[..rng.below(REPLY_LEN as u64) as usize].to_vec(),
                4 => {
                    let n = rng.range(1, 40) as usize;
                    [&good[..], &rng.bytes(n)].concat()
                }
                _ => {
                    let n = rng.below(100) as usize;
                    rng.bytes(n)
                }
            };
            write_all(&mut c, &bytes).await;
            half_close(&mut c).await;
            let back = rest(&mut c).await;
            net.wait_ends(conns).await;
            let end = net.last_end();
            let valid = bytes.len() == REPLY_LEN
                && (0..3).any(|j| {
                    let mut f = [0u8; 16];
                    f.copy_from_slice(&bytes[..16]);
                    wire::reply(&MacKey::new(&keys[j].0), &g, wire::decode_addr(&f))[..]
                        == bytes[..]
                });
            if bytes.is_empty() {
                assert!(
                    matches!(
                        end,
                        Ev::Req(Request::Notice {
                            notice: postern::ipc::Notice::NoReply,
                            ..
                        })
                    ),
                    "{ctx}: {end:?}"
                );
                assert!(back.is_empty(), "{ctx}: bytes for no reply");
                continue;
            }
            if !valid {
                let want = match bytes.len() {
                    n if n < REPLY_LEN => Reason::ShortReply,
                    n if n > REPLY_LEN => Reason::LongReply,
                    _ => Reason::BadMac,
                };
                assert_eq!(fail_reason(&end), Some(want), "{ctx}: {end:?}");
                assert!(back.is_empty(), "{ctx}: bytes for an invalid reply");
                continue;
            }
            let ack: [u8; wire::ACK_LEN] = back.try_into().expect("an ack");
            let st = wire::verify_ack(&mk, &g, &good, &ack).map(|a| a.status);
            if keys[i].1 && asserted != Some(src) {
                assert_eq!(fail_reason(&end), Some(Reason::BindMismatch), "{ctx}");
                assert_eq!(st, Some(Status::Refused), "{ctx}");
            } else {
                match end {
                    Ev::Run {
                        action,
                        target,
                        generation,
                    } => {
                        assert_eq!(usize::from(action), i, "{ctx}");
                        assert_eq!(target, asserted.unwrap_or(src), "{ctx}");
                        assert_eq!(generation, 1, "{ctx}");
                    }
                    r => panic!("{ctx}: {r:?}"),
                }
                assert_eq!(st, Some(Status::Started), "{ctx}");
            }
        }

        // Reload: new keys, two slots, lockout after 2, a small bucket.
        let mut new_key = [0u8; 32];
        new_key.copy_from_slice(&rng.bytes(32));
        let new_keys = [(new_key, false)];
        let mut l = limits();
        l.max_handshakes = NonZeroUsize::new(2).unwrap();
        l.lockout_after = NonZeroU32::new(2).unwrap();
        l.rate_burst = NonZeroU32::new(3).unwrap();
        l.rate_per_minute = NonZeroU32::new(1).unwrap();
        l.handshake_timeout = Duration::from_secs(5);
        let setup2 = Setup {
            generation: 2,
            limits: l,
            exempt: &exempt,
            keys: &new_keys,
            passwords: &[],
        };
        net.reload(&setup2).await;
        // The old key no longer opens anything; the new one does.
        let old = Key::from_bytes(keys[0].0);
        let new = Key::from_bytes(new_key);
        for (k, want_run) in [(&old, false), (&new, true)] {
            let src = "127.0.0.2".parse().unwrap();
            let mut c = connect_from(net.postern, src).await;
            let g: [u8; wire::GREETING_LEN] = read_some(&mut c, 36).await.try_into().unwrap();
            write_all(&mut c, &wire::reply(&MacKey::new(k.expose()), &g, None)).await;
            let back = rest(&mut c).await;
            conns += 1;
            net.wait_ends(conns).await;
            match net.last_end() {
                Ev::Run { generation, .. } => {
                    assert!(want_run && generation == 2 && back.len() == wire::ACK_LEN)
                }
                r => assert!(
                    !want_run && fail_reason(&r) == Some(Reason::BadMac),
                    "{r:?}"
                ),
            }
        }
        // Eviction: three silent peers on two slots; the first is evicted.
        let mut silent = Vec::new();
        for j in 0..3 {
            let src: IpAddr = format!("127.0.0.{}", 50 + j).parse().unwrap();
            let mut c = connect_from(net.postern, src).await;
            assert_eq!(read_some(&mut c, 36).await.len(), 36);
            silent.push(c);
        }
        conns += 1;
        net.wait_ends(conns).await;
        assert_eq!(fail_reason(&net.last_end()), Some(Reason::Evicted));
        assert_eq!(notices(&net.seen.borrow(), Notice::HandshakesFull), 1);
        drop(silent);
        conns += 2;
        net.wait_ends(conns).await;
        // Lockout: a source outside the exempt /24, two bad MACs.
        let bad: IpAddr = "127.0.1.5".parse().unwrap();
        for _ in 0..2 {
            let mut c = connect_from(net.postern, bad).await;
            assert_eq!(read_some(&mut c, 36).await.len(), 36);
            write_all(&mut c, &[0u8; REPLY_LEN]).await;
            assert!(rest(&mut c).await.is_empty());
            conns += 1;
            net.wait_ends(conns).await;
        }
        // The network process counts the strike once the verdict is in,
        // a moment after the test monitor recorded the failure.
        let locked = || {
            net.seen
                .borrow()
                .iter()
                .filter(|r| matches!(r, Ev::Req(Request::Lockout { peer, failures: 2 }) if peer.addr == bad))
                .count()
        };
        let end = Instant::now() + 5 * SEC;
        while locked() == 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(locked(), 1);
        let mut c = connect_from(net.postern, bad).await;
        assert!(
            rest(&mut c).await.is_empty(),
            "a locked source gets nothing"
        );
        // Rate: a fresh source gets its burst of 3, then nothing; noted once.
        let fast: IpAddr = "127.0.0.9".parse().unwrap();
        for j in 0..6 {
            let mut c = connect_from(net.postern, fast).await;
            let got = read_some(&mut c, 36).await.len();
            assert_eq!(got, if j < 3 { 36 } else { 0 }, "connection {j}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(notices(&net.seen.borrow(), Notice::RateLimited), 1);

        // The monitor goes away: the network process stops with an error.
        let Net {
            mon,
            task,
            recorder,
            ..
        } = net;
        recorder.abort();
        let _ = recorder.await;
        drop(mon);
        let ended = tokio::time::timeout(5 * SEC, task).await;
        match ended {
            Ok(Ok(Err(e))) => assert!(e.to_string().contains("monitor"), "{e}"),
            other => panic!("serve must end with an error when the monitor closes: {other:?}"),
        }

        // A monitor that falls behind a flood: the network process queues
        // at most MAX_QUEUED_EVENTS log events, counts what it drops, and
        // reports the count once the monitor reads again.
        let mut l = limits();
        l.rate_burst = NonZeroU32::new(1_000_000).unwrap();
        l.rate_per_minute = NonZeroU32::new(1_000_000).unwrap();
        l.handshake_timeout = Duration::from_secs(5);
        let setup3 = Setup {
            generation: 3,
            limits: l,
            exempt: &exempt,
            keys: &keys,
            passwords: &[],
        };
        let net = Net::start(&setup3, Status::Started).await;
        net.paused.set(true);
        let flood = postern::net::MAX_QUEUED_EVENTS + 1500;
        for _ in 0..flood {
            let c = connect_from(net.postern, src).await;
            drop(c);
            tokio::task::yield_now().await;
        }
        // Every handshake has failed (short reply) by now or soon.
        tokio::time::sleep(Duration::from_millis(300)).await;
        net.paused.set(false);
        let end = Instant::now() + 10 * SEC;
        let dropped = loop {
            let d: u32 = net
                .seen
                .borrow()
                .iter()
                .filter_map(|r| match r {
                    Ev::Req(Request::Notice {
                        notice: Notice::EventsDropped,
                        value,
                        ..
                    }) => Some(*value),
                    _ => None,
                })
                .sum();
            if d > 0 && net.ends() + d as usize >= flood {
                break d;
            }
            assert!(
                Instant::now() < end,
                "no drop report: {} events",
                net.ends()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            net.ends() + dropped as usize,
            flood,
            "every event delivered or counted"
        );
        eprintln!(
            "flood of {flood}: {} events delivered, {dropped} counted as dropped",
            net.ends()
        );

        // A graceful stop (SIGTERM): no new connections, but a handshake
        // already under way finishes within the grace and gets its ack.
        let mut c = connect_from(net.postern, src).await;
        let g: [u8; wire::GREETING_LEN] = read_some(&mut c, 36).await.try_into().unwrap();
        nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mk = MacKey::new(&keys[0].0);
        let r = wire::reply(&mk, &g, None);
        write_all(&mut c, &r).await;
        let back: [u8; wire::ACK_LEN] = rest(&mut c).await.try_into().expect("ack after SIGTERM");
        assert_eq!(
            wire::verify_ack(&mk, &g, &r, &back).map(|a| a.status),
            Some(Status::Started)
        );
        let Net { task, .. } = net;
        let ended = tokio::time::timeout(5 * SEC, task).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "a graceful stop is Ok: {ended:?}"
        );
    });
}
