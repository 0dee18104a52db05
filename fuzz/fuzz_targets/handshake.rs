//! The real network process (`postern::net::serve`) in-process, fed one
//! connection per input: arbitrary bytes, or a valid reply mutated,
//! extended or cut, written in chunks whose sizes and (virtual) delays
//! come from the input, then closed in one of four ways. The fuzzer plays
//! the monitor: it sends the config (the listening sockets with
//! SCM_RIGHTS), issues nonces and checks the replies the network process
//! forwards, answering with verdicts and acks as the monitor does.
//!
//! The clock is tokio's paused test clock, so deadlines fire exactly by
//! the input's delays and a run is deterministic. Checked:
//! - every request the network process sends decodes (`Request::decode`),
//!   and a verify names an issued nonce and carries one descriptor;
//! - the network process forwards each reply once, and a run follows only
//!   from a reply that is some key's valid MAC over this greeting, for
//!   that key's action and the right address;
//! - a complete valid reply, in time and alone, is always run and
//!   answered with an ack that verifies and carries the monitor's status;
//! - anything else gets no byte after the greeting, and every connection
//!   ends in exactly one run or one logged failure.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use postern::channel::{self, Channel};
use postern::config::Protocol;
use postern::ipc::{
    Down, NetLimits, Peer, Reason, ReplyBytes, Request, Verdict, MAX_DOWN_LEN, REQUEST_LEN,
};
use postern::mac::MacKey;
use postern::secret::{Key, Password};
use postern::wire::{self, Answer, Reason as AckReason, Status, ACK_LEN, GREETING_LEN, REPLY_LEN};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const KEYS: [[u8; 32]; 4] = [[0x11; 32], [0x22; 32], [0x33; 32], [0x44; 32]];
const PASSWORD: &[u8] = b"Sample";
const WRONG_PASSWORD: &[u8] = b"Simple";
/// Virtual milliseconds per delay unit in the input.
const DELAY_UNIT_MS: u64 = 7;
/// Deadlines this close to a write are not judged either way.
const MARGIN_MS: u64 = 20;

struct Listeners {
    postern: std::net::TcpListener,
    ostiary: std::net::TcpListener,
}

/// One pair of listening sockets for the whole run: every iteration's
/// network process receives them (as fresh descriptors) and drops its
/// copies when it ends, so no port is bound per iteration.
fn listeners() -> &'static Listeners {
    static L: OnceLock<Listeners> = OnceLock::new();
    L.get_or_init(|| Listeners {
        postern: std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
        ostiary: std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    })
}

struct Input<'a> {
    ostiary: bool,
    early: bool,
    mode: u8,
    end: u8,
    bind_source: bool,
    key: usize,
    asserted: Option<IpAddr>,
    timeout_ms: u64,
    answer: Option<Answer>,
    chunks: Vec<(usize, u64)>,
    rest: &'a [u8],
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let (head, mut rest) = data.split_at_checked(5)?;
    let flags = head[0];
    let n_chunks = usize::from(head[4] % 17);
    let mut chunks = Vec::with_capacity(n_chunks);
    for _ in 0..n_chunks {
        let (c, r) = rest.split_at_checked(2)?;
        chunks.push((usize::from(c[0]), u64::from(c[1] % 64) * DELAY_UNIT_MS));
        rest = r;
    }
    Some(Input {
        ostiary: flags & 1 != 0,
        early: flags & 2 != 0,
        mode: (flags >> 2) & 3,
        end: (flags >> 4) & 3,
        bind_source: flags & 0x40 != 0,
        key: usize::from(head[1] & 3),
        asserted: match (head[1] >> 4) & 3 {
            0 => None,
            1 => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            2 => Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))),
            _ => Some("2001:db8::7".parse().ok()?),
        },
        timeout_ms: 100 * u64::from(head[2] % 30 + 1),
        answer: Status::from_byte(head[3] % 5).map(|st| {
            Answer::because(st, AckReason::from_byte(head[3] >> 3)).with_seconds(u32::from(head[2]))
        }),
        chunks,
        rest,
    })
}

