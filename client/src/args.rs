//! The command line, parsed by hand into a typed [`Command`].
//!
//! Options take their value as the next argument or after `=`
//! (`--timeout 5`, `--timeout=5`); `--` ends the options. Every mistake is
//! a [`UsageError`] (exit 64). Secrets are never arguments: there is no
//! option that takes a key, a password or a passphrase as its value.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::inventory::{is_valid_name, MAX_TIMEOUT_SECS};
use crate::keys::KeySource;
use crate::proxy::Proxy;
use crate::trigger::Protocol;

/// Connections open at once in a group unless `--parallel` says otherwise:
/// enough that a group of 4,096 hosts costs at most one timeout.
pub const DEFAULT_PARALLEL: usize = 4096;
/// `postern close HOST GATE` uses the closing action `GATE` + this
/// (`sshd.close`) unless `--action` names it: its key is looked up, or
/// derived, under that name.
pub const CLOSE_SUFFIX: &str = ".close";
/// Largest `--parallel` accepted.
pub const MAX_PARALLEL: usize = 65_536;

/// The full `--help` text.
pub const HELP: &str = "\
postern: trigger one preconfigured action on a posternd server.

Usage:
  postern trigger HOST[:PORT] [ACTION] [options]   one server, by address
  postern trigger NAME ACTION [options]            one inventory host
  postern trigger @GROUP ACTION [options]          every host of an inventory group
  postern close HOST[:PORT]|NAME|@GROUP GATE [options]
                                                   close gate GATE now, with the key of
                                                   its closing action GATE.close
  postern keygen                                   print a fresh base64 key
  postern key from-passphrase --host NAME --action NAME
                                                   print the key a passphrase derives
  postern key derive --master FILE --host NAME --action NAME
                                                   print the key a fleet master derives
  postern --help | --version

Key sources for trigger (choose one; default: prompt for the base64 key):
  --key-file FILE        base64 key in FILE (must be chmod 600)
  --key-env VAR          base64 key in environment variable VAR
  --passphrase           prompt for a passphrase; needs --action (and --host-name)
  --master FILE          derive from the fleet master key in FILE; needs --action
  --password-file FILE   ostiary-4 password in FILE
  --next-key-file FILE   with --key-file: its successor, used instead once FILE exists
  --next-master FILE     with --master: the new master, used instead once FILE exists
  --action NAME          action name for derivation (also the 2nd positional)
  --host-name NAME       host name for derivation (default: HOST as given)

