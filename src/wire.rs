//! The wire formats, as bytes and typed values. No I/O happens here.
//!
//! `postern-2` (see PROTOCOL.md):
//!
//! ```text
//! server -> client  greeting  36 bytes  "PST2" || nonce[32]
//! client -> server  reply     48 bytes  addr_field[16] || mac[32]
//! server -> client  ack       38 bytes  status[1] || reason[1] || seconds[4] || ack_mac[32]
//!
//! mac     = HMAC-SHA256(key, "PST2-R\0" || nonce || addr_field)          (55 bytes: one block)
//! ack_mac = HMAC-SHA256(key, "PST2-A\0" || greeting || reply || status || reason || seconds)
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
use zeroize::Zeroize;

use crate::mac::{MacKey, MAC_LEN};
use crate::secret::{Key, Password};

/// The four bytes that open every postern-2 greeting: protocol and version.
pub const GREETING_TAG: [u8; 4] = *b"PST2";
/// Nonce length in bytes (both protocols).
pub const NONCE_LEN: usize = 32;
/// postern-2 greeting length.
pub const GREETING_LEN: usize = 4 + NONCE_LEN;
/// Asserted-address field length.
pub const ADDR_LEN: usize = 16;
/// postern-2 reply length.
pub const REPLY_LEN: usize = ADDR_LEN + MAC_LEN;
/// Length of the ack's body: status, reason, seconds.
pub const ACK_BODY_LEN: usize = 1 + 1 + 4;
/// postern-2 ack length.
pub const ACK_LEN: usize = ACK_BODY_LEN + MAC_LEN;
/// ostiary-4 salt length.
pub const OSTIARY_SALT_LEN: usize = 32;
/// ostiary-4 reply length.
pub const OSTIARY_REPLY_LEN: usize = 32;
/// The longest an ostiary-4 password can be and still be sent by Ostiary
/// 4.0's own client, which reads at most 63 bytes.
pub const OSTCLIENT_MAX_PASSWORD: usize = 63;

/// Domain-separation label for the reply MAC. With the nonce and the
/// address field the MAC input is 55 bytes, the most that SHA-256 pads
/// into one block, so a reply costs two compressions per key.
pub const REPLY_LABEL: &[u8; 7] = b"PST2-R\0";
/// Domain-separation label for the ack MAC.
pub const ACK_LABEL: &[u8; 7] = b"PST2-A\0";
/// Length of the reply MAC's input.
pub const REPLY_MAC_INPUT_LEN: usize = REPLY_LABEL.len() + NONCE_LEN + ADDR_LEN;
const _: () = assert!(
    REPLY_MAC_INPUT_LEN <= 55,
    "the reply MAC input must fit one block"
);

/// The longest the server may take from the last byte of the reply to the
/// first byte of the ack, in seconds. The config bounds every wait that
/// comes before an ack (a gate's `stop`, if it is closing, then its `run`:
/// at most 2 minutes each) so that this always holds; clients wait this
/// long for the ack unless told otherwise.
pub const ACK_DEADLINE_SECS: u64 = 300;

/// A postern-2 greeting.
pub type Greeting = [u8; GREETING_LEN];
/// A postern-2 reply.
pub type Reply = [u8; REPLY_LEN];
/// A postern-2 ack.
pub type Ack = [u8; ACK_LEN];

/// What the server did with an authenticated request. Carried in the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The action was started (or, for a gate, the gate was opened).
    Started = 1,
    /// The effect is in place: the action is still running
    /// (`single_instance`), or its gate is open for this address.
    AlreadyActive = 2,
    /// Authenticated, but not run; the reason says why.
    Refused = 3,
    /// The action could not be started or did not succeed; the reason
    /// says why.
    Failed = 4,
    /// A closing action (`closes`): the gate was open for this address
    /// and has been closed now, through the same stop path as its
    /// deadline.
    Closed = 5,
    /// A closing action: the gate was not open for this address, so
    /// nothing was done.
    NotOpen = 6,
}

