//! HMAC-SHA256 (RFC 2104) with precomputed, zeroized key states.
//!
//! The server checks every reply against every configured key, so the
//! per-key cost matters. Keying HMAC costs two SHA-256 compressions (the
//! ipad and opad blocks); [`MacKey`] does that once, at load time, and keeps
//! the two chaining states. A MAC over a short message then costs only the
//! message's own blocks plus one outer block.
//!
//! The chaining states are as secret as the key itself (they let anyone
//! compute MACs), so they live in a type that is zeroized on drop, prints
//! as `<redacted>` and is never compared with `==`. All scratch buffers are
//! zeroized before they go out of scope.
//!
//! Correctness is checked against RFC 4231 and against the `hmac` crate's
//! reference implementation in the tests at the bottom of this file.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SHA-256 block length in bytes.
const BLOCK: usize = 64;
/// HMAC-SHA256 output length in bytes.
pub const MAC_LEN: usize = 32;

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A keyed HMAC-SHA256 state: the chaining values after the ipad and the
/// opad block. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    let ga: &GenericArray<u8, _> = GenericArray::from_slice(block);
    sha2::compress256(state, core::slice::from_ref(ga));
}

impl MacKey {
    /// Prepares a key of any length. Keys longer than one block are hashed
    /// first, as RFC 2104 requires (this only happens for `ostiary-4`
    /// passwords; postern-1 keys are always 32 bytes).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            let mut digest: [u8; 32] = Sha256::digest(key).into();
            block[..32].copy_from_slice(&digest);
            digest.zeroize();
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut pad = [0u8; BLOCK];
        for (p, k) in pad.iter_mut().zip(block.iter()) {
            *p = k ^ 0x36;
        }
        let mut inner = IV;
        compress(&mut inner, &pad);
        for (p, k) in pad.iter_mut().zip(block.iter()) {
            *p = k ^ 0x5c;
        }
        let mut outer = IV;
        compress(&mut outer, &pad);
        pad.zeroize();
        block.zeroize();
        MacKey { inner, outer }
    }

    /// HMAC over the concatenation of `parts`. Never panics; the cost
    /// depends only on the total length of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut state = self.inner;
        let mut buf = [0u8; BLOCK];
        let mut fill = 0usize;
        // The ipad block has already been absorbed.
        let mut total: u64 = BLOCK as u64;
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let take = core::cmp::min(BLOCK - fill, rest.len());
                buf[fill..fill + take].copy_from_slice(&rest[..take]);
                fill += take;
                rest = &rest[take..];
                if fill == BLOCK {
                    compress(&mut state, &buf);
                    fill = 0;
                }
            }
            total = total.wrapping_add(part.len() as u64);
        }
        let mut inner_digest = finish(&mut state, &mut buf, fill, total);

        // Outer hash: opad block (absorbed) || inner digest (32 bytes).
        let mut ostate = self.outer;
        let mut obuf = [0u8; BLOCK];
        obuf[..MAC_LEN].copy_from_slice(&inner_digest);
        let out = finish(&mut ostate, &mut obuf, MAC_LEN, (BLOCK + MAC_LEN) as u64);
        inner_digest.zeroize();
        state.zeroize();
        ostate.zeroize();
        buf.zeroize();
        obuf.zeroize();
        out
    }
}

/// Applies SHA-256 padding to the `fill` bytes pending in `buf` (the whole
/// message being `total` bytes long) and returns the digest.
fn finish(state: &mut [u32; 8], buf: &mut [u8; BLOCK], fill: usize, total: u64) -> [u8; 32] {
    let bits = total.wrapping_mul(8);
    // `fill < BLOCK` always holds here: a full buffer is compressed at once.
    let mut fill = fill % BLOCK;
    buf[fill] = 0x80;
    fill += 1;
    if fill > BLOCK - 8 {
        buf[fill..].fill(0);
        compress(state, buf);
        fill = 0;
    }
    buf[fill..BLOCK - 8].fill(0);
    buf[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
    compress(state, buf);
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state.iter()) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hmac::{Hmac, Mac};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn reference(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
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

    // Goal: every key and message length around the block boundaries agrees
    // with the reference implementation, however the message is split.
    #[test]
    fn matches_reference_across_lengths_and_splits() {
        let mut seed = 0x1234_5678_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed & 0xff) as u8
        };
        for key_len in [0usize, 1, 31, 32, 33, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|_| next()).collect();
            let mk = MacKey::new(&key);
            for msg_len in 0..200usize {
                let msg: Vec<u8> = (0..msg_len).map(|_| next()).collect();
                let want = reference(&key, &msg);
                assert_eq!(mk.mac(&[&msg]), want, "key {key_len} msg {msg_len}");
                let cut = msg_len / 3;
                let cut2 = (2 * msg_len) / 3;
                assert_eq!(mk.mac(&[&msg[..cut], &msg[cut..cut2], &msg[cut2..]]), want);
            }
        }
    }

    // Goal: the key state never shows in Debug output.
    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", MacKey::new(b"k")), "MacKey(<redacted>)");
    }
}
