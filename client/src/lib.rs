//! The `postern` client: answers a posternd challenge so that one
//! preconfigured action runs, for one host or a whole inventory group.
//!
//! Everything that talks to the network or reads a secret lives here, so
//! the integration tests can drive it; `main.rs` only wires it together.
//!
//! Layout (one line per file):
//! - `args.rs`       the command line to a typed [`args::Command`]; usage errors.
//! - `target.rs`     `HOST[:PORT]` parsing and validation.
//! - `prompt.rs`     reading a secret line: the terminal without echo, or stdin.
//! - `keys.rs`       key sources: files (mode checked), environment, prompt, derivation.
//! - `inventory.rs`  `hosts.toml` to a typed [`inventory::Inventory`].
//! - `plan.rs`       a trigger command plus the inventory to jobs with secrets.
//! - `deadline.rs`   fixed-length reads and writes that finish by a deadline.
//! - `proxy.rs`      proxy URLs, HTTP CONNECT and SOCKS5 (RFC 1928) handshakes.
//! - `transport.rs`  name resolution and TCP connect under a timeout, via a proxy or not.
//! - `trigger.rs`    one postern-2 or ostiary-4 exchange, start to finish.
//! - `outcome.rs`    what one trigger came to, and its exit code.
//! - `exchange.rs`   one trigger as a state machine over a non-blocking socket.
//! - `fleet.rs`      a group on a few poll(2) event loops; slots, descriptors, progress.
//! - `output.rs`     human lines, the summary table, JSON lines.
//! - `complete.rs`   `postern complete`: words for the bash, zsh and fish completions.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod args;
pub mod complete;
pub mod deadline;
pub mod exchange;
pub mod fleet;
pub mod inventory;
pub mod keys;
pub mod outcome;
pub mod output;
pub mod plan;
pub mod prompt;
pub mod proxy;
pub mod target;
pub mod transport;
pub mod trigger;

pub use trigger::trigger;
