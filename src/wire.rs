//! The wire formats, as bytes and typed values. No I/O happens here.
//!
//! `postern-1` (see PROTOCOL.md):
//!
//! ```text
//! server -> client  greeting  36 bytes  "PST1" || nonce[32]
//! client -> server  reply     48 bytes  asserted_addr[16] || mac[32]
//! server -> client  ack       33 bytes  status[1] || ack_mac[32]   (success only)
//!
//! mac     = HMAC-SHA256(key, "postern-1 reply\0" || greeting || asserted_addr)
//! ack_mac = HMAC-SHA256(key, "postern-1 ack\0" || greeting || reply || status)
//! ```
//!
//! `ostiary-4`: the server sends a 32-byte salt, the client answers
//! HMAC-SHA256(password, salt), and nothing else is ever sent.
//!
//! [`Verifier`] checks a reply against every key with identical work per
//! key and no early exit, so neither timing nor cost reveals which key
//! matched, or whether one did.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::mac::{MacKey, MAC_LEN};
use crate::secret::{Key, Password};

/// The four bytes that open every postern-1 greeting: protocol and version.
pub const GREETING_TAG: [u8; 4] = *b"PST1";
/// Nonce length in bytes (both protocols).
pub const NONCE_LEN: usize = 32;
/// postern-1 greeting length.
pub const GREETING_LEN: usize = 4 + NONCE_LEN;
/// Asserted-address field length.
pub const ADDR_LEN: usize = 16;
/// postern-1 reply length.
pub const REPLY_LEN: usize = ADDR_LEN + MAC_LEN;
/// postern-1 ack length.
pub const ACK_LEN: usize = 1 + MAC_LEN;
/// ostiary-4 salt length.
pub const OSTIARY_SALT_LEN: usize = 32;
/// ostiary-4 reply length.
pub const OSTIARY_REPLY_LEN: usize = 32;

/// Domain-separation label for the reply MAC.
pub const REPLY_LABEL: &[u8] = b"postern-1 reply\0";
/// Domain-separation label for the ack MAC.
pub const ACK_LABEL: &[u8] = b"postern-1 ack\0";

/// A postern-1 greeting.
pub type Greeting = [u8; GREETING_LEN];
/// A postern-1 reply.
pub type Reply = [u8; REPLY_LEN];
/// A postern-1 ack.
pub type Ack = [u8; ACK_LEN];

/// What the server did with an authenticated request. Carried in the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The action was started (or, for a gate, the gate was opened).
    Started = 1,
    /// The action is still running, or the gate was already open.
    AlreadyActive = 2,
    /// Refused: the action is cooling down, busy, or the address binding
    /// did not hold.
    Refused = 3,
    /// The action could not be started.
    Failed = 4,
}

impl Status {
    /// All statuses, in wire order.
    pub const ALL: [Status; 4] = [
        Status::Started,
        Status::AlreadyActive,
        Status::Refused,
        Status::Failed,
    ];

    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses the wire byte.
    pub fn from_byte(b: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.to_byte() == b)
    }

    /// Stable lower-case name, used in logs and client output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Started => "started",
            Status::AlreadyActive => "already-active",
            Status::Refused => "refused",
            Status::Failed => "failed",
        }
    }

    /// Whether a client should report success (exit 0).
    pub fn is_success(self) -> bool {
        matches!(self, Status::Started | Status::AlreadyActive)
    }
}

/// Builds a greeting around a nonce.
pub fn greeting(nonce: &[u8; NONCE_LEN]) -> Greeting {
    let mut g = [0u8; GREETING_LEN];
    g[..4].copy_from_slice(&GREETING_TAG);
    g[4..].copy_from_slice(nonce);
    g
}

/// A fresh greeting with a nonce from the OS CSPRNG. No fallback: an error
/// from the kernel is returned, and the connection must be dropped.
pub fn fresh_greeting() -> Result<Greeting, getrandom::Error> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)?;
    Ok(greeting(&nonce))
}

/// Whether a greeting carries the postern-1 tag (client side check).
pub fn greeting_is_valid(g: &Greeting) -> bool {
    g[..4] == GREETING_TAG
}

