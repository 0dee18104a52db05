//! The inventory, `hosts.toml`: hosts, their actions and key sources, and
//! groups of hosts.
//!
//! ```toml
//! [defaults]                      # optional: port, protocol, timeout, proxy, master_file, next_master_file
//! port = 7001
//!
//! [hosts.web-17]
//! address = "192.0.2.17"          # IP address or host name
//! port = 7001                     # optional
//! protocol = "postern-2"          # optional: postern-2 or ostiary-4
//! timeout = 10                    # optional, seconds
//! proxy = "socks5://127.0.0.1:1080"   # optional; "none" overrides [defaults]
//! master_file = "~/.config/postern/fleet.key"  # optional
//! next_master_file = "~/.config/postern/fleet.next.key"  # optional: a rotation's new master
//!
//! [hosts.web-17.actions.console]
//! key_file = "~/.config/postern/keys/web-17-console.key"
//! # or: key_env = "VAR" | passphrase = true | master = true | password_file = "..."
//! next_key_file = "~/.config/postern/keys/web-17-console.next.key"  # optional, with key_file
//! assert_addr = "203.0.113.5"     # optional, postern-2 only
//!
//! [groups]
//! rack-4 = ["web-17", "web-18"]
//! ```
//!
//! Parse, don't validate: the TOML goes into raw structs that refuse
//! unknown keys, then into typed values (a [`Target`], a [`KeySource`] with
//! an absolute path, a [`Duration`]). Every default is a named constant or
//! comes from `[defaults]`; every error names the file, the key and the fix.
//!
//! Rotation: a key file or master may have a successor (`next_key_file`,
//! `next_master_file`). The client uses the newest key it has: the
//! successor when its file exists, else the current one (an operator who
//! has not received the new key yet keeps working while the hosts still
//! accept the old one). See docs/rotation.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::KeySource;
use crate::proxy::Proxy;
use crate::target::{Target, DEFAULT_PORT};
use crate::trigger::Protocol;

/// Largest inventory file read, in bytes.
pub const MAX_FILE_SIZE: u64 = 1 << 20;
/// Longest host, group or action name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest timeout accepted, in seconds (one day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Where the inventory is looked for without `--inventory`:
/// `$XDG_CONFIG_HOME/postern/hosts.toml`, else
/// `$HOME/.config/postern/hosts.toml`. `None` if neither variable is set.
pub fn default_path() -> Option<PathBuf> {
    let nonempty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = nonempty("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("postern/hosts.toml"));
    }
    nonempty("HOME").map(|home| home.join(".config/postern/hosts.toml"))
}

/// Whether a name is usable for a host, group or action: 1 to 64 of
/// letters, digits, `-`, `_` and `.`, not starting with `-` or `@`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    port: Option<u16>,
    protocol: Option<String>,
    timeout: Option<u64>,
    proxy: Option<String>,
    master_file: Option<String>,
    next_master_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    address: String,
    port: Option<u16>,
    protocol: Option<String>,
    timeout: Option<u64>,
    proxy: Option<String>,
    master_file: Option<String>,
    next_master_file: Option<String>,
    #[serde(default)]
    actions: BTreeMap<String, RawAction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    key_file: Option<String>,
    next_key_file: Option<String>,
    key_env: Option<String>,
    #[serde(default)]
    passphrase: bool,
    #[serde(default)]
    master: bool,
    password_file: Option<String>,
    assert_addr: Option<String>,
}

/// A whole, valid inventory.
#[derive(Debug)]
pub struct Inventory {
    path: PathBuf,
    hosts: BTreeMap<String, Host>,
    groups: BTreeMap<String, Vec<String>>,
}

/// One host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The inventory name; also the host name for key derivation.
    pub name: String,
    /// Where it listens.
    pub target: Target,
    /// What it speaks.
    pub protocol: Protocol,
    /// Per-phase timeout, if set here or in `[defaults]`.
    pub timeout: Option<Duration>,
    /// The proxy to reach it through.
    pub proxy: Option<Proxy>,
    /// Its actions, by name (at least one).
    pub actions: BTreeMap<String, Action>,
}

