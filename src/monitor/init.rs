//! `posternd init`: the first action in one command.
//!
//! Writes a fresh key (mode 0600) and, unless it is already there, a
//! minimal, valid config for one harmless action; refuses to overwrite
//! anything, checks the result with the same loader `--check` uses, and
//! prints the exact client commands.
//!
//! The `postern-server` package ships that config, with init's default
//! options, as the conffile `/etc/postern/posternd.toml`
//! ([`PACKAGED_CONFIG`], `pkg/posternd.toml`) but no key. So init accepts
//! an existing config that is byte for byte the one it would write, and
//! then writes only the key. Any other existing config (edited, or written
//! with other options) is refused and nothing is written: init cannot know
//! which keys an edited file wants, and never guesses.
//!
//! The action, `hello` by default, appends one line naming the caller to
//! `hello.log` in the state directory: something an operator can see work
//! without opening anything. The real actions (a gated sshd, a firewall
//! rule) are in `conf/examples/`, installed under `/usr/share/doc`.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config;
use crate::secret::Key;

/// `--dir`: where the config and its `keys/` directory go.
pub const DEFAULT_DIR: &str = "/etc/postern";
/// `--listen`: every IPv4 address, postern's usual port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7001";
/// `--action`: the action's name.
pub const DEFAULT_ACTION: &str = "hello";
/// The network process's user when it exists (else [`config::defaults::USER`]).
pub const SYSTEM_USER: &str = "_postern";
/// The config's file name inside `--dir`.
pub const CONFIG_NAME: &str = "posternd.toml";
/// The config `postern-server` installs as a conffile: what [`config_text`]
/// writes with the default options and [`SYSTEM_USER`] (a unit test keeps
/// the two equal).
pub const PACKAGED_CONFIG: &str = include_str!("../../pkg/posternd.toml");

/// The usage text of `posternd init`.
pub const USAGE: &str =
    "usage: posternd init [--dir DIR] [--listen IP:PORT] [--action NAME] [--state-dir DIR]

  --dir DIR        where posternd.toml and keys/NAME.key go (default /etc/postern)
  --listen IP:PORT the listener (default 0.0.0.0:7001)
  --action NAME    the action's name (default hello)
  --state-dir DIR  the daemon's state directory (default /var/lib/postern)

Writes a fresh key DIR/keys/NAME.key (mode 600) and DIR/posternd.toml, a
config for one action that appends a line to STATE-DIR/NAME.log, and prints
the client commands that trigger it. It never overwrites anything:
  - the key exists: it refuses and writes nothing;
  - the config is missing: it writes the key and the config;
  - the config is exactly what init would write (as the postern-server
    package ships it, for the default options): it writes only the key;
  - the config is anything else (edited, or other options): it refuses
    and writes nothing.";

/// What `posternd init` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Directory of the config; the key goes in `dir/keys/`.
    pub dir: PathBuf,
    /// The listener's address; the port is never 0.
    pub listen: SocketAddr,
    /// The action's name: 1-64 of `A-Z a-z 0-9 . _ -`.
    pub action: String,
    /// `[daemon] state_dir`.
    pub state_dir: PathBuf,
}

