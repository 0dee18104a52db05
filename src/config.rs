//! Configuration: TOML text in, a typed [`Config`] out.
//!
//! Parse, don't validate: the file is deserialised into raw structs with
//! `deny_unknown_fields` and a [`toml::Spanned`] on every field, then
//! converted into the typed structs below, in which durations are
//! [`Duration`], counts are non-zero, paths are absolute, users are resolved
//! to ids, secrets are loaded and argvs are checked. Nothing downstream
//! re-checks any of it. Every default lives in [`defaults`].
//!
//! Every error names the file, the line, the key and the fix
//! ([`ConfigError`]); [`load`] reports all problems it can find at once.
//! Keys are dotted paths with 1-based indexes into arrays of tables:
//! `limits.max_handshakes`, `listen[1].address`, `action[2].key_file`. A
//! problem with a whole table (an action with no secret) names the table
//! itself: `action[2]`. Unknown keys and wrong types are all reported
//! first; the remaining checks run once the file has the right shape. A
//! TOML syntax error stops parsing at once.
//!
//! # Schema
//!
//! ```toml
//! [daemon]                        # optional
//! user = "nobody"                 # network-process user; default "nobody"
//! group = "nogroup"               # default: the user's primary group
//! state_dir = "/var/lib/postern"  # absolute, or relative to this file's directory
//! chroot = "/var/lib/postern/empty"   # default: state_dir/empty; must be a directory if it exists
//! log = "stderr"                  # or "syslog"
//! syslog_facility = "auth"        # auth, authpriv, daemon, user, local0..local7; only with syslog
//! stop_on_exit = true             # close every open gate on a clean shutdown
//! shutdown_grace = "5s"           # how long SIGTERM waits for running handshakes
//!
//! [limits]                        # optional; every key optional
//! handshake_timeout = "5s"        # > 0
//! max_handshakes = 256            # 1..=65536
//! rate_burst = 10                 # 1..=1000000
//! rate_per_minute = 30            # 1..=1000000
//! lockout_after = 5               # 1..=1000000
//! lockout_duration = "15m"        # > 0
//! lockout_table = 4096            # 1..=262144
//! verify_per_second = 200         # 1..=1000000; full verifications for sources not in good standing
//! exempt = ["10.0.0.0/8", "2001:db8::/32"]   # host bits zero; a bare address is /32 or /128
//!
//! [on_lockout]                    # optional: runs when a source gets locked out
//! run = ["/usr/local/bin/report", "{addr}", "{source}"]   # {source}: what is locked, as CIDR
//! user = "nobody"                 # optional (default: posternd's own user); group optional
//! timeout = "10s"
//! networks = false                # also run when a /24, /56 or /48 gets locked out
//!
//! [[listen]]                      # at least one, at most 64
//! address = "127.0.0.1:7001"      # IP literal and port; "[::1]:7001" for IPv6; port 0 picks one
//! protocol = "postern-2"          # or "ostiary-4"; default "postern-2"
//!
//! [[action]]                      # at least one, at most 4096
//! name = "sshd"                   # unique, 1-64 of A-Z a-z 0-9 . _ -
//! # exactly one secret (or [[action.key]] tables); key/key_file need a postern-2 listener,
//! # password/password_file an ostiary-4 listener. Secret files must not be
//! # accessible by group or others (chmod 600).
//! key = "<base64 of 32 bytes>"    # or key_file = "keys/sshd.key" (relative to this file)
//! # password = "..."              # or password_file = "..." (one trailing newline stripped)
//! # exactly one of run / serve / builtin
//! run = ["/usr/bin/systemctl", "start", "ssh"]
//! # serve = ["/usr/sbin/sshd", "-D"]   # supervised program; needs ttl
//! # builtin = "shutdown"               # stops posternd; takes no other keys but bind_source
//! stop = ["/usr/bin/systemctl", "stop", "ssh"]   # only with run; needs ttl
//! ttl = "30m"                     # gate lifetime; required with stop or serve, refused otherwise
//! extend = true                   # a trigger while open restarts the ttl
//! max_open = "2h"                 # >= ttl; default ttl, or 4 x ttl with extend or hold_while
//! hold_while = ["/usr/local/bin/in-use"]   # at the deadline: exit 0 keeps the gate open
//! hold_interval = "60s"           # extension granted by a successful hold_while
//! user = "root"                   # optional (default: posternd's own user); group optional
//! timeout = "60s"                 # deadline for run, stop and hold_while; at most 2m for a gate with run
//! cooldown = "0s"                 # minimum time between two starts
//! single_instance = true          # a trigger while running answers "already active"
//! bind_source = false             # postern-2 only: the asserted address must be the source
//! per_address = false             # gates: one instance per address (asserted, else source)
//! max_addresses = 64              # 1..=4096; only with per_address: addresses open at once
//!
//! [[action.key]]                  # instead of the single secret: a key per operator, at most 64
//! name = "alice"                  # unique within the action, 1-64 of A-Z a-z 0-9 . _ -; logged by=alice
//! key_file = "keys/sshd.alice.key"    # or key = "<base64 of 32 bytes>"
//! next_key_file = "keys/sshd.alice.next.key"   # optional successor (or next_key = "...")
//! overlap_until = "2026-12-15T00:00:00Z"       # required with a successor: the old key is
//!                                              # accepted until then (RFC 3339, UTC), then only the successor
//!
//! [[action]]                      # a closing action: closes a gate now
//! name = "sshd.close"             # the client's convention: GATE.close
//! key_file = "keys/sshd.close.key"   # its own secret, like any action
//! closes = "sshd"                 # a gate action of this file; takes no other keys but bind_source
//! ```
//!
//! Every key, password and successor of every action is one slot of
//! [`Config::slots`] (at most [`defaults::MAX_KEY_SLOTS`]); no two slots
//! hold the same secret.
//!
//! Durations are strings of number-unit pairs: `"500ms"`, `"30s"`, `"15m"`,
//! `"2h"`, `"1d"`, `"1h30m"`; at most [`defaults::MAX_DURATION`]. Bare
//! integers are refused, so a unit is never guessed. Argv elements may
//! contain `{addr}` and `{action}`; program paths must be absolute and
//! executable.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::unistd::{Group, User};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;
use zeroize::{Zeroize, Zeroizing};

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
    /// `[limits] verify_per_second`: full verifications per second shared
    /// by every source not in good standing (its bucket holds
    /// `limits::VERIFY_BURST_SECONDS` seconds' worth).
    pub const VERIFY_PER_SECOND: u32 = 200;
    /// `[[action]] timeout`.
    pub const ACTION_TIMEOUT: Duration = Duration::from_secs(60);
    /// `[[action]] timeout` of a gate with `run`: at most this. A trigger's
    /// ack waits for the gate's `stop` (if it is closing) and then its
    /// `run`, so twice this plus the serve settle time and slack stays
    /// within the protocol's ack deadline (`wire::ACK_DEADLINE_SECS`).
    pub const MAX_GATE_TIMEOUT: Duration = Duration::from_secs(120);
    /// Grace between SIGTERM and SIGKILL when stopping a process group.
    pub const KILL_GRACE: Duration = Duration::from_secs(5);
    /// `hold_interval` for gates with `hold_while`.
    pub const HOLD_INTERVAL: Duration = Duration::from_secs(60);
    /// `[on_lockout] timeout`.
    pub const ON_LOCKOUT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[on_lockout] networks`: run only for sources, not for networks.
    pub const ON_LOCKOUT_NETWORKS: bool = false;

    /// Hard bound on `[[listen]]` entries.
    pub const MAX_LISTENERS: usize = 64;
    /// Hard bound on `[[action]]` entries.
    pub const MAX_ACTIONS: usize = 4096;
    /// Hard bound on `[[action.key]]` entries of one action.
    pub const MAX_KEYS_PER_ACTION: usize = 64;
    /// Hard bound on key slots in the whole file: every key, password and
    /// successor of every action. Each reply is checked against all of
    /// them (BENCHMARKS.md gives the cost per slot), and slot indexes
    /// travel to the network process as 16 bits.
    pub const MAX_KEY_SLOTS: usize = 8192;
    /// Hard bound on a `[[action.key]]` name's length in bytes.
    pub const MAX_KEY_NAME: usize = 64;
    /// Hard bound on `max_handshakes`.
    pub const MAX_HANDSHAKES_LIMIT: usize = 65_536;
    /// Hard bound on `lockout_table`: about 170 bytes an entry (measured),
    /// so at most about 42 MiB of the network process (see SECURITY.md).
    pub const LOCKOUT_TABLE_LIMIT: usize = 1 << 18;
    /// Hard bound on an ostiary-4 password's length in bytes: the
    /// HMAC-SHA256 block. HMAC replaces a longer key by its SHA-256, so a
    /// longer password would be the same key as that 32-byte string.
    pub const MAX_PASSWORD_LEN: usize = 64;
    /// Hard bound on a password file's size in bytes (longer ones are
    /// refused by size before their length is reported).
    pub const MAX_PASSWORD_FILE_LEN: u64 = 1026;
    /// Hard bound on the config file's size in bytes (4096 actions fit).
    pub const MAX_CONFIG_LEN: u64 = 2 * 1024 * 1024;
    /// Hard bound on any duration in the file (one year).
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Hard bound on an argv: number of elements.
    pub const MAX_ARGV: usize = 256;
    /// Hard bound on `[limits] exempt` entries (the count travels to the
    /// network process as 16 bits; each is checked per failure).
    pub const MAX_EXEMPT: usize = 1024;

    /// `[daemon] chroot`: this directory under `state_dir`.
    pub const CHROOT_SUBDIR: &str = "empty";
    /// `[daemon] log`.
    pub const LOG: &str = "stderr";
    /// `[daemon] syslog_facility`.
    pub const SYSLOG_FACILITY: &str = "auth";
    /// `[daemon] stop_on_exit`.
    pub const STOP_ON_EXIT: bool = true;
    /// `[[listen]] protocol`.
    pub const PROTOCOL: &str = "postern-2";
    /// `[[action]] extend`.
    pub const EXTEND: bool = true;
    /// `[[action]] max_open` is this many ttls when `extend` or
    /// `hold_while` is set (capped at [`MAX_DURATION`]), else one ttl.
    pub const MAX_OPEN_FACTOR: u32 = 4;
    /// `[[action]] cooldown`.
    pub const COOLDOWN: Duration = Duration::ZERO;
    /// `[[action]] single_instance`.
    pub const SINGLE_INSTANCE: bool = true;
    /// `[[action]] bind_source`.
    pub const BIND_SOURCE: bool = false;
    /// `[[action]] per_address`: one gate for the action, not one per
    /// address.
    pub const PER_ADDRESS: bool = false;
    /// `[[action]] max_addresses`: addresses a per-address gate is open
    /// for at once.
    pub const MAX_ADDRESSES: usize = 64;
    /// Hard bound on `max_addresses`: each open address is a record in
    /// the state file, a deadline timer and, for `serve`, a process.
    pub const MAX_ADDRESSES_LIMIT: usize = 4096;

    /// Hard bound on an action name's length in bytes.
    pub const MAX_ACTION_NAME: usize = 64;
    /// Hard bound on a key file's size in bytes (one base64 key and
    /// whitespace need 45).
    pub const MAX_KEY_FILE_LEN: u64 = 1024;
    /// Hard bound on `rate_burst` and `rate_per_minute`.
    pub const MAX_RATE: u32 = 1_000_000;
    /// Hard bound on `lockout_after`.
    pub const MAX_LOCKOUT_AFTER: u32 = 1_000_000;
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
    /// Every key of every action, flattened: what a reply is checked
    /// against, in this order (see [`KeySlot`]). At most
    /// [`defaults::MAX_KEY_SLOTS`]; every secret differs from every other.
    pub slots: Vec<KeySlot>,
    /// Problems that do not stop posternd but that the operator should fix
    /// (an inline secret in a file others can read). One line each, ready
    /// to log at start-up.
    pub warnings: Vec<String>,
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
    /// Maximum tracked sources and networks.
    pub lockout_table: NonZeroUsize,
    /// Full verifications per second for sources not in good standing.
    pub verify_per_second: NonZeroU32,
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
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                (u32::from(n) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                (u128::from(n) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }

    /// Whether this network and `other` share an address (one contains
    /// the other). `other.addr` may have host bits set.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        if self.prefix <= other.prefix {
            self.contains(other.addr)
        } else {
            other.contains(self.addr)
        }
    }
}

impl core::fmt::Display for IpNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
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
    /// `postern-2` (the default).
    Postern2,
    /// `ostiary-4` compatibility.
    Ostiary4,
}

impl Protocol {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Postern2 => "postern-2",
            Protocol::Ostiary4 => "ostiary-4",
        }
    }
}

/// An argv: absolute program path plus arguments. The placeholders
/// `{addr}` and `{action}` (and in `[on_lockout]`, `{source}`) may appear
/// in any argument and are substituted at run time; there is never a
/// shell in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl Argv {
    /// The program (always absolute, never empty).
    pub fn program(&self) -> &str {
        self.0.first().map(String::as_str).unwrap_or("/")
    }

    /// The argv with `{addr}` and `{action}` substituted, and `{source}`
    /// when given (the config allows it only where one is).
    pub fn render(&self, addr: &str, action: &str, source: Option<&str>) -> Vec<String> {
        self.0
            .iter()
            .map(|a| {
                let a = a.replace("{addr}", addr).replace("{action}", action);
                match source {
                    Some(s) => a.replace("{source}", s),
                    None => a,
                }
            })
            .collect()
    }
}

/// A command with its own identity and deadline (`[on_lockout]`).
#[derive(Debug, Clone)]
pub struct Command {
    /// What to run; besides `{addr}` and `{action}` it may use `{source}`
    /// (what got locked out, as CIDR).
    pub argv: Argv,
    /// Who to run it as (`None`: posternd's own user).
    pub run_as: Option<RunAs>,
    /// Kill its process group after this long.
    pub timeout: Duration,
    /// Also run when a network (IPv4 /24, IPv6 /56 or /48) gets locked
    /// out, not only a source (/32, /64).
    pub networks: bool,
}

/// An action's secret.
#[derive(Debug, Clone)]
pub enum ActionSecret {
    /// postern-2: a 32-byte key (`key` or `key_file`).
    Key(Key),
    /// ostiary-4: a password (`password` or `password_file`).
    Password(Password),
}

impl ActionSecret {
    /// Constant-time equality; a key never equals a password.
    pub fn ct_eq(&self, other: &ActionSecret) -> bool {
        match (self, other) {
            (ActionSecret::Key(x), ActionSecret::Key(y)) => x.ct_eq(y),
            (ActionSecret::Password(x), ActionSecret::Password(y)) => x.ct_eq(y),
            _ => false,
        }
    }

    /// The bytes that key the MAC: the key, or the password.
    pub fn expose(&self) -> &[u8] {
        match self {
            ActionSecret::Key(k) => k.expose(),
            ActionSecret::Password(p) => p.expose(),
        }
    }

    /// Whether this is an ostiary-4 password.
    pub fn is_password(&self) -> bool {
        matches!(self, ActionSecret::Password(_))
    }
}

/// One key of an action: the single unnamed secret (`key`, `key_file`,
/// `password`, `password_file` on the action), or a named
/// `[[action.key]]`, possibly with a successor.
#[derive(Debug, Clone)]
pub struct ActionKey {
    /// The operator it belongs to; `None` for the action's single secret
    /// (logged as `by=-`).
    pub name: Option<String>,
    /// The secret.
    pub secret: ActionSecret,
    /// Its successor, if it is being rotated.
    pub next: Option<Successor>,
}

/// A key's successor (`next_key`, `next_key_file`) and the end of the
/// overlap window (`overlap_until`).
#[derive(Debug, Clone)]
pub struct Successor {
    /// The new key.
    pub secret: ActionSecret,
    /// The old key is accepted while the time is before this instant;
    /// from it on, only the successor.
    pub overlap_until: SystemTime,
}

/// Which of a key's secrets a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// A key without a successor.
    Only,
    /// A key being replaced: accepted until its `overlap_until`.
    Old,
    /// The successor of a key being replaced.
    Next,
}

impl KeyRole {
    /// The log's `key=` value; `None` for a key without a successor.
    pub fn log_name(self) -> Option<&'static str> {
        match self {
            KeyRole::Only => None,
            KeyRole::Old => Some("old"),
            KeyRole::Next => Some("next"),
        }
    }
}

/// One secret a reply can match, in the flat list [`Config::slots`]: the
/// constant-time check covers every slot of every action, and the index of
/// the slot that matched is what travels from the verifier to the monitor
/// (`ipc.rs`), which names the key in the log from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    /// Index into [`Config::actions`].
    pub action: usize,
    /// Index into that action's [`Action::keys`].
    pub key: usize,
    /// Whether it is the key itself or its successor.
    pub role: KeyRole,
    /// `Some` for [`KeyRole::Old`]: the slot is refused from this instant.
    pub until: Option<SystemTime>,
}

impl KeySlot {
    /// Whether the slot may be accepted at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

impl Config {
    /// The secret a slot holds; `None` if the slot is not this config's.
    pub fn slot_secret(&self, slot: &KeySlot) -> Option<&ActionSecret> {
        let key = self.actions.get(slot.action)?.keys.get(slot.key)?;
        match slot.role {
            KeyRole::Only | KeyRole::Old => Some(&key.secret),
            KeyRole::Next => key.next.as_ref().map(|n| &n.secret),
        }
    }

    /// The key name a slot is logged as: the `[[action.key]]` name, or
    /// `-` for an action's single secret.
    pub fn slot_name(&self, slot: &KeySlot) -> &str {
        self.actions
            .get(slot.action)
            .and_then(|a| a.keys.get(slot.key))
            .and_then(|k| k.name.as_deref())
            .unwrap_or("-")
    }
}

/// Builds the flat slot list, in action order, each key then its
/// successor.
fn build_slots(actions: &[Action]) -> Vec<KeySlot> {
    let mut out = Vec::new();
    for (a, action) in actions.iter().enumerate() {
        for (k, key) in action.keys.iter().enumerate() {
            match &key.next {
                None => out.push(KeySlot {
                    action: a,
                    key: k,
                    role: KeyRole::Only,
                    until: None,
                }),
                Some(next) => {
                    out.push(KeySlot {
                        action: a,
                        key: k,
                        role: KeyRole::Old,
                        until: Some(next.overlap_until),
                    });
                    out.push(KeySlot {
                        action: a,
                        key: k,
                        role: KeyRole::Next,
                        until: None,
                    });
                }
            }
        }
    }
    out
}

/// Whether two actions are the same in every respect but their keys: the
/// same name, commands and settings. A reload that leaves an action the
/// same lets requests from handshakes that began before it run, if the
/// key that matched is still there (see [`same_slot`]).
pub fn same_action(a: &Action, b: &Action) -> bool {
    // Every field named, so that a new one cannot be left out.
    let settings = |x: &Action| {
        let Action {
            name,
            keys: _,
            kind,
            run_as,
            timeout,
            cooldown,
            single_instance,
            bind_source,
        } = x;
        format!("{name:?} {kind:?} {run_as:?} {timeout:?} {cooldown:?} {single_instance:?} {bind_source:?}")
    };
    settings(a) == settings(b)
}

/// The slot of `new` that carries the same key as slot `was` of `old`:
/// the same name and the same secret (compared in constant time), in the
/// action `action` of `new`. A key removed, renamed or re-keyed by a
/// reload has none, so a reply verified under the old config is refused.
pub fn same_slot(old: &Config, was: &KeySlot, new: &Config, action: usize) -> Option<usize> {
    let secret = old.slot_secret(was)?;
    let name = old.slot_name(was);
    new.slots.iter().position(|s| {
        s.action == action
            && new.slot_name(s) == name
            && new.slot_secret(s).is_some_and(|x| x.ct_eq(secret))
    })
}

/// `[[action]]`.
#[derive(Debug, Clone)]
pub struct Action {
    /// Unique name; `{action}` in argvs, `POSTERN_ACTION` in the env.
    pub name: String,
    /// The keys that trigger it: one unnamed secret, or the named
    /// `[[action.key]]` entries (at most [`defaults::MAX_KEYS_PER_ACTION`]).
    /// All postern-2 keys, or one ostiary-4 password.
    pub keys: Vec<ActionKey>,
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
    /// `closes = "NAME"`: close gate NAME now (for the requesting
    /// address, if it is per address). NAME is checked to be a gate
    /// action of the same config.
    Close {
        /// The gate action's name.
        gate: String,
    },
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
    /// `run`/`stop` gates: closes the gate for every address at once. Run
    /// instead of `stop` when the gate's record cannot be read, so the
    /// address it was opened for is unknown. Required when `stop` uses
    /// `{addr}`; never uses `{addr}` itself.
    pub stop_all: Option<Argv>,
    /// `per_address`: `Some(max_addresses)` gives each address its own
    /// instance (deadline, extension, ceiling), at most that many open at
    /// once; `None` is one gate for the action.
    pub per_address: Option<NonZeroUsize>,
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
///
/// On success, [`Config::warnings`] holds a line for each non-fatal
/// problem, such as inline secrets in a file that group or others can read.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let file = absolute(path)?;
    let fail = |message: String| {
        vec![ConfigError {
            file: file.clone(),
            line: None,
            key: String::new(),
            message,
        }]
    };
    let bytes = match read_bounded(&file, defaults::MAX_CONFIG_LEN) {
        Ok(b) if b.len() as u64 > defaults::MAX_CONFIG_LEN => {
            return Err(fail(format!(
            "the config file is larger than {} bytes; check the path (it should be a TOML file)",
            defaults::MAX_CONFIG_LEN
        )))
        }
        Ok(b) => b,
        Err(e) => {
            return Err(fail(format!(
                "cannot read the config file: {}; check the path",
                io_reason(&e)
            )))
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(fail(
            "the config file is not valid UTF-8; save it as UTF-8".into(),
        ));
    };
    let (mut config, inline_secret) = parse_inner(text, &file)?;
    let now = SystemTime::now();
    for (i, a) in config.actions.iter().enumerate() {
        for (j, k) in a.keys.iter().enumerate() {
            let Some(next) = k.next.as_ref().filter(|n| n.overlap_until <= now) else {
                continue;
            };
            config.warnings.push(format!(
                "{}: action[{}].key[{}] ({} of {}): overlap_until {} has passed, so only the successor is accepted; make next_key_file the key_file and remove next_key_file and overlap_until",
                file.display(),
                i + 1,
                j + 1,
                k.name.as_deref().unwrap_or("-"),
                a.name,
                format_utc(next.overlap_until)
            ));
        }
        let password = a.keys.iter().find_map(|k| match &k.secret {
            ActionSecret::Password(p) => Some(p),
            ActionSecret::Key(_) => None,
        });
        if let Some(p) = password {
            if let Some(why) = ostclient_cannot_send(p.expose()) {
                config.warnings.push(format!(
                    "{}: action[{}] ({}): Ostiary 4.0's own client cannot send this password: {why}; other ostiary-4 clients can, but to keep ostclient working choose another password",
                    file.display(),
                    i + 1,
                    a.name
                ));
            }
        }
    }
    let mode = std::fs::metadata(&file).map(|m| m.permissions().mode());
    if let (true, Ok(mode)) = (inline_secret, mode) {
        if mode & 0o077 != 0 {
            config.warnings.push(format!(
                "{}: holds inline secrets (key or password) but is accessible by group or others \
                 (mode {:03o}); run `chmod 600 {}`",
                file.display(),
                mode & 0o777,
                file.display()
            ));
        }
    }
    Ok(config)
}

/// Why Ostiary 4.0's own client could not send `password`, if it could not:
/// it reads at most 63 bytes and strips trailing whitespace.
pub fn ostclient_cannot_send(password: &[u8]) -> Option<String> {
    if password.len() > crate::wire::OSTCLIENT_MAX_PASSWORD {
        return Some(format!(
            "it is {} bytes long, and ostclient sends at most {}",
            password.len(),
            crate::wire::OSTCLIENT_MAX_PASSWORD
        ));
    }
    if password.last().is_some_and(|b| b.is_ascii_whitespace()) {
        return Some("it ends in whitespace, which ostclient strips".into());
    }
    None
}

/// Parses and validates config text as if it had been read from `path`:
/// errors name `path`, and relative paths in the text resolve against its
/// directory. The file itself is not read, so its permissions are not
/// checked (see [`load`]); files the text refers to are read.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
    parse_inner(text, path).map(|(config, _)| config)
}

/// The whole pipeline; also says whether the text holds an inline secret.
fn parse_inner(text: &str, path: &Path) -> Result<(Config, bool), Vec<ConfigError>> {
    let file = absolute(path)?;
    let base = file
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let mut cx = Cx {
        file: &file,
        text,
        base,
        errors: Vec::new(),
        inline_secret: false,
    };
    let config = match parse_raw(&mut cx) {
        Some(raw) => cx.config(&raw),
        None => None,
    };
    match config {
        Some(config) if cx.errors.is_empty() => Ok((config, cx.inline_secret)),
        _ => {
            let mut errors = cx.errors;
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(errors)
        }
    }
}

/// `path`, made absolute against the working directory.
fn absolute(path: &Path) -> Result<PathBuf, Vec<ConfigError>> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::env::current_dir().map(|d| d.join(path)).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!(
                "cannot resolve the relative path: {}; give an absolute path",
                io_reason(&e)
            ),
        }]
    })
}

/// A lower-case reason for an I/O error.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "it does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string().to_lowercase(),
    }
}

// ---------------------------------------------------------------------------
// Raw structs: the shape of the file, nothing more.

/// The dotted key and the span of each key slot's secret, in slot order.
type SlotSpans = Vec<(String, Range<usize>)>;

/// An optional key with its position in the file.
type Opt<T> = Option<Spanned<T>>;
/// An argv as written.
type RawArgv = Spanned<Vec<Spanned<String>>>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Opt<RawDaemon>,
    limits: Opt<RawLimits>,
    on_lockout: Opt<RawCommand>,
    listen: Option<Vec<Spanned<RawListen>>>,
    action: Option<Vec<Spanned<RawAction>>>,
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    user: Opt<String>,
    group: Opt<String>,
    state_dir: Opt<String>,
    chroot: Opt<String>,
    log: Opt<String>,
    syslog_facility: Opt<String>,
    stop_on_exit: Opt<bool>,
    shutdown_grace: Opt<RawDuration>,
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Opt<RawDuration>,
    max_handshakes: Opt<i64>,
    rate_burst: Opt<i64>,
    rate_per_minute: Opt<i64>,
    lockout_after: Opt<i64>,
    lockout_duration: Opt<RawDuration>,
    lockout_table: Opt<i64>,
    verify_per_second: Opt<i64>,
    exempt: Option<RawArgv>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    run: Option<RawArgv>,
    user: Opt<String>,
    group: Opt<String>,
    timeout: Opt<RawDuration>,
    networks: Opt<bool>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Opt<String>,
    protocol: Opt<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: Opt<String>,
    key: Opt<RawKeyField>,
    key_file: Opt<String>,
    password: Opt<SecretText>,
    password_file: Opt<String>,
    run: Option<RawArgv>,
    serve: Option<RawArgv>,
    builtin: Opt<String>,
    stop: Option<RawArgv>,
    stop_all: Option<RawArgv>,
    ttl: Opt<RawDuration>,
    extend: Opt<bool>,
    max_open: Opt<RawDuration>,
    hold_while: Option<RawArgv>,
    hold_interval: Opt<RawDuration>,
    user: Opt<String>,
    group: Opt<String>,
    timeout: Opt<RawDuration>,
    cooldown: Opt<RawDuration>,
    single_instance: Opt<bool>,
    bind_source: Opt<bool>,
    per_address: Opt<bool>,
    max_addresses: Opt<i64>,
    closes: Opt<String>,
}

/// `[[action.key]]`: one operator's key, and its successor.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Opt<String>,
    key: Opt<SecretText>,
    key_file: Opt<String>,
    next_key: Opt<SecretText>,
    next_key_file: Opt<String>,
    overlap_until: Opt<String>,
}

/// An action's `key`: an inline base64 key (a string), or the named keys
/// (an array of `[[action.key]]` tables).
enum RawKeyField {
    Inline(SecretText),
    Named(Vec<Spanned<RawKey>>),
}

impl<'de> Deserialize<'de> for RawKeyField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawKeyField;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a base64 key string or [[action.key]] tables")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawKeyField, E> {
                Ok(RawKeyField::Inline(SecretText(Zeroizing::new(
                    v.to_owned(),
                ))))
            }
            fn visit_string<E>(self, v: String) -> Result<RawKeyField, E> {
                Ok(RawKeyField::Inline(SecretText(Zeroizing::new(v))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawKeyField, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element()? {
                    keys.push(k);
                }
                Ok(RawKeyField::Named(keys))
            }
        }
        d.deserialize_any(V)
    }
}

/// An inline secret, zeroized when the raw config is dropped.
struct SecretText(Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SecretText;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<SecretText, E> {
                Ok(SecretText(Zeroizing::new(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<SecretText, E> {
                Ok(SecretText(Zeroizing::new(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A duration as written: a string to parse, or an integer to refuse with
/// a hint (a bare number has no unit).
enum RawDuration {
    Text(String),
    Integer(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a duration string such as \"30s\"")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Integer(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Shape errors. serde stops at the first unknown key or wrong type, so the
// text is parsed again with each offending key blanked out (byte for byte,
// newlines kept, so positions do not move) until it has the right shape.

/// Bound on how many shape errors one run reports.
const MAX_SHAPE_ERRORS: usize = 64;

/// A generic spanned TOML tree, used only to name the key at a position.
enum Node {
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Table(entries))
            }
        }
        d.deserialize_any(V)
    }
}

fn span_holds(span: &Range<usize>, at: usize) -> bool {
    (span.start <= at && at < span.end) || span.start == at
}

/// The dotted key at byte `at`, and the bytes of the innermost key-value
/// pair holding it. Arrays of tables get 1-based indexes; arrays of values
/// do not (an argv problem is reported on the argv's key).
fn locate(root: &Node, at: usize) -> (String, Option<Range<usize>>) {
    let mut path = String::new();
    let mut pair = None;
    let mut node = root;
    loop {
        match node {
            Node::Table(entries) => {
                let hit = entries
                    .iter()
                    .find(|(k, v)| span_holds(&k.span(), at) || span_holds(&v.span(), at));
                // A nested array of tables (`[[action.key]]`) is written
                // after its parent's own keys, and the parent's span ends
                // before it: the last one declared before `at` holds it.
                let nested = || {
                    entries
                        .iter()
                        .filter(|(k, v)| {
                            k.span().start <= at
                                && matches!(v.get_ref(), Node::Array(a)
                                    if a.iter().any(|t| matches!(t.get_ref(), Node::Table(_))))
                        })
                        .max_by_key(|(k, _)| k.span().start)
                };
                let (k, v, exact) = match hit {
                    Some((k, v)) => (k, v, true),
                    None => match nested() {
                        Some((k, v)) => (k, v, false),
                        None => break,
                    },
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.get_ref());
                if exact {
                    let (ks, vs) = (k.span(), v.span());
                    pair = Some(ks.start.min(vs.start)..ks.end.max(vs.end));
                }
                node = v.get_ref();
            }
            Node::Array(items) => {
                let tables = || {
                    items
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| matches!(v.get_ref(), Node::Table(_)))
                };
                let hit = tables()
                    .find(|(_, v)| span_holds(&v.span(), at))
                    .or_else(|| tables().rfind(|(_, v)| v.span().start <= at));
                let Some((i, v)) = hit else { break };
                path.push_str(&format!("[{}]", i + 1));
                node = v.get_ref();
            }
            Node::Scalar => break,
        }
    }
    (path, pair)
}

/// Rewrites a serde or TOML message into this module's style.
fn describe(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return match rest.split_once("`, expected ") {
            Some((_, expected)) => {
                format!("unknown key; remove it or fix its spelling (expected {expected})")
            }
            None => "unknown key; remove it".into(),
        };
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let expected = match expected {
            "i64" => "an integer",
            "a sequence" => "an array",
            e if e.starts_with("struct ") => "a table",
            e => e,
        };
        let found = match found {
            "map" => "a table",
            "sequence" => "an array",
            f => f,
        };
        return format!("wrong type: found {found}, expected {expected}");
    }
    format!("invalid TOML: {message}")
}

