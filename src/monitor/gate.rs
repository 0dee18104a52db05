//! Gates: services that a trigger opens and a deadline closes, recorded on
//! disk so that neither a crash nor a reboot leaves one open.
//!
//! A gate is either `run` + `stop` (a command that starts something and
//! returns, and one that stops it) or `serve` (a long-running program that
//! posternd supervises in its own process group, killed with posternd by
//! PR_SET_PDEATHSIG). Every open gate is written to the state file before
//! its trigger is acknowledged; if that write fails, the gate is closed at
//! once and the trigger answered "failed".
//!
//! A gate with `per_address` has one instance per address ([`Instance`]),
//! each with its own deadline, extension, ceiling, record and close; at
//! most `max_addresses` are open at once ([`Gates::full`]). A closing
//! action (`closes`) closes one instance now ([`Gates::close_early`]),
//! through the same path as its deadline.
//!
//! Gates need nothing from the monitor but the current config, which it
//! hands them at start and on every reload ([`Gates::reconfigure`]).
//!
//! Fail closed at start-up ([`Gates::recover`]): every recorded gate whose
//! deadline has passed is stopped, each instance with its own recorded
//! address; a `serve` gate is over anyway (its
//! program died with the previous posternd); what either left running is
//! killed through the gate's recorded cgroup (`cgroup.rs`), or, without
//! one, only a live serve program whose pid and start time match exactly,
//! so a reused pid is never hit; unexpired `run` gates are re-armed; a
//! record that cannot be read, or a state file that cannot be read at all,
//! closes the gates concerned (all of them for an unreadable file) with
//! `stop_all`, or `stop` without an address, never a made-up one. The
//! file's I/O is in `state.rs`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::config::{Action, ActionKind, Argv, Config, Gate};
use crate::monitor::action::{self, Spec};
use crate::monitor::log::{Level, Logger};
use crate::monitor::state::{ReadState, StateDir, StateDirError};
use crate::wire::{Answer, Reason, Status};

pub use crate::monitor::state::STATE_FILE;
/// How long a freshly started `serve` program must stay up before the
/// trigger is acknowledged as started.
pub const SERVE_SETTLE: Duration = Duration::from_millis(150);
/// Grace between SIGTERM and SIGKILL when a `serve` gate closes.
pub const SERVE_GRACE: Duration = Duration::from_secs(3);

/// One open gate, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Action name.
    pub name: String,
    /// `serve` (true) or `run`/`stop` (false).
    pub serve: bool,
    /// An instance of a per-address gate (`per=address`), or the one gate
    /// of its action (`per=gate`; also what a file without the field
    /// means).
    pub per_address: bool,
    /// The serve program's pid (0 for run gates).
    pub pid: u32,
    /// Its start time in clock ticks since boot (/proc/PID/stat field 22);
    /// `None` when it could not be read (recorded as `-`, never as 0, and
    /// then never matched).
    pub start_ticks: Option<u64>,
    /// The boot the pid belongs to (/proc/sys/kernel/random/boot_id).
    pub boot_id: String,
    /// When it opened, UNIX seconds.
    pub opened: u64,
    /// When it must close, UNIX seconds.
    pub deadline: u64,
    /// The `{addr}` it was opened for.
    pub addr: IpAddr,
    /// The cgroup its serve program or run was started in (see
    /// `cgroup.rs`), if any.
    pub cgroup: Option<PathBuf>,
}

impl Record {
    fn to_line(&self) -> String {
        format!(
            "gate name={} kind={} pid={} start={} boot={} opened={} deadline={} addr={} cgroup={} per={}",
            self.name,
            if self.serve { "serve" } else { "run" },
            self.pid,
            self.start_ticks
                .map_or_else(|| "-".to_string(), |t| t.to_string()),
            if self.boot_id.is_empty() {
                "-"
            } else {
                &self.boot_id
            },
            self.opened,
            self.deadline,
            self.addr,
            self.cgroup
                .as_ref()
                .map_or_else(|| "-".to_string(), |p| p.display().to_string()),
            if self.per_address { "address" } else { "gate" }
        )
    }

    /// Parses one line; `Err(Some(name))` when only the name is readable.
    pub fn parse(line: &str) -> Result<Record, Option<String>> {
        let mut it = line.split(' ');
        if it.next() != Some("gate") {
            return Err(None);
        }
        let mut f: HashMap<&str, &str> = HashMap::new();
        for kv in it {
            let (k, v) = kv.split_once('=').ok_or(None)?;
            f.insert(k, v);
        }
        let name = f.get("name").map(|s| s.to_string());
        let bad = || name.clone();
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        Ok(Record {
            name: name.clone().filter(|n| !n.is_empty()).ok_or(None)?,
            serve: match f.get("kind") {
                Some(&"serve") => true,
                Some(&"run") => false,
                _ => return Err(bad()),
            },
            // Absent in files of older versions, which had no per-address
            // gates.
            per_address: match f.get("per") {
                None | Some(&"gate") => false,
                Some(&"address") => true,
                Some(_) => return Err(bad()),
            },
            pid: num("pid")
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(bad)?,
            // "-" is unknown; so is 0 (written by older versions when
            // /proc could not be read): neither ever matches a process.
            start_ticks: match f.get("start") {
                Some(&"-") => None,
                Some(_) => num("start")
                    .ok_or_else(bad)
                    .map(|t| Some(t).filter(|t| *t != 0))?,
                None => return Err(bad()),
            },
            boot_id: match f.get("boot") {
                Some(&"-") => String::new(),
                Some(b) => b.to_string(),
                None => return Err(bad()),
            },
            opened: num("opened").ok_or_else(bad)?,
            deadline: num("deadline").ok_or_else(bad)?,
            addr: f.get("addr").and_then(|a| a.parse().ok()).ok_or_else(bad)?,
            // Absent in files of older versions.
            cgroup: match f.get("cgroup") {
                None | Some(&"-") => None,
                Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
                Some(_) => return Err(bad()),
            },
        })
    }
}

/// Seconds since the UNIX epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This boot's id, or empty if unknown.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A process's start time in ticks since boot, if it exists.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the last
    // ')' are space separated, starting with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `records` to the state file in `dir` atomically (see