/// What went wrong in `posternd init`.
#[derive(Debug)]
pub enum InitError {
    /// A bad command line (exit 64).
    Usage(String),
    /// A file `init` would write is already there; nothing was written.
    Exists(PathBuf),
    /// The config is there but is not what `init` would write (edited, or
    /// written with other options); nothing was written.
    ConfigDiffers(PathBuf),
    /// A path is not valid UTF-8, so it cannot go into the TOML file.
    NotUtf8(PathBuf),
    /// Creating a directory or writing a file failed.
    Io(PathBuf, io::Error),
    /// The OS random generator failed.
    Random(getrandom::Error),
    /// The written config does not load (a bug): every problem, one per line.
    Invalid(String),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Usage(m) => f.write_str(m),
            InitError::Exists(p) => write!(
                f,
                "{} exists; init writes only new files (move it away, or edit it by hand)",
                p.display()
            ),
            InitError::ConfigDiffers(p) => write!(
                f,
                "{} exists and is not what init would write with these options; init writes nothing: \
                 run it with the options that wrote the file, or add a key by hand (`postern keygen`, see man posternd.toml)",
                p.display()
            ),
            InitError::NotUtf8(p) => {
                write!(f, "{} is not valid UTF-8; pick another path", p.display())
            }
            InitError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            InitError::Random(e) => write!(f, "cannot generate a key: {e}"),
            InitError::Invalid(m) => write!(f, "the written config does not load:\n{m}"),
        }
    }
}

impl std::error::Error for InitError {}

fn usage(msg: impl Into<String>) -> InitError {
    InitError::Usage(msg.into())
}

/// Parses the arguments after `init`.
pub fn parse_args(args: &[String]) -> Result<InitOptions, InitError> {
    let mut opts = InitOptions {
        dir: PathBuf::from(DEFAULT_DIR),
        listen: DEFAULT_LISTEN
            .parse()
            .map_err(|_| usage("internal: bad default listen address"))?,
        action: DEFAULT_ACTION.to_owned(),
        state_dir: PathBuf::from(config::defaults::STATE_DIR),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match name {
            "--dir" => opts.dir = absolute(value()?)?,
            "--state-dir" => opts.state_dir = absolute(value()?)?,
            "--listen" => {
                let v = value()?;
                let addr: SocketAddr = v.parse().map_err(|_| {
                    usage(format!(
                        "--listen {v:?}: write IP:PORT, e.g. 0.0.0.0:7001 or [::]:7001"
                    ))
                })?;
                if addr.port() == 0 {
                    return Err(usage(
                        "--listen: the port must not be 0 (clients need to know it)",
                    ));
                }
                opts.listen = addr;
            }
            "--action" => {
                let v = value()?;
                if !valid_name(&v) {
                    return Err(usage(format!(
                        "--action {v:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -"
                    )));
                }
                opts.action = v;
            }
            other => return Err(usage(format!("init: unknown argument {other:?}"))),
        }
    }
    Ok(opts)
}

fn absolute(v: String) -> Result<PathBuf, InitError> {
    let p = PathBuf::from(&v);
    if p.is_absolute() {
        Ok(p)
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| usage(format!("{v}: {e}")))
    }
}

/// An action name as the config accepts it.
fn valid_name(s: &str) -> bool {
    (1..=config::defaults::MAX_ACTION_NAME).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What `init` wrote, for the message it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The config file.
    pub config: PathBuf,
    /// Whether init wrote it (false: it was already there, identical).
    pub config_written: bool,
    /// The key file.
    pub key: PathBuf,
    /// The network process's user written into the config.
    pub user: String,
}

/// The user the config names: `_postern` when the system has it.
pub fn pick_user() -> String {
    match nix::unistd::User::from_name(SYSTEM_USER) {
        Ok(Some(_)) => SYSTEM_USER.to_owned(),
        _ => config::defaults::USER.to_owned(),
    }
}