async fn send_config(mon: &Channel, inp: &Input<'_>) {
    let l = listeners();
    let limits = NetLimits {
        handshake_timeout: Duration::from_millis(inp.timeout_ms),
        max_handshakes: NonZeroUsize::new(4).expect("4"),
        rate_burst: NonZeroU32::new(10).expect("10"),
        rate_per_minute: NonZeroU32::new(30).expect("30"),
        lockout_after: NonZeroU32::new(1_000_000).expect("1e6"),
        lockout_duration: Duration::from_secs(60),
        lockout_table: NonZeroUsize::new(64).expect("64"),
        verify_per_second: NonZeroU32::new(1_000_000).expect("1000000"),
        ack_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
    };
    let mut msgs: Vec<(Down, Option<i32>)> = vec![
        (
            Down::Begin {
                generation: 7,
                limits,
                listeners: 2,
                exempt: 0,
            },
            None,
        ),
        (
            Down::Listener {
                index: 0,
                protocol: Protocol::Postern2,
            },
            Some(l.postern.as_raw_fd()),
        ),
        (
            Down::Listener {
                index: 1,
                protocol: Protocol::Ostiary4,
            },
            Some(l.ostiary.as_raw_fd()),
        ),
    ];
    msgs.push((Down::End, None));
    for (m, fd) in msgs {
        let fds: Vec<i32> = fd.into_iter().collect();
        mon.send(&m.encode(), &fds).await.expect("config send");
    }
}

/// The bytes the client writes, given the greeting (or salt) it read.
fn payload(inp: &Input<'_>, challenge: &[u8]) -> Vec<u8> {
    let valid: Vec<u8> = if inp.ostiary {
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&challenge[..32]);
        let pw = if inp.key == 0 {
            PASSWORD
        } else {
            WRONG_PASSWORD
        };
        wire::ostiary_reply(&MacKey::new(pw), &salt).to_vec()
    } else {
        let mut g = [0u8; GREETING_LEN];
        g.copy_from_slice(&challenge[..GREETING_LEN]);
        wire::reply(&MacKey::new(&KEYS[inp.key]), &g, inp.asserted).to_vec()
    };
    let r = inp.rest;
    match inp.mode {
        0 => r.to_vec(),
        1 => {
            let mut v = valid;
            for (b, m) in v.iter_mut().zip(r) {
                *b ^= m;
            }
            v
        }
        2 => [valid.as_slice(), r].concat(),
        _ => {
            let cut = usize::from(r.first().copied().unwrap_or(0)) % (valid.len() + 1);
            valid[..cut].to_vec()
        }
    }
}

/// Which action (if any) `bytes` is a valid reply for, and the address
/// it asserts: computed from the wire format alone, not the verifier.
fn valid_for(ostiary: bool, challenge: &[u8], bytes: &[u8]) -> Option<(u16, Option<IpAddr>)> {
    if ostiary {
        let mut salt = [0u8; 32];
        salt.copy_from_slice(challenge.get(..32)?);
        let got = bytes.get(..32)?;
        (wire::ostiary_reply(&MacKey::new(PASSWORD), &salt)[..] == *got).then_some((3, None))
    } else {
        let mut g = [0u8; GREETING_LEN];
        g.copy_from_slice(challenge.get(..GREETING_LEN)?);
        let got = bytes.get(..REPLY_LEN)?;
        let mut field = [0u8; 16];
        field.copy_from_slice(&got[..16]);
        let addr = wire::decode_addr(&field);
        KEYS.iter().take(3).enumerate().find_map(|(i, k)| {
            (wire::reply(&MacKey::new(k), &g, addr)[..] == *got).then_some((i as u16, addr))
        })
    }
}

/// Bytes written on `s` not yet handed to the (loopback) device
/// (SIOCOUTQNSD), and not yet acknowledged by the peer (SIOCOUTQ).
fn queued(s: &TcpStream) -> (i32, i32) {
    const SIOCOUTQNSD: nix::libc::c_ulong = 0x894B;
    let (mut nsd, mut outq): (nix::libc::c_int, nix::libc::c_int) = (0, 0);
    // SAFETY: both requests write one int through the pointer, which
    // points to a live c_int; the descriptor is open for the call.
    let (a, b) = unsafe {
        (
            nix::libc::ioctl(s.as_raw_fd(), SIOCOUTQNSD, &mut nsd),
            nix::libc::ioctl(s.as_raw_fd(), nix::libc::TIOCOUTQ, &mut outq),
        )
    };
    (if a < 0 { 0 } else { nsd }, if b < 0 { 0 } else { outq })
}