/// One action on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Where its key (or password) comes from; paths are absolute.
    pub source: KeySource,
    /// Its successor during a rotation: a key file or master of the same
    /// kind (`next_key_file`, `next_master_file`). See [`Action::newest`].
    pub next: Option<KeySource>,
    /// The address to assert (postern-2).
    pub assert_addr: Option<IpAddr>,
}

impl Action {
    /// The newest key source the operator has: the successor if its file
    /// exists (or cannot be looked at, so that loading it reports why),
    /// else the current one.
    pub fn newest(&self) -> &KeySource {
        crate::keys::newest(&self.source, self.next.as_ref())
    }
}

/// Why the inventory could not be used.
#[derive(Debug)]
pub enum InventoryError {
    /// The file could not be read.
    Read {
        /// The file.
        file: PathBuf,
        /// The system's message.
        error: io::Error,
    },
    /// The file is larger than [`MAX_FILE_SIZE`].
    TooLarge {
        /// The file.
        file: PathBuf,
    },
    /// The file is not valid TOML, has an unknown key or a wrongly typed value.
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message (with line and column).
        detail: String,
    },
    /// A value is well-formed TOML but not usable.
    Invalid {
        /// The file.
        file: PathBuf,
        /// The dotted key, e.g. `hosts.web-17.actions.console`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InventoryError::Read { file, error } => {
                write!(f, "cannot read inventory {}: {error}", file.display())
            }
            InventoryError::TooLarge { file } => write!(
                f,
                "inventory {} is larger than {} KiB",
                file.display(),
                MAX_FILE_SIZE / 1024
            ),
            InventoryError::Syntax { file, detail } => {
                write!(f, "inventory {}: {}", file.display(), detail.trim_end())
            }
            InventoryError::Invalid { file, key, problem } => {
                write!(f, "inventory {}: {key}: {problem}", file.display())
            }
        }
    }
}

impl std::error::Error for InventoryError {}

impl Inventory {
    /// Reads and validates the inventory at `path`.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let read_err = |error| InventoryError::Read {
            file: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_FILE_SIZE + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE_SIZE {
            return Err(InventoryError::TooLarge {
                file: path.to_owned(),
            });
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        Inventory::parse(&text, path, home.as_deref())
    }

    /// Validates inventory text. `path` names the file in errors and
    /// anchors relative paths; `home` expands `~/`.
    pub fn parse(
        text: &str,
        path: &Path,
        home: Option<&Path>,
    ) -> Result<Inventory, InventoryError> {
        let raw: RawInventory = toml::from_str(text).map_err(|e| InventoryError::Syntax {
            file: path.to_owned(),
            detail: e.to_string(),
        })?;
        let cx = Cx {
            file: path,
            base: path.parent().unwrap_or(Path::new(".")),
            home,
        };
        let defaults = cx.defaults(raw.defaults)?;
        let mut hosts = BTreeMap::new();
        for (name, h) in raw.hosts {
            let host = cx.host(&name, h, &defaults)?;
            hosts.insert(name, host);
        }
        let mut groups = BTreeMap::new();
        for (name, members) in raw.groups {
            let key = format!("groups.{name}");
            if !is_valid_name(&name) {
                return Err(cx.invalid(&key, bad_name("group")));
            }
            if members.is_empty() {
                return Err(cx.invalid(&key, "empty group; list at least one host".to_owned()));
            }
            // A set, not a scan of the members before: groups of
            // thousands of hosts are checked in n log n.
            let mut seen = BTreeSet::new();
            for m in &members {
                if !hosts.contains_key(m) {
                    return Err(cx.invalid(
                        &key,
                        format!("unknown host {m:?}; add [hosts.{m}] or remove it"),
                    ));
                }
                if !seen.insert(m.as_str()) {
                    return Err(cx.invalid(&key, format!("host {m:?} is listed twice")));
                }
            }
            groups.insert(name, members);
        }
        Ok(Inventory {
            path: path.to_owned(),
            hosts,
            groups,
        })
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    /// A group's members, in the order listed.
    pub fn group(&self, name: &str) -> Option<&[String]> {
        self.groups.get(name).map(Vec::as_slice)
    }

    /// Every host name, sorted (for shell completion).
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// Every group name, sorted (for shell completion).
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }
}

