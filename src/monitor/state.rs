//! The state directory and the gate state file on disk.
//!
//! Root writes and reads here, so nobody else may be able to change what
//! it finds: [`StateDir::open`] walks `state_dir` from `/`, one component
//! at a time relative to the directory above it, and refuses the path
//! unless every directory on the way is owned by root (or by posternd's
//! own user when it does not run as root) and writable by nobody else. A
//! parent that others may write is accepted only with the sticky bit set
//! (`/tmp`): others can add entries there but never rename or remove
//! ours, and the next component must pass the owner check itself. A
//! symbolic link on the way must belong to root too. The directory that
//! results is held open, and every file is opened relative to it with
//! `O_NOFOLLOW`: the file is written to a temp file with an unpredictable
//! name created with `O_EXCL`, then renamed over the state file; reads
//! take regular files owned by root only, never more than
//! [`MAX_STATE_FILE`] bytes, and never block (`O_NONBLOCK`: a FIFO is
//! refused, not waited on). Nothing read here is ever logged.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// State file name inside `state_dir`.
pub const STATE_FILE: &str = "gates.state";
/// Prefix of the temp files the state file is written through; a random
/// suffix follows.
pub const TMP_PREFIX: &str = "gates.state.tmp";
/// Largest state file read (4096 actions at most, each record well under
/// 512 bytes).
pub const MAX_STATE_FILE: u64 = 2 * 1024 * 1024;
/// Symbolic links followed while walking `state_dir`, as the kernel does.
const MAX_LINKS: usize = 40;

/// Why `state_dir` cannot be trusted or used. Each names the path and the
/// fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDirError {
    /// Not an absolute path.
    Relative(PathBuf),
    /// A component is owned by someone other than root (or posternd's own
    /// user).
    Owner(PathBuf, u32),
    /// A component is writable by group or others (and, for a parent, not
    /// sticky).
    Writable(PathBuf, u32),
    /// A component is neither a directory nor a symbolic link to one.
    NotDirectory(PathBuf),
    /// Too many symbolic links.
    Links(PathBuf),
    /// A system call failed.
    Io(PathBuf, Errno),
}

impl core::fmt::Display for StateDirError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateDirError::Relative(p) => {
                write!(f, "{} is not an absolute path; give one", p.display())
            }
            StateDirError::Owner(p, uid) => write!(
                f,
                "{} is owned by uid {uid}, not root, so that user could plant files root reads and writes; run `chown root:root {}` or choose another state_dir",
                p.display(),
                p.display()
            ),
            StateDirError::Writable(p, mode) => write!(
                f,
                "{} is writable by group or others (mode {:04o}), so they could plant files root reads and writes; run `chmod go-w {}` or choose another state_dir",
                p.display(),
                mode & 0o7777,
                p.display()
            ),
            StateDirError::NotDirectory(p) => {
                write!(f, "{} is not a directory; point state_dir at a directory", p.display())
            }
            StateDirError::Links(p) => {
                write!(f, "{}: too many symbolic links; give the real path", p.display())
            }
            StateDirError::Io(p, e) => write!(f, "{}: {}", p.display(), e.desc().to_lowercase()),
        }
    }
}

/// What reading the state file found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadState {
    /// No file: nothing was open.
    Missing,
    /// Its bytes (at most [`MAX_STATE_FILE`]).
    Bytes(Vec<u8>),
    /// It exists but must not or cannot be read; the reason never quotes
    /// its content.
    Unreadable(String),
}

/// A trusted, open state directory.
#[derive(Debug)]
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn open_at(dir: Option<&OwnedFd>, name: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let raw = nix::fcntl::openat(
        dir.map(AsRawFd::as_raw_fd),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode,
    )?;
    crate::sys::adopt_fd(raw).ok_or(Errno::EBADF)
}

fn open_dir(dir: Option<&OwnedFd>, name: &Path, shown: &Path) -> Result<OwnedFd, StateDirError> {
    open_at(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOTDIR | Errno::ELOOP => StateDirError::NotDirectory(shown.to_path_buf()),
        e => StateDirError::Io(shown.to_path_buf(), e),
    })
}

