//! Reply checking, in the monitor: the only process that holds keys,
//! passwords and MAC states.
//!
//! A [`Keyring`] is built from a config, once per generation, over its
//! key slots (`Config::slots`: every key, password and successor of every
//! action): one `wire::Verifier` over every postern-2 key and one over
//! every ostiary-4 password, each checked whole (constant time over all
//! keys), with the slot index, the `bind_source` of its action and the
//! end of its validity (an old key's overlap window) behind each. The
//! network process forwards a reply with the nonce's handle; the monitor
//! checks it against the nonce *it* issued, so a reply can only be valid
//! for a nonce the monitor chose and has not seen used.
//!
//! [`connection_peer`] asks the kernel who is at the other end of the
//! connection a verify request came with, so that the address an
//! authenticated reply is acted for (`{addr}`, `bind_source`) is not the
//! network process's word.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::SystemTime;

use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockType, SockaddrStorage};

use crate::config::{ActionSecret, Config};
use crate::ipc::ReplyBytes;
use crate::wire::{self, Ack, Answer, Verifier, NONCE_LEN};

/// Where a verified reply leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Valid {
    /// The matching key slot's index in the config the keyring was built
    /// from (`Config::slots`): names the action, the key and its role.
    pub slot: u16,
    /// Index of the matching key in its verifier (for the ack).
    key: usize,
    /// Whether the action requires the asserted address to be the source.
    pub bind_source: bool,
    /// The address the reply asserts (postern-2; `None` if none, and
    /// always for ostiary-4).
    pub asserted: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
struct KeyedSlot {
    index: u16,
    bind_source: bool,
    /// Refused from this instant on (an old key past its overlap window).
    until: Option<SystemTime>,
}

impl KeyedSlot {
    fn valid_now(&self) -> bool {
        let now = SystemTime::now();
        self.until.is_none_or(|until| now < until)
    }
}

/// Every key and password of one config generation, prepared.
#[derive(Debug, Default)]
pub struct Keyring {
    postern: Verifier,
    postern_slots: Vec<KeyedSlot>,
    ostiary: Verifier,
    ostiary_slots: Vec<KeyedSlot>,
}

impl Keyring {
    /// Prepares every key slot of `config`, in slot order.
    pub fn from_config(config: &Config) -> Keyring {
        let mut keys = Vec::new();
        let mut postern_slots = Vec::new();
        let mut passwords = Vec::new();
        let mut ostiary_slots = Vec::new();
        for (i, slot) in config.slots.iter().enumerate() {
            // A config's own slots always name its actions and keys
            // (`config::build_slots`); the config bounds the slot count
            // far below u16::MAX.
            let (Some(action), Some(secret)) =
                (config.actions.get(slot.action), config.slot_secret(slot))
            else {
                continue;
            };
            let keyed = KeyedSlot {
                index: u16::try_from(i).unwrap_or(u16::MAX),
                bind_source: action.bind_source,
                until: slot.until,
            };
            match secret {
                ActionSecret::Key(k) => {
                    keys.push(k);
                    postern_slots.push(keyed);
                }
                ActionSecret::Password(p) => {
                    passwords.push(p);
                    ostiary_slots.push(keyed);
                }
            }
        }
        Keyring {
            postern: Verifier::from_keys(keys),
            postern_slots,
            ostiary: Verifier::from_passwords(passwords),
            ostiary_slots,
        }
    }

    /// Checks `reply` to `nonce` against every key of its protocol, in
    /// constant time over the keys. `None`: no key matched, or the one
    /// that matched is an old key past its overlap window (checked now,
    /// so it is refused from the first second after the window).
    pub fn check(&self, nonce: &[u8; NONCE_LEN], reply: &ReplyBytes) -> Option<Valid> {
        match reply {
            ReplyBytes::Postern2(r) => {
                let (key, asserted) = self.postern.check_reply(&wire::greeting(nonce), r)?;
                let s = self.postern_slots.get(key).filter(|s| s.valid_now())?;
                Some(Valid {
                    slot: s.index,
                    key,
                    bind_source: s.bind_source,
                    asserted,
                })
            }
            ReplyBytes::Ostiary4(r) => {
                let key = self.ostiary.check_ostiary(nonce, r)?;
                let s = self.ostiary_slots.get(key).filter(|s| s.valid_now())?;
                Some(Valid {
                    slot: s.index,
                    key,
                    bind_source: s.bind_source,
                    asserted: None,
                })
            }
        }
    }

    /// The signed postern-2 ack for a verified reply. `None` for an
    /// ostiary-4 reply (that protocol has no ack).
    pub fn ack(
        &self,
        valid: &Valid,
        nonce: &[u8; NONCE_LEN],
        reply: &ReplyBytes,
        answer: Answer,
    ) -> Option<Ack> {
        let ReplyBytes::Postern2(r) = reply else {
            return None;
        };
        let key = self.postern.key(valid.key)?;
        Some(wire::ack(key, &wire::greeting(nonce), r, answer))
    }

    /// Pins the prepared key states in RAM. False if the system refused
    /// (RLIMIT_MEMLOCK); they then stay usable, only swappable.
    pub fn lock(&self) -> bool {
        crate::sys::lock_slice(self.postern.prepared())
            & crate::sys::lock_slice(self.ostiary.prepared())
    }

    /// Undoes [`lock`](Self::lock) for a keyring about to be dropped.
    pub fn unlock(&self) {
        crate::sys::unlock_slice(self.postern.prepared());
        crate::sys::unlock_slice(self.ostiary.prepared());
    }
}

