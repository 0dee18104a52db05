//! A fully malicious network process against the real monitor, in this
//! process: the test holds the network end of the channel and sends what
//! a compromised network process could. The monitor is the real one
//! (`Monitor::new` on a real config, real listeners, real actions), driven
//! one session at a time with `Monitor::serve_session`; each rogue gets a
//! fresh session (`Monitor::attach`), as a replacement network process
//! does. Nothing crashes but the rogue's session: that the real supervisor
//! then kills the rogue process and starts a replacement, with the same
//! kinds of malformed request, is shown by tests/respawn.rs
//! (`malformed_request_kills_and_replaces`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use postern::channel::{self, Channel};
use postern::ipc::{
    Down, IssuedNonce, Notice, Peer, Reason, ReplyBytes, Request, Verdict, MAX_DOWN_LEN,
    NONCE_BATCH, NONCE_KEEP, NONCE_SLACK, REQUEST_LEN,
};
use postern::mac::MacKey;
use postern::monitor::log::Logger;
use postern::monitor::session::{SessionEnd, MAX_QUEUED_SENDS};
use postern::monitor::Monitor;
use postern::secret::Key;
use postern::wire::{self, Status};
use tokio::task::JoinHandle;

const SEC: Duration = Duration::from_secs(1);
/// The config's handshake deadline: a nonce expires NONCE_KEEP + this +
/// NONCE_SLACK after it is issued.
const HANDSHAKE: Duration = Duration::from_millis(500);
/// Text a rogue process plants in every byte it controls; no log line may
/// ever carry it.
const PLANTED: &[u8] = b"fail src=6.6.6.6 port=1 listener=x reason=bad-mac failures=9\n";

struct Rig {
    _scratch: Scratch,
    monitor: Rc<Monitor>,
    logger: Arc<Logger>,
    stamp: PathBuf,
    key: Key,
}

/// One rogue network process: its channel end and the listener the
/// monitor handed it.
struct Rogue {
    chan: Channel,
    listener: TcpListener,
    generation: u32,
    session: JoinHandle<SessionEnd>,
}

fn rig() -> Rig {
    let s = Scratch::new("rogue");
    std::fs::create_dir_all(s.path("state")).unwrap();
    let (key, b64) = key();
    let stamp = s.path("stamp");
    let user = if is_root() {
        "nobody".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name
    };
    let config = format!(
        "{}user = \"{user}\"\n[limits]\nhandshake_timeout = \"{}ms\"\nmax_handshakes = 8\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[action]]\nname = \"stamp\"\nkey = \"{b64}\"\nsingle_instance = false\n\
         run = [\"/bin/sh\", \"-c\", \"echo $1 >> {}\", \"sh\", \"{{addr}}\"]\n",
        daemon_table(&s),
        HANDSHAKE.as_millis(),
        stamp.display()
    );
    let path = s.path("posternd.toml");
    write_private(&path, &config);
    let config = postern::config::load(&path).unwrap();
    let (bound, _) = postern::monitor::bind_all(&config, &mut Vec::new(), None).unwrap();
    let logger = Arc::new(Logger::memory(100_000));
    // The first channel is replaced by each rogue's own (`attach`).
    let (mine, _theirs) = channel::pair().unwrap();
    let monitor = Monitor::new(
        config,
        bound,
        Arc::clone(&logger),
        Channel::new(mine).unwrap(),
    );
    Rig {
        _scratch: s,
        monitor,
        logger,
        stamp,
        key,
    }
}

impl Rig {
    /// Starts a fresh session for a new rogue process and hands it its
    /// config, as the monitor does for a freshly started network process.
    async fn rogue(&self) -> Rogue {
        let (mine, theirs) = channel::pair().unwrap();
        self.monitor.attach(Channel::new(mine).unwrap());
        let chan = Channel::new(theirs).unwrap();
        self.monitor.send_config().await.unwrap();
        let mut buf = vec![0u8; MAX_DOWN_LEN];
        let mut listener = None;
        let mut generation = 0;
        loop {
            let mut r = chan.recv(&mut buf).await.unwrap();
            match Down::decode(&buf[..r.len]).unwrap() {
                Down::Begin { generation: g, .. } => generation = g,
                Down::Listener { .. } => {
                    let l = TcpListener::from(r.fds.pop().unwrap());
                    l.set_nonblocking(false).unwrap();
                    listener = Some(l);
                }
                Down::End => break,
                other => panic!("unexpected {other:?} in a config"),
            }
        }
        let m = Rc::clone(&self.monitor);
        let session = tokio::task::spawn_local(async move { m.serve_session().await });
        Rogue {
            chan,
            listener: listener.unwrap(),
            generation,
            session,
        }
    }

