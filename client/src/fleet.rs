//! Running jobs: one, or a whole group at once.
//!
//! A group runs on a few event-loop threads (one per core, at least 2, at
//! most [`MAX_LOOPS`]; the jobs are dealt round-robin), each driving its
//! connections over non-blocking sockets with poll(2) (`exchange.rs`). A
//! host that never answers holds a descriptor and a few hundred bytes, not
//! a thread, so a group with any share of dead or hanging hosts ends one
//! timeout after its last host started, not one per batch. The bound is the number of
//! slots fixed when the [`Fleet`] is made (`--parallel`, capped by the
//! open-file limit: [`descriptor_budget`]); a job holds its slot from its
//! connect to its outcome, so at most that many connections are open.
//!
//! Beside that thread:
//! - passphrase jobs stretch their keys (PBKDF2) on a pool of one thread
//!   per core (at most [`MAX_DERIVERS`]) that runs ahead of the connects,
//!   so every core derives and each host connects once its key is ready;
//! - a named target is resolved on a thread of its own (the system
//!   resolver blocks), at most [`MAX_RESOLVERS`] at once; one that outlives
//!   its deadline is abandoned;
//! - a proxied job runs the blocking exchange of `trigger.rs` on a thread
//!   of its own with a small stack, at most [`MAX_PROXIED`] at once: the
//!   proxy handshakes stay in one place (`proxy.rs`), and a proxied group
//!   of up to that many hosts still costs one timeout.
//!
//! Every bound below is split between the loops. The helper threads wake
//! their loop through a socket pair; each loop publishes its counts for
//! the progress line, which the calling thread draws.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::Scope;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

use crate::exchange::{Exchange, Wants};
use crate::outcome::{Outcome, Report};
use crate::plan::{Job, JobSecret};
use crate::transport::MAX_ADDRESSES;
use crate::trigger::{trigger, Credential, NetError, Waits};

/// Most event-loop threads a group runs on (one per core, at least 2).
pub const MAX_LOOPS: usize = 8;
/// Most threads stretching passphrases at once.
pub const MAX_DERIVERS: usize = 16;
/// Most name lookups running at once.
pub const MAX_RESOLVERS: usize = 64;
/// Most proxied jobs running at once (one thread each).
pub const MAX_PROXIED: usize = 256;
/// Descriptors kept free of connections: standard streams, the wake pair,
/// the resolvers' sockets, the proxies' own lookups.
pub const RESERVED_DESCRIPTORS: u64 = 32 + 2 * MAX_RESOLVERS as u64;
/// New connections started per second at most, and in one burst: a
/// burst of thousands of SYNs overflows queues on the way (on loopback,
/// the kernel's backlog of 1,000 packets per CPU), and each dropped SYN
/// costs its host a retransmission a second or more later. At this rate
/// 4,096 hosts are all started within a quarter of a second.
pub const CONNECTS_PER_SECOND: u32 = 20_000;
/// See [`CONNECTS_PER_SECOND`].
pub const CONNECT_BURST: u32 = 256;
/// How often the progress observer is called.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Stack of a proxied job's thread: the exchange uses a few KiB.
const PROXIED_STACK: usize = 256 * 1024;
/// Longest single wait in poll(2), so a stalled clock cannot stall a run.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// Without a wake pair, how often the loop looks for helper results.
const NO_WAKE_POLL: Duration = Duration::from_millis(10);
/// The kernel's usual ceiling on descriptors (fs.nr_open), used when the
/// hard limit is unlimited.
const NR_OPEN: u64 = 1 << 20;

/// Runs one job: derives its credential, then triggers. The latency
/// reported covers the network exchange only.
pub fn run_one(job: &Job) -> Report {
    run_waiting(job, None)
}

/// [`run_one`], announcing on a terminal, once the ack has been awaited for
/// a second, what the server is doing: `announce` ("start sshd").
pub fn run_waiting(job: &Job, announce: Option<String>) -> Report {
    let credential = job.credential();
    trigger(
        &job.target,
        job.proxy.as_ref(),
        &credential,
        &waits(job, announce),
    )
}

