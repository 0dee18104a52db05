//! BENCH-ONLY BASELINE: the removed postern-1 implementation of HMAC-SHA256,
//! kept here only so that measure (d) can compare postern-2's verification
//! (the `hmac` crate over a 55-byte input) with postern-1's (this
//! hand-written HMAC over a 68-byte input) in the same run. It is not part
//! of the product and nothing outside benches/ uses it.
//!
//! Copied from `src/mac.rs` as of commit 23fcf09 (the last postern-1
//! version); the only change is the SHA-256 compression call, which moved
//! to `sha2::block_api::compress256` in sha2 0.11.

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SHA-256 block length in bytes.
const BLOCK: usize = 64;
/// HMAC-SHA256 output length in bytes.
pub const MAC_LEN: usize = 32;

/// postern-1's reply MAC label: `"postern-1 reply\0"`.
pub const REPLY_LABEL: &[u8] = b"postern-1 reply\0";

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A keyed HMAC-SHA256 state: the chaining values after the ipad and the
/// opad block. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    sha2::block_api::compress256(state, core::slice::from_ref(block));
}

impl MacKey {
    /// Prepares a key of any length (RFC 2104).
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

    /// HMAC over the concatenation of `parts`.
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

/// postern-1's `Verifier::check_reply`, as of 23fcf09: one MAC per key
/// over `REPLY_LABEL || greeting (36) || address field (16)` = 68 bytes,
/// compared in constant time, all keys whichever matches.
pub fn check_reply(keys: &[MacKey], greeting: &[u8; 36], reply: &[u8; 48]) -> Option<usize> {
    use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
    let mut field = [0u8; 16];
    field.copy_from_slice(&reply[..16]);
    let got = &reply[16..];
    let mut found = Choice::from(0);
    let mut index: u32 = 0;
    for (i, key) in keys.iter().enumerate() {
        let want = key.mac(&[REPLY_LABEL, greeting, &field]);
        let hit = want.ct_eq(got);
        index.conditional_assign(&(i as u32), hit);
        found |= hit;
    }
    if bool::from(found) {
        Some(index as usize)
    } else {
        None
    }
}

/// The crate's HMAC gives the same MAC as this one (checked before every
/// measurement, so the baseline measured is a correct HMAC).
pub fn agrees_with_crate() -> bool {
    let key = [0x42u8; 32];
    let msg: Vec<u8> = (0..68u8).collect();
    postern::mac::MacKey::new(&key).mac(&[&msg]) == MacKey::new(&key).mac(&[&msg[..20], &msg[20..]])
}
