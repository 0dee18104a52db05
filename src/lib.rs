//! postern: a minimal single-port trigger daemon and its wire format.
//!
//! The library is split so that the client can use the wire format without
//! pulling in the daemon (build with `default-features = false`).
//!
//! Layout (one line per file):
//! - `mac.rs`     HMAC-SHA256 keyed once (the `hmac` crate), wiped on drop.
//! - `secret.rs`  secret types (keys, passwords) and base64.
//! - `wire.rs`    postern-2 and ostiary-4 messages as bytes; no I/O.
//! - `kdf.rs`     passphrase (PBKDF2) and fleet (master secret) key derivation.
//! - `config.rs`  TOML text to a typed, validated `Config`.
//! - `limits.rs`  token buckets, lockouts per source and network, verify budget, slots.
//! - `ipc.rs`     monitor <-> network process messages as bytes; no I/O.
//! - `channel.rs` the seqpacket socketpair those messages travel on.
//! - `listen.rs`  binding listeners and systemd socket activation.
//! - `net.rs`     the unprivileged network process: accept loop, handshakes.
//! - `privsep.rs` the network process's jail and process hardening.
//! - `monitor.rs` the privileged monitor: requests, reload, shutdown.
//! - `action.rs`  running commands: clean env, process group, deadline, output.
//! - `cgroup.rs`  a cgroup v2 per serve program and gate run, killed whole.
//! - `gate.rs`    gates opened by a trigger, closed by a deadline, on disk.
//! - `state.rs`   the trusted state directory and the state file's I/O.
//! - `log.rs`     stderr or syslog output in a stable line format.
//! - `daemon.rs`  start-up order and the network process's entry point.
//! - `init.rs`    `posternd init`: a key and a config for a first action.
//! - `sys.rs`     the only unsafe code: fd adoption, pre-exec glue, mlock.
//! - `main.rs`    posternd's command line.
//!
//! Everything from `config.rs` down needs the `daemon` feature (default).
// `unsafe` is denied everywhere and allowed only inside `sys.rs`, the small
// module of descriptor and pre-exec glue that safe APIs cannot express.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "daemon")]
pub mod action;
#[cfg(feature = "daemon")]
pub mod cgroup;
#[cfg(feature = "daemon")]
pub mod channel;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod gate;
#[cfg(feature = "daemon")]
pub mod init;
#[cfg(feature = "daemon")]
pub mod ipc;
pub mod kdf;
#[cfg(feature = "daemon")]
pub mod limits;
#[cfg(feature = "daemon")]
pub mod listen;
#[cfg(feature = "daemon")]
pub mod log;
pub mod mac;
#[cfg(feature = "daemon")]
pub mod monitor;
#[cfg(feature = "daemon")]
pub mod net;
#[cfg(feature = "daemon")]
pub mod privsep;
pub mod secret;
#[cfg(feature = "daemon")]
pub mod state;
#[cfg(feature = "daemon")]
pub mod sys;
pub mod wire;