/// The warning for a network process that runs as the shared `nobody`
/// account on a system that has `_postern` (the package's user), if so.
/// posternd does not refuse it: `nobody` is the default from a clone and
/// in existing configs, which an upgrade must not break.
pub fn shared_user_warning(user: &str) -> Option<String> {
    (user == config::defaults::USER && pick_user() == SYSTEM_USER).then(|| {
        format!(
            "[daemon] user is {user:?}, an account other daemons share; this system has {SYSTEM_USER:?}, the network process's own user: set user = {SYSTEM_USER:?}"
        )
    })
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn utf8(p: &Path) -> Result<&str, InitError> {
    p.to_str()
        .ok_or_else(|| InitError::NotUtf8(p.to_path_buf()))
}

/// The key file's path as the config names it: relative to the config's
/// directory, so that the text does not depend on `--dir`.
fn key_file_in_config(opts: &InitOptions) -> String {
    format!("keys/{}.key", opts.action)
}

/// The config text for `opts`, naming `user` and the key file `key`
/// (relative to the config's directory, or absolute).
pub fn config_text(opts: &InitOptions, user: &str, key: &str) -> Result<String, InitError> {
    let log_line = format!(
        "echo \"$(date -u +%FT%TZ) {} triggered for $1\" >> {}.log",
        opts.action, opts.action
    );
    Ok(format!(
        "# posternd config for one harmless action, as `posternd init` writes it\n\
         # (the postern-server package ships it too). posternd does not start until\n\
         # the key below exists: `posternd init` writes it. Reference: man\n\
         # posternd.toml; check edits with `posternd --config FILE --check`, apply\n\
         # with `systemctl reload posternd`. More actions:\n\
         # /usr/share/doc/postern-server/examples/.\n\
         \n\
         [daemon]\n\
         # The network process runs as this user, chrooted into state_dir/empty.\n\
         user = {user}\n\
         state_dir = {state}\n\
         \n\
         [[listen]]\n\
         address = {listen}\n\
         \n\
         # Appends a line naming the caller to {action}.log in state_dir. No shell\n\
         # between posternd and the command: {{addr}} reaches sh as $1, never as\n\
         # shell text.\n\
         [[action]]\n\
         name = {name}\n\
         key_file = {key}\n\
         run = [\"/bin/sh\", \"-c\", {line}, \"sh\", \"{{addr}}\"]\n\
         cooldown = \"2s\"\n",
        user = toml_str(user),
        state = toml_str(utf8(&opts.state_dir)?),
        listen = toml_str(&opts.listen.to_string()),
        action = opts.action,
        name = toml_str(&opts.action),
        key = toml_str(key),
        line = toml_str(&log_line),
    ))
}

fn mkdir_private(p: &Path) -> Result<(), InitError> {
    if p.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| InitError::Io(p.to_path_buf(), e))
}

/// Writes `data` to a new file with mode 0600; an existing file is an error.
fn write_new(p: &Path, data: &[u8]) -> Result<(), InitError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => InitError::Exists(p.to_path_buf()),
            _ => InitError::Io(p.to_path_buf(), e),
        })?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| InitError::Io(p.to_path_buf(), e))
}

/// Whether the config at `p` must be written: `Ok(true)` when there is
/// none, `Ok(false)` when it is a regular file holding exactly `text`, and
/// [`InitError::ConfigDiffers`] for anything else (another text, a
/// symlink, a directory).
fn config_needed(p: &Path, text: &str) -> Result<bool, InitError> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(InitError::Io(p.to_path_buf(), e)),
        Ok(m) if !m.file_type().is_file() => Err(InitError::ConfigDiffers(p.to_path_buf())),
        Ok(_) => match fs::read(p) {
            Ok(bytes) if bytes == text.as_bytes() => Ok(false),
            Ok(_) => Err(InitError::ConfigDiffers(p.to_path_buf())),
            Err(e) => Err(InitError::Io(p.to_path_buf(), e)),
        },
    }
}