    fn stamps(&self) -> usize {
        line_count(&self.stamp)
    }

    /// Every line the monitor logged. None may carry planted text, and
    /// each starts with one of the monitor's own words.
    fn check_log(&self) -> Vec<String> {
        let lines = self.logger.lines();
        let planted = String::from_utf8_lossy(&PLANTED[..20]).to_string();
        for l in &lines {
            assert!(!l.contains(&planted), "planted text in the log: {l}");
            assert!(!l.contains("6.6.6.6"), "planted address in the log: {l}");
            assert!(
                !l.chars().any(|c| c.is_control()),
                "control character: {l:?}"
            );
            let known = [
                "fail src=",
                "ok src=",
                "action ",
                "limit ",
                "noreply src=",
                "lockout src=",
                "ratelimit src=",
                "accept failed",
                "error ",
                "network process",
                "prepared keys",
            ];
            assert!(
                known.iter().any(|k| l.starts_with(k)),
                "a line of unknown shape: {l}"
            );
        }
        lines
    }
}

impl Rogue {
    async fn send(&self, bytes: &[u8]) {
        self.chan.send(bytes, &[]).await.unwrap();
    }

    async fn send_fd(&self, bytes: &[u8], fd: &impl AsRawFd) {
        self.chan.send(bytes, &[fd.as_raw_fd()]).await.unwrap();
    }

    /// Sends a verify request for `handle` as an honest network process
    /// does: if the monitor asks for the connection, passes `conn`; the
    /// final verdict.
    async fn verdict_of(&self, verify: &[u8], handle: u64, conn: &impl AsRawFd) -> Verdict {
        self.send(verify).await;
        loop {
            match self.next(5 * SEC).await {
                Some(Down::Verdict { handle: h, verdict }) if h == handle => return verdict,
                Some(Down::Connection { handle: h }) if h == handle => {
                    self.send_fd(&self.connection(handle), conn).await;
                }
                Some(_) => continue,
                None => panic!("no verdict for {handle}"),
            }
        }
    }

    /// Waits until the monitor asks for the connection of `handle`.
    async fn asked_for(&self, handle: u64) {
        loop {
            match self.next(5 * SEC).await {
                Some(Down::Connection { handle: h }) if h == handle => return,
                Some(Down::Verdict { handle: h, verdict }) if h == handle => {
                    panic!("a verdict ({verdict:?}) instead of a request for the connection")
                }
                Some(_) => continue,
                None => panic!("the connection of {handle} was never asked for"),
            }
        }
    }

    fn connection(&self, handle: u64) -> [u8; REQUEST_LEN] {
        Request::Connection { handle }.encode_for(self.generation)
    }

