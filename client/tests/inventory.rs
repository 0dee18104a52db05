//! Inventory hosts and groups through the real `postern` binary, against
//! fake servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use postern::secret::Key;
use postern::wire::{self, Status};

/// A fake server with its own random key, and an inventory entry for it.
fn host(dir: &TempDir, name: &str, script: Script) -> (FakeServer, String) {
    let key = *Key::generate().unwrap().expose();
    let server = FakeServer::postern(key, wire::greeting(&[7; 32]), script);
    let kf = dir.key_file(&format!("{name}.key"), &key);
    let entry = format!(
        "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {}\n[hosts.{name}.actions.console]\nkey_file = \"{}\"\n\n",
        server.port,
        kf.display()
    );
    (server, entry)
}

// Goal: a group runs every host, prints a table with each host's address,
// outcome and latency and a count, and exits with the highest code
// (here 3, from the unreachable host).
#[test]
fn group_table_and_exit_code() {
    let dir = TempDir::new();
    let (a, ea) = host(&dir, "web-1", Script::Ack(Status::Started));
    let a_port = a.port;
    let (b, eb) = host(&dir, "web-2", Script::Close);
    let dead_port = closed_port();
    let ec = format!(
        "[hosts.web-3]\naddress = \"127.0.0.1\"\nport = {dead_port}\n[hosts.web-3.actions.console]\nkey_env = \"UNUSED_KEY\"\n\n"
    );
    let inv = dir.file(
        "hosts.toml",
        format!("{ea}{eb}{ec}[groups]\nrack-4 = [\"web-1\", \"web-2\", \"web-3\"]\n").as_bytes(),
        0o644,
    );
    let key = postern::secret::b64_encode(&[9; 32]);
    let out = postern(
        &[
            "trigger",
            "@rack-4",
            "console",
            "--inventory",
            inv.to_str().unwrap(),
            "--timeout",
            "5",
        ],
        dir.path(),
        &[("UNUSED_KEY", &key)],
        None,
    );
    a.finish();
    b.finish();
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    let s = stdout(&out);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 5, "{s}");
    assert!(lines[0].starts_with("HOST"), "{s}");
    assert!(
        lines[1].starts_with(&format!("web-1  127.0.0.1:{a_port}")),
        "{s}"
    );
    assert!(lines[1].contains("started"), "{s}");
    assert!(
        lines[2].starts_with("web-2") && lines[2].contains("no-ack"),
        "{s}"
    );
    assert!(
        lines[3].starts_with("web-3") && lines[3].contains("network-error"),
        "{s}"
    );
    assert!(lines[3].contains("connection refused"), "{s}");
    assert!(lines[1].contains(" ms"), "{s}");
    assert_eq!(lines[4], "3 hosts: 1 succeeded, 2 failed");
}

// Goal: --json prints one parseable object per host, then a summary.
#[test]
fn group_json() {
    let dir = TempDir::new();
    let (a, ea) = host(&dir, "db-1", Script::Ack(Status::AlreadyActive));
    let (b, eb) = host(&dir, "db-2", Script::Ack(Status::Refused));
    let inv = dir.file(
        "hosts.toml",
        format!("{ea}{eb}[groups]\ndb = [\"db-2\", \"db-1\"]\n").as_bytes(),
        0o644,
    );
    let out = postern(
        &[
            "trigger",
            "@db",
            "console",
            "--inventory",
            inv.to_str().unwrap(),
            "--json",
            "--parallel",
            "1",
        ],
        dir.path(),
        &[],
        None,
    );
    a.finish();
    b.finish();
    assert_eq!(code(&out), 4);
    let s = stdout(&out);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 3, "{s}");
    for l in &lines {
        assert!(l.starts_with('{') && l.ends_with('}'), "{l}");
    }
    assert!(
        lines[0].starts_with("{\"host\":\"db-2\",\"action\":\"console\""),
        "{s}"
    );
    assert!(
        lines[0].contains("\"outcome\":\"refused\",\"reason\":\"none\",\"seconds\":0,\"success\":false,\"exit_code\":4"),
        "{s}"
    );
    assert!(lines[1].starts_with("{\"host\":\"db-1\""), "{s}");
    assert!(
        lines[1].contains("\"outcome\":\"already-active\",\"reason\":\"none\",\"seconds\":0,\"success\":true,\"exit_code\":0"),
        "{s}"
    );
    assert_eq!(
        lines[2],
        "{\"summary\":true,\"group\":\"@db\",\"hosts\":2,\"succeeded\":1,\"failed\":1,\"exit_code\":4}"
    );
}

// Goal: an inventory host is triggered by name from the default inventory
// location, with its key derived from the fleet master under the
// inventory name.
#[test]
fn inventory_host_with_master_from_default_path() {
    let case = vectors("kdf").remove(0);
    let fleet_key = *Key::from_base64(&case["fleet_key"]).unwrap().expose();
    let server = FakeServer::postern(
        fleet_key,
        wire::greeting(&[1; 32]),
        Script::Ack(Status::Started),
    );
    let dir = TempDir::new();
    let master = dir.file("fleet.key", case["master"].as_bytes(), 0o600);
    std::fs::create_dir_all(dir.path().join("postern")).unwrap();
    let host = &case["host"];
    let action = &case["action"];
    dir.file(
        "postern/hosts.toml",
        format!(
            "[defaults]\nmaster_file = \"{}\"\n[hosts.{host}]\naddress = \"127.0.0.1\"\nport = {}\n[hosts.{host}.actions.{action}]\nmaster = true\n",
            master.display(),
            server.port
        )
        .as_bytes(),
        0o644,
    );
    let out = postern(&["trigger", host, action], dir.path(), &[], None);
    server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{host}: accepted; {action} started\n")
    );
}

// Goal: inventory problems stop the command before any connection, exit
// 1, naming the file and what to fix; key options are refused for
// inventory hosts (exit 64).
#[test]
fn inventory_errors() {
    let dir = TempDir::new();
    let inv = dir.file(
        "hosts.toml",
        b"[hosts.web-1]\naddress = \"127.0.0.1\"\nport = 9\n[hosts.web-1.actions.console]\nkey_env = \"K\"\n[groups]\ng = [\"web-1\"]\n",
        0o644,
    );
    let i = inv.to_str().unwrap();
    let out = postern(
        &["trigger", "web-1", "reboot", "--inventory", i],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains(&format!(
        "inventory {i}: hosts.web-1: no action \"reboot\" (has: console)"
    )));
    let out = postern(
        &["trigger", "@nope", "console", "--inventory", i],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no group \"nope\""));
    let out = postern(
        &[
            "trigger",
            "web-1",
            "console",
            "--inventory",
            i,
            "--passphrase",
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 64);
    let out = postern(
        &["trigger", "web-1", "--inventory", i],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("needs an ACTION"));

    let bad = dir.file(
        "bad.toml",
        b"[hosts.x]\naddress = \"127.0.0.1\"\nportt = 1\n",
        0o644,
    );
    let out = postern(
        &[
            "trigger",
            "x",
            "console",
            "--inventory",
            bad.to_str().unwrap(),
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("unknown field `portt`"),
        "{}",
        stderr(&out)
    );
}
