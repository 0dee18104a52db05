//! Per-source rate limiting and lockout, and the bounded set of pending
//! handshakes. Pure data structures: every method takes `now`, so tests
//! control time and nothing here sleeps or does I/O.
//!
//! A *source* is an IPv4 /32 or an IPv6 /64: an IPv6 host usually owns a
//! whole /64, so keying on /128 would let one host mint unlimited sources.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use crate::config::{IpNet, Limits};

/// The unit of rate limiting and lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl SourceKey {
    /// The source key of a canonical (IPv4-mapped folded) address.
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl core::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SourceKey::V4(a) => write!(f, "{}/32", std::net::Ipv4Addr::from(*a)),
            SourceKey::V6(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*p) << 64)),
        }
    }
}

/// Token bucket arithmetic is done in micro-tokens to stay in integers.
const MICRO: u64 = 1_000_000;

#[derive(Debug, Clone)]
struct Entry {
    /// Available tokens, in micro-tokens.
    tokens: u64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
    /// Consecutive failures since the last success or lockout.
    failures: u32,
    /// Locked until this instant.
    locked_until: Option<Instant>,
    /// Last time this source was seen (eviction order).
    seen: Instant,
    /// The rate limit has been logged for the current episode.
    rate_noted: bool,
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serve it.
    Yes,
    /// Locked out: close at once, send nothing.
    Locked,
    /// Over its rate: close at once, send nothing. `first` is true once
    /// per episode, so the caller logs once, not once per connection.
    RateLimited {
        /// First refusal of this episode.
        first: bool,
    },
}

/// The outcome of recording a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Counted; `failures` so far.
    Counted {
        /// Consecutive failures.
        failures: u32,
    },
    /// This failure locked the source out.
    LockedOut {
        /// Consecutive failures that led to it.
        failures: u32,
    },
    /// The source is in an exempt network; nothing was counted.
    Exempt,
}

/// The bounded per-source table.
///
/// Memory is bounded by `capacity` entries whatever the number of
/// attacking addresses. When full, the least recently seen source that is
/// not locked out is forgotten; only if every entry is locked is the
/// lockout that expires soonest dropped. Forgetting a source forgets its
/// strikes and its bucket (documented in SECURITY.md).
#[derive(Debug)]
pub struct SourceTable {
    capacity: NonZeroUsize,
    burst: NonZeroU32,
    per_minute: NonZeroU32,
    lockout_after: NonZeroU32,
    lockout_duration: Duration,
    exempt: Vec<IpNet>,
    entries: HashMap<SourceKey, Entry>,
    full_noted: bool,
}

impl SourceTable {
    /// An empty table with the given limits.
    pub fn new(limits: &Limits) -> Self {
        SourceTable {
            capacity: limits.lockout_table,
            burst: limits.rate_burst,
            per_minute: limits.rate_per_minute,
            lockout_after: limits.lockout_after,
            lockout_duration: limits.lockout_duration,
            exempt: limits.exempt.clone(),
            entries: HashMap::with_capacity(limits.lockout_table.get().min(4096)),
            full_noted: false,
        }
    }

    /// Applies new limits (after a reload), keeping every entry that fits.
    pub fn reconfigure(&mut self, limits: &Limits, now: Instant) {
        self.capacity = limits.lockout_table;
        self.burst = limits.rate_burst;
        self.per_minute = limits.rate_per_minute;
        self.lockout_after = limits.lockout_after;
        self.lockout_duration = limits.lockout_duration;
        self.exempt = limits.exempt.clone();
        while self.entries.len() > self.capacity.get() {
            self.evict_one(now);
        }
    }