/// Deserialises the raw config, reporting every unknown key and wrong type.
/// `None` means errors were reported.
fn parse_raw(cx: &mut Cx<'_>) -> Option<RawConfig> {
    let mut text = Zeroizing::new(cx.text.to_owned());
    let mut last: Option<Range<usize>> = None;
    for round in 0..MAX_SHAPE_ERRORS {
        let error = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) if round == 0 => return Some(raw),
            Ok(_) => return None,
            Err(e) => e,
        };
        let span = error.span();
        let located = toml::from_str::<Node>(&text).ok().zip(span.clone());
        let (key, pair) = match &located {
            Some((tree, span)) => locate(tree, span.start),
            // Not valid TOML (or a value the locator cannot hold, such as
            // a date): report it as it stands and stop.
            None => (String::new(), None),
        };
        if round == 0 || located.is_some() {
            cx.err(key, span.clone(), describe(error.message()));
        }
        let pair = pair?;
        if last.as_ref() == Some(&pair) {
            return None;
        }
        let blank: String = text.get(pair.clone())?.chars().map(blank_char).collect();
        let mut next = String::with_capacity(text.len());
        next.push_str(text.get(..pair.start)?);
        next.push_str(&blank);
        next.push_str(text.get(pair.end..)?);
        text = Zeroizing::new(next);
        last = Some(pair);
    }
    None
}

/// The same number of bytes of spaces, keeping newlines.
fn blank_char(c: char) -> String {
    if c == '\n' {
        "\n".into()
    } else {
        " ".repeat(c.len_utf8())
    }
}

// ---------------------------------------------------------------------------
// Conversion: raw structs to the typed Config. Each step reports its own
// problems and returns `None` when it reported any.

/// Conversion state: where errors go and what paths resolve against.
struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
    errors: Vec<ConfigError>,
    inline_secret: bool,
}