impl Status {
    /// All statuses, in wire order; 0 and 7..=255 are never sent.
    pub const ALL: [Status; 6] = [
        Status::Started,
        Status::AlreadyActive,
        Status::Refused,
        Status::Failed,
        Status::Closed,
        Status::NotOpen,
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
            Status::Closed => "closed",
            Status::NotOpen => "not-open",
        }
    }

    /// Whether a client should report success (exit 0). A gate closed
    /// now and one that was not open both leave it closed, which is what
    /// a closing action asks for.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Status::Started | Status::AlreadyActive | Status::Closed | Status::NotOpen
        )
    }
}

/// Why a request was refused or failed. Carried in the ack; `None` (0) with
/// `started` and `already-active`. A client shows a byte it does not know
/// as a number ([`Reason::Unknown`]) and still honours the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No reason: the request succeeded.
    None,
    /// Refused: the action's `cooldown` has not passed; `seconds` says
    /// how long until it has.
    Cooldown,
    /// Refused: too many authenticated requests are already being served;
    /// retry shortly.
    Busy,
    /// Refused: `bind_source` holds and the asserted address is not the
    /// connection's source address.
    AddressBinding,
    /// Refused: the asserted address cannot be acted for (unspecified,
    /// broadcast, multicast, IPv4-compatible or link-local; PROTOCOL.md).
    AddressNotAllowed,
    /// Refused: the gate is open for another address; `seconds` says how
    /// long until it closes.
    OpenForOther,
    /// Refused: a reload between the greeting and the request removed the
    /// action or changed its key or commands.
    ConfigChanged,
    /// Refused: posternd is shutting down.
    ShuttingDown,
    /// Refused: a per-address gate is open for as many addresses as its
    /// `max_addresses` allows; `seconds` says when the first of them
    /// closes.
    AddressesFull,
    /// Failed: the program could not be started.
    SpawnFailed,
    /// Failed: the gate's `run` exited non-zero or was killed.
    RunFailed,
    /// Failed: the gate's `run` did not finish within its `timeout`.
    RunTimedOut,
    /// Failed: the `serve` program exited at once.
    ServeExited,
    /// Failed: the gate could not be recorded in the state file, so it was
    /// closed again.
    StateUnwritable,
    /// A reason byte this implementation does not know.
    Unknown(u8),
}

impl Reason {
    /// Every reason this implementation sends, for tests and docs.
    pub const KNOWN: [Reason; 14] = [
        Reason::None,
        Reason::Cooldown,
        Reason::Busy,
        Reason::AddressBinding,
        Reason::AddressNotAllowed,
        Reason::OpenForOther,
        Reason::ConfigChanged,
        Reason::ShuttingDown,
        Reason::AddressesFull,
        Reason::SpawnFailed,
        Reason::RunFailed,
        Reason::RunTimedOut,
        Reason::ServeExited,
        Reason::StateUnwritable,
    ];

    /// The wire byte. Refusals are 1..=15, failures 16..=31.
    pub fn to_byte(self) -> u8 {
        match self {
            Reason::None => 0,
            Reason::Cooldown => 1,
            Reason::Busy => 2,
            Reason::AddressBinding => 3,
            Reason::AddressNotAllowed => 4,
            Reason::OpenForOther => 5,
            Reason::ConfigChanged => 6,
            Reason::ShuttingDown => 7,
            Reason::AddressesFull => 8,
            Reason::SpawnFailed => 16,
            Reason::RunFailed => 17,
            Reason::RunTimedOut => 18,
            Reason::ServeExited => 19,
            Reason::StateUnwritable => 20,
            Reason::Unknown(b) => b,
        }
    }

    /// Parses the wire byte; never fails.
    pub fn from_byte(b: u8) -> Reason {
        Reason::KNOWN
            .into_iter()
            .find(|r| r.to_byte() == b)
            .unwrap_or(Reason::Unknown(b))
    }

