//! The network process holds no secret: every readable mapping of the
//! running network process is searched for each key, each password and
//! each HMAC chaining state derived from them, and none is found. The
//! same search over the monitor must find them all, which shows the
//! search works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use common::*;
use postern::mac::MacKey;
use postern::secret::Key;
use postern::wire;

/// The SHA-256 initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The two chaining states HMAC-SHA256 keeps for `key` (at most one
/// block): after absorbing key ^ ipad, and after key ^ opad.
fn hmac_states(key: &[u8]) -> [[u32; 8]; 2] {
    assert!(key.len() <= 64);
    let mut out = [IV; 2];
    for (state, pad) in out.iter_mut().zip([0x36u8, 0x5c]) {
        let mut block = [pad; 64];
        for (b, k) in block.iter_mut().zip(key) {
            *b ^= k;
        }
        sha2::block_api::compress256(state, &[block]);
    }
    out
}

/// A state as bytes, in either word order a program may hold it.
fn state_bytes(s: &[u32; 8]) -> [Vec<u8>; 2] {
    [
        s.iter().flat_map(|w| w.to_le_bytes()).collect(),
        s.iter().flat_map(|w| w.to_be_bytes()).collect(),
    ]
}

/// Every readable mapping of `pid`, as (name, bytes); and the total read.
fn read_memory(pid: u32) -> (Vec<(String, Vec<u8>)>, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    let mut total = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let range = f.next().unwrap();
        let perms = f.next().unwrap();
        let name = f.nth(3).unwrap_or("").to_string();
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() {
            continue;
        }
        // A mapping may shrink or vanish while it is read: keep what came.
        let mut got = 0;
        while got < buf.len() {
            match mem.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        buf.truncate(got);
        total += got;
        out.push((format!("{range} {perms} {name}"), buf));
    }
    (out, total)
}

fn find(memory: &[(String, Vec<u8>)], needle: &[u8]) -> Option<String> {
    memory
        .iter()
        .find(|(_, m)| m.windows(needle.len()).any(|w| w == needle))
        .map(|(name, _)| name.clone())
}

/// A secret to look for: what it is, and its byte patterns.
struct Needle {
    what: String,
    patterns: Vec<Vec<u8>>,
}

fn needles(keys: &[Key], passwords: &[&[u8]]) -> (Vec<Needle>, Vec<Needle>) {
    let mut raw = Vec::new();
    let mut derived = Vec::new();
    let secrets = keys
        .iter()
        .map(|k| k.expose().to_vec())
        .chain(passwords.iter().map(|p| p.to_vec()));
    for (i, s) in secrets.enumerate() {
        raw.push(Needle {
            what: format!("secret {i}"),
            patterns: vec![s.clone()],
        });
        for (j, st) in hmac_states(&s).iter().enumerate() {
            derived.push(Needle {
                what: format!("secret {i} {} state", ["inner", "outer"][j]),
                patterns: state_bytes(st).to_vec(),
            });
        }
    }
    (raw, derived)
}

fn found(memory: &[(String, Vec<u8>)], n: &Needle) -> Option<String> {
    n.patterns.iter().find_map(|p| find(memory, p))
}

// Goal: with postern-2 keys and ostiary-4 passwords configured, and after
// handshakes of both kinds, no key, password or HMAC chaining state is
// anywhere in the network process's memory; the monitor's memory, searched
// the same way, holds every one of them.
#[test]
fn network_process_memory_holds_no_secret() {
    if !require_root("network_process_memory_holds_no_secret") {
        return;
    }
    let s = Scratch::new("memsearch");
    let (k1, b1) = key();
    let (k2, b2) = key();
    // Passwords that occur nowhere by chance (random, printable).
    let mut prng = Prng::new(Prng::seed(0x3e35));
    let pw: Vec<Vec<u8>> = (0..2)
        .map(|_| (0..24).map(|_| b'a' + prng.below(26) as u8).collect())
        .collect();
    let config = format!(
        "{}user = \"nobody\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"ostiary-4\"\n\
         [[action]]\nname = \"k1\"\nkey = \"{b1}\"\nrun = [\"/bin/true\"]\n\
         [[action]]\nname = \"k2\"\nkey = \"{b2}\"\nrun = [\"/bin/true\"]\n\
         [[action]]\nname = \"p1\"\npassword = \"{}\"\nrun = [\"/bin/true\"]\n\
         [[action]]\nname = \"p2\"\npassword = \"{}\"\nrun = [\"/bin/true\"]\n",
        daemon_table(&s),
        String::from_utf8_lossy(&pw[0]),
        String::from_utf8_lossy(&pw[1]),
    );
    let d = Daemon::start(s, &config);
    // Handshakes of every kind first: a valid trigger, a wrong reply, an
    // ostiary-4 trigger.
    assert!(matches!(trigger(d.addr(), &k1), Outcome::Ack(_)));
    let mut c = connect(d.addr(), None);
    let g = read_greeting(&mut c).unwrap();
    let wrong = Key::generate().unwrap();
    std::io::Write::write_all(&mut c, &wire::reply(&MacKey::new(wrong.expose()), &g, None))
        .unwrap();
    let _ = drain(&mut c);
    let mut o = connect(d.listeners[1], None);
    let mut salt = [0u8; 32];
    o.read_exact(&mut salt).unwrap();
    std::io::Write::write_all(&mut o, &wire::ostiary_reply(&MacKey::new(&pw[0]), &salt)).unwrap();
    drop(o);
    d.wait_log("action=p1", Duration::from_secs(10));
    d.wait_log("reason=bad-mac", Duration::from_secs(10));

    let passwords: Vec<&[u8]> = pw.iter().map(|p| p.as_slice()).collect();
    let (raw, derived) = needles(&[k1, k2], &passwords);
    let net = d.network_pid();
    let (net_mem, net_bytes) = read_memory(net);
    let (mon_mem, mon_bytes) = read_memory(d.pid());
    eprintln!(
        "searched {net_bytes} bytes in {} mappings of the network process, {mon_bytes} bytes in {} of the monitor",
        net_mem.len(),
        mon_mem.len()
    );
    assert!(
        net_bytes > 256 * 1024,
        "too little of the network process read"
    );
    for n in raw.iter().chain(derived.iter()) {
        assert_eq!(
            found(&net_mem, n),
            None,
            "{} in the network process",
            n.what
        );
    }
    // The check of the search: the monitor holds the keys and passwords
    // (its config) and their prepared states (its keyring).
    for n in raw.iter().chain(derived.iter()) {
        assert!(
            found(&mon_mem, n).is_some(),
            "{} not found in the monitor: the search is broken",
            n.what
        );
    }
}
