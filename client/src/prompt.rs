//! Reading one secret line: from the terminal with echo off, or from
//! standard input when that is not a terminal (scripts, `pass show x |`).
//!
//! The line goes into a fixed, zeroized buffer read one byte at a time with
//! no buffering layer in between, so no copy of the secret is left behind
//! in a growable buffer.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;

use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg, Termios};
use zeroize::Zeroizing;

/// Longest secret line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 1024;

/// A secret line: zeroized on drop, never printed.
pub struct SecretLine {
    buf: Zeroizing<[u8; MAX_LINE]>,
    len: usize,
}

impl fmt::Debug for SecretLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretLine(<redacted>)")
    }
}

impl SecretLine {
    /// The line, without its newline.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Whether the line is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why no line could be read.
#[derive(Debug)]
pub enum PromptError {
    /// There is no terminal to prompt on.
    NoTerminal(io::Error),
    /// The input ended before a line did.
    NoInput,
    /// The line is longer than [`MAX_LINE`].
    TooLong,
    /// Reading, writing or setting up the terminal failed.
    Io(io::Error),
}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptError::NoTerminal(e) => write!(f, "cannot open the terminal (/dev/tty): {e}"),
            PromptError::NoInput => f.write_str("no input"),
            PromptError::TooLong => write!(f, "input longer than {MAX_LINE} bytes"),
            PromptError::Io(e) => write!(f, "cannot read the input: {e}"),
        }
    }
}

impl std::error::Error for PromptError {}

/// Whether secrets will be read from a terminal (and so a confirmation
/// prompt makes sense).
pub fn stdin_is_terminal() -> bool {
    io::stdin().is_terminal()
}

/// Reads a secret line: prompts on the terminal with echo off when
/// standard input is a terminal, else reads one line from standard input.
pub fn read_secret(prompt: &str) -> Result<SecretLine, PromptError> {
    if stdin_is_terminal() {
        read_from_terminal(prompt)
    } else {
        read_from_stdin()
    }
}

/// Prompts on `/dev/tty` and reads a line with echo off.
pub fn read_from_terminal(prompt: &str) -> Result<SecretLine, PromptError> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(PromptError::NoTerminal)?;
    (&tty)
        .write_all(prompt.as_bytes())
        .map_err(PromptError::Io)?;
    let saved = tcgetattr(tty.as_fd()).map_err(|e| PromptError::Io(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    // Still echo the newline, so the next output starts on a line of its own.
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &quiet).map_err(|e| PromptError::Io(e.into()))?;
    let restore = Restore { tty: &tty, saved };
    let line = read_line(&tty);
    drop(restore);
    line
}

/// Puts the terminal back as it was, however the read ended.
struct Restore<'a> {
    tty: &'a File,
    saved: Termios,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = tcsetattr(self.tty.as_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}

/// Reads one line from standard input, unbuffered.
pub fn read_from_stdin() -> Result<SecretLine, PromptError> {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(PromptError::Io)?;
    read_line(&File::from(fd))
}

/// Reads bytes up to a newline (or the end of input after at least one
/// byte) into a fixed buffer. A trailing `\r` is dropped.
fn read_line(mut input: &File) -> Result<SecretLine, PromptError> {
    let mut line = SecretLine {
        buf: Zeroizing::new([0u8; MAX_LINE]),
        len: 0,
    };
    let mut byte = Zeroizing::new([0u8; 1]);
    loop {
        match input.read(&mut byte[..]) {
            Ok(0) if line.len == 0 => return Err(PromptError::NoInput),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if line.len == MAX_LINE {
                    return Err(PromptError::TooLong);
                }
                line.buf[line.len] = byte[0];
                line.len += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PromptError::Io(e)),
        }
    }
    if line.len > 0 && line.buf[line.len - 1] == b'\r' {
        line.len -= 1;
        line.buf[line.len] = 0;
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file_with(content: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "postern-prompt-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::write(&path, content).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    // Goal: lines end at \n (a \r before it is dropped) or at the end of
    // input; empty input and over-long lines are errors.
    #[test]
    fn reads_one_line() {
        assert_eq!(
            read_line(&file_with(b"secret\nnext\n")).unwrap().as_bytes(),
            b"secret"
        );
        assert_eq!(
            read_line(&file_with(b"crlf\r\n")).unwrap().as_bytes(),
            b"crlf"
        );
        assert_eq!(
            read_line(&file_with(b"no newline")).unwrap().as_bytes(),
            b"no newline"
        );
        assert!(read_line(&file_with(b"\n")).unwrap().is_empty());
        assert!(matches!(
            read_line(&file_with(b"")),
            Err(PromptError::NoInput)
        ));
        let long = vec![b'a'; MAX_LINE + 1];
        assert!(matches!(
            read_line(&file_with(&long)),
            Err(PromptError::TooLong)
        ));
        assert_eq!(
            format!("{:?}", read_line(&file_with(b"x\n")).unwrap()),
            "SecretLine(<redacted>)"
        );
    }
}
