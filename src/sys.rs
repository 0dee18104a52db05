//! The only module with `unsafe` code: the glue where nix's and std's safe
//! APIs cannot do the job. Each block carries a SAFETY comment.
//!
//! - [`adopt_fd`]: take ownership of a descriptor received with SCM_RIGHTS,
//!   just opened, inherited across exec, or passed by systemd socket
//!   activation.
//! - [`drop_to_in_child`]: the pre-exec hook that switches an action's
//!   identity (setgroups, then setgid, then setuid, each checked) and ties
//!   the child's life to posternd's (PR_SET_PDEATHSIG), and for the
//!   network process ignores SIGHUP from before exec.
//! - [`lock_slice`], [`unlock_slice`]: mlock(2) and munlock(2) over a live
//!   allocation holding key material.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::unistd::{Gid, Uid};

/// Takes ownership of a raw descriptor.
///
/// The caller must pass a descriptor that nothing else in the process
/// owns or will close: one just received with SCM_RIGHTS, one just
/// returned by open(2) or openat(2), one inherited across exec whose
/// number was handed over explicitly, or one of systemd's `LISTEN_FDS`.
/// Negative numbers are refused.
pub fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    // Check that the descriptor is open before claiming it.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the descriptor is open (checked above) and, by this
    // function's contract, owned by no other object in the process, so
    // exactly one OwnedFd will close it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Installs a pre-exec hook on `cmd` that, in the child after fork:
/// - with `cgroup = Some(procs)`: joins that cgroup by writing "0" to its
///   `cgroup.procs` (open before the fork, close-on-exec), first, while
///   still root and before the command can fork;
/// - with `run_as = Some((uid, gid))`: calls setgroups([gid]), then
///   setgid, then setuid, and fails the spawn unless all three took and
///   root cannot be regained;
/// - then, with `die_with_parent`: sets PR_SET_PDEATHSIG to SIGKILL (after
///   the identity change, which would clear it), so the child dies even if
///   posternd is SIGKILLed, and fails the spawn if the parent is gone;
/// - then, with `ignore_hangup`: sets SIGHUP to SIG_IGN, a disposition
///   that survives exec, so a SIGHUP sent to every posternd process (say
///   by `killall -HUP`) cannot kill the child before it has started.
pub fn drop_to_in_child(
    cmd: &mut tokio::process::Command,
    run_as: Option<(u32, u32)>,
    die_with_parent: bool,
    ignore_hangup: bool,
    cgroup: Option<std::sync::Arc<std::fs::File>>,
) {
    let parent = nix::unistd::getpid();
    let hook = move || -> std::io::Result<()> {
        if let Some(procs) = &cgroup {
            std::io::Write::write_all(&mut &**procs, b"0")?;
        }
        if let Some((uid, gid)) = run_as {
            let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
            nix::unistd::setgroups(&[gid])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            if nix::unistd::getuid() != uid
                || nix::unistd::geteuid() != uid
                || nix::unistd::getgid() != gid
                || nix::unistd::getegid() != gid
            {
                return Err(std::io::Error::other("identity change did not take"));
            }
            if !uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err(std::io::Error::other("root could be regained"));
            }
        }
        // After the identity change: the kernel clears the parent-death
        // signal when the credentials change, so it is set last.
        if die_with_parent {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("parent exited before exec"));
            }
        }
        if ignore_hangup {
            let ignore = nix::sys::signal::SigAction::new(
                nix::sys::signal::SigHandler::SigIgn,
                nix::sys::signal::SaFlags::empty(),
                nix::sys::signal::SigSet::empty(),
            );
            // SAFETY: SIG_IGN installs no handler code, so there is no
            // handler whose safety could be violated; sigaction(2) is
            // async-signal-safe.
            unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGHUP, &ignore) }?;
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec in the child. It only
    // makes raw system calls through nix and std (write to an open file,
    // prctl, getppid, setgroups, setgid, setuid, get*id, sigaction), which
    // are async-signal-safe; it does not
    // allocate, except for the io::Error on a failure path, after which
    // the child exits without exec (std reports the error to the parent).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Locks the pages under `data` into memory so key material is never
/// written to swap. Returns false if the system refused (RLIMIT_MEMLOCK);
/// the caller logs that once. The lock lasts until the pages are freed.
pub fn lock_slice<T>(data: &[T]) -> bool {
    let len = std::mem::size_of_val(data);
    let Some(ptr) = std::ptr::NonNull::new(data.as_ptr() as *mut std::ffi::c_void) else {
        return true;
    };
    if len == 0 {
        return true;
    }
    // SAFETY: `ptr..ptr+len` is a live allocation borrowed for the whole
    // call; mlock(2) only changes the residency of the pages covering it
    // and never reads or writes through the pointer.
    unsafe { nix::sys::mman::mlock(ptr, len).is_ok() }
}

/// Unlocks the pages under `data` (munlock(2)) before the allocation is
/// freed, so memory locked for keys does not grow with every reload;
/// pages it shares with keys still in use must be locked again after.
pub fn unlock_slice<T>(data: &[T]) {
    let len = std::mem::size_of_val(data);
    let Some(ptr) = std::ptr::NonNull::new(data.as_ptr() as *mut std::ffi::c_void) else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: as in `lock_slice`: a live allocation borrowed for the
    // call, whose pages only change residency.
    let _ = unsafe { nix::sys::mman::munlock(ptr, len) };
}

/// Registers an owned descriptor with the tokio reactor.
pub fn register_async(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an `OwnedFd` moved into the `AsyncFd`, which owns it
    // until it is dropped; an `OwnedFd` always returns the same open
    // descriptor from `as_raw_fd`, as `register_with_interest` requires.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(std::io::Error::from)
}
