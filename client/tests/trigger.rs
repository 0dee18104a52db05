//! The real `postern` binary against fake servers built from the postern
//! library and the test vectors: one trigger, every way it can end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use postern::wire::Status;

/// Triggers a fake server for vector `case` with the key in a file.
fn trigger_case(n: u32, script: Script, extra: &[&str]) -> (std::process::Output, Vec<u8>, Case) {
    let case = postern_case(n);
    let key = arr32(&case["key_hex"]);
    let dir = TempDir::new();
    let key_file = dir.key_file("k.key", &key);
    let server = FakeServer::postern(key, greeting_of(&case), script);
    let addr = server.addr();
    let mut args = vec!["trigger", &addr, "--key-file", key_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "5"]);
    }
    let out = postern(&args, dir.path(), &[], None);
    (out, server.finish(), case)
}

// Goal: the right key gets "started", exit 0, and the reply on the wire is
// exactly the vector's reply (one 48-byte message).
#[test]
fn correct_key_is_started() {
    let (out, reply, case) = trigger_case(1, Script::Ack(Status::Started), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(": accepted; the action started\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(reply, unhex(&case["reply"]));
}

// Goal: --assert-addr puts the address in the reply as the vector says,
// and "already active" also exits 0.
#[test]
fn asserted_address_and_already_active() {
    let (out, reply, case) = trigger_case(
        2,
        Script::Ack(Status::AlreadyActive),
        &["--assert-addr", "203.0.113.7"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(": accepted; the action already running\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(reply, unhex(&case["reply"]));
    let (_, reply6, case3) = trigger_case(
        3,
        Script::Ack(Status::Started),
        &["--assert-addr", "2001:db8::42"],
    );
    assert_eq!(reply6, unhex(&case3["reply"]));
}

// Goal: a server that closes without an ack exits 2 with the no-ack line.
#[test]
fn close_without_ack_is_exit_2() {
    let (out, _, _) = trigger_case(1, Script::Close, &[]);
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).ends_with(": no acknowledgement (wrong key, locked out or refused)\n"));
}

// Goal: a wrong key is refused by the server, which closes: exit 2.
#[test]
fn wrong_key_is_exit_2() {
    let case = postern_case(1);
    let dir = TempDir::new();
    let key_file = dir.key_file("wrong.key", &[0x11; 32]);
    let server = FakeServer::postern(
        arr32(&case["key_hex"]),
        greeting_of(&case),
        Script::Ack(Status::Started),
    );
    let out = postern(
        &[
            "trigger",
            &server.addr(),
            "--key-file",
            key_file.to_str().unwrap(),
        ],
        dir.path(),
        &[],
        None,
    );
    server.finish();
    assert_eq!(code(&out), 2, "{}", stdout(&out));
}

// Goal: an ack whose MAC does not verify is not trusted: exit 2.
#[test]
fn forged_ack_is_exit_2() {
    let (out, _, _) = trigger_case(4, Script::Forged, &[]);
    assert_eq!(code(&out), 2);
    assert!(
        stdout(&out).contains("no acknowledgement (the acknowledgement did not verify"),
        "{}",
        stdout(&out)
    );
}

// Goal: acknowledged-but-refused exits 4, failed-to-start exits 5.
#[test]
fn refused_and_failed_acks() {
    let (out, _, _) = trigger_case(1, Script::Ack(Status::Refused), &[]);
    assert_eq!(code(&out), 4);
    assert!(stdout(&out).ends_with(": refused: no reason given\n"));
    let (out, _, _) = trigger_case(2, Script::Ack(Status::Failed), &[]);
    assert_eq!(code(&out), 5);
    assert!(stdout(&out).ends_with(": failed: no reason given\n"));
}

// Goal: the ack's reason and seconds reach the user in words: a cooldown
// says when to retry, an open gate how long it stays open, a failure why;
// --json carries the same reason and seconds.
#[test]
fn reasons_and_deadlines_in_words() {
    use postern::wire::{Answer, Reason};
    let cases = [
        (
            Answer::because(Status::Refused, Reason::Cooldown).with_seconds(40),
            4,
            "refused: cooling down, try again in 40 s\n",
        ),
        (
            Answer::because(Status::Refused, Reason::OpenForOther).with_seconds(300),
            4,
            "refused: it is open for another address, closes in 5 min\n",
        ),
        (
            Answer::because(Status::Failed, Reason::RunTimedOut),
            5,
            "failed: the run command timed out\n",
        ),
        (
            Answer::because(Status::Refused, Reason::Unknown(77)),
            4,
            "refused: reason 77\n",
        ),
    ];
    for (answer, want_code, want) in cases {
        let (out, _, _) = trigger_case(1, Script::Answer(answer), &[]);
        assert_eq!(code(&out), want_code, "{}", stderr(&out));
        assert!(stdout(&out).ends_with(want), "{}", stdout(&out));
    }
    let open = Answer::bare(Status::Started).with_seconds(900);
    let (out, _, _) = trigger_case(1, Script::Answer(open), &["--action", "sshd"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        line.contains(": accepted; sshd open for 15 min (until "),
        "{line}"
    );
    assert!(line.ends_with(" UTC)\n"), "{line}");
    let (out, _, _) = trigger_case(
        1,
        Script::Answer(Answer::because(Status::Refused, Reason::Cooldown).with_seconds(40)),
        &["--json"],
    );
    assert!(
        stdout(&out).contains("\"outcome\":\"refused\",\"reason\":\"cooldown\",\"seconds\":40,"),
        "{}",
        stdout(&out)
    );
}

// Goal: a closed port is "connection refused", exit 3.
#[test]
fn connection_refused_is_exit_3() {
    let dir = TempDir::new();
    let key_file = dir.key_file("k.key", &[1; 32]);
    let target = format!("127.0.0.1:{}", closed_port());
    let out = postern(
        &["trigger", &target, "--key-file", key_file.to_str().unwrap()],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 3);
    assert_eq!(
        stdout(&out),
        format!("{target}: connection failed: connection refused by {target}\n")
    );
}

// Goal: a server that never sends its greeting is given up on within the
// timeout: exit 3.
#[test]
fn silent_server_times_out() {
    let start = Instant::now();
    let (out, _, _) = trigger_case(1, Script::Silent, &["--timeout", "1"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        stdout(&out).contains("timed out after 1 s waiting for the challenge"),
        "{}",
        stdout(&out)
    );
}

// Goal: a greeting without the PST2 tag is refused before any reply.
#[test]
fn bad_greeting_tag_is_exit_3() {
    let (out, reply, _) = trigger_case(1, Script::BadTag, &[]);
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains("not a postern-2 greeting"),
        "{}",
        stdout(&out)
    );
    assert!(reply.is_empty(), "a reply was sent to a non-postern server");
}

// Goal: a name that cannot resolve is a network error, exit 3.
#[test]
fn dns_failure_is_exit_3() {
    let dir = TempDir::new();
    let key_file = dir.key_file("k.key", &[1; 32]);
    let out = postern(
        &[
            "trigger",
            "no-such-host.invalid",
            "--key-file",
            key_file.to_str().unwrap(),
            "--timeout",
            "5",
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("cannot resolve no-such-host.invalid"),
        "{}",
        stdout(&out)
    );
}

// Goal: the ostiary-4 reply to the vector salt is byte for byte the
// vector reply, and the client reports it sent without waiting for more.
#[test]
fn ostiary_vector() {
    let case = &vectors("ostiary-4")[0];
    let dir = TempDir::new();
    let pw = dir.file("pw", format!("{}\n", case["password"]).as_bytes(), 0o600);
    let server = FakeServer::ostiary(arr32(&case["salt"]));
    let out = postern(
        &[
            "trigger",
            &server.addr(),
            "--protocol",
            "ostiary-4",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(server.finish(), unhex(&case["reply"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).ends_with(": reply sent (ostiary-4 gives no acknowledgement)\n"));
}

// Goal: a key file that group or others can read is refused before any
// connection, with the fix in the message.
#[test]
fn open_key_file_is_refused() {
    let dir = TempDir::new();
    let key_file = dir.file(
        "k.key",
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        0o644,
    );
    let kf = key_file.to_str().unwrap();
    let out = postern(
        &["trigger", "127.0.0.1:9", "--key-file", kf],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!("postern: {kf} is readable by group or others; run chmod 600 {kf}\n")
    );
    assert!(stdout(&out).is_empty());
}

// Goal: --key-env reads the key from the environment.
#[test]
fn key_from_environment() {
    let case = postern_case(2);
    let server = FakeServer::postern(
        arr32(&case["key_hex"]),
        greeting_of(&case),
        Script::Ack(Status::Started),
    );
    let dir = TempDir::new();
    let out = postern(
        &[
            "trigger",
            &server.addr(),
            "--key-env",
            "POSTERN_TEST_KEY",
            "--assert-addr",
            "203.0.113.7",
        ],
        dir.path(),
        &[("POSTERN_TEST_KEY", &case["key"])],
        None,
    );
    assert_eq!(server.finish(), unhex(&case["reply"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = postern(
        &["trigger", "127.0.0.1:9", "--key-env", "POSTERN_UNSET_VAR"],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("POSTERN_UNSET_VAR is not set"));
}

// Goal: with no key source the key is read from the prompt, which takes
// one line of standard input when that is not a terminal; no input at
// all is a local error.
#[test]
fn key_from_prompt_on_stdin() {
    let case = postern_case(1);
    let server = FakeServer::postern(
        arr32(&case["key_hex"]),
        greeting_of(&case),
        Script::Ack(Status::Started),
    );
    let dir = TempDir::new();
    let out = postern(
        &["trigger", &server.addr()],
        dir.path(),
        &[],
        Some(&format!("{}\n", case["key"])),
    );
    server.finish();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = postern(&["trigger", "127.0.0.1:9"], dir.path(), &[], None);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("cannot read the key: no input"),
        "{}",
        stderr(&out)
    );
}

// Goal: --json prints one JSON object describing the trigger.
#[test]
fn json_single() {
    let (out, _, _) = trigger_case(1, Script::Ack(Status::Started), &["--json", "console"]);
    assert_eq!(code(&out), 0);
    let s = stdout(&out);
    assert_eq!(s.lines().count(), 1);
    assert!(s.starts_with("{\"host\":\"127.0.0.1:"), "{s}");
    for part in [
        "\"action\":\"console\"",
        "\"protocol\":\"postern-2\"",
        "\"outcome\":\"started\"",
        "\"success\":true",
        "\"exit_code\":0",
        "\"latency_ms\":",
        "\"detail\":null}",
    ] {
        assert!(s.contains(part), "{part} not in {s}");
    }
}

// Goal: command-line mistakes exit 64 with a message on stderr.
#[test]
fn usage_errors_exit_64() {
    let dir = TempDir::new();
    for args in [
        &[][..],
        &["frobnicate"],
        &["trigger"],
        &["trigger", "h", "--key", "c2VjcmV0"],
        &["trigger", "h", "--timeout", "soon"],
        &["trigger", "h:99999"],
        &["trigger", "127.0.0.1", "--passphrase"],
        &[
            "trigger",
            "127.0.0.1",
            "--protocol",
            "ostiary-4",
            "--passphrase",
            "--action",
            "a",
        ],
        &["trigger", "@rack-4", "console"],
    ] {
        let out = postern(args, dir.path(), &[], None);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("postern: "), "{args:?}");
    }
    let out = postern(&["--help"], dir.path(), &[], None);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("postern trigger HOST[:PORT]"));
    let out = postern(&["--version"], dir.path(), &[], None);
    assert_eq!(
        stdout(&out),
        format!("postern {}\n", env!("CARGO_PKG_VERSION"))
    );
}

// Goal: the ack wait is not the connect timeout: a gate whose `run` takes
// longer than --timeout is still reported as started (the client waits up
// to the protocol's ack deadline), and --ack-timeout bounds that wait.
#[test]
fn slow_ack_outlives_the_connect_timeout() {
    let slow = Script::Late(Status::Started, std::time::Duration::from_secs(3));
    let (out, _, _) = trigger_case(1, slow, &["--timeout", "1"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).ends_with(": accepted; the action started\n"));
    // Not on a terminal: no waiting line.
    assert!(
        !stderr(&out).contains("waiting for the server"),
        "{}",
        stderr(&out)
    );
    let slow = Script::Late(Status::Started, std::time::Duration::from_secs(3));
    let (out, _, _) = trigger_case(1, slow, &["--ack-timeout", "1"]);
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("acknowledgement"), "{}", stdout(&out));
}

// Goal: `postern close HOST GATE` answers with the key of the closing
// action GATE.close (here derived from a fleet master under that name, so
// a key derived for GATE itself would not verify), prints "closed" and
// "not open" with exit 0, and exits 5 when the server says the gate was
// started (the key was an opening action's).
#[test]
fn close_uses_the_closing_action_and_reports_its_outcome() {
    let case = postern_case(1);
    let dir = TempDir::new();
    let master_key = postern::secret::Key::from_bytes([0x5c; 32]);
    let master = dir.file("fleet.key", master_key.to_base64().as_bytes(), 0o600);
    let closing = postern::kdf::key_from_master(&master_key, "web-17", "door.close");
    let mut closing_bytes = [0u8; 32];
    closing_bytes.copy_from_slice(closing.expose());
    let run = |script: Script, extra: &[&str]| {
        let server = FakeServer::postern(closing_bytes, greeting_of(&case), script);
        let addr = server.addr();
        let mut args = vec![
            "close",
            &addr,
            "door",
            "--master",
            master.to_str().unwrap(),
            "--host-name",
            "web-17",
            "--timeout",
            "5",
        ];
        args.extend_from_slice(extra);
        let out = postern(&args, dir.path(), &[], None);
        server.finish();
        out
    };
    let out = run(Script::Ack(Status::Closed), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(": closed; door closed now\n"),
        "{}",
        stdout(&out)
    );
    let out = run(Script::Ack(Status::NotOpen), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(": not open; door was not open, nothing to close\n"),
        "{}",
        stdout(&out)
    );
    let out = run(Script::Ack(Status::Started), &["--json"]);
    assert_eq!(code(&out), 5, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("\"success\":false,\"exit_code\":5,"),
        "{}",
        stdout(&out)
    );
    // --action names another closing action: its key is derived under
    // that name, which the server here does not hold.
    let out = run(Script::Ack(Status::Closed), &["--action", "shut-door"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
}

// Goal: during a rotation the client uses the newest key it has: the
// --next-key-file once that file exists (the old key would be refused
// here), and the --key-file while it does not.
#[test]
fn the_newest_key_present_is_used() {
    let case = postern_case(1);
    let key = arr32(&case["key_hex"]);
    let run = |current: &[u8; 32], next: Option<&[u8; 32]>| {
        let dir = TempDir::new();
        let cur = dir.key_file("cur.key", current);
        let next_path = match next {
            Some(k) => dir.key_file("next.key", k),
            None => dir.path().join("next.key"),
        };
        let server = FakeServer::postern(key, greeting_of(&case), Script::Ack(Status::Started));
        let out = postern(
            &[
                "trigger",
                &server.addr(),
                "--key-file",
                cur.to_str().unwrap(),
                "--next-key-file",
                next_path.to_str().unwrap(),
                "--timeout",
                "5",
            ],
            dir.path(),
            &[],
            None,
        );
        server.finish();
        code(&out)
    };
    assert_eq!(
        run(&[0x11; 32], Some(&key)),
        0,
        "the successor, present, is used"
    );
    assert_eq!(run(&key, None), 0, "no successor on disk: the current key");
    assert_eq!(run(&key, Some(&[0x11; 32])), 2, "a present successor wins");
}