/// Writes the key and, when it is missing, the config for `opts`, the
/// network process running as `user`. Refuses, before writing anything,
/// when the key exists or when an existing config is not byte for byte
/// the one it would write (see the module docs). The config is then
/// loaded as `--check` loads it.
pub fn write(opts: &InitOptions, user: &str) -> Result<Written, InitError> {
    let config_path = opts.dir.join(CONFIG_NAME);
    let keys = opts.dir.join("keys");
    let key_path = keys.join(format!("{}.key", opts.action));
    // The printed client commands name the key's path: exactly, or not at all.
    utf8(&opts.dir)?;
    if fs::symlink_metadata(&key_path).is_ok() {
        return Err(InitError::Exists(key_path));
    }
    let text = config_text(opts, user, &key_file_in_config(opts))?;
    let config_written = config_needed(&config_path, &text)?;
    mkdir_private(&opts.dir)?;
    mkdir_private(&keys)?;
    let key = Key::generate().map_err(InitError::Random)?;
    let mut b64 = key.to_base64();
    b64.push('\n');
    write_new(&key_path, b64.as_bytes())?;
    if config_written {
        write_new(&config_path, text.as_bytes())?;
    }
    if let Err(errors) = config::load(&config_path) {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(InitError::Invalid(lines.join("\n")));
    }
    Ok(Written {
        config: config_path,
        config_written,
        key: key_path,
        user: user.to_owned(),
    })
}

/// This machine's host name, for the command printed for other machines.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "THIS-HOST".to_owned())
}

/// How a client on this machine, and one elsewhere, reaches `listen`.
fn targets(listen: SocketAddr) -> (String, String) {
    let port = listen.port();
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port).to_string(),
            format!("{}:{port}", host_name()),
        ),
        IpAddr::V6(ip) if ip.is_unspecified() => (
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port).to_string(),
            format!("{}:{port}", host_name()),
        ),
        _ => (listen.to_string(), listen.to_string()),
    }
}

/// The message printed after a successful `init`.
pub fn report(opts: &InitOptions, w: &Written) -> String {
    let (here, there) = targets(opts.listen);
    let name = &opts.action;
    let key_name = w
        .key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config_verb = if w.config_written { "wrote" } else { "kept" };
    format!(
        "wrote {key} (mode 600)\n\
         {config_verb} {config} (network process user {user}, listener {listen})\n\
         \n\
         Start posternd:\n\
         \x20 systemctl enable --now posternd\n\
         \n\
         Trigger \"{name}\" from this machine:\n\
         \x20 postern trigger {here} {name} --key-file {key}\n\
         \n\
         From a phone or laptop: copy {key} there by a means you trust, chmod 600 it, then\n\
         \x20 postern trigger {there} {name} --key-file {key_name}\n\
         \n\
         Each trigger appends a line to {log}.\n",
        key = w.key.display(),
        config = w.config.display(),
        user = w.user,
        listen = opts.listen,
        log = opts.state_dir.join(format!("{name}.log")).display(),
    )
}

