//! postern: a minimal single-port trigger daemon and its wire format.
//!
//! The library is split so that the client can use the wire format without
//! pulling in the daemon (build with `default-features = false`).
//!
//! Layout: the tree shows the trust boundary. Three kinds of code:
//!
//! Shared, pure (both processes; bytes in, typed values out, no I/O):
//! - `wire.rs`    postern-2 and ostiary-4 messages as bytes.
//! - `mac.rs`     HMAC-SHA256 keyed once (the `hmac` crate), wiped on drop.
//! - `secret.rs`  secret types (keys, passwords) and base64.
//! - `kdf.rs`     passphrase (PBKDF2) and fleet (master secret) key derivation.
//! - `ipc.rs`     monitor <-> network process messages as bytes.
//! - `channel.rs` the seqpacket socketpair those messages travel on.
//! - `config.rs`  TOML text to a typed, validated `Config` (parsed by the
//!   monitor; the network process sees only what `ipc.rs` carries).
//! - `sys.rs`     the only unsafe code: fd adoption, pre-exec glue, mlock.
//!
//! `net/`: the network process, jailed (chroot, `nobody`, no privileges),
//! the only code that touches bytes from the network; it holds no key, no
//! password and no MAC state:
//! - `net/mod.rs`     accept loops, handshakes (nonces from the monitor,
//!   replies checked by it), deadlines, slots.
//! - `net/limits.rs`  token buckets, lockouts per source and network, verify budget, slots.
//! - `net/privsep.rs` the jail it enters before reading a byte, and process hardening.
//!
//! `monitor/`: the privileged monitor, as root; never reads the network:
//! - `monitor/mod.rs`     the monitor: actions, reload, shutdown.
//! - `monitor/session.rs` one network process's session: each request
//!   decoded and checked, a typed reason when it ends.
//! - `monitor/nonces.rs`  the bounded table of issued nonces (used once,
//!   expiring).
//! - `monitor/verify.rs`  the keys (held only here), reply checks, and the
//!   kernel's word on an authenticated reply's peer.
//! - `monitor/childlog.rs` the network process's stderr: drained, counted,
//!   never shown.
//! - `monitor/daemon.rs`  start-up order and the network process's entry point.
//! - `monitor/supervise.rs` replacing a dead network process: backoff, give-up
//!   window, the lockout and rate state handed to the new one.
//! - `monitor/listen.rs`  binding listeners and systemd socket activation.
//! - `monitor/notify.rs`  systemd readiness (READY=1) and timeouts pushed out for slow stops.
//! - `monitor/action.rs`  running commands: clean env, process group, deadline, output.
//! - `monitor/cgroup.rs`  a cgroup v2 per serve program and gate run, killed whole.
//! - `monitor/gate.rs`    gates (per action or per address): opened by a trigger,
//!   closed by a deadline or a closing action, on disk; needs only the config.
//! - `monitor/state.rs`   the trusted state directory and the state file's I/O.
//! - `monitor/log.rs`     stderr or syslog output in a stable line format.
//! - `monitor/init.rs`    `posternd init`: a key and a config for a first action.
//!
//! `main.rs` is posternd's command line. Everything but `wire`, `mac`,
//! `secret` and `kdf` needs the `daemon` feature (default).
// `unsafe` is denied everywhere and allowed only inside `sys.rs`, the small
// module of descriptor and pre-exec glue that safe APIs cannot express.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "daemon")]
pub mod channel;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod ipc;
pub mod kdf;
pub mod mac;
#[cfg(feature = "daemon")]
pub mod monitor;
#[cfg(feature = "daemon")]
pub mod net;
pub mod secret;
#[cfg(feature = "daemon")]
pub mod sys;
pub mod wire;