/// [`StateDir::write`]).
pub fn write_state(dir: &StateDir, records: &[Record]) -> std::io::Result<()> {
    let mut text = String::from("# posternd open gates; rewritten atomically, do not edit\n");
    for r in records {
        text.push_str(&r.to_line());
        text.push('\n');
    }
    dir.write(text.as_bytes())
}

/// What reading the state file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No file: nothing was open.
    Missing,
    /// Records, and the records that could not be parsed: their line
    /// number and, if it is a well-formed action name, the name.
    Records(Vec<Record>, Vec<(usize, Option<String>)>),
    /// The file exists but cannot be read, or is garbage. The reason
    /// never quotes the file.
    Unreadable(String),
}

/// Whether `name` could be an action's name (1-64 of `A-Z a-z 0-9 . _
/// -`): only such names from the state file are ever logged.
fn plausible_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Reads the state file.
pub fn read_state(dir: &StateDir) -> Loaded {
    let text = match dir.read() {
        ReadState::Missing => return Loaded::Missing,
        ReadState::Unreadable(why) => return Loaded::Unreadable(why),
        ReadState::Bytes(b) => b,
    };
    let Ok(text) = String::from_utf8(text) else {
        return Loaded::Unreadable("not UTF-8".into());
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        match Record::parse(line) {
            Ok(r) if plausible_name(&r.name) => good.push(r),
            Ok(_) => bad.push((i + 1, None)),
            Err(Some(name)) => bad.push((i + 1, Some(name).filter(|n| plausible_name(n)))),
            Err(None) => return Loaded::Unreadable(format!("line {} is not a gate record", i + 1)),
        }
    }
    Loaded::Records(good, bad)
}

/// Which gate: an action's, and for a per-address gate the address its
/// instance is open for. Every table of [`Gates`] is keyed by it, so the
/// instances of a per-address gate open, extend, close and recover each
/// on their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    /// The action's name.
    pub name: String,
    /// `Some` for an instance of a per-address gate.
    pub addr: Option<IpAddr>,
}

impl Instance {
    /// The instance of gate `action` that a request for `addr` concerns:
    /// the address's own for a per-address gate, else the one gate.
    pub fn of(action: &Action, addr: IpAddr) -> Instance {
        let per_address = gate_of(action).is_some_and(|g| g.per_address.is_some());
        Instance {
            name: action.name.clone(),
            addr: per_address.then_some(addr),
        }
    }
}

impl core::fmt::Display for Instance {
    /// `NAME`, or `NAME@ADDR` for a per-address instance, as in the log.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{}@{a}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

struct Open {
    record: Record,
    /// Monotonic deadline and ceiling (the wall clock can jump).
    deadline: Instant,
    ceiling: Instant,
    timer: Option<AbortHandle>,
    /// For serve gates: the child, taken by the closer.
    child: Option<tokio::process::Child>,
    /// Set (with the reason, for the log) by a closing action or a
    /// reload; `wake` then tells the gate's timer to close it now,
    /// through the same path as its deadline.
    early: Option<&'static str>,
    wake: Rc<Notify>,
}

/// All open gates. The owner gives them the current config (at start and
/// on every reload); they need nothing else from it.
pub struct Gates {
    logger: Arc<Logger>,
    /// The current config: the actions whose commands open and close the
    /// gates, and the state directory.
    config: RefCell<Rc<Config>>,
    /// The state directory, held open and checked (see `state.rs`); an
    /// error makes every gate refuse to open.
    state: RefCell<Result<StateDir, StateDirError>>,
    /// Where gate cgroups go, if the system has a cgroup2 hierarchy.
    cgroups: Option<crate::monitor::cgroup::Base>,
    /// Whether "no cgroup" was logged.
    cgroup_noted: std::cell::Cell<bool>,
    /// Cgroups of closed gates still holding processes (sessions).
    lingering: RefCell<Vec<PathBuf>>,
    /// Open instances: at most one per action, or `max_addresses` per
    /// per-address action (checked by [`Gates::full`] before opening).
    open: RefCell<HashMap<Instance, Open>>,
    /// Instances whose stop is running; a new opening waits for it, or
    /// the old stop would undo the new run.
    closing: RefCell<HashSet<Instance>>,
    /// Notified whenever a close finishes.
    closed: Notify,
    /// Instances whose opening (`run`, or a `serve` settling) is in
    /// progress; a trigger that arrives meanwhile waits for the outcome.
    opening: RefCell<HashSet<Instance>>,
    /// Notified whenever an opening finishes.
    opened: Notify,
    /// The answer of each instance's last finished opening: one per
    /// configured gate, and for a per-address gate at most
    /// `max_addresses` besides those being opened.
    outcome: RefCell<HashMap<Instance, Answer>>,
}

/// Marks an instance as being opened or closed for as long as it lives
/// (even if the task doing it is cancelled), then wakes whoever waits for
/// that to finish: triggers waiting for an opening's outcome, openings
/// waiting for a close.
struct Busy<'a> {
    set: &'a RefCell<HashSet<Instance>>,
    done: &'a Notify,
    key: Instance,
}

impl<'a> Busy<'a> {
    fn mark(set: &'a RefCell<HashSet<Instance>>, done: &'a Notify, key: &Instance) -> Busy<'a> {
        set.borrow_mut().insert(key.clone());
        Busy {
            set,
            done,
            key: key.clone(),
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.try_borrow_mut() {
            s.remove(&self.key);
        }
        self.done.notify_waiters();
    }
}