/// `prefix.key`, or `key` at top level.
fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Cx<'_> {
    fn err(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| {
            let before = self
                .text
                .as_bytes()
                .get(..s.start)
                .unwrap_or(self.text.as_bytes());
            before.iter().filter(|&&b| b == b'\n').count() + 1
        });
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        let daemon = self.daemon(raw.daemon.as_ref());
        let limits = self.limits(raw.limits.as_ref());
        let on_lockout = match &raw.on_lockout {
            Some(c) => self.command(c).map(Some),
            None => Some(None),
        };
        let (listeners, protocols) = self.listeners(raw.listen.as_deref().unwrap_or(&[]));
        let actions = self.actions(raw.action.as_deref().unwrap_or(&[]), protocols);
        let slots = actions.as_deref().map(build_slots);
        Some(Config {
            path: self.file.to_path_buf(),
            daemon: daemon?,
            limits: limits?,
            on_lockout: on_lockout?,
            listeners: listeners?,
            actions: actions?,
            slots: slots?,
            warnings: Vec::new(),
        })
    }

    // --- [daemon] -----------------------------------------------------------

    fn daemon(&mut self, raw: Option<&Spanned<RawDaemon>>) -> Option<Daemon> {
        let empty = RawDaemon::default();
        let d = raw.map_or(&empty, Spanned::get_ref);
        let user = self.run_as(
            "daemon",
            d.user.as_ref(),
            d.group.as_ref(),
            Some(defaults::USER),
        );
        // The network process exists to hold no privilege.
        if let (Some(Some(RunAs { uid: 0, name, .. })), Some(u)) = (&user, &d.user) {
            let name = name.clone();
            self.err(
                "daemon.user",
                Some(u.span()),
                format!(
                    "\"{name}\" is uid 0, but the network process must not run as root; use an unprivileged user such as \"nobody\""
                ),
            );
        }
        if let Some(Some(RunAs { gid: 0, uid, .. })) = &user {
            let (key, span, fix) = match &d.group {
                Some(g) => (
                    "daemon.group",
                    Some(g.span()),
                    "set group to an unprivileged group such as \"nogroup\", or remove it",
                ),
                None => (
                    "daemon.user",
                    d.user.as_ref().map(Spanned::span),
                    "set group = \"nogroup\" (or another unprivileged group)",
                ),
            };
            if *uid != 0 {
                self.err(
                    key,
                    span,
                    format!("the network process would run with group root (gid 0); {fix}"),
                );
            }
        }
        let state_dir = match &d.state_dir {
            Some(v) => self.path("daemon.state_dir", v),
            None => Some(PathBuf::from(defaults::STATE_DIR)),
        };
        if let (Some(dir), Some(v)) = (&state_dir, &d.state_dir) {
            if dir.exists() && !dir.is_dir() {
                self.err(
                    "daemon.state_dir",
                    Some(v.span()),
                    format!(
                        "{} exists but is not a directory; point state_dir at a directory (posternd creates it if missing)",
                        dir.display()
                    ),
                );
            } else if dir.is_dir() {
                // A missing one is created and checked at start-up.
                if let Err(e) = crate::monitor::state::StateDir::open(dir, false) {
                    self.err("daemon.state_dir", Some(v.span()), e.to_string());
                }
            }
        }
        let chroot_dir = match (&d.chroot, &state_dir) {
            (Some(v), _) => self.path("daemon.chroot", v),
            (None, Some(s)) => Some(s.join(defaults::CHROOT_SUBDIR)),
            (None, None) => None,
        };
        if let Some(dir) = &chroot_dir {
            if dir.exists() && !dir.is_dir() {
                let span = d
                    .chroot
                    .as_ref()
                    .or(d.state_dir.as_ref())
                    .map(Spanned::span);
                self.err(
                    "daemon.chroot",
                    span,
                    format!(
                        "{} exists but is not a directory; remove it or point chroot at an empty directory",
                        dir.display()
                    ),
                );
            }
        }
        let log = self.log(d);
        let shutdown_grace = self.duration_or(
            "daemon.shutdown_grace",
            d.shutdown_grace.as_ref(),
            defaults::SHUTDOWN_GRACE,
            true,
        );
        Some(Daemon {
            user: user??,
            state_dir: state_dir?,
            chroot_dir: chroot_dir?,
            log: log?,
            stop_on_exit: d
                .stop_on_exit
                .as_ref()
                .map_or(defaults::STOP_ON_EXIT, |v| *v.get_ref()),
            shutdown_grace: shutdown_grace?,
        })
    }

    fn log(&mut self, d: &RawDaemon) -> Option<LogTarget> {
        let target = d
            .log
            .as_ref()
            .map_or(defaults::LOG, |v| v.get_ref().as_str());
        match target {
            "stderr" => {
                if let Some(f) = &d.syslog_facility {
                    self.err(
                        "daemon.syslog_facility",
                        Some(f.span()),
                        "only applies with log = \"syslog\"; remove it or set log = \"syslog\"",
                    );
                    return None;
                }
                Some(LogTarget::Stderr)
            }
            "syslog" => {
                let name = d
                    .syslog_facility
                    .as_ref()
                    .map_or(defaults::SYSLOG_FACILITY, |v| v.get_ref().as_str());
                match facility_code(name) {
                    Some(facility) => Some(LogTarget::Syslog { facility }),
                    None => {
                        self.err(
                            "daemon.syslog_facility",
                            d.syslog_facility.as_ref().map(Spanned::span),
                            format!(
                                "unknown facility \"{name}\"; use auth, authpriv, daemon, user or local0 to local7"
                            ),
                        );
                        None
                    }
                }
            }
            other => {
                let other = other.to_owned();
                self.err(
                    "daemon.log",
                    d.log.as_ref().map(Spanned::span),
                    format!("unknown log target \"{other}\"; use \"stderr\" or \"syslog\""),
                );
                None
            }
        }
    }

    // --- [limits] -----------------------------------------------------------

    fn limits(&mut self, raw: Option<&Spanned<RawLimits>>) -> Option<Limits> {
        let empty = RawLimits::default();
        let l = raw.map_or(&empty, Spanned::get_ref);
        let handshake_timeout = self.duration_or(
            "limits.handshake_timeout",
            l.handshake_timeout.as_ref(),
            defaults::HANDSHAKE_TIMEOUT,
            false,
        );
        let max_handshakes = self.count_usize(
            "limits.max_handshakes",
            l.max_handshakes.as_ref(),
            defaults::MAX_HANDSHAKES,
            defaults::MAX_HANDSHAKES_LIMIT,
        );
        let rate_burst = self.count_u32(
            "limits.rate_burst",
            l.rate_burst.as_ref(),
            defaults::RATE_BURST,
            defaults::MAX_RATE,
        );
        let rate_per_minute = self.count_u32(
            "limits.rate_per_minute",
            l.rate_per_minute.as_ref(),
            defaults::RATE_PER_MINUTE,
            defaults::MAX_RATE,
        );
        let lockout_after = self.count_u32(
            "limits.lockout_after",
            l.lockout_after.as_ref(),
            defaults::LOCKOUT_AFTER,
            defaults::MAX_LOCKOUT_AFTER,
        );
        let lockout_duration = self.duration_or(
            "limits.lockout_duration",
            l.lockout_duration.as_ref(),
            defaults::LOCKOUT_DURATION,
            false,
        );
        let lockout_table = self.count_usize(
            "limits.lockout_table",
            l.lockout_table.as_ref(),
            defaults::LOCKOUT_TABLE,
            defaults::LOCKOUT_TABLE_LIMIT,
        );
        let verify_per_second = self.count_u32(
            "limits.verify_per_second",
            l.verify_per_second.as_ref(),
            defaults::VERIFY_PER_SECOND,
            defaults::MAX_RATE,
        );
        let mut exempt = Some(Vec::new());
        let nets = l
            .exempt
            .as_ref()
            .map_or(&[][..], |v| v.get_ref().as_slice());
        if nets.len() > defaults::MAX_EXEMPT {
            let span = l.exempt.as_ref().map(|v| v.span());
            self.err(
                "limits.exempt",
                span,
                format!(
                    "{} networks; at most {} are allowed: list wider networks",
                    nets.len(),
                    defaults::MAX_EXEMPT
                ),
            );
            exempt = None;
        }
        for net in nets {
            match parse_net(net.get_ref()) {
                Ok(n) => {
                    if let Some(list) = exempt.as_mut() {
                        list.push(n);
                    }
                }
                Err(message) => {
                    self.err("limits.exempt", Some(net.span()), message);
                    exempt = None;
                }
            }
        }
        Some(Limits {
            handshake_timeout: handshake_timeout?,
            max_handshakes: max_handshakes?,
            rate_burst: rate_burst?,
            rate_per_minute: rate_per_minute?,
            lockout_after: lockout_after?,
            lockout_duration: lockout_duration?,
            lockout_table: lockout_table?,
            verify_per_second: verify_per_second?,
            exempt: exempt?,
        })
    }

    // --- [on_lockout] -------------------------------------------------------

    fn command(&mut self, raw: &Spanned<RawCommand>) -> Option<Command> {
        let c = raw.get_ref();
        let argv = match &c.run {
            Some(v) => self.argv_with("on_lockout.run", v, ON_LOCKOUT_PLACEHOLDERS),
            None => {
                self.err(
                    "on_lockout.run",
                    Some(raw.span()),
                    "missing; [on_lockout] needs run = [\"/absolute/program\", \"{addr}\"]",
                );
                None
            }
        };
        let run_as = self.run_as("on_lockout", c.user.as_ref(), c.group.as_ref(), None);
        let timeout = self.duration_or(
            "on_lockout.timeout",
            c.timeout.as_ref(),
            defaults::ON_LOCKOUT_TIMEOUT,
            false,
        );
        Some(Command {
            argv: argv?,
            run_as: run_as?,
            timeout: timeout?,
            networks: c
                .networks
                .as_ref()
                .map_or(defaults::ON_LOCKOUT_NETWORKS, |v| *v.get_ref()),
        })
    }

    // --- [[listen]] ---------------------------------------------------------

    /// The listeners, and (postern-2 present, ostiary-4 present) when every
    /// protocol is known.
    fn listeners(
        &mut self,
        raw: &[Spanned<RawListen>],
    ) -> (Option<Vec<Listener>>, Option<(bool, bool)>) {
        if raw.is_empty() {
            self.err(
                "listen",
                None,
                "no [[listen]] table; add one, e.g. [[listen]] with address = \"0.0.0.0:7001\"",
            );
            return (None, None);
        }
        if let Some(extra) = raw.get(defaults::MAX_LISTENERS) {
            self.err(
                "listen",
                Some(extra.span()),
                format!(
                    "too many [[listen]] tables ({}); at most {} are allowed",
                    raw.len(),
                    defaults::MAX_LISTENERS
                ),
            );
            return (None, None);
        }
        let mut out = Some(Vec::new());
        let mut protocols = Some((false, false));
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in raw.iter().enumerate() {
            let prefix = format!("listen[{}]", i + 1);
            let r = l.get_ref();
            let protocol = match &r.protocol {
                None => parse_protocol(defaults::PROTOCOL),
                Some(p) => {
                    let parsed = parse_protocol(p.get_ref());
                    if parsed.is_none() {
                        self.err(
                            dotted(&prefix, "protocol"),
                            Some(p.span()),
                            format!(
                                "unknown protocol \"{}\"; use \"postern-2\" or \"ostiary-4\"",
                                p.get_ref()
                            ),
                        );
                    }
                    parsed
                }
            };
            match (protocol, protocols.as_mut()) {
                (Some(Protocol::Postern2), Some(p)) => p.0 = true,
                (Some(Protocol::Ostiary4), Some(p)) => p.1 = true,
                (None, _) => protocols = None,
                (Some(_), None) => {}
            }
            let address = match &r.address {
                None => {
                    self.err(
                        dotted(&prefix, "address"),
                        Some(l.span()),
                        "missing; write e.g. address = \"0.0.0.0:7001\"",
                    );
                    None
                }
                Some(a) => match a.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => {
                        // Port 0 binds a fresh port each time, so two of
                        // them never collide.
                        if addr.port() != 0 {
                            if let Some(first) = seen.insert(addr, i + 1) {
                                self.err(
                                    dotted(&prefix, "address"),
                                    Some(a.span()),
                                    format!(
                                        "duplicate address {addr} (also listen[{first}]); remove one of the two [[listen]] tables"
                                    ),
                                );
                                out = None;
                            }
                        }
                        Some(addr)
                    }
                    Err(_) => {
                        self.err(
                            dotted(&prefix, "address"),
                            Some(a.span()),
                            format!(
                                "\"{}\" is not an IP address and port; write e.g. \"0.0.0.0:7001\" or \"[::]:7001\" (host names are not resolved)",
                                a.get_ref()
                            ),
                        );
                        None
                    }
                },
            };
            match (address, protocol, out.as_mut()) {
                (Some(address), Some(protocol), Some(list)) => {
                    list.push(Listener { address, protocol })
                }
                _ => out = None,
            }
        }
        (out, protocols)
    }

    // --- [[action]] ---------------------------------------------------------

    fn actions(
        &mut self,
        raw: &[Spanned<RawAction>],
        protocols: Option<(bool, bool)>,
    ) -> Option<Vec<Action>> {
        if raw.is_empty() {
            self.err(
                "action",
                None,
                "no [[action]] table; add at least one, with a name, a secret and run, serve or builtin",
            );
            return None;
        }
        if let Some(extra) = raw.get(defaults::MAX_ACTIONS) {
            self.err(
                "action",
                Some(extra.span()),
                format!(
                    "too many [[action]] tables ({}); at most {} are allowed",
                    raw.len(),
                    defaults::MAX_ACTIONS
                ),
            );
            return None;
        }
        let mut ok = true;
        let mut out = Vec::with_capacity(raw.len());
        // (dotted key, its span) of each slot, in slot order.
        let mut secrets: SlotSpans = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, a) in raw.iter().enumerate() {
            let prefix = format!("action[{}]", i + 1);
            if let Some(n) = &a.get_ref().name {
                if let Some(first) = names.insert(n.get_ref().as_str(), i + 1) {
                    self.err(
                        dotted(&prefix, "name"),
                        Some(n.span()),
                        format!(
                            "duplicate action name \"{}\" (also action[{first}]); names must be unique",
                            n.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
            match self.action(&prefix, a, protocols) {
                Some((action, spans)) => {
                    secrets.extend(spans);
                    out.push(action);
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let slots = build_slots(&out);
        if slots.len() > defaults::MAX_KEY_SLOTS {
            self.err(
                "action",
                None,
                format!(
                    "{} keys, passwords and successors in all; at most {} are allowed (every reply is checked against each); remove some",
                    slots.len(),
                    defaults::MAX_KEY_SLOTS
                ),
            );
            return None;
        }
        // Two slots with one secret: the daemon could not tell which action
        // or which operator was meant. A pairwise check would be quadratic
        // in up to MAX_KEY_SLOTS slots, so each secret is digested under a
        // fresh random key, the digests are sorted, and neighbours with
        // equal digests are confirmed in constant time, as secrets are
        // compared everywhere. The digests are wiped after use.
        let secret_of = |s: &KeySlot| {
            let key = &out[s.action].keys[s.key];
            match (&key.next, s.role) {
                (Some(next), KeyRole::Next) => &next.secret,
                _ => &key.secret,
            }
        };
        let mut salt = Zeroizing::new([0u8; 32]);
        // Should the OS generator fail, the salt stays zero: the check is
        // as exact, only the digests are no longer secret while they live.
        let _ = getrandom::getrandom(&mut salt[..]);
        let prf = crate::mac::MacKey::new(&salt[..]);
        let mut digests: Vec<([u8; 32], usize)> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let secret = secret_of(s);
                let kind = [u8::from(secret.is_password())];
                (prf.mac(&[&kind, secret.expose()]), i)
            })
            .collect();
        digests.sort_unstable();
        let mut first = 0;
        for j in 1..digests.len() {
            if digests[j].0 != digests[first].0 {
                first = j;
                continue;
            }
            let (a, b) = (digests[first].1, digests[j].1);
            if !secret_of(&slots[a]).ct_eq(secret_of(&slots[b])) {
                continue;
            }
            let (earlier, _) = &secrets[a];
            let (key, span) = secrets[b].clone();
            let what = if secret_of(&slots[b]).is_password() {
                "password"
            } else {
                "key"
            };
            let message = format!(
                "same {what} as {earlier}; give every action, operator and successor its own {what}"
            );
            self.err(key, Some(span), message);
            ok = false;
        }
        for (d, _) in digests.iter_mut() {
            d.zeroize();
        }
        let closes = ok && self.check_closes(raw, &out);
        closes.then_some(out)
    }

    /// One action, with the dotted key and span of each of its slots'
    /// secrets, in slot order.
    fn action(
        &mut self,
        prefix: &str,
        raw: &Spanned<RawAction>,
        protocols: Option<(bool, bool)>,
    ) -> Option<(Action, SlotSpans)> {
        let a = raw.get_ref();
        let name = match &a.name {
            None => {
                self.err(
                    dotted(prefix, "name"),
                    Some(raw.span()),
                    "missing; every action needs a unique name",
                );
                None
            }
            Some(n) => {
                let s = n.get_ref();
                let valid = !s.is_empty()
                    && s.len() <= defaults::MAX_ACTION_NAME
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !valid {
                    self.err(
                        dotted(prefix, "name"),
                        Some(n.span()),
                        format!(
                            "invalid name \"{s}\"; use 1 to {} characters from A-Z a-z 0-9 . _ -",
                            defaults::MAX_ACTION_NAME
                        ),
                    );
                }
                valid.then(|| s.clone())
            }
        };
        let secret = self.keys(prefix, raw, protocols);
        let kind = self.kind(prefix, raw);
        // A builtin or a closing action runs no command of its own.
        let builtin = a.builtin.is_some() || a.closes.is_some();
        let run_as = if builtin {
            Some(None)
        } else {
            self.run_as(prefix, a.user.as_ref(), a.group.as_ref(), None)
        };
        let timeout = if builtin {
            Some(defaults::ACTION_TIMEOUT)
        } else {
            self.duration_or(
                &dotted(prefix, "timeout"),
                a.timeout.as_ref(),
                defaults::ACTION_TIMEOUT,
                false,
            )
        };
        let cooldown = if builtin {
            Some(defaults::COOLDOWN)
        } else {
            self.duration_or(
                &dotted(prefix, "cooldown"),
                a.cooldown.as_ref(),
                defaults::COOLDOWN,
                true,
            )
        };
        let bind_source = a
            .bind_source
            .as_ref()
            .map_or(defaults::BIND_SOURCE, |v| *v.get_ref());
        let password = secret
            .as_ref()
            .is_some_and(|(keys, _)| keys.iter().any(|k| k.secret.is_password()));
        if bind_source && password {
            self.err(
                dotted(prefix, "bind_source"),
                a.bind_source.as_ref().map(Spanned::span),
                "ostiary-4 carries no address, so bind_source cannot apply to a password; remove it",
            );
            return None;
        }
        if let (Some(ActionKind::Run { gate: Some(_), .. }), Some(t)) = (&kind, timeout) {
            if t > defaults::MAX_GATE_TIMEOUT {
                self.err(
                    dotted(prefix, "timeout"),
                    a.timeout.as_ref().map(Spanned::span),
                    format!(
                        "at most {}s for a gate with run: the trigger's ack waits for run, and must come within {}s (PROTOCOL.md, the ack deadline); lower it",
                        defaults::MAX_GATE_TIMEOUT.as_secs(),
                        crate::wire::ACK_DEADLINE_SECS
                    ),
                );
                return None;
            }
        }
        let (keys, spans) = secret?;
        let action = Action {
            name: name?,
            keys,
            kind: kind?,
            run_as: run_as?,
            timeout: timeout?,
            cooldown: cooldown?,
            single_instance: a
                .single_instance
                .as_ref()
                .map_or(defaults::SINGLE_INSTANCE, |v| *v.get_ref()),
            bind_source,
        };
        Some((action, spans))
    }

    /// The action's keys: its single secret, or its `[[action.key]]`
    /// tables (not both), with the dotted key and span of each slot.
    fn keys(
        &mut self,
        prefix: &str,
        raw: &Spanned<RawAction>,
        protocols: Option<(bool, bool)>,
    ) -> Option<(Vec<ActionKey>, SlotSpans)> {
        let a = raw.get_ref();
        let Some(named) = a.key.as_ref().and_then(|k| match k.get_ref() {
            RawKeyField::Named(v) => Some((v, k.span())),
            RawKeyField::Inline(_) => None,
        }) else {
            let (secret, which, span) = self.secret(prefix, raw, protocols)?;
            let key = ActionKey {
                name: None,
                secret,
                next: None,
            };
            return Some((vec![key], vec![(dotted(prefix, which), span)]));
        };
        let (named, span) = named;
        let single = [
            ("key_file", a.key_file.as_ref().map(Spanned::span)),
            ("password", a.password.as_ref().map(Spanned::span)),
            ("password_file", a.password_file.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .find_map(|(k, s)| s.map(|s| (k, s)));
        if let Some((which, at)) = single {
            self.err(
                dotted(prefix, which),
                Some(at),
                format!(
                    "{which} and [[action.key]] tables are both set; an action has one secret or named keys, not both: move it into a [[action.key]] table with a name"
                ),
            );
            return None;
        }
        if named.is_empty() {
            self.err(
                dotted(prefix, "key"),
                Some(span),
                "an empty list of keys; add [[action.key]] tables with a name and a key",
            );
            return None;
        }
        if let Some(extra) = named.get(defaults::MAX_KEYS_PER_ACTION) {
            self.err(
                dotted(prefix, "key"),
                Some(extra.span()),
                format!(
                    "too many [[action.key]] tables ({}); at most {} per action are allowed",
                    named.len(),
                    defaults::MAX_KEYS_PER_ACTION
                ),
            );
            return None;
        }
        if let Some((false, _)) = protocols {
            self.err(
                dotted(prefix, "key"),
                Some(span),
                "unreachable action: keys are used by postern-2, but no [[listen]] has protocol = \"postern-2\"; add one",
            );
            return None;
        }
        let mut ok = true;
        let mut keys = Vec::with_capacity(named.len());
        let mut spans = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, k) in named.iter().enumerate() {
            let at = format!("{prefix}.key[{}]", i + 1);
            if let Some(n) = &k.get_ref().name {
                if let Some(first) = names.insert(n.get_ref().as_str(), i + 1) {
                    self.err(
                        dotted(&at, "name"),
                        Some(n.span()),
                        format!(
                            "duplicate key name \"{}\" (also {prefix}.key[{first}]); names must be unique within an action",
                            n.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
            match self.named_key(&at, k) {
                Some((key, s)) => {
                    keys.push(key);
                    spans.extend(s);
                }
                None => ok = false,
            }
        }
        ok.then_some((keys, spans))
    }

    /// One `[[action.key]]` table, with the dotted key and span of its
    /// secret and of its successor's.
    fn named_key(&mut self, at: &str, raw: &Spanned<RawKey>) -> Option<(ActionKey, SlotSpans)> {
        let k = raw.get_ref();
        let name = match &k.name {
            None => {
                self.err(
                    dotted(at, "name"),
                    Some(raw.span()),
                    "missing; every key needs a name, logged as by=NAME when it matches",
                );
                None
            }
            Some(n) => {
                let s = n.get_ref();
                let valid = !s.is_empty()
                    && s.len() <= defaults::MAX_KEY_NAME
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !valid {
                    self.err(
                        dotted(at, "name"),
                        Some(n.span()),
                        format!(
                            "invalid key name \"{s}\"; use 1 to {} characters from A-Z a-z 0-9 . _ -",
                            defaults::MAX_KEY_NAME
                        ),
                    );
                }
                valid.then(|| s.clone())
            }
        };
        let secret = self.key_pair(
            at,
            "key",
            k.key.as_ref(),
            k.key_file.as_ref(),
            raw.span(),
            true,
        );
        let next = self.key_pair(
            at,
            "next_key",
            k.next_key.as_ref(),
            k.next_key_file.as_ref(),
            raw.span(),
            false,
        );
        let until = match (&k.overlap_until, &next) {
            (Some(u), Some(Some(_))) => match parse_utc(u.get_ref()) {
                Ok(t) => Some(Some(t)),
                Err(why) => {
                    self.err(dotted(at, "overlap_until"), Some(u.span()), why);
                    None
                }
            },
            (Some(u), Some(None)) => {
                self.err(
                    dotted(at, "overlap_until"),
                    Some(u.span()),
                    "an overlap window without a successor; set next_key_file (or next_key), or remove overlap_until",
                );
                None
            }
            (None, Some(Some(_))) => {
                self.err(
                    at,
                    Some(raw.span()),
                    "a successor needs overlap_until: the old key is accepted until then (RFC 3339 in UTC, e.g. \"2026-12-15T00:00:00Z\")",
                );
                None
            }
            (_, _) => Some(None),
        };
        let (secret, which, span) = secret??;
        let mut spans = vec![(dotted(at, which), span)];
        let next = match (next?, until?) {
            (Some((next, which, span)), Some(overlap_until)) => {
                spans.push((dotted(at, which), span));
                Some(Successor {
                    secret: ActionSecret::Key(next),
                    overlap_until,
                })
            }
            _ => None,
        };
        Some((
            ActionKey {
                name: Some(name?),
                secret: ActionSecret::Key(secret),
                next,
            },
            spans,
        ))
    }

    /// A postern-2 key given inline (`NAME`) or in a file (`NAME_file`):
    /// exactly one when `required`, at most one otherwise. `Some(None)`:
    /// neither given and not required; `None`: an error was reported.
    #[allow(clippy::type_complexity)]
    fn key_pair(
        &mut self,
        at: &str,
        name: &'static str,
        inline: Option<&Spanned<SecretText>>,
        file: Option<&Spanned<String>>,
        table: Range<usize>,
        required: bool,
    ) -> Option<Option<(Key, &'static str, Range<usize>)>> {
        let file_name: &'static str = if name == "key" {
            "key_file"
        } else {
            "next_key_file"
        };
        match (inline, file) {
            (Some(_), Some(f)) => {
                self.err(
                    dotted(at, file_name),
                    Some(f.span()),
                    format!("{name} and {file_name} are both set; keep exactly one"),
                );
                None
            }
            (None, None) if required => {
                self.err(
                    at,
                    Some(table),
                    format!("no key; set exactly one of {file_name} or {name}"),
                );
                None
            }
            (None, None) => Some(None),
            (Some(k), None) => {
                self.inline_secret = true;
                match Key::from_base64(&k.get_ref().0) {
                    Ok(key) => Some(Some((key, name, k.span()))),
                    Err(e) => {
                        self.err(dotted(at, name), Some(k.span()), e.to_string());
                        None
                    }
                }
            }
            (None, Some(f)) => {
                let key = dotted(at, file_name);
                let bytes = self.secret_file(&key, f, "key", defaults::MAX_KEY_FILE_LEN)?;
                let parsed = std::str::from_utf8(&bytes)
                    .map_err(|_| crate::secret::KeyError::NotBase64)
                    .and_then(Key::from_base64);
                match parsed {
                    Ok(k) => Some(Some((k, file_name, f.span()))),
                    Err(e) => {
                        let path = self.base.join(f.get_ref());
                        self.err(key, Some(f.span()), format!("{}: {e}", path.display()));
                        None
                    }
                }
            }
        }
    }

    /// The action's secret, checked against the listeners' protocols.
    fn secret(
        &mut self,
        prefix: &str,
        raw: &Spanned<RawAction>,
        protocols: Option<(bool, bool)>,
    ) -> Option<(ActionSecret, &'static str, Range<usize>)> {
        let a = raw.get_ref();
        let inline_key = a.key.as_ref().and_then(|k| match k.get_ref() {
            RawKeyField::Inline(t) => Some((t, k.span())),
            RawKeyField::Named(_) => None,
        });
        let given: Vec<(&'static str, Range<usize>)> = [
            ("key", inline_key.as_ref().map(|(_, s)| s.clone())),
            ("key_file", a.key_file.as_ref().map(Spanned::span)),
            ("password", a.password.as_ref().map(Spanned::span)),
            ("password_file", a.password_file.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .collect();
        let (which, span) = match given.as_slice() {
            [] => {
                self.err(
                    prefix,
                    Some(raw.span()),
                    "no secret; set exactly one of key, key_file (postern-2) or password, password_file (ostiary-4), or add [[action.key]] tables",
                );
                return None;
            }
            [one] => one.clone(),
            [first, second, ..] => {
                self.err(
                    dotted(prefix, second.0),
                    Some(second.1.clone()),
                    format!(
                        "{} and {} are both set; keep exactly one of key, key_file, password or password_file",
                        first.0, second.0
                    ),
                );
                return None;
            }
        };
        let key = dotted(prefix, which);
        let secret = if let Some((k, _)) = &inline_key {
            self.inline_secret = true;
            match Key::from_base64(&k.0) {
                Ok(key) => ActionSecret::Key(key),
                Err(e) => {
                    self.err(key, Some(span), e.to_string());
                    return None;
                }
            }
        } else if let Some(f) = &a.key_file {
            let bytes = self.secret_file(&key, f, "key", defaults::MAX_KEY_FILE_LEN)?;
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|_| crate::secret::KeyError::NotBase64)
                .and_then(Key::from_base64);
            match parsed {
                Ok(k) => ActionSecret::Key(k),
                Err(e) => {
                    let path = self.base.join(f.get_ref());
                    self.err(key, Some(span), format!("{}: {e}", path.display()));
                    return None;
                }
            }
        } else if let Some(p) = &a.password {
            self.inline_secret = true;
            let bytes = p.get_ref().0.as_bytes();
            if let Some(problem) = password_problem(bytes) {
                self.err(key, Some(span), problem);
                return None;
            }
            ActionSecret::Password(Password::new(bytes.to_vec()))
        } else if let Some(f) = &a.password_file {
            let bytes = self.secret_file(&key, f, "password", defaults::MAX_PASSWORD_FILE_LEN)?;
            let mut pw: &[u8] = &bytes;
            pw = pw.strip_suffix(b"\n").unwrap_or(pw);
            pw = pw.strip_suffix(b"\r").unwrap_or(pw);
            if let Some(problem) = password_problem(pw) {
                let path = self.base.join(f.get_ref());
                self.err(key, Some(span), format!("{}: {problem}", path.display()));
                return None;
            }
            ActionSecret::Password(Password::new(pw.to_vec()))
        } else {
            return None;
        };
        if let Some((postern, ostiary)) = protocols {
            let unreachable = match secret {
                ActionSecret::Key(_) if !postern => Some(
                    "unreachable action: a key is used by postern-2, but no [[listen]] has protocol = \"postern-2\"; add one or use a password",
                ),
                ActionSecret::Password(_) if !ostiary => Some(
                    "unreachable action: a password is used by ostiary-4, but no [[listen]] has protocol = \"ostiary-4\"; add one or use a key",
                ),
                _ => None,
            };
            if let Some(message) = unreachable {
                self.err(key, Some(span), message);
                return None;
            }
        }
        Some((secret, which, span))
    }

    /// Reads a secret file after checking what it is and who can read it.
    fn secret_file(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        what: &str,
        max_len: u64,
    ) -> Option<Zeroizing<Vec<u8>>> {
        let path = self.path(key, v)?;
        let shown = path.display();
        let name = key.rsplit('.').next().unwrap_or(key);
        // Opened once, never through a link, never waiting (a FIFO); what
        // is checked is the open file itself, and it is read from there.
        let problem = match open_secret(&path) {
            Err(nix::errno::Errno::ENOENT) => format!(
                "{what} file {shown} does not exist; create it (mode 600) or fix the path"
            ),
            Err(nix::errno::Errno::ELOOP) => format!(
                "{shown} is a symbolic link; point {name} at the file itself"
            ),
            Err(e) => format!(
                "cannot open {what} file {shown}: {}",
                e.desc().to_lowercase()
            ),
            Ok((_, st)) if st.st_mode & 0o170000 == 0o040000 => {
                format!("{shown} is a directory; point {name} at a file")
            }
            Ok((_, st)) if st.st_mode & 0o170000 != 0o100000 => {
                format!("{shown} is not a regular file; point {name} at a file")
            }
            Ok((_, st)) if st.st_uid != 0 && st.st_uid != nix::unistd::geteuid().as_raw() => format!(
                "{what} file {shown} is owned by uid {}, who could change it; run `chown root {shown}`",
                st.st_uid
            ),
            Ok((_, st)) if st.st_mode & 0o077 != 0 => format!(
                "{what} file {shown} is accessible by group or others (mode {:03o}); run `chmod 600 {shown}`",
                st.st_mode & 0o777
            ),
            Ok((_, st)) if st.st_size as u64 > max_len => format!(
                "{what} file {shown} is too large ({} bytes, at most {max_len}); it should hold one {what}",
                st.st_size
            ),
            // The size above can lie (files in /proc report 0), so the
            // read itself is bounded too.
            Ok((file, _)) => match read_bounded_from(file, max_len) {
                Ok(bytes) if bytes.len() as u64 <= max_len => return Some(bytes),
                Ok(_) => format!(
                    "{what} file {shown} is too large (more than {max_len} bytes); it should hold one {what}"
                ),
                Err(e) => format!("cannot read {what} file {shown}: {}", io_reason(&e)),
            },
        };
        self.err(key, Some(v.span()), problem);
        None
    }

    /// What the action does: exactly one of run, serve and builtin.
    fn kind(&mut self, prefix: &str, raw: &Spanned<RawAction>) -> Option<ActionKind> {
        let a = raw.get_ref();
        let modes: Vec<(&str, Range<usize>)> = [
            ("run", a.run.as_ref().map(Spanned::span)),
            ("serve", a.serve.as_ref().map(Spanned::span)),
            ("builtin", a.builtin.as_ref().map(Spanned::span)),
            ("closes", a.closes.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .collect();
        match modes.as_slice() {
            [] => {
                self.err(
                    prefix,
                    Some(raw.span()),
                    "nothing to do; set exactly one of run, serve, builtin or closes",
                );
                return None;
            }
            [_] => {}
            [first, second, ..] => {
                self.err(
                    dotted(prefix, second.0),
                    Some(second.1.clone()),
                    format!(
                        "{} and {} are both set; an action does one thing, so keep exactly one of run, serve, builtin or closes",
                        first.0, second.0
                    ),
                );
                return None;
            }
        }
        if let Some(b) = &a.builtin {
            return self.builtin(prefix, a, b);
        }
        if let Some(g) = &a.closes {
            return self.closes(prefix, a, g);
        }
        if let Some(serve) = &a.serve {
            let argv = self.argv(&dotted(prefix, "serve"), serve);
            if let Some(stop) = &a.stop {
                self.err(
                    dotted(prefix, "stop"),
                    Some(stop.span()),
                    "stop only applies to run; a served program is stopped by signalling it, so remove stop",
                );
                return None;
            }
            if let Some(all) = &a.stop_all {
                self.err(
                    dotted(prefix, "stop_all"),
                    Some(all.span()),
                    "stop_all only applies to run with stop; a served program is stopped by signalling it, so remove stop_all",
                );
                return None;
            }
            let gate = self.gate(prefix, a, "serve", serve.span());
            return Some(ActionKind::Serve {
                serve: argv?,
                gate: gate?,
            });
        }
        let Some(run) = &a.run else { return None };
        let argv = self.argv(&dotted(prefix, "run"), run);
        let gate = match &a.stop {
            Some(stop) => {
                let stop_argv = self.argv(&dotted(prefix, "stop"), stop);
                let gate = self.gate(prefix, a, "stop", stop.span());
                let stop_all = self.stop_all(prefix, a, stop);
                let mut gate = gate?;
                gate.stop_all = stop_all?;
                Some(Some((stop_argv?, gate)))
            }
            None => self.no_gate(prefix, a).then_some(None),
        };
        Some(ActionKind::Run {
            run: argv?,
            gate: gate?,
        })
    }

    /// `builtin = "shutdown"`, which takes no command keys.
    fn builtin(&mut self, prefix: &str, a: &RawAction, b: &Spanned<String>) -> Option<ActionKind> {
        let mut ok = true;
        if b.get_ref() != "shutdown" {
            self.err(
                dotted(prefix, "builtin"),
                Some(b.span()),
                format!(
                    "unknown builtin \"{}\"; the only builtin is \"shutdown\"",
                    b.get_ref()
                ),
            );
            ok = false;
        }
        let bare = self.no_command_keys(prefix, a, "a builtin action");
        (ok && bare).then_some(ActionKind::Shutdown)
    }

    /// `closes = "NAME"`: a closing action, which takes no command keys.
    /// That NAME is a gate of this config is checked once every action is
    /// built ([`Cx::check_closes`]).
    fn closes(&mut self, prefix: &str, a: &RawAction, g: &Spanned<String>) -> Option<ActionKind> {
        let bare = self.no_command_keys(prefix, a, "a closing action (it runs its gate's stop)");
        bare.then(|| ActionKind::Close {
            gate: g.get_ref().clone(),
        })
    }

    /// Every key that configures commands or a gate is refused for an
    /// action that has none (`what`). True when none is set.
    fn no_command_keys(&mut self, prefix: &str, a: &RawAction, what: &str) -> bool {
        let mut ok = true;
        let extra = [
            ("stop", a.stop.as_ref().map(Spanned::span)),
            ("stop_all", a.stop_all.as_ref().map(Spanned::span)),
            ("ttl", a.ttl.as_ref().map(Spanned::span)),
            ("extend", a.extend.as_ref().map(Spanned::span)),
            ("max_open", a.max_open.as_ref().map(Spanned::span)),
            ("hold_while", a.hold_while.as_ref().map(Spanned::span)),
            ("hold_interval", a.hold_interval.as_ref().map(Spanned::span)),
            ("user", a.user.as_ref().map(Spanned::span)),
            ("group", a.group.as_ref().map(Spanned::span)),
            ("timeout", a.timeout.as_ref().map(Spanned::span)),
            ("cooldown", a.cooldown.as_ref().map(Spanned::span)),
            (
                "single_instance",
                a.single_instance.as_ref().map(Spanned::span),
            ),
            ("per_address", a.per_address.as_ref().map(Spanned::span)),
            ("max_addresses", a.max_addresses.as_ref().map(Spanned::span)),
        ];
        for (k, span) in extra {
            if let Some(span) = span {
                self.err(
                    dotted(prefix, k),
                    Some(span),
                    format!("{k} has no meaning for {what}; remove it"),
                );
                ok = false;
            }
        }
        ok
    }

    /// Each closing action names a gate action of this config, and not
    /// another closing action or a builtin.
    fn check_closes(&mut self, raw: &[Spanned<RawAction>], built: &[Action]) -> bool {
        let mut ok = true;
        for (i, a) in raw.iter().enumerate() {
            let Some(g) = &a.get_ref().closes else {
                continue;
            };
            let target = built.iter().find(|b| b.name == *g.get_ref());
            let problem = match target.map(|t| &t.kind) {
                None => Some(format!(
                    "no action named \"{}\"; closes names the gate action it closes",
                    g.get_ref()
                )),
                Some(ActionKind::Run { gate: Some(_), .. } | ActionKind::Serve { .. }) => None,
                Some(_) => Some(format!(
                    "\"{}\" is not a gate (run with stop, or serve), so there is nothing to close; name a gate action",
                    g.get_ref()
                )),
            };
            if let Some(p) = problem {
                self.err(format!("action[{}].closes", i + 1), Some(g.span()), p);
                ok = false;
            }
        }
        ok
    }

    /// A run action without stop: refuses every gate key. True when none
    /// is set.
    fn no_gate(&mut self, prefix: &str, a: &RawAction) -> bool {
        let mut ok = true;
        if let Some(ttl) = &a.ttl {
            self.err(
                dotted(prefix, "ttl"),
                Some(ttl.span()),
                "ttl needs stop or serve: nothing would close the gate; add stop = [...] or remove ttl",
            );
            ok = false;
        }
        if let Some(all) = &a.stop_all {
            self.err(
                dotted(prefix, "stop_all"),
                Some(all.span()),
                "stop_all only applies to a gate; add stop and ttl, or remove stop_all",
            );
            ok = false;
        }
        let gate_keys = [
            ("extend", a.extend.as_ref().map(Spanned::span)),
            ("max_open", a.max_open.as_ref().map(Spanned::span)),
            ("hold_while", a.hold_while.as_ref().map(Spanned::span)),
            ("hold_interval", a.hold_interval.as_ref().map(Spanned::span)),
            ("per_address", a.per_address.as_ref().map(Spanned::span)),
            ("max_addresses", a.max_addresses.as_ref().map(Spanned::span)),
        ];
        for (k, span) in gate_keys {
            if let (Some(span), true) = (span, a.ttl.is_none()) {
                self.err(
                    dotted(prefix, k),
                    Some(span),
                    format!("{k} only applies to a gate; add stop and ttl, or remove {k}"),
                );
                ok = false;
            }
        }
        ok
    }

    /// `stop_all` of a run/stop gate: required when `stop` uses `{addr}`
    /// (a gate whose record is unreadable has no address to stop), and
    /// refused to use `{addr}` itself.
    fn stop_all(&mut self, prefix: &str, a: &RawAction, stop: &RawArgv) -> Option<Option<Argv>> {
        let uses_addr = |v: &RawArgv| v.get_ref().iter().any(|x| x.get_ref().contains("{addr}"));
        match &a.stop_all {
            Some(all) if uses_addr(all) => {
                self.err(
                    dotted(prefix, "stop_all"),
                    Some(all.span()),
                    "stop_all closes the gate for every address, so it cannot use {addr}; remove {addr} from it",
                );
                None
            }
            Some(all) => self.argv(&dotted(prefix, "stop_all"), all).map(Some),
            None if uses_addr(stop) => {
                self.err(
                    dotted(prefix, "stop"),
                    Some(stop.span()),
                    "stop uses {addr}, but when a gate's record in the state file cannot be read its address is unknown; add stop_all, a command that closes the gate for every address (for example, flushing the nftables set)",
                );
                None
            }
            None => Some(None),
        }
    }

    /// The gate of a serve action or of a run action with stop.
    fn gate(
        &mut self,
        prefix: &str,
        a: &RawAction,
        opener: &str,
        opener_span: Range<usize>,
    ) -> Option<Gate> {
        let Some(raw_ttl) = &a.ttl else {
            self.err(
                dotted(prefix, "ttl"),
                Some(opener_span),
                format!(
                    "missing; {opener} needs ttl, how long the gate stays open, e.g. ttl = \"30m\""
                ),
            );
            return None;
        };
        let ttl = self.duration(&dotted(prefix, "ttl"), raw_ttl, false);
        let extend = a.extend.as_ref().map_or(defaults::EXTEND, |v| *v.get_ref());
        let hold_while = match &a.hold_while {
            Some(v) => self.argv(&dotted(prefix, "hold_while"), v).map(Some),
            None => Some(None),
        };
        let hold_interval = self.duration_or(
            &dotted(prefix, "hold_interval"),
            a.hold_interval.as_ref(),
            defaults::HOLD_INTERVAL,
            false,
        );
        let ttl = ttl?;
        let max_open = match &a.max_open {
            Some(v) => {
                let m = self.duration(&dotted(prefix, "max_open"), v, false)?;
                if m < ttl {
                    self.err(
                        dotted(prefix, "max_open"),
                        Some(v.span()),
                        "shorter than ttl, so the gate could never stay open for its ttl; raise max_open or lower ttl",
                    );
                    return None;
                }
                m
            }
            None if extend || a.hold_while.is_some() => ttl
                .checked_mul(defaults::MAX_OPEN_FACTOR)
                .map_or(defaults::MAX_DURATION, |d| d.min(defaults::MAX_DURATION)),
            None => ttl,
        };
        let per_address = self.per_address(prefix, a, opener);
        Some(Gate {
            ttl,
            extend,
            max_open,
            hold_while: hold_while?,
            hold_interval: hold_interval?,
            stop_all: None,
            per_address: per_address?,
        })
    }

    /// `per_address` and `max_addresses` of a gate. A per-address gate
    /// opens and closes one address at a time, so its opener (`run` or
    /// `serve`) and its `stop` must use `{addr}`.
    fn per_address(
        &mut self,
        prefix: &str,
        a: &RawAction,
        opener: &str,
    ) -> Option<Option<NonZeroUsize>> {
        let on = a
            .per_address
            .as_ref()
            .map_or(defaults::PER_ADDRESS, |v| *v.get_ref());
        if !on {
            if let Some(m) = &a.max_addresses {
                self.err(
                    dotted(prefix, "max_addresses"),
                    Some(m.span()),
                    "max_addresses only applies with per_address = true; set it or remove max_addresses",
                );
                return None;
            }
            return Some(None);
        }
        let uses_addr = |v: &RawArgv| v.get_ref().iter().any(|x| x.get_ref().contains("{addr}"));
        let mut ok = true;
        let commands = [
            ("run", a.run.as_ref()),
            ("serve", a.serve.as_ref()),
            ("stop", a.stop.as_ref()),
        ];
        for (k, argv) in commands {
            let Some(argv) = argv else { continue };
            if k == "run" && opener == "serve" {
                continue;
            }
            if !uses_addr(argv) {
                self.err(
                    dotted(prefix, k),
                    Some(argv.span()),
                    format!("per_address opens and closes one address at a time, but {k} does not use {{addr}}; add {{addr}} to {k}, or remove per_address"),
                );
                ok = false;
            }
        }
        let max = self.count_usize(
            &dotted(prefix, "max_addresses"),
            a.max_addresses.as_ref(),
            defaults::MAX_ADDRESSES,
            defaults::MAX_ADDRESSES_LIMIT,
        );
        ok.then_some(Some(max?))
    }

    // --- Shared value checks ------------------------------------------------

    /// A user (or `default_user`) and optional group. `Some(None)`: no
    /// user given and no default.
    fn run_as(
        &mut self,
        prefix: &str,
        user: Option<&Spanned<String>>,
        group: Option<&Spanned<String>>,
        default_user: Option<&str>,
    ) -> Option<Option<RunAs>> {
        let (name, span) = match (user, default_user) {
            (Some(u), _) => (u.get_ref().clone(), Some(u.span())),
            (None, Some(d)) => (d.to_owned(), None),
            (None, None) => {
                if let Some(g) = group {
                    self.err(
                        dotted(prefix, "group"),
                        Some(g.span()),
                        "group needs user; add user = \"...\" or remove group",
                    );
                    return None;
                }
                return Some(None);
            }
        };
        let found = match User::from_name(&name) {
            Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
            Ok(None) => {
                self.err(
                    dotted(prefix, "user"),
                    span,
                    format!("unknown user \"{name}\"; create it or name an existing user"),
                );
                None
            }
            Err(e) => {
                self.err(
                    dotted(prefix, "user"),
                    span,
                    format!(
                        "cannot look up user \"{name}\": {}",
                        e.desc().to_lowercase()
                    ),
                );
                None
            }
        };
        let gid = match group {
            None => found.map(|(_, gid)| gid),
            Some(g) => match Group::from_name(g.get_ref()) {
                Ok(Some(group)) => Some(group.gid.as_raw()),
                Ok(None) => {
                    self.err(
                        dotted(prefix, "group"),
                        Some(g.span()),
                        format!(
                            "unknown group \"{}\"; create it or name an existing group",
                            g.get_ref()
                        ),
                    );
                    None
                }
                Err(e) => {
                    self.err(
                        dotted(prefix, "group"),
                        Some(g.span()),
                        format!(
                            "cannot look up group \"{}\": {}",
                            g.get_ref(),
                            e.desc().to_lowercase()
                        ),
                    );
                    None
                }
            },
        };
        let (uid, _) = found?;
        Some(Some(RunAs {
            name,
            uid,
            gid: gid?,
        }))
    }

    /// An absolute path; relative ones resolve against the config's
    /// directory.
    fn path(&mut self, key: &str, v: &Spanned<String>) -> Option<PathBuf> {
        let s = v.get_ref();
        if s.is_empty() || s.contains('\0') {
            self.err(
                key,
                Some(v.span()),
                "not a usable path; give an absolute path or one relative to this file",
            );
            return None;
        }
        Some(self.base.join(s))
    }

    /// An argv whose program exists and is executable.
    fn argv(&mut self, key: &str, v: &RawArgv) -> Option<Argv> {
        self.argv_with(key, v, PLACEHOLDERS)
    }

    /// An argv whose placeholders are among `allowed`.
    fn argv_with(&mut self, key: &str, v: &RawArgv, allowed: &[&str]) -> Option<Argv> {
        let items = v.get_ref();
        let Some(program) = items.first() else {
            self.err(
                key,
                Some(v.span()),
                "empty command; give the program and its arguments, e.g. [\"/usr/bin/systemctl\", \"start\", \"ssh\"]",
            );
            return None;
        };
        if items.len() > defaults::MAX_ARGV {
            self.err(
                key,
                Some(v.span()),
                format!(
                    "{} elements; a command has at most {}",
                    items.len(),
                    defaults::MAX_ARGV
                ),
            );
            return None;
        }
        let mut ok = true;
        for item in items {
            let s = item.get_ref();
            if s.contains('\0') {
                self.err(
                    key,
                    Some(item.span()),
                    "contains a NUL byte, which no program can receive; remove it",
                );
                ok = false;
            } else if let Some(word) = unknown_placeholder(s, allowed) {
                let word = word.to_owned();
                self.err(
                    key,
                    Some(item.span()),
                    format!("unknown placeholder {{{word}}}; use {}", either(allowed)),
                );
                ok = false;
            }
        }
        let p = program.get_ref();
        let problem = if !Path::new(p).is_absolute() {
            let name = Path::new(p)
                .file_name()
                .map_or(p.as_str(), |n| n.to_str().unwrap_or(p));
            Some(format!(
                "program \"{p}\" must be an absolute path (there is no PATH search), e.g. \"/usr/bin/{name}\""
            ))
        } else {
            match std::fs::metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                    "program {p} does not exist; install it or fix the path"
                )),
                Err(e) => Some(format!("cannot inspect program {p}: {}", io_reason(&e))),
                Ok(m) if m.is_dir() => Some(format!(
                    "program {p} is a directory; name the executable file"
                )),
                Ok(m) if m.permissions().mode() & 0o111 == 0 => Some(format!(
                    "program {p} is not executable; run `chmod +x {p}` or fix the path"
                )),
                Ok(_) => None,
            }
        };
        if let Some(problem) = problem {
            self.err(key, Some(program.span()), problem);
            ok = false;
        }
        ok.then(|| Argv(items.iter().map(|s| s.get_ref().clone()).collect()))
    }

    fn duration(
        &mut self,
        key: &str,
        v: &Spanned<RawDuration>,
        allow_zero: bool,
    ) -> Option<Duration> {
        let parsed = match v.get_ref() {
            RawDuration::Integer(n) if *n >= 0 => Err(format!(
                "a duration needs a unit; write \"{n}s\" for seconds (or ms, m, h, d)"
            )),
            RawDuration::Integer(_) => {
                Err("a duration cannot be negative; write e.g. \"30s\"".into())
            }
            RawDuration::Text(s) => parse_duration(s),
        };
        let problem = match parsed {
            Ok(d) if d.is_zero() && !allow_zero => {
                "must be longer than zero; write e.g. \"30s\"".into()
            }
            Ok(d) => return Some(d),
            Err(problem) => problem,
        };
        self.err(key, Some(v.span()), problem);
        None
    }

    fn duration_or(
        &mut self,
        key: &str,
        v: Option<&Spanned<RawDuration>>,
        default: Duration,
        allow_zero: bool,
    ) -> Option<Duration> {
        match v {
            Some(v) => self.duration(key, v, allow_zero),
            None => Some(default),
        }
    }

    /// A count in `1..=max`.
    fn count(&mut self, key: &str, v: &Spanned<i64>, max: u64) -> Option<u64> {
        let n = *v.get_ref();
        match u64::try_from(n) {
            Ok(c) if (1..=max).contains(&c) => Some(c),
            _ => {
                self.err(
                    key,
                    Some(v.span()),
                    format!("must be between 1 and {max}, not {n}"),
                );
                None
            }
        }
    }

    fn count_usize(
        &mut self,
        key: &str,
        v: Option<&Spanned<i64>>,
        default: usize,
        max: usize,
    ) -> Option<NonZeroUsize> {
        let n = match v {
            Some(v) => {
                usize::try_from(self.count(key, v, u64::try_from(max).unwrap_or(u64::MAX))?).ok()?
            }
            None => default,
        };
        NonZeroUsize::new(n)
    }

    fn count_u32(
        &mut self,
        key: &str,
        v: Option<&Spanned<i64>>,
        default: u32,
        max: u32,
    ) -> Option<NonZeroU32> {
        let n = match v {
            Some(v) => u32::try_from(self.count(key, v, u64::from(max))?).ok()?,
            None => default,
        };
        NonZeroU32::new(n)
    }
}

/// Reads at most `max_len + 1` bytes of `path`, so a caller can tell a
/// file over the bound without ever holding more than that.
fn read_bounded(path: &Path, max_len: u64) -> std::io::Result<Zeroizing<Vec<u8>>> {
    read_bounded_from(std::fs::File::open(path)?, max_len)
}

/// [`read_bounded`] from an open file.
fn read_bounded_from(file: std::fs::File, max_len: u64) -> std::io::Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    // Room for the whole bound up front: the buffer never reallocates, so
    // no copy of the secret is left behind unzeroized.
    let cap = usize::try_from(max_len.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes = Zeroizing::new(Vec::with_capacity(cap));
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens a secret file with `O_NOFOLLOW` and `O_NONBLOCK` and returns it
/// with its status, taken from the open descriptor.
fn open_secret(path: &Path) -> nix::Result<(std::fs::File, nix::sys::stat::FileStat)> {
    use nix::fcntl::OFlag;
    let raw = nix::fcntl::open(
        path,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let fd = crate::sys::adopt_fd(raw).ok_or(nix::errno::Errno::EBADF)?;
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok((std::fs::File::from(fd), st))
}

// ---------------------------------------------------------------------------
// Value parsers without context.

/// Parses an RFC 3339 instant in UTC with whole seconds:
/// `YYYY-MM-DDTHH:MM:SSZ` (or `+00:00` for `Z`).
fn parse_utc(s: &str) -> Result<SystemTime, String> {
    let fix = "write it in UTC as YYYY-MM-DDTHH:MM:SSZ, e.g. \"2026-12-15T00:00:00Z\"";
    let body = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .ok_or_else(|| format!("\"{s}\" is not in UTC; {fix}"))?;
    let b = body.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return Err(format!(
            "\"{s}\" is not an RFC 3339 time with whole seconds; {fix}"
        ));
    }
    // Only ASCII digits remain at these positions (checked above).
    let num = |r: Range<usize>| body.get(r).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, se) = (num(11..13), num(14..16), num(17..19));
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let valid = (1970..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && d >= 1
        && month_days
            .get(usize::try_from(mo).unwrap_or(0).wrapping_sub(1))
            .is_some_and(|&m| d <= m)
        && h < 24
        && mi < 60
        && se < 60;
    if !valid {
        return Err(format!(
            "\"{s}\" is not a valid date and time (years 1970 to 9999); {fix}"
        ));
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy / 400;
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Formats an instant as `overlap_until` is written (for messages).
pub fn format_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"2h"`, `"1d"` and concatenations
/// such as `"1h30m"`. At most [`defaults::MAX_DURATION`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "write e.g. \"500ms\", \"30s\", \"15m\", \"2h\", \"1d\" or \"1h30m\"";
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{s}\" has no unit; write \"{s}s\" for seconds (or ms, m, h, d)"
        ));
    }
    let mut total_ms: u128 = 0;
    let mut rest = s.as_bytes();
    if rest.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let unit_len = rest[digits..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (number, tail) = rest.split_at(digits);
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ms: u128 = match unit {
            b"ms" => 1,
            b"s" => 1_000,
            b"m" => 60_000,
            b"h" => 3_600_000,
            b"d" => 86_400_000,
            _ => 0,
        };
        if digits == 0 || digits > 12 || unit_ms == 0 {
            return Err(format!("\"{s}\" is not a duration; {HINT}"));
        }
        let n: u128 = std::str::from_utf8(number)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("\"{s}\" is not a duration; {HINT}"))?;
        total_ms = total_ms.saturating_add(n.saturating_mul(unit_ms));
        rest = tail;
    }
    if total_ms > defaults::MAX_DURATION.as_millis() {
        return Err(format!("\"{s}\" is too long; durations are at most 365d"));
    }
    let secs = u64::try_from(total_ms / 1000).unwrap_or(u64::MAX);
    let millis = u32::try_from(total_ms % 1000).unwrap_or(0);
    Ok(Duration::from_secs(secs) + Duration::from_millis(u64::from(millis)))
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a host).
fn parse_net(s: &str) -> Result<IpNet, String> {
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(addr) = addr_text.parse::<IpAddr>() else {
        return Err(format!(
            "\"{s}\" is not a network; write e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""
        ));
    };
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "prefix /{p} in \"{s}\" is out of range; an {} prefix is 0 to {max}",
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                ))
            }
        },
    };
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    if network != addr {
        return Err(format!(
            "\"{s}\" has host bits set; write the network, \"{network}/{prefix}\""
        ));
    }
    // Sources are compared as plain IPv4 (IPv4-mapped addresses are folded),
    // so an IPv4-mapped network would match nothing: name the IPv4 one.
    if let IpAddr::V6(a) = addr {
        if prefix >= 96 {
            if let Some(v4) = a.to_ipv4_mapped() {
                return Err(format!(
                    "\"{s}\" is an IPv4-mapped network; write it as IPv4, \"{v4}/{}\"",
                    prefix - 96
                ));
            }
        }
    }
    Ok(IpNet { addr, prefix })
}

fn parse_protocol(s: &str) -> Option<Protocol> {
    match s {
        "postern-2" => Some(Protocol::Postern2),
        "ostiary-4" => Some(Protocol::Ostiary4),
        _ => None,
    }
}

/// RFC 5424 facility codes for the facilities posternd may log to.
fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "authpriv" => 10,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

/// Why a password is refused, if it is. HMAC pads a key with zero bytes
/// up to its 64-byte block and hashes a longer one, so `pw` and `pw\0`,
/// or a long password and its SHA-256, would be one key: two actions
/// could share it, and the wrong one would run.
fn password_problem(pw: &[u8]) -> Option<String> {
    let len = pw.len();
    if len == 0 {
        Some("the password is empty; set a non-empty password".into())
    } else if len > defaults::MAX_PASSWORD_LEN {
        Some(format!(
            "the password is {len} bytes; at most {} are allowed (HMAC would hash a longer one into a different 32-byte key); use a shorter password",
            defaults::MAX_PASSWORD_LEN
        ))
    } else if pw.contains(&0) {
        Some("the password contains a NUL byte (HMAC pads keys with NUL bytes, so it would equal another password); remove it".into())
    } else {
        None
    }
}

/// `{a}, {b} or {c}`.
fn either(words: &[&str]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == words.len() { " or " } else { ", " });
        }
        out.push('{');
        out.push_str(w);
        out.push('}');
    }
    out
}

/// The placeholders of an action's commands.
const PLACEHOLDERS: &[&str] = &["addr", "action"];

/// The placeholders of `[on_lockout] run`.
const ON_LOCKOUT_PLACEHOLDERS: &[&str] = &["addr", "source", "action"];

/// The first `{word}` in `s` that is not one of `allowed`.
fn unknown_placeholder<'a>(s: &'a str, allowed: &[&str]) -> Option<&'a str> {
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
            .count();
        if len > 0 && after.as_bytes().get(len) == Some(&b'}') {
            let word = &after[..len];
            if !allowed.contains(&word) {
                return Some(word);
            }
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::secret::b64_encode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // Goal: two networks overlap exactly when one contains the other, in
    // either order, with host bits set or not; families never overlap.
    #[test]
    fn networks_overlap_when_one_contains_the_other() {
        let n = |a: &str, p: u8| IpNet {
            addr: a.parse().unwrap(),
            prefix: p,
        };
        let cases = [
            (n("127.6.0.200", 32), n("127.6.0.8", 24), true),
            (n("127.6.0.0", 24), n("127.6.0.9", 32), true),
            (n("127.6.1.0", 24), n("127.6.0.8", 24), false),
            (n("10.0.0.0", 8), n("10.200.3.4", 24), true),
            (n("127.6.0.200", 32), n("127.6.0.201", 32), false),
            (n("2001:db8::", 32), n("2001:db8:1:2::5", 64), true),
            (n("2001:db8:1:2::1", 128), n("2001:db8:1:3::", 64), false),
            (n("0.0.0.0", 0), n("2001:db8::", 32), false),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.overlaps(&b), want, "{a} ~ {b}");
            assert_eq!(b.overlaps(&a), want, "{b} ~ {a}");
        }
        assert_eq!(n("127.6.0.0", 24).to_string(), "127.6.0.0/24");
    }

    /// A scratch directory with secret files in every state the checks
    /// care about; removed on drop.
    struct Fixture {
        dir: PathBuf,
        k1: String,
        k2: String,
        k3: String,
    }

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    impl Fixture {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "postern-config-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            let f = Fixture {
                dir,
                k1: b64_encode(&[1u8; 32]),
                k2: b64_encode(&[2u8; 32]),
                k3: b64_encode(&[3u8; 32]),
            };
            f.file("a.key", &format!("{}\n", f.k1), 0o600);
            f.file("open.key", &f.k1, 0o644);
            f.file("bad.key", "not a key\n", 0o600);
            f.file("short.key", &b64_encode(&[5u8; 16]), 0o600);
            f.file("pw", "Sample\n", 0o600);
            f.file("open.pw", "Sample\n", 0o640);
            f.file("empty.pw", "\n", 0o600);
            f.file("long.pw", &"x".repeat(1025), 0o600);
            f.file("notexec", "#!/bin/sh\n", 0o644);
            f.file("plainfile", "", 0o644);
            f
        }

        fn file(&self, name: &str, content: &str, mode: u32) {
            let p = self.dir.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn text(&self, t: &str) -> String {
            t.replace("@DIR", &self.dir.display().to_string())
                .replace("@K1", &self.k1)
                .replace("@K2", &self.k2)
                .replace("@K3", &self.k3)
        }

        fn parse(&self, t: &str) -> Result<Config, Vec<ConfigError>> {
            parse_str(&self.text(t), &self.dir.join("postern.toml"))
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// One postern-2 listener (lines 1-2).
    const L1: &str = "[[listen]]\naddress = \"127.0.0.1:7001\"\n";
    /// One ostiary-4 listener (3 lines).
    const L4: &str = "[[listen]]\naddress = \"127.0.0.1:7002\"\nprotocol = \"ostiary-4\"\n";
    /// A valid action (4 lines); after L1 its header is line 3.
    const ACT: &str = "[[action]]\nname = \"a\"\nkey = \"@K1\"\nrun = [\"/bin/true\"]\n";
    /// An action header and name (2 lines); after L1, lines 3-4.
    const AH: &str = "[[action]]\nname = \"a\"\n";
    /// A second valid action header and name.
    const BH: &str = "[[action]]\nname = \"b\"\n";
    const KEY: &str = "key = \"@K1\"\n";
    const RUN: &str = "run = [\"/bin/true\"]\n";

    // Goal: a config that sets every key parses into exactly those typed
    // values.
    #[test]
    fn full_config_parses_into_typed_values() {
        let f = Fixture::new();
        let text = r#"
[daemon]
user = "nobody"
group = "nogroup"
state_dir = "/var/lib/postern-test"
chroot = "/var/empty-postern-test"
log = "syslog"
syslog_facility = "local3"
stop_on_exit = false
shutdown_grace = "2s"

[limits]
handshake_timeout = "1500ms"
max_handshakes = 100
rate_burst = 3
rate_per_minute = 12
lockout_after = 7
lockout_duration = "1h30m"
lockout_table = 1000
exempt = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[on_lockout]
run = ["/bin/true", "{addr}"]
user = "nobody"
timeout = "3s"

[[listen]]
address = "127.0.0.1:7001"

[[listen]]
address = "[::1]:7002"
protocol = "ostiary-4"

[[action]]
name = "web"
key_file = "a.key"
run = ["/bin/true", "open", "{addr}"]
stop = ["/bin/true", "close", "{addr}"]
stop_all = ["/bin/true", "close-all"]
ttl = "30m"
extend = false
user = "root"
group = "nogroup"
timeout = "20s"
cooldown = "5s"
single_instance = false
bind_source = true

[[action]]
name = "shell"
key = "@K2"
serve = ["/bin/sleep", "1000"]
ttl = "10m"
max_open = "1h"
hold_while = ["/bin/true", "{action}"]
hold_interval = "2m"

[[action]]
name = "old.style"
password_file = "pw"
run = ["/bin/sh", "-c", "true"]

[[action]]
name = "off"
key = "@K3"
builtin = "shutdown"
"#;
        let c = f.parse(text).unwrap();
        assert_eq!(c.path, f.dir.join("postern.toml"));
        assert!(c.warnings.is_empty());

        let d = &c.daemon;
        assert_eq!(
            d.user,
            RunAs {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/postern-test"));
        assert_eq!(d.chroot_dir, PathBuf::from("/var/empty-postern-test"));
        assert_eq!(d.log, LogTarget::Syslog { facility: 19 });
        assert!(!d.stop_on_exit);
        assert_eq!(d.shutdown_grace, Duration::from_secs(2));

        let l = &c.limits;
        assert_eq!(l.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(l.max_handshakes.get(), 100);
        assert_eq!(l.rate_burst.get(), 3);
        assert_eq!(l.rate_per_minute.get(), 12);
        assert_eq!(l.lockout_after.get(), 7);
        assert_eq!(l.lockout_duration, Duration::from_secs(5400));
        assert_eq!(l.lockout_table.get(), 1000);
        assert_eq!(
            l.exempt,
            vec![
                IpNet {
                    addr: "10.0.0.0".parse().unwrap(),
                    prefix: 8
                },
                IpNet {
                    addr: "2001:db8::".parse().unwrap(),
                    prefix: 32
                },
                IpNet {
                    addr: "192.0.2.7".parse().unwrap(),
                    prefix: 32
                },
            ]
        );

        let ol = c.on_lockout.as_ref().unwrap();
        assert_eq!(ol.argv, Argv(vec!["/bin/true".into(), "{addr}".into()]));
        assert_eq!(ol.run_as.as_ref().unwrap().uid, 65534);
        assert_eq!(ol.timeout, Duration::from_secs(3));

        assert_eq!(
            c.listeners,
            vec![
                Listener {
                    address: "127.0.0.1:7001".parse().unwrap(),
                    protocol: Protocol::Postern2
                },
                Listener {
                    address: "[::1]:7002".parse().unwrap(),
                    protocol: Protocol::Ostiary4
                },
            ]
        );

        assert_eq!(c.actions.len(), 4);
        let web = &c.actions[0];
        assert_eq!(web.name, "web");
        match &web.keys[0].secret {
            ActionSecret::Key(k) => assert!(k.ct_eq(&Key::from_bytes([1u8; 32]))),
            ActionSecret::Password(_) => unreachable!("web has a key"),
        }
        match &web.kind {
            ActionKind::Run {
                run,
                gate: Some((stop, gate)),
            } => {
                assert_eq!(
                    run.render("192.0.2.1", "web", None),
                    vec!["/bin/true", "open", "192.0.2.1"]
                );
                assert_eq!(stop.0, vec!["/bin/true", "close", "{addr}"]);
                assert_eq!(gate.ttl, Duration::from_secs(1800));
                assert!(!gate.extend);
                assert_eq!(gate.max_open, Duration::from_secs(1800));
                assert!(gate.hold_while.is_none());
                assert_eq!(gate.hold_interval, defaults::HOLD_INTERVAL);
                assert_eq!(
                    gate.stop_all.as_ref().map(|a| a.0.clone()),
                    Some(vec!["/bin/true".to_string(), "close-all".to_string()])
                );
            }
            other => unreachable!("web is run with a gate, not {other:?}"),
        }
        assert_eq!(
            web.run_as,
            Some(RunAs {
                name: "root".into(),
                uid: 0,
                gid: 65534
            })
        );
        assert_eq!(web.timeout, Duration::from_secs(20));
        assert_eq!(web.cooldown, Duration::from_secs(5));
        assert!(!web.single_instance);
        assert!(web.bind_source);

        let shell = &c.actions[1];
        match &shell.keys[0].secret {
            ActionSecret::Key(k) => assert!(k.ct_eq(&Key::from_bytes([2u8; 32]))),
            ActionSecret::Password(_) => unreachable!("shell has a key"),
        }
        match &shell.kind {
            ActionKind::Serve { serve, gate } => {
                assert_eq!(serve.program(), "/bin/sleep");
                assert_eq!(gate.ttl, Duration::from_secs(600));
                assert!(gate.extend);
                assert_eq!(gate.max_open, Duration::from_secs(3600));
                assert_eq!(
                    gate.hold_while,
                    Some(Argv(vec!["/bin/true".into(), "{action}".into()]))
                );
                assert_eq!(gate.hold_interval, Duration::from_secs(120));
            }
            other => unreachable!("shell is serve, not {other:?}"),
        }
        assert_eq!(shell.run_as, None);

        let old = &c.actions[2];
        assert_eq!(old.name, "old.style");
        match &old.keys[0].secret {
            ActionSecret::Password(p) => assert_eq!(p.expose(), b"Sample"),
            ActionSecret::Key(_) => unreachable!("old.style has a password"),
        }
        assert!(matches!(&old.kind, ActionKind::Run { gate: None, .. }));

        let off = &c.actions[3];
        assert!(matches!(off.kind, ActionKind::Shutdown));
        assert!(!off.bind_source);
    }

    // Goal: a minimal config gets every default from `defaults`.
    #[test]
    fn defaults_applied() {
        let f = Fixture::new();
        let c = f.parse(&[L1, ACT, "[[action]]\nname = \"g\"\nkey = \"@K2\"\nserve = [\"/bin/sleep\", \"9\"]\nttl = \"1m\"\n"].concat()).unwrap();
        let d = &c.daemon;
        assert_eq!(d.user.name, defaults::USER);
        assert_eq!(d.state_dir, PathBuf::from(defaults::STATE_DIR));
        assert_eq!(
            d.chroot_dir,
            Path::new(defaults::STATE_DIR).join(defaults::CHROOT_SUBDIR)
        );
        assert_eq!(d.log, LogTarget::Stderr);
        assert_eq!(d.stop_on_exit, defaults::STOP_ON_EXIT);
        assert_eq!(d.shutdown_grace, defaults::SHUTDOWN_GRACE);
        let l = &c.limits;
        assert_eq!(l.handshake_timeout, defaults::HANDSHAKE_TIMEOUT);
        assert_eq!(l.max_handshakes.get(), defaults::MAX_HANDSHAKES);
        assert_eq!(l.rate_burst.get(), defaults::RATE_BURST);
        assert_eq!(l.rate_per_minute.get(), defaults::RATE_PER_MINUTE);
        assert_eq!(l.lockout_after.get(), defaults::LOCKOUT_AFTER);
        assert_eq!(l.lockout_duration, defaults::LOCKOUT_DURATION);
        assert_eq!(l.lockout_table.get(), defaults::LOCKOUT_TABLE);
        assert!(l.exempt.is_empty());
        assert!(c.on_lockout.is_none());
        assert_eq!(c.listeners[0].protocol, Protocol::Postern2);
        let a = &c.actions[0];
        assert_eq!(a.run_as, None);
        assert_eq!(a.timeout, defaults::ACTION_TIMEOUT);
        assert_eq!(a.cooldown, defaults::COOLDOWN);
        assert_eq!(a.single_instance, defaults::SINGLE_INSTANCE);
        assert_eq!(a.bind_source, defaults::BIND_SOURCE);
        match &c.actions[1].kind {
            ActionKind::Serve { gate, .. } => {
                assert_eq!(gate.extend, defaults::EXTEND);
                assert_eq!(
                    gate.max_open,
                    Duration::from_secs(60) * defaults::MAX_OPEN_FACTOR
                );
                assert_eq!(gate.hold_interval, defaults::HOLD_INTERVAL);
            }
            other => unreachable!("serve expected, not {other:?}"),
        }
        let syslog = f
            .parse(&["[daemon]\nlog = \"syslog\"\n", L1, ACT].concat())
            .unwrap();
        assert_eq!(syslog.daemon.log, LogTarget::Syslog { facility: 4 });
    }

    // Goal: per_address gives a gate its bound (default, or as set), and
    // a closing action parses into the gate it closes.
    #[test]
    fn per_address_and_closes_parse() {
        let f = Fixture::new();
        let per = |c: &Config| match &c.actions[0].kind {
            ActionKind::Run {
                gate: Some((_, g)), ..
            } => Some(g.per_address.map(NonZeroUsize::get)),
            _ => None,
        };
        let door = "[[action]]\nname = \"door\"\nkey = \"@K1\"\nrun = [\"/bin/true\", \"{addr}\"]\nstop = [\"/bin/true\", \"{addr}\"]\nstop_all = [\"/bin/true\"]\nttl = \"1m\"\nper_address = true\n";
        let close = "[[action]]\nname = \"door.close\"\nkey = \"@K2\"\ncloses = \"door\"\nbind_source = true\n";
        let c = f.parse(&[L1, door, close].concat()).unwrap();
        assert_eq!(per(&c), Some(Some(defaults::MAX_ADDRESSES)));
        assert!(
            matches!(&c.actions[1].kind, ActionKind::Close { gate } if gate == "door"),
            "{:?}",
            c.actions[1].kind
        );
        assert!(c.actions[1].bind_source);
        let c = f
            .parse(&[L1, door, "max_addresses = 3\n"].concat())
            .unwrap();
        assert_eq!(per(&c), Some(Some(3)));
        let c = f
            .parse(&[L1, ACT, "stop = [\"/bin/true\"]\nttl = \"1m\"\n"].concat())
            .unwrap();
        assert_eq!(per(&c), Some(None));
    }

    // Goal: max_open defaults to ttl without extend or hold_while, to
    // 4 x ttl with either, and is capped at MAX_DURATION.
    #[test]
    fn max_open_defaults() {
        let f = Fixture::new();
        let gate = |extra: &str| -> Gate {
            let text = [L1, AH, KEY, "serve = [\"/bin/sleep\", \"9\"]\n", extra].concat();
            match f.parse(&text).unwrap().actions.remove(0).kind {
                ActionKind::Serve { gate, .. } => gate,
                other => unreachable!("serve expected, not {other:?}"),
            }
        };
        assert_eq!(
            gate("ttl = \"10m\"\nextend = false\n").max_open,
            Duration::from_secs(600)
        );
        assert_eq!(gate("ttl = \"10m\"\n").max_open, Duration::from_secs(2400));
        assert_eq!(
            gate("ttl = \"10m\"\nextend = false\nhold_while = [\"/bin/true\"]\n").max_open,
            Duration::from_secs(2400)
        );
        assert_eq!(gate("ttl = \"200d\"\n").max_open, defaults::MAX_DURATION);
        assert_eq!(
            gate("ttl = \"10m\"\nmax_open = \"10m\"\n").max_open,
            Duration::from_secs(600)
        );
    }

    // Goal: relative state_dir, chroot, key_file and password_file resolve
    // against the config file's directory, not the working directory.
    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let f = Fixture::new();
        std::fs::create_dir_all(f.dir.join("keys")).unwrap();
        f.file("keys/k", &f.k2, 0o600);
        let text = [
            "[daemon]\nstate_dir = \"state\"\nchroot = \"../jail\"\n",
            L1,
            L4,
            AH,
            "key_file = \"keys/k\"\n",
            RUN,
            BH,
            "password_file = \"./pw\"\n",
            RUN,
        ]
        .concat();
        let c = f.parse(&text).unwrap();
        assert_eq!(c.daemon.state_dir, f.dir.join("state"));
        assert_eq!(c.daemon.chroot_dir, f.dir.join("../jail"));
        assert!(
            matches!(&c.actions[0].keys[0].secret, ActionSecret::Key(k) if k.ct_eq(&Key::from_bytes([2u8; 32])))
        );
        assert!(
            matches!(&c.actions[1].keys[0].secret, ActionSecret::Password(p) if p.expose() == b"Sample")
        );
        // The default chroot follows a relative state_dir.
        let c = f
            .parse(&["[daemon]\nstate_dir = \"s\"\n", L1, ACT].concat())
            .unwrap();
        assert_eq!(c.daemon.chroot_dir, f.dir.join("s").join("empty"));
    }

    // Goal: listeners on port 0 never count as duplicates (tests bind
    // several ephemeral ports on one address).
    #[test]
    fn port_zero_listeners_may_repeat() {
        let f = Fixture::new();
        let text = [
            "[[listen]]\naddress = \"127.0.0.1:0\"\n",
            "[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"ostiary-4\"\n",
            ACT,
        ]
        .concat();
        assert_eq!(f.parse(&text).unwrap().listeners.len(), 2);
    }

    // Goal: every invalid config is refused with its own key, line and a
    // message that says what is wrong; each case yields exactly one error.
    #[test]
    fn invalid_configs_are_refused_with_key_and_message() {
        let f = Fixture::new();
        let many_listeners: String = (0..=defaults::MAX_LISTENERS)
            .map(|i| format!("[[listen]]\naddress = \"127.0.0.1:{}\"\n", 10000 + i))
            .collect();
        let many_actions: String = (0..=defaults::MAX_ACTIONS)
            .map(|i| format!("[[action]]\nname = \"a{i}\"\nkey = \"@K1\"\nrun = [\"/bin/true\"]\n"))
            .collect();
        let long_argv = format!(
            "run = [\"/bin/true\"{}]\n",
            ", \"x\"".repeat(defaults::MAX_ARGV)
        );
        let long_password = format!(
            "password = \"{}\"\n",
            "p".repeat(defaults::MAX_PASSWORD_LEN + 1)
        );
        let long_name = format!(
            "[[action]]\nname = \"{}\"\n",
            "n".repeat(defaults::MAX_ACTION_NAME + 1)
        );
        let serve_ttl = "serve = [\"/bin/sleep\", \"9\"]\nttl = \"10m\"\n";
        let named =
            |name: &str, key: &str| format!("[[action.key]]\nname = \"{name}\"\nkey = \"{key}\"\n");
        let many_keys: String = (0..=defaults::MAX_KEYS_PER_ACTION)
            .map(|i| named(&format!("k{i}"), "@K1"))
            .collect();
        let too_many_keys = format!(
            "too many [[action.key]] tables ({}); at most {} per action are allowed",
            defaults::MAX_KEYS_PER_ACTION + 1,
            defaults::MAX_KEYS_PER_ACTION
        );
        // Whole actions of the most keys each, one more slot than allowed.
        let per = defaults::MAX_KEYS_PER_ACTION;
        let n_actions = defaults::MAX_KEY_SLOTS / per + 1;
        let many_slots: String = (0..n_actions)
            .map(|a| {
                let keys: String = (0..per).map(|i| named(&format!("k{i}"), "@K1")).collect();
                format!("[[action]]\nname = \"a{a}\"\n{RUN}{keys}")
            })
            .collect();
        let too_many_slots = format!(
            "{} keys, passwords and successors in all; at most {} are allowed",
            n_actions * per,
            defaults::MAX_KEY_SLOTS
        );

        // (key, part of the message, line or 0 for none, text)
        let cases: Vec<(&str, &str, usize, String)> = vec![
            // Shape: unknown keys and wrong types.
            ("bogus", "unknown key; remove it or fix its spelling", 1, ["bogus = 1\n", L1, ACT].concat()),
            ("daemon.usr", "unknown key", 2, ["[daemon]\nusr = \"x\"\n", L1, ACT].concat()),
            ("action[1].nmae", "expected one of `name`", 4, [L1, "[[action]]\nnmae = \"a\"\n", KEY, RUN].concat()),
            ("listen[2].port", "unknown key", 5, [L1, "[[listen]]\naddress = \"127.0.0.1:7003\"\nport = 1\n", ACT].concat()),
            ("on_lockout.command", "unknown key", 2, ["[on_lockout]\ncommand = \"x\"\n", L1, ACT].concat()),
            ("limits.max_handshakes", "wrong type: found string \"5\", expected an integer", 2, ["[limits]\nmax_handshakes = \"5\"\n", L1, ACT].concat()),
            ("action[1].extend", "found string \"yes\", expected a boolean", 7, [L1, ACT, "extend = \"yes\"\n"].concat()),
            ("action[1].run", "expected an array", 6, [L1, AH, KEY, "run = \"/bin/true\"\n"].concat()),
            ("action[1].run", "found integer `3`, expected a string", 6, [L1, AH, KEY, "run = [\"/bin/true\", 3]\n"].concat()),
            ("daemon", "expected a table", 1, ["daemon = 3\n", L1, ACT].concat()),
            ("action[1].ttl", "expected a duration string such as \"30s\"", 7, [L1, ACT, "ttl = 1.5\n"].concat()),
            ("", "invalid TOML", 3, [L1, "[[action]\n"].concat()),
            ("", "invalid TOML: duplicate key `name`", 5, [L1, AH, "name = \"b\"\n"].concat()),
            // Listeners.
            ("listen", "no [[listen]] table; add one", 0, ACT.to_owned()),
            ("listen", "too many [[listen]] tables (65); at most 64", 129, [many_listeners.as_str(), ACT].concat()),
            ("listen[2].address", "duplicate address 127.0.0.1:7001 (also listen[1])", 4, [L1, L1, ACT].concat()),
            ("listen[2].protocol", "unknown protocol \"ostiary-5\"; use \"postern-2\" or \"ostiary-4\"", 5, [L1, "[[listen]]\naddress = \"127.0.0.1:7002\"\nprotocol = \"ostiary-5\"\n", ACT].concat()),
            ("listen[1].address", "\"127.0.0.1\" is not an IP address and port", 2, ["[[listen]]\naddress = \"127.0.0.1\"\n", ACT].concat()),
            ("listen[1].address", "host names are not resolved", 2, ["[[listen]]\naddress = \"localhost:7001\"\n", ACT].concat()),
            ("listen[1].address", "missing; write e.g. address", 1, ["[[listen]]\nprotocol = \"postern-2\"\n", ACT].concat()),
            // Actions: count and names.
            ("action", "no [[action]] table; add at least one", 0, L1.to_owned()),
            ("action", "too many [[action]] tables (4097); at most 4096", 3 + 4 * 4096, [L1, many_actions.as_str()].concat()),
            ("action[1].name", "missing; every action needs a unique name", 3, [L1, "[[action]]\n", KEY, RUN].concat()),
            ("action[1].name", "invalid name \"a b\"; use 1 to 64 characters", 4, [L1, "[[action]]\nname = \"a b\"\n", KEY, RUN].concat()),
            ("action[1].name", "invalid name \"nnnn", 4, [L1, long_name.as_str(), KEY, RUN].concat()),
            ("action[1].name", "invalid name \"\"", 4, [L1, "[[action]]\nname = \"\"\n", KEY, RUN].concat()),
            ("action[2].name", "duplicate action name \"a\" (also action[1])", 8, [L1, ACT, AH, "key = \"@K2\"\n", RUN].concat()),
            // Secrets.
            ("action[1].key", "key is not valid base64", 5, [L1, AH, "key = \"!!!!\"\n", RUN].concat()),
            ("action[1].key", "key decodes to 16 bytes, but must be exactly 32", 5, [L1, AH, "key = \"AAAAAAAAAAAAAAAAAAAAAA==\"\n", RUN].concat()),
            ("action[1].key_file", "nope.key does not exist", 5, [L1, AH, "key_file = \"nope.key\"\n", RUN].concat()),
            ("action[1].key_file", "key file /nonexistent/x.key does not exist", 5, [L1, AH, "key_file = \"/nonexistent/x.key\"\n", RUN].concat()),
            ("action[1].key_file", "sub is a directory; point key_file at a file", 5, [L1, AH, "key_file = \"sub\"\n", RUN].concat()),
            ("action[1].key_file", "is accessible by group or others (mode 644); run `chmod 600 ", 5, [L1, AH, "key_file = \"open.key\"\n", RUN].concat()),
            ("action[1].key_file", "bad.key: key is not valid base64", 5, [L1, AH, "key_file = \"bad.key\"\n", RUN].concat()),
            ("action[1].key_file", "short.key: key decodes to 16 bytes", 5, [L1, AH, "key_file = \"short.key\"\n", RUN].concat()),
            ("action[1].password", "the password is 65 bytes; at most 64", 6, [L4, AH, long_password.as_str(), RUN].concat()),
            ("action[1].password", "the password is empty", 6, [L4, AH, "password = \"\"\n", RUN].concat()),
            ("action[1].password_file", "password file @DIR/nope.pw does not exist", 6, [L4, AH, "password_file = \"nope.pw\"\n", RUN].concat()),
            ("action[1].password_file", "(mode 640); run `chmod 600 @DIR/open.pw`", 6, [L4, AH, "password_file = \"open.pw\"\n", RUN].concat()),
            ("action[1].password_file", "empty.pw: the password is empty", 6, [L4, AH, "password_file = \"empty.pw\"\n", RUN].concat()),
            ("action[1].password_file", "long.pw: the password is 1025 bytes", 6, [L4, AH, "password_file = \"long.pw\"\n", RUN].concat()),
            ("action[1].password", "key and password are both set; keep exactly one", 6, [L1, AH, KEY, "password = \"pw\"\n", RUN].concat()),
            ("action[1].key_file", "key and key_file are both set", 6, [L1, AH, KEY, "key_file = \"a.key\"\n", RUN].concat()),
            ("action[1]", "no secret; set exactly one of key, key_file", 3, [L1, AH, RUN].concat()),
            ("action[1].key", "unreachable action: a key is used by postern-2", 6, [L4, AH, KEY, RUN].concat()),
            ("action[1].password", "unreachable action: a password is used by ostiary-4", 5, [L1, AH, "password = \"pw\"\n", RUN].concat()),
            ("action[1].bind_source", "ostiary-4 carries no address", 8, [L4, AH, "password = \"pw\"\n", RUN, "bind_source = true\n"].concat()),
            ("action[2].key", "same key as action[1].key; give every action, operator and successor its own key", 9, [L1, ACT, BH, KEY, RUN].concat()),
            ("action[2].key_file", "same key as action[1]", 9, [L1, ACT, BH, "key_file = \"a.key\"\n", RUN].concat()),
            ("action[2].password", "same password as action[1]", 10, [L4, AH, "password = \"pw\"\n", RUN, BH, "password = \"pw\"\n", RUN].concat()),
            // Named keys: [[action.key]].
            ("action[1].key[1].nme", "unknown key; remove it or fix its spelling", 7, [L1, AH, RUN, "[[action.key]]\nnme = \"alice\"\nkey = \"@K1\"\n"].concat()),
            ("action[1].key[1].name", "invalid key name \"al ice\"; use 1 to 64 characters", 7, [L1, AH, RUN, "[[action.key]]\nname = \"al ice\"\nkey = \"@K1\"\n"].concat()),
            ("action[1].key[1].name", "missing; every key needs a name", 6, [L1, AH, RUN, "[[action.key]]\nkey = \"@K1\"\n"].concat()),
            ("action[1].key[2].name", "duplicate key name \"alice\" (also action[1].key[1])", 10, [L1, AH, RUN, &named("alice", "@K1"), &named("alice", "@K2")].concat()),
            ("action[1].key_file", "key_file and [[action.key]] tables are both set; an action has one secret or named keys, not both", 5, [L1, AH, "key_file = \"a.key\"\n", RUN, &named("alice", "@K2")].concat()),
            ("action[1].key[1]", "no key; set exactly one of key_file or key", 6, [L1, AH, RUN, "[[action.key]]\nname = \"alice\"\n"].concat()),
            ("action[1].key[1].key_file", "key and key_file are both set", 9, [L1, AH, RUN, &named("alice", "@K1"), "key_file = \"a.key\"\n"].concat()),
            ("action[1].key[1].key_file", "open.key is accessible by group or others", 8, [L1, AH, RUN, "[[action.key]]\nname = \"alice\"\nkey_file = \"open.key\"\n"].concat()),
            ("action[1].key[1]", "a successor needs overlap_until", 6, [L1, AH, RUN, &named("alice", "@K1"), "next_key = \"@K2\"\n"].concat()),
            ("action[1].key[1].overlap_until", "an overlap window without a successor", 9, [L1, AH, RUN, &named("alice", "@K1"), "overlap_until = \"2026-12-15T00:00:00Z\"\n"].concat()),
            ("action[1].key[1].overlap_until", "\"2026-12-15T01:00:00+01:00\" is not in UTC; write it in UTC as YYYY-MM-DDTHH:MM:SSZ", 10, [L1, AH, RUN, &named("alice", "@K1"), "next_key = \"@K2\"\noverlap_until = \"2026-12-15T01:00:00+01:00\"\n"].concat()),
            ("action[1].key[1].overlap_until", "is not an RFC 3339 time with whole seconds", 10, [L1, AH, RUN, &named("alice", "@K1"), "next_key = \"@K2\"\noverlap_until = \"2026-12-15T00:00:00.5Z\"\n"].concat()),
            ("action[1].key[1].overlap_until", "is not a valid date and time", 10, [L1, AH, RUN, &named("alice", "@K1"), "next_key = \"@K2\"\noverlap_until = \"2027-02-29T00:00:00Z\"\n"].concat()),
            ("action[1].key[1].next_key_file", "next_key and next_key_file are both set", 10, [L1, AH, RUN, &named("alice", "@K1"), "next_key = \"@K2\"\nnext_key_file = \"a.key\"\noverlap_until = \"2026-12-15T00:00:00Z\"\n"].concat()),
            ("action[1].key[2].key", "same key as action[1].key[1].key; give every action, operator and successor its own key", 11, [L1, AH, RUN, &named("alice", "@K1"), &named("bob", "@K1")].concat()),
            ("action[1].key[1].next_key", "same key as action[1].key[1].key", 9, [L1, AH, RUN, &named("alice", "@K1"), "next_key = \"@K1\"\noverlap_until = \"2026-12-15T00:00:00Z\"\n"].concat()),
            ("action[2].key[1].next_key_file", "same key as action[1].key", 13, [L1, ACT, BH, RUN, &named("alice", "@K2"), "next_key_file = \"a.key\"\noverlap_until = \"2026-12-15T00:00:00Z\"\n"].concat()),
            ("action[1].key", &too_many_keys, 6 + 3 * defaults::MAX_KEYS_PER_ACTION, [L1, AH, RUN, &many_keys].concat()),
            ("action", &too_many_slots, 0, [L1, many_slots.as_str()].concat()),
            // What an action does.
            ("action[1]", "nothing to do; set exactly one of run, serve, builtin or closes", 3, [L1, AH, KEY].concat()),
            // Per-address gates and closing actions.
            ("action[1].stop", "per_address opens and closes one address at a time, but stop does not use {addr}", 7, [L1, AH, KEY, "run = [\"/bin/true\", \"{addr}\"]\n", "stop = [\"/bin/true\"]\nttl = \"1m\"\nper_address = true\n"].concat()),
            ("action[1].max_addresses", "only applies with per_address = true", 8, [L1, AH, KEY, serve_ttl, "max_addresses = 4\n"].concat()),
            ("action[1].max_addresses", "must be between 1 and 4096, not 5000", 9, [L1, AH, KEY, "serve = [\"/bin/sleep\", \"{addr}\"]\nttl = \"1m\"\nper_address = true\nmax_addresses = 5000\n"].concat()),
            ("action[1].per_address", "per_address only applies to a gate", 7, [L1, ACT, "per_address = true\n"].concat()),
            ("action[1].closes", "no action named \"nope\"; closes names the gate action it closes", 6, [L1, AH, KEY, "closes = \"nope\"\n"].concat()),
            ("action[2].closes", "\"a\" is not a gate (run with stop, or serve)", 10, [L1, ACT, BH, "key = \"@K2\"\n", "closes = \"a\"\n"].concat()),
            ("action[1].closes", "run and closes are both set", 7, [L1, ACT, "closes = \"a\"\n"].concat()),
            ("action[1].ttl", "ttl has no meaning for a closing action", 7, [L1, AH, KEY, "closes = \"x\"\nttl = \"1m\"\n"].concat()),
            ("action[1].serve", "run and serve are both set", 7, [L1, ACT, serve_ttl].concat()),
            ("action[1].builtin", "run and builtin are both set", 7, [L1, ACT, "builtin = \"shutdown\"\n"].concat()),
            ("action[1].builtin", "unknown builtin \"reboot\"; the only builtin is \"shutdown\"", 6, [L1, AH, KEY, "builtin = \"reboot\"\n"].concat()),
            ("action[1].ttl", "ttl has no meaning for a builtin action", 7, [L1, AH, KEY, "builtin = \"shutdown\"\nttl = \"1m\"\n"].concat()),
            ("action[1].user", "user has no meaning for a builtin action", 7, [L1, AH, KEY, "builtin = \"shutdown\"\nuser = \"root\"\n"].concat()),
            // Argvs.
            ("action[1].run", "empty command", 6, [L1, AH, KEY, "run = []\n"].concat()),
            ("action[1].run", "257 elements; a command has at most 256", 6, [L1, AH, KEY, long_argv.as_str()].concat()),
            ("action[1].run", "program \"true\" must be an absolute path (there is no PATH search), e.g. \"/usr/bin/true\"", 6, [L1, AH, KEY, "run = [\"true\"]\n"].concat()),
            ("action[1].run", "program /nonexistent/prog does not exist", 6, [L1, AH, KEY, "run = [\"/nonexistent/prog\"]\n"].concat()),
            ("action[1].run", "sub is a directory; name the executable file", 6, [L1, AH, KEY, "run = [\"@DIR/sub\"]\n"].concat()),
            ("action[1].run", "notexec is not executable; run `chmod +x", 6, [L1, AH, KEY, "run = [\"@DIR/notexec\"]\n"].concat()),
            ("action[1].run", "unknown placeholder {adr}; use {addr} or {action}", 6, [L1, AH, KEY, "run = [\"/bin/true\", \"{adr}\"]\n"].concat()),
            ("action[1].run", "contains a NUL byte", 6, [L1, AH, KEY, "run = [\"/bin/true\", \"a\\u0000b\"]\n"].concat()),
            ("action[1].stop", "empty command", 7, [L1, ACT, "stop = []\nttl = \"1m\"\n"].concat()),
            ("action[1].hold_while", "program \"check\" must be an absolute path", 8, [L1, AH, KEY, serve_ttl, "hold_while = [\"check\"]\n"].concat()),
            // Gates.
            ("action[1].stop", "stop only applies to run", 8, [L1, AH, KEY, serve_ttl, "stop = [\"/bin/true\"]\n"].concat()),
            ("action[1].stop", "add stop_all", 7, [L1, ACT, "stop = [\"/bin/true\", \"{addr}\"]\nttl = \"1m\"\n"].concat()),
            ("action[1].stop_all", "cannot use {addr}", 9, [L1, ACT, "stop = [\"/bin/true\"]\nttl = \"1m\"\nstop_all = [\"/bin/true\", \"{addr}\"]\n"].concat()),
            ("action[1].stop_all", "only applies to a gate", 7, [L1, ACT, "stop_all = [\"/bin/true\"]\n"].concat()),
            ("action[1].stop_all", "stop_all only applies to run with stop", 8, [L1, AH, KEY, serve_ttl, "stop_all = [\"/bin/true\"]\n"].concat()),
            ("action[1].password", "contains a NUL byte", 6, [L4, AH, "password = \"pw\\u0000\"\n", RUN].concat()),
            ("daemon.group", "group root (gid 0)", 3, ["[daemon]\nuser = \"nobody\"\ngroup = \"root\"\n", L1, ACT].concat()),
            ("action[1].ttl", "missing; stop needs ttl", 7, [L1, ACT, "stop = [\"/bin/true\"]\n"].concat()),
            ("action[1].ttl", "missing; serve needs ttl", 6, [L1, AH, KEY, "serve = [\"/bin/sleep\", \"9\"]\n"].concat()),
            ("action[1].ttl", "ttl needs stop or serve", 7, [L1, ACT, "ttl = \"1m\"\n"].concat()),
            ("action[1].hold_while", "hold_while only applies to a gate; add stop and ttl", 7, [L1, ACT, "hold_while = [\"/bin/true\"]\n"].concat()),
            ("action[1].extend", "extend only applies to a gate", 7, [L1, ACT, "extend = true\n"].concat()),
            ("action[1].max_open", "shorter than ttl", 8, [L1, AH, KEY, serve_ttl, "max_open = \"5m\"\n"].concat()),
            ("action[1].hold_interval", "must be longer than zero", 8, [L1, AH, KEY, serve_ttl, "hold_interval = \"0s\"\n"].concat()),
            // Durations.
            ("action[1].ttl", "a duration needs a unit; write \"30s\"", 7, [L1, AH, KEY, "serve = [\"/bin/sleep\", \"9\"]\nttl = 30\n"].concat()),
            ("action[1].ttl", "\"30\" has no unit; write \"30s\"", 7, [L1, AH, KEY, "serve = [\"/bin/sleep\", \"9\"]\nttl = \"30\"\n"].concat()),
            ("action[1].ttl", "a duration cannot be negative", 7, [L1, AH, KEY, "serve = [\"/bin/sleep\", \"9\"]\nttl = -5\n"].concat()),
            ("action[1].ttl", "must be longer than zero", 7, [L1, AH, KEY, "serve = [\"/bin/sleep\", \"9\"]\nttl = \"0s\"\n"].concat()),
            ("action[1].timeout", "must be longer than zero", 7, [L1, ACT, "timeout = \"0ms\"\n"].concat()),
            ("action[1].cooldown", "\"366d\" is too long; durations are at most 365d", 7, [L1, ACT, "cooldown = \"366d\"\n"].concat()),
            ("limits.handshake_timeout", "must be longer than zero", 2, ["[limits]\nhandshake_timeout = \"0s\"\n", L1, ACT].concat()),
            ("limits.lockout_duration", "\"400d\" is too long", 2, ["[limits]\nlockout_duration = \"400d\"\n", L1, ACT].concat()),
            ("daemon.shutdown_grace", "\"5 minutes\" is not a duration; write e.g. \"500ms\"", 2, ["[daemon]\nshutdown_grace = \"5 minutes\"\n", L1, ACT].concat()),
            ("daemon.shutdown_grace", "empty duration", 2, ["[daemon]\nshutdown_grace = \"\"\n", L1, ACT].concat()),
            // Counts.
            ("limits.max_handshakes", "must be between 1 and 65536, not 0", 2, ["[limits]\nmax_handshakes = 0\n", L1, ACT].concat()),
            ("limits.max_handshakes", "must be between 1 and 65536, not -1", 2, ["[limits]\nmax_handshakes = -1\n", L1, ACT].concat()),
            ("limits.max_handshakes", "must be between 1 and 65536, not 70000", 2, ["[limits]\nmax_handshakes = 70000\n", L1, ACT].concat()),
            ("limits.lockout_table", "must be between 1 and 262144, not 9999999999", 2, ["[limits]\nlockout_table = 9999999999\n", L1, ACT].concat()),
            ("limits.rate_burst", "must be between 1 and 1000000, not 0", 2, ["[limits]\nrate_burst = 0\n", L1, ACT].concat()),
            ("limits.rate_per_minute", "not 2000000", 2, ["[limits]\nrate_per_minute = 2000000\n", L1, ACT].concat()),
            ("limits.lockout_after", "must be between 1 and 1000000, not 0", 2, ["[limits]\nlockout_after = 0\n", L1, ACT].concat()),
            ("", "invalid TOML: number too large", 2, ["[limits]\nlockout_table = 99999999999999999999\n", L1, ACT].concat()),
            // Exempt networks.
            ("limits.exempt", "\"10.1.0.0/8\" has host bits set; write the network, \"10.0.0.0/8\"", 2, ["[limits]\nexempt = [\"10.1.0.0/8\"]\n", L1, ACT].concat()),
            ("limits.exempt", "write the network, \"2001:db8::/32\"", 2, ["[limits]\nexempt = [\"2001:db8::1/32\"]\n", L1, ACT].concat()),
            ("limits.exempt", "prefix /33 in \"10.0.0.0/33\" is out of range; an IPv4 prefix is 0 to 32", 2, ["[limits]\nexempt = [\"10.0.0.0/33\"]\n", L1, ACT].concat()),
            ("limits.exempt", "\"intranet\" is not a network", 3, ["[limits]\nexempt = [\"10.0.0.0/8\",\n \"intranet\"]\n", L1, ACT].concat()),
            // Users and groups.
            ("action[1].user", "unknown user \"no-such-user-postern\"", 7, [L1, ACT, "user = \"no-such-user-postern\"\n"].concat()),
            ("action[1].group", "unknown group \"no-such-group-postern\"", 8, [L1, ACT, "user = \"root\"\ngroup = \"no-such-group-postern\"\n"].concat()),
            ("action[1].group", "group needs user", 7, [L1, ACT, "group = \"root\"\n"].concat()),
            ("daemon.user", "unknown user \"no-such-user-postern\"", 2, ["[daemon]\nuser = \"no-such-user-postern\"\n", L1, ACT].concat()),
            ("on_lockout.group", "group needs user", 3, ["[on_lockout]\nrun = [\"/bin/true\"]\ngroup = \"root\"\n", L1, ACT].concat()),
            (
                "daemon.user",
                "\"root\" is uid 0, but the network process must not run as root",
                2,
                ["[daemon]\nuser = \"root\"\n", L1, ACT].concat(),
            ),
            // [daemon] logging and directories.
            ("daemon.log", "unknown log target \"file\"; use \"stderr\" or \"syslog\"", 2, ["[daemon]\nlog = \"file\"\n", L1, ACT].concat()),
            ("daemon.syslog_facility", "unknown facility \"kern\"", 3, ["[daemon]\nlog = \"syslog\"\nsyslog_facility = \"kern\"\n", L1, ACT].concat()),
            ("daemon.syslog_facility", "only applies with log = \"syslog\"", 2, ["[daemon]\nsyslog_facility = \"auth\"\n", L1, ACT].concat()),
            ("daemon.chroot", "plainfile exists but is not a directory", 2, ["[daemon]\nchroot = \"plainfile\"\n", L1, ACT].concat()),
            ("daemon.chroot", "/empty exists but is not a directory", 2, ["[daemon]\nstate_dir = \"statefile\"\n", L1, ACT].concat()),
            ("daemon.state_dir", "not a usable path", 2, ["[daemon]\nstate_dir = \"\"\n", L1, ACT].concat()),
            // [on_lockout].
            ("on_lockout.run", "missing; [on_lockout] needs run", 1, ["[on_lockout]\ntimeout = \"1s\"\n", L1, ACT].concat()),
            ("on_lockout.run", "program \"logger\" must be an absolute path", 2, ["[on_lockout]\nrun = [\"logger\", \"{addr}\"]\n", L1, ACT].concat()),
            ("on_lockout.timeout", "must be longer than zero", 3, ["[on_lockout]\nrun = [\"/bin/true\"]\ntimeout = \"0s\"\n", L1, ACT].concat()),
        ];
        // The default chroot of a state_dir whose `empty` is a file.
        std::fs::create_dir_all(f.dir.join("statefile")).unwrap();
        f.file("statefile/empty", "", 0o644);

        assert!(cases.len() >= 65, "only {} cases", cases.len());
        // Every case is checked before failing, so one run shows them all.
        let mut failures = Vec::new();
        for (key, message, line, text) in &cases {
            let message = f.text(message);
            let errors = f.parse(text).err().unwrap_or_default();
            let line = (*line != 0).then_some(*line);
            let good = match errors.as_slice() {
                [e] => {
                    e.key == *key
                        && e.message.contains(&message)
                        && e.line == line
                        && e.file == f.dir.join("postern.toml")
                        && !e.message.starts_with(|c: char| c.is_ascii_uppercase())
                }
                _ => false,
            };
            if !good {
                let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
                failures.push(format!(
                    "want {key:?} line {line:?} {message:?}, got {shown:#?}"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failing cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    // Goal: named keys and successors parse into one flat list of slots
    // in action order (each key, then its successor), with names, roles
    // and the window's end; the single secret is one unnamed slot.
    #[test]
    fn named_keys_become_slots() {
        let f = Fixture::new();
        f.file("k3.key", &format!("{}\n", f.k3), 0o600);
        let text = [
            L1,
            ACT,
            BH,
            RUN,
            "[[action.key]]\nname = \"alice\"\nkey = \"@K2\"\nnext_key_file = \"k3.key\"\noverlap_until = \"2026-12-15T00:00:00Z\"\n",
            "[[action.key]]\nname = \"bob.ops-2_x\"\nkey = \"",
            &b64_encode(&[4u8; 32]),
            "\"\n",
        ]
        .concat();
        let c = f.parse(&text).unwrap();
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_797_292_800);
        let shape: Vec<(usize, usize, KeyRole, Option<SystemTime>, &str)> = c
            .slots
            .iter()
            .map(|s| (s.action, s.key, s.role, s.until, c.slot_name(s)))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 0, KeyRole::Only, None, "-"),
                (1, 0, KeyRole::Old, Some(until), "alice"),
                (1, 0, KeyRole::Next, None, "alice"),
                (1, 1, KeyRole::Only, None, "bob.ops-2_x"),
            ]
        );
        let bytes: Vec<u8> = c
            .slots
            .iter()
            .map(|s| c.slot_secret(s).unwrap().expose()[0])
            .collect();
        assert_eq!(bytes, [1, 2, 3, 4]);
        let before = until - Duration::from_secs(1);
        assert!(c.slots[1].valid_at(before));
        assert!(!c.slots[1].valid_at(until));
        assert!(c.slots[2].valid_at(until + Duration::from_secs(86_400)));
        assert_eq!(KeyRole::Old.log_name(), Some("old"));
        assert_eq!(KeyRole::Next.log_name(), Some("next"));
        assert_eq!(KeyRole::Only.log_name(), None);
    }

    // Goal: across a reload, a slot maps to the key of the same name and
    // secret only: a removed, renamed or re-keyed key has no slot, and
    // the others keep theirs even when their action's key list changed.
    #[test]
    fn same_slot_follows_name_and_secret() {
        let f = Fixture::new();
        let two = |a: &str, ka: &str, b: &str, kb: &str| {
            [
                L1,
                AH,
                RUN,
                &format!("[[action.key]]\nname = \"{a}\"\nkey = \"{ka}\"\n"),
                &format!("[[action.key]]\nname = \"{b}\"\nkey = \"{kb}\"\n"),
            ]
            .concat()
        };
        let old = f.parse(&two("alice", "@K1", "bob", "@K2")).unwrap();
        let alice = &old.slots[0];
        let bob = &old.slots[1];
        // Bob removed (carol added): alice still maps, bob does not.
        let new = f.parse(&two("carol", "@K3", "alice", "@K1")).unwrap();
        assert!(same_action(&old.actions[0], &new.actions[0]));
        assert_eq!(same_slot(&old, alice, &new, 0), Some(1));
        assert_eq!(same_slot(&old, bob, &new, 0), None);
        // Alice re-keyed, or her key given to another name: no slot.
        let rekeyed = f.parse(&two("alice", "@K3", "bob", "@K2")).unwrap();
        assert_eq!(same_slot(&old, alice, &rekeyed, 0), None);
        assert_eq!(same_slot(&old, bob, &rekeyed, 0), Some(1));
        let renamed = f.parse(&two("alicia", "@K1", "bob", "@K2")).unwrap();
        assert_eq!(same_slot(&old, alice, &renamed, 0), None);
        // The action's commands changed: not the same action at all.
        let other = f
            .parse(&two("alice", "@K1", "bob", "@K2").replace("/bin/true", "/bin/false"))
            .unwrap();
        assert!(!same_action(&old.actions[0], &other.actions[0]));
    }

    // Goal: overlap_until reads RFC 3339 UTC instants exactly (leap days,
    // the epoch, the last second of a year) and prints them back.
    #[test]
    fn utc_instants() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0u64),
            ("2026-12-15T00:00:00Z", 1_797_292_800),
            ("2024-02-29T12:34:56Z", 1_709_210_096),
            ("1999-12-31T23:59:59Z", 946_684_799),
            ("2000-03-01T00:00:00+00:00", 951_868_800),
        ] {
            let t = parse_utc(text).unwrap();
            assert_eq!(
                t,
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
                "{text}"
            );
            assert_eq!(format_utc(t), text.replace("+00:00", "Z"));
        }
        for bad in [
            "2026-12-15 00:00:00Z",
            "2026-12-15T00:00:00",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-12-15T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-12-15T00:00:60Z",
            "+026-12-15T00:00:00Z",
            "",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad:?} accepted");
        }
    }

    // Goal: independent problems are all reported in one run, in file
    // order, for shape errors and for value errors alike.
    #[test]
    fn all_problems_reported_at_once() {
        let f = Fixture::new();
        let shape = [
            "[daemon]\nusr = \"x\"\n[limits]\nrate_burst = \"many\"\n",
            L1,
            ACT,
            "colour = \"red\"\n",
        ]
        .concat();
        let errors = f.parse(&shape).unwrap_err();
        let keys: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("daemon.usr", Some(2)),
                ("limits.rate_burst", Some(4)),
                ("action[1].colour", Some(11))
            ]
        );

        let values = [
            "[limits]\nmax_handshakes = 0\n",
            L1,
            "[[action]]\nname = \"bad name\"\nkey = \"@K1\"\nrun = [\"sh\"]\n",
            "[[action]]\nname = \"b\"\nserve = [\"/bin/true\"]\n",
        ]
        .concat();
        let errors = f.parse(&values).unwrap_err();
        let keys: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("limits.max_handshakes", Some(2)),
                ("action[1].name", Some(6)),
                ("action[1].run", Some(8)),
                ("action[2]", Some(9)),
                ("action[2].ttl", Some(11)),
            ]
        );
    }

    // Goal: errors print as FILE:LINE: KEY: message, leaving out what is
    // unknown.
    #[test]
    fn error_display_format() {
        let f = Fixture::new();
        let e = f.parse(&[L1, ACT, "ttl = 30\n"].concat()).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            format!(
                "{}:7: action[1].ttl: ttl needs stop or serve: nothing would close the gate; add stop = [...] or remove ttl",
                f.dir.join("postern.toml").display()
            )
        );
        let e = f.parse(L1).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            format!(
                "{}: action: no [[action]] table; add at least one, with a name, a secret and run, serve or builtin",
                f.dir.join("postern.toml").display()
            )
        );
    }

    // Goal: load() warns about an ostiary-4 password that Ostiary 4.0's own
    // client could not send (over 63 bytes, or ending in whitespace), and
    // not about one it can.
    #[test]
    fn load_warns_about_passwords_ostclient_cannot_send() {
        let f = Fixture::new();
        for (pw, warned) in [
            ("x".repeat(63), false),
            ("x".repeat(64), true),
            ("trailing ".to_string(), true),
            ("Sample".to_string(), false),
        ] {
            let text = format!("{L4}{AH}password = \"{pw}\"\n{RUN}");
            f.file("pw.toml", &f.text(&text), 0o600);
            let c = load(&f.dir.join("pw.toml")).unwrap();
            let hit = c
                .warnings
                .iter()
                .any(|w| w.contains("cannot send this password"));
            assert_eq!(hit, warned, "{pw:?}: {:?}", c.warnings);
        }
    }

    // Goal: load() warns about inline secrets in a file others can read,
    // stays quiet when the file is private or holds no secret, and names
    // the file when it cannot be read.
    #[test]
    fn load_warns_about_readable_inline_secrets() {
        let f = Fixture::new();
        f.file("inline.toml", &f.text(&[L1, ACT].concat()), 0o644);
        let c = load(&f.dir.join("inline.toml")).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("holds inline secrets"));
        assert!(c.warnings[0].contains(&format!(
            "run `chmod 600 {}`",
            f.dir.join("inline.toml").display()
        )));

        f.file("private.toml", &f.text(&[L1, ACT].concat()), 0o600);
        assert!(load(&f.dir.join("private.toml"))
            .unwrap()
            .warnings
            .is_empty());

        f.file(
            "files.toml",
            &[L1, AH, "key_file = \"a.key\"\n", RUN].concat(),
            0o644,
        );
        assert!(load(&f.dir.join("files.toml")).unwrap().warnings.is_empty());

        let e = load(&f.dir.join("missing.toml")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].file, f.dir.join("missing.toml"));
        assert!(e[0]
            .message
            .contains("cannot read the config file: it does not exist"));
    }

    // Goal: the duration syntax accepts unit pairs and refuses the rest.
    #[test]
    fn duration_syntax() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("15m", Duration::from_secs(900)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m1s500ms", Duration::from_millis(61_500)),
            ("365d", defaults::MAX_DURATION),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "30",
            "s",
            "5 s",
            "1.5s",
            "-1s",
            "5x",
            "5sec",
            "1h 30m",
            "9999999999999s",
            "366d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    // Goal: networks parse, bare addresses are hosts, host bits are
    // refused, and the result matches addresses as IpNet::contains says.
    #[test]
    fn network_syntax() {
        let n = parse_net("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            parse_net("::1").unwrap(),
            IpNet {
                addr: "::1".parse().unwrap(),
                prefix: 128
            }
        );
        assert_eq!(parse_net("0.0.0.0/0").unwrap().prefix, 0);
        assert!(parse_net("2001:db8::/129").is_err());
        assert!(parse_net("10.0.0.1/8").is_err());
        assert!(parse_net("10.0.0.0/x").is_err());
    }

    // Goal: the shipped configs load. conf/*.toml must load with no
    // error at all. The examples in conf/examples/ name programs and key
    // files of a real deployment, which a build machine may lack, so for
    // them the only errors tolerated are a program or a secret file that
    // does not exist.
    #[test]
    fn shipped_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let list = |dir: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            v
        };
        let top = list(&root);
        assert!(!top.is_empty());
        for path in &top {
            if let Err(e) = load(path) {
                let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
                assert!(e.is_empty(), "{}: {shown:#?}", path.display());
            }
        }
        let examples = list(&root.join("examples"));
        assert!(examples.len() >= 6, "{examples:?}");
        for path in &examples {
            let Err(errors) = load(path) else { continue };
            for e in &errors {
                let missing_program = [".run", ".serve", ".stop", ".hold_while"]
                    .iter()
                    .any(|k| e.key.ends_with(k))
                    && e.message.starts_with("program /")
                    && e.message.contains(" does not exist; install it");
                // On a machine laid out for the examples, a test run by a
                // user other than root cannot look inside /etc/postern/.
                let missing_secret = [".key_file", ".next_key_file", ".password_file"]
                    .iter()
                    .any(|k| e.key.ends_with(k))
                    && e.message.contains(" /etc/postern/")
                    && (e.message.contains(" does not exist; create it")
                        || e.message.ends_with(": permission denied"));
                assert!(missing_program || missing_secret, "{}: {e}", path.display());
            }
        }
    }
}
