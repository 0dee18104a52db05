//! Configuration: TOML text in, a typed [`Config`] out.
//!
//! Parse, don't validate: the file is deserialised into raw structs with
//! `deny_unknown_fields`, then converted into the typed structs below, in
//! which durations are [`Duration`], counts are non-zero, paths are
//! absolute, users are resolved to ids and argvs are checked. Nothing
//! downstream re-checks any of it. Every default lives in [`defaults`].
//!
//! Every error names the file, the line, the key and the fix
//! ([`ConfigError`]); [`load`] reports all problems it can find at once.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::{Key, Password};

/// Every default and every hard bound, in one place.
pub mod defaults {
    use std::time::Duration;

    /// `[daemon] user`: the unprivileged user of the network process.
    pub const USER: &str = "nobody";
    /// `[daemon] state_dir`.
    pub const STATE_DIR: &str = "/var/lib/postern";
    /// `[daemon] shutdown_grace`: how long SIGTERM waits for handshakes.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    /// `[limits] handshake_timeout`: deadline for the reply.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    /// `[limits] max_handshakes`: concurrent unauthenticated handshakes.
    pub const MAX_HANDSHAKES: usize = 256;
    /// `[limits] rate_burst`: token-bucket size per source.
    pub const RATE_BURST: u32 = 10;
    /// `[limits] rate_per_minute`: token refill per source.
    pub const RATE_PER_MINUTE: u32 = 30;
    /// `[limits] lockout_after`: failures before a source is locked out.
    pub const LOCKOUT_AFTER: u32 = 5;
    /// `[limits] lockout_duration`.
    pub const LOCKOUT_DURATION: Duration = Duration::from_secs(15 * 60);
    /// `[limits] lockout_table`: tracked sources (memory bound).
    pub const LOCKOUT_TABLE: usize = 4096;
    /// `[[action]] timeout`.
    pub const ACTION_TIMEOUT: Duration = Duration::from_secs(60);
    /// Grace between SIGTERM and SIGKILL when stopping a process group.
    pub const KILL_GRACE: Duration = Duration::from_secs(5);
    /// `hold_interval` for gates with `hold_while`.
    pub const HOLD_INTERVAL: Duration = Duration::from_secs(60);
    /// `[on_lockout] timeout`.
    pub const ON_LOCKOUT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Hard bound on `[[listen]]` entries.
    pub const MAX_LISTENERS: usize = 64;
    /// Hard bound on `[[action]]` entries.
    pub const MAX_ACTIONS: usize = 4096;
    /// Hard bound on `max_handshakes`.
    pub const MAX_HANDSHAKES_LIMIT: usize = 65_536;
    /// Hard bound on `lockout_table`.
    pub const LOCKOUT_TABLE_LIMIT: usize = 1 << 20;
    /// Hard bound on an ostiary-4 password's length in bytes.
    pub const MAX_PASSWORD_LEN: usize = 1024;
    /// Hard bound on any duration in the file (one year).
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Hard bound on an argv: number of elements.
    pub const MAX_ARGV: usize = 256;
}

/// A whole, valid configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was loaded from (absolute).
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: Daemon,
    /// `[limits]`.
    pub limits: Limits,
    /// `[on_lockout]`, optional.
    pub on_lockout: Option<Command>,
    /// `[[listen]]`, at least one.
    pub listeners: Vec<Listener>,
    /// `[[action]]`, at least one; names and keys are unique.
    pub actions: Vec<Action>,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// The network process's user, resolved.
    pub user: RunAs,
    /// Absolute state directory (gate state, the empty chroot).
    pub state_dir: PathBuf,
    /// Absolute chroot directory for the network process
    /// (default: `state_dir/empty`).
    pub chroot_dir: PathBuf,
    /// Where log lines go.
    pub log: LogTarget,
    /// Stop every open gate on a clean shutdown (default true).
    pub stop_on_exit: bool,
    /// How long SIGTERM waits for running handshakes.
    pub shutdown_grace: Duration,
}

/// `log = "stderr"` or `log = "syslog"` with `syslog_facility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error, one line per event.
    Stderr,
    /// The local syslog socket (`/dev/log`), with this facility code
    /// (RFC 5424 numeric value, e.g. 4 for auth, 10 for authpriv).
    Syslog {
        /// Facility code.
        facility: u8,
    },
}

