//! The socketpair between the monitor and the network process.
//!
//! A `SOCK_SEQPACKET` pair keeps message boundaries, so a message is read
//! whole or not at all, and a message of the wrong size is visible as such
//! (`MSG_TRUNC`). Descriptors travel with SCM_RIGHTS: listening sockets
//! from the monitor down, and the connection a verify request is about
//! from the network process up. Any descriptor that arrives where none is
//! expected is closed at once and reported as a protocol violation.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::sys::adopt_fd;

/// Most descriptors accepted with one message.
const MAX_FDS: usize = 4;

/// Creates the pair: (monitor end, network end). Both are close-on-exec
/// and non-blocking.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?)
}

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// Bytes copied into the caller's buffer.
    pub len: usize,
    /// The message did not fit the buffer (so its size was wrong).
    pub truncated: bool,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

/// An async end of the pair.
#[derive(Debug)]
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Wraps one end. Must be called inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> std::io::Result<Channel> {
        Ok(Channel {
            fd: crate::sys::register_async(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Sends one message, with optional descriptors.
    pub async fn send(&self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|inner| {
                let iov = [IoSlice::new(bytes)];
                let cmsg = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
                sendmsg::<()>(inner.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            });
            match res {
                Ok(Ok(n)) if n == bytes.len() => return Ok(()),
                Ok(Ok(_)) => return Err(std::io::Error::other("short send on seqpacket")),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one message without descriptors if the socket has room now.
    /// `Ok(false)`: it would block (nothing was sent; use [`send`](Self::send)).
    pub fn try_send(&self, bytes: &[u8]) -> std::io::Result<bool> {
        let iov = [IoSlice::new(bytes)];
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match sendmsg::<()>(self.fd.get_ref().as_raw_fd(), &iov, &[], flags, None) {
            Ok(n) if n == bytes.len() => Ok(true),
            Ok(_) => Err(std::io::Error::other("short send on seqpacket")),
            Err(nix::errno::Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one message into `buf`. A zero-length result with no
    /// descriptors means the other end closed.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|inner| recv_once(inner.as_raw_fd(), buf));
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_once(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    let cmsgs = msg.cmsgs().map_err(std::io::Error::from)?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().filter_map(adopt_fd));
        }
    }
    Ok(Received {
        len: msg.bytes,
        truncated: msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
        fds,
    })
}