/// `[defaults]`, typed.
struct Defaults {
    port: u16,
    protocol: Protocol,
    timeout: Option<Duration>,
    proxy: Option<Proxy>,
    master_file: Option<PathBuf>,
    next_master_file: Option<PathBuf>,
}

/// What validation needs to know about the file.
struct Cx<'a> {
    file: &'a Path,
    base: &'a Path,
    home: Option<&'a Path>,
}

fn bad_name(what: &str) -> String {
    format!("bad {what} name; use up to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'")
}

impl Cx<'_> {
    fn invalid(&self, key: &str, problem: String) -> InventoryError {
        InventoryError::Invalid {
            file: self.file.to_owned(),
            key: key.to_owned(),
            problem,
        }
    }

    fn port(&self, key: &str, port: Option<u16>) -> Result<Option<u16>, InventoryError> {
        match port {
            Some(0) => Err(self.invalid(key, "port must be from 1 to 65535".to_owned())),
            p => Ok(p),
        }
    }

    fn protocol(
        &self,
        key: &str,
        text: Option<String>,
    ) -> Result<Option<Protocol>, InventoryError> {
        text.map(|t| {
            Protocol::parse(&t).ok_or_else(|| {
                self.invalid(
                    key,
                    format!("unknown protocol {t:?}; use \"postern-2\" or \"ostiary-4\""),
                )
            })
        })
        .transpose()
    }

    fn timeout(&self, key: &str, secs: Option<u64>) -> Result<Option<Duration>, InventoryError> {
        match secs {
            Some(s) if s == 0 || s > MAX_TIMEOUT_SECS => Err(self.invalid(
                key,
                format!("timeout must be from 1 to {MAX_TIMEOUT_SECS} seconds"),
            )),
            s => Ok(s.map(Duration::from_secs)),
        }
    }

    /// `None` for absent, `Some(None)` for `"none"`.
    fn proxy(
        &self,
        key: &str,
        url: Option<String>,
    ) -> Result<Option<Option<Proxy>>, InventoryError> {
        match url.as_deref() {
            None => Ok(None),
            Some("none") => Ok(Some(None)),
            Some(u) => Proxy::parse(u)
                .map(|p| Some(Some(p)))
                .map_err(|e| self.invalid(key, e.to_string())),
        }
    }

    /// `~/x` is under `home`; a relative path is next to the inventory.
    fn path(&self, key: &str, text: &str) -> Result<PathBuf, InventoryError> {
        if text.is_empty() {
            return Err(self.invalid(key, "empty path".to_owned()));
        }
        if let Some(rest) = text.strip_prefix("~/") {
            return match self.home {
                Some(home) => Ok(home.join(rest)),
                None => {
                    Err(self.invalid(key, "path starts with ~/ but HOME is not set".to_owned()))
                }
            };
        }
        let p = Path::new(text);
        if p.is_absolute() {
            Ok(p.to_owned())
        } else {
            Ok(absolute(&self.base.join(p)))
        }
    }

    fn defaults(&self, raw: RawDefaults) -> Result<Defaults, InventoryError> {
        Ok(Defaults {
            port: self
                .port("defaults.port", raw.port)?
                .unwrap_or(DEFAULT_PORT),
            protocol: self
                .protocol("defaults.protocol", raw.protocol)?
                .unwrap_or(Protocol::Postern2),
            timeout: self.timeout("defaults.timeout", raw.timeout)?,
            proxy: self.proxy("defaults.proxy", raw.proxy)?.flatten(),
            master_file: raw
                .master_file
                .map(|m| self.path("defaults.master_file", &m))
                .transpose()?,
            next_master_file: raw
                .next_master_file
                .map(|m| self.path("defaults.next_master_file", &m))
                .transpose()?,
        })
    }

    fn host(&self, name: &str, raw: RawHost, d: &Defaults) -> Result<Host, InventoryError> {
        let key = format!("hosts.{name}");
        if !is_valid_name(name) {
            return Err(self.invalid(&key, bad_name("host")));
        }
        let port = self
            .port(&format!("{key}.port"), raw.port)?
            .unwrap_or(d.port);
        let target = Target::new(&raw.address, port)
            .map_err(|e| self.invalid(&format!("{key}.address"), e.to_string()))?;
        let protocol = self
            .protocol(&format!("{key}.protocol"), raw.protocol)?
            .unwrap_or(d.protocol);
        let timeout = self
            .timeout(&format!("{key}.timeout"), raw.timeout)?
            .or(d.timeout);
        let proxy = match self.proxy(&format!("{key}.proxy"), raw.proxy)? {
            Some(p) => p,
            None => d.proxy.clone(),
        };
        let master_file = match raw.master_file {
            Some(m) => Some(self.path(&format!("{key}.master_file"), &m)?),
            None => d.master_file.clone(),
        };
        let next_master_file = match raw.next_master_file {
            Some(m) => Some(self.path(&format!("{key}.next_master_file"), &m)?),
            None => d.next_master_file.clone(),
        };
        if raw.actions.is_empty() {
            return Err(self.invalid(&key, format!("no actions; add [hosts.{name}.actions.NAME]")));
        }
        let mut actions = BTreeMap::new();
        for (action_name, a) in raw.actions {
            let akey = format!("{key}.actions.{action_name}");
            if !is_valid_name(&action_name) {
                return Err(self.invalid(&akey, bad_name("action")));
            }
            let masters = (master_file.as_deref(), next_master_file.as_deref());
            let action = self.action(&akey, a, protocol, masters)?;
            actions.insert(action_name, action);
        }
        Ok(Host {
            name: name.to_owned(),
            target,
            protocol,
            timeout,
            proxy,
            actions,
        })
    }

    fn action(
        &self,
        key: &str,
        raw: RawAction,
        protocol: Protocol,
        (master_file, next_master_file): (Option<&Path>, Option<&Path>),
    ) -> Result<Action, InventoryError> {
        let mut sources = Vec::new();
        if let Some(f) = &raw.key_file {
            sources.push(KeySource::File(self.path(&format!("{key}.key_file"), f)?));
        }
        if let Some(v) = &raw.key_env {
            if v.is_empty() || v.contains(['=', '\0']) {
                return Err(
                    self.invalid(&format!("{key}.key_env"), "not a variable name".to_owned())
                );
            }
            sources.push(KeySource::Env(v.clone()));
        }
        if raw.passphrase {
            sources.push(KeySource::Passphrase);
        }
        if raw.master {
            let m = master_file.ok_or_else(|| {
                self.invalid(
                    &format!("{key}.master"),
                    "no master_file in this host or in [defaults]; add one".to_owned(),
                )
            })?;
            sources.push(KeySource::Master(m.to_owned()));
        }
        if let Some(f) = &raw.password_file {
            sources.push(KeySource::PasswordFile(
                self.path(&format!("{key}.password_file"), f)?,
            ));
        }
        let source = match sources.len() {
            1 => sources.remove(0),
            0 => {
                return Err(self.invalid(
                    key,
                    "no key source; set one of key_file, key_env, passphrase = true, master = true, password_file"
                        .to_owned(),
                ))
            }
            _ => {
                return Err(self.invalid(
                    key,
                    "more than one key source; keep one of key_file, key_env, passphrase, master, password_file"
                        .to_owned(),
                ))
            }
        };
        match (protocol, &source) {
            (Protocol::Postern2, KeySource::PasswordFile(_)) => {
                return Err(self.invalid(
                    key,
                    "password_file is for ostiary-4 hosts; postern-2 uses key_file, key_env, passphrase or master"
                        .to_owned(),
                ))
            }
            (Protocol::Ostiary4, KeySource::File(_) | KeySource::Passphrase | KeySource::Master(_)) => {
                return Err(self.invalid(key, "ostiary-4 hosts take password_file or key_env".to_owned()))
            }
            _ => {}
        }
        let assert_addr = match raw.assert_addr {
            None => None,
            Some(_) if protocol == Protocol::Ostiary4 => {
                return Err(self.invalid(
                    &format!("{key}.assert_addr"),
                    "ostiary-4 cannot assert an address; remove it".to_owned(),
                ))
            }
            Some(a) => {
                let ip = a.parse::<IpAddr>().map_err(|_| {
                    self.invalid(
                        &format!("{key}.assert_addr"),
                        format!("{a:?} is not an IP address"),
                    )
                })?;
                if !postern::wire::asserted_allowed(ip) {
                    return Err(self.invalid(
                        &format!("{key}.assert_addr"),
                        format!("{ip} cannot be acted for (unspecified, broadcast, multicast, link-local or IPv4-compatible); give the address the action is for"),
                    ));
                }
                Some(ip)
            }
        };
        let next = match (&source, &raw.next_key_file) {
            (KeySource::File(_), Some(f)) => Some(KeySource::File(
                self.path(&format!("{key}.next_key_file"), f)?,
            )),
            (_, Some(_)) => return Err(self.invalid(
                &format!("{key}.next_key_file"),
                "a successor of a key file; it needs key_file (for a master, set next_master_file)"
                    .to_owned(),
            )),
            (KeySource::Master(_), None) => {
                next_master_file.map(|m| KeySource::Master(m.to_owned()))
            }
            (_, None) => None,
        };
        Ok(Action {
            source,
            next,
            assert_addr,
        })
    }
}

