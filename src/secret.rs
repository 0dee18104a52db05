//! Secret types: action keys and `ostiary-4` passwords, plus the base64
//! codec keys are written in.
//!
//! Both secret types are zeroized on drop, print as `<redacted>` in `Debug`,
//! have no `Display`, no `PartialEq`, and are compared only in constant time
//! ([`Key::ct_eq`]). Key files are decoded into a [`Key`] directly so the
//! decoded bytes never sit in an ordinary `Vec`.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a postern-2 action key in bytes.
pub const KEY_LEN: usize = 32;

/// A 32-byte action key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; KEY_LEN]);

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why a base64 key could not be decoded. Messages are lower-case and name
/// the fix; they never include the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not base64 (RFC 4648, standard alphabet, padded or not).
    NotBase64,
    /// The text decodes, but not to exactly 32 bytes.
    WrongLength(usize),
}

impl core::fmt::Display for KeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KeyError::NotBase64 => f.write_str(
                "key is not valid base64; generate one with `postern keygen`",
            ),
            KeyError::WrongLength(n) => write!(
                f,
                "key decodes to {n} bytes, but must be exactly 32; generate one with `postern keygen`"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key(bytes)
    }

    /// A fresh key from the OS CSPRNG. There is no fallback: if the kernel
    /// cannot supply randomness the caller gets the error.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = Key([0u8; KEY_LEN]);
        getrandom::getrandom(&mut k.0)?;
        Ok(k)
    }

    /// Parses key text into a key: standard base64 of exactly 32 bytes,
    /// padding optional, canonical trailing bits; surrounding ASCII space,
    /// tab, CR and LF are ignored, and nothing else is (PROTOCOL.md, "Key
    /// text").
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut out = Zeroizing::new([0u8; 48]);
        let trimmed = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        let n = b64_decode(trimmed.as_bytes(), &mut out[..])?;
        if n != KEY_LEN {
            return Err(KeyError::WrongLength(n));
        }
        let mut k = Key([0u8; KEY_LEN]);
        k.0.copy_from_slice(&out[..KEY_LEN]);
        Ok(k)
    }

    /// The key as base64 text, for `postern keygen` only.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(b64_encode(&self.0))
    }

    /// The raw bytes, for keying a MAC.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Key) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// An `ostiary-4` password: raw bytes of any length. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(Vec<u8>);

impl core::fmt::Debug for Password {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Wraps password bytes. The caller's copy should be zeroized too.
    pub fn new(bytes: Vec<u8>) -> Self {
        Password(bytes)
    }

    /// The raw bytes, for keying a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality (the length is not secret).
    pub fn ct_eq(&self, other: &Password) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let idx = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, &v) in idx.iter().enumerate() {
            if i <= chunk.len() {
                s.push(char::from(ALPHABET[v as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes standard base64 (padding optional) into `out`, returning the
/// number of bytes written. Input that would overflow `out` is reported as
/// the length it would have had, so the caller can say "wrong length".
pub fn b64_decode(text: &[u8], out: &mut [u8]) -> Result<usize, KeyError> {
    let body = match text.iter().position(|&c| c == b'=') {
        Some(p) => {
            let pad = &text[p..];
            if pad.len() > 2 || pad.iter().any(|&c| c != b'=') || !text.len().is_multiple_of(4) {
                return Err(KeyError::NotBase64);
            }
            &text[..p]
        }
        None => text,
    };
    if body.len() % 4 == 1 {
        return Err(KeyError::NotBase64);
    }
    let decoded_len = body.len() / 4 * 3 + (body.len() % 4).saturating_sub(1);
    if decoded_len > out.len() {
        return Err(KeyError::WrongLength(decoded_len));
    }
    let mut n = 0usize;
    for chunk in body.chunks(4) {
        let mut acc: u32 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = b64_value(c).ok_or(KeyError::NotBase64)?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        let produce = chunk.len() - 1;
        // Non-canonical trailing bits mean the text was not produced by an
        // encoder; refuse rather than silently accept two spellings.
        if produce < 3 && bytes[produce] != 0 {
            return Err(KeyError::NotBase64);
        }
        out[n..n + produce].copy_from_slice(&bytes[..produce]);
        n += produce;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Goal: base64 round-trips for every length and matches RFC 4648 vectors.
    #[test]
    fn base64_rfc4648_and_roundtrip() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in vectors {
            assert_eq!(b64_encode(plain.as_bytes()), enc);
            let mut out = [0u8; 16];
            let n = b64_decode(enc.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], plain.as_bytes());
            let unpadded = enc.trim_end_matches('=');
            let n = b64_decode(unpadded.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], plain.as_bytes());
        }
        for len in 0..40usize {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut out = [0u8; 64];
            let n = b64_decode(b64_encode(&data).as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], &data[..]);
        }
    }

    // Goal: malformed base64 and wrong key lengths are refused with the
    // right error.
    #[test]
    fn key_parse_errors() {
        assert_eq!(
            Key::from_base64("Zm9v").unwrap_err(),
            KeyError::WrongLength(3)
        );
        assert_eq!(Key::from_base64("!!!!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(Key::from_base64("Zm9=v").unwrap_err(), KeyError::NotBase64);
        assert_eq!(Key::from_base64("Zh==").unwrap_err(), KeyError::NotBase64);
        let long = b64_encode(&[7u8; 40]);
        assert_eq!(
            Key::from_base64(&long).unwrap_err(),
            KeyError::WrongLength(40)
        );
        let good = b64_encode(&[9u8; 32]);
        let k = Key::from_base64(&format!("  {good}\n")).unwrap();
        assert_eq!(k.expose(), &[9u8; 32]);
        assert!(k.ct_eq(&Key::from_bytes([9u8; 32])));
        assert!(!k.ct_eq(&Key::from_bytes([8u8; 32])));
    }

    // Goal: secrets never show in Debug output.
    #[test]
    fn secrets_are_redacted() {
        assert_eq!(format!("{:?}", Key::from_bytes([1; 32])), "Key(<redacted>)");
        assert_eq!(
            format!("{:?}", Password::new(b"pw".to_vec())),
            "Password(<redacted>)"
        );
    }

    // Goal: generated keys are 32 bytes from the OS and differ.
    #[test]
    fn generate_differs() {
        let a = Key::generate().unwrap();
        let b = Key::generate().unwrap();
        assert!(!a.ct_eq(&b));
        assert_eq!(
            Key::from_base64(&a.to_base64()).unwrap().expose(),
            a.expose()
        );
    }
}
