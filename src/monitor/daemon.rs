//! Start-up, in order, failing closed at every step:
//! seal inherited descriptors -> load and validate config -> harden -> bind
//! (or take systemd's sockets)
//! -> open the log -> prepare the state and chroot directories -> start the
//! network process (which jails itself before reading a byte) -> hand it
//! the config -> tell systemd we are ready -> serve, replacing the network
//! process whenever it dies (`supervise.rs`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use crate::channel::{self, Channel};
use crate::config;
use crate::monitor::listen;
use crate::monitor::log::{Level, Logger};
use crate::monitor::supervise;
use crate::monitor::{self, Monitor, NetChild};
use crate::net;
use crate::net::privsep::{self, Jail};

/// Descriptors the network process may use beyond two per handshake
/// slot (one live, one evicted and not yet closed) and one per waiting
/// ack: listeners and their spare duplicates (up to 2 x 64), the channel,
/// standard streams, and room for a burst to be accepted and closed.
const NOFILE_SLACK: u64 = 256;

/// A start-up failure: what failed and what to do about it.
#[derive(Debug)]
pub struct StartError(pub String);

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `posternd --config FILE --check`: prints every problem; true if none.
pub fn check(path: &Path) -> bool {
    match config::load(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(w) = crate::monitor::init::shared_user_warning(&cfg.daemon.user.name) {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} listener(s), {} action(s))",
                path.display(),
                cfg.listeners.len(),
                cfg.actions.len()
            );
            true
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{}: {} problem(s)", path.display(), errors.len());
            false
        }
    }
}

/// Runs the monitor (and through it the network process) until stopped.
pub fn run(path: &Path) -> Result<(), StartError> {
    // 0. Descriptors inherited from whoever started us (3 and up) must not
    //    reach the network process or any action: mark them all
    //    close-on-exec. systemd's LISTEN_FDS are among them; they are
    //    adopted in step 3 and handed over explicitly.
    privsep::seal_inherited_fds(&[], false);

    // 1. Load and validate the config; print every problem.
    let config = config::load(path).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        StartError(format!(
            "{}\nfix the config and start again (posternd --check shows all problems)",
            lines.join("\n")
        ))
    })?;

    // 2. No core dumps, not ptrace-able; pin the keys in memory.
    privsep::harden_self().map_err(|e| StartError(e.to_string()))?;
    let keys_locked = lock_keys(&config);

    // 3. Bind the listeners, or take them from systemd.
    let activated = listen::activation_fds().map_err(|e| StartError(e.to_string()))?;
    let socket_activated = activated.is_some();
    let (bound, activation_warnings) = monitor::bind_all(&config, &mut Vec::new(), activated)
        .map_err(|e| StartError(e.to_string()))?;

    // 4. Open the log.
    let logger = Arc::new(Logger::new(config.daemon.log));
    for w in &config.warnings {
        logger.log(Level::Warning, &format!("config: {w}"));
    }
    if let Some(w) = crate::monitor::init::shared_user_warning(&config.daemon.user.name) {
        logger.log(Level::Warning, &format!("config: {w}"));
    }
    for w in &activation_warnings {
        logger.log(Level::Warning, w);
    }
    if !keys_locked {
        logger.log(
            Level::Warning,
            "keys could not be locked in memory (RLIMIT_MEMLOCK); they may be swapped",
        );
    }

    // 5. State directory (root-owned, nobody else can change it or what is
    //    above it) and the empty chroot.
    prepare_state_dir(&config.daemon.state_dir)?;
    let as_root = privsep::is_root();
    if as_root {
        privsep::prepare_chroot(&config.daemon.chroot_dir)
            .map_err(|e| StartError(e.to_string()))?;
    } else {
        logger.log(
            Level::Warning,
            "not started as root: the network process keeps this user and is not chrooted; actions cannot switch users",
        );
    }

    // 6. Start the network process; it jails itself before reading.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start the runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let jail = Jail {
            chroot: config.daemon.chroot_dir.clone(),
            uid: config.daemon.user.uid,
            gid: config.daemon.user.gid,
            nofile: 2 * config.limits.max_handshakes.get() as u64
                + net::MAX_PENDING_ACKS as u64
                + NOFILE_SLACK,
        };
        // The same way for the first network process and every
        // replacement: a fresh socketpair, a fresh exec, a fresh jail; its
        // stderr is drained and counted, never logged as text.
        let drain_to = Arc::clone(&logger);
        let mut spawn = move || -> std::io::Result<NetChild> {
            let (mine, theirs) = channel::pair()?;
            let mut child = spawn_network(&theirs, &jail, as_root)?;
            drop(theirs);
            if let Some(stderr) = child.stderr.take() {
                crate::monitor::childlog::drain(stderr, Arc::clone(&drain_to));
            }
            Ok(NetChild {
                child,
                chan: Channel::new(mine)?,
            })
        };
        let NetChild { child, chan } =
            spawn().map_err(|e| StartError(format!("cannot start the network process: {e}")))?;
        logger.log(
            Level::Notice,
            &format!("network process pid={} started", child.id().unwrap_or(0)),
        );
        let listeners = monitor::describe_listeners(&config, &bound);
        let actions = config.actions.len();
        let m = Monitor::new(config, bound, Arc::clone(&logger), chan);

        // 7. Hand over the config.
        m.send_config()
            .await
            .map_err(|e| StartError(format!("cannot configure the network process: {e}")))?;

        // 8. Ready once the network process is: the signal handlers
        // first, so that a SIGHUP or SIGTERM sent as soon as we say so is
        // handled; then "started" and READY=1 at its first well-formed
        // request (exec'd, jailed, configured: it accepts next), after the
        // gates are recovered. One that dies first is replaced and the
        // replacement's request counts; one that hangs never makes the
        // daemon ready (systemd's start timeout then fails the start).
        let signals = monitor::Signals::install().map_err(|e| StartError(e.to_string()))?;
        let started = format!(
            "started version={} listeners=[{listeners}] actions={actions}{}",
            env!("CARGO_PKG_VERSION"),
            if socket_activated {
                " socket-activated"
            } else {
                ""
            }
        );
        let ready_log = Arc::clone(&logger);
        m.when_up(move || {
            ready_log.log(Level::Notice, &started);
            crate::monitor::notify::send("READY=1");
        });

        // 9. Serve; a network process that dies is replaced.
        supervise::run(&m, child, signals, &mut spawn, &supervise::POLICY)
            .await
            .map_err(|e| StartError(e.to_string()))
    })
}

