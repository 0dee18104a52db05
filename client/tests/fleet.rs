//! Large groups through the real `postern` binary: hanging and dead hosts
//! cost one timeout together, the slot bound holds, and a low open-file
//! limit is respected with a message. A small version of benches/fleet.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use postern::kdf;
use postern::secret::Key;
use postern::wire::{self, Status};

/// How a simulated host behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A fake postern-2 server that acks "started".
    Healthy,
    /// Nothing listens: the connect is refused.
    Dead,
    /// Accepts and never greets.
    Hanging,
}

/// A fleet of simulated hosts on 127.0.0.1, each keyed from one master,
/// and its inventory (group `all`, action `open`).
struct Fleet {
    dir: TempDir,
    inventory: std::path::PathBuf,
    servers: Vec<FakeServer>,
    _dead: Vec<u16>,
    _hanging: Vec<TcpListener>,
}

impl Fleet {
    fn new(kinds: &[Kind]) -> Fleet {
        let dir = TempDir::new();
        let master_bytes = *Key::generate().unwrap().expose();
        let master = Key::from_bytes(master_bytes);
        let master_file = dir.key_file("fleet.key", &master_bytes);
        let mut text = format!(
            "[defaults]\nmaster_file = \"{}\"\n\n[hosts]\n",
            master_file.display()
        );
        let (mut servers, mut dead, mut hanging) = (Vec::new(), Vec::new(), Vec::new());
        let mut names = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let name = format!("h{i}");
            let port = match kind {
                Kind::Healthy => {
                    let key = kdf::key_from_master(&master, &name, "open");
                    let s = FakeServer::postern(
                        *key.expose(),
                        wire::greeting(&[i as u8; 32]),
                        Script::Ack(Status::Started),
                    );
                    let port = s.port;
                    servers.push(s);
                    port
                }
                Kind::Dead => {
                    let p = closed_port();
                    dead.push(p);
                    p
                }
                Kind::Hanging => {
                    // The kernel completes the handshake from the backlog;
                    // nobody ever accepts or writes.
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    let p = l.local_addr().unwrap().port();
                    hanging.push(l);
                    p
                }
            };
            text.push_str(&format!(
                "{name} = {{ address = \"127.0.0.1\", port = {port}, actions = {{ open = {{ master = true }} }} }}\n"
            ));
            names.push(format!("\"{name}\""));
        }
        text.push_str(&format!("\n[groups]\nall = [{}]\n", names.join(", ")));
        let inventory = dir.file("hosts.toml", text.as_bytes(), 0o644);
        Fleet {
            dir,
            inventory,
            servers,
            _dead: dead,
            _hanging: hanging,
        }
    }

    /// Runs `postern trigger @all open --json ARGS`; returns the output and
    /// the wall time from spawn to exit.
    fn trigger(&self, args: &[&str]) -> (std::process::Output, Duration) {
        let mut all = vec![
            "trigger",
            "@all",
            "open",
            "--inventory",
            self.inventory.to_str().unwrap(),
            "--json",
        ];
        all.extend_from_slice(args);
        let start = Instant::now();
        let out = postern(&all, self.dir.path(), &[], None);
        (out, start.elapsed())
    }

    fn finish(self) {
        for s in self.servers {
            s.finish();
        }
    }
}

/// The JSON records of a run, host by host (the summary line left out).
fn records(out: &std::process::Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| l.starts_with("{\"host\":"))
        .map(str::to_owned)
        .collect()
}