/// Encodes an optional asserted address. IPv4 is written IPv4-mapped
/// (`::ffff:a.b.c.d`); `None` is sixteen zero bytes.
pub fn encode_addr(addr: Option<IpAddr>) -> [u8; ADDR_LEN] {
    match addr {
        None => [0u8; ADDR_LEN],
        Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
        Some(IpAddr::V6(v6)) => v6.octets(),
    }
}

/// Decodes the asserted-address field. All zeros is `None`; an IPv4-mapped
/// address decodes to IPv4.
pub fn decode_addr(field: &[u8; ADDR_LEN]) -> Option<IpAddr> {
    if field.iter().all(|&b| b == 0) {
        return None;
    }
    Some(canonical_ip(IpAddr::V6(Ipv6Addr::from(*field))))
}

/// Maps an IPv4-mapped IPv6 address to plain IPv4; everything else is
/// returned unchanged. Source addresses from dual-stack sockets go through
/// this before any comparison, rate limit or log line.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The reply a client sends for `greeting`, under `key`, asserting `addr`.
pub fn reply(key: &MacKey, greeting: &Greeting, addr: Option<IpAddr>) -> Reply {
    let field = encode_addr(addr);
    let mac = key.mac(&[REPLY_LABEL, greeting, &field]);
    let mut r = [0u8; REPLY_LEN];
    r[..ADDR_LEN].copy_from_slice(&field);
    r[ADDR_LEN..].copy_from_slice(&mac);
    r
}

/// The ack the server sends after a verified reply.
pub fn ack(key: &MacKey, greeting: &Greeting, reply: &Reply, status: Status) -> Ack {
    let s = [status.to_byte()];
    let mac = key.mac(&[ACK_LABEL, greeting, reply, &s]);
    let mut a = [0u8; ACK_LEN];
    a[0] = s[0];
    a[1..].copy_from_slice(&mac);
    a
}

/// Client side: checks an ack in constant time and returns its status.
/// `None` means the ack is forged, corrupted, or has an unknown status.
pub fn verify_ack(key: &MacKey, greeting: &Greeting, reply: &Reply, ack: &Ack) -> Option<Status> {
    let s = [ack[0]];
    let mac = key.mac(&[ACK_LABEL, greeting, reply, &s]);
    if bool::from(mac.ct_eq(&ack[1..])) {
        Status::from_byte(ack[0])
    } else {
        None
    }
}

/// The ostiary-4 reply: HMAC-SHA256(password, salt).
pub fn ostiary_reply(password: &MacKey, salt: &[u8; OSTIARY_SALT_LEN]) -> [u8; OSTIARY_REPLY_LEN] {
    password.mac(&[salt])
}

/// A fixed set of keys, each prepared once, checked together.
///
/// Every check computes one MAC per key and compares all of them, so the
/// work done is the same whichever key matches, and when none does.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: Vec<MacKey>,
}

