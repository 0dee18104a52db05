//! `postern complete`: the words the bash, zsh and fish completions offer.
//!
//! The shell scripts in `client/completions/` hold no lists of their own:
//! subcommands, options (with the kind of value each takes) and protocol
//! names come from [`crate::args::HELP`], and host, group and action names
//! from the inventory, so the completions follow the client as it changes.
//!
//! ```text
//! postern complete commands                 trigger, close, keygen, key, help
//! postern complete options trigger|close|key   one "--option [METAVAR]" per line
//! postern complete protocols                the --protocol values
//! postern complete hosts [--inventory F]    inventory hosts, then @groups
//! postern complete actions TARGET [--inventory F]
//!                                           actions of a host, or of every host of @GROUP
//! postern complete gates TARGET [--inventory F]
//!                                           gates G with a closing action G.close there
//! ```
//!
//! Output is one word per line on standard output. A missing or invalid
//! inventory prints nothing: completion must never print errors into a
//! command line being typed.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::args::{UsageError, CLOSE_SUFFIX, HELP};
use crate::inventory::{self, Inventory};
use crate::trigger::Protocol;

/// The subcommands, as `postern --help` lists them.
pub fn commands() -> Vec<String> {
    let mut out = Vec::new();
    for line in HELP.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("postern ") {
            if let Some(word) = rest.split_whitespace().next() {
                if !word.starts_with('-') && !out.iter().any(|w| w == word) {
                    out.push(word.to_owned());
                }
            }
        }
    }
    out.push("help".to_owned());
    out
}

