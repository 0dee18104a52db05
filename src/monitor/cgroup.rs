//! cgroup v2: a control group of its own for every `serve` program and
//! every gate's `run` (the commands that may leave processes behind), so
//! that the next start-up after a crash (or a gate that failed to open)
//! kills exactly what they started, however it forked, double-forked or
//! called setsid, and nothing else. An orderly close stops the program
//! (or runs `stop`) as before and leaves what it let in (sessions); the
//! cgroup is removed once they end.
//!
//! posternd creates `postern-ACTION-RANDOM` below its own cgroup (under
//! systemd with `Delegate=yes`, that is the service's delegated subtree;
//! otherwise wherever it was started) on the cgroup2 hierarchy, and the
//! child joins it between fork and exec, before it can fork. The path is
//! recorded in the state file. Killing writes `cgroup.kill` (Linux 5.14);
//! on older kernels the group is frozen and each member SIGKILLed until
//! it is empty. A process can only be in such a group if posternd put it
//! there (or root moved it), so what is killed is provably ours.
//!
//! Where no cgroup2 hierarchy is writable (not root, or
//! `ProtectControlGroups=yes`), commands run in their process group only,
//! and recovery falls back to an exact pid and start-time match.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

/// First part of every cgroup name posternd creates.
pub const PREFIX: &str = "postern-";
/// How long removing an emptied cgroup is retried.
pub const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// Rounds of freeze-and-kill on kernels without `cgroup.kill`.
const KILL_ROUNDS: usize = 100;
/// Members read from `cgroup.procs` at most (bytes).
const MAX_PROCS_TEXT: u64 = 1 << 20;

/// Where posternd's cgroups go: its own cgroup on the cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The cgroup2 mount point.
    mount: PathBuf,
    /// posternd's own cgroup directory (below `mount`).
    dir: PathBuf,
}

/// A created cgroup, ready for a child to join.
#[derive(Debug)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
    procs: Arc<File>,
}

impl Cgroup {
    /// Its `cgroup.procs`, open for writing: a child writes "0" to it to
    /// join.
    pub fn procs(&self) -> Arc<File> {
        Arc::clone(&self.procs)
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in info.lines() {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        // An escaped mount point (spaces) or a bind of a subtree is not
        // one this code can map paths onto.
        if *root == "/" && !point.contains('\\') {
            return Some(PathBuf::from(point));
        }
    }
    None
}

fn plain(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.to_string_lossy().contains(char::is_whitespace)
}

impl Base {
    /// posternd's own cgroup on the cgroup2 hierarchy, if there is one.
    pub fn detect() -> Option<Base> {
        let mount = cgroup2_mount()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = mount.join(rel.trim().trim_start_matches('/'));
        if !plain(&dir) || !dir.join("cgroup.procs").is_file() {
            return None;
        }
        Some(Base { mount, dir })
    }

    /// Creates `postern-ACTION-RANDOM` for one command.
    pub fn create(&self, action: &str) -> std::io::Result<Cgroup> {
        let mut rnd = [0u8; 8];
        getrandom::getrandom(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut name = format!("{PREFIX}{action}-");
        for b in rnd {
            name.push_str(&format!("{b:02x}"));
        }
        let path = self.dir.join(name);
        std::fs::create_dir(&path)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
        {
            Ok(f) => Ok(Cgroup {
                path,
                procs: Arc::new(f),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// Whether `path` (read from the state file) names a cgroup posternd
    /// created: on this hierarchy, no `..`, named with [`PREFIX`], and a
    /// cgroup directory that still exists.
    pub fn is_ours(&self, path: &Path) -> bool {
        plain(path)
            && path.starts_with(&self.mount)
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX))
            && path.join("cgroup.procs").is_file()
    }
}

/// The pids in cgroup `path` (empty if it is gone).
pub fn members(path: &Path) -> Vec<u32> {
    let mut text = String::new();
    if let Ok(f) = File::open(path.join("cgroup.procs")) {
        let _ = f.take(MAX_PROCS_TEXT).read_to_string(&mut text);
    }
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn write_knob(path: &Path, knob: &str, value: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path.join(knob))?
        .write_all(value)
}

/// SIGKILLs every process in cgroup `path`. Returns how many there were.
pub fn kill(path: &Path) -> usize {
    let found = members(path).len();
    if found == 0 {
        return 0;
    }
    if write_knob(path, "cgroup.kill", b"1").is_ok() {
        return found;
    }
    // Before Linux 5.14: frozen members cannot fork or exit on their own
    // while they are killed one by one.
    let _ = write_knob(path, "cgroup.freeze", b"1");
    for _ in 0..KILL_ROUNDS {
        let left = members(path);
        if left.is_empty() {
            break;
        }
        for pid in left {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = write_knob(path, "cgroup.freeze", b"0");
    found
}

/// Kills what is left in `path` and removes it once empty (retried for
/// [`REMOVE_WAIT`]: killed processes take a moment to leave). Returns how
/// many processes were killed.
pub async fn kill_and_remove(path: &Path) -> usize {
    let killed = kill(path);
    let end = tokio::time::Instant::now() + REMOVE_WAIT;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(_) if tokio::time::Instant::now() < end => {
                kill(path);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => break,
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Goal: only plain absolute paths on the cgroup2 mount, named with the
    // prefix, count as ours.
    #[test]
    fn recorded_paths_are_checked() {
        let b = Base {
            mount: PathBuf::from("/sys/fs/cgroup"),
            dir: PathBuf::from("/sys/fs/cgroup/system.slice/posternd.service"),
        };
        for p in [
            "/sys/fs/cgroup/../../etc/postern-x",
            "/tmp/postern-x",
            "/sys/fs/cgroup/system.slice/sshd.service",
            "relative/postern-x",
            "/sys/fs/cgroup/a b/postern-x",
        ] {
            assert!(!b.is_ours(Path::new(p)), "{p}");
        }
        assert!(plain(Path::new("/sys/fs/cgroup/postern-x-00")));
    }
}
