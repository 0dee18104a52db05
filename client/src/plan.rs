//! From a trigger command (and the inventory, if the target names it) to
//! jobs: what to connect to, how, and with which secret.
//!
//! Which mode: a target starting with `@` is an inventory group; a target
//! that is a host name in the inventory is that host; anything else is
//! `HOST[:PORT]`. The inventory is read when `--inventory` is given, when
//! the target is a group, or when the default file exists.
//!
//! Every secret file is read and checked here, before any connection, so
//! a bad key fails the whole command without touching the network. The
//! slow passphrase stretch is left to the job (see [`Job::credential`]) so
//! a group derives its keys in parallel.

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern::kdf;
use postern::mac::MacKey;
use postern::secret::{Key, Password};

use crate::args::{TriggerArgs, UsageError, DEFAULT_PARALLEL};
use crate::inventory::{self, Inventory, InventoryError};
use crate::keys::{self, KeySource, SecretError};
use crate::prompt::SecretLine;
use crate::proxy::Proxy;
use crate::target::{Target, DEFAULT_PORT};
use crate::trigger::{Credential, Protocol, DEFAULT_ACK_WAIT, DEFAULT_TIMEOUT};

/// The secret a job answers with.
#[derive(Debug, Clone)]
pub enum JobSecret {
    /// A postern-2 key, ready.
    Key(Key),
    /// A postern-2 key still to be stretched from a passphrase.
    Passphrase {
        /// The passphrase (shared by every host of a group).
        passphrase: Arc<SecretLine>,
        /// Host name for derivation.
        host: String,
        /// Action name for derivation.
        action: String,
    },
    /// An ostiary-4 password.
    Password(Password),
}

/// One trigger to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// What the user calls the host: the target as typed, or its
    /// inventory name.
    pub label: String,
    /// The action, if named.
    pub action: Option<String>,
    /// Where to connect.
    pub target: Target,
    /// The proxy to go through.
    pub proxy: Option<Proxy>,
    /// Bound for the connect and for the challenge, each.
    pub timeout: Duration,
    /// Bound for the ack.
    pub ack_wait: Duration,
    /// The address to assert (postern-2).
    pub assert_addr: Option<IpAddr>,
    /// What to answer with.
    pub secret: JobSecret,
}

impl Job {
    /// The credential to answer with. For a passphrase this runs PBKDF2
    /// (600 000 iterations), which takes a noticeable fraction of a second.
    pub fn credential(&self) -> Credential {
        match &self.secret {
            JobSecret::Key(k) => Credential::Postern2 {
                key: MacKey::new(k.expose()),
                assert_addr: self.assert_addr,
            },
            JobSecret::Passphrase {
                passphrase,
                host,
                action,
            } => {
                let key = kdf::key_from_passphrase(passphrase.as_bytes(), host, action);
                Credential::Postern2 {
                    key: MacKey::new(key.expose()),
                    assert_addr: self.assert_addr,
                }
            }
            JobSecret::Password(p) => Credential::Ostiary4 {
                password: MacKey::new(p.expose()),
            },
        }
    }

    /// The protocol the job speaks.
    pub fn protocol(&self) -> Protocol {
        match self.secret {
            JobSecret::Password(_) => Protocol::Ostiary4,
            _ => Protocol::Postern2,
        }
    }
}

/// What to run.
#[derive(Debug)]
pub enum Plan {
    /// One host (by address or inventory name).
    One(Job),
    /// An inventory group.
    Group {
        /// The group name, with its `@`.
        name: String,
        /// One job per member, in the order listed.
        jobs: Vec<Job>,
        /// How many run at once.
        parallel: NonZeroUsize,
    },
}