/// Why a descriptor is not a connection accepted on one of our listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerError {
    /// Not a stream socket, or a listening one.
    NotConnection,
    /// Not an IP socket.
    NoAddress,
    /// Its local address is none of the listeners'.
    NotOurs,
    /// One of ours, but the peer is gone (reset or closed): who it was
    /// cannot be confirmed. Not a sign of a compromised network process.
    Gone,
}

impl PeerError {
    /// A fixed description for the log.
    pub fn name(self) -> &'static str {
        match self {
            PeerError::NotConnection => "descriptor is not a connected stream socket",
            PeerError::NoAddress => "descriptor has no IP peer",
            PeerError::NotOurs => "descriptor was not accepted on a listener",
            PeerError::Gone => "connection whose peer is gone",
        }
    }
}

fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
}

/// The peer of `fd`, as the kernel knows it (address canonical), after
/// checking that `fd` is a connection accepted on one of `listeners`
/// (their bound local addresses): a connected stream socket, not
/// listening, whose local address and port are a listener's (any local
/// address for a wildcard listener). A socket the network process made
/// itself cannot pass: it cannot bind a listener's port while the
/// listener holds it, and an outgoing connection's local port is its
/// own.
pub fn connection_peer(fd: &OwnedFd, listeners: &[SocketAddr]) -> Result<SocketAddr, PeerError> {
    let ty = getsockopt(&fd.as_fd(), sockopt::SockType).map_err(|_| PeerError::NotConnection)?;
    let listening =
        getsockopt(&fd.as_fd(), sockopt::AcceptConn).map_err(|_| PeerError::NotConnection)?;
    if ty != SockType::Stream || listening {
        return Err(PeerError::NotConnection);
    }
    let local = getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .as_ref()
        .and_then(to_std)
        .ok_or(PeerError::NoAddress)?;
    let local_ip = wire::canonical_ip(local.ip());
    let ours = listeners.iter().any(|l| {
        l.port() == local.port()
            && (l.ip().is_unspecified() || wire::canonical_ip(l.ip()) == local_ip)
    });
    if !ours {
        return Err(PeerError::NotOurs);
    }
    let peer = getpeername::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .as_ref()
        .and_then(to_std)
        .ok_or(PeerError::Gone)?;
    Ok(SocketAddr::new(wire::canonical_ip(peer.ip()), peer.port()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::mac::MacKey;
    use crate::secret::b64_encode;

    // Goal: the keyring covers every key slot of the config, in slot
    // order: a reply under an action's single key, an operator's key, or
    // a successor names its own slot (so the monitor can log by= and
    // key=old|next), an old key past its overlap window matches nothing,
    // and a key of no slot matches nothing.
    #[test]
    fn keyring_names_the_slot_and_refuses_an_ended_window() {
        let k = |b: u8| b64_encode(&[b; 32]);
        let text = format!(
            "[[listen]]\naddress = \"127.0.0.1:7001\"\n\
             [[action]]\nname = \"a\"\nkey = \"{}\"\nrun = [\"/bin/true\"]\n\
             [[action]]\nname = \"b\"\nrun = [\"/bin/true\"]\nbind_source = true\n\
             [[action.key]]\nname = \"alice\"\nkey = \"{}\"\nnext_key = \"{}\"\noverlap_until = \"2020-01-01T00:00:00Z\"\n\
             [[action.key]]\nname = \"bob\"\nkey = \"{}\"\n",
            k(1),
            k(2),
            k(3),
            k(4)
        );
        let config =
            crate::config::parse_str(&text, std::path::Path::new("/etc/postern/t.toml")).unwrap();
        assert_eq!(config.slots.len(), 4);
        let ring = Keyring::from_config(&config);
        let nonce = [7u8; NONCE_LEN];
        let greeting = wire::greeting(&nonce);
        let check = |b: u8| {
            let reply = wire::reply(&MacKey::new(&[b; 32]), &greeting, None);
            ring.check(&nonce, &ReplyBytes::Postern2(reply))
                .map(|v| (v.slot, v.bind_source))
        };
        assert_eq!(check(1), Some((0, false)), "the single key");
        assert_eq!(check(2), None, "alice's old key, past its window");
        assert_eq!(check(3), Some((2, true)), "alice's successor");
        assert_eq!(check(4), Some((3, true)), "bob's key");
        assert_eq!(check(9), None, "a key of no slot");
    }

    // Goal: only a connection accepted on a listener passes; the peer is
    // the kernel's; a listening socket, an outgoing connection and a
    // connection accepted on another port are refused.
    #[test]
    fn connection_peer_checks_the_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, from) = l.accept().unwrap();
        let ours = [addr];
        assert_eq!(connection_peer(&OwnedFd::from(s), &ours), Ok(from));
        assert_eq!(
            connection_peer(&OwnedFd::from(c), &ours),
            Err(PeerError::NotOurs),
            "an outgoing connection"
        );
        assert_eq!(
            connection_peer(&OwnedFd::from(l), &ours),
            Err(PeerError::NotConnection)
        );
        let c2 = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (s2, _) = other.accept().unwrap();
        assert_eq!(
            connection_peer(&OwnedFd::from(s2), &ours),
            Err(PeerError::NotOurs)
        );
        drop(c2);
        let l3 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a3 = l3.local_addr().unwrap();
        let _c3 = std::net::TcpStream::connect(a3).unwrap();
        let (s3, _) = l3.accept().unwrap();
        let w3 = [SocketAddr::new("0.0.0.0".parse().unwrap(), a3.port())];
        assert!(connection_peer(&OwnedFd::from(s3), &w3).is_ok());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(b);
        assert!(connection_peer(&OwnedFd::from(a), &ours).is_err());
    }
}
