//! Fixed-length reads and writes on a TCP stream that finish by a deadline.
//!
//! A socket timeout bounds one system call, not a whole message: a peer
//! trickling one byte per second would stretch it forever. These helpers
//! recompute the time left before every call, so the deadline holds for the
//! message as a whole.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Why a fixed-length read or write did not complete.
#[derive(Debug)]
pub enum IoFailure {
    /// The deadline passed first.
    TimedOut,
    /// The peer closed the connection after `got` bytes of the message.
    Closed {
        /// Bytes received before the end of the stream.
        got: usize,
    },
    /// The peer reset the connection (it closed with data unread).
    Reset,
    /// Any other socket error.
    Io(io::Error),
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoFailure::TimedOut => f.write_str("timed out"),
            IoFailure::Closed { got } => write!(f, "connection closed after {got} bytes"),
            IoFailure::Reset => f.write_str("connection reset"),
            IoFailure::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The failure an I/O error stands for.
pub(crate) fn classify(e: io::Error) -> IoFailure {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => IoFailure::TimedOut,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            IoFailure::Reset
        }
        ErrorKind::UnexpectedEof => IoFailure::Closed { got: 0 },
        _ => IoFailure::Io(e),
    }
}

/// Fills all of `buf` from `stream`, or fails once `deadline` has passed.
pub fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), IoFailure> {
    let mut got = 0usize;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(IoFailure::TimedOut);
        }
        stream.set_read_timeout(Some(left)).map_err(IoFailure::Io)?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(IoFailure::Closed { got }),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(e)),
        }
    }
    Ok(())
}

/// Writes all of `buf` to `stream` (one `write_all`), or fails once
/// `deadline` has passed.
pub fn write_all_by(
    stream: &mut TcpStream,
    buf: &[u8],
    deadline: Instant,
) -> Result<(), IoFailure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(IoFailure::TimedOut);
    }
    stream
        .set_write_timeout(Some(left))
        .map_err(IoFailure::Io)?;
    stream.write_all(buf).map_err(classify)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    // Goal: a peer that trickles bytes cannot stretch a read past its
    // deadline, and an early close reports how much arrived.
    #[test]
    fn deadline_holds_for_the_whole_message() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for _ in 0..20 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let r = read_exact_by(&mut c, &mut buf, start + Duration::from_millis(300));
        assert!(matches!(r, Err(IoFailure::TimedOut)), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(900));
        drop(c);
        server.join().unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"abc").unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let r = read_exact_by(&mut c, &mut buf, Instant::now() + Duration::from_secs(5));
        assert!(matches!(r, Err(IoFailure::Closed { got: 3 })), "{r:?}");
        server.join().unwrap();
    }
}
