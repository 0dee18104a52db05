//! Where secrets come from: key, password and master files (refused if
//! group or others can read them), environment variables, the terminal,
//! and derivation from a passphrase or a fleet master key.
//!
//! There is no way to pass a secret as a command-line argument: arguments
//! are visible to every user through `/proc`. File contents are read into
//! fixed, zeroized buffers; the secret types zeroize themselves on drop.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use postern::secret::{Key, KeyError, Password};
use zeroize::Zeroizing;

use crate::prompt::{self, PromptError, SecretLine};

/// Largest key or master file read, in bytes (a key is 44 base64 bytes).
pub const MAX_KEY_FILE: usize = 4096;
/// Largest ostiary-4 password accepted, in bytes (the daemon's bound).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Passphrases shorter than this draw a warning: a recorded exchange lets
/// anyone guess offline.
pub const SHORT_PASSPHRASE: usize = 16;

/// Where the secret for a trigger comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the base64 key.
    File(PathBuf),
    /// An environment variable holding the base64 key (ostiary-4: the
    /// password).
    Env(String),
    /// Typed at a prompt (the default).
    Prompt,
    /// A passphrase typed at a prompt, stretched with PBKDF2.
    Passphrase,
    /// A file holding a base64 fleet master key; the action key is derived.
    Master(PathBuf),
    /// ostiary-4: a file holding the password.
    PasswordFile(PathBuf),
}

impl KeySource {
    /// How the source is spelled on the command line, for messages.
    pub fn flag(&self) -> &'static str {
        match self {
            KeySource::File(_) => "--key-file",
            KeySource::Env(_) => "--key-env",
            KeySource::Prompt => "the key prompt",
            KeySource::Passphrase => "--passphrase",
            KeySource::Master(_) => "--master",
            KeySource::PasswordFile(_) => "--password-file",
        }
    }
}

/// The newest key source the operator has during a rotation: `next` (a
/// key file or master successor) if its file exists, or cannot be looked
/// at (so that loading it reports why), else `current`.
pub fn newest<'a>(current: &'a KeySource, next: Option<&'a KeySource>) -> &'a KeySource {
    let Some(next) = next else {
        return current;
    };
    let path = match next {
        KeySource::File(p) | KeySource::Master(p) | KeySource::PasswordFile(p) => p,
        KeySource::Env(_) | KeySource::Prompt | KeySource::Passphrase => return next,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => current,
        _ => next,
    }
}

/// Why a secret could not be loaded. Messages never include the secret.
#[derive(Debug)]
pub enum SecretError {
    /// The file could not be opened or read.
    Read {
        /// The file.
        file: PathBuf,
        /// The system's message.
        error: io::Error,
    },
    /// The file's mode lets group or others read (or write) it.
    Permissions {
        /// The file.
        file: PathBuf,
    },
    /// The file is larger than any key or password.
    TooLarge {
        /// The file.
        file: PathBuf,
    },
    /// The file or variable does not hold a valid base64 key.
    BadKey {
        /// Where it came from (a path or `$VAR`).
        origin: String,
        /// What is wrong.
        error: KeyError,
    },
    /// The password file is empty.
    EmptyPassword {
        /// The file.
        file: PathBuf,
    },
    /// The environment variable is not set (or not UTF-8).
    EnvUnset {
        /// The variable.
        var: String,
    },
    /// Nothing could be read from the terminal or standard input.
    Prompt {
        /// What was being asked for.
        what: &'static str,
        /// Why.
        error: PromptError,
    },
    /// An empty passphrase or key was entered.
    Empty {
        /// What was being asked for.
        what: &'static str,
    },
    /// The two passphrases typed differ.
    Mismatch,
    /// The operating system gave no randomness.
    Random(String),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Read { file, error } => {
                write!(f, "cannot read {}: {error}", file.display())
            }
            SecretError::Permissions { file } => write!(
                f,
                "{0} is readable by group or others; run chmod 600 {0}",
                file.display()
            ),
            SecretError::TooLarge { file } => {
                write!(
                    f,
                    "{} is too large to hold a key or password",
                    file.display()
                )
            }
            SecretError::BadKey { origin, error } => write!(f, "{origin}: {error}"),
            SecretError::EmptyPassword { file } => write!(f, "{} is empty", file.display()),
            SecretError::EnvUnset { var } => {
                write!(f, "environment variable {var} is not set (or not UTF-8)")
            }
            SecretError::Prompt { what, error } => write!(f, "cannot read the {what}: {error}"),
            SecretError::Empty { what } => write!(f, "empty {what}"),
            SecretError::Mismatch => f.write_str("the passphrases differ"),
            SecretError::Random(e) => write!(f, "no randomness from the operating system: {e}"),
        }
    }
}