    /// Stable lower-case name, used in logs and `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::Cooldown => "cooldown",
            Reason::Busy => "busy",
            Reason::AddressBinding => "address-binding",
            Reason::AddressNotAllowed => "address-not-allowed",
            Reason::OpenForOther => "open-for-other-address",
            Reason::ConfigChanged => "config-changed",
            Reason::ShuttingDown => "shutting-down",
            Reason::AddressesFull => "addresses-full",
            Reason::SpawnFailed => "spawn-failed",
            Reason::RunFailed => "run-failed",
            Reason::RunTimedOut => "run-timed-out",
            Reason::ServeExited => "serve-exited",
            Reason::StateUnwritable => "state-unwritable",
            Reason::Unknown(_) => "unknown",
        }
    }

    /// A short phrase for people: "cooling down", "the run command failed".
    pub fn describe(self) -> String {
        match self {
            Reason::None => "no reason given".into(),
            Reason::Cooldown => "cooling down".into(),
            Reason::Busy => "the server is busy".into(),
            Reason::AddressBinding => {
                "the asserted address is not this connection's source (bind_source)".into()
            }
            Reason::AddressNotAllowed => "the asserted address cannot be acted for".into(),
            Reason::OpenForOther => "it is open for another address".into(),
            Reason::ConfigChanged => "the server's config changed; try again".into(),
            Reason::ShuttingDown => "the server is shutting down".into(),
            Reason::AddressesFull => "the gate is open for as many addresses as it allows".into(),
            Reason::SpawnFailed => "the program could not be started".into(),
            Reason::RunFailed => "the run command failed".into(),
            Reason::RunTimedOut => "the run command timed out".into(),
            Reason::ServeExited => "the served program exited at once".into(),
            Reason::StateUnwritable => "the server could not record the gate".into(),
            Reason::Unknown(b) => format!("reason {b}"),
        }
    }
}

/// The typed body of an ack: what happened, why, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// What the server did.
    pub status: Status,
    /// Why, for `refused` and `failed`; [`Reason::None`] otherwise.
    pub reason: Reason,
    /// Seconds: until the gate closes (`started`, `already-active`, and
    /// `refused` with [`Reason::OpenForOther`]; with
    /// [`Reason::AddressesFull`], until its first address closes), or until a retry can
    /// succeed (`refused` with [`Reason::Cooldown`]); 0 when there is no
    /// such time (a plain `run` has no deadline).
    pub seconds: u32,
}

impl Answer {
    /// An answer with no reason and no time.
    pub fn bare(status: Status) -> Answer {
        Answer {
            status,
            reason: Reason::None,
            seconds: 0,
        }
    }

    /// A refusal or failure for `reason`, with no time.
    pub fn because(status: Status, reason: Reason) -> Answer {
        Answer {
            status,
            reason,
            seconds: 0,
        }
    }

    /// The same answer with `seconds` set.
    pub fn with_seconds(self, seconds: u32) -> Answer {
        Answer { seconds, ..self }
    }

    /// The six body bytes, in wire order.
    pub fn to_bytes(self) -> [u8; ACK_BODY_LEN] {
        let mut b = [0u8; ACK_BODY_LEN];
        b[0] = self.status.to_byte();
        b[1] = self.reason.to_byte();
        b[2..].copy_from_slice(&self.seconds.to_be_bytes());
        b
    }

    /// Parses the six body bytes; `None` for an unknown status.
    pub fn from_bytes(b: &[u8; ACK_BODY_LEN]) -> Option<Answer> {
        Some(Answer {
            status: Status::from_byte(b[0])?,
            reason: Reason::from_byte(b[1]),
            seconds: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        })
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

/// Whether the first four bytes of a greeting carry the postern-2 tag
/// (client side check, made before the rest is read).
pub fn tag_is_valid(tag: &[u8; 4]) -> bool {
    *tag == GREETING_TAG
}

/// Whether a greeting carries the postern-2 tag.
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

/// Whether a decoded asserted address may be acted for (PROTOCOL.md, "The
/// asserted address"). Refused: the unspecified addresses, the IPv4
/// limited broadcast, IPv4 and IPv6 multicast (link-local multicast
/// included), IPv6 link-local unicast (the field has no room for a zone),
/// and the deprecated IPv4-compatible form `::a.b.c.d` (except `::1`).
/// IPv4-mapped fields were already decoded to IPv4 by [`decode_addr`], so
/// their forms of these are refused too.
pub fn asserted_allowed(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let ipv4_compatible = s[..6] == [0; 6] && v6 != Ipv6Addr::LOCALHOST;
            let link_local = s[0] & 0xffc0 == 0xfe80;
            !(v6.is_unspecified() || v6.is_multicast() || ipv4_compatible || link_local)
        }
    }
}

