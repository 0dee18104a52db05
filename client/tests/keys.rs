//! Key commands and derived-key triggers through the real `postern`
//! binary, checked against tests/vectors/kdf.vectors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use postern::secret::{b64_decode, Key};
use postern::wire::{self, Status};

fn kdf_case() -> Case {
    vectors("kdf").remove(0)
}

fn key_bytes(b64: &str) -> [u8; 32] {
    *Key::from_base64(b64).unwrap().expose()
}

// Goal: keygen prints a fresh base64 32-byte key each time.
#[test]
fn keygen_prints_fresh_keys() {
    let dir = TempDir::new();
    let a = postern(&["keygen"], dir.path(), &[], None);
    let b = postern(&["keygen"], dir.path(), &[], None);
    assert_eq!(code(&a), 0);
    let (a, b) = (stdout(&a), stdout(&b));
    let mut out = [0u8; 48];
    assert_eq!(b64_decode(a.trim().as_bytes(), &mut out).unwrap(), 32);
    assert_ne!(a, b);
}

// Goal: `key derive` prints the vector's fleet key for its master, host
// and action, and refuses a master file others can read.
#[test]
fn key_derive_matches_vector() {
    let case = kdf_case();
    let dir = TempDir::new();
    let master = dir.file(
        "fleet.key",
        format!("{}\n", case["master"]).as_bytes(),
        0o600,
    );
    let m = master.to_str().unwrap();
    let out = postern(
        &[
            "key",
            "derive",
            "--master",
            m,
            "--host",
            &case["host"],
            "--action",
            &case["action"],
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}\n", case["fleet_key"]));

    let open = dir.file("open.key", case["master"].as_bytes(), 0o640);
    let o = open.to_str().unwrap();
    let out = postern(
        &[
            "key", "derive", "--master", o, "--host", "h", "--action", "a",
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("is readable by group or others; run chmod 600"));
}

// Goal: `key from-passphrase` reads one line of stdin (not a terminal)
// and prints the vector's passphrase key.
#[test]
fn key_from_passphrase_matches_vector() {
    let case = kdf_case();
    let dir = TempDir::new();
    let out = postern(
        &[
            "key",
            "from-passphrase",
            "--host",
            &case["host"],
            "--action",
            &case["action"],
        ],
        dir.path(),
        &[],
        Some(&format!("{}\n", case["passphrase"])),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}\n", case["passphrase_key"]));
    let out = postern(
        &["key", "from-passphrase", "--host", "h", "--action", "a"],
        dir.path(),
        &[],
        Some("\n"),
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("empty passphrase"));
}

// Goal: `trigger --passphrase` derives the same key as the vector from the
// host name and action, and the server accepts it.
#[test]
fn trigger_with_passphrase() {
    let case = kdf_case();
    let greeting = wire::greeting(&[0x33; 32]);
    let server = FakeServer::postern(
        key_bytes(&case["passphrase_key"]),
        greeting,
        Script::Ack(Status::Started),
    );
    let dir = TempDir::new();
    let out = postern(
        &[
            "trigger",
            &server.addr(),
            "--passphrase",
            "--host-name",
            &case["host"],
            "--action",
            &case["action"],
        ],
        dir.path(),
        &[],
        Some(&format!("{}\n", case["passphrase"])),
    );
    server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).ends_with(&format!(": accepted; {} started\n", case["action"])));
}

// Goal: `trigger --master` derives the vector's fleet key, and the
// server accepts it.
#[test]
fn trigger_with_master() {
    let case = kdf_case();
    let server = FakeServer::postern(
        key_bytes(&case["fleet_key"]),
        wire::greeting(&[0x44; 32]),
        Script::Ack(Status::Started),
    );
    let dir = TempDir::new();
    let master = dir.file("fleet.key", case["master"].as_bytes(), 0o600);
    let out = postern(
        &[
            "trigger",
            &server.addr(),
            &case["action"],
            "--master",
            master.to_str().unwrap(),
            "--host-name",
            &case["host"],
        ],
        dir.path(),
        &[],
        None,
    );
    server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}