    /// Number of tracked sources (never above the capacity).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(ip))
    }

    /// Takes the full-table note: true once each time the table fills up.
    pub fn take_full_note(&mut self) -> bool {
        if self.entries.len() >= self.capacity.get() && !self.full_noted {
            self.full_noted = true;
            return true;
        }
        if self.entries.len() < self.capacity.get() {
            self.full_noted = false;
        }
        false
    }

    fn evict_one(&mut self, now: Instant) {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.locked_until.is_none_or(|t| t <= now))
            .min_by_key(|(_, e)| e.seen)
            .map(|(k, _)| *k)
            .or_else(|| {
                self.entries
                    .iter()
                    .min_by_key(|(_, e)| e.locked_until)
                    .map(|(k, _)| *k)
            });
        if let Some(k) = victim {
            self.entries.remove(&k);
        }
    }

    fn entry(&mut self, key: SourceKey, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity.get() {
            self.evict_one(now);
        }
        let burst = u64::from(self.burst.get()) * MICRO;
        self.entries.entry(key).or_insert(Entry {
            tokens: burst,
            refilled: now,
            failures: 0,
            locked_until: None,
            seen: now,
            rate_noted: false,
        })
    }

    /// Decides whether a new connection from `ip` is served, and takes a
    /// token if so.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admit {
        let exempt = self.is_exempt(ip);
        let burst = u64::from(self.burst.get()) * MICRO;
        let per_minute = u64::from(self.per_minute.get());
        let e = self.entry(SourceKey::of(ip), now);
        e.seen = now;
        if let Some(until) = e.locked_until {
            if until > now && !exempt {
                return Admit::Locked;
            }
            e.locked_until = None;
        }
        let elapsed = now.saturating_duration_since(e.refilled);
        // micro-tokens gained = elapsed_us * per_minute / 60 (saturating).
        let gained =
            (elapsed.as_micros().min(u128::from(u64::MAX)) as u64).saturating_mul(per_minute) / 60;
        if gained > 0 {
            e.tokens = e.tokens.saturating_add(gained).min(burst);
            e.refilled = now;
        }
        if e.tokens >= MICRO {
            e.tokens -= MICRO;
            e.rate_noted = false;
            Admit::Yes
        } else {
            let first = !e.rate_noted;
            e.rate_noted = true;
            Admit::RateLimited { first }
        }
    }

    /// Records a failed handshake from `ip`.
    pub fn fail(&mut self, ip: IpAddr, now: Instant) -> Strike {
        if self.is_exempt(ip) {
            return Strike::Exempt;
        }
        let after = self.lockout_after.get();
        let duration = self.lockout_duration;
        let e = self.entry(SourceKey::of(ip), now);
        e.seen = now;
        e.failures = e.failures.saturating_add(1);
        if e.failures >= after {
            let failures = e.failures;
            e.failures = 0;
            e.locked_until = Some(now + duration);
            Strike::LockedOut { failures }
        } else {
            Strike::Counted {
                failures: e.failures,
            }
        }
    }

    /// Records a successful handshake: the source's strikes are forgiven.
    pub fn succeed(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.get_mut(&SourceKey::of(ip)) {
            e.failures = 0;
        }
    }

    /// Whether `ip`'s source has failed since its last success or lockout
    /// (an untracked or exempt source has not). Under pressure such a
    /// source waits while clean ones are served.
    pub fn has_strikes(&self, ip: IpAddr) -> bool {
        self.entries
            .get(&SourceKey::of(ip))
            .is_some_and(|e| e.failures > 0)
    }

    /// Whether `ip` is locked out at `now`.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .get(&SourceKey::of(ip))
            .and_then(|e| e.locked_until)
            .is_some_and(|t| t > now)
    }
}

/// The bounded set of unauthenticated handshakes in progress.
///
/// At capacity the oldest handshake is evicted to make room, so peers that
/// hold slots open cannot starve a real client: they only ever shorten
/// each other's time. Generic over the handle type so it can be tested
/// without a runtime.
#[derive(Debug)]
pub struct Slots<H> {
    capacity: NonZeroUsize,
    next: u64,
    pending: BTreeMap<u64, (IpAddr, H)>,
    full_noted: bool,
}

