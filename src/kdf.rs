//! Key derivation: a memorable passphrase, or a fleet master secret, turned
//! into a 32-byte action key. Both are reproducible with stock OpenSSL (see
//! PROTOCOL.md, "Deriving keys"), so any client can compute the same key.
//!
//! Passphrase: `PBKDF2-HMAC-SHA256(passphrase, salt, 600000, 32)` where
//! `salt = SHA-256("postern-2 passphrase\0" || host || "\0" || action)[0..8]`,
//! computed by the `pbkdf2` crate.
//! The salt is 8 bytes so that `openssl enc -pbkdf2 -S` (which takes exactly
//! 8) can reproduce it while reading the passphrase from standard input.
//!
//! Fleet: `HMAC-SHA256(master, "postern-2 fleet\0" || host || "\0" || action)`.
//!
//! `host` is normalised first by [`normalise_host`], so that `Web-17.`,
//! `web-17:7001` and `web-17` name the same host. The passphrase is used as
//! its bytes, exactly as typed: no Unicode normalisation.
//! A host holds only its own derived keys; HMAC is a PRF, so they reveal
//! nothing about the master or about other hosts' keys.

use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::mac::MacKey;
use crate::secret::Key;

/// PBKDF2 iteration count for passphrase keys.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Label that opens the passphrase salt preimage.
pub const PASSPHRASE_LABEL: &[u8] = b"postern-2 passphrase\0";
/// Label that opens the fleet derivation message.
pub const FLEET_LABEL: &[u8] = b"postern-2 fleet\0";

/// The 8-byte PBKDF2 salt for `host` and `action`.
pub fn passphrase_salt(host: &str, action: &str) -> [u8; 8] {
    let host = normalise_host(host);
    let mut h = Sha256::new();
    h.update(PASSPHRASE_LABEL);
    h.update(host.as_bytes());
    h.update([0u8]);
    h.update(action.as_bytes());
    let d = h.finalize();
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&d[..8]);
    salt
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output (a single PBKDF2 block).
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut t = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut t);
    let key = Key::from_bytes(t);
    t.zeroize();
    key
}

/// The host name as it goes into a derivation (PROTOCOL.md, "Deriving
/// keys"): `[v6]` and `[v6]:port` become `v6`; a name or IPv4 address
/// with exactly one `:` loses its `:port`; one trailing `.` is dropped;
/// ASCII letters are lower-cased and every other byte is kept. IPv6
/// literals are not re-compressed: write them the same way everywhere.
pub fn normalise_host(host: &str) -> String {
    let mut h = host;
    if let Some(rest) = h.strip_prefix('[') {
        h = rest.split(']').next().unwrap_or(rest);
    } else if h.matches(':').count() == 1 {
        h = h.split(':').next().unwrap_or(h);
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    h.to_ascii_lowercase()
}

/// The action key for a passphrase, a host name and an action name.
pub fn key_from_passphrase(passphrase: &[u8], host: &str, action: &str) -> Key {
    pbkdf2_sha256(
        passphrase,
        &passphrase_salt(host, action),
        PBKDF2_ITERATIONS,
    )
}

/// The action key for `host` and `action`, derived from a fleet master.
pub fn key_from_master(master: &Key, host: &str, action: &str) -> Key {
    let prf = MacKey::new(master.expose());
    let host = normalise_host(host);
    let mut out = prf.mac(&[FLEET_LABEL, host.as_bytes(), &[0u8], action.as_bytes()]);
    let key = Key::from_bytes(out);
    out.zeroize();
    key
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Goal: PBKDF2-HMAC-SHA256 matches the published RFC 7914 section 11
    // vector (P="passwd", S="salt", c=1) and a c=4096 reference value.
    #[test]
    fn pbkdf2_vectors() {
        let k = pbkdf2_sha256(b"passwd", b"salt", 1);
        assert_eq!(
            hex(k.expose()),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        let k = pbkdf2_sha256(b"password", b"salt", 4096);
        assert_eq!(
            hex(k.expose()),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
        );
    }

    // Goal: every case of tests/vectors/kdf.vectors (written by an
    // independent implementation) is reproduced: host normalisation, salt,
    // passphrase key (bytes as typed, so NFC and NFD differ) and fleet key.
    #[test]
    fn kdf_vectors() {
        let path = format!("{}/tests/vectors/kdf.vectors", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        let mut n = 0;
        for block in text.split("\n\n") {
            let f: std::collections::HashMap<&str, &str> = block
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(" = "))
                .collect();
            let Some(host) = f.get("host") else { continue };
            let pw: Vec<u8> = (0..f["passphrase_hex"].len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&f["passphrase_hex"][i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(normalise_host(host), f["host_normalised"]);
            assert_eq!(hex(&passphrase_salt(host, f["action"])), f["salt"]);
            let k = key_from_passphrase(&pw, host, f["action"]);
            assert_eq!(*k.to_base64(), f["passphrase_key"]);
            let m = Key::from_base64(f["master"]).unwrap();
            assert_eq!(
                *key_from_master(&m, host, f["action"]).to_base64(),
                f["fleet_key"]
            );
            n += 1;
        }
        assert_eq!(n, 6);
    }

    // Goal: different hosts or actions give different salts and keys.
    #[test]
    fn derivations_separate_hosts_and_actions() {
        assert_ne!(passphrase_salt("a", "b"), passphrase_salt("a", "c"));
        assert_ne!(passphrase_salt("ab", ""), passphrase_salt("a", "b"));
        let m = Key::from_bytes([3; 32]);
        let k1 = key_from_master(&m, "web-1", "console");
        let k2 = key_from_master(&m, "web-2", "console");
        let k3 = key_from_master(&m, "web-1", "power-cycle");
        assert!(!k1.ct_eq(&k2));
        assert!(!k1.ct_eq(&k3));
    }
}