    /// The next message from the monitor, if one comes within `limit`.
    async fn next(&self, limit: Duration) -> Option<Down> {
        let mut buf = vec![0u8; MAX_DOWN_LEN];
        let r = tokio::time::timeout(limit, self.chan.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        if r.len == 0 {
            return None;
        }
        Down::decode(&buf[..r.len])
    }

    async fn nonces(&self, count: u16) -> Vec<IssuedNonce> {
        self.send(&Request::Nonces { count }.encode_for(self.generation))
            .await;
        loop {
            match self.next(5 * SEC).await {
                Some(Down::Nonces(list)) => return list,
                Some(_) => continue,
                None => panic!("no nonces"),
            }
        }
    }

    /// A client connection, as accepted, and its peer address.
    fn accept(&self) -> (TcpStream, TcpStream, SocketAddr) {
        let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (conn, from) = self.listener.accept().unwrap();
        (client, conn, from)
    }

    fn verify(&self, handle: u64, from: SocketAddr, reply: wire::Reply) -> [u8; REQUEST_LEN] {
        Request::Verify {
            generation: self.generation,
            handle,
            peer: Peer {
                listener: 0,
                addr: from.ip(),
                port: from.port(),
            },
            reply: ReplyBytes::Postern2(reply),
            failures: 1,
        }
        .encode()
    }

    /// Waits for the session to end; it must, within `limit`.
    async fn ended(self, limit: Duration) -> SessionEnd {
        tokio::time::timeout(limit, self.session)
            .await
            .expect("the session must end")
            .expect("the session task must not panic")
    }

    /// The session is still being served.
    fn alive(&self) -> bool {
        !self.session.is_finished()
    }
}

async fn ack_for(r: &Rogue, handle: u64, limit: Duration) -> Option<wire::Ack> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match r.next(end - Instant::now()).await {
            Some(Down::Ack { handle: h, ack }) if h == handle => return Some(ack),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

// Goal: replies the network process makes up, reuses, replays or keeps
// too long run nothing: a nonce never issued ends the session; a spent,
// expired or replayed one is refused; only the one fresh valid reply runs
// its action, once, with an ack the monitor signed.
#[test]
fn only_a_fresh_valid_reply_runs() {
    local(async {
        let rig = rig();
        let mk = MacKey::new(rig.key.expose());

        // A reply for a nonce never issued: the session ends.
        let r = rig.rogue().await;
        let (_c, _conn, from) = r.accept();
        let g = wire::greeting(&[7u8; 32]);
        r.send(&r.verify(99 << 32, from, wire::reply(&mk, &g, None)))
            .await;
        assert_eq!(
            r.ended(5 * SEC).await,
            SessionEnd::Malformed("a reply to a nonce never issued")
        );
        assert_eq!(rig.stamps(), 0);

        // The one fresh valid reply: runs once, with a signed ack.
        let r = rig.rogue().await;
        let [(h, n)] = r.nonces(1).await[..] else {
            panic!("one nonce")
        };
        let (_client, conn, from) = r.accept();
        let g = wire::greeting(&n);
        let reply = wire::reply(&mk, &g, None);
        let recorded = r.verify(h, from, reply);
        assert_eq!(
            r.verdict_of(&recorded, h, &conn).await,
            Verdict::Authenticated
        );
        let ack = ack_for(&r, h, 10 * SEC).await.expect("an ack");
        assert_eq!(
            wire::verify_ack(&mk, &g, &reply, &ack).map(|a| a.status),
            Some(Status::Started)
        );
        let stamp = wait_file(&rig.stamp, 10 * SEC);
        assert_eq!(stamp.trim(), from.ip().to_string());

        // The same nonce again (the recorded exchange replayed as is).
        assert_eq!(r.verdict_of(&recorded, h, &conn).await, Verdict::Bad);
        // The recorded reply against a fresh nonce.
        let [(h2, _)] = r.nonces(1).await[..] else {
            panic!("one nonce")
        };
        assert_eq!(
            r.verdict_of(&r.verify(h2, from, reply), h2, &conn).await,
            Verdict::Bad
        );
        // A nonce given back (its handshake "failed") cannot be used.
        let [(h3, n3)] = r.nonces(1).await[..] else {
            panic!("one nonce")
        };
        let fail = Request::Fail {
            peer: Peer {
                listener: 0,
                addr: from.ip(),
                port: from.port(),
            },
            reason: Reason::Timeout,
            failures: 1,
            handle: h3,
        };
        r.send(&fail.encode_for(r.generation)).await;
        let g3 = wire::greeting(&n3);
        assert_eq!(
            r.verdict_of(&r.verify(h3, from, wire::reply(&mk, &g3, None)), h3, &conn)
                .await,
            Verdict::Bad
        );
        // An expired nonce: valid reply, too late.
        let [(h4, n4)] = r.nonces(1).await[..] else {
            panic!("one nonce")
        };
        tokio::time::sleep(NONCE_KEEP + HANDSHAKE + NONCE_SLACK + Duration::from_millis(200)).await;
        let g4 = wire::greeting(&n4);
        assert_eq!(
            r.verdict_of(&r.verify(h4, from, wire::reply(&mk, &g4, None)), h4, &conn)
                .await,
            Verdict::Bad
        );
        assert!(ack_for(&r, h4, SEC).await.is_none());
        assert!(r.alive());
        assert_eq!(rig.stamps(), 1, "only the fresh valid reply ran");
        let lines = rig.check_log();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("reason=stale-nonce"))
                .count(),
            3,
            "{lines:#?}"
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("ok src=")).count(), 1);

        // A nonce of one session is nothing to the next.
        let r2 = rig.rogue().await;
        r2.send(&recorded).await;
        match r2.next(SEC).await {
            Some(Down::Verdict { verdict, .. }) => assert_eq!(verdict, Verdict::Bad),
            None => {}
            Some(other) => panic!("{other:?}"),
        }
        drop(r);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rig.stamps(), 1);
    });
}