/// `posternd init ARGS`: exit 0 on success, 1 on failure, 64 on usage errors.
pub fn main(args: &[String]) -> u8 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("posternd: {e}\n{USAGE}");
            return 64;
        }
    };
    match write(&opts, &pick_user()) {
        Ok(w) => {
            print!("{}", report(&opts, &w));
            0
        }
        Err(e) => {
            eprintln!("posternd init: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("postern-init-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn defaults_and_options_parse() {
        // Goal: no arguments give the documented defaults; each option sets its field.
        let d = parse_args(&[]).unwrap();
        assert_eq!(d.dir, PathBuf::from("/etc/postern"));
        assert_eq!(d.listen.to_string(), "0.0.0.0:7001");
        assert_eq!(d.action, "hello");
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/postern"));
        let o = parse_args(&strings(&[
            "--dir=/tmp/x",
            "--listen",
            "[::]:7100",
            "--action",
            "door",
            "--state-dir",
            "/tmp/s",
        ]))
        .unwrap();
        assert_eq!(o.dir, PathBuf::from("/tmp/x"));
        assert_eq!(o.listen.to_string(), "[::]:7100");
        assert_eq!(o.action, "door");
        assert_eq!(o.state_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        // Goal: port 0, bad names, unknown options and missing values are refused.
        for bad in [
            &["--listen", "127.0.0.1:0"][..],
            &["--listen", "localhost:7001"],
            &["--action", "no spaces"],
            &["--action", ""],
            &["--bogus"],
            &["--dir"],
        ] {
            assert!(
                matches!(parse_args(&strings(bad)), Err(InitError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn writes_a_valid_config_and_a_private_key_once() {
        // Goal: the files load as --check loads them, the key is mode 600, and a second run refuses.
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("once");
        let opts = InitOptions {
            dir: d.join("etc"),
            listen: "127.0.0.1:7001".parse().unwrap(),
            action: "hello".into(),
            state_dir: d.join("state"),
        };
        let w = write(&opts, "nobody").unwrap();
        let cfg = config::load(&w.config).unwrap();
        assert_eq!(cfg.actions.len(), 1);
        assert_eq!(cfg.listeners.len(), 1);
        let mode = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&w.key), 0o600);
        assert_eq!(mode(&w.config), 0o600);
        assert_eq!(mode(&opts.dir.join("keys")), 0o700);
        let before = fs::read(&w.key).unwrap_or_default();
        assert!(matches!(write(&opts, "nobody"), Err(InitError::Exists(_))));
        assert_eq!(fs::read(&w.key).unwrap_or_default(), before);
        assert!(w.config_written);
        let text = report(&opts, &w);
        assert!(
            text.contains(&format!("wrote {}", w.config.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "postern trigger 127.0.0.1:7001 hello --key-file {}",
                w.key.display()
            )),
            "{text}"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_existing_key_alone_stops_it() {
        // Goal: with only the key there, nothing is written (no config next to an old key).
        let d = scratch("key");
        let opts = InitOptions {
            dir: d.join("etc"),
            listen: "127.0.0.1:7001".parse().unwrap(),
            action: "hello".into(),
            state_dir: d.join("state"),
        };
        fs::create_dir_all(opts.dir.join("keys")).unwrap();
        fs::write(opts.dir.join("keys/hello.key"), "x").unwrap();
        assert!(matches!(write(&opts, "nobody"), Err(InitError::Exists(_))));
        assert!(!opts.dir.join(CONFIG_NAME).exists());
        let _ = fs::remove_dir_all(&d);
    }

    fn scratch_opts(d: &Path) -> InitOptions {
        InitOptions {
            dir: d.join("etc"),
            listen: DEFAULT_LISTEN.parse().unwrap(),
            action: DEFAULT_ACTION.into(),
            state_dir: d.join("state"),
        }
    }

    /// Puts `text` where `opts`'s config goes, mode 0600, as dpkg would.
    fn put_config(opts: &InitOptions, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&opts.dir).unwrap();
        let p = opts.dir.join(CONFIG_NAME);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn the_packaged_config_is_what_init_writes_by_default() {
        // Goal: pkg/posternd.toml (the conffile) is byte for byte init's default config for _postern.
        let opts = parse_args(&[]).unwrap();
        let text = config_text(&opts, SYSTEM_USER, &key_file_in_config(&opts)).unwrap();
        assert_eq!(PACKAGED_CONFIG, text);
        assert!(PACKAGED_CONFIG.contains("\nkey_file = \"keys/hello.key\"\n"));
        assert!(PACKAGED_CONFIG.contains("\nuser = \"_postern\"\n"));
        // The text does not depend on --dir, so the comparison holds wherever it is.
        let elsewhere = InitOptions {
            dir: PathBuf::from("/srv/postern"),
            ..opts
        };
        assert_eq!(
            config_text(&elsewhere, SYSTEM_USER, &key_file_in_config(&elsewhere)).unwrap(),
            PACKAGED_CONFIG
        );
    }

    #[test]
    fn an_identical_config_gets_only_its_key() {
        // Goal: with the config init would write already there (the packaged conffile), init writes the key alone and keeps the config's bytes.
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("same");
        let opts = scratch_opts(&d);
        let text = config_text(&opts, "nobody", &key_file_in_config(&opts)).unwrap();
        let cfg_path = put_config(&opts, &text);
        let w = write(&opts, "nobody").unwrap();
        assert!(!w.config_written);
        assert_eq!(w.config, cfg_path);
        assert_eq!(fs::read_to_string(&cfg_path).unwrap(), text);
        let meta = fs::metadata(&w.key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(opts.dir.join("keys"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // The config now loads with the new key, as --check loads it.
        let cfg = config::load(&cfg_path).unwrap();
        assert_eq!(cfg.actions.len(), 1);
        let out = report(&opts, &w);
        assert!(
            out.contains(&format!("kept {}", cfg_path.display())),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "  postern trigger 127.0.0.1:7001 hello --key-file {}\n",
                w.key.display()
            )),
            "{out}"
        );
        // A second run refuses: the key is there now, and stays as it was.
        let key = fs::read(&w.key).unwrap();
        assert!(matches!(write(&opts, "nobody"), Err(InitError::Exists(p)) if p == w.key));
        assert_eq!(fs::read(&w.key).unwrap(), key);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_config_init_did_not_write_stops_it() {
        // Goal: an edited config, one for other options, or a symlink to the right text: refused, nothing written, the config untouched.
        let d = scratch("differs");
        let opts = scratch_opts(&d);
        let text = config_text(&opts, "nobody", &key_file_in_config(&opts)).unwrap();
        let other_port = InitOptions {
            listen: "127.0.0.1:7101".parse().unwrap(),
            ..opts.clone()
        };
        let other_action = InitOptions {
            action: "door".into(),
            ..opts.clone()
        };
        let edited = text.replace("cooldown = \"2s\"", "cooldown = \"5s\"");
        assert_ne!(edited, text);
        for (what, o, content, user) in [
            ("edited", &opts, edited.as_str(), "nobody"),
            (
                "a comment added",
                &opts,
                &*format!("{text}# mine\n"),
                "nobody",
            ),
            ("another user", &opts, &*text, SYSTEM_USER),
            ("another --listen", &other_port, &*text, "nobody"),
            ("another --action", &other_action, &*text, "nobody"),
        ] {
            let cfg_path = put_config(&opts, content);
            let r = write(o, user);
            assert!(
                matches!(&r, Err(InitError::ConfigDiffers(p)) if *p == cfg_path),
                "{what}: {r:?}"
            );
            assert_eq!(fs::read_to_string(&cfg_path).unwrap(), content, "{what}");
            assert!(!opts.dir.join("keys").exists(), "{what}: keys/ made");
        }
        // A symlink is not the file init writes, even to the same text.
        let real = d.join("real.toml");
        fs::write(&real, &text).unwrap();
        let cfg_path = opts.dir.join(CONFIG_NAME);
        fs::remove_file(&cfg_path).unwrap();
        std::os::unix::fs::symlink(&real, &cfg_path).unwrap();
        assert!(matches!(
            write(&opts, "nobody"),
            Err(InitError::ConfigDiffers(_))
        ));
        assert!(!opts.dir.join("keys").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_existing_key_stops_it_even_with_the_packaged_config() {
        // Goal: the key is never overwritten, whatever the config.
        let d = scratch("keyandcfg");
        let opts = scratch_opts(&d);
        let text = config_text(&opts, "nobody", &key_file_in_config(&opts)).unwrap();
        let cfg_path = put_config(&opts, &text);
        fs::create_dir_all(opts.dir.join("keys")).unwrap();
        let key_path = opts.dir.join("keys/hello.key");
        fs::write(&key_path, "old").unwrap();
        assert!(matches!(write(&opts, "nobody"), Err(InitError::Exists(p)) if p == key_path));
        assert_eq!(fs::read_to_string(&key_path).unwrap(), "old");
        assert_eq!(fs::read_to_string(&cfg_path).unwrap(), text);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn toml_strings_escape() {
        // Goal: quotes, backslashes and control characters cannot break out of a string.
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