fn latency_ms(record: &str) -> u64 {
    let at = record.find("\"latency_ms\":").unwrap() + "\"latency_ms\":".len();
    record[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// 64 hosts: 10 % dead, 10 % hanging, the rest healthy.
fn mixed_64() -> Vec<Kind> {
    (0..64)
        .map(|i| match i % 10 {
            3 => Kind::Dead,
            7 => Kind::Hanging,
            _ => Kind::Healthy,
        })
        .collect()
}

// Goal: with 10 % of 64 hosts hanging and 10 % dead, the group ends within
// its timeout plus one second; every healthy host is started, every dead
// one refused at once, every hanging one times out waiting for the
// challenge; one JSON record per host, then the summary.
#[test]
fn hanging_tenth_costs_one_timeout() {
    let kinds = mixed_64();
    let fleet = Fleet::new(&kinds);
    let timeout = Duration::from_secs(3);
    let (out, took) = fleet.trigger(&["--timeout", "3"]);
    fleet.finish();
    let recs = records(&out);
    assert_eq!(recs.len(), 64, "{}", stdout(&out));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(took >= timeout, "the hanging hosts held the run: {took:?}");
    assert!(
        took < timeout + Duration::from_secs(1),
        "took {took:?} for a {timeout:?} timeout"
    );
    for (rec, kind) in recs.iter().zip(&kinds) {
        match kind {
            Kind::Healthy => assert!(rec.contains("\"outcome\":\"started\""), "{rec}"),
            Kind::Dead => {
                assert!(rec.contains("connection refused"), "{rec}");
                assert!(latency_ms(rec) < 1000, "{rec}");
            }
            Kind::Hanging => {
                assert!(rec.contains("waiting for the challenge"), "{rec}");
                assert!(latency_ms(rec) >= 3000, "{rec}");
            }
        }
    }
    let summary = stdout(&out).lines().last().unwrap().to_owned();
    let bad = kinds.iter().filter(|k| **k != Kind::Healthy).count();
    assert_eq!(
        summary,
        format!(
            "{{\"summary\":true,\"group\":\"@all\",\"hosts\":64,\"succeeded\":{},\"failed\":{bad},\"exit_code\":3}}",
            64 - bad
        )
    );
}

// Goal: a whole rack hanging (80 hosts, more than any thread pool of the
// old default) still costs one timeout, with the default --parallel.
#[test]
fn hanging_rack_costs_one_timeout() {
    let fleet = Fleet::new(&[Kind::Hanging; 80]);
    let timeout = Duration::from_secs(2);
    let (out, took) = fleet.trigger(&["--timeout", "2"]);
    assert_eq!(records(&out).len(), 80, "{}", stdout(&out));
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
}

// Goal: --parallel bounds the connections open at once: 8 hanging hosts
// with 4 slots and a 1 s timeout take two rounds.
#[test]
fn parallel_bounds_the_slots() {
    let fleet = Fleet::new(&[Kind::Hanging; 8]);
    let (out, took) = fleet.trigger(&["--timeout", "1", "--parallel", "4"]);
    assert_eq!(records(&out).len(), 8, "{}", stdout(&out));
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

// Goal: the table mode sorts by outcome: successes first, failures last,
// next to the count line.
#[test]
fn table_sorted_by_outcome() {
    let kinds = [Kind::Dead, Kind::Healthy, Kind::Dead, Kind::Healthy];
    let fleet = Fleet::new(&kinds);
    let out = postern(
        &[
            "trigger",
            "@all",
            "open",
            "--inventory",
            fleet.inventory.to_str().unwrap(),
        ],
        fleet.dir.path(),
        &[],
        None,
    );
    fleet.finish();
    let s = stdout(&out);
    let hosts: Vec<&str> = s
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(hosts, ["h1", "h3", "h0", "h2", "4"], "{s}");
    assert!(s.ends_with("4 hosts: 2 succeeded, 2 failed\n"), "{s}");
}

// Goal: under an open-file limit too low for the group, the client says
// so, names the fix, and still runs every host in the slots it has.
#[test]
fn low_descriptor_limit_is_respected() {
    let fleet = Fleet::new(&[Kind::Dead; 48]);
    let limit = postern_client::fleet::RESERVED_DESCRIPTORS + 8;
    let script = format!(
        "ulimit -n {limit} && exec \"$0\" trigger @all open --inventory \"$1\" --json --timeout 5"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_postern"))
        .arg(fleet.inventory.to_str().unwrap())
        .env("HOME", fleet.dir.path())
        .env("XDG_CONFIG_HOME", fleet.dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("leaves room for 8 connections at once, not 48"),
        "{err}"
    );
    assert!(err.contains("raise the hard limit"), "{err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 48, "{}", stdout(&out));
    assert!(recs.iter().all(|r| r.contains("connection refused")));
}

// Goal: a group keyed by one passphrase asks for it once, stretches each
// host's key (on the derivation threads, ahead of the connects) and
// triggers every host with the key made for its name.
#[test]
fn passphrase_group_derives_per_host() {
    let dir = TempDir::new();
    let pass = "correct horse battery staple";
    let mut servers = Vec::new();
    let mut text = String::from("[hosts]\n");
    for i in 0..4 {
        let name = format!("p{i}");
        let key = kdf::key_from_passphrase(pass.as_bytes(), &name, "open");
        let s = FakeServer::postern(
            *key.expose(),
            wire::greeting(&[9; 32]),
            Script::Ack(Status::Started),
        );
        text.push_str(&format!(
            "{name} = {{ address = \"127.0.0.1\", port = {}, actions = {{ open = {{ passphrase = true }} }} }}\n",
            s.port
        ));
        servers.push(s);
    }
    text.push_str("[groups]\nall = [\"p0\", \"p1\", \"p2\", \"p3\"]\n");
    let inv = dir.file("hosts.toml", text.as_bytes(), 0o644);
    let out = postern(
        &[
            "trigger",
            "@all",
            "open",
            "--inventory",
            inv.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
        &[],
        Some(&format!("{pass}\n")),
    );
    for s in servers {
        s.finish();
    }
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(records(&out).len(), 4);
    assert!(records(&out)
        .iter()
        .all(|r| r.contains("\"outcome\":\"started\"")));
}