// Goal: a valid reply sent with a forged peer, or whose connection, when
// the monitor asks for it, is a descriptor that is not a connection
// accepted on a listener, ends the session and runs nothing: the monitor
// asks the kernel who the peer is.
#[test]
fn a_forged_peer_runs_nothing() {
    local(async {
        let rig = rig();
        let mk = MacKey::new(rig.key.expose());
        let forged: IpAddr = "203.0.113.9".parse().unwrap();
        let cases: [(&str, &'static str); 4] = [
            ("address", "a peer address that is not the connection's"),
            ("port", "a peer address that is not the connection's"),
            ("outgoing", "descriptor was not accepted on a listener"),
            ("listening", "descriptor is not a connected stream socket"),
        ];
        for (what, why) in cases {
            let r = rig.rogue().await;
            let [(h, n)] = r.nonces(1).await[..] else {
                panic!("one nonce")
            };
            let (client, conn, from) = r.accept();
            let g = wire::greeting(&n);
            let reply = wire::reply(&mk, &g, None);
            let (peer, fd): (SocketAddr, &dyn AsRawFd) = match what {
                "address" => (SocketAddr::new(forged, from.port()), &conn),
                "port" => (SocketAddr::new(from.ip(), from.port() ^ 1), &conn),
                // The client's own end: an outgoing connection.
                "outgoing" => (client.local_addr().unwrap(), &client),
                _ => (from, &r.listener),
            };
            r.send(&r.verify(h, peer, reply)).await;
            r.asked_for(h).await;
            r.chan
                .send(&r.connection(h), &[fd.as_raw_fd()])
                .await
                .unwrap();
            assert_eq!(r.ended(5 * SEC).await, SessionEnd::Malformed(why), "{what}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rig.stamps(), 0);
        rig.check_log();
    });
}

// Goal: out-of-range fields, oversized, undersized and garbage messages,
// descriptors where none belong and none where one does each end the
// session, with a fixed reason; nothing runs, no planted text is logged,
// and a fresh session afterwards works.
// Goal: start-up says "started" (and READY=1) only once a network
// process is up: at its first well-formed request, never at a malformed
// one, and once only.
#[test]
fn up_only_at_a_first_well_formed_request() {
    local(async {
        let rig = rig();
        let up = Rc::new(std::cell::Cell::new(0u32));
        let seen = Rc::clone(&up);
        rig.monitor.when_up(move || seen.set(seen.get() + 1));

        // Configured, then a malformed request: not up.
        let r = rig.rogue().await;
        let fail = Request::Fail {
            peer: Peer {
                listener: 0,
                addr: "127.0.0.1".parse().unwrap(),
                port: 5,
            },
            reason: Reason::BadMac,
            failures: 1,
            handle: 0,
        }
        .encode_for(r.generation);
        r.send(&fail[..REQUEST_LEN - 1]).await;
        assert!(matches!(r.ended(5 * SEC).await, SessionEnd::Malformed(_)));
        assert_eq!(up.get(), 0, "up at a malformed request");

        // The replacement's first well-formed request: up, once.
        let r = rig.rogue().await;
        assert_eq!(up.get(), 0, "up before any request");
        assert!(!r.nonces(4).await.is_empty());
        assert_eq!(up.get(), 1);
        assert!(!r.nonces(4).await.is_empty());
        assert_eq!(up.get(), 1, "up twice");
        assert!(r.alive());
    });
}

#[test]
fn malformed_requests_end_the_session() {
    local(async {
        let rig = rig();
        let peer = Peer {
            listener: 0,
            addr: "127.0.0.1".parse().unwrap(),
            port: 5,
        };
        let fail = Request::Fail {
            peer,
            reason: Reason::BadMac,
            failures: 1,
            handle: 0,
        }
        .encode_for(1);
        let mut planted = [0u8; REQUEST_LEN];
        planted[..PLANTED.len()].copy_from_slice(PLANTED);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("listener out of range", {
                let mut b = fail;
                b[12] = 3;
                b.to_vec()
            }),
            ("unknown reason", {
                let mut b = fail;
                b[2..4].copy_from_slice(&99u16.to_be_bytes());
                b.to_vec()
            }),
            ("unknown generation", {
                let mut b = fail;
                b[8..12].copy_from_slice(&12345u32.to_be_bytes());
                b.to_vec()
            }),
            ("nonce count 0", {
                let mut b = Request::Nonces { count: 1 }.encode_for(1);
                b[3] = 0;
                b.to_vec()
            }),
            (
                "nonce count too big",
                Request::Nonces {
                    count: NONCE_BATCH as u16 + 1,
                }
                .encode_for(1)
                .to_vec(),
            ),
            ("undersized", fail[..REQUEST_LEN - 1].to_vec()),
            ("oversized", [&fail[..], &[0u8; 100]].concat()),
            ("empty-ish", vec![postern::ipc::VERSION]),
            ("planted text", planted.to_vec()),
            ("old version", {
                let mut b = fail;
                b[0] = 1;
                b.to_vec()
            }),
        ];
        let mut prng = Prng::new(Prng::seed(0x706e));
        for _ in 0..20 {
            let mut g = prng.bytes(REQUEST_LEN);
            g[0] = postern::ipc::VERSION;
            cases.push(("garbage", g));
        }
        let mut ended = 0;
        let n = cases.len();
        for (what, bytes) in cases {
            let r = rig.rogue().await;
            r.send(&bytes).await;
            match tokio::time::timeout(SEC, r.session).await {
                Ok(Ok(SessionEnd::Malformed(_))) => ended += 1,
                Ok(other) => panic!("{what}: {other:?}"),
                // A garbage message that happens to be well-formed.
                Err(_) => assert_eq!(what, "garbage", "{what} was accepted"),
            }
        }
        assert!(ended >= n - 2, "{ended} of {n} ended the session");
        // A descriptor with a request that takes none (a verify among
        // them: only the connection request carries one), and a
        // connection request without one.
        let r = rig.rogue().await;
        r.send_fd(&fail, &r.listener).await;
        assert_eq!(
            r.ended(SEC).await,
            SessionEnd::Malformed("a descriptor with a request")
        );
        let r = rig.rogue().await;
        let [(h, _)] = r.nonces(1).await[..] else {
            panic!("one nonce")
        };
        let v = r.verify(h, "127.0.0.1:9".parse().unwrap(), [0u8; wire::REPLY_LEN]);
        r.send_fd(&v, &r.listener).await;
        assert_eq!(
            r.ended(SEC).await,
            SessionEnd::Malformed("a descriptor with a request")
        );
        let r = rig.rogue().await;
        r.send(&r.connection(5)).await;
        assert_eq!(
            r.ended(SEC).await,
            SessionEnd::Malformed("a connection request without exactly one descriptor")
        );
        // Afterwards a fresh session works.
        let r = rig.rogue().await;
        assert_eq!(r.nonces(2).await.len(), 2);
        assert!(r.alive());
        assert_eq!(rig.stamps(), 0);
        rig.check_log();
    });
}

// Goal: a connection nobody asked for is closed and ignored; a valid
// reply whose connection never comes runs nothing; verified replies
// waiting for their connection are bounded (the nonce table's capacity),
// a reply beyond the bound is refused with one line, and the waiting ones
// are forgotten once past the handshake's deadline.
#[test]
fn connections_are_asked_for_and_bounded() {
    local(async {
        let rig = rig();
        let mk = MacKey::new(rig.key.expose());
        let r = rig.rogue().await;
        let session = rig.monitor.session();
        let cap = session.nonce_capacity();
        let (_client, conn, from) = r.accept();
        // Never asked for: nothing happens, the session goes on.
        r.send_fd(&r.connection(77), &conn).await;
        // Valid replies whose connections are never sent.
        let mut valid = 0;
        let mut refused = 0;
        while valid + refused < cap + 3 {
            for (h, n) in r.nonces(NONCE_BATCH as u16).await {
                if valid + refused == cap + 3 {
                    break;
                }
                let g = wire::greeting(&n);
                r.send(&r.verify(h, from, wire::reply(&mk, &g, None))).await;
                loop {
                    match r.next(5 * SEC).await {
                        Some(Down::Connection { handle }) if handle == h => {
                            valid += 1;
                            break;
                        }
                        Some(Down::Verdict { handle, verdict }) if handle == h => {
                            assert_eq!(verdict, Verdict::Bad);
                            refused += 1;
                            break;
                        }
                        Some(_) => continue,
                        None => panic!("no answer for {h}"),
                    }
                }
                assert!(session.awaiting_connections() <= cap);
            }
        }
        assert_eq!(valid, cap, "as many wait as the nonce table holds");
        assert_eq!(refused, 3);
        assert_eq!(session.awaiting_connections(), cap);
        // Past the deadline, the waiting ones are forgotten for new ones.
        tokio::time::sleep(HANDSHAKE + Duration::from_millis(100)).await;
        let [(h, n)] = r.nonces(1).await[..] else {
            panic!("one nonce")
        };
        let g = wire::greeting(&n);
        let verdict = r
            .verdict_of(&r.verify(h, from, wire::reply(&mk, &g, None)), h, &conn)
            .await;
        assert_eq!(verdict, Verdict::Authenticated);
        assert!(session.awaiting_connections() <= 1);
        assert!(r.alive());
        let end = Instant::now() + 10 * SEC;
        while rig.stamps() < 1 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rig.stamps(), 1, "only the reply whose connection came ran");
        let lines = rig.check_log();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("limit connections awaited"))
                .count(),
            3,
            "{lines:#?}"
        );
    });
}