/// The reply MAC's input: label, nonce, address field (55 bytes).
fn reply_input(greeting: &Greeting, field: &[u8; ADDR_LEN]) -> [u8; REPLY_MAC_INPUT_LEN] {
    let mut m = [0u8; REPLY_MAC_INPUT_LEN];
    m[..REPLY_LABEL.len()].copy_from_slice(REPLY_LABEL);
    m[REPLY_LABEL.len()..REPLY_LABEL.len() + NONCE_LEN].copy_from_slice(&greeting[4..]);
    m[REPLY_LABEL.len() + NONCE_LEN..].copy_from_slice(field);
    m
}

/// The reply a client sends for `greeting`, under `key`, asserting `addr`.
pub fn reply(key: &MacKey, greeting: &Greeting, addr: Option<IpAddr>) -> Reply {
    let field = encode_addr(addr);
    let mac = key.mac(&[&reply_input(greeting, &field)]);
    let mut r = [0u8; REPLY_LEN];
    r[..ADDR_LEN].copy_from_slice(&field);
    r[ADDR_LEN..].copy_from_slice(&mac);
    r
}

/// The ack the server sends after a verified reply.
pub fn ack(key: &MacKey, greeting: &Greeting, reply: &Reply, answer: Answer) -> Ack {
    let body = answer.to_bytes();
    let mac = key.mac(&[ACK_LABEL, greeting, reply, &body]);
    let mut a = [0u8; ACK_LEN];
    a[..ACK_BODY_LEN].copy_from_slice(&body);
    a[ACK_BODY_LEN..].copy_from_slice(&mac);
    a
}