/// Locks the key material of `config` in memory (each action's keys,
/// which hold the postern-2 keys inline, and every password). False if
/// the system refused.
pub fn lock_keys(config: &config::Config) -> bool {
    let mut locked = true;
    for a in &config.actions {
        locked &= crate::sys::lock_slice(&a.keys);
        for p in passwords(a) {
            locked &= crate::sys::lock_slice(p.expose());
        }
    }
    locked
}

/// Undoes [`lock_keys`] for a config about to be dropped.
pub fn unlock_keys(config: &config::Config) {
    for a in &config.actions {
        crate::sys::unlock_slice(&a.keys);
        for p in passwords(a) {
            crate::sys::unlock_slice(p.expose());
        }
    }
}

/// An action's ostiary-4 passwords (held on the heap, apart from the keys).
fn passwords(a: &config::Action) -> impl Iterator<Item = &crate::secret::Password> {
    a.keys.iter().filter_map(|k| match &k.secret {
        config::ActionSecret::Password(p) => Some(p),
        config::ActionSecret::Key(_) => None,
    })
}

/// Creates `state_dir` if needed (mode 0700) and checks that nobody but
/// root can change it or any directory above it (see `state.rs`).
fn prepare_state_dir(dir: &Path) -> Result<(), StartError> {
    let existed = dir.exists();
    crate::monitor::state::StateDir::open(dir, true)
        .map(drop)
        .map_err(|e| match existed {
            true => StartError(format!("state_dir {e}")),
            false => StartError(format!(
                "state_dir {}: cannot create it: {e}",
                dir.display()
            )),
        })
}

/// The running program, whatever its path names now.
const SELF_EXE: &str = "/proc/self/exe";

/// argv\[0\] of the network process (what `ps` shows).
const PROGRAM: &str = "posternd";

/// Starts `posternd --network-child ...` with the channel end as an
/// inherited descriptor and an empty environment.
fn spawn_network(
    theirs: &OwnedFd,
    jail: &Jail,
    as_root: bool,
) -> std::io::Result<tokio::process::Child> {
    // The binary the monitor itself runs, through the kernel's link to it:
    // the path may meanwhile name another file (an upgrade renamed a new
    // one over it) or none, and the network process must speak this
    // monitor's ipc version in either case.
    let exe = std::path::Path::new(SELF_EXE);
    // The end must survive exec: clear close-on-exec on it alone. Nothing
    // else is spawned meanwhile: the monitor is single-threaded and this
    // does not yield until the end is closed again.
    nix::fcntl::fcntl(
        theirs.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    let chroot = if as_root {
        jail.chroot.display().to_string()
    } else {
        "-".to_string()
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg0(PROGRAM)
        .arg("--network-child")
        .arg(theirs.as_raw_fd().to_string())
        .arg(chroot)
        .arg(jail.uid.to_string())
        .arg(jail.gid.to_string())
        .arg(jail.nofile.to_string())
        .env_clear()
        .stdin(Stdio::null())
        // Untrusted text: drained by the monitor, never logged (childlog.rs).
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::sys::drop_to_in_child(&mut cmd, None, true, true, None);
    cmd.spawn()
}

/// The network process's entry point (`--network-child FD CHROOT UID GID
/// NOFILE`). Returns the process exit code.
pub fn network_child(args: &[String]) -> i32 {
    let parsed = (|| -> Option<(i32, String, u32, u32, u64)> {
        Some((
            args.first()?.parse().ok()?,
            args.get(1)?.clone(),
            args.get(2)?.parse().ok()?,
            args.get(3)?.parse().ok()?,
            args.get(4)?.parse().ok()?,
        ))
    })();
    let Some((fd, chroot, uid, gid, nofile)) = parsed else {
        eprintln!("posternd: --network-child is internal; it takes FD CHROOT UID GID NOFILE");
        return 64;
    };
    let Some(fd) = crate::sys::adopt_fd(fd) else {
        eprintln!("posternd network: channel descriptor {fd} is not open");
        return 1;
    };
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // It keeps only what it needs: standard streams and the channel.
    privsep::seal_inherited_fds(&[fd.as_raw_fd()], true);
    // Jail first: nothing has been read from anyone yet.
    let jail = Jail {
        chroot: chroot.clone().into(),
        uid,
        gid,
        nofile,
    };
    let jail_result = if chroot == "-" {
        // Not root: only the hardening that needs no privilege.
        let mut j = jail.clone();
        j.uid = nix::unistd::getuid().as_raw();
        privsep::enter_jail(&j)
    } else {
        privsep::enter_jail(&jail)
    };
    if let Err(e) = jail_result {
        eprintln!("posternd network: {e}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posternd network: cannot start the runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, net::serve(fd)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("posternd network: {e}");
            1
        }
    }
}