impl Verifier {
    /// Prepares postern-1 keys. Index `i` of the result refers to `keys[i]`.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a Key>) -> Self {
        Verifier {
            keys: keys.into_iter().map(|k| MacKey::new(k.expose())).collect(),
        }
    }

    /// Prepares ostiary-4 passwords.
    pub fn from_passwords<'a>(pws: impl IntoIterator<Item = &'a Password>) -> Self {
        Verifier {
            keys: pws.into_iter().map(|p| MacKey::new(p.expose())).collect(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The prepared key states, to pin them in memory.
    pub fn prepared(&self) -> &[MacKey] {
        &self.keys
    }

    /// The prepared key at `index`, to compute the ack with.
    pub fn key(&self, index: usize) -> Option<&MacKey> {
        self.keys.get(index)
    }

    /// Checks a postern-1 reply. Returns the index of the matching key and
    /// the asserted address it carries.
    pub fn check_reply(
        &self,
        greeting: &Greeting,
        reply: &Reply,
    ) -> Option<(usize, Option<IpAddr>)> {
        let mut field = [0u8; ADDR_LEN];
        field.copy_from_slice(&reply[..ADDR_LEN]);
        let idx = self.find(&reply[ADDR_LEN..], |k| {
            k.mac(&[REPLY_LABEL, greeting, &field])
        })?;
        Some((idx, decode_addr(&field)))
    }

    /// Checks an ostiary-4 reply against every password.
    pub fn check_ostiary(
        &self,
        salt: &[u8; OSTIARY_SALT_LEN],
        reply: &[u8; OSTIARY_REPLY_LEN],
    ) -> Option<usize> {
        self.find(reply, |k| k.mac(&[salt]))
    }

    fn find(&self, got: &[u8], compute: impl Fn(&MacKey) -> [u8; MAC_LEN]) -> Option<usize> {
        let mut found = Choice::from(0);
        let mut index: u32 = 0;
        for (i, key) in self.keys.iter().enumerate() {
            let want = compute(key);
            let hit = want.ct_eq(got);
            // Key counts are bounded far below u32::MAX by the config.
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        if bool::from(found) {
            Some(index as usize)
        } else {
            None
        }
    }
}

/// Convenience for tests and clients: a plain IPv4 address as `IpAddr`.
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Goal: the ostiary-4 vector from Ostiary 4.0 holds.
    #[test]
    fn ostiary_vector() {
        let salt: [u8; 32] =
            unhex("f2abdc79cfcc1b109ebc8e9fa65605e9d7a3fe9a2be2fe119356a800cf418c1f")
                .try_into()
                .unwrap();
        let pw = MacKey::new(b"Sample");
        assert_eq!(
            ostiary_reply(&pw, &salt).to_vec(),
            unhex("72f5556a4e4c61cdfd198426718c4ba72db2a169c619cfa453f5410ea2821129")
        );
        let v = Verifier::from_passwords([
            &Password::new(b"other".to_vec()),
            &Password::new(b"Sample".to_vec()),
        ]);
        assert_eq!(v.check_ostiary(&salt, &ostiary_reply(&pw, &salt)), Some(1));
        assert_eq!(v.check_ostiary(&salt, &[0u8; 32]), None);
    }

    // Goal: a reply verifies under its own key only, and any flipped bit in
    // the greeting, address or MAC breaks it.
    #[test]
    fn reply_roundtrip_and_tamper() {
        let keys: Vec<Key> = (0..5u8).map(|i| Key::from_bytes([i; 32])).collect();
        let v = Verifier::from_keys(&keys);
        let g = greeting(&[0x42; 32]);
        for (i, k) in keys.iter().enumerate() {
            let mk = MacKey::new(k.expose());
            let addr = Some(v4(203, 0, 113, 7));
            let r = reply(&mk, &g, addr);
            assert_eq!(v.check_reply(&g, &r), Some((i, addr)));
            for bit in 0..REPLY_LEN * 8 {
                let mut bad = r;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(v.check_reply(&g, &bad), None);
            }
            let mut g2 = g;
            g2[10] ^= 1;
            assert_eq!(v.check_reply(&g2, &r), None);
        }
    }

    // Goal: acks verify, carry their status, and reject forgery.
    #[test]
    fn ack_roundtrip() {
        let mk = MacKey::new(&[7u8; 32]);
        let other = MacKey::new(&[8u8; 32]);
        let g = greeting(&[1; 32]);
        let r = reply(&mk, &g, None);
        for s in Status::ALL {
            let a = ack(&mk, &g, &r, s);
            assert_eq!(verify_ack(&mk, &g, &r, &a), Some(s));
            assert_eq!(verify_ack(&other, &g, &r, &a), None);
            let mut flipped = a;
            flipped[0] = if s == Status::Started { 2 } else { 1 };
            assert_eq!(verify_ack(&mk, &g, &r, &flipped), None);
        }
    }

    // Goal: addresses encode and decode, with IPv4-mapped folded to IPv4.
    #[test]
    fn addr_codec() {
        assert_eq!(decode_addr(&encode_addr(None)), None);
        let a = v4(192, 0, 2, 1);
        assert_eq!(decode_addr(&encode_addr(Some(a))), Some(a));
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(decode_addr(&encode_addr(Some(b))), Some(b));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(mapped), v4(10, 1, 2, 3));
    }
}