/// Client side: checks an ack in constant time and returns its body.
/// `None` means the ack is forged or corrupted, or has an unknown status.
pub fn verify_ack(key: &MacKey, greeting: &Greeting, reply: &Reply, ack: &Ack) -> Option<Answer> {
    let mut body = [0u8; ACK_BODY_LEN];
    body.copy_from_slice(&ack[..ACK_BODY_LEN]);
    let mac = key.mac(&[ACK_LABEL, greeting, reply, &body]);
    if bool::from(mac.ct_eq(&ack[ACK_BODY_LEN..])) {
        Answer::from_bytes(&body)
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
/// work done is the same whichever key matches, and when none does. The
/// daemon builds it over the config's key slots (`config::Config::slots`:
/// every key, password and successor of every action) in slot order, one
/// verifier per protocol, so the index it returns names the slot: the
/// action, the operator and which of old and next matched.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: Vec<MacKey>,
}

impl Verifier {
    /// Prepares postern-2 keys. Index `i` of the result refers to `keys[i]`.
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

    /// Checks a postern-2 reply. Returns the index of the matching key and
    /// the asserted address it carries.
    pub fn check_reply(
        &self,
        greeting: &Greeting,
        reply: &Reply,
    ) -> Option<(usize, Option<IpAddr>)> {
        let mut field = [0u8; ADDR_LEN];
        field.copy_from_slice(&reply[..ADDR_LEN]);
        // The input is the same for every key: built once.
        let input = reply_input(greeting, &field);
        let idx = self.find(&reply[ADDR_LEN..], |k| k.mac(&[&input]))?;
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
            // A computed MAC is a valid answer to this challenge: wiped
            // as soon as it is compared.
            let mut want = compute(key);
            let hit = mac_eq(&want, got);
            want.zeroize();
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

/// Constant-time equality of a computed MAC and received bytes, compared
/// eight bytes at a time with `subtle`: no branch depends on the bytes, as
/// with `[u8]::ct_eq`, but four of `subtle`'s optimisation barriers per
/// key instead of thirty-two, which measure (d) of BENCHMARKS.md showed to
/// be a large share of the per-key cost once the MAC costs two
/// compressions. A length other than [`MAC_LEN`] (public) never matches.
fn mac_eq(want: &[u8; MAC_LEN], got: &[u8]) -> Choice {
    if got.len() != MAC_LEN {
        return Choice::from(0);
    }
    let mut eq = Choice::from(1);
    for (w, g) in want.chunks_exact(8).zip(got.chunks_exact(8)) {
        // Each pair is two 8-byte loads into registers once optimised;
        // `want` itself is wiped by the caller.
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        a.copy_from_slice(w);
        b.copy_from_slice(g);
        eq &= u64::from_le_bytes(a).ct_eq(&u64::from_le_bytes(b));
    }
    eq
}

/// Convenience for tests and clients: a plain IPv4 address as `IpAddr`.
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The blocks of a vector file, as maps from field name to value.
    fn blocks(name: &str) -> Vec<HashMap<String, String>> {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = Vec::new();
        let mut cur = HashMap::new();
        for line in text.lines().chain([""]) {
            if line.trim().is_empty() {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once(" = ").unwrap();
            cur.insert(k.to_string(), v.to_string());
        }
        out
    }

    fn arr<const N: usize>(hex: &str) -> [u8; N] {
        unhex(hex).try_into().unwrap()
    }

    // Goal: the word-wise MAC comparison matches exactly equal bytes: a
    // difference in any single bit of any byte, or another length, fails.
    #[test]
    fn mac_eq_is_exact() {
        let want: [u8; MAC_LEN] = core::array::from_fn(|i| (i * 37 + 11) as u8);
        assert!(bool::from(mac_eq(&want, &want)));
        for i in 0..MAC_LEN {
            for bit in 0..8 {
                let mut got = want;
                got[i] ^= 1 << bit;
                assert!(!bool::from(mac_eq(&want, &got)), "byte {i} bit {bit}");
            }
        }
        assert!(!bool::from(mac_eq(&want, &want[..MAC_LEN - 1])));
        assert!(!bool::from(mac_eq(
            &want,
            &[want.as_slice(), &[0]].concat()
        )));
        assert!(!bool::from(mac_eq(&want, &[])));
    }

    // Goal: the ostiary-4 vector from Ostiary 4.0 holds.
    #[test]
    fn ostiary_vector() {
        let salt: [u8; 32] =
            arr("f2abdc79cfcc1b109ebc8e9fa65605e9d7a3fe9a2be2fe119356a800cf418c1f");
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

    // Goal: every positive postern-2 vector (written by an independent
    // implementation, tests/vectors/make.py) is reproduced byte for byte:
    // MAC input, reply, an ack of every status, and their decoding.
    #[test]
    fn positive_vectors() {
        let cases = blocks("postern-2.vectors");
        assert_eq!(cases.len(), 4);
        let acks = [
            (
                "ack_started",
                Answer::bare(Status::Started).with_seconds(900),
            ),
            (
                "ack_already_active",
                Answer::bare(Status::AlreadyActive).with_seconds(600),
            ),
            (
                "ack_refused",
                Answer::because(Status::Refused, Reason::Cooldown).with_seconds(40),
            ),
            (
                "ack_failed",
                Answer::because(Status::Failed, Reason::RunFailed),
            ),
            ("ack_closed", Answer::bare(Status::Closed)),
            ("ack_not_open", Answer::bare(Status::NotOpen)),
        ];
        for c in &cases {
            let key = Key::from_base64(&c["key"]).unwrap();
            assert_eq!(key.expose().to_vec(), unhex(&c["key_hex"]));
            let mk = MacKey::new(key.expose());
            let g: Greeting = arr(&c["greeting"]);
            assert!(greeting_is_valid(&g));
            let addr = match c["addr"].as_str() {
                "none" => None,
                a => Some(a.parse::<IpAddr>().unwrap()),
            };
            let field = encode_addr(addr);
            assert_eq!(field.to_vec(), unhex(&c["addr_field"]));
            assert_eq!(reply_input(&g, &field).to_vec(), unhex(&c["mac_input"]));
            let r = reply(&mk, &g, addr);
            assert_eq!(r.to_vec(), unhex(&c["reply"]));
            let v = Verifier::from_keys([&Key::from_bytes([0x99; 32]), &key]);
            assert_eq!(v.check_reply(&g, &r), Some((1, addr)));
            for (name, answer) in acks {
                let a = ack(&mk, &g, &r, answer);
                assert_eq!(a.to_vec(), unhex(&c[name]), "{name}");
                assert_eq!(verify_ack(&mk, &g, &r, &a), Some(answer));
            }
        }
    }

    // Goal: every negative vector is refused (or, for an unknown reason,
    // accepted as shown), and every address case is judged as listed.
    #[test]
    fn negative_vectors() {
        let cases = blocks("postern-2-negative.vectors");
        assert!(cases.len() >= 30);
        for c in &cases {
            let expect = c["expect"].as_str();
            match c["check"].as_str() {
                "ack" => {
                    let mk = MacKey::new(&unhex(&c["key_hex"]));
                    let got = verify_ack(
                        &mk,
                        &arr(&c["greeting"]),
                        &arr(&c["reply"]),
                        &arr(&c["ack"]),
                    );
                    let shown = got.map(|a| {
                        format!(
                            "status={} reason={} seconds={}",
                            a.status.to_byte(),
                            a.reason.to_byte(),
                            a.seconds
                        )
                    });
                    match expect {
                        "reject" => assert_eq!(shown, None, "case {}", c["case"]),
                        body => assert_eq!(shown.as_deref(), Some(body), "case {}", c["case"]),
                    }
                }
                "greeting" => {
                    let g = unhex(&c["greeting"]);
                    let tag: [u8; 4] = g[..4].try_into().unwrap();
                    assert_eq!(expect, "reject");
                    assert!(!tag_is_valid(&tag), "case {}", c["case"]);
                }
                "key" => {
                    let text = String::from_utf8(unhex(&c["text_hex"])).unwrap();
                    let got = Key::from_base64(&text).ok().map(|k| k.expose().to_vec());
                    match expect {
                        "reject" => assert_eq!(got, None, "case {}", c["case"]),
                        hex => assert_eq!(got, Some(unhex(hex)), "case {}", c["case"]),
                    }
                }
                "addr" => {
                    let field: [u8; ADDR_LEN] = arr(&c["addr_field"]);
                    let ip = decode_addr(&field).unwrap();
                    assert_eq!(ip, canonical_ip(c["addr"].parse().unwrap()));
                    assert_eq!(
                        asserted_allowed(ip),
                        expect == "allow",
                        "case {} {}",
                        c["case"],
                        c["addr"]
                    );
                }
                other => unreachable!("unknown check {other}"),
            }
        }
    }

    // Goal: a reply verifies under its own key only, and any flipped bit in
    // the nonce, address or MAC breaks it; the greeting's tag is not part
    // of the MAC (the label implies it).
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
            for byte in 4..GREETING_LEN {
                let mut g2 = g;
                g2[byte] ^= 1;
                assert_eq!(v.check_reply(&g2, &r), None);
            }
        }
    }

    // Goal: acks verify, carry their whole body, and reject forgery of any
    // byte of the body.
    #[test]
    fn ack_roundtrip() {
        let mk = MacKey::new(&[7u8; 32]);
        let other = MacKey::new(&[8u8; 32]);
        let g = greeting(&[1; 32]);
        let r = reply(&mk, &g, None);
        for s in Status::ALL {
            for why in Reason::KNOWN {
                let answer = Answer::because(s, why).with_seconds(12345);
                let a = ack(&mk, &g, &r, answer);
                assert_eq!(verify_ack(&mk, &g, &r, &a), Some(answer));
                assert_eq!(verify_ack(&other, &g, &r, &a), None);
                for byte in 0..ACK_BODY_LEN {
                    let mut flipped = a;
                    flipped[byte] ^= 0x01;
                    assert_eq!(verify_ack(&mk, &g, &r, &flipped), None);
                }
            }
        }
    }

    // Goal: reason bytes round-trip, unknown ones are kept as numbers, and
    // the body codec refuses unknown statuses.
    #[test]
    fn reason_and_body_codec() {
        for r in Reason::KNOWN {
            assert_eq!(Reason::from_byte(r.to_byte()), r);
        }
        assert_eq!(Reason::from_byte(200), Reason::Unknown(200));
        assert_eq!(Reason::Unknown(200).describe(), "reason 200");
        assert_eq!(
            Answer::from_bytes(&[5, 0, 0, 0, 0, 0]).map(|a| a.status),
            Some(Status::Closed)
        );
        assert_eq!(
            Answer::from_bytes(&[6, 0, 0, 0, 0, 0]).map(|a| a.status),
            Some(Status::NotOpen)
        );
        for b in [0u8, 7, 8, 255] {
            assert_eq!(Answer::from_bytes(&[b, 0, 0, 0, 0, 0]), None);
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