Close takes every trigger option; --action names the closing action when it
is not GATE.close. A gate open per address closes for the asserted address
(--assert-addr), else the connection's source. Exit 0 when the server says
closed or not open; 5 when it says started or already active (the key was
an opening action's, so the gate is open).

Trigger options:
  --protocol P           postern-2 (default) or ostiary-4
  --assert-addr ADDR     ask the server to act for ADDR (postern-2)
  --timeout SECS         bound for the connect and for the challenge, each (default 30)
  --ack-timeout SECS     how long to wait for the acknowledgement (default 300, the
                         protocol's ack deadline: the server may be running the action)
  --proxy URL            http://HOST:PORT (CONNECT) or socks5://HOST:PORT
  --inventory FILE       inventory (default $XDG_CONFIG_HOME/postern/hosts.toml,
                         else ~/.config/postern/hosts.toml)
  --parallel N           connections open at once in a group (default 4096, at
                         most the open-file limit allows)
  --json                 one JSON object per host (and a summary for groups)

Prompts read the terminal with echo off, or one line of standard input when
standard input is not a terminal.

Exit codes: 0 accepted (started, already active; ostiary-4: reply sent),
1 local error (key, inventory, terminal), 2 no acknowledgement,
3 network error or timeout, 4 acknowledged but refused,
5 acknowledged but failed to start, 64 usage error.
A group exits with the highest code among its hosts.
";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print [`HELP`].
    Help,
    /// Print the version.
    Version,
    /// Print a fresh key.
    Keygen,
    /// Print the key derived from a passphrase.
    KeyFromPassphrase {
        /// Host name for derivation.
        host: String,
        /// Action name for derivation.
        action: String,
    },
    /// Print the key derived from a fleet master.
    KeyDerive {
        /// The master key file.
        master: PathBuf,
        /// Host name for derivation.
        host: String,
        /// Action name for derivation.
        action: String,
    },
    /// Trigger one host or a group.
    Trigger(TriggerArgs),
    /// `postern close`: trigger the closing action of gate `gate`
    /// (`args.action`, by default `GATE.close`).
    Close {
        /// The gate to close, as the user named it.
        gate: String,
        /// The trigger, with the closing action's name as its action.
        args: TriggerArgs,
    },
    /// `postern complete ...`: words for the shell completions (see `complete.rs`).
    Complete(Vec<String>),
}

/// `postern trigger`, as given. Whether the target is an address or an
/// inventory name is decided later, once the inventory is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerArgs {
    /// `HOST[:PORT]`, an inventory host name, or `@GROUP`.
    pub target: String,
    /// The action (second positional or `--action`).
    pub action: Option<String>,
    /// `--key-file`, `--key-env`, `--passphrase`, `--master` or `--password-file`.
    pub source: Option<KeySource>,
    /// `--next-key-file` or `--next-master`: the source's successor during
    /// a rotation ([`crate::keys::newest`] picks between them).
    pub next: Option<KeySource>,
    /// `--host-name`.
    pub host_name: Option<String>,
    /// `--assert-addr`.
    pub assert_addr: Option<IpAddr>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--ack-timeout`.
    pub ack_timeout: Option<Duration>,
    /// `--protocol`.
    pub protocol: Option<Protocol>,
    /// `--proxy`.
    pub proxy: Option<Proxy>,
    /// `--json`.
    pub json: bool,
    /// `--inventory`.
    pub inventory: Option<PathBuf>,
    /// `--parallel`.
    pub parallel: Option<NonZeroUsize>,
}

/// A mistake on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// One command-line token.
enum Token {
    /// `--name` or `--name=value` (inline value kept), or `-h`/`-V`.
    Opt(String, Option<String>),
    /// Anything else.
    Positional(String),
}

/// Splits arguments into options and positionals, in order.
struct Tokens {
    args: std::vec::IntoIter<String>,
    only_positionals: bool,
}

impl Tokens {
    fn next(&mut self) -> Option<Token> {
        let arg = self.args.next()?;
        if self.only_positionals {
            return Some(Token::Positional(arg));
        }
        if arg == "--" {
            self.only_positionals = true;
            return self.next();
        }
        if let Some(body) = arg.strip_prefix("--") {
            return Some(match body.split_once('=') {
                Some((name, value)) => Token::Opt(format!("--{name}"), Some(value.to_owned())),
                None => Token::Opt(arg.clone(), None),
            });
        }
        if arg.len() > 1 && arg.starts_with('-') {
            return Some(Token::Opt(arg, None));
        }
        Some(Token::Positional(arg))
    }

    /// The value of option `name`: inline, or the next argument.
    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, UsageError> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .args
                .next()
                .ok_or_else(|| usage(format!("{name} needs a value"))),
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UsageError> {
    if slot.is_some() {
        return Err(usage(format!("{name} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn no_value(name: &str, inline: Option<String>) -> Result<(), UsageError> {
    match inline {
        Some(_) => Err(usage(format!("{name} takes no value"))),
        None => Ok(()),
    }
}

fn name_value(flag: &str, value: String) -> Result<String, UsageError> {
    if is_valid_name(&value) {
        Ok(value)
    } else {
        Err(usage(format!(
            "{flag} {value:?}: use letters, digits, '-', '_' or '.' (at most 64)"
        )))
    }
}

/// Whole seconds from 1 to [`MAX_TIMEOUT_SECS`], for `--timeout` and
/// `--ack-timeout`.
fn seconds_value(flag: &str, value: &str) -> Result<Duration, UsageError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_TIMEOUT_SECS).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            usage(format!(
                "{flag} {value:?}: use whole seconds from 1 to {MAX_TIMEOUT_SECS}"
            ))
        })
}

fn path_value(flag: &str, value: String) -> Result<PathBuf, UsageError> {
    if value.is_empty() {
        return Err(usage(format!("{flag} needs a file name")));
    }
    Ok(PathBuf::from(value))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, UsageError> {
    let args = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| usage(format!("argument {a:?} is not UTF-8")))
        })
        .collect::<Result<Vec<String>, UsageError>>()?;
    let mut args = args.into_iter();
    let first = args
        .next()
        .ok_or_else(|| usage("missing command; see postern --help"))?;
    let tokens = Tokens {
        args,
        only_positionals: false,
    };
    match first.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-V" | "--version" => Ok(Command::Version),
        "keygen" => parse_keygen(tokens),
        "key" => parse_key(tokens),
        "trigger" => parse_trigger(tokens),
        "close" => parse_close(tokens),
        "complete" => Ok(Command::Complete(tokens.args.collect())),
        other => Err(usage(format!(
            "unknown command {other:?}; see postern --help"
        ))),
    }
}

fn parse_keygen(mut t: Tokens) -> Result<Command, UsageError> {
    match t.next() {
        None => Ok(Command::Keygen),
        Some(Token::Opt(o, _)) if o == "--help" || o == "-h" => Ok(Command::Help),
        Some(Token::Opt(o, _) | Token::Positional(o)) => {
            Err(usage(format!("keygen takes no arguments (got {o:?})")))
        }
    }
}

fn parse_key(mut t: Tokens) -> Result<Command, UsageError> {
    let sub = match t.next() {
        Some(Token::Positional(s)) => s,
        Some(Token::Opt(o, _)) if o == "--help" || o == "-h" => return Ok(Command::Help),
        _ => return Err(usage("key needs a subcommand: from-passphrase or derive")),
    };
    let derive = match sub.as_str() {
        "from-passphrase" => false,
        "derive" => true,
        other => {
            return Err(usage(format!(
                "unknown key subcommand {other:?}; use from-passphrase or derive"
            )))
        }
    };
    let (mut host, mut action, mut master) = (None, None, None);
    while let Some(tok) = t.next() {
        match tok {
            Token::Opt(o, v) => match o.as_str() {
                "--help" | "-h" => return Ok(Command::Help),
                "--host" => {
                    let v = name_value("--host", t.value(&o, v)?)?;
                    set_once(&mut host, &o, v)?;
                }
                "--action" => {
                    let v = name_value("--action", t.value(&o, v)?)?;
                    set_once(&mut action, &o, v)?;
                }
                "--master" if derive => {
                    let v = path_value(&o, t.value(&o, v)?)?;
                    set_once(&mut master, &o, v)?;
                }
                _ => return Err(usage(format!("unknown option {o} for key {sub}"))),
            },
            Token::Positional(p) => return Err(usage(format!("unexpected argument {p:?}"))),
        }
    }
    let host = host.ok_or_else(|| usage(format!("key {sub} needs --host NAME")))?;
    let action = action.ok_or_else(|| usage(format!("key {sub} needs --action NAME")))?;
    if derive {
        let master = master.ok_or_else(|| usage("key derive needs --master FILE"))?;
        Ok(Command::KeyDerive {
            master,
            host,
            action,
        })
    } else {
        Ok(Command::KeyFromPassphrase { host, action })
    }
}

fn parse_trigger(t: Tokens) -> Result<Command, UsageError> {
    let Some((mut a, positionals)) = parse_options(t)? else {
        return Ok(Command::Help);
    };
    let mut positionals = positionals.into_iter();
    a.target = positionals
        .next()
        .ok_or_else(|| usage("trigger needs a HOST[:PORT], an inventory NAME or @GROUP"))?;
    if let Some(action) = positionals.next() {
        let action = name_value("ACTION", action)?;
        match &a.action {
            Some(given) if *given != action => {
                return Err(usage(format!(
                    "action given twice: {action:?} and --action {given:?}"
                )))
            }
            _ => a.action = Some(action),
        }
    }
    if let Some(extra) = positionals.next() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    Ok(Command::Trigger(a))
}

fn parse_close(t: Tokens) -> Result<Command, UsageError> {
    let Some((mut a, positionals)) = parse_options(t)? else {
        return Ok(Command::Help);
    };
    let mut positionals = positionals.into_iter();
    a.target = positionals
        .next()
        .ok_or_else(|| usage("close needs a HOST[:PORT], an inventory NAME or @GROUP"))?;
    let gate = positionals
        .next()
        .ok_or_else(|| usage("close needs the GATE to close, e.g. postern close HOST sshd"))?;
    let gate = name_value("GATE", gate)?;
    if let Some(extra) = positionals.next() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    if a.action.is_none() {
        let closing = format!("{gate}{CLOSE_SUFFIX}");
        a.action = Some(name_value("the closing action", closing).map_err(|_| {
            usage(format!(
                "GATE {gate:?} is too long for a closing action named {gate}{CLOSE_SUFFIX}; name it with --action"
            ))
        })?);
    }
    Ok(Command::Close { gate, args: a })
}

/// The options shared by `trigger` and `close`, and the positionals in
/// order; `None` for `--help`.
fn parse_options(mut t: Tokens) -> Result<Option<(TriggerArgs, Vec<String>)>, UsageError> {
    let mut a = TriggerArgs::default();
    let mut positionals = Vec::new();
    while let Some(tok) = t.next() {
        let (o, v) = match tok {
            Token::Positional(p) => {
                positionals.push(p);
                continue;
            }
            Token::Opt(o, v) => (o, v),
        };
        match o.as_str() {
            "--help" | "-h" => return Ok(None),
            "--key-file" => {
                let p = path_value(&o, t.value(&o, v)?)?;
                set_source(&mut a, KeySource::File(p))?;
            }
            "--key-env" => {
                let var = t.value(&o, v)?;
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(usage("--key-env needs a variable name"));
                }
                set_source(&mut a, KeySource::Env(var))?;
            }
            "--passphrase" => {
                no_value(&o, v)?;
                set_source(&mut a, KeySource::Passphrase)?;
            }
            "--master" => {
                let p = path_value(&o, t.value(&o, v)?)?;
                set_source(&mut a, KeySource::Master(p))?;
            }
            "--password-file" => {
                let p = path_value(&o, t.value(&o, v)?)?;
                set_source(&mut a, KeySource::PasswordFile(p))?;
            }
            "--next-key-file" | "--next-master" => {
                let p = path_value(&o, t.value(&o, v)?)?;
                if a.next.is_some() {
                    return Err(usage(
                        "--next-key-file and --next-master: give at most one successor",
                    ));
                }
                a.next = Some(if o == "--next-master" {
                    KeySource::Master(p)
                } else {
                    KeySource::File(p)
                });
            }
            "--action" => {
                let v = name_value(&o, t.value(&o, v)?)?;
                set_once(&mut a.action, &o, v)?;
            }
            "--host-name" => {
                let v = name_value(&o, t.value(&o, v)?)?;
                set_once(&mut a.host_name, &o, v)?;
            }
            "--assert-addr" => {
                let v = t.value(&o, v)?;
                let ip = v
                    .parse::<IpAddr>()
                    .map_err(|_| usage(format!("--assert-addr {v:?} is not an IP address")))?;
                if !postern::wire::asserted_allowed(ip) {
                    return Err(usage(format!(
                        "--assert-addr {ip}: an unspecified, broadcast, multicast, link-local or IPv4-compatible address cannot be acted for; give the address the action is for"
                    )));
                }
                set_once(&mut a.assert_addr, &o, ip)?;
            }
            "--timeout" => {
                let d = seconds_value(&o, &t.value(&o, v)?)?;
                set_once(&mut a.timeout, &o, d)?;
            }
            "--ack-timeout" => {
                let d = seconds_value(&o, &t.value(&o, v)?)?;
                set_once(&mut a.ack_timeout, &o, d)?;
            }
            "--protocol" => {
                let v = t.value(&o, v)?;
                let p = Protocol::parse(&v).ok_or_else(|| {
                    usage(format!("--protocol {v:?}: use postern-2 or ostiary-4"))
                })?;
                set_once(&mut a.protocol, &o, p)?;
            }
            "--proxy" => {
                let v = t.value(&o, v)?;
                let p = Proxy::parse(&v).map_err(|e| usage(format!("--proxy: {e}")))?;
                set_once(&mut a.proxy, &o, p)?;
            }
            "--json" => {
                no_value(&o, v)?;
                if a.json {
                    return Err(usage("--json given twice"));
                }
                a.json = true;
            }
            "--inventory" => {
                let p = path_value(&o, t.value(&o, v)?)?;
                set_once(&mut a.inventory, &o, p)?;
            }
            "--parallel" => {
                let v = t.value(&o, v)?;
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PARALLEL).contains(n))
                    .and_then(NonZeroUsize::new)
                    .ok_or_else(|| {
                        usage(format!(
                            "--parallel {v:?}: use a number from 1 to {MAX_PARALLEL}"
                        ))
                    })?;
                set_once(&mut a.parallel, &o, n)?;
            }
            "--key" | "--password" => {
                return Err(usage(format!(
                    "{o} does not exist: secrets on the command line are visible to every user; \
                     use --key-file, --key-env or the prompt"
                )))
            }
            _ => return Err(usage(format!("unknown option {o}; see postern --help"))),
        }
    }
    match (&a.next, &a.source) {
        (Some(KeySource::File(_)), Some(KeySource::File(_)))
        | (Some(KeySource::Master(_)), Some(KeySource::Master(_)))
        | (None, _) => {}
        (Some(KeySource::Master(_)), _) => {
            return Err(usage(
                "--next-master is the successor of --master; give --master too",
            ))
        }
        (Some(_), _) => {
            return Err(usage(
                "--next-key-file is the successor of --key-file; give --key-file too",
            ))
        }
    }
    Ok(Some((a, positionals)))
}

fn set_source(a: &mut TriggerArgs, source: KeySource) -> Result<(), UsageError> {
    if let Some(existing) = &a.source {
        return Err(usage(format!(
            "{} and {} both given; choose one key source",
            existing.flag(),
            source.flag()
        )));
    }
    a.source = Some(source);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn trig(args: &[&str]) -> TriggerArgs {
        match p(args).unwrap() {
            Command::Trigger(t) => t,
            other => panic!("not a trigger: {other:?}"),
        }
    }

    // Goal: a successor goes with its own kind of source.
    #[test]
    fn parses_successors() {
        let t = trig(&["trigger", "h", "--key-file", "/k", "--next-key-file=/k2"]);
        assert_eq!(t.next, Some(KeySource::File("/k2".into())));
        let t = trig(&[
            "trigger",
            "h",
            "a",
            "--master",
            "/m",
            "--next-master",
            "/m2",
        ]);
        assert_eq!(t.next, Some(KeySource::Master("/m2".into())));
        assert_eq!(trig(&["trigger", "h", "--key-file", "/k"]).next, None);
    }

    // Goal: every option of trigger parses, in both spellings, into the
    // typed arguments.
    #[test]
    fn parses_trigger() {
        let t = trig(&[
            "trigger",
            "192.0.2.17:7002",
            "--key-file",
            "/k",
            "--assert-addr=203.0.113.5",
            "--timeout",
            "5",
            "--proxy",
            "socks5://127.0.0.1:1080",
            "--json",
            "--protocol=postern-2",
            "--inventory",
            "/inv.toml",
            "--parallel",
            "4",
        ]);
        assert_eq!(t.target, "192.0.2.17:7002");
        assert_eq!(t.source, Some(KeySource::File("/k".into())));
        assert_eq!(t.assert_addr, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(t.timeout, Some(Duration::from_secs(5)));
        assert_eq!(t.proxy.unwrap().to_string(), "socks5://127.0.0.1:1080");
        assert!(t.json);
        assert_eq!(t.protocol, Some(Protocol::Postern2));
        assert_eq!(t.inventory, Some("/inv.toml".into()));
        assert_eq!(t.parallel.map(NonZeroUsize::get), Some(4));

        let t = trig(&["trigger", "@rack-4", "console", "--parallel=2"]);
        assert_eq!(
            (t.target.as_str(), t.action.as_deref()),
            ("@rack-4", Some("console"))
        );
        let t = trig(&[
            "trigger",
            "h",
            "--passphrase",
            "--action",
            "console",
            "--host-name",
            "web-17",
        ]);
        assert_eq!(t.source, Some(KeySource::Passphrase));
        assert_eq!(t.host_name.as_deref(), Some("web-17"));
        let t = trig(&[
            "trigger",
            "h",
            "--key-env",
            "POSTERN_KEY",
            "--protocol",
            "ostiary-4",
        ]);
        assert_eq!(t.source, Some(KeySource::Env("POSTERN_KEY".into())));
        assert_eq!(t.protocol, Some(Protocol::Ostiary4));
        let t = trig(&["trigger", "--", "h", "a"]);
        assert_eq!((t.target.as_str(), t.action.as_deref()), ("h", Some("a")));
        let t = trig(&["trigger", "h", "a", "--action", "a"]);
        assert_eq!(t.action.as_deref(), Some("a"));
    }

    // Goal: close takes HOST and GATE, names the closing action GATE.close
    // by the documented convention unless --action overrides it, and takes
    // every trigger option.
    #[test]
    fn parses_close() {
        let close = |args: &[&str]| match p(args).unwrap() {
            Command::Close { gate, args } => (gate, args),
            other => panic!("not a close: {other:?}"),
        };
        let (gate, a) = close(&["close", "web-17", "sshd", "--assert-addr", "203.0.113.5"]);
        assert_eq!(gate, "sshd");
        assert_eq!(a.target, "web-17");
        assert_eq!(a.action.as_deref(), Some("sshd.close"));
        assert_eq!(a.assert_addr, Some("203.0.113.5".parse().unwrap()));
        let (gate, a) = close(&[
            "close",
            "h:7001",
            "door",
            "--action=shut-door",
            "--master",
            "/m",
        ]);
        assert_eq!(gate, "door");
        assert_eq!(a.action.as_deref(), Some("shut-door"));
        assert_eq!(a.source, Some(KeySource::Master("/m".into())));
        assert_eq!(p(&["close", "--help"]).unwrap(), Command::Help);
        let long = "g".repeat(60);
        for (args, want) in [
            (vec!["close"], "close needs a HOST"),
            (vec!["close", "h"], "close needs the GATE"),
            (vec!["close", "h", "g", "x"], "unexpected argument"),
            (vec!["close", "h", "a b"], "GATE"),
            (vec!["close", "h", long.as_str()], "name it with --action"),
        ] {
            let e = p(&args).unwrap_err();
            assert!(e.0.contains(want), "{args:?}: {e}");
        }
    }

    // Goal: the other commands parse.
    #[test]
    fn parses_other_commands() {
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["help"]).unwrap(), Command::Help);
        assert_eq!(p(&["trigger", "--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
        assert_eq!(p(&["keygen"]).unwrap(), Command::Keygen);
        assert_eq!(
            p(&[
                "key",
                "from-passphrase",
                "--host",
                "web-17",
                "--action=console"
            ])
            .unwrap(),
            Command::KeyFromPassphrase {
                host: "web-17".into(),
                action: "console".into()
            }
        );
        assert_eq!(
            p(&["key", "derive", "--master", "/m", "--host", "h", "--action", "a"]).unwrap(),
            Command::KeyDerive {
                master: "/m".into(),
                host: "h".into(),
                action: "a".into()
            }
        );
    }

    // Goal: each kind of command-line mistake is a usage error with a
    // message that names the problem.
    #[test]
    fn usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "missing command"),
            (&["frobnicate"], "unknown command"),
            (&["trigger"], "trigger needs a HOST"),
            (&["trigger", "h", "a", "b"], "unexpected argument \"b\""),
            (&["trigger", "h", "--bogus"], "unknown option --bogus"),
            (
                &["trigger", "h", "--key", "c2VjcmV0"],
                "secrets on the command line",
            ),
            (&["trigger", "h", "--timeout"], "--timeout needs a value"),
            (&["trigger", "h", "--timeout", "0"], "whole seconds"),
            (&["trigger", "h", "--timeout", "1.5"], "whole seconds"),
            (
                &["trigger", "h", "--timeout", "1", "--timeout", "2"],
                "given twice",
            ),
            (
                &["trigger", "h", "--protocol", "ssh"],
                "use postern-2 or ostiary-4",
            ),
            (
                &["trigger", "h", "--assert-addr", "here"],
                "not an IP address",
            ),
            (
                &["trigger", "h", "--proxy", "ftp://x:1"],
                "--proxy: proxy must be",
            ),
            (&["trigger", "h", "--parallel", "0"], "--parallel"),
            (&["trigger", "h", "--parallel", "70000"], "--parallel"),
            (
                &["trigger", "h", "--key-file", "k", "--passphrase"],
                "choose one key source",
            ),
            (
                &["trigger", "h", "--key-env", "V", "--master", "m"],
                "choose one key source",
            ),
            (
                &["trigger", "h", "--next-key-file", "k2"],
                "--next-key-file is the successor of --key-file",
            ),
            (
                &["trigger", "h", "--master", "m", "--next-key-file", "k2"],
                "--next-key-file is the successor of --key-file",
            ),
            (
                &["trigger", "h", "--key-file", "k", "--next-master", "m2"],
                "--next-master is the successor of --master",
            ),
            (
                &[
                    "trigger",
                    "h",
                    "--master",
                    "m",
                    "--next-master",
                    "m2",
                    "--next-master",
                    "m3",
                ],
                "at most one successor",
            ),
            (&["trigger", "h", "--json=yes"], "takes no value"),
            (&["trigger", "h", "--action", "a b"], "--action"),
            (
                &["trigger", "h", "a", "--action", "b"],
                "action given twice",
            ),
            (&["trigger", "h", "--key-file", ""], "needs a file name"),
            (&["keygen", "x"], "keygen takes no arguments"),
            (&["key"], "key needs a subcommand"),
            (&["key", "rotate"], "unknown key subcommand"),
            (&["key", "from-passphrase", "--host", "h"], "needs --action"),
            (&["key", "from-passphrase", "--action", "a"], "needs --host"),
            (
                &[
                    "key",
                    "from-passphrase",
                    "--host",
                    "h",
                    "--action",
                    "a",
                    "--master",
                    "m",
                ],
                "unknown option --master",
            ),
            (
                &["key", "derive", "--host", "h", "--action", "a"],
                "needs --master",
            ),
        ];
        for (args, want) in cases {
            let e = p(args).unwrap_err();
            assert!(e.0.contains(want), "{args:?}: got {:?}, want {want:?}", e.0);
        }
    }
}