impl<H> Slots<H> {
    /// An empty set of at most `capacity` handshakes.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Slots {
            capacity,
            next: 0,
            pending: BTreeMap::new(),
            full_noted: false,
        }
    }

    /// Changes the bound; excess handshakes are returned for eviction.
    pub fn resize(&mut self, capacity: NonZeroUsize) -> Vec<(IpAddr, H)> {
        self.capacity = capacity;
        let mut out = Vec::new();
        while self.pending.len() > capacity.get() {
            if let Some((_, v)) = self.pending.pop_first() {
                out.push(v);
            }
        }
        out
    }

    /// Reserves an id for a new handshake. If the set is full, the oldest
    /// handshake is removed and returned so the caller can cancel it.
    pub fn reserve(&mut self) -> (u64, Option<(IpAddr, H)>) {
        let evicted = if self.pending.len() >= self.capacity.get() {
            self.pending.pop_first().map(|(_, v)| v)
        } else {
            None
        };
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        (id, evicted)
    }

    /// Registers the handshake `id` (from [`reserve`](Self::reserve)).
    pub fn insert(&mut self, id: u64, ip: IpAddr, handle: H) {
        self.pending.insert(id, (ip, handle));
    }

    /// Removes a finished handshake. Idempotent.
    pub fn remove(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// Whether every slot is taken (the next reservation evicts).
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity.get()
    }

    /// Handshakes in progress.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True once each time the set becomes full (log once, not per event).
    pub fn take_full_note(&mut self) -> bool {
        let full = self.pending.len() >= self.capacity.get();
        let first = full && !self.full_noted;
        self.full_noted = full;
        first
    }

    /// Removes and returns every pending handshake (shutdown, reload).
    pub fn drain(&mut self) -> Vec<(IpAddr, H)> {
        std::mem::take(&mut self.pending).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::defaults;

    fn limits(table: usize, after: u32, burst: u32, per_minute: u32) -> Limits {
        Limits {
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            max_handshakes: NonZeroUsize::new(4).unwrap(),
            rate_burst: NonZeroU32::new(burst).unwrap(),
            rate_per_minute: NonZeroU32::new(per_minute).unwrap(),
            lockout_after: NonZeroU32::new(after).unwrap(),
            lockout_duration: Duration::from_secs(60),
            lockout_table: NonZeroUsize::new(table).unwrap(),
            exempt: vec![IpNet {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8,
            }],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Goal: N failures lock a source; the lockout expires after its
    // duration; a success in between forgives.
    #[test]
    fn lockout_after_n_and_expiry() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(16, 3, 100, 60));
        let a = ip("192.0.2.1");
        assert_eq!(t.fail(a, t0), Strike::Counted { failures: 1 });
        t.succeed(a);
        assert_eq!(t.fail(a, t0), Strike::Counted { failures: 1 });
        assert_eq!(t.fail(a, t0), Strike::Counted { failures: 2 });
        assert_eq!(t.fail(a, t0), Strike::LockedOut { failures: 3 });
        assert_eq!(t.admit(a, t0 + Duration::from_secs(59)), Admit::Locked);
        assert!(t.is_locked(a, t0 + Duration::from_secs(59)));
        assert_eq!(t.admit(a, t0 + Duration::from_secs(61)), Admit::Yes);
        assert_eq!(t.admit(ip("192.0.2.2"), t0), Admit::Yes);
    }

    // Goal: exempt networks are never counted nor locked.
    #[test]
    fn exempt_never_locked() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(16, 1, 100, 60));
        for _ in 0..10 {
            assert_eq!(t.fail(ip("10.1.2.3"), t0), Strike::Exempt);
        }
        assert_eq!(t.admit(ip("10.1.2.3"), t0), Admit::Yes);
    }

    // Goal: the token bucket allows a burst, refuses beyond it, notes the
    // refusal once, and refills with time.
    #[test]
    fn token_bucket() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(16, 5, 3, 60));
        let a = ip("198.51.100.9");
        for _ in 0..3 {
            assert_eq!(t.admit(a, t0), Admit::Yes);
        }
        assert_eq!(t.admit(a, t0), Admit::RateLimited { first: true });
        assert_eq!(t.admit(a, t0), Admit::RateLimited { first: false });
        // 60 per minute: one token per second.
        assert_eq!(t.admit(a, t0 + Duration::from_millis(1000)), Admit::Yes);
        assert_eq!(
            t.admit(a, t0 + Duration::from_millis(1000)),
            Admit::RateLimited { first: true }
        );
    }

    // Goal: IPv6 addresses in one /64 share a source; other /64s do not.
    #[test]
    fn ipv6_keyed_on_64() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(16, 2, 100, 60));
        t.fail(ip("2001:db8:1:2::1"), t0);
        assert_eq!(
            t.fail(ip("2001:db8:1:2:ffff::9"), t0),
            Strike::LockedOut { failures: 2 }
        );
        assert!(t.is_locked(ip("2001:db8:1:2::77"), t0));
        assert!(!t.is_locked(ip("2001:db8:1:3::1"), t0));
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    // Goal: the table never exceeds its bound, however many sources, and
    // prefers to keep locked sources when it must forget someone.
    #[test]
    fn table_is_bounded_and_keeps_locks() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(8, 1, 100, 60));
        let locked = ip("192.0.2.200");
        t.fail(locked, t0);
        for i in 0..5000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xC633_0000 + i));
            t.admit(a, t0 + Duration::from_millis(u64::from(i)));
            assert!(t.len() <= 8);
        }
        assert!(t.is_locked(locked, t0 + Duration::from_secs(5)));
        assert!(t.take_full_note());
        assert!(!t.take_full_note());
    }

    // Goal: at capacity the oldest pending handshake is evicted first.
    #[test]
    fn slots_evict_oldest() {
        let mut s: Slots<u32> = Slots::new(NonZeroUsize::new(2).unwrap());
        let a = ip("192.0.2.1");
        let (i0, e) = s.reserve();
        assert!(e.is_none());
        s.insert(i0, a, 100);
        let (i1, _) = s.reserve();
        s.insert(i1, a, 101);
        assert!(s.take_full_note());
        assert!(!s.take_full_note());
        let (i2, e) = s.reserve();
        assert_eq!(e.map(|(_, h)| h), Some(100));
        s.insert(i2, a, 102);
        s.remove(i1);
        s.remove(i1);
        assert_eq!(s.len(), 1);
        assert!(!s.is_full());
        assert_eq!(s.drain().len(), 1);
    }

    // Goal: a source has strikes from its first failure until a success;
    // unknown and exempt sources never have any.
    #[test]
    fn strikes_until_success() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(16, 5, 100, 60));
        let a = ip("192.0.2.1");
        assert!(!t.has_strikes(a));
        t.admit(a, t0);
        assert!(!t.has_strikes(a));
        t.fail(a, t0);
        assert!(t.has_strikes(a));
        t.succeed(a);
        assert!(!t.has_strikes(a));
        t.fail(ip("10.1.2.3"), t0);
        assert!(!t.has_strikes(ip("10.1.2.3")));
    }
}
