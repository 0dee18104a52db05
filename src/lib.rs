//! postern: a minimal single-port trigger daemon and its wire format.
//!
//! The library is split so that the client can use the wire format without
//! pulling in the daemon (build with `default-features = false`).
//!
//! Layout (one line per file):
//! - `mac.rs`     HMAC-SHA256 with precomputed, zeroized key states.
//! - `secret.rs`  secret types (keys, passwords) and base64.
//! - `wire.rs`    postern-1 and ostiary-4 messages as bytes; no I/O.
//! - `kdf.rs`     passphrase (PBKDF2) and fleet (master secret) key derivation.
//! - `config.rs`  TOML text to a typed, validated `Config` (daemon feature).
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "daemon")]
pub mod config;
pub mod kdf;
pub mod mac;
pub mod secret;
pub mod wire;