// Goal: a flood of requests cannot grow the monitor: the nonce table
// stays within its capacity (and allocates no more slots), answers that
// wait for room stay within MAX_QUEUED_SENDS (the monitor stops reading
// instead), the process's memory stays put, and the session still works.
#[test]
fn a_request_flood_stays_bounded() {
    local(async {
        let rig = rig();
        let r = rig.rogue().await;
        let session = rig.monitor.session();
        let cap = session.nonce_capacity();
        let peer = Peer {
            listener: 0,
            addr: "192.0.2.1".parse().unwrap(),
            port: 7,
        };
        let ask = Request::Nonces {
            count: NONCE_BATCH as u16,
        }
        .encode_for(r.generation);
        let events = [
            Request::Fail {
                peer,
                reason: Reason::BadMac,
                failures: 1,
                handle: 0,
            },
            Request::Notice {
                notice: Notice::RateLimited,
                peer,
                value: 0,
                handle: 0,
            },
        ];
        let before = rss_kb(std::process::id());
        let mut sent = 0u64;
        let mut issued = 0usize;
        let mut max_queued = 0;
        let end = Instant::now() + 20 * SEC;
        while sent < 30_000 && Instant::now() < end {
            // Send until the monitor stops reading (the channel is full),
            // without reading a single answer.
            loop {
                let req = if sent.is_multiple_of(3) {
                    ask
                } else {
                    events[(sent % 2) as usize].encode_for(r.generation)
                };
                match tokio::time::timeout(Duration::from_millis(50), r.chan.send(&req, &[])).await
                {
                    Ok(Ok(())) => sent += 1,
                    Ok(Err(e)) => panic!("{e}"),
                    Err(_) => break,
                }
                if sent.is_multiple_of(1024) {
                    tokio::task::yield_now().await;
                }
            }
            max_queued = max_queued.max(session.queued_sends());
            assert!(session.nonces_outstanding() <= cap);
            assert!(session.nonce_slots() <= cap);
            assert!(session.queued_sends() <= MAX_QUEUED_SENDS);
            // Now read everything that came back.
            while let Some(m) = r.next(Duration::from_millis(50)).await {
                if let Down::Nonces(list) = m {
                    issued += list.len();
                }
            }
        }
        let after = rss_kb(std::process::id());
        eprintln!(
            "flood: {sent} requests, {issued} nonces issued (capacity {cap}), at most {max_queued} answers queued, RSS {before} -> {after} kB"
        );
        assert!(sent >= 10_000, "only {sent} requests sent");
        assert_eq!(issued, cap, "never more nonces than the table holds");
        assert!(max_queued > 0, "the flood never filled the channel");
        assert!(
            after < before + 32 * 1024,
            "RSS grew from {before} to {after} kB"
        );
        assert!(r.alive());
        assert_eq!(session.nonces_outstanding(), cap);
        assert_eq!(rig.stamps(), 0);
        // Limit lines are logged once, not once per request.
        let lines = rig.check_log();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("limit nonces"))
                .count(),
            1
        );
    });
}

// Goal: what the network process writes to standard error never reaches
// the log as text: the monitor drains it and logs only a count.
#[test]
fn network_stderr_is_counted_not_shown() {
    local(async {
        let logger = Arc::new(Logger::memory(100));
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "printf '{}\\nposternd[1]: ok src=6.6.6.6 action=x\\n' >&2",
                String::from_utf8_lossy(PLANTED).trim_end()
            ))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        postern::monitor::childlog::drain(child.stderr.take().unwrap(), Arc::clone(&logger));
        child.wait().await.unwrap();
        let end = Instant::now() + 5 * SEC;
        while logger.lines().is_empty() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lines = logger.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("network process wrote 2 line(s), "),
            "{lines:?}"
        );
        assert!(!lines[0].contains("6.6.6.6"));
    });
}