/// Lets every task react to what is already in flight, without letting
/// the paused clock move: the caller stays runnable (yield), so tokio
/// never sees an idle runtime and never auto-advances. First waits (in
/// real time, bounded, without running any task) until the kernel has
/// delivered what we wrote.
async fn settle(s: Option<&TcpStream>) {
    // Spin without yielding: no task may run on half-delivered data.
    let start = std::time::Instant::now();
    if let Some(s) = s {
        // Handed to loopback (delivery then normally happens in the same
        // system call), then acknowledged, or 1 ms for a delayed ACK.
        while queued(s).0 > 0 && start.elapsed() < Duration::from_secs(1) {
            std::thread::yield_now();
        }
        let sent = std::time::Instant::now();
        while queued(s).1 > 0 && sent.elapsed() < Duration::from_millis(1) {
            std::thread::yield_now();
        }
    }
    for _ in 0..48 {
        tokio::task::yield_now().await;
    }
}

/// Reads exactly `buf.len()` bytes without ever idling the runtime (the
/// clock stays put). False on EOF, error, or 5 s of real time.
async fn read_settled(s: &TcpStream, buf: &mut [u8]) -> bool {
    let start = std::time::Instant::now();
    let mut got = 0;
    while got < buf.len() {
        match s.try_read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(5) {
                    return false;
                }
                tokio::task::yield_now().await;
            }
            Err(_) => return false,
        }
    }
    true
}

/// Reads until EOF. Between reads everything in flight is settled first,
/// and only then may the clock jump to the next timer.
async fn read_to_end_settled(s: &TcpStream, back: &mut Vec<u8>) {
    let begun = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        settle(Some(s)).await;
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => back.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        if begun.elapsed() > Duration::from_secs(3000) {
            return;
        }
        tokio::select! {
            _ = s.readable() => {}
            _ = tokio::time::sleep(Duration::from_secs(500)) => {}
        }
    }
}

/// A verified reply the fake monitor holds until its connection comes.
enum Valid {
    /// Key index, asserted address, greeting and reply.
    Postern2(usize, Option<IpAddr>, [u8; GREETING_LEN], [u8; REPLY_LEN]),
    Ostiary4,
}

struct Seen {
    /// Every request, and a failure for each reply the monitor refused.
    requests: Vec<Request>,
    /// (action, peer, target) of each authenticated reply.
    runs: Vec<(u16, Peer, IpAddr)>,
}

/// Runs one input. Safety properties panic at once; a liveness or
/// naming property that fails returns Err, so the caller can retry it
/// (a loaded machine may delay loopback delivery past a virtual deadline).
fn one(data: &[u8]) -> Result<(), String> {
    let Some(inp) = parse(data) else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(&inp))
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