/// Why no plan could be made.
#[derive(Debug)]
pub enum PlanError {
    /// The command line does not make sense for this target (exit 64).
    Usage(UsageError),
    /// The inventory is missing or invalid (exit 1).
    Inventory(InventoryError),
    /// A secret could not be loaded (exit 1).
    Secret(SecretError),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Usage(e) => write!(f, "{e}"),
            PlanError::Inventory(e) => write!(f, "{e}"),
            PlanError::Secret(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl From<SecretError> for PlanError {
    fn from(e: SecretError) -> Self {
        PlanError::Secret(e)
    }
}

impl From<InventoryError> for PlanError {
    fn from(e: InventoryError) -> Self {
        PlanError::Inventory(e)
    }
}

fn usage(msg: impl Into<String>) -> PlanError {
    PlanError::Usage(UsageError(msg.into()))
}

/// Turns `postern trigger ...` into jobs, reading the inventory and every
/// secret it needs (prompting if it must).
pub fn plan(args: &TriggerArgs) -> Result<Plan, PlanError> {
    let inventory = load_inventory(args)?;
    if let Some(group) = args.target.strip_prefix('@') {
        let inv = inventory.as_ref().ok_or_else(|| {
            let at = inventory::default_path()
                .map(|p| format!(" (looked for {})", p.display()))
                .unwrap_or_default();
            usage(format!(
                "@{group} needs an inventory{at}; pass --inventory FILE"
            ))
        })?;
        return plan_group(args, inv, group);
    }
    match inventory
        .as_ref()
        .and_then(|inv| inv.host(&args.target).map(|h| (inv, h)))
    {
        Some((inv, host)) => {
            let action = inventory_action(args)?;
            let mut secrets = Secrets::default();
            let job = inventory_job(args, inv, host, action, &mut secrets, &args.target)?;
            Ok(Plan::One(job))
        }
        None => plan_direct(args).map(Plan::One),
    }
}

fn load_inventory(args: &TriggerArgs) -> Result<Option<Inventory>, PlanError> {
    if let Some(path) = &args.inventory {
        return Ok(Some(Inventory::load(path)?));
    }
    match inventory::default_path() {
        Some(path) if path.exists() => Ok(Some(Inventory::load(&path)?)),
        _ => Ok(None),
    }
}

fn plan_direct(args: &TriggerArgs) -> Result<Job, PlanError> {
    let target = Target::parse(&args.target, DEFAULT_PORT)
        .map_err(|e| usage(format!("{e} (and no inventory host of that name)")))?;
    let protocol = args.protocol.unwrap_or(Protocol::Postern2);
    let current = args.source.clone().unwrap_or(KeySource::Prompt);
    // During a rotation, the successor if the operator has it.
    let source = keys::newest(&current, args.next.as_ref()).clone();
    let derives = matches!(source, KeySource::Passphrase | KeySource::Master(_));
    match (protocol, &source) {
        (Protocol::Postern2, KeySource::PasswordFile(_)) => {
            return Err(usage("--password-file is for --protocol ostiary-4"))
        }
        (Protocol::Ostiary4, KeySource::File(_) | KeySource::Passphrase | KeySource::Master(_)) => {
            return Err(usage(format!(
                "{} does not apply to ostiary-4; use --password-file, --key-env or the prompt",
                source.flag()
            )))
        }
        _ => {}
    }
    if protocol == Protocol::Ostiary4 && args.assert_addr.is_some() {
        return Err(usage(
            "--assert-addr needs postern-2; ostiary-4 cannot carry an address",
        ));
    }
    if args.host_name.is_some() && !derives {
        return Err(usage(
            "--host-name only applies to --passphrase and --master",
        ));
    }
    if derives && args.action.is_none() {
        return Err(usage(format!("{} needs --action NAME", source.flag())));
    }
    let host_name = args
        .host_name
        .clone()
        .unwrap_or_else(|| target.host().to_owned());
    let mut secrets = Secrets::default();
    let secret = secrets.resolve(
        &source,
        protocol,
        &args.target,
        &host_name,
        args.action.as_deref().unwrap_or(""),
    )?;
    Ok(Job {
        label: args.target.clone(),
        action: args.action.clone(),
        target,
        proxy: args.proxy.clone(),
        timeout: args.timeout.unwrap_or(DEFAULT_TIMEOUT),
        ack_wait: args.ack_timeout.unwrap_or(DEFAULT_ACK_WAIT),
        assert_addr: args.assert_addr,
        secret,
    })
}

/// Options that make no sense when the inventory says it all.
fn inventory_action(args: &TriggerArgs) -> Result<&str, PlanError> {
    let offending = [
        (args.source.is_some(), "key source options"),
        (args.protocol.is_some(), "--protocol"),
        (args.host_name.is_some(), "--host-name"),
        (args.assert_addr.is_some(), "--assert-addr"),
    ];
    if let Some((_, what)) = offending.iter().find(|(given, _)| *given) {
        return Err(usage(format!(
            "{what} cannot be used with inventory hosts; the inventory sets them"
        )));
    }
    args.action
        .as_deref()
        .ok_or_else(|| usage(format!("postern trigger {} needs an ACTION", args.target)))
}

fn inventory_job(
    args: &TriggerArgs,
    inv: &Inventory,
    host: &inventory::Host,
    action: &str,
    secrets: &mut Secrets,
    prompt_label: &str,
) -> Result<Job, PlanError> {
    let a = host.actions.get(action).ok_or_else(|| {
        let known: Vec<&str> = host.actions.keys().map(String::as_str).collect();
        PlanError::Inventory(InventoryError::Invalid {
            file: inv.path().to_owned(),
            key: format!("hosts.{}", host.name),
            problem: format!("no action {action:?} (has: {})", known.join(", ")),
        })
    })?;
    // During a rotation, the successor if the operator has it.
    let source = a.newest();
    let secret = secrets.resolve(source, host.protocol, prompt_label, &host.name, action)?;
    Ok(Job {
        label: host.name.clone(),
        action: Some(action.to_owned()),
        target: host.target.clone(),
        proxy: args.proxy.clone().or_else(|| host.proxy.clone()),
        timeout: args.timeout.or(host.timeout).unwrap_or(DEFAULT_TIMEOUT),
        ack_wait: args.ack_timeout.unwrap_or(DEFAULT_ACK_WAIT),
        assert_addr: a.assert_addr,
        secret,
    })
}

fn plan_group(args: &TriggerArgs, inv: &Inventory, group: &str) -> Result<Plan, PlanError> {
    let members = inv.group(group).ok_or_else(|| {
        PlanError::Inventory(InventoryError::Invalid {
            file: inv.path().to_owned(),
            key: "groups".to_owned(),
            problem: format!("no group {group:?}"),
        })
    })?;
    let action = inventory_action(args)?;
    let label = format!("@{group}");
    let mut secrets = Secrets::default();
    let mut jobs = Vec::with_capacity(members.len());
    for m in members {
        // The inventory checked that every member exists.
        let host = inv
            .host(m)
            .ok_or_else(|| usage(format!("unknown host {m:?}")))?;
        jobs.push(inventory_job(
            args,
            inv,
            host,
            action,
            &mut secrets,
            &label,
        )?);
    }
    Ok(Plan::Group {
        name: label,
        jobs,
        parallel: args
            .parallel
            .or(NonZeroUsize::new(DEFAULT_PARALLEL))
            .unwrap_or(NonZeroUsize::MIN),
    })
}

/// Secrets already read, so that a group reads each master file once and
/// asks for the passphrase once.
#[derive(Default)]
struct Secrets {
    masters: BTreeMap<PathBuf, Key>,
    passphrase: Option<Arc<SecretLine>>,
}

impl Secrets {
    fn master(&mut self, path: &Path) -> Result<&Key, SecretError> {
        Ok(match self.masters.entry(path.to_owned()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(keys::load_key_file(path)?),
        })
    }

    /// Loads the secret `source` names. `label` is shown in prompts;
    /// `host` and `action` feed key derivation.
    fn resolve(
        &mut self,
        source: &KeySource,
        protocol: Protocol,
        label: &str,
        host: &str,
        action: &str,
    ) -> Result<JobSecret, SecretError> {
        Ok(match (protocol, source) {
            (Protocol::Postern2, KeySource::File(p)) => JobSecret::Key(keys::load_key_file(p)?),
            (Protocol::Postern2, KeySource::Env(v)) => JobSecret::Key(keys::key_from_env(v)?),
            (Protocol::Postern2, KeySource::Prompt) => JobSecret::Key(keys::prompt_key(label)?),
            (Protocol::Postern2, KeySource::Master(p)) => {
                JobSecret::Key(kdf::key_from_master(self.master(p)?, host, action))
            }
            (Protocol::Postern2, KeySource::Passphrase) => {
                let passphrase = match &self.passphrase {
                    Some(p) => Arc::clone(p),
                    None => {
                        let p = Arc::new(keys::prompt_passphrase(
                            &format!("{label} {action}"),
                            false,
                        )?);
                        self.passphrase = Some(Arc::clone(&p));
                        p
                    }
                };
                JobSecret::Passphrase {
                    passphrase,
                    host: host.to_owned(),
                    action: action.to_owned(),
                }
            }
            (_, KeySource::PasswordFile(p)) => JobSecret::Password(keys::load_password_file(p)?),
            (Protocol::Ostiary4, KeySource::Env(v)) => {
                JobSecret::Password(keys::password_from_env(v)?)
            }
            // Key files, passphrases and masters were refused for
            // ostiary-4 by the caller; what is left is the prompt.
            (Protocol::Ostiary4, _) => JobSecret::Password(keys::prompt_password(label)?),
        })
    }
}