fn waits(job: &Job, announce: Option<String>) -> Waits {
    Waits {
        timeout: job.timeout,
        ack_wait: job.ack_wait,
        announce,
    }
}

/// The open-file limit as found, and what it leaves for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft limit, after raising it.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
    /// Connections that fit: the soft limit less [`RESERVED_DESCRIPTORS`],
    /// at least 1.
    pub slots: usize,
}

/// Raises the soft open-file limit (RLIMIT_NOFILE) toward the hard limit,
/// as far as `wanted` connections need, and says how many connections the
/// limit then leaves room for. Never lowers the limit.
pub fn descriptor_budget(wanted: usize) -> Descriptors {
    let need = (wanted as u64).saturating_add(RESERVED_DESCRIPTORS);
    let (mut soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let ceiling = if hard == RLIM_INFINITY { NR_OPEN } else { hard };
    if soft != RLIM_INFINITY && soft < need {
        let target = need.min(ceiling);
        if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
            soft = target;
        }
    }
    let room = soft
        .min(NR_OPEN)
        .saturating_sub(RESERVED_DESCRIPTORS)
        .max(1);
    Descriptors {
        soft,
        hard,
        slots: usize::try_from(room).unwrap_or(usize::MAX),
    }
}

/// Where a group run stands, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally<'a> {
    /// Hosts done and successful.
    pub ok: usize,
    /// Hosts done and not successful.
    pub failed: usize,
    /// Hosts not done yet (connecting, waiting for a slot or a key).
    pub waiting: usize,
    /// The host pending longest, and for how long.
    pub slowest: Option<(&'a str, Duration)>,
}

/// Runs a group: at most `slots` jobs at once.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    slots: NonZeroUsize,
}

/// What the helper threads send the loop.
enum Msg {
    /// A passphrase job's key is stretched.
    Derived(usize, Credential),
    /// A named target's lookup answered.
    Resolved(usize, std::io::Result<Vec<SocketAddr>>),
    /// A proxied job is over.
    Done(usize, Report),
}

/// The helpers' end of the wake pair: one byte says "look at the channel".
#[derive(Clone)]
struct Waker(Option<Arc<UnixStream>>);

impl Waker {
    fn wake(&self) {
        if let Some(s) = &self.0 {
            // A full buffer means a wake is already pending.
            let _ = (&**s).write(&[1]);
        }
    }
}

fn wake_pair() -> (Option<UnixStream>, Waker) {
    match UnixStream::pair() {
        Ok((rx, tx)) if rx.set_nonblocking(true).is_ok() && tx.set_nonblocking(true).is_ok() => {
            (Some(rx), Waker(Some(Arc::new(tx))))
        }
        _ => (None, Waker(None)),
    }
}

fn is_slow(job: &Job) -> bool {
    matches!(job.secret, JobSecret::Passphrase { .. })
}

impl Fleet {
    /// A run that keeps at most `slots` jobs (connections) going at once.
    pub fn new(slots: NonZeroUsize) -> Fleet {
        Fleet { slots }
    }

