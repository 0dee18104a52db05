//! Shared helpers for the integration tests: start the real posternd on
//! loopback with a temporary config, read its log, and speak the protocol
//! with raw sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern::mac::MacKey;
use postern::secret::{b64_encode, Key};
use postern::wire::{self, Answer, Status, ACK_LEN, GREETING_LEN};

pub mod netns;

/// A unique scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("postern-it-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh random key and its base64 form.
pub fn key() -> (Key, String) {
    let k = Key::generate().unwrap();
    let b = b64_encode(k.expose());
    (k, b)
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// True when a test that needs root must run (CI runs as root).
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root and CI=true: it must not be skipped"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// A running posternd.
pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub config: PathBuf,
    pub listeners: Vec<SocketAddr>,
    pub scratch: Scratch,
    /// The test kills or breaks the network process on purpose. Otherwise
    /// a replaced network process fails the test when the daemon is
    /// dropped: the supervisor would hide a crash from every other test.
    pub restarts_expected: bool,
}

/// The `[daemon]` table every test config starts with.
pub fn daemon_table(scratch: &Scratch) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\nshutdown_grace = \"1s\"\n",
        scratch.path("state").display()
    )
}

impl Daemon {
    /// Spawns `cmd` (a posternd, perhaps behind a wrapper), collects its
    /// log, waits for the "started" line and learns the real ports.
    fn spawn(mut cmd: Command, path: PathBuf, scratch: Scratch) -> Daemon {
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("POSTERN_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut d = Daemon {
            child,
            log,
            config: path,
            listeners: Vec::new(),
            scratch,
            restarts_expected: false,
        };
        let line = d.wait_log("started version=", Duration::from_secs(10));
        d.listeners = parse_listeners(&line);
        d
    }

    /// Writes `config` (mode 600) and starts posternd on it; waits for the
    /// "started" line and learns the real ports from it.
    pub fn start(scratch: Scratch, config: &str) -> Daemon {
        Self::start_with(scratch, config, |c| c)
    }

    pub fn start_with(
        scratch: Scratch,
        config: &str,
        tweak: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Daemon {
        let path = scratch.path("posternd.toml");
        write_private(&path, config);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posternd"));
        cmd.env_remove("JOURNAL_STREAM")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        Daemon::spawn(cmd, path, scratch)
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The network process's pid (the monitor's only direct child that is
    /// a posternd).
    pub fn network_pid(&self) -> u32 {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid())).unwrap();
        for c in children.split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains("--network-child") {
                return c.parse().unwrap();
            }
        }
        panic!("no network process found under {}", self.pid());
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits for a log line containing `needle`; panics after `limit`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_log_n(needle, 1, limit)
    }

    /// Waits until `n` lines contain `needle`; returns the last.
    pub fn wait_log_n(&self, needle: &str, n: usize, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let hits: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| l.contains(needle))
                .collect();
            if hits.len() >= n {
                return hits[n - 1].clone();
            }
            if Instant::now() > end {
                panic!(
                    "no {n} log line(s) with {needle:?} within {limit:?}; log:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Rewrites the config file.
    pub fn rewrite(&self, config: &str) {
        write_private(&self.config, config);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the daemon to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.restarts_expected && !std::thread::panicking() {
            let replaced = self.count("starting a new one");
            assert_eq!(
                replaced,
                0,
                "the network process died and was replaced; log:\n{}",
                self.lines().join("\n")
            );
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn write_private(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn parse_listeners(line: &str) -> Vec<SocketAddr> {
    let start = line.find("listeners=[").unwrap() + "listeners=[".len();
    let end = start + line[start..].find("] actions=").unwrap();
    line[start..end]
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| s[..s.find('(').unwrap()].parse().unwrap())
        .collect()
}

/// What a postern-2 exchange ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A verified ack.
    Ack(Status),
    /// The server closed without an ack.
    NoAck,
    /// No greeting at all (connection closed at once).
    NoGreeting,
}

/// Connects from `from` (a loopback source address) if given.
pub fn connect(to: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    match from {
        None => TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap(),
        Some(src) => {
            use nix::sys::socket::{
                bind, connect as nconnect, socket, AddressFamily, SockFlag, SockType,
                SockaddrStorage,
            };
            use std::os::fd::AsRawFd;
            let fam = if src.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
            bind(
                fd.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(src, 0)),
            )
            .unwrap();
            nconnect(fd.as_raw_fd(), &SockaddrStorage::from(to)).unwrap();
            TcpStream::from(fd)
        }
    }
}

/// Reads the greeting; `None` if the server closed first.
pub fn read_greeting(s: &mut TcpStream) -> Option<[u8; GREETING_LEN]> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).ok()?;
    assert!(wire::greeting_is_valid(&g));
    Some(g)
}