/// Checks an open directory: trusted owner, and writable by nobody else
/// (a parent may be sticky instead).
fn check_dir(fd: &OwnedFd, shown: &Path, last: bool) -> Result<(), StateDirError> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| StateDirError::Io(shown.to_path_buf(), e))?;
    if kind(&st) != SFlag::S_IFDIR {
        return Err(StateDirError::NotDirectory(shown.to_path_buf()));
    }
    if !trusted(st.st_uid) {
        return Err(StateDirError::Owner(shown.to_path_buf(), st.st_uid));
    }
    let sticky = st.st_mode & 0o1000 != 0;
    if st.st_mode & 0o022 != 0 && (last || !sticky) {
        return Err(StateDirError::Writable(shown.to_path_buf(), st.st_mode));
    }
    Ok(())
}

fn push_front(queue: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::ParentDir => Some(OsString::from("..")),
            Component::Normal(n) => Some(n.to_os_string()),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for p in parts.into_iter().rev() {
        queue.push_front(p);
    }
}

impl StateDir {
    /// Walks `path` from `/` and opens it, creating missing directories
    /// (mode 0700) when `create` is set, but only inside directories that
    /// already passed the checks.
    pub fn open(path: &Path, create: bool) -> Result<StateDir, StateDirError> {
        if !path.is_absolute() {
            return Err(StateDirError::Relative(path.to_path_buf()));
        }
        let mut queue = VecDeque::new();
        push_front(&mut queue, path);
        let mut shown = PathBuf::from("/");
        let mut cur = open_dir(None, Path::new("/"), &shown)?;
        let mut links = 0;
        while let Some(part) = queue.pop_front() {
            if part == "/" {
                shown = PathBuf::from("/");
                cur = open_dir(None, Path::new("/"), &shown)?;
                check_dir(&cur, &shown, queue.is_empty())?;
                continue;
            }
            let name = Path::new(&part);
            let next = shown.join(name);
            if part == ".." {
                shown.pop();
                cur = open_dir(Some(&cur), name, &shown)?;
                check_dir(&cur, &shown, queue.is_empty())?;
                continue;
            }
            let at = |cur: &OwnedFd| {
                nix::sys::stat::fstatat(Some(cur.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            };
            let st = match at(&cur) {
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), name, Mode::S_IRWXU) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(StateDirError::Io(next, e)),
                    }
                    at(&cur).map_err(|e| StateDirError::Io(next.clone(), e))?
                }
                Err(e) => return Err(StateDirError::Io(next, e)),
                Ok(st) => st,
            };
            if kind(&st) == SFlag::S_IFLNK {
                if !trusted(st.st_uid) {
                    return Err(StateDirError::Owner(next, st.st_uid));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(StateDirError::Links(path.to_path_buf()));
                }
                let target = nix::fcntl::readlinkat(Some(cur.as_raw_fd()), name)
                    .map_err(|e| StateDirError::Io(next.clone(), e))?;
                push_front(&mut queue, Path::new(&target));
                continue;
            }
            cur = open_dir(Some(&cur), name, &next)?;
            shown = next;
            check_dir(&cur, &shown, queue.is_empty())?;
        }
        Ok(StateDir {
            fd: cur,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the state file with `text` atomically: a new temp file
    /// (random name, `O_EXCL`), fsync, rename, fsync of the directory.
    pub fn write(&self, text: &[u8]) -> std::io::Result<()> {
        let mut rnd = [0u8; 8];
        getrandom::getrandom(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut tmp = String::from(TMP_PREFIX);
        tmp.push('.');
        for b in rnd {
            tmp.push_str(&format!("{b:02x}"));
        }
        let fd = open_at(
            Some(&self.fd),
            Path::new(&tmp),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        let mut f = File::from(fd);
        let dir = self.fd.as_raw_fd();
        let done = (|| -> std::io::Result<()> {
            f.write_all(text)?;
            f.sync_all()?;
            nix::fcntl::renameat(Some(dir), tmp.as_str(), Some(dir), STATE_FILE)?;
            nix::unistd::fsync(dir)?;
            Ok(())
        })();
        if done.is_err() {
            let _ = nix::unistd::unlinkat(
                Some(dir),
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        done
    }

    /// Reads the state file: a regular file owned by root (or posternd's
    /// own user), at most [`MAX_STATE_FILE`] bytes, never through a link.
    pub fn read(&self) -> ReadState {
        let fd = match open_at(
            Some(&self.fd),
            Path::new(STATE_FILE),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return ReadState::Missing,
            Err(Errno::ELOOP) => return ReadState::Unreadable("it is a symbolic link".into()),
            Err(e) => return ReadState::Unreadable(e.desc().to_lowercase()),
        };
        let st = match nix::sys::stat::fstat(fd.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => return ReadState::Unreadable(e.desc().to_lowercase()),
        };
        if kind(&st) != SFlag::S_IFREG {
            return ReadState::Unreadable("it is not a regular file".into());
        }
        if !trusted(st.st_uid) {
            return ReadState::Unreadable(format!("it is owned by uid {}, not root", st.st_uid));
        }
        let mut bytes = Vec::new();
        match File::from(fd)
            .take(MAX_STATE_FILE + 1)
            .read_to_end(&mut bytes)
        {
            Ok(n) if n as u64 > MAX_STATE_FILE => {
                ReadState::Unreadable(format!("it is larger than {MAX_STATE_FILE} bytes"))
            }
            Ok(_) => ReadState::Bytes(bytes),
            Err(e) => ReadState::Unreadable(e.to_string().to_lowercase()),
        }
    }

    /// Removes temp files left by a posternd that died while writing.
    /// Only names with [`TMP_PREFIX`]; a link is removed, never followed.
    pub fn remove_stale_temps(&self) {
        let Ok(dir) = nix::dir::Dir::openat(
            Some(self.fd.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let names: Vec<OsString> = dir
            .into_iter()
            .flatten()
            .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n.as_bytes().starts_with(TMP_PREFIX.as_bytes()))
            .collect();
        for n in names {
            let _ = nix::unistd::unlinkat(
                Some(self.fd.as_raw_fd()),
                n.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("postern-state-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    // Goal: a state directory is created, written and read back; temp
    // files never stay behind; a planted link or FIFO is refused, not
    // followed or waited on; an oversized file is refused.
    #[test]
    fn write_read_and_refuse() {
        let base = scratch("rw");
        let dir = base.join("a/b");
        let sd = StateDir::open(&dir, true).unwrap();
        assert_eq!(sd.read(), ReadState::Missing);
        sd.write(b"one\n").unwrap();
        assert_eq!(sd.read(), ReadState::Bytes(b"one\n".to_vec()));
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        std::fs::write(dir.join("gates.state.tmp"), b"x").unwrap();
        std::fs::write(dir.join("gates.state.tmp.00"), b"x").unwrap();
        sd.remove_stale_temps();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        let target = base.join("target");
        std::fs::write(&target, b"secret line\n").unwrap();
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(STATE_FILE)).unwrap();
        match sd.read() {
            ReadState::Unreadable(why) => assert!(why.contains("symbolic link"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        nix::unistd::mkfifo(&dir.join(STATE_FILE), Mode::S_IRWXU).unwrap();
        match sd.read() {
            ReadState::Unreadable(why) => assert!(why.contains("regular"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        let big = File::create(dir.join(STATE_FILE)).unwrap();
        big.set_len(MAX_STATE_FILE + 1).unwrap();
        match sd.read() {
            ReadState::Unreadable(why) => assert!(why.contains("larger"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Writing replaces whatever is there without following it.
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(STATE_FILE)).unwrap();
        sd.write(b"two\n").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"secret line\n");
        assert_eq!(sd.read(), ReadState::Bytes(b"two\n".to_vec()));
        let _ = std::fs::remove_dir_all(&base);
    }

    // Goal: a directory on the way that others may write is refused
    // (unless sticky, and never for state_dir itself), naming it and the
    // fix; a relative path is refused.
    #[test]
    fn writable_components_refused() {
        let base = scratch("perm");
        let open = base.join("open");
        std::fs::create_dir_all(open.join("state")).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&open.join("state"), false).unwrap_err();
        assert_eq!(e, StateDirError::Writable(open.clone(), 0o40777));
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        StateDir::open(&open.join("state"), false).unwrap();
        let e = StateDir::open(&open, false).unwrap_err();
        assert!(matches!(e, StateDirError::Writable(..)), "{e}");
        // Through a link: the link's target is what gets checked.
        std::os::unix::fs::symlink(open.join("state"), base.join("link")).unwrap();
        StateDir::open(&base.join("link"), false).unwrap();
        assert!(matches!(
            StateDir::open(Path::new("relative"), false),
            Err(StateDirError::Relative(_))
        ));
        let _ = std::fs::remove_dir_all(&base);
    }
}