/// Anchors a relative path at the current directory (best effort: if the
/// current directory is unknown the path stays relative).
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(p),
        Err(_) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(
            text,
            Path::new("/etc/postern/hosts.toml"),
            Some(Path::new("/home/op")),
        )
    }

    fn problem(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const FULL: &str = r#"
[defaults]
port = 7002
timeout = 10
proxy = "socks5://127.0.0.1:1080"
master_file = "~/.config/postern/fleet.key"

[hosts.web-17]
address = "192.0.2.17"
[hosts.web-17.actions.console]
key_file = "keys/web-17.key"
assert_addr = "203.0.113.5"
[hosts.web-17.actions.power]
master = true

[hosts.web-18]
address = "web-18.example"
port = 7001
proxy = "none"
timeout = 3
[hosts.web-18.actions.console]
passphrase = true

[hosts.legacy]
address = "2001:db8::7"
protocol = "ostiary-4"
[hosts.legacy.actions.open]
password_file = "/etc/postern/legacy.pw"

[groups]
rack-4 = ["web-18", "web-17"]
"#;

    // Goal: a full inventory parses into typed hosts, with defaults
    // applied, paths made absolute and group order kept.
    #[test]
    fn parses_full_inventory() {
        let inv = parse(FULL).unwrap();
        let w17 = inv.host("web-17").unwrap();
        assert_eq!(w17.target.to_string(), "192.0.2.17:7002");
        assert_eq!(w17.protocol, Protocol::Postern2);
        assert_eq!(w17.timeout, Some(Duration::from_secs(10)));
        assert_eq!(
            w17.proxy.as_ref().unwrap().to_string(),
            "socks5://127.0.0.1:1080"
        );
        assert_eq!(
            w17.actions["console"],
            Action {
                source: KeySource::File("/etc/postern/keys/web-17.key".into()),
                next: None,
                assert_addr: Some("203.0.113.5".parse().unwrap()),
            }
        );
        assert_eq!(
            w17.actions["power"].source,
            KeySource::Master("/home/op/.config/postern/fleet.key".into())
        );
        let w18 = inv.host("web-18").unwrap();
        assert_eq!(w18.target.to_string(), "web-18.example:7001");
        assert!(w18.proxy.is_none());
        assert_eq!(w18.timeout, Some(Duration::from_secs(3)));
        assert_eq!(w18.actions["console"].source, KeySource::Passphrase);
        let legacy = inv.host("legacy").unwrap();
        assert_eq!(legacy.protocol, Protocol::Ostiary4);
        assert_eq!(legacy.target.to_string(), "[2001:db8::7]:7002");
        assert_eq!(inv.group("rack-4").unwrap(), ["web-18", "web-17"]);
        assert!(inv.group("rack-5").is_none());
        assert!(inv.host("web-19").is_none());
    }

    // Goal: during a rotation the client uses the newest key it has: the
    // successor (a key file, or a master from next_master_file, per host
    // or in [defaults]) when its file exists, else the current one.
    #[test]
    fn rotation_uses_the_newest_key_present() {
        let dir = std::env::temp_dir().join(format!("postern-inv-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let text = format!(
            "[defaults]\nmaster_file = \"{d}/old.master\"\nnext_master_file = \"{d}/new.master\"\n\
             [hosts.a]\naddress = \"192.0.2.1\"\n[hosts.a.actions.fleet]\nmaster = true\n\
             [hosts.a.actions.own]\nkey_file = \"{d}/a.key\"\nnext_key_file = \"{d}/a.next.key\"\n\
             [hosts.b]\naddress = \"192.0.2.2\"\nnext_master_file = \"{d}/b.master\"\n[hosts.b.actions.fleet]\nmaster = true\n\
             [hosts.c]\naddress = \"192.0.2.3\"\n[hosts.c.actions.plain]\nkey_file = \"{d}/c.key\"\n"
        );
        let inv = parse(&text).unwrap();
        let a = &inv.host("a").unwrap().actions;
        let b = &inv.host("b").unwrap().actions;
        let c = &inv.host("c").unwrap().actions;
        let master = |n: &str| KeySource::Master(dir.join(n));
        let file = |n: &str| KeySource::File(dir.join(n));
        assert_eq!(a["fleet"].next, Some(master("new.master")));
        assert_eq!(b["fleet"].next, Some(master("b.master")));
        assert_eq!(c["plain"].next, None);
        // No successor on disk yet: the current keys.
        assert_eq!(*a["fleet"].newest(), master("old.master"));
        assert_eq!(*a["own"].newest(), file("a.key"));
        assert_eq!(*c["plain"].newest(), file("c.key"));
        // The operator received them: the successors.
        for n in ["new.master", "a.next.key"] {
            std::fs::write(dir.join(n), "x").unwrap();
        }
        assert_eq!(*a["fleet"].newest(), master("new.master"));
        assert_eq!(*a["own"].newest(), file("a.next.key"));
        assert_eq!(*b["fleet"].newest(), master("old.master"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Goal: an empty file is a valid, empty inventory.
    #[test]
    fn empty_inventory() {
        let inv = parse("").unwrap();
        assert!(inv.host("x").is_none());
    }

    // Goal: each kind of mistake is refused with the file, the key and a
    // fix in the message.
    #[test]
    fn refuses_invalid_inventories() {
        let host = "[hosts.h]\naddress = \"192.0.2.1\"\n";
        let cases: &[(String, &str)] = &[
            ("[hosts.h]\naddress = \"192.0.2.1\"\ncolour = 1\n".to_owned(), "unknown field `colour`"),
            ("[defaults]\nretries = 3\n".to_owned(), "unknown field `retries`"),
            (format!("{host}[hosts.h.actions.a]\nkey_fil = \"k\"\n"), "unknown field `key_fil`"),
            ("[hosts.h]\nport = 1\n".to_owned(), "missing field `address`"),
            (format!("{host}[hosts.h.actions.a]\n"), "hosts.h.actions.a: no key source"),
            (
                format!("{host}[hosts.h.actions.a]\nkey_file = \"k\"\npassphrase = true\n"),
                "more than one key source",
            ),
            (host.to_owned(), "hosts.h: no actions; add [hosts.h.actions.NAME]"),
            (format!("{host}[hosts.h.actions.a]\nmaster = true\n"), "hosts.h.actions.a.master: no master_file"),
            (
                format!("{host}[hosts.h.actions.a]\npassphrase = true\nnext_key_file = \"k2\"\n"),
                "hosts.h.actions.a.next_key_file: a successor of a key file; it needs key_file",
            ),
            (
                format!("{host}protocol = \"ostiary-4\"\n[hosts.h.actions.a]\nkey_file = \"k\"\n"),
                "ostiary-4 hosts take password_file or key_env",
            ),
            (
                format!("{host}[hosts.h.actions.a]\npassword_file = \"p\"\n"),
                "password_file is for ostiary-4 hosts",
            ),
            (format!("{host}protocol = \"ssh\"\n[hosts.h.actions.a]\npassphrase = true\n"), "unknown protocol \"ssh\""),
            (format!("{host}port = 0\n[hosts.h.actions.a]\npassphrase = true\n"), "hosts.h.port: port must be"),
            (format!("{host}timeout = 0\n[hosts.h.actions.a]\npassphrase = true\n"), "hosts.h.timeout"),
            (
                "[hosts.h]\naddress = \"a b\"\n[hosts.h.actions.a]\npassphrase = true\n".to_owned(),
                "hosts.h.address",
            ),
            (
                format!("{host}proxy = \"ftp://x\"\n[hosts.h.actions.a]\npassphrase = true\n"),
                "hosts.h.proxy: proxy must be",
            ),
            (
                format!("{host}[hosts.h.actions.a]\npassphrase = true\nassert_addr = \"here\"\n"),
                "hosts.h.actions.a.assert_addr: \"here\" is not an IP address",
            ),
            (
                format!("{host}[hosts.h.actions.a]\npassphrase = true\n[groups]\ng = [\"h\", \"x\"]\n"),
                "groups.g: unknown host \"x\"",
            ),
            (
                format!("{host}[hosts.h.actions.a]\npassphrase = true\n[groups]\ng = [\"h\", \"h\"]\n"),
                "listed twice",
            ),
            (format!("{host}[hosts.h.actions.a]\npassphrase = true\n[groups]\ng = []\n"), "empty group"),
            (
                "[hosts.\"@x\"]\naddress = \"192.0.2.1\"\n[hosts.\"@x\".actions.a]\npassphrase = true\n".to_owned(),
                "bad host name",
            ),
            ("[hosts.h\naddress = 1\n".to_owned(), "inventory /etc/postern/hosts.toml: TOML parse error"),
        ];
        for (text, want) in cases {
            let msg = problem(text);
            assert!(msg.contains(want), "{text:?}\n  got: {msg}\n  want: {want}");
            assert!(
                msg.starts_with("inventory /etc/postern/hosts.toml: "),
                "{msg}"
            );
        }
    }

    // Goal: names are letters, digits, '-', '_' and '.', and never start
    // with '-' or '@' (so they cannot look like options or groups).
    #[test]
    fn names() {
        for ok in ["web-17", "a", "x.y_z", &"n".repeat(MAX_NAME_LEN)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", "@g", "a b", "a/b", &"n".repeat(MAX_NAME_LEN + 1)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