/// A whole postern-2 exchange with `key`, asserting `asserted`.
pub fn trigger_from(
    to: SocketAddr,
    from: Option<IpAddr>,
    key: &Key,
    asserted: Option<IpAddr>,
) -> Outcome {
    match exchange(to, from, key, asserted) {
        Exchange::NoGreeting => Outcome::NoGreeting,
        Exchange::NoAck => Outcome::NoAck,
        Exchange::Ack(a) => Outcome::Ack(a.status),
    }
}

/// How a whole exchange ended, with the ack's whole body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// The server closed before the greeting.
    NoGreeting,
    /// The server closed after the reply.
    NoAck,
    /// A verified ack.
    Ack(Answer),
}

/// A whole postern-2 exchange; the ack's status, reason and seconds.
pub fn exchange(
    to: SocketAddr,
    from: Option<IpAddr>,
    key: &Key,
    asserted: Option<IpAddr>,
) -> Exchange {
    let mut s = connect(to, from);
    let Some(g) = read_greeting(&mut s) else {
        return Exchange::NoGreeting;
    };
    let mk = MacKey::new(key.expose());
    let r = wire::reply(&mk, &g, asserted);
    s.write_all(&r).unwrap();
    let mut a = [0u8; ACK_LEN];
    match s.read_exact(&mut a) {
        Ok(()) => match wire::verify_ack(&mk, &g, &r, &a) {
            Some(answer) => Exchange::Ack(answer),
            None => panic!("ack failed verification"),
        },
        Err(_) => Exchange::NoAck,
    }
}

pub fn trigger(to: SocketAddr, key: &Key) -> Outcome {
    trigger_from(to, None, key, None)
}

/// Waits until `path` exists; returns its contents.
pub fn wait_file(path: &Path, limit: Duration) -> String {
    let end = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        if Instant::now() > end {
            panic!("{} did not appear within {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Helpers for the adversarial, fault-injection and property tests.

/// A small seeded PRNG (xorshift64*): random cases that can be replayed.
/// The seed comes from `POSTERN_TEST_SEED` when set, so a failure printed
/// with its seed can be run again exactly.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed | 1)
    }

    /// `POSTERN_TEST_SEED`, or `default`.
    pub fn seed(default: u64) -> u64 {
        std::env::var("POSTERN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub fn posternd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_posternd")
}

impl Daemon {
    /// Like [`Daemon::start`], but runs `wrapper... posternd --config
    /// PATH`. The wrapper must exec posternd (as `unshare` and `sh -c
    /// '...; exec "$@"'` do), so that the pid is posternd's.
    pub fn start_wrapped(scratch: Scratch, config: &str, wrapper: &[String]) -> Daemon {
        let path = scratch.path("posternd.toml");
        write_private(&path, config);
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(posternd_bin())
            .env_remove("JOURNAL_STREAM")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Daemon::spawn(cmd, path, scratch)
    }
}

/// Resident memory of `pid` in KiB (VmRSS), 0 if unknown.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Closes `s` with a TCP RST (SO_LINGER 0) instead of a FIN.
pub fn reset(s: TcpStream) {
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(s);
}

/// Reads whatever the server still sends until it closes (bounded).
pub fn drain(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    rest
}

/// `posternd --config PATH --check`.
pub fn check_config(path: &Path) -> std::process::Output {
    Command::new(posternd_bin())
        .arg("--config")
        .arg(path)
        .arg("--check")
        .output()
        .unwrap()
}

/// Lines of a marker file (0 if it does not exist).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}