impl Gates {
    /// No gate open yet.
    pub fn new(config: Rc<Config>, logger: Arc<Logger>) -> Rc<Gates> {
        let state = StateDir::open(&config.daemon.state_dir, true);
        Rc::new(Gates {
            logger,
            config: RefCell::new(config),
            state: RefCell::new(state),
            cgroups: crate::monitor::cgroup::Base::detect(),
            cgroup_noted: std::cell::Cell::new(false),
            lingering: RefCell::new(Vec::new()),
            open: RefCell::new(HashMap::new()),
            closing: RefCell::new(HashSet::new()),
            closed: Notify::new(),
            opening: RefCell::new(HashSet::new()),
            opened: Notify::new(),
            outcome: RefCell::new(HashMap::new()),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.config.borrow().daemon.state_dir.clone()
    }

    fn action_named(&self, name: &str) -> Option<Action> {
        self.config
            .borrow()
            .actions
            .iter()
            .find(|a| a.name == name)
            .cloned()
    }

    /// Whether instance `key` is being opened right now.
    pub fn is_opening(&self, key: &Instance) -> bool {
        self.opening.borrow().contains(key)
    }

    /// If instance `key` is being opened, waits until that is done.
    /// Returns the answer of that opening if it failed, so that the
    /// waiting trigger is told exactly what happened; `None` when nothing
    /// was in progress or the opening succeeded (the gate is open now).
    pub async fn wait_opening(&self, key: &Instance) -> Option<Answer> {
        let mut waited = false;
        loop {
            let done = self.opened.notified();
            if !self.opening.borrow().contains(key) {
                break;
            }
            waited = true;
            done.await;
        }
        if !waited {
            return None;
        }
        self.outcome
            .borrow()
            .get(key)
            .copied()
            .filter(|a| a.status == Status::Failed)
    }

    /// Waits until instance `key`'s stop, if one is running, is done.
    async fn wait_closing(&self, key: &Instance) {
        loop {
            let done = self.closed.notified();
            if !self.closing.borrow().contains(key) {
                return;
            }
            done.await;
        }
    }

    /// Seconds from now until the open gate `o` closes (at least 1).
    fn seconds_left(o: &Open) -> u32 {
        let left = o.deadline.saturating_duration_since(Instant::now());
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
    }

    fn log(&self, level: Level, msg: &str) {
        self.logger.log(level, msg);
    }

    /// After a reload: `config` is the current config from now on.
    pub fn reconfigure(&self, config: Rc<Config>) {
        if self.state_dir() != config.daemon.state_dir {
            let opened = StateDir::open(&config.daemon.state_dir, true);
            if let Err(e) = &opened {
                self.log(
                    Level::Err,
                    &format!("state_dir {e}; gates will refuse to open"),
                );
            }
            *self.state.borrow_mut() = opened;
        }
        // Outcomes are kept per configured gate only, so they stay bounded
        // by the config's action count (and max_addresses) across reloads.
        self.outcome
            .borrow_mut()
            .retain(|key, _| config.actions.iter().any(|a| a.name == key.name));
        // An open instance whose gate the reload made per address, or no
        // longer per address, would be looked up under another key and
        // could be opened twice for one address: it closes now, with its
        // own recorded address, through its timer.
        let mut changed = Vec::new();
        for (key, o) in self.open.borrow_mut().iter_mut() {
            let now_per = config
                .actions
                .iter()
                .find(|a| a.name == key.name)
                .and_then(gate_of)
                .map(|g| g.per_address.is_some());
            if now_per.is_some_and(|p| p != key.addr.is_some()) && o.early.is_none() {
                o.early = Some("per_address changed by a reload");
                o.wake.notify_one();
                changed.push(key.to_string());
            }
        }
        for key in changed {
            self.log(
                Level::Notice,
                &format!("gate {key}: per_address changed by the reload; closing it"),
            );
        }
        *self.config.borrow_mut() = config;
    }

    fn persist(&self) -> std::io::Result<()> {
        let records: Vec<Record> = self
            .open
            .borrow()
            .values()
            .map(|o| o.record.clone())
            .collect();
        match &*self.state.borrow() {
            Ok(dir) => write_state(dir, &records),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// A trigger for an open gate. For the address it is open for: extend
    /// it (if allowed) and answer "already active" with the seconds left.
    /// For another address (a gate that is not per address): refuse,
    /// saying it is open for another address and when it closes (nothing
    /// was done for this one). `None` when the instance is not open.
    pub async fn try_extend(&self, action: &Action, addr: IpAddr) -> Option<Answer> {
        let gate = gate_of(action)?;
        let key = Instance::of(action, addr);
        let (changed, left) = {
            let mut open = self.open.borrow_mut();
            let o = open.get_mut(&key)?;
            if o.record.addr != addr {
                return Some(
                    Answer::because(Status::Refused, Reason::OpenForOther)
                        .with_seconds(Self::seconds_left(o)),
                );
            }
            if !gate.extend {
                return Some(
                    Answer::bare(Status::AlreadyActive).with_seconds(Self::seconds_left(o)),
                );
            }
            let new = (Instant::now() + gate.ttl).min(o.ceiling);
            let changed = if new > o.deadline {
                let added = new - o.deadline;
                o.deadline = new;
                o.record.deadline = o.record.deadline.saturating_add(added.as_secs());
                true
            } else {
                false
            };
            (changed, Self::seconds_left(o))
        };
        if changed {
            if let Err(e) = self.persist() {
                // The longer deadline is not on disk; after a crash the
                // recorded (earlier) one applies, which fails closed.
                self.log(
                    Level::Err,
                    &format!(
                        "gate {key}: state file write failed ({e}); extension kept in memory only"
                    ),
                );
            }
            self.log(Level::Notice, &format!("gate {key} extended"));
        }
        Some(Answer::bare(Status::AlreadyActive).with_seconds(left))
    }

    /// Whether a per-address gate is open (or being opened) for as many
    /// addresses as its `max_addresses` allows, so that `addr`, which has
    /// no instance yet, must be refused: the answer says so, with the
    /// seconds until the first open instance closes. `None` when `addr`
    /// may open (or already has its instance).
    pub fn full(&self, action: &Action, addr: IpAddr) -> Option<Answer> {
        let max = gate_of(action)?.per_address?;
        let key = Instance::of(action, addr);
        let open = self.open.borrow();
        let opening = self.opening.borrow();
        if open.contains_key(&key) || opening.contains(&key) {
            return None;
        }
        let mine = |k: &Instance| k.name == action.name;
        let busy = open.keys().filter(|k| mine(k)).count()
            + opening
                .iter()
                .filter(|k| mine(k) && !open.contains_key(*k))
                .count();
        if busy < max.get() {
            return None;
        }
        let first = open
            .iter()
            .filter(|(k, _)| mine(k))
            .map(|(_, o)| Self::seconds_left(o))
            .min()
            .unwrap_or(0);
        Some(Answer::because(Status::Refused, Reason::AddressesFull).with_seconds(first))
    }

    /// Opens the gate of `action` for `addr` (its own instance, for a
    /// per-address gate).
    pub async fn open(self: &Rc<Self>, action: &Action, addr: IpAddr) -> Answer {
        let key = Instance::of(action, addr);
        let _opening = Busy::mark(&self.opening, &self.opened, &key);
        let answer = self.open_inner(action, &key, addr).await;
        self.outcome.borrow_mut().insert(key.clone(), answer);
        self.bound_outcomes(action, &key);
        answer
    }

    /// Keeps the outcomes of a per-address gate to `max_addresses` besides
    /// those being opened. A trigger that finds no outcome after waiting
    /// for an opening tries the gate itself, so forgetting one is safe.
    fn bound_outcomes(&self, action: &Action, just: &Instance) {
        let Some(max) = gate_of(action).and_then(|g| g.per_address) else {
            return;
        };
        let opening = self.opening.borrow();
        let mut outcome = self.outcome.borrow_mut();
        let mine = outcome
            .keys()
            .filter(|k| k.name == action.name && k.addr.is_some())
            .count();
        if mine > max.get() {
            outcome.retain(|k, _| {
                k.name != action.name || k.addr.is_none() || k == just || opening.contains(k)
            });
        }
    }

    async fn open_inner(self: &Rc<Self>, action: &Action, key: &Instance, addr: IpAddr) -> Answer {
        let failed = |reason| Answer::because(Status::Failed, reason);
        let Some(gate) = gate_of(action) else {
            return failed(Reason::SpawnFailed);
        };
        let name = action.name.clone();
        // A trigger that arrives while this instance's stop (or serve
        // shutdown) is still running opens it only once that is done.
        self.wait_closing(key).await;
        self.sweep_cgroups();
        let cwd = self.state_dir();
        let now = Instant::now();
        let opened = unix_now();
        let mut record = Record {
            name: name.clone(),
            serve: false,
            per_address: key.addr.is_some(),
            pid: 0,
            start_ticks: None,
            boot_id: boot_id(),
            opened,
            deadline: opened.saturating_add(gate.ttl.as_secs().max(1)),
            addr,
            cgroup: None,
        };
        let mut child = None;
        // Its own cgroup, so that the gate's close kills all it started.
        let cgroup = self.new_cgroup(&name);
        record.cgroup = cgroup.as_ref().map(|c| c.path.clone());
        match &action.kind {
            ActionKind::Run {
                run,
                gate: Some((stop, _)),
            } => {
                let spec = spec(key, "run", run, addr, action, &cwd);
                let why = match action::start_in(&spec, &self.logger, cgroup.as_ref()) {
                    Ok(s) => {
                        let outcome = s.wait(action.timeout).await;
                        self.log(
                            Level::Notice,
                            &format!("gate {key} run {}", outcome.describe()),
                        );
                        match outcome {
                            o if o.success() => None,
                            action::Outcome::TimedOut => Some(Reason::RunTimedOut),
                            _ => Some(Reason::RunFailed),
                        }
                    }
                    Err(e) => {
                        self.log(
                            Level::Err,
                            &format!("gate {key} run failed to start {}: {e}", run.program()),
                        );
                        Some(Reason::SpawnFailed)
                    }
                };
                if let Some(reason) = why {
                    self.run_stop(key, stop, addr, action, &cwd).await;
                    self.end_cgroup(key, record.cgroup.as_deref()).await;
                    return failed(reason);
                }
            }
            ActionKind::Serve { serve, .. } => {
                let spec = spec(key, "serve", serve, addr, action, &cwd);
                let mut s = match action::start_in(&spec, &self.logger, cgroup.as_ref()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.log(
                            Level::Err,
                            &format!("gate {key} serve failed to start {}: {e}", serve.program()),
                        );
                        self.end_cgroup(key, record.cgroup.as_deref()).await;
                        return failed(Reason::SpawnFailed);
                    }
                };
                tokio::time::sleep(SERVE_SETTLE).await;
                if let Ok(Some(st)) = s.child.try_wait() {
                    self.log(
                        Level::Err,
                        &format!(
                            "gate {key} serve pid={} exited at once ({})",
                            s.pid,
                            action::Outcome::Exited(st).describe()
                        ),
                    );
                    action::kill_group(s.pid, Signal::SIGKILL);
                    self.end_cgroup(key, record.cgroup.as_deref()).await;
                    return failed(Reason::ServeExited);
                }
                record.serve = true;
                record.pid = s.pid;
                record.start_ticks = start_ticks(s.pid);
                let pid = s.pid;
                child = Some(s.into_child());
                self.log(
                    Level::Notice,
                    &format!("gate {key} serve pid={pid} started"),
                );
            }
            _ => {
                self.end_cgroup(key, record.cgroup.as_deref()).await;
                return failed(Reason::SpawnFailed);
            }
        }
        let ceiling = now + gate.max_open;
        self.open.borrow_mut().insert(
            key.clone(),
            Open {
                record,
                deadline: now + gate.ttl,
                ceiling,
                timer: None,
                child,
                early: None,
                wake: Rc::new(Notify::new()),
            },
        );
        if let Err(e) = self.persist() {
            self.log(
                Level::Err,
                &format!("gate {key}: cannot record it in the state file ({e}); closing it now"),
            );
            self.close(key, "state file unwritable", action).await;
            return failed(Reason::StateUnwritable);
        }
        self.log(
            Level::Notice,
            &format!(
                "gate {key} open for addr={addr} ttl={}s max_open={}s",
                gate.ttl.as_secs(),
                gate.max_open.as_secs()
            ),
        );
        self.arm(key);
        Answer::bare(Status::Started)
            .with_seconds(u32::try_from(gate.ttl.as_secs().max(1)).unwrap_or(u32::MAX))
    }

    /// A closing action for gate `action` from `addr`: closes the instance
    /// `addr` concerns now, through the same path as its deadline (its
    /// timer runs `stop`, or stops the serve program, then forgets the
    /// record), and answers once that is done: `closed`, or `not-open`
    /// when it was not open (or its opening failed, or a stop already
    /// running closed it). A gate that is not per address and is open for
    /// another address is not closed: refused, `open-for-other-address`,
    /// as a trigger for it would be.
    pub async fn close_early(&self, action: &Action, addr: IpAddr) -> Answer {
        let key = Instance::of(action, addr);
        // An opening in progress is waited for, so that the close cannot
        // be overtaken by the run it follows.
        if self.wait_opening(&key).await.is_some() {
            return Answer::bare(Status::NotOpen);
        }
        let closing_already = self.closing.borrow().contains(&key);
        if closing_already {
            self.wait_closing(&key).await;
            return Answer::bare(Status::NotOpen);
        }
        let ours = {
            let mut open = self.open.borrow_mut();
            let Some(o) = open.get_mut(&key) else {
                return Answer::bare(Status::NotOpen);
            };
            if o.record.addr != addr {
                return Answer::because(Status::Refused, Reason::OpenForOther)
                    .with_seconds(Self::seconds_left(o));
            }
            o.early = Some("closing action");
            o.wake.notify_one();
            Rc::clone(&o.wake)
        };
        self.log(
            Level::Notice,
            &format!("gate {key}: closing action; closing it now"),
        );
        // Its timer removes it from `open` and marks it closing in one
        // step; the close is over once that closing is. (The instance may
        // be opened again meanwhile: that is a new entry, not this one.)
        loop {
            let done = self.closed.notified();
            let still = self
                .open
                .borrow()
                .get(&key)
                .is_some_and(|o| Rc::ptr_eq(&o.wake, &ours));
            if !still {
                break;
            }
            done.await;
        }
        self.wait_closing(&key).await;
        Answer::bare(Status::Closed)
    }

    /// Starts the task that closes instance `key` at its deadline (or when
    /// its serve program exits, or a closing action asks).
    fn arm(self: &Rc<Self>, key: &Instance) {
        let me = Rc::clone(self);
        let k = key.clone();
        let task = tokio::task::spawn_local(async move { me.watch(&k).await });
        if let Some(o) = self.open.borrow_mut().get_mut(key) {
            o.timer = Some(task.abort_handle());
        }
    }

    async fn watch(&self, key: &Instance) {
        // The serve child (if any) lives in this task from here on.
        let mut child = self
            .open
            .borrow_mut()
            .get_mut(key)
            .and_then(|o| o.child.take());
        loop {
            let Some((deadline, wake)) = self
                .open
                .borrow()
                .get(key)
                .map(|o| (o.deadline, Rc::clone(&o.wake)))
            else {
                return;
            };
            let exited = match child.as_mut() {
                Some(c) => tokio::select! {
                    st = c.wait() => Some(st),
                    _ = tokio::time::sleep_until(deadline.into()) => None,
                    _ = wake.notified() => None,
                },
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = wake.notified() => {}
                    }
                    None
                }
            };
            let action = self.action_named(&key.name);
            if let Some(st) = exited {
                let how = match st {
                    Ok(s) => action::Outcome::Exited(s).describe(),
                    Err(e) => e.to_string(),
                };
                self.log(
                    Level::Notice,
                    &format!("gate {key} serve exited early ({how})"),
                );
                self.detach_timer(key);
                self.close_with(key, "serve exited", action.as_ref(), child)
                    .await;
                return;
            }
            let early = self.open.borrow().get(key).and_then(|o| o.early);
            if let Some(why) = early {
                self.detach_timer(key);
                self.close_with(key, why, action.as_ref(), child).await;
                return;
            }
            let current = self.open.borrow().get(key).map(|o| o.deadline);
            if current.is_some_and(|d| Instant::now() < d) {
                continue; // extended meanwhile
            }
            if let Some(a) = action.as_ref() {
                if self.hold(key, a).await {
                    continue;
                }
            }
            // A closing action may have come while hold_while ran, and so
            // may a trigger that extended the gate: that one holds.
            let (early, extended) = match self.open.borrow().get(key) {
                Some(o) => (o.early, Instant::now() < o.deadline),
                None => (None, false),
            };
            if early.is_none() && extended {
                continue;
            }
            let why = early.unwrap_or("deadline");
            self.detach_timer(key);
            self.close_with(key, why, action.as_ref(), child).await;
            return;
        }
    }

    /// Forgets the timer handle of a gate whose own timer is closing it.
    fn detach_timer(&self, key: &Instance) {
        if let Some(o) = self.open.borrow_mut().get_mut(key) {
            o.timer = None;
        }
    }

    /// Runs `hold_while` at the deadline; on exit 0 extends by
    /// `hold_interval` up to `max_open`. Returns whether it extended.
    async fn hold(&self, key: &Instance, action: &Action) -> bool {
        let Some(gate) = gate_of(action) else {
            return false;
        };
        let Some(hold) = gate.hold_while.as_ref() else {
            return false;
        };
        let (addr, ceiling, wake) = match self.open.borrow().get(key) {
            Some(o) => (o.record.addr, o.ceiling, Rc::clone(&o.wake)),
            None => return false,
        };
        let now = Instant::now();
        if now >= ceiling {
            self.log(
                Level::Notice,
                &format!("gate {key} reached max_open; closing"),
            );
            return false;
        }
        let cwd = self.state_dir();
        let s = spec(key, "hold_while", hold, addr, action, &cwd);
        let busy = match action::start(&s, &self.logger) {
            Ok(st) => {
                let pid = st.pid;
                let waited = st.wait(action.timeout.min(gate.hold_interval));
                tokio::pin!(waited);
                loop {
                    tokio::select! {
                        outcome = &mut waited => break outcome.success(),
                        _ = wake.notified() => {
                            // Only a closing action cuts the check short;
                            // other wake-ups (an extension) let it run.
                            let closing = self.open.borrow().get(key).is_none_or(|o| o.early.is_some());
                            if closing {
                                action::kill_group(pid, Signal::SIGKILL);
                                let _ = (&mut waited).await;
                                self.log(
                                    Level::Notice,
                                    &format!("gate {key} hold_while stopped (closing action)"),
                                );
                                break false;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                self.log(
                    Level::Err,
                    &format!("gate {key} hold_while failed to start: {e}"),
                );
                false
            }
        };
        if !busy {
            return false;
        }
        let new = (Instant::now() + gate.hold_interval).min(ceiling);
        match self.open.borrow_mut().get_mut(key) {
            // A closing action that came while hold_while ran wins.
            Some(o) if o.early.is_none() => {
                // Never earlier than a trigger's extension meanwhile.
                let new = new.max(o.deadline);
                o.deadline = new;
                o.record.deadline = unix_now()
                    .saturating_add(new.saturating_duration_since(Instant::now()).as_secs());
            }
            _ => return false,
        }
        if let Err(e) = self.persist() {
            self.log(
                Level::Err,
                &format!("gate {key}: state file write failed ({e}); not extending"),
            );
            return false;
        }
        self.log(
            Level::Notice,
            &format!("gate {key} held open: still in use"),
        );
        true
    }

    async fn close(&self, key: &Instance, why: &str, action: &Action) {
        let child = self
            .open
            .borrow_mut()
            .get_mut(key)
            .and_then(|o| o.child.take());
        if let Some(t) = self
            .open
            .borrow_mut()
            .get_mut(key)
            .and_then(|o| o.timer.take())
        {
            t.abort();
        }
        self.close_with(key, why, Some(action), child).await;
    }

    /// Closes a gate: kills the serve group or runs `stop`, then removes
    /// the record.
    async fn close_with(
        &self,
        key: &Instance,
        why: &str,
        action: Option<&Action>,
        child: Option<tokio::process::Child>,
    ) {
        let Some(o) = self.open.borrow_mut().remove(key) else {
            return;
        };
        let _closing = Busy::mark(&self.closing, &self.closed, key);
        if o.record.serve {
            stop_serve(o.record.pid, child).await;
        } else if let Some(a) = action {
            if let ActionKind::Run {
                gate: Some((stop, _)),
                ..
            } = &a.kind
            {
                let cwd = self.state_dir();
                self.run_stop(key, stop, o.record.addr, a, &cwd).await;
            }
        } else {
            self.log(
                Level::Err,
                &format!(
                    "gate {key}: its action is no longer configured; cannot run its stop command"
                ),
            );
        }
        // An orderly close ends the door (the program, or what stop stops),
        // not what it let in: sessions a served sshd started live on in its
        // cgroup, which is removed once they have ended.
        if let Some(path) = o.record.cgroup.clone() {
            self.lingering.borrow_mut().push(path);
        }
        self.sweep_cgroups();
        if let Err(e) = self.persist() {
            self.log(
                Level::Err,
                &format!("gate {key}: state file write failed after closing ({e})"),
            );
        }
        self.log(Level::Notice, &format!("gate {key} closed ({why})"));
    }

    async fn run_stop(
        &self,
        key: &Instance,
        stop: &Argv,
        addr: IpAddr,
        action: &Action,
        cwd: &Path,
    ) {
        let s = spec(key, "stop", stop, addr, action, cwd);
        match action::start(&s, &self.logger) {
            Ok(st) => {
                crate::monitor::notify::extend(action.timeout);
                let outcome = st.wait(action.timeout).await;
                let level = if outcome.success() {
                    Level::Notice
                } else {
                    Level::Err
                };
                self.log(level, &format!("gate {key} stop {}", outcome.describe()));
            }
            Err(e) => self.log(
                Level::Err,
                &format!("gate {key} stop failed to start {}: {e}", stop.program()),
            ),
        }
    }

    /// A new cgroup for one of gate `name`'s commands, or `None` where
    /// the system allows none (then logged once).
    fn new_cgroup(&self, name: &str) -> Option<crate::monitor::cgroup::Cgroup> {
        let made = match &self.cgroups {
            Some(base) => base.create(name).map_err(|e| e.to_string()),
            None => Err("no writable cgroup2 hierarchy".to_string()),
        };
        match made {
            Ok(c) => Some(c),
            Err(e) => {
                if !self.cgroup_noted.replace(true) {
                    self.log(
                        Level::Warning,
                        &format!("gates run without a cgroup of their own ({e}); what a serve program or run leaves after setsid is not tracked"),
                    );
                }
                None
            }
        }
    }

    /// Closes a run/stop gate whose record cannot be read, so the address
    /// it was opened for is unknown: with `stop_all`, the whole door is
    /// closed; otherwise `stop` (which then cannot use `{addr}`: the config
    /// refuses that) runs with an empty `POSTERN_ADDR`. Never a made-up
    /// address, which would close the wrong hole and leave the real one
    /// open.
    async fn close_unknown(&self, a: &Action, cwd: &Path) {
        let ActionKind::Run {
            gate: Some((stop, gate)),
            ..
        } = &a.kind
        else {
            return;
        };
        let (argv, what) = match &gate.stop_all {
            Some(all) => (all, "stop_all"),
            None => (stop, "stop"),
        };
        let s = Spec {
            label: format!("gate {} {what}", a.name),
            argv,
            addr: String::new(),
            action: &a.name,
            source: None,
            run_as: a.run_as.as_ref(),
            cwd,
        };
        match action::start(&s, &self.logger) {
            Ok(st) => {
                crate::monitor::notify::extend(a.timeout);
                let outcome = st.wait(a.timeout).await;
                let level = if outcome.success() {
                    Level::Notice
                } else {
                    Level::Err
                };
                self.log(
                    level,
                    &format!(
                        "gate {} {what} (address unknown) {}",
                        a.name,
                        outcome.describe()
                    ),
                );
            }
            Err(e) => self.log(
                Level::Err,
                &format!(
                    "gate {} {what} failed to start {}: {e}",
                    a.name,
                    argv.program()
                ),
            ),
        }
    }

    /// Start-up: kills what a gate of the previous posternd left running.
    /// Its cgroup, when one was recorded, holds exactly that. Without one
    /// (no cgroup2, or an older state file), only a serve program that is
    /// still alive is killed, with its process group, and only if its pid
    /// and start time match the record exactly on this boot: a reused pid
    /// has a different start time, and an unknown start time matches
    /// nothing.
    async fn kill_leftovers(&self, r: &Record, boot: &str) {
        if let Some(path) = r.cgroup.as_deref() {
            if self.cgroups.as_ref().is_some_and(|b| b.is_ours(path)) {
                let killed = crate::monitor::cgroup::kill_and_remove(path).await;
                if killed > 0 {
                    self.log(
                        Level::Notice,
                        &format!(
                            "gate {} cgroup {} left {killed} process(es) by the previous posternd; killed",
                            r.name,
                            path.display()
                        ),
                    );
                }
                return;
            }
        }
        let Some(recorded) = r.start_ticks else {
            return;
        };
        if !r.serve || r.pid <= 1 || r.boot_id.is_empty() || r.boot_id != boot {
            return;
        }
        if start_ticks(r.pid) == Some(recorded) {
            action::kill_group_or_pid(r.pid, Signal::SIGKILL);
            self.log(
                Level::Notice,
                &format!(
                    "gate {} serve group {} left 1 process(es) by the previous posternd; killed",
                    r.name, r.pid
                ),
            );
        }
    }

    /// Removes the cgroups of closed gates that have emptied since.
    fn sweep_cgroups(&self) {
        self.lingering
            .borrow_mut()
            .retain(|p| std::fs::remove_dir(p).is_err() && p.exists());
    }

    /// Kills what is left in instance `key`'s cgroup and removes it: for a
    /// gate that failed to open, whose processes let nobody in yet.
    async fn end_cgroup(&self, key: &Instance, cgroup: Option<&Path>) {
        let Some(path) = cgroup else {
            return;
        };
        let ours = self.cgroups.as_ref().is_some_and(|b| b.is_ours(path));
        if !ours {
            return;
        }
        let killed = crate::monitor::cgroup::kill_and_remove(path).await;
        if killed > 0 {
            self.log(
                Level::Notice,
                &format!("gate {key}: {killed} process(es) left in its cgroup; killed"),
            );
        }
    }

    /// Closes every open gate (clean shutdown, or failure), with the
    /// actions of `config` for their stop commands.
    pub async fn close_all(&self, why: &str, config: &Config) {
        let keys: Vec<Instance> = self.open.borrow().keys().cloned().collect();
        for key in keys {
            if let Some(t) = self
                .open
                .borrow_mut()
                .get_mut(&key)
                .and_then(|o| o.timer.take())
            {
                t.abort();
            }
            let child = self
                .open
                .borrow_mut()
                .get_mut(&key)
                .and_then(|o| o.child.take());
            let action = config.actions.iter().find(|a| a.name == key.name);
            self.close_with(&key, why, action, child).await;
        }
    }

    /// Start-up: closes, exactly, a recorded run gate that must not be
    /// re-armed: its `stop` runs with its own recorded address, then what
    /// it left is killed.
    async fn stop_recorded(&self, r: &Record, a: &Action, boot: &str, why: &str) {
        let key = Instance {
            name: r.name.clone(),
            addr: r.per_address.then_some(r.addr),
        };
        if let ActionKind::Run {
            gate: Some((stop, _)),
            ..
        } = &a.kind
        {
            self.run_stop(&key, stop, r.addr, a, &self.state_dir())
                .await;
        }
        self.kill_leftovers(r, boot).await;
        self.log(Level::Notice, &format!("gate {key} {why}"));
    }

    /// Start-up: apply the state file left by the previous posternd.
    pub async fn recover(self: &Rc<Self>) {
        let dir = self.state_dir();
        let now = unix_now();
        let boot = boot_id();
        let loaded = match &*self.state.borrow() {
            Ok(state) => {
                state.remove_stale_temps();
                read_state(state)
            }
            Err(e) => Loaded::Unreadable(e.to_string()),
        };
        match loaded {
            Loaded::Missing => {}
            Loaded::Unreadable(why) => {
                self.log(
                    Level::Err,
                    &format!(
                        "state file {} unreadable ({why}); stopping every gate",
                        dir.join(STATE_FILE).display()
                    ),
                );
                let actions = self.config.borrow().actions.clone();
                for a in actions {
                    self.close_unknown(&a, &dir).await;
                }
            }
            Loaded::Records(records, bad) => {
                for (line, name) in bad {
                    let Some(a) = name.as_deref().and_then(|n| self.action_named(n)) else {
                        self.log(
                            Level::Err,
                            &format!("state file line {line}: record unreadable and of no configured action"),
                        );
                        continue;
                    };
                    let name = a.name.clone();
                    self.log(
                        Level::Err,
                        &format!("gate {name}: record unreadable; stopping it"),
                    );
                    self.close_unknown(&a, &dir).await;
                }
                for r in records {
                    self.recover_one(r, now, &boot).await;
                }
            }
        }
        if let Err(e) = self.persist() {
            self.log(
                Level::Err,
                &format!(
                    "state file {} not writable: {e}; gates will refuse to open",
                    dir.join(STATE_FILE).display()
                ),
            );
        }
    }

    /// Start-up: one readable record. A serve gate is over; an unexpired
    /// run gate is re-armed as the instance it was; anything else (expired,
    /// recorded per address but configured per gate or the other way
    /// round, a second record of one instance, more addresses than
    /// `max_addresses` now allows) is closed exactly, with its own address.
    async fn recover_one(self: &Rc<Self>, r: Record, now: u64, boot: &str) {
        let action = self.action_named(&r.name);
        let expired = now >= r.deadline || now < r.opened;
        if r.serve {
            // Its program died with the previous posternd; make sure, and
            // kill only what is provably ours.
            self.kill_leftovers(&r, boot).await;
            let key = Instance {
                name: r.name.clone(),
                addr: r.per_address.then_some(r.addr),
            };
            self.log(
                Level::Notice,
                &format!("gate {key} (serve) closed at start-up"),
            );
            return;
        }
        let Some(a) = action else {
            self.log(
                Level::Err,
                &format!(
                    "gate {} recorded open but no longer configured; cannot run its stop command",
                    r.name
                ),
            );
            self.kill_leftovers(&r, boot).await;
            return;
        };
        let Some(gate) = gate_of(&a) else {
            self.stop_recorded(
                &r,
                &a,
                boot,
                "recorded open but no longer a gate; stopped at start-up",
            )
            .await;
            return;
        };
        if expired {
            self.stop_recorded(
                &r,
                &a,
                boot,
                "expired while posternd was down; stopped at start-up",
            )
            .await;
            return;
        }
        if gate.per_address.is_some() != r.per_address {
            let why = if r.per_address {
                "recorded per address, now configured as one gate; stopped at start-up"
            } else {
                "recorded as one gate, now configured per address; stopped at start-up"
            };
            self.stop_recorded(&r, &a, boot, why).await;
            return;
        }
        let key = Instance::of(&a, r.addr);
        if self.open.borrow().contains_key(&key) {
            self.stop_recorded(
                &r,
                &a,
                boot,
                "recorded twice; this record's address stopped at start-up",
            )
            .await;
            return;
        }
        if let Some(max) = gate.per_address {
            let count = self
                .open
                .borrow()
                .keys()
                .filter(|k| k.name == a.name)
                .count();
            if count >= max.get() {
                self.stop_recorded(&r, &a, boot, "over max_addresses; stopped at start-up")
                    .await;
                return;
            }
        }
        // The ceiling counts from when the gate opened, not from this
        // restart, and a recorded deadline beyond it (a stale or edited
        // file) is cut back.
        let recorded = Duration::from_secs(r.deadline - now);
        let open_for = Duration::from_secs(now - r.opened);
        let left = gate.max_open.saturating_sub(open_for);
        let remaining = recorded.min(left).max(Duration::from_secs(1));
        let ceiling = Instant::now() + left.max(remaining);
        self.open.borrow_mut().insert(
            key.clone(),
            Open {
                record: r,
                deadline: Instant::now() + remaining,
                ceiling,
                timer: None,
                child: None,
                early: None,
                wake: Rc::new(Notify::new()),
            },
        );
        self.log(
            Level::Notice,
            &format!("gate {key} re-armed: closes in {}s", remaining.as_secs()),
        );
        self.arm(&key);
    }
}

fn gate_of(action: &Action) -> Option<&Gate> {
    match &action.kind {
        ActionKind::Run {
            gate: Some((_, g)), ..
        } => Some(g),
        ActionKind::Serve { gate, .. } => Some(gate),
        _ => None,
    }
}

fn spec<'a>(
    key: &Instance,
    what: &str,
    argv: &'a Argv,
    addr: IpAddr,
    action: &'a Action,
    cwd: &'a Path,
) -> Spec<'a> {
    Spec {
        label: format!("gate {key} {what}"),
        argv,
        addr: addr.to_string(),
        action: &action.name,
        source: None,
        run_as: action.run_as.as_ref(),
        cwd,
    }
}

/// SIGTERM to the serve group, SIGKILL after [`SERVE_GRACE`].
async fn stop_serve(pid: u32, child: Option<tokio::process::Child>) {
    action::kill_group(pid, Signal::SIGTERM);
    match child {
        Some(mut c) => {
            if tokio::time::timeout(SERVE_GRACE, c.wait()).await.is_err() {
                action::kill_group(pid, Signal::SIGKILL);
                let _ = c.wait().await;
            }
        }
        None => {
            tokio::time::sleep(SERVE_GRACE).await;
            action::kill_group(pid, Signal::SIGKILL);
        }
    }
    action::kill_group(pid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Goal: a record round-trips with an unknown start time ("-") and a
    // cgroup; a start time of 0 (older files) reads as unknown; a file of
    // an older version (no cgroup field) still parses.
    #[test]
    fn record_start_time_and_cgroup() {
        let r = Record {
            name: "svc".into(),
            serve: true,
            per_address: false,
            pid: 42,
            start_ticks: None,
            boot_id: "b".into(),
            opened: 1,
            deadline: 2,
            addr: "192.0.2.1".parse().unwrap(),
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/postern-svc-00")),
        };
        let line = r.to_line();
        assert!(line.contains(" start=- "), "{line}");
        assert_eq!(Record::parse(&line).unwrap(), r);
        let old =
            "gate name=svc kind=serve pid=42 start=0 boot=b opened=1 deadline=2 addr=192.0.2.1";
        let parsed = Record::parse(old).unwrap();
        assert_eq!(parsed.start_ticks, None);
        assert_eq!(parsed.cgroup, None);
        let bad = format!("{old} cgroup=relative/path");
        assert_eq!(Record::parse(&bad), Err(Some("svc".into())));
    }

    // Goal: an instance of a per-address gate round-trips as per=address;
    // a file of an older version (no per field) means one gate; any other
    // value is a record refused by name, never guessed.
    #[test]
    fn record_per_address() {
        let r = Record {
            name: "door".into(),
            serve: false,
            per_address: true,
            pid: 0,
            start_ticks: None,
            boot_id: String::new(),
            opened: 10,
            deadline: 20,
            addr: "2001:db8::7".parse().unwrap(),
            cgroup: None,
        };
        let line = r.to_line();
        assert!(
            line.ends_with(" addr=2001:db8::7 cgroup=- per=address"),
            "{line}"
        );
        assert_eq!(Record::parse(&line).unwrap(), r);
        let one = line.replace("per=address", "per=gate");
        assert!(!Record::parse(&one).unwrap().per_address);
        let old = line.replace(" per=address", "");
        assert!(!Record::parse(&old).unwrap().per_address);
        let bad = line.replace("per=address", "per=host");
        assert_eq!(Record::parse(&bad), Err(Some("door".into())));
    }

    // Goal: an instance is named NAME or NAME@ADDR in the log, and only a
    // per-address gate's requests get an address of their own.
    #[test]
    fn instance_names() {
        let one = Instance {
            name: "sshd".into(),
            addr: None,
        };
        let per = Instance {
            name: "door".into(),
            addr: Some("192.0.2.7".parse().unwrap()),
        };
        assert_eq!(one.to_string(), "sshd");
        assert_eq!(per.to_string(), "door@192.0.2.7");
    }
}