    /// Runs every job and returns each with its report, in job order.
    /// `progress`, if given, sees the tally every [`PROGRESS_EVERY`].
    ///
    /// The jobs are dealt round-robin to one event loop per core (at
    /// least 2, at most [`MAX_LOOPS`]), each with its share of the slots,
    /// the connect rate, the lookups, the proxied threads and the
    /// derivation threads: on a busy machine a loop waits its turn for a
    /// core, and several loops wait less.
    pub fn run<'j>(
        &self,
        jobs: &'j [Job],
        progress: Option<&mut dyn FnMut(&Tally<'_>)>,
    ) -> Vec<(&'j Job, Report)> {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let loops = cores
            .clamp(2, MAX_LOOPS)
            .min(self.slots.get())
            .min(jobs.len())
            .max(1);
        let shares: Vec<Share> = (0..loops)
            .map(|k| Share::of(k, loops, self.slots.get(), cores, jobs))
            .collect();
        let boards: Vec<Mutex<Board>> = (0..loops).map(|_| Mutex::new(Board::default())).collect();
        let mut reports: Vec<Option<Report>> =
            std::iter::repeat_with(|| None).take(jobs.len()).collect();
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let mut handles = Vec::with_capacity(loops);
            let mut inline = Vec::new();
            for (share, board) in shares.iter().zip(&boards) {
                let done_tx = done_tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("fleet".to_owned())
                    .spawn_scoped(scope, move || {
                        let out = Run::new(jobs, share, board).drive(scope);
                        let _ = done_tx.send(());
                        out
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(_) => inline.push((share, board)),
                }
            }
            drop(done_tx);
            if let Some(observe) = progress {
                let mut running = handles.len();
                while running > 0 {
                    match done_rx.recv_timeout(PROGRESS_EVERY) {
                        Ok(()) => running -= 1,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            observe(&tally(jobs, &boards, Instant::now()));
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            // A loop whose thread could not start runs here.
            for (share, board) in inline {
                for (i, r) in Run::new(jobs, share, board).drive(scope) {
                    if let Some(slot) = reports.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
            for h in handles {
                for (i, r) in h.join().unwrap_or_default() {
                    if let Some(slot) = reports.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
        });
        jobs.iter()
            .zip(reports)
            .filter_map(|(j, r)| r.map(|r| (j, r)))
            .collect()
    }
}

/// One loop's part of a group run: its jobs and its share of every bound.
#[derive(Debug)]
struct Share {
    /// Its jobs, in job order.
    jobs: Vec<usize>,
    /// Its passphrase jobs, taken by its derivation threads in order.
    slow: Vec<usize>,
    next_slow: AtomicUsize,
    slots: usize,
    derivers: usize,
    resolvers: usize,
    proxied: usize,
    rate: f64,
    burst: f64,
}

impl Share {
    /// Loop `k` of `loops`: every `loops`-th job from `k`, and a fair
    /// part of each bound (the slots add up to `slots` exactly).
    fn of(k: usize, loops: usize, slots: usize, cores: usize, all: &[Job]) -> Share {
        let jobs: Vec<usize> = (k..all.len()).step_by(loops).collect();
        let slow = jobs
            .iter()
            .copied()
            .filter(|&i| all.get(i).is_some_and(is_slow))
            .collect();
        let part = |total: usize| (total / loops).max(1);
        Share {
            jobs,
            slow,
            next_slow: AtomicUsize::new(0),
            slots: (slots / loops + usize::from(k < slots % loops)).max(1),
            derivers: part(cores.min(MAX_DERIVERS)),
            resolvers: part(MAX_RESOLVERS),
            proxied: part(MAX_PROXIED),
            rate: f64::from(CONNECTS_PER_SECOND) / loops as f64,
            burst: (f64::from(CONNECT_BURST) / loops as f64).max(1.0),
        }
    }
}

/// What a loop last published for the progress line.
#[derive(Debug, Default)]
struct Board {
    ok: usize,
    failed: usize,
    /// The job pending longest, and when it started.
    oldest: Option<(usize, Instant)>,
}

/// The tally over every loop's board.
fn tally<'j>(jobs: &'j [Job], boards: &[Mutex<Board>], now: Instant) -> Tally<'j> {
    let (mut ok, mut failed) = (0, 0);
    let mut oldest: Option<(usize, Instant)> = None;
    for b in boards {
        // A poisoned board only means a loop died; its numbers still stand.
        let b = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ok += b.ok;
        failed += b.failed;
        if let Some(o) = b.oldest {
            if oldest.is_none_or(|(_, t)| o.1 < t) {
                oldest = Some(o);
            }
        }
    }
    // Jobs of loops that have not published yet count as waiting.
    let waiting = jobs.len().saturating_sub(ok + failed);
    Tally {
        ok,
        failed,
        waiting,
        slowest: oldest.and_then(|(i, t)| {
            jobs.get(i)
                .map(|j| (j.label.as_str(), now.saturating_duration_since(t)))
        }),
    }
}

/// The state of one group run on the loop's thread.
struct Run<'j> {
    jobs: &'j [Job],
    share: &'j Share,
    board: &'j Mutex<Board>,
    /// Reports so far, in the order they came.
    out: Vec<(usize, Report)>,
    /// Which jobs have a report.
    done: Vec<bool>,
    finished: usize,
    ok: usize,
    /// Cheap jobs not started, in job order.
    queue: VecDeque<usize>,
    /// Jobs whose stretched key is ready, in the order they came.
    ready: VecDeque<(usize, Credential)>,
    active: Vec<Exchange<'j>>,
    /// Proxied jobs running, and when each started.
    proxied: Vec<(usize, Instant)>,
    resolvers: usize,
    /// Connects that may start now ([`CONNECTS_PER_SECOND`]), and when
    /// the bucket was last filled.
    tokens: f64,
    filled: Instant,
    /// Set once poll(2) itself has failed: every job left fails with it.
    broken: Option<String>,
}

impl<'j> Run<'j> {
    fn new(jobs: &'j [Job], share: &'j Share, board: &'j Mutex<Board>) -> Self {
        Run {
            jobs,
            share,
            board,
            out: Vec::with_capacity(share.jobs.len()),
            done: vec![false; jobs.len()],
            finished: 0,
            ok: 0,
            queue: VecDeque::new(),
            ready: VecDeque::new(),
            active: Vec::with_capacity(share.slots.min(share.jobs.len())),
            proxied: Vec::new(),
            resolvers: 0,
            tokens: share.burst,
            filled: Instant::now(),
            broken: None,
        }
    }

    fn record(&mut self, i: usize, report: Report) {
        if let Some(seen @ false) = self.done.get_mut(i) {
            *seen = true;
            self.finished += 1;
            if report.outcome.is_success() {
                self.ok += 1;
            }
            self.out.push((i, report));
        }
    }

    fn fail(&mut self, i: usize, why: String) {
        let address = self
            .jobs
            .get(i)
            .map(|j| j.target.to_string())
            .unwrap_or_default();
        self.record(
            i,
            Report {
                outcome: Outcome::Unreachable(NetError::Io(why)),
                address,
                latency: Duration::ZERO,
            },
        );
    }

    /// Runs the share's jobs to the end; returns their reports.
    fn drive<'s>(mut self, scope: &'s Scope<'s, 'j>) -> Vec<(usize, Report)> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (wake_rx, waker) = wake_pair();
        let derivers = self.start_derivers(scope, &tx, &waker);
        let jobs = self.jobs;
        self.queue = self
            .share
            .jobs
            .iter()
            .copied()
            .filter(|&i| derivers == 0 || !jobs.get(i).is_some_and(is_slow))
            .collect();
        let total = self.share.jobs.len();
        let mut next_tick = Instant::now() + PROGRESS_EVERY;
        while self.finished < total {
            self.take_messages(&rx);
            self.fill(scope, &tx, &waker);
            if self.finished >= total {
                break;
            }
            let now = Instant::now();
            let mut wait = MAX_POLL_WAIT;
            for ex in &self.active {
                wait = wait.min(ex.deadline().saturating_duration_since(now));
            }
            wait = wait.min(next_tick.saturating_duration_since(now));
            if self.tokens < 1.0 && !(self.queue.is_empty() && self.ready.is_empty()) {
                let refill = (1.0 - self.tokens) / self.share.rate;
                wait = wait.min(Duration::from_secs_f64(refill.max(0.0)));
            }
            if wake_rx.is_none() {
                wait = wait.min(NO_WAKE_POLL);
            }
            if self.broken.is_some() {
                // Only helpers are left to report; wait for them.
                if let Ok(msg) = rx.recv_timeout(MAX_POLL_WAIT) {
                    self.handle(msg);
                }
                continue;
            }
            self.poll_once(wake_rx.as_ref(), wait);
            let now = Instant::now();
            if now >= next_tick {
                self.publish();
                next_tick = now + PROGRESS_EVERY;
            }
        }
        self.publish();
        self.out
    }

    /// Starts the passphrase pool; returns how many threads it has.
    fn start_derivers<'s>(
        &self,
        scope: &'s Scope<'s, 'j>,
        tx: &mpsc::Sender<Msg>,
        waker: &Waker,
    ) -> usize {
        let (slow, next_slow) = (&self.share.slow, &self.share.next_slow);
        let wanted = self.share.derivers.min(slow.len());
        let jobs = self.jobs;
        let mut started = 0;
        for _ in 0..wanted {
            let (tx, waker) = (tx.clone(), waker.clone());
            let spawned = std::thread::Builder::new()
                .name("derive".to_owned())
                .spawn_scoped(scope, move || loop {
                    let k = next_slow.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = slow.get(k).and_then(|&i| jobs.get(i).map(|j| (i, j))) else {
                        break;
                    };
                    if tx.send(Msg::Derived(job.0, job.1.credential())).is_err() {
                        break;
                    }
                    waker.wake();
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        started
    }

    fn take_messages(&mut self, rx: &mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.try_recv() {
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Derived(i, c) => self.ready.push_back((i, c)),
            Msg::Resolved(i, answer) => {
                self.resolvers = self.resolvers.saturating_sub(1);
                // An abandoned lookup (its job timed out) finds no one.
                let found = self
                    .active
                    .iter()
                    .position(|e| e.index() == i && e.is_resolving());
                if let Some(pos) = found {
                    let ex = self.active.swap_remove(pos);
                    match ex.resolved(answer) {
                        Ok(ex) => self.active.push(ex),
                        Err((i, r)) => self.record(i, r),
                    }
                }
            }
            Msg::Done(i, r) => {
                self.proxied.retain(|(j, _)| *j != i);
                self.record(i, r);
            }
        }
    }

    /// Starts jobs while slots are free and the connect rate allows.
    fn fill<'s>(&mut self, scope: &'s Scope<'s, 'j>, tx: &mpsc::Sender<Msg>, waker: &Waker) {
        let now = Instant::now();
        let earned = now.saturating_duration_since(self.filled).as_secs_f64() * self.share.rate;
        self.tokens = (self.tokens + earned).min(self.share.burst);
        self.filled = now;
        while self.active.len() + self.proxied.len() < self.share.slots && self.tokens >= 1.0 {
            let (i, credential) = match self.ready.pop_front() {
                Some(next) => next,
                None => match self.queue.pop_front() {
                    Some(i) => match self.jobs.get(i) {
                        Some(job) => (i, job.credential()),
                        None => continue,
                    },
                    None => return,
                },
            };
            let Some(job) = self.jobs.get(i) else {
                continue;
            };
            if let Some(why) = &self.broken {
                let why = why.clone();
                self.fail(i, why);
                continue;
            }
            let named = job.proxy.is_none() && job.target.ip().is_none();
            if (job.proxy.is_some() && self.proxied.len() >= self.share.proxied)
                || (named && self.resolvers >= self.share.resolvers)
            {
                // Wait for one of its kind to end; it keeps its place.
                self.ready.push_front((i, credential));
                return;
            }
            self.tokens -= 1.0;
            if job.proxy.is_some() {
                self.start_proxied(scope, i, job, credential, tx, waker);
                continue;
            }
            match Exchange::start(job, i, credential) {
                Ok(ex) if ex.is_resolving() => self.start_lookup(ex, tx, waker),
                Ok(ex) => self.active.push(ex),
                Err((i, r)) => self.record(i, r),
            }
        }
    }

    fn start_proxied<'s>(
        &mut self,
        scope: &'s Scope<'s, 'j>,
        i: usize,
        job: &'j Job,
        credential: Credential,
        tx: &mpsc::Sender<Msg>,
        waker: &Waker,
    ) {
        let (tx, waker) = (tx.clone(), waker.clone());
        let spawned = std::thread::Builder::new()
            .name("proxied".to_owned())
            .stack_size(PROXIED_STACK)
            .spawn_scoped(scope, move || {
                let report = trigger(
                    &job.target,
                    job.proxy.as_ref(),
                    &credential,
                    &waits(job, None),
                );
                let _ = tx.send(Msg::Done(i, report));
                waker.wake();
            });
        match spawned {
            Ok(_) => self.proxied.push((i, Instant::now())),
            Err(e) => self.fail(i, format!("cannot start a thread: {e}")),
        }
    }

    fn start_lookup(&mut self, ex: Exchange<'j>, tx: &mpsc::Sender<Msg>, waker: &Waker) {
        let i = ex.index();
        let Some(job) = self.jobs.get(i) else { return };
        let (host, port) = (job.target.host().to_owned(), job.target.port());
        let (tx, waker) = (tx.clone(), waker.clone());
        // Not scoped: a lookup past its deadline is left to finish alone.
        let spawned = std::thread::Builder::new()
            .name("resolve".to_owned())
            .spawn(move || {
                let answer = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|it| it.take(MAX_ADDRESSES).collect());
                let _ = tx.send(Msg::Resolved(i, answer));
                waker.wake();
            });
        match spawned {
            Ok(_) => {
                self.resolvers += 1;
                self.active.push(ex);
            }
            Err(e) => match ex.resolved(Err(e)) {
                Ok(ex) => self.active.push(ex),
                Err((i, r)) => self.record(i, r),
            },
        }
    }