impl std::error::Error for SecretError {}

/// Opens a secret file, refuses it if group or others have any access,
/// and reads it whole into a fixed buffer of `N` bytes.
fn read_private_file<const N: usize>(
    path: &Path,
) -> Result<(Zeroizing<[u8; N]>, usize), SecretError> {
    let read_err = |error| SecretError::Read {
        file: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(read_err)?;
    // The mode of the file actually opened, not of whatever the path
    // names a moment later.
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            file: path.to_owned(),
        });
    }
    let mut buf = Zeroizing::new([0u8; N]);
    let mut len = 0usize;
    loop {
        if len == N {
            // One more byte means the file is too large.
            let mut probe = [0u8; 1];
            match file.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(SecretError::TooLarge {
                        file: path.to_owned(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            }
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok((buf, len))
}

fn key_from_text(bytes: &[u8], origin: impl FnOnce() -> String) -> Result<Key, SecretError> {
    std::str::from_utf8(bytes)
        .map_err(|_| KeyError::NotBase64)
        .and_then(Key::from_base64)
        .map_err(|error| SecretError::BadKey {
            origin: origin(),
            error,
        })
}

/// Loads a base64 key (action key or fleet master) from a private file.
pub fn load_key_file(path: &Path) -> Result<Key, SecretError> {
    let (buf, len) = read_private_file::<MAX_KEY_FILE>(path)?;
    key_from_text(&buf[..len], || path.display().to_string())
}

/// Loads an ostiary-4 password from a private file. One trailing newline
/// (`\n` or `\r\n`) is not part of the password.
pub fn load_password_file(path: &Path) -> Result<Password, SecretError> {
    let (buf, len) = read_private_file::<{ MAX_PASSWORD_LEN + 2 }>(path)?;
    let mut pw = &buf[..len];
    if let Some(p) = pw.strip_suffix(b"\n") {
        pw = p.strip_suffix(b"\r").unwrap_or(p);
    }
    if pw.is_empty() {
        return Err(SecretError::EmptyPassword {
            file: path.to_owned(),
        });
    }
    if pw.len() > MAX_PASSWORD_LEN {
        return Err(SecretError::TooLarge {
            file: path.to_owned(),
        });
    }
    Ok(Password::new(pw.to_vec()))
}

fn env_value(var: &str) -> Result<Zeroizing<String>, SecretError> {
    std::env::var(var)
        .map(Zeroizing::new)
        .map_err(|_| SecretError::EnvUnset {
            var: var.to_owned(),
        })
}

/// Reads a base64 key from an environment variable.
pub fn key_from_env(var: &str) -> Result<Key, SecretError> {
    let value = env_value(var)?;
    key_from_text(value.as_bytes(), || format!("${var}"))
}

/// Reads an ostiary-4 password from an environment variable.
pub fn password_from_env(var: &str) -> Result<Password, SecretError> {
    let value = env_value(var)?;
    if value.is_empty() {
        return Err(SecretError::EnvUnset {
            var: var.to_owned(),
        });
    }
    Ok(Password::new(value.as_bytes().to_vec()))
}

fn read_nonempty(prompt_text: &str, what: &'static str) -> Result<SecretLine, SecretError> {
    let line =
        prompt::read_secret(prompt_text).map_err(|error| SecretError::Prompt { what, error })?;
    if line.is_empty() {
        return Err(SecretError::Empty { what });
    }
    Ok(line)
}

/// Asks for a base64 key (terminal without echo, or one line of stdin).
pub fn prompt_key(label: &str) -> Result<Key, SecretError> {
    let line = read_nonempty(&format!("base64 key for {label}: "), "key")?;
    key_from_text(line.as_bytes(), || "the key entered".to_owned())
}

/// Asks for an ostiary-4 password (terminal without echo, or stdin).
pub fn prompt_password(label: &str) -> Result<Password, SecretError> {
    let line = read_nonempty(&format!("password for {label}: "), "password")?;
    Ok(Password::new(line.as_bytes().to_vec()))
}

/// Asks for a passphrase. On a terminal with `confirm`, asks twice and
/// compares in constant time; from standard input, reads one line.
pub fn prompt_passphrase(label: &str, confirm: bool) -> Result<SecretLine, SecretError> {
    let first = read_nonempty(&format!("passphrase for {label}: "), "passphrase")?;
    if confirm && prompt::stdin_is_terminal() {
        let again = read_nonempty("again: ", "passphrase")?;
        let a = Password::new(first.as_bytes().to_vec());
        let b = Password::new(again.as_bytes().to_vec());
        if !a.ct_eq(&b) {
            return Err(SecretError::Mismatch);
        }
    }
    Ok(first)
}

/// A fresh random key.
pub fn generate() -> Result<Key, SecretError> {
    Key::generate().map_err(|e| SecretError::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use postern::secret::b64_encode;
    use std::fs;

    fn private_file(name: &str, content: &[u8], mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    // Goal: key files load only when private, and say how to fix a wrong
    // mode, bad base64 or an oversized file, without echoing the content.
    #[test]
    fn key_files() {
        let text = format!("{}\n", b64_encode(&[5u8; 32]));
        let ok = private_file("ok.key", text.as_bytes(), 0o600);
        assert_eq!(load_key_file(&ok).unwrap().expose(), &[5u8; 32]);

        let open = private_file("open.key", text.as_bytes(), 0o644);
        let msg = load_key_file(&open).unwrap_err().to_string();
        let p = open.display();
        assert_eq!(
            msg,
            format!("{p} is readable by group or others; run chmod 600 {p}")
        );
        let group_w = private_file("gw.key", text.as_bytes(), 0o620);
        assert!(matches!(
            load_key_file(&group_w),
            Err(SecretError::Permissions { .. })
        ));

        let bad = private_file("bad.key", b"hunter2-not-base64!", 0o600);
        let msg = load_key_file(&bad).unwrap_err().to_string();
        assert!(msg.contains("not valid base64"), "{msg}");
        assert!(!msg.contains("hunter2"));

        let big = private_file("big.key", &vec![b'A'; MAX_KEY_FILE + 1], 0o600);
        assert!(matches!(
            load_key_file(&big),
            Err(SecretError::TooLarge { .. })
        ));
        let missing = ok.with_file_name("missing.key");
        assert!(matches!(
            load_key_file(&missing),
            Err(SecretError::Read { .. })
        ));
    }

    // Goal: password files lose exactly one trailing newline and are
    // bounded; empty ones are refused.
    #[test]
    fn password_files() {
        let p = private_file("pw1", b"Sample\n", 0o400);
        assert_eq!(load_password_file(&p).unwrap().expose(), b"Sample");
        let p = private_file("pw2", b"two\n\n", 0o600);
        assert_eq!(load_password_file(&p).unwrap().expose(), b"two\n");
        let p = private_file("pw3", b"crlf\r\n", 0o600);
        assert_eq!(load_password_file(&p).unwrap().expose(), b"crlf");
        let p = private_file("pw4", b"\n", 0o600);
        assert!(matches!(
            load_password_file(&p),
            Err(SecretError::EmptyPassword { .. })
        ));
        let p = private_file("pw5", &vec![b'x'; MAX_PASSWORD_LEN + 1], 0o600);
        assert!(matches!(
            load_password_file(&p),
            Err(SecretError::TooLarge { .. })
        ));
        let p = private_file("pw6", &vec![b'x'; MAX_PASSWORD_LEN], 0o600);
        assert_eq!(
            load_password_file(&p).unwrap().expose().len(),
            MAX_PASSWORD_LEN
        );
    }
}