/// Options of `trigger` (the key-source and trigger sections of the help)
/// or `key`, each with its metavar when it takes a value.
pub fn options(command: &str) -> Vec<String> {
    match command {
        "trigger" | "close" => {
            let mut out = Vec::new();
            let mut in_section = false;
            for line in HELP.lines() {
                if line.starts_with("Key sources for trigger")
                    || line.starts_with("Trigger options")
                {
                    in_section = true;
                    continue;
                }
                if !line.starts_with(' ') {
                    in_section = false;
                }
                if !in_section {
                    continue;
                }
                let mut words = line.split_whitespace();
                if let Some(opt) = words.next().filter(|w| w.starts_with("--")) {
                    let meta = words
                        .next()
                        .filter(|w| w.chars().all(|c| c.is_ascii_uppercase()));
                    out.push(match meta {
                        Some(m) => format!("{opt} {m}"),
                        None => opt.to_owned(),
                    });
                }
            }
            out.push("--help".to_owned());
            out
        }
        "key" => ["--host NAME", "--action NAME", "--master FILE", "--help"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

/// The `--protocol` values: the words of its help line that the client
/// parses as a protocol.
pub fn protocols() -> Vec<String> {
    HELP.lines()
        .filter(|l| l.trim_start().starts_with("--protocol"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
        .filter(|w| !w.starts_with('-') && Protocol::parse(w).is_some())
        .map(str::to_owned)
        .collect()
}

/// The gates `postern close` can close on `target`: each action `G` for
/// which the inventory also has the closing action `G.close`.
pub fn gates(inv: &Inventory, target: &str) -> Vec<String> {
    let all = actions(inv, target);
    all.iter()
        .filter_map(|a| a.strip_suffix(CLOSE_SUFFIX))
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Host names, then `@group` names, of the inventory.
pub fn hosts(inv: &Inventory) -> Vec<String> {
    inv.host_names()
        .map(str::to_owned)
        .chain(inv.group_names().map(|g| format!("@{g}")))
        .collect()
}

/// The actions of host `target`, or of every member of `@group`.
pub fn actions(inv: &Inventory, target: &str) -> Vec<String> {
    let members: Vec<&str> = match target.strip_prefix('@') {
        Some(g) => inv
            .group(g)
            .map(|m| m.iter().map(String::as_str).collect())
            .unwrap_or_default(),
        None => vec![target],
    };
    let names: BTreeSet<&str> = members
        .iter()
        .filter_map(|h| inv.host(h))
        .flat_map(|h| h.actions.keys().map(String::as_str))
        .collect();
    names.into_iter().map(str::to_owned).collect()
}

/// Runs `postern complete ARGS`: the words to print, or a usage error.
pub fn run(args: &[String]) -> Result<Vec<String>, UsageError> {
    let mut positionals = Vec::new();
    let mut inventory: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--inventory=") {
            inventory = Some(PathBuf::from(v));
        } else if a == "--inventory" {
            let v = it
                .next()
                .ok_or_else(|| UsageError("--inventory needs a value".into()))?;
            inventory = Some(PathBuf::from(v));
        } else {
            positionals.push(a.as_str());
        }
    }
    let load = || {
        inventory
            .clone()
            .or_else(inventory::default_path)
            .and_then(|p| Inventory::load(&p).ok())
    };
    match positionals.as_slice() {
        ["commands"] => Ok(commands()),
        ["options", cmd] => Ok(options(cmd)),
        ["protocols"] => Ok(protocols()),
        ["hosts"] => Ok(load().map(|i| hosts(&i)).unwrap_or_default()),
        ["actions", target] => Ok(load().map(|i| actions(&i, target)).unwrap_or_default()),
        ["gates", target] => Ok(load().map(|i| gates(&i, target)).unwrap_or_default()),
        _ => Err(UsageError(
            "usage: postern complete commands | options trigger|close|key | protocols | hosts | actions TARGET | gates TARGET [--inventory FILE]"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::path::Path;

    const INV: &str = r#"
[hosts.web-17]
address = "192.0.2.17"
[hosts.web-17.actions.sshd]
key_env = "K"
[hosts.web-17.actions.console]
key_env = "K"
[hosts.web-17.actions."sshd.close"]
key_env = "K"
[hosts.db-1]
address = "192.0.2.5"
[hosts.db-1.actions.backup]
key_env = "K"
[groups]
rack-4 = ["web-17", "db-1"]
"#;

    fn inv() -> Inventory {
        Inventory::parse(INV, Path::new("/x/hosts.toml"), None).unwrap()
    }

    #[test]
    fn commands_come_from_the_help() {
        // Goal: every subcommand of the help, and nothing that is an option.
        assert_eq!(commands(), ["trigger", "close", "keygen", "key", "help"]);
    }

    #[test]
    fn every_trigger_option_parses() {
        // Goal: each option offered is one the parser knows (never "unknown option"),
        // for close as for trigger.
        assert_eq!(options("close"), options("trigger"));
        let opts = options("trigger");
        assert!(opts.iter().any(|o| o == "--key-file FILE"), "{opts:?}");
        assert!(opts.iter().any(|o| o == "--json"), "{opts:?}");
        for o in &opts {
            let mut words = o.split(' ');
            let name = words.next().unwrap();
            let mut argv = vec![
                "trigger".to_owned(),
                "127.0.0.1".to_owned(),
                name.to_owned(),
            ];
            if words.next().is_some() {
                argv.push("x".to_owned());
            }
            if let Err(e) = crate::args::parse(argv.into_iter().map(Into::into)) {
                assert!(!e.0.contains("unknown option"), "{o}: {e}");
            }
        }
    }

    #[test]
    fn protocols_parse() {
        // Goal: at least the default protocol and ostiary-4, each accepted by --protocol.
        let p = protocols();
        assert!(p.len() >= 2, "{p:?}");
        assert!(p.iter().any(|w| w == "ostiary-4"));
        assert!(p.iter().all(|w| Protocol::parse(w).is_some()));
    }

    #[test]
    fn hosts_groups_and_actions() {
        // Goal: hosts then @groups; a host's actions; a group's union of actions.
        let i = inv();
        assert_eq!(hosts(&i), ["db-1", "web-17", "@rack-4"]);
        assert_eq!(actions(&i, "web-17"), ["console", "sshd", "sshd.close"]);
        assert_eq!(
            actions(&i, "@rack-4"),
            ["backup", "console", "sshd", "sshd.close"]
        );
        assert_eq!(gates(&i, "web-17"), ["sshd"]);
        assert!(gates(&i, "db-1").is_empty());
        assert!(actions(&i, "nope").is_empty());
    }

    #[test]
    fn a_missing_inventory_prints_nothing() {
        // Goal: completion never fails loudly for want of an inventory.
        let args: Vec<String> = ["hosts", "--inventory", "/nonexistent/hosts.toml"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert!(run(&args).unwrap().is_empty());
        assert!(run(&["bogus".to_owned()]).is_err());
    }
}