    /// One poll(2) over every socket, then the work it allows and the
    /// deadlines that passed.
    fn poll_once(&mut self, wake_rx: Option<&UnixStream>, wait: Duration) {
        let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut woken = vec![false; self.active.len()];
        let polled = {
            let mut fds = Vec::with_capacity(self.active.len() + 1);
            let mut owners = Vec::with_capacity(self.active.len());
            if let Some(w) = wake_rx {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
            }
            for (k, ex) in self.active.iter().enumerate() {
                if let Some((fd, wants)) = ex.interest() {
                    let events = match wants {
                        Wants::Read => PollFlags::POLLIN,
                        Wants::Write => PollFlags::POLLOUT,
                    };
                    fds.push(PollFd::new(fd, events));
                    owners.push(k);
                }
            }
            let r = poll(&mut fds, PollTimeout::from(ms));
            let first = usize::from(wake_rx.is_some());
            for (fd, &k) in fds.iter().skip(first).zip(owners.iter()) {
                if fd.revents().is_some_and(|e| !e.is_empty()) {
                    if let Some(w) = woken.get_mut(k) {
                        *w = true;
                    }
                }
            }
            r
        };
        match polled {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                let why = format!("poll failed: {e}");
                for ex in std::mem::take(&mut self.active) {
                    self.fail(ex.index(), why.clone());
                }
                self.broken = Some(why);
                return;
            }
        }
        if let Some(mut w) = wake_rx {
            let mut sink = [0u8; 256];
            while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
        }
        let now = Instant::now();
        let active = std::mem::take(&mut self.active);
        for (ex, woke) in active.into_iter().zip(woken) {
            let ex = if woke {
                match ex.ready() {
                    Ok(ex) => ex,
                    Err((i, r)) => {
                        self.record(i, r);
                        continue;
                    }
                }
            } else {
                ex
            };
            if ex.deadline() <= now {
                let (i, r) = ex.expire();
                self.record(i, r);
            } else {
                self.active.push(ex);
            }
        }
    }

    /// Puts where this loop stands on its board, for the progress line.
    fn publish(&self) {
        let oldest = self
            .active
            .iter()
            .map(|e| (e.index(), e.started()))
            .chain(self.proxied.iter().copied())
            .min_by_key(|(_, t)| *t);
        let mut b = self
            .board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *b = Board {
            ok: self.ok,
            failed: self.finished - self.ok,
            oldest,
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::JobSecret;
    use crate::target::Target;
    use postern::secret::Key;
    use std::net::TcpListener;

    fn job(label: String, target: Target, timeout: Duration) -> Job {
        Job {
            label,
            action: None,
            target,
            proxy: None,
            timeout,
            ack_wait: timeout,
            assert_addr: None,
            secret: JobSecret::Key(Key::from_bytes([7; 32])),
        }
    }

    // Goal: every job runs exactly once, reports come back in job order,
    // and no more than `slots` connections are ever open at once.
    #[test]
    fn runs_all_jobs_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (o, pk) = (open.clone(), peak.clone());
        let server = std::thread::spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..9 {
                let (s, _) = listener.accept().unwrap();
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                handles.push(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    // Count down before the close the client will see.
                    o.fetch_sub(1, Ordering::SeqCst);
                    drop(s);
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
        });
        let jobs: Vec<Job> = (0..9)
            .map(|i| {
                job(
                    format!("h{i}"),
                    Target::new("127.0.0.1", port).unwrap(),
                    Duration::from_secs(5),
                )
            })
            .collect();
        let mut ticks = 0;
        let mut observe = |t: &Tally<'_>| {
            assert_eq!(t.ok + t.failed + t.waiting, 9);
            ticks += 1;
        };
        let reports = Fleet::new(NonZeroUsize::new(3).unwrap()).run(&jobs, Some(&mut observe));
        server.join().unwrap();
        assert_eq!(reports.len(), 9);
        assert!(ticks >= 1, "the run takes 300 ms; progress every 100 ms");
        assert!(
            peak.load(Ordering::SeqCst) <= 3,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        for (i, (job, r)) in reports.iter().enumerate() {
            assert_eq!(job.label, format!("h{i}"));
            assert_eq!(r.outcome.name(), "network-error");
        }
    }

    // Goal: hosts that accept and never greet cost one timeout together,
    // not one per slot's worth: 40 hanging hosts with 1 s timeouts and
    // 40 slots end in about 1 s, and a refused port fails at once.
    #[test]
    fn hanging_hosts_cost_one_timeout() {
        let hang = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = hang.local_addr().unwrap().port();
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let timeout = Duration::from_secs(1);
        let mut jobs: Vec<Job> = (0..40)
            .map(|i| {
                job(
                    format!("hang{i}"),
                    Target::new("127.0.0.1", port).unwrap(),
                    timeout,
                )
            })
            .collect();
        jobs.push(job(
            "dead".to_owned(),
            Target::new("127.0.0.1", dead).unwrap(),
            timeout,
        ));
        let start = Instant::now();
        let reports = Fleet::new(NonZeroUsize::new(41).unwrap()).run(&jobs, None);
        let took = start.elapsed();
        drop(hang);
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout * 3, "{took:?}");
        let (last, r) = reports.last().unwrap();
        assert_eq!(last.label, "dead");
        assert!(r.latency < timeout, "{:?}", r.latency);
        for (_, r) in &reports[..40] {
            assert!(
                matches!(
                    r.outcome,
                    Outcome::Unreachable(NetError::ChallengeTimeout(_))
                ),
                "{:?}",
                r.outcome
            );
        }
    }

    // Goal: the open-file limit is raised as far as needed (never above
    // the hard limit) and the slots leave the reserve free.
    #[test]
    fn descriptor_budget_leaves_the_reserve() {
        let d = descriptor_budget(100);
        assert!(d.soft <= d.hard || d.hard == RLIM_INFINITY);
        assert!(d.slots >= 1);
        assert!(d.slots as u64 <= d.soft.saturating_sub(RESERVED_DESCRIPTORS).max(1));
    }
}
