//! HMAC-SHA256 (RFC 2104), keyed once, from the `hmac` crate.
//!
//! The server checks every reply against every configured key, so the
//! per-key cost matters. Keying HMAC costs two SHA-256 compressions (the
//! ipad and opad blocks); [`MacKey`] holds an `Hmac<Sha256>` keyed once at
//! load time and clones it for each MAC, so a MAC over a message of at most
//! 55 bytes costs one inner and one outer compression.
//!
//! The keyed state is as secret as the key itself (it lets anyone compute
//! MACs). It lives in a type that prints as `<redacted>` and is never
//! compared with `==`; with the `zeroize` features of `hmac` and `sha2`,
//! both chaining states and the block buffer are wiped when a `MacKey` or
//! one of its per-MAC clones is dropped. The padded key block built at
//! load time is wiped too.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// SHA-256 block length in bytes.
const BLOCK: usize = 64;
/// HMAC-SHA256 output length in bytes.
pub const MAC_LEN: usize = 32;

/// A keyed HMAC-SHA256 state. Wiped on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct MacKey(Hmac<Sha256>);

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    /// Prepares a key of any length. Keys longer than one block are hashed
    /// first, as RFC 2104 requires (this only happens for `ostiary-4`
    /// passwords and passphrases; postern-2 keys are always 32 bytes).
    /// Never panics: the key is padded to one block here, which is what
    /// RFC 2104 does, so keying cannot fail.
    pub fn new(key: &[u8]) -> Self {
        let mut block = Zeroizing::new([0u8; BLOCK]);
        if key.len() > BLOCK {
            let mut digest: [u8; 32] = Sha256::digest(key).into();
            block[..32].copy_from_slice(&digest);
            digest.zeroize();
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut array = (*block).into();
        let mac = <Hmac<Sha256> as KeyInit>::new(&array);
        zeroize_array(&mut array);
        MacKey(mac)
    }

    /// HMAC over the concatenation of `parts`. Never panics; the cost
    /// depends only on the total length of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut m = self.0.clone();
        for part in parts {
            m.update(part);
        }
        m.finalize().into_bytes().into()
    }
}

fn zeroize_array(a: &mut hmac::digest::Key<Hmac<Sha256>>) {
    a.as_mut_slice().zeroize();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn reference(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    // Goal: RFC 4231 test cases 1, 2 and 6 (short, text and over-long key).
    #[test]
    fn rfc4231_vectors() {
        let cases = [
            (
                hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(MacKey::new(&key).mac(&[&msg]).to_vec(), hex(want));
        }
    }

    // Goal: keying through the padded block agrees with the crate's own
    // keying for every key length around the block size, however the
    // message is split.
    #[test]
    fn padded_keying_matches_crate_keying() {
        for key_len in [0usize, 1, 31, 32, 33, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
            let mk = MacKey::new(&key);
            for msg_len in [0usize, 1, 55, 56, 64, 119, 120, 200] {
                let msg: Vec<u8> = (0..msg_len).map(|i| (i * 13) as u8).collect();
                let want = reference(&key, &msg);
                assert_eq!(mk.mac(&[&msg]), want, "key {key_len} msg {msg_len}");
                let cut = msg_len / 3;
                assert_eq!(mk.mac(&[&msg[..cut], &msg[cut..]]), want);
            }
        }
    }

    // Goal: the keyed state is wiped on drop: the chaining states and the
    // buffer inside `Hmac<Sha256>` are ZeroizeOnDrop with these features.
    #[test]
    fn keyed_state_is_zeroize_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<hmac::digest::block_api::Buffer<sha2::block_api::Sha256VarCore>>();
        wiped::<sha2::block_api::Sha256VarCore>();
    }

    // Goal: the key state never shows in Debug output.
    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", MacKey::new(b"k")), "MacKey(<redacted>)");
    }
}