async fn run(inp: &Input<'_>) -> Result<(), String> {
    let (mon_fd, net_fd) = channel::pair().expect("socketpair");
    let mon = Channel::new(mon_fd).expect("channel");
    send_config(&mon, inp).await;
    let net = tokio::task::spawn_local(postern::net::serve(net_fd));

    // The monitor: record every request, answer runs as the input says.
    let seen = Rc::new(RefCell::new(Seen {
        requests: Vec::new(),
        runs: Vec::new(),
    }));
    let answer = inp.answer;
    let seen2 = Rc::clone(&seen);
    let bind_source = inp.bind_source;
    let monitor = tokio::task::spawn_local(async move {
        let keys: Vec<Key> = KEYS.iter().take(3).map(|k| Key::from_bytes(*k)).collect();
        let postern = wire::Verifier::from_keys(keys.iter());
        let ostiary = wire::Verifier::from_passwords([Password::new(PASSWORD.to_vec())].iter());
        let mut issued: Vec<(u64, [u8; 32])> = Vec::new();
        let mut waiting: Vec<(u64, Valid, Peer, u32)> = Vec::new();
        let mut next = 1u64;
        let mut buf = vec![0u8; MAX_DOWN_LEN];
        loop {
            let Ok(r) = mon.recv(&mut buf).await else {
                return;
            };
            if r.len == 0 && r.fds.is_empty() {
                return;
            }
            assert!(!r.truncated, "oversized request");
            let req = Request::decode(&buf[..r.len], 2)
                .unwrap_or_else(|e| panic!("malformed request from the network process: {e}"));
            assert_eq!(r.len, REQUEST_LEN);
            assert_eq!(
                r.fds.len(),
                usize::from(matches!(req, Request::Connection { .. })),
                "a descriptor with a connection request, and only then"
            );
            seen2.borrow_mut().requests.push(req);
            let mut outs = Vec::new();
            match req {
                Request::Nonces { count } => {
                    let mut list = Vec::new();
                    for _ in 0..count {
                        let n = [next as u8; 32];
                        issued.push((next, n));
                        list.push((next, n));
                        next += 1;
                    }
                    outs.push(Down::Nonces(list));
                }
                Request::Verify {
                    generation,
                    handle,
                    peer,
                    reply,
                    failures,
                } => {
                    assert_eq!(generation, 7);
                    let at = issued
                        .iter()
                        .position(|(h, _)| *h == handle)
                        .expect("a verify names an issued nonce, once");
                    let (_, nonce) = issued.swap_remove(at);
                    let fail = |reason| Request::Fail {
                        peer,
                        reason,
                        failures,
                        handle,
                    };
                    let verdict = |v| Down::Verdict { handle, verdict: v };
                    match reply {
                        ReplyBytes::Postern2(rb) => {
                            let g = wire::greeting(&nonce);
                            match postern.check_reply(&g, &rb) {
                                None => {
                                    seen2.borrow_mut().requests.push(fail(Reason::BadMac));
                                    outs.push(verdict(Verdict::Bad));
                                }
                                Some((i, asserted)) => {
                                    // Asked for the connection first;
                                    // the rest follows when it comes.
                                    waiting.push((handle, Valid::Postern2(i, asserted, g, rb), peer, failures));
                                    outs.push(Down::Connection { handle });
                                }
                            }
                        }
                        ReplyBytes::Ostiary4(rb) => match ostiary.check_ostiary(&nonce, &rb) {
                            None => {
                                seen2.borrow_mut().requests.push(fail(Reason::BadMac));
                                outs.push(verdict(Verdict::Bad));
                            }
                            Some(_) => {
                                waiting.push((handle, Valid::Ostiary4, peer, failures));
                                outs.push(Down::Connection { handle });
                            }
                        },
                    }
                }
                Request::Connection { handle } => {
                    let at = waiting
                        .iter()
                        .position(|(h, ..)| *h == handle)
                        .expect("a connection is sent only when asked for, once");
                    let (_, valid, peer, failures) = waiting.swap_remove(at);
                    let verdict = |v| Down::Verdict { handle, verdict: v };
                    match valid {
                        Valid::Postern2(i, asserted, g, rb) => {
                            let mk = postern.key(i).expect("key");
                            if i == 0 && bind_source && asserted != Some(peer.addr) {
                                seen2.borrow_mut().requests.push(Request::Fail {
                                    peer,
                                    reason: Reason::BindMismatch,
                                    failures,
                                    handle,
                                });
                                outs.push(verdict(Verdict::BindMismatch));
                                let a = Answer::because(Status::Refused, AckReason::AddressBinding);
                                outs.push(Down::Ack {
                                    handle,
                                    ack: wire::ack(mk, &g, &rb, a),
                                });
                            } else {
                                let target = asserted.unwrap_or(peer.addr);
                                seen2.borrow_mut().runs.push((i as u16, peer, target));
                                outs.push(verdict(Verdict::Authenticated));
                                if let Some(a) = answer {
                                    outs.push(Down::Ack {
                                        handle,
                                        ack: wire::ack(mk, &g, &rb, a),
                                    });
                                }
                            }
                        }
                        Valid::Ostiary4 => {
                            seen2.borrow_mut().runs.push((3, peer, peer.addr));
                            outs.push(verdict(Verdict::Authenticated));
                        }
                    }
                }
                _ => {}
            }
            for m in outs {
                let _ = mon.send(&m.encode(), &[]).await;
            }
        }
    });

    let l = listeners();
    let to: SocketAddr = if inp.ostiary {
        l.ostiary.local_addr().expect("addr")
    } else {
        l.postern.local_addr().expect("addr")
    };
    let mut s = TcpStream::connect(to).await.expect("connect");
    let source = s.local_addr().expect("local").ip();
    let challenge_len = if inp.ostiary { 32 } else { GREETING_LEN };
    let reply_len = if inp.ostiary { 32 } else { REPLY_LEN };

    // Early bytes (raw mode only): written before the greeting is read.
    let mut early: Vec<u8> = Vec::new();
    let mut chunks = inp.chunks.clone();
    if inp.early && inp.mode == 0 && !chunks.is_empty() {
        let (n, _) = chunks.remove(0);
        early = inp.rest[..n.min(inp.rest.len())].to_vec();
        let _ = s.write_all(&early).await;
    }
    let mut challenge = vec![0u8; challenge_len];
    let greeted = read_settled(&s, &mut challenge).await;
    assert!(
        greeted,
        "an unlocked, unlimited source always gets the challenge"
    );
    if !inp.ostiary {
        let mut g = [0u8; GREETING_LEN];
        g.copy_from_slice(&challenge);
        assert!(wire::greeting_is_valid(&g));
    }
    let body = payload(inp, &challenge);
    let body = if early.is_empty() {
        body
    } else {
        body[early.len().min(body.len())..].to_vec()
    };
    let written: Vec<u8> = [early.as_slice(), body.as_slice()].concat();

    // Write in chunks, with virtual delays; note when the reply's last
    // byte and the last byte overall were written.
    let mut at = early.len();
    let mut clock = 0u64;
    let mut reply_done_at: Option<u64> = (at >= reply_len).then_some(0);
    let mut last_at = 0u64;
    let mut write_failed = false;
    let mut parts: Vec<(usize, u64)> = chunks;
    parts.push((usize::MAX, 0));
    for (n, delay) in parts {
        if at >= written.len() {
            break;
        }
        if delay > 0 {
            // Whatever was written is seen before any time passes.
            settle(Some(&s)).await;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            clock += delay;
        }
        let end = at.saturating_add(n).min(written.len());
        if s.write_all(&written[at..end]).await.is_err() {
            write_failed = true;
            break;
        }
        if at < reply_len && end >= reply_len {
            reply_done_at = Some(clock);
        }
        at = end;
        last_at = clock;
    }
    let all_written = at >= written.len() && !write_failed;

    // Close as the input says, then read what comes back.
    let mut back = Vec::new();
    match inp.end {
        0 | 1 => {
            if inp.end == 1 {
                let _ = s.shutdown().await;
            }
            read_to_end_settled(&s, &mut back).await;
        }
        2 => {
            let std = s.into_std().expect("into_std");
            let _ = nix::sys::socket::setsockopt(
                &std,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
            drop(std);
        }
        _ => drop(s),
    }
    settle(None).await;
    // Let every deadline pass (virtual time) and every event arrive.
    tokio::time::sleep(Duration::from_secs(120)).await;
    settle(None).await;
    monitor.abort();
    let _ = monitor.await;
    match tokio::time::timeout(Duration::from_secs(60), net).await {
        Ok(Ok(result)) => assert!(result.is_err(), "serve ends when the monitor goes"),
        Ok(Err(e)) => panic!("network process task failed: {e}"),
        Err(_) => panic!("network process did not stop after the monitor closed"),
    }

    // --- Judge ---------------------------------------------------------
    let requests = seen.borrow().requests.clone();
    let runs = seen.borrow().runs.clone();
    let fails: Vec<Reason> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Fail { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    // A close with not a byte sent is a "noreply" notice, not a failure.
    let noreplies = requests
        .iter()
        .filter(|r| {
            matches!(
                r,
                Request::Notice {
                    notice: postern::ipc::Notice::NoReply,
                    ..
                }
            )
        })
        .count();
    assert!(
        runs.len() <= 1,
        "one connection, at most one run: {requests:?}"
    );
    assert_eq!(
        runs.len() + fails.len() + noreplies,
        1,
        "every connection ends in exactly one run, one failure or one noreply: {requests:?}"
    );
    if noreplies == 1 {
        assert!(written.is_empty(), "noreply only when nothing was sent: {requests:?}");
    }
    let valid = valid_for(inp.ostiary, &challenge, &written);
    let timeout = inp.timeout_ms;
    let in_time = |t: u64| t + MARGIN_MS < timeout;
    let too_late = |t: u64| t > timeout + MARGIN_MS;
    if let Some((action, peer, target)) = runs.first() {
        let (want_action, asserted) =
            valid.unwrap_or_else(|| panic!("a run without a valid reply: {requests:?}"));
        assert_eq!(*action, want_action);
        assert_eq!(peer.addr, source);
        if inp.ostiary {
            assert_eq!(*target, source);
        } else {
            assert_eq!(*target, asserted.unwrap_or(source));
            if *action == 0 && inp.bind_source {
                assert_eq!(asserted, Some(source), "bind_source held");
            }
        }
        assert!(
            !reply_done_at.is_some_and(too_late),
            "a run after the deadline"
        );
    }
    // Nothing but an ack ever comes back, and only for a run (or a
    // bind-source refusal).
    let refused_bind = fails.contains(&Reason::BindMismatch);
    if !back.is_empty() {
        assert!(!inp.ostiary, "ostiary-4 sends nothing back");
        assert!(
            !runs.is_empty() || refused_bind,
            "bytes without a run: {back:?}"
        );
        assert_eq!(back.len(), ACK_LEN);
    }
    // Liveness: a complete valid reply, alone, in time, with the peer
    // still there, is run; the ack verifies and carries the answer.
    let alone = written.len() == reply_len;
    let stayed = inp.end <= 1 && all_written;
    if let (Some((action, asserted)), true, true, Some(t)) = (valid, alone, stayed, reply_done_at) {
        if in_time(t) {
            let bind_refused =
                !inp.ostiary && action == 0 && inp.bind_source && asserted != Some(source);
            if bind_refused {
                check!(
                    fails == vec![Reason::BindMismatch],
                    "bind refusal expected: {requests:?}"
                );
            } else {
                check!(
                    runs.len() == 1,
                    "a valid reply in time must run: {requests:?}"
                );
            }
            if !inp.ostiary {
                let want = if bind_refused {
                    Some(Answer::because(Status::Refused, AckReason::AddressBinding))
                } else {
                    inp.answer
                };
                match want {
                    Some(st) => {
                        let mut g = [0u8; GREETING_LEN];
                        g.copy_from_slice(&challenge);
                        let mut r = [0u8; REPLY_LEN];
                        r.copy_from_slice(&written);
                        let mut a = [0u8; ACK_LEN];
                        check!(
                            back.len() == ACK_LEN,
                            "the ack must arrive: {back:?} {requests:?}"
                        );
                        a.copy_from_slice(&back);
                        let mk = MacKey::new(&KEYS[usize::from(action)]);
                        assert_eq!(
                            wire::verify_ack(&mk, &g, &r, &a),
                            Some(st),
                            "the ack carries the answer"
                        );
                    }
                    None => check!(back.is_empty(), "no answer, no ack"),
                }
            }
        }
    }
    // Failures are named right where the timing is unambiguous.
    if runs.is_empty() && noreplies == 0 && !refused_bind && inp.end <= 1 && all_written {
        let reason = fails[0];
        if written.len() < reply_len && inp.end == 1 && in_time(last_at) {
            check!(
                reason == Reason::ShortReply,
                "want {:?}: {requests:?}",
                Reason::ShortReply
            );
        }
        if written.len() < reply_len && inp.end == 0 {
            check!(
                reason == Reason::Timeout,
                "want {:?}: {requests:?}",
                Reason::Timeout
            );
        }
        if reply_done_at.is_none() && too_late(last_at) {
            check!(
                reason == Reason::Timeout,
                "want {:?}: {requests:?}",
                Reason::Timeout
            );
        }
        if let Some(t) = reply_done_at {
            if in_time(t) && written.len() > reply_len && last_at == t && early.len() < reply_len {
                check!(
                    reason == Reason::LongReply,
                    "want {:?}: {requests:?}",
                    Reason::LongReply
                );
            }
            if in_time(t) && written.len() == reply_len && valid.is_none() {
                check!(
                    reason == Reason::BadMac,
                    "want {:?}: {requests:?}",
                    Reason::BadMac
                );
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut last = String::new();
    for _ in 0..3 {
        match one(data) {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    panic!("{last}");
});