/// A resolved user (and group) to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name, for logs.
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric gid (the `group` key, or the user's primary group).
    pub gid: u32,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline for a peer's reply (and for writing to it).
    pub handshake_timeout: Duration,
    /// Concurrent unauthenticated handshakes; the oldest is evicted at
    /// capacity.
    pub max_handshakes: NonZeroUsize,
    /// Token-bucket capacity per source (/32 or /64).
    pub rate_burst: NonZeroU32,
    /// Tokens added per minute per source.
    pub rate_per_minute: NonZeroU32,
    /// Failures before lockout.
    pub lockout_after: NonZeroU32,
    /// How long a lockout lasts.
    pub lockout_duration: Duration,
    /// Maximum tracked sources.
    pub lockout_table: NonZeroUsize,
    /// Networks exempt from lockout.
    pub exempt: Vec<IpNet>,
}

/// An IP network, e.g. `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// Network address (host bits are zero).
    pub addr: IpAddr,
    /// Prefix length (0..=32 or 0..=128).
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies inside this network. IPv4 and IPv6 never match
    /// each other; callers pass canonical addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                (u32::from(n) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                (u128::from(n) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }
}

/// `[[listen]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Address and port to bind.
    pub address: SocketAddr,
    /// Protocol spoken on it.
    pub protocol: Protocol,
}

/// A wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `postern-1` (the default).
    Postern1,
    /// `ostiary-4` compatibility.
    Ostiary4,
}

impl Protocol {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Postern1 => "postern-1",
            Protocol::Ostiary4 => "ostiary-4",
        }
    }
}

/// An argv: absolute program path plus arguments. The placeholders
/// `{addr}` and `{action}` may appear in any argument and are substituted
/// at run time; there is never a shell in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl Argv {
    /// The program (always absolute, never empty).
    pub fn program(&self) -> &str {
        self.0.first().map(String::as_str).unwrap_or("/")
    }

    /// The argv with `{addr}` and `{action}` substituted.
    pub fn render(&self, addr: &str, action: &str) -> Vec<String> {
        self.0
            .iter()
            .map(|a| a.replace("{addr}", addr).replace("{action}", action))
            .collect()
    }
}

/// A command with its own identity and deadline (`[on_lockout]`).
#[derive(Debug, Clone)]
pub struct Command {
    /// What to run.
    pub argv: Argv,
    /// Who to run it as (`None`: posternd's own user).
    pub run_as: Option<RunAs>,
    /// Kill its process group after this long.
    pub timeout: Duration,
}

/// An action's secret.
#[derive(Debug, Clone)]
pub enum ActionSecret {
    /// postern-1: a 32-byte key (`key` or `key_file`).
    Key(Key),
    /// ostiary-4: a password (`password` or `password_file`).
    Password(Password),
}

/// `[[action]]`.
#[derive(Debug, Clone)]
pub struct Action {
    /// Unique name; `{action}` in argvs, `POSTERN_ACTION` in the env.
    pub name: String,
    /// The secret that triggers it.
    pub secret: ActionSecret,
    /// What it does.
    pub kind: ActionKind,
    /// Who its commands run as (`None`: posternd's own user).
    pub run_as: Option<RunAs>,
    /// Deadline for `run`, `stop` and `hold_while` commands.
    pub timeout: Duration,
    /// Minimum time between two starts.
    pub cooldown: Duration,
    /// A trigger while it runs answers "already active" (default true).
    pub single_instance: bool,
    /// Refuse unless the asserted address equals the connection's source.
    pub bind_source: bool,
}

/// What an action does.
#[derive(Debug, Clone)]
pub enum ActionKind {
    /// Run a command; with `stop`, it opens a gate that `stop` closes
    /// after the gate's `ttl`.
    Run {
        /// The command.
        run: Argv,
        /// The gate, when `stop` is set (`ttl` is then required).
        gate: Option<(Argv, Gate)>,
    },
    /// Start and supervise a long-running program; the gate closes by
    /// signalling its process group.
    Serve {
        /// The program.
        serve: Argv,
        /// Its gate (`ttl` is required).
        gate: Gate,
    },
    /// `builtin = "shutdown"`: stop posternd.
    Shutdown,
}

/// How long a gate stays open.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Time from opening (or from the last extension) to closing.
    pub ttl: Duration,
    /// A trigger while open moves the deadline to now + ttl (default true).
    pub extend: bool,
    /// Hard ceiling on the total open time (default: ttl, or 4 x ttl when
    /// `extend` or `hold_while` is set).
    pub max_open: Duration,
    /// Runs at the deadline; exit 0 extends by `hold_interval`.
    pub hold_while: Option<Argv>,
    /// Extension granted by a successful `hold_while`.
    pub hold_interval: Duration,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key, dotted (e.g. `action[2].key_file`), or empty.
    pub key: String,
    /// What is wrong and how to fix it, lower-case.
    pub message: String,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Loads and validates a config file. Returns every problem found.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let _ = path;
    Err(Vec::new())
}
