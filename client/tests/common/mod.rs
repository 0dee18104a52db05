//! Shared helpers for the client's integration tests: the test vectors, a
//! scratch directory, running the real `postern` binary, and small fake
//! servers and proxies on 127.0.0.1:0 that play the other side from the
//! postern library and the vectors.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postern::mac::MacKey;
use postern::secret::b64_encode;
use postern::wire::{self, Greeting, Status, OSTIARY_REPLY_LEN, REPLY_LEN};

/// How long a fake peer waits for the client before giving up.
const PEER_WAIT: Duration = Duration::from_secs(60);

/// One vector case: `name = value` lines.
pub type Case = HashMap<String, String>;

/// Reads `tests/vectors/NAME.vectors` at the workspace root.
pub fn vectors(name: &str) -> Vec<Case> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/vectors/{name}.vectors"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(" = "))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect::<Case>()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// The postern-2 vector case numbered `n`.
pub fn postern_case(n: u32) -> Case {
    vectors("postern-2")
        .into_iter()
        .find(|c| c.get("case").map(String::as_str) == Some(&n.to_string()))
        .unwrap()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn arr32(s: &str) -> [u8; 32] {
    unhex(s).try_into().unwrap()
}

pub fn greeting_of(case: &Case) -> Greeting {
    unhex(&case["greeting"]).try_into().unwrap()
}

/// A scratch directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "postern-client-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file with the given mode and returns its path.
    pub fn file(&self, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Writes a private (0600) base64 key file for raw key bytes.
    pub fn key_file(&self, name: &str, key: &[u8; 32]) -> PathBuf {
        self.file(name, format!("{}\n", b64_encode(key)).as_bytes(), 0o600)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `postern ARGS` with a clean config environment (XDG_CONFIG_HOME
/// and HOME point at `home`), the extra `env`, and `stdin` fed in (or
/// closed).
pub fn postern(args: &[&str], home: &Path, env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
    cmd.args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A port with nothing listening on it.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Accepts one connection within [`PEER_WAIT`], or `None`.
fn accept_one(listener: &TcpListener) -> Option<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    let until = Instant::now() + PEER_WAIT;
    while Instant::now() < until {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(PEER_WAIT)).unwrap();
                return Some(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    None
}

/// What a fake postern-2 server does once connected.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Verify the reply; ack with this status if it verifies, else close.
    Ack(Status),
    /// Verify the reply; ack with this whole body if it verifies.
    Answer(wire::Answer),
    /// Like `Ack`, but only after this long (a gate's slow `run`).
    Late(Status, std::time::Duration),
    /// Read the reply and close without an ack.
    Close,
    /// Send a well-formed ack whose MAC is made with another key.
    Forged,
    /// Send nothing and hold the connection until the client leaves.
    Silent,
    /// Send a greeting with a wrong tag.
    BadTag,
}

/// A fake server for one connection. `finish` returns the bytes the
/// client sent as its reply (empty if none).
pub struct FakeServer {
    pub port: u16,
    handle: JoinHandle<Vec<u8>>,
}

impl FakeServer {
    /// A postern-2 server holding `key` that sends `greeting`.
    pub fn postern(key: [u8; 32], greeting: Greeting, script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let Some(mut s) = accept_one(&listener) else {
                return Vec::new();
            };
            if let Script::Silent = script {
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                return Vec::new();
            }
            let mut g = greeting;
            if let Script::BadTag = script {
                g[..4].copy_from_slice(b"SSH-");
            }
            s.write_all(&g).unwrap();
            let mut reply = [0u8; REPLY_LEN];
            if s.read_exact(&mut reply).is_err() {
                return Vec::new();
            }
            let mk = MacKey::new(&key);
            let verifier = wire::Verifier::from_keys([&postern::secret::Key::from_bytes(key)]);
            match script {
                Script::Answer(answer) if verifier.check_reply(&g, &reply).is_some() => {
                    s.write_all(&wire::ack(&mk, &g, &reply, answer)).unwrap();
                }
                Script::Late(status, delay) if verifier.check_reply(&g, &reply).is_some() => {
                    std::thread::sleep(delay);
                    let _ = s.write_all(&wire::ack(&mk, &g, &reply, wire::Answer::bare(status)));
                }
                Script::Ack(status) if verifier.check_reply(&g, &reply).is_some() => {
                    s.write_all(&wire::ack(&mk, &g, &reply, wire::Answer::bare(status)))
                        .unwrap();
                }
                Script::Forged => {
                    let other = MacKey::new(&[0x55; 32]);
                    s.write_all(&wire::ack(
                        &other,
                        &g,
                        &reply,
                        wire::Answer::bare(Status::Started),
                    ))
                    .unwrap();
                }
                _ => {}
            }
            let _ = s.shutdown(Shutdown::Write);
            reply.to_vec()
        });
        FakeServer { port, handle }
    }

    /// An ostiary-4 server that sends `salt` and reads the 32-byte reply.
    pub fn ostiary(salt: [u8; 32]) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let Some(mut s) = accept_one(&listener) else {
                return Vec::new();
            };
            s.write_all(&salt).unwrap();
            let mut reply = [0u8; OSTIARY_REPLY_LEN];
            if s.read_exact(&mut reply).is_err() {
                return Vec::new();
            }
            reply.to_vec()
        });
        FakeServer { port, handle }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn finish(self) -> Vec<u8> {
        self.handle.join().unwrap()
    }
}

