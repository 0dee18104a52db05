//! Privilege separation: the network process's jail, and the hardening
//! both processes apply to themselves.
//!
//! The network process, before it reads a single byte from a peer or from
//! the monitor: chroots into an empty root-owned directory, drops to the
//! configured unprivileged user (setgroups([]), then setgid, then setuid,
//! each verified, and verifies that root cannot be regained), sets
//! no_new_privs, disables core dumps and ptrace by its own uid, and caps
//! its descriptors. Started by a non-root user, the chroot and the user
//! switch are impossible and are skipped with a warning; everything else
//! still happens.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};

/// What the network process needs to lock itself in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The empty directory to chroot into (ignored when not root).
    pub chroot: PathBuf,
    /// Unprivileged uid.
    pub uid: u32,
    /// Unprivileged gid.
    pub gid: u32,
    /// RLIMIT_NOFILE (soft and hard).
    pub nofile: u64,
}

/// What went wrong while dropping privileges. Each is fatal.
#[derive(Debug)]
pub enum PrivError {
    /// The chroot directory is unusable (exists but is not an empty,
    /// root-owned, non-writable directory).
    ChrootDir(PathBuf, String),
    /// A system call failed.
    Call(&'static str, nix::Error),
    /// An identity change did not take, or root could be regained.
    Verify(&'static str),
    /// The configured unprivileged user is root.
    RootUser,
    /// The configured group is root (gid 0).
    RootGroup,
}

impl core::fmt::Display for PrivError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PrivError::ChrootDir(p, why) => write!(f, "chroot directory {}: {why}", p.display()),
            PrivError::Call(what, e) => write!(f, "{what} failed: {e}"),
            PrivError::Verify(what) => write!(f, "privilege drop did not hold: {what}"),
            PrivError::RootUser => f.write_str(
                "[daemon] user resolves to uid 0; set it to an unprivileged user such as nobody",
            ),
            PrivError::RootGroup => f.write_str(
                "[daemon] group resolves to gid 0; set group to an unprivileged group such as nogroup",
            ),
        }
    }
}

/// Whether this process can change identity (effective uid 0).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// Creates `dir` if needed (root-owned, mode 0755) and checks that it is a
/// directory, owned by root, writable by nobody else, and empty. Only
/// meaningful as root; callers skip it otherwise.
pub fn prepare_chroot(dir: &Path) -> Result<(), PrivError> {
    let bad = |why: &str| PrivError::ChrootDir(dir.to_path_buf(), why.to_string());
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| bad(&format!("cannot create it: {e}")))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| bad(&format!("cannot set its mode: {e}")))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| bad(&e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("is not a directory"));
    }
    if meta.uid() != 0 {
        return Err(bad("is not owned by root; chown root:root it"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(bad("is group- or world-writable; chmod 755 it"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| bad(&e.to_string()))?;
    if entries.next().is_some() {
        return Err(bad("is not empty; it must be an empty directory"));
    }
    Ok(())
}

/// Highest descriptor number swept when `/proc/self/fd` cannot be read.
const FD_SWEEP_LIMIT: i32 = 65_536;

/// Descriptors 3 and up inherited from whoever started posternd: with
/// `close`, every one not in `keep` is closed; without, every one is
/// marked close-on-exec, so none reaches the network process or an
/// action. Reads `/proc/self/fd`; without /proc, every number up to the
/// descriptor limit is tried. Returns how many were closed or marked.
pub fn seal_inherited_fds(keep: &[i32], close: bool) -> usize {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let listed: Option<Vec<i32>> = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect()
    });
    // The directory's own descriptor is in the list, but closed by now.
    let candidates: Vec<i32> = match listed {
        Some(l) => l,
        None => {
            let max = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| i32::try_from(soft).unwrap_or(FD_SWEEP_LIMIT))
                .unwrap_or(FD_SWEEP_LIMIT)
                .min(FD_SWEEP_LIMIT);
            (3..max).collect()
        }
    };
    let mut n = 0;
    for fd in candidates {
        if fd < 3 || keep.contains(&fd) || fcntl(fd, FcntlArg::F_GETFD).is_err() {
            continue;
        }
        let done = if close {
            nix::unistd::close(fd).is_ok()
        } else {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).is_ok()
        };
        n += usize::from(done);
    }
    n
}

/// Hardening every posternd process applies: no core dumps, not dumpable
/// (so other processes of the same uid cannot ptrace it or read its
/// memory through /proc).
pub fn harden_self() -> Result<(), PrivError> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| PrivError::Call("setrlimit(RLIMIT_CORE)", e))?;
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| PrivError::Call("prctl(PR_SET_DUMPABLE)", e))?;
    Ok(())
}

/// Locks the calling process in. Returns whether the chroot and user
/// switch happened (false when not started as root).
pub fn enter_jail(jail: &Jail) -> Result<bool, PrivError> {
    let as_root = is_root();
    if as_root {
        if jail.uid == 0 {
            return Err(PrivError::RootUser);
        }
        if jail.gid == 0 {
            return Err(PrivError::RootGroup);
        }
        nix::unistd::chroot(&jail.chroot).map_err(|e| PrivError::Call("chroot", e))?;
        nix::unistd::chdir("/").map_err(|e| PrivError::Call("chdir(/)", e))?;
        let (uid, gid) = (Uid::from_raw(jail.uid), Gid::from_raw(jail.gid));
        nix::unistd::setgroups(&[]).map_err(|e| PrivError::Call("setgroups", e))?;
        nix::unistd::setgid(gid).map_err(|e| PrivError::Call("setgid", e))?;
        nix::unistd::setuid(uid).map_err(|e| PrivError::Call("setuid", e))?;
        if Uid::current() != uid || Uid::effective() != uid {
            return Err(PrivError::Verify("uid"));
        }
        if Gid::current() != gid || Gid::effective() != gid {
            return Err(PrivError::Verify("gid"));
        }
        let groups = nix::unistd::getgroups().map_err(|e| PrivError::Call("getgroups", e))?;
        if groups.iter().any(|g| *g != gid) {
            return Err(PrivError::Verify("supplementary groups"));
        }
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
            || nix::unistd::seteuid(Uid::from_raw(0)).is_ok()
        {
            return Err(PrivError::Verify("root could be regained"));
        }
        if jail.gid != 0 && nix::unistd::setgid(Gid::from_raw(0)).is_ok() {
            return Err(PrivError::Verify("gid 0 could be regained"));
        }
    }
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| PrivError::Call("prctl(PR_SET_NO_NEW_PRIVS)", e))?;
    harden_self()?;
    setrlimit(Resource::RLIMIT_NOFILE, jail.nofile, jail.nofile)
        .map_err(|e| PrivError::Call("setrlimit(RLIMIT_NOFILE)", e))?;
    Ok(as_root)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Goal: a chroot directory that is not empty is refused (as root), and
    // a missing one is created.
    #[test]
    fn chroot_dir_checks() {
        if !is_root() {
            eprintln!("skipping chroot_dir_checks: needs root to check ownership");
            return;
        }
        let base = std::env::temp_dir().join(format!("postern-chroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("empty");
        prepare_chroot(&dir).unwrap();
        std::fs::write(dir.join("x"), b"x").unwrap();
        let e = prepare_chroot(&dir).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        std::fs::remove_file(dir.join("x")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_chroot(&dir).unwrap_err().to_string();
        assert!(e.contains("writable"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