/// What a fake proxy does.
#[derive(Debug, Clone, Copy)]
pub enum ProxyScript {
    /// HTTP CONNECT answered 200, then relay.
    HttpOk,
    /// HTTP CONNECT answered with this status line.
    HttpStatus(&'static str),
    /// HTTP CONNECT answered with 9000 header bytes and no end.
    HttpHuge,
    /// SOCKS5 no-auth, CONNECT succeeded, then relay.
    SocksOk,
    /// SOCKS5 no-auth, CONNECT answered with this reply code.
    SocksReply(u8),
    /// SOCKS5 that only accepts username/password.
    SocksAuthOnly,
}

/// A fake proxy for one connection. `finish` returns the request it got
/// (HTTP: the header text; SOCKS5: the CONNECT request bytes).
pub struct FakeProxy {
    pub port: u16,
    handle: JoinHandle<Vec<u8>>,
}

fn relay(client: TcpStream, upstream: SocketAddr) {
    let server = TcpStream::connect(upstream).unwrap();
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = std::io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    up.join().unwrap();
}

impl FakeProxy {
    pub fn start(upstream: SocketAddr, script: ProxyScript) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let Some(mut s) = accept_one(&listener) else {
                return Vec::new();
            };
            match script {
                ProxyScript::HttpOk | ProxyScript::HttpStatus(_) | ProxyScript::HttpHuge => {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        s.read_exact(&mut b).unwrap();
                        head.push(b[0]);
                    }
                    match script {
                        ProxyScript::HttpOk => {
                            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                                .unwrap();
                            relay(s, upstream);
                        }
                        ProxyScript::HttpStatus(line) => {
                            s.write_all(format!("{line}\r\n\r\n").as_bytes()).unwrap();
                        }
                        _ => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
                            let _ = s.write_all(&[b'x'; 9000]);
                            let mut sink = [0u8; 64];
                            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                        }
                    }
                    head
                }
                _ => {
                    let mut hello = [0u8; 2];
                    s.read_exact(&mut hello).unwrap();
                    let mut methods = vec![0u8; usize::from(hello[1])];
                    s.read_exact(&mut methods).unwrap();
                    if let ProxyScript::SocksAuthOnly = script {
                        s.write_all(&[5, 0xff]).unwrap();
                        return hello.to_vec();
                    }
                    s.write_all(&[5, 0]).unwrap();
                    let mut req = vec![0u8; 4];
                    s.read_exact(&mut req).unwrap();
                    let rest = match req[3] {
                        1 => 4 + 2,
                        4 => 16 + 2,
                        3 => {
                            let mut l = [0u8; 1];
                            s.read_exact(&mut l).unwrap();
                            req.push(l[0]);
                            usize::from(l[0]) + 2
                        }
                        _ => 0,
                    };
                    let mut tail = vec![0u8; rest];
                    s.read_exact(&mut tail).unwrap();
                    req.extend_from_slice(&tail);
                    let rep = match script {
                        ProxyScript::SocksReply(c) => c,
                        _ => 0,
                    };
                    s.write_all(&[5, rep, 0, 1, 127, 0, 0, 1, 0x1f, 0x90])
                        .unwrap();
                    if rep == 0 {
                        relay(s, upstream);
                    }
                    req
                }
            }
        });
        FakeProxy { port, handle }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn finish(self) -> Vec<u8> {
        self.handle.join().unwrap()
    }
}
