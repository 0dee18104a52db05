//! Per-source rate limiting and lockout, per-network failure counters, a
//! global budget of full verifications, and the bounded set of pending
//! handshakes. Pure data structures: every method takes `now`, so tests
//! control time and nothing here sleeps or does I/O.
//!
//! A *source* is an IPv4 /32 or an IPv6 /64: an IPv6 host usually owns a
//! whole /64, so keying on /128 would let one host mint unlimited sources.
//! An attacker with many sources is met one level up: failures also count
//! against the enclosing *networks* (IPv4 /24; IPv6 /56 and /48, see
//! [`NETWORK_LOCKOUT`]), and sources not in good standing share one
//! budget of full verifications per second (`limits.verify_per_second`).
//! A source is in *good standing* when its last handshake succeeded.
//!
//! Every operation on the table is O(1) expected: entries sit in a hash
//! map and in one of three intrusive LRU lists (plain, good, locked), so
//! forgetting the least recently seen entry never scans.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use crate::config::{IpNet, Limits};
use crate::ipc::Carried;

/// How the enclosing networks of a source lock out: prefix length of the
/// network, and how many times `lockout_after` failures (from any of its
/// sources, each forgotten after `lockout_duration` without a failure)
/// lock the whole network. A /56 holds 256 /64s and a /48 65,536, so the
/// thresholds grow with the size; an IPv4 /24 holds 256 hosts.
/// With the default `lockout_after = 5`: /24 after 40, /56 after 20, /48
/// after 80 failures.
pub const NETWORK_LOCKOUT: [(Family, u8, u32); 3] = [
    (Family::V4, 24, 8),
    (Family::V6, 56, 4),
    (Family::V6, 48, 16),
];

/// The verification budget holds this many seconds' worth of tokens.
pub const VERIFY_BURST_SECONDS: u32 = 2;

/// A spent verification budget is reported at most once in this long: it
/// refills token by token, so "once per episode" would be once per token.
pub const BUDGET_NOTE_INTERVAL: Duration = Duration::from_secs(30);

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

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

    /// Prefix length of the addresses it covers: 32 (IPv4) or 64 (IPv6).
    pub fn prefix_len(&self) -> u8 {
        match self {
            SourceKey::V4(_) => 32,
            SourceKey::V6(_) => 64,
        }
    }
}

impl core::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SourceKey::V4(a) => write!(f, "{}/{}", std::net::Ipv4Addr::from(*a), self.prefix_len()),
            SourceKey::V6(p) => write!(
                f,
                "{}/{}",
                std::net::Ipv6Addr::from(u128::from(*p) << 64),
                self.prefix_len()
            ),
        }
    }
}

/// A network enclosing sources: an IPv4 /24, an IPv6 /56 or /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    family: Family,
    /// The address with host bits cleared: IPv4 in the low 32 bits, IPv6
    /// as the upper 64 bits of the address.
    bits: u64,
    len: u8,
}

impl Network {
    /// The network of length `len` that holds the canonical address `ip`,
    /// if `ip` is of `family`.
    pub fn of(ip: IpAddr, family: Family, len: u8) -> Option<Network> {
        // Every tracked network is at most 64 bits long: IPv4 in the low
        // 32 bits, IPv6 as the upper 64 bits of the address.
        let (bits, width) = match (ip, family) {
            (IpAddr::V4(a), Family::V4) => (u64::from(u32::from(a)), 32u32),
            (IpAddr::V6(a), Family::V6) => ((u128::from(a) >> 64) as u64, 64u32),
            _ => return None,
        };
        let shift = width.saturating_sub(u32::from(len.min(width as u8)));
        let masked = bits
            .checked_shr(shift)
            .unwrap_or(0)
            .checked_shl(shift)
            .unwrap_or(0);
        Some(Network {
            family,
            bits: masked,
            len,
        })
    }

    /// The widest network [`NETWORK_LOCKOUT`] tracks for `ip` (IPv4 /24,
    /// IPv6 /48): the unit the handshake slots are shared by.
    pub fn widest(ip: IpAddr) -> Network {
        let (family, len) = match ip {
            IpAddr::V4(_) => (Family::V4, 24),
            IpAddr::V6(_) => (Family::V6, 48),
        };
        Network::of(ip, family, len).unwrap_or(Network {
            family,
            bits: 0,
            len,
        })
    }

    /// Prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The network of `family` and prefix `len` whose address bits are
    /// `bits` (as in [`Network::of`]); `None` unless it is one that
    /// [`NETWORK_LOCKOUT`] tracks and its host bits are zero.
    pub fn from_parts(family: Family, bits: u64, len: u8) -> Option<Network> {
        if !NETWORK_LOCKOUT
            .iter()
            .any(|&(f, l, _)| f == family && l == len)
        {
            return None;
        }
        let width = match family {
            Family::V4 => 32,
            Family::V6 => 64,
        };
        let shift = u32::from(width - len);
        let masked = (bits >> shift) << shift;
        (masked == bits && (family == Family::V6 || bits >> 32 == 0)).then_some(Network {
            family,
            bits,
            len,
        })
    }
}

impl core::fmt::Display for Network {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.family {
            Family::V4 => write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(self.bits as u32),
                self.len
            ),
            Family::V6 => write!(
                f,
                "{}/{}",
                std::net::Ipv6Addr::from(u128::from(self.bits) << 64),
                self.len
            ),
        }
    }
}

/// Token bucket arithmetic is done in micro-tokens to stay in integers.
const MICRO: u64 = 1_000_000;

/// What a table entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TableKey {
    Source(SourceKey),
    Network(Network),
}

#[derive(Debug, Clone)]
struct Entry {
    /// Available tokens, in micro-tokens (sources only).
    tokens: u64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
    /// Failures counted toward lockout: consecutive for a source (since
    /// its last success or lockout), recent for a network.
    failures: u32,
    /// The last counted failure (networks forget after `lockout_duration`).
    last_failure: Instant,
    /// Locked until this instant.
    locked_until: Option<Instant>,
    /// The rate limit has been logged for the current episode.
    rate_noted: bool,
    /// The source's last handshake succeeded (good standing).
    good: bool,
}

/// Which LRU list an entry is on. Eviction takes the plain list's least
/// recently seen entry first, then good standing, then the lock that
/// was set first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Plain = 0,
    Good = 1,
    Locked = 2,
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    key: TableKey,
    entry: Entry,
    list: List,
    prev: u32,
    next: u32,
}

/// A fixed-capacity map with O(1) touch, insert, remove and eviction in
/// least-recently-used order, over three lists.
#[derive(Debug)]
struct Lru {
    map: HashMap<TableKey, u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// (head = most recent, tail = least recent) per list.
    ends: [(u32, u32); 3],
}

impl Lru {
    fn new(reserve: usize) -> Lru {
        Lru {
            map: HashMap::with_capacity(reserve),
            nodes: Vec::with_capacity(reserve),
            free: Vec::new(),
            ends: [(NIL, NIL); 3],
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, list) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.list as usize)
        };
        if prev == NIL {
            self.ends[list].0 = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.ends[list].1 = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32, list: List) {
        let head = self.ends[list as usize].0;
        {
            let n = &mut self.nodes[i as usize];
            n.list = list;
            n.prev = NIL;
            n.next = head;
        }
        if head == NIL {
            self.ends[list as usize].1 = i;
        } else {
            self.nodes[head as usize].prev = i;
        }
        self.ends[list as usize].0 = i;
    }

    /// Marks `i` most recently seen, on `list`.
    fn touch(&mut self, i: u32, list: List) {
        self.unlink(i);
        self.push_front(i, list);
    }

    fn get(&self, key: &TableKey) -> Option<&Entry> {
        self.map.get(key).map(|&i| &self.nodes[i as usize].entry)
    }

    fn index(&self, key: &TableKey) -> Option<u32> {
        self.map.get(key).copied()
    }

    fn insert(&mut self, key: TableKey, entry: Entry) -> u32 {
        let node = Node {
            key,
            entry,
            list: List::Plain,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.map.insert(key, i);
        self.push_front(i, List::Plain);
        i
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let key = self.nodes[i as usize].key;
        self.map.remove(&key);
        self.free.push(i);
    }

    fn tail(&self, list: List) -> Option<u32> {
        let t = self.ends[list as usize].1;
        (t != NIL).then_some(t)
    }

    /// Forgets one entry: an expired lock if the oldest lock has expired,
    /// else the least recently seen plain entry, else the least recently
    /// seen source in good standing, else the lock set first.
    fn evict_one(&mut self, now: Instant) {
        let expired = self.tail(List::Locked).filter(|&i| {
            self.nodes[i as usize]
                .entry
                .locked_until
                .is_none_or(|t| t <= now)
        });
        let victim = expired
            .or_else(|| self.tail(List::Plain))
            .or_else(|| self.tail(List::Good))
            .or_else(|| self.tail(List::Locked));
        if let Some(i) = victim {
            self.remove(i);
        }
    }
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serve it.
    Yes,
    /// Locked out (the source, or an enclosing network and the source is
    /// not in good standing): close at once, send nothing.
    Locked,
    /// Over its rate: close at once, send nothing. `first` is true once
    /// per episode, so the caller logs once, not once per connection.
    RateLimited {
        /// First refusal of this episode.
        first: bool,
    },
    /// The shared verification budget of sources not in good standing is
    /// spent: close at once, send nothing. `first` at most once per
    /// [`BUDGET_NOTE_INTERVAL`].
    OverBudget {
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

/// The bounded per-source table, with the enclosing networks' counters
/// and the global verification budget.
///
/// Memory is bounded by `capacity` entries (sources and networks alike)
/// whatever the number of attacking addresses. When full, an expired lock
/// is forgotten first, then the least recently seen plain entry, then the
/// least recently seen source in good standing; only if every entry is
/// locked is the lock set first dropped. Forgetting a source forgets its
/// strikes and its bucket, but not its networks' counters, which every
/// failure in them keeps recent (documented in SECURITY.md).
#[derive(Debug)]
pub struct SourceTable {
    capacity: NonZeroUsize,
    burst: NonZeroU32,
    per_minute: NonZeroU32,
    lockout_after: NonZeroU32,
    lockout_duration: Duration,
    verify_per_second: NonZeroU32,
    exempt: Vec<IpNet>,
    lru: Lru,
    budget_tokens: u64,
    budget_refilled: Option<Instant>,
    budget_noted: Option<Instant>,
    full_noted: bool,
    locked_network: Option<Network>,
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
            verify_per_second: limits.verify_per_second,
            exempt: limits.exempt.clone(),
            lru: Lru::new(limits.lockout_table.get().min(4096)),
            budget_tokens: Self::budget_burst(limits.verify_per_second),
            budget_refilled: None,
            budget_noted: None,
            full_noted: false,
            locked_network: None,
        }
    }

    fn budget_burst(per_second: NonZeroU32) -> u64 {
        u64::from(per_second.get()) * u64::from(VERIFY_BURST_SECONDS) * MICRO
    }

    /// Applies new limits (after a reload), keeping every entry that fits.
    /// Shrinking forgets entries in eviction order, O(1) each.
    pub fn reconfigure(&mut self, limits: &Limits, now: Instant) {
        self.capacity = limits.lockout_table;
        self.burst = limits.rate_burst;
        self.per_minute = limits.rate_per_minute;
        self.lockout_after = limits.lockout_after;
        self.lockout_duration = limits.lockout_duration;
        self.verify_per_second = limits.verify_per_second;
        self.budget_tokens = self
            .budget_tokens
            .min(Self::budget_burst(limits.verify_per_second));
        self.exempt = limits.exempt.clone();
        while self.lru.len() > self.capacity.get() {
            self.lru.evict_one(now);
        }
    }

    /// Number of tracked sources and networks (never above the capacity).
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.lru.len() == 0
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
        if self.lru.len() >= self.capacity.get() && !self.full_noted {
            self.full_noted = true;
            return true;
        }
        if self.lru.len() < self.capacity.get() {
            self.full_noted = false;
        }
        false
    }

    /// The entry for `key`, created (evicting if full) if absent.
    fn slot(&mut self, key: TableKey, now: Instant) -> u32 {
        if let Some(i) = self.lru.index(&key) {
            return i;
        }
        if self.lru.len() >= self.capacity.get() {
            self.lru.evict_one(now);
        }
        let burst = u64::from(self.burst.get()) * MICRO;
        self.lru.insert(
            key,
            Entry {
                tokens: burst,
                refilled: now,
                failures: 0,
                last_failure: now,
                locked_until: None,
                rate_noted: false,
                good: false,
            },
        )
    }

    /// Puts entry `i` at the front of the list its state belongs on.
    fn touch(&mut self, i: u32, now: Instant) {
        let e = &self.lru.nodes[i as usize].entry;
        let list = if e.locked_until.is_some_and(|t| t > now) {
            List::Locked
        } else if e.good {
            List::Good
        } else {
            List::Plain
        };
        // A lock stays in the order it was set (the oldest lock ends first).
        if list == List::Locked && self.lru.nodes[i as usize].list == List::Locked {
            return;
        }
        self.lru.touch(i, list);
    }

    fn network_locked(&self, ip: IpAddr, now: Instant) -> bool {
        NETWORK_LOCKOUT.iter().any(|&(family, len, _)| {
            Network::of(ip, family, len)
                .and_then(|n| self.lru.get(&TableKey::Network(n)))
                .and_then(|e| e.locked_until)
                .is_some_and(|t| t > now)
        })
    }

    /// Takes a token from the global verification budget.
    fn spend_budget(&mut self, now: Instant) -> bool {
        let burst = Self::budget_burst(self.verify_per_second);
        let last = *self.budget_refilled.get_or_insert(now);
        let elapsed = now.saturating_duration_since(last);
        let gained = (elapsed.as_micros().min(u128::from(u64::MAX)) as u64)
            .saturating_mul(u64::from(self.verify_per_second.get()));
        if gained > 0 {
            self.budget_tokens = self.budget_tokens.saturating_add(gained).min(burst);
            self.budget_refilled = Some(now);
        }
        if self.budget_tokens >= MICRO {
            self.budget_tokens -= MICRO;
            true
        } else {
            false
        }
    }

    /// Decides whether a new connection from `ip` is served, and takes a
    /// token (of the source's bucket and, unless the source is in good
    /// standing or exempt, of the global budget) if so.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admit {
        let exempt = self.is_exempt(ip);
        let burst = u64::from(self.burst.get()) * MICRO;
        let per_minute = u64::from(self.per_minute.get());
        let i = self.slot(TableKey::Source(SourceKey::of(ip)), now);
        let (locked, good) = {
            let e = &mut self.lru.nodes[i as usize].entry;
            let locked = match e.locked_until {
                Some(until) if until > now && !exempt => true,
                Some(_) => {
                    e.locked_until = None;
                    false
                }
                None => false,
            };
            (locked, e.good)
        };
        self.touch(i, now);
        if locked {
            return Admit::Locked;
        }
        if !exempt && !good && self.network_locked(ip, now) {
            return Admit::Locked;
        }
        let e = &mut self.lru.nodes[i as usize].entry;
        let elapsed = now.saturating_duration_since(e.refilled);
        // micro-tokens gained = elapsed_us * per_minute / 60 (saturating).
        let gained =
            (elapsed.as_micros().min(u128::from(u64::MAX)) as u64).saturating_mul(per_minute) / 60;
        if gained > 0 {
            e.tokens = e.tokens.saturating_add(gained).min(burst);
            e.refilled = now;
        }
        if e.tokens < MICRO {
            let first = !e.rate_noted;
            e.rate_noted = true;
            return Admit::RateLimited { first };
        }
        e.rate_noted = false;
        if !exempt && !good && !self.spend_budget(now) {
            let first = match self.budget_noted {
                None => true,
                Some(t) => now.saturating_duration_since(t) >= BUDGET_NOTE_INTERVAL,
            };
            if first {
                self.budget_noted = Some(now);
            }
            return Admit::OverBudget { first };
        }
        let e = &mut self.lru.nodes[i as usize].entry;
        e.tokens -= MICRO;
        Admit::Yes
    }

    /// Records a failed handshake from `ip`: one failure for the source
    /// and one for each enclosing network. A network that reaches its
    /// threshold is locked and can be taken with
    /// [`take_locked_network`](Self::take_locked_network).
    pub fn fail(&mut self, ip: IpAddr, now: Instant) -> Strike {
        if self.is_exempt(ip) {
            return Strike::Exempt;
        }
        let after = self.lockout_after.get();
        let duration = self.lockout_duration;
        for &(family, len, factor) in &NETWORK_LOCKOUT {
            let Some(net) = Network::of(ip, family, len) else {
                continue;
            };
            let i = self.slot(TableKey::Network(net), now);
            let e = &mut self.lru.nodes[i as usize].entry;
            if e.locked_until.is_some_and(|t| t <= now) {
                e.locked_until = None;
            }
            if now.saturating_duration_since(e.last_failure) >= duration {
                e.failures = 0;
            }
            e.last_failure = now;
            e.failures = e.failures.saturating_add(1);
            if e.locked_until.is_none() && e.failures >= after.saturating_mul(factor) {
                e.failures = 0;
                e.locked_until = Some(now + duration);
                self.locked_network = Some(net);
                // Newly locked: to the front of the lock order.
                self.lru.touch(i, List::Locked);
            } else {
                self.touch(i, now);
            }
        }
        let i = self.slot(TableKey::Source(SourceKey::of(ip)), now);
        let e = &mut self.lru.nodes[i as usize].entry;
        e.good = false;
        e.last_failure = now;
        e.failures = e.failures.saturating_add(1);
        if e.failures >= after {
            let failures = e.failures;
            e.failures = 0;
            e.locked_until = Some(now + duration);
            self.lru.touch(i, List::Locked);
            Strike::LockedOut { failures }
        } else {
            let failures = e.failures;
            self.touch(i, now);
            Strike::Counted { failures }
        }
    }

    /// The failure count a [`fail`](Self::fail) of `ip` now would give
    /// its source (0 for an exempt source): what the monitor logs if it
    /// refuses the reply about to be forwarded.
    pub fn next_failures(&self, ip: IpAddr) -> u32 {
        if self.is_exempt(ip) {
            return 0;
        }
        self.lru
            .get(&TableKey::Source(SourceKey::of(ip)))
            .map_or(0, |e| e.failures)
            .saturating_add(1)
    }

    /// The network the last [`fail`](Self::fail) locked, once.
    pub fn take_locked_network(&mut self) -> Option<Network> {
        self.locked_network.take()
    }

    /// Records a successful handshake: the source's strikes are forgiven
    /// and it is in good standing (tracked again if a flood made the table
    /// forget it during the handshake). Its networks' counters stay.
    pub fn succeed(&mut self, ip: IpAddr, now: Instant) {
        let i = self.slot(TableKey::Source(SourceKey::of(ip)), now);
        let e = &mut self.lru.nodes[i as usize].entry;
        e.failures = 0;
        e.good = true;
        self.touch(i, now);
    }

    /// Whether `ip`'s source has failed since its last success or lockout
    /// (an untracked or exempt source has not). Under pressure such a
    /// source waits while clean ones are served.
    pub fn has_strikes(&self, ip: IpAddr) -> bool {
        self.lru
            .get(&TableKey::Source(SourceKey::of(ip)))
            .is_some_and(|e| e.failures > 0)
    }

    /// Whether `ip`'s source is in good standing (its last handshake
    /// succeeded, and it has not been forgotten since).
    pub fn is_good(&self, ip: IpAddr) -> bool {
        self.lru
            .get(&TableKey::Source(SourceKey::of(ip)))
            .is_some_and(|e| e.good)
    }

    /// Whether `ip`'s own source is locked out at `now`.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.lru
            .get(&TableKey::Source(SourceKey::of(ip)))
            .and_then(|e| e.locked_until)
            .is_some_and(|t| t > now)
    }

    /// Whether an enclosing network of `ip` is locked out at `now`.
    pub fn is_network_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.network_locked(ip, now)
    }

    /// Locks `ip`'s source out for `lockout_duration` from `now`, unless
    /// it is exempt or already locked (an existing lock keeps its end).
    pub fn lock_source(&mut self, ip: IpAddr, now: Instant) {
        if self.is_exempt(ip) {
            return;
        }
        let i = self.slot(TableKey::Source(SourceKey::of(ip)), now);
        let e = &mut self.lru.nodes[i as usize].entry;
        if e.locked_until.is_some_and(|t| t > now) {
            return;
        }
        e.failures = 0;
        e.good = false;
        e.locked_until = Some(now + self.lockout_duration);
        self.lru.touch(i, List::Locked);
    }

    /// Locks network `net` out for `lockout_duration` from `now`, unless
    /// it is already locked.
    pub fn lock_network(&mut self, net: Network, now: Instant) {
        let i = self.slot(TableKey::Network(net), now);
        let e = &mut self.lru.nodes[i as usize].entry;
        if e.locked_until.is_some_and(|t| t > now) {
            return;
        }
        e.failures = 0;
        e.last_failure = now;
        e.locked_until = Some(now + self.lockout_duration);
        self.lru.touch(i, List::Locked);
    }

    /// Empties `ip`'s bucket at `now`: the source was just refused for
    /// its rate, so it had less than one token left.
    pub fn drain_bucket(&mut self, ip: IpAddr, now: Instant) {
        if self.is_exempt(ip) {
            return;
        }
        let i = self.slot(TableKey::Source(SourceKey::of(ip)), now);
        let e = &mut self.lru.nodes[i as usize].entry;
        e.tokens = 0;
        e.refilled = now;
        self.touch(i, now);
    }

    /// Every entry that holds state worth keeping (strikes, a lock, good
    /// standing, a bucket not full; a network's recent failures or lock),
    /// as of `now`, least recently seen first within each list, so that
    /// [`import`](Self::import) in this order rebuilds the same eviction
    /// order. At most [`capacity`](Self::capacity) records.
    pub fn export(&self, now: Instant) -> Vec<Carried> {
        let burst = u64::from(self.burst.get()) * MICRO;
        let per_minute = u64::from(self.per_minute.get());
        let mut out = Vec::new();
        for list in [List::Plain, List::Good, List::Locked] {
            let mut at = self.lru.ends[list as usize].1;
            while at != NIL {
                let node = &self.lru.nodes[at as usize];
                at = node.prev;
                let e = &node.entry;
                let locked_for = e
                    .locked_until
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                let record = match node.key {
                    TableKey::Source(key) => {
                        let elapsed = now.saturating_duration_since(e.refilled);
                        let gained = (elapsed.as_micros().min(u128::from(u64::MAX)) as u64)
                            .saturating_mul(per_minute)
                            / 60;
                        let tokens = e.tokens.saturating_add(gained).min(burst);
                        if e.failures == 0 && locked_for.is_zero() && !e.good && tokens >= burst {
                            continue;
                        }
                        let (v6, bits) = match key {
                            SourceKey::V4(a) => (false, u64::from(a)),
                            SourceKey::V6(p) => (true, p),
                        };
                        Carried::Source {
                            v6,
                            bits,
                            failures: e.failures,
                            locked_for,
                            good: e.good,
                            tokens,
                        }
                    }
                    TableKey::Network(net) => {
                        let since_failure = now.saturating_duration_since(e.last_failure);
                        let recent = e.failures > 0 && since_failure < self.lockout_duration;
                        if !recent && locked_for.is_zero() {
                            continue;
                        }
                        Carried::Network {
                            v6: net.family == Family::V6,
                            bits: net.bits,
                            len: net.len,
                            failures: e.failures,
                            locked_for,
                            since_failure,
                        }
                    }
                };
                out.push(record);
            }
        }
        out
    }

    /// Takes one record from [`export`](Self::export) (of another table,
    /// in another process) at `now`. Every value is cut to this table's
    /// limits: a lock to `lockout_duration`, a bucket to `rate_burst`,
    /// strikes below `lockout_after`. A network this table does not track
    /// is ignored. The table's bound holds: a full table forgets in its
    /// usual order.
    pub fn import(&mut self, record: &Carried, now: Instant) {
        let (key, failures, locked_for) = match *record {
            Carried::Source {
                v6,
                bits,
                failures,
                locked_for,
                ..
            } => {
                let key = if v6 {
                    SourceKey::V6(bits)
                } else {
                    match u32::try_from(bits) {
                        Ok(a) => SourceKey::V4(a),
                        Err(_) => return,
                    }
                };
                (TableKey::Source(key), failures, locked_for)
            }
            Carried::Network {
                v6,
                bits,
                len,
                failures,
                locked_for,
                ..
            } => {
                let family = if v6 { Family::V6 } else { Family::V4 };
                let Some(net) = Network::from_parts(family, bits, len) else {
                    return;
                };
                (TableKey::Network(net), failures, locked_for)
            }
        };
        let burst = u64::from(self.burst.get()) * MICRO;
        let duration = self.lockout_duration;
        let after = self.lockout_after.get();
        let i = self.slot(key, now);
        let e = &mut self.lru.nodes[i as usize].entry;
        let locked_for = locked_for.min(duration);
        e.locked_until = (!locked_for.is_zero()).then(|| now + locked_for);
        match *record {
            Carried::Source { good, tokens, .. } => {
                // A source's strikes stay below the lockout threshold
                // (reaching it locks and resets them).
                e.failures = failures.min(after.saturating_sub(1));
                e.good = good;
                e.tokens = tokens.min(burst);
                e.refilled = now;
            }
            Carried::Network { since_failure, .. } => {
                e.failures = failures;
                e.last_failure = now.checked_sub(since_failure.min(duration)).unwrap_or(now);
            }
        }
        if e.locked_until.is_some() {
            self.lru.touch(i, List::Locked);
        } else {
            self.touch(i, now);
        }
    }
}

/// The bounded set of unauthenticated handshakes in progress.
///
/// At capacity one handshake is evicted to make room: the oldest of the
/// network (IPv4 /24, IPv6 /48, see [`Network::widest`]) that holds the
/// most slots, so peers that hold slots open cannot starve a real client
/// from elsewhere: a flood from one network only shortens its own time.
/// Every operation is O(log n). Generic over the handle type so it can be
/// tested without a runtime.
#[derive(Debug)]
pub struct Slots<H> {
    capacity: NonZeroUsize,
    next: u64,
    pending: BTreeMap<u64, (IpAddr, H)>,
    /// Ids of the pending handshakes of each network, oldest first.
    groups: HashMap<Network, BTreeSet<u64>>,
    /// (slots held, oldest id reversed, network): the last is the victim.
    order: BTreeSet<(usize, Reverse<u64>, Network)>,
    full_noted: bool,
}

impl<H> Slots<H> {
    /// An empty set of at most `capacity` handshakes.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Slots {
            capacity,
            next: 0,
            pending: BTreeMap::new(),
            groups: HashMap::new(),
            order: BTreeSet::new(),
            full_noted: false,
        }
    }

    fn order_key(net: Network, ids: &BTreeSet<u64>) -> Option<(usize, Reverse<u64>, Network)> {
        ids.first().map(|&oldest| (ids.len(), Reverse(oldest), net))
    }

    /// Changes the membership of `id` in `net`'s group, keeping `order`.
    fn regroup(&mut self, net: Network, id: u64, add: bool) {
        let ids = self.groups.entry(net).or_default();
        if let Some(k) = Self::order_key(net, ids) {
            self.order.remove(&k);
        }
        if add {
            ids.insert(id);
        } else {
            ids.remove(&id);
        }
        match Self::order_key(net, ids) {
            Some(k) => {
                self.order.insert(k);
            }
            None => {
                self.groups.remove(&net);
            }
        }
    }

    /// Removes and returns the handshake to evict: the oldest of the
    /// network holding the most slots (ties: the network whose oldest
    /// handshake is oldest).
    fn pop_victim(&mut self) -> Option<(IpAddr, H)> {
        let &(_, Reverse(id), _) = self.order.last()?;
        let v = self.pending.remove(&id)?;
        self.regroup(Network::widest(v.0), id, false);
        Some(v)
    }

    /// Changes the bound; excess handshakes are returned for eviction.
    pub fn resize(&mut self, capacity: NonZeroUsize) -> Vec<(IpAddr, H)> {
        self.capacity = capacity;
        let mut out = Vec::new();
        while self.pending.len() > capacity.get() {
            match self.pop_victim() {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }

    /// Reserves an id for a new handshake. If the set is full, one
    /// handshake is removed (see the type's docs) and returned so the
    /// caller can cancel it.
    pub fn reserve(&mut self) -> (u64, Option<(IpAddr, H)>) {
        let evicted = if self.pending.len() >= self.capacity.get() {
            self.pop_victim()
        } else {
            None
        };
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        (id, evicted)
    }

    /// Registers the handshake `id` (from [`reserve`](Self::reserve)).
    pub fn insert(&mut self, id: u64, ip: IpAddr, handle: H) {
        if let Some((old, _)) = self.pending.insert(id, (ip, handle)) {
            self.regroup(Network::widest(old), id, false);
        }
        self.regroup(Network::widest(ip), id, true);
    }

    /// Removes a finished handshake. Idempotent.
    pub fn remove(&mut self, id: u64) {
        if let Some((ip, _)) = self.pending.remove(&id) {
            self.regroup(Network::widest(ip), id, false);
        }
    }

    /// Whether `ip`'s network (see [`Network::widest`]) holds more than its
    /// fair share of the slots: more than the capacity divided by the
    /// number of networks holding any. At capacity such a newcomer is
    /// refused rather than served, so a flood from a few networks drains
    /// from the accept queue instead of churning the slots, while a client
    /// from any other network still takes a slot.
    pub fn over_share(&self, ip: IpAddr) -> bool {
        let held = self
            .groups
            .get(&Network::widest(ip))
            .map_or(0, BTreeSet::len);
        held > 0 && held.saturating_mul(self.groups.len()) > self.capacity.get()
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
        self.groups.clear();
        self.order.clear();
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
            verify_per_second: NonZeroU32::new(1_000_000).unwrap(),
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
        t.succeed(a, t0);
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
        t.succeed(a, t0);
        assert!(!t.has_strikes(a));
        t.fail(ip("10.1.2.3"), t0);
        assert!(!t.has_strikes(ip("10.1.2.3")));
    }

    // Goal: finding 4 — once the table is full, a new source costs O(1):
    // 50,000 new sources into a full 65,536-entry table, and shrinking it
    // to one entry on reload, take well under a second each (a scan per
    // new source took 0.49 ms each, 25 s in all).
    #[test]
    fn forgetting_is_constant_time() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(65_536, 5, 100, 60));
        for i in 0..65_536u32 {
            t.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(t.len(), 65_536);
        let start = Instant::now();
        for i in 0..50_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0000 + i));
            t.admit(a, t0 + Duration::from_millis(u64::from(i)));
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{i} new sources into a full table took {:?}",
                start.elapsed()
            );
        }
        assert_eq!(t.len(), 65_536);
        let start = Instant::now();
        t.reconfigure(&limits(1, 5, 100, 60), t0);
        assert_eq!(t.len(), 1);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "shrink took {:?}",
            start.elapsed()
        );
    }

    // Goal: the table forgets in order: expired locks, then the least
    // recently seen plain entry, then sources in good standing, and a live
    // lock last.
    #[test]
    fn eviction_order_keeps_good_standing_and_locks() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(4, 1, 100, 60));
        let (good, locked) = (ip("192.0.2.1"), ip("198.51.100.1"));
        t.admit(good, t0);
        t.succeed(good, t0);
        assert!(t.is_good(good));
        // One failure locks the source (after = 1), adding its /24 entry.
        t.fail(locked, t0);
        assert!(t.is_locked(locked, t0));
        for i in 0..1000u32 {
            let a = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i + 1) << 64));
            t.admit(a, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(
            t.is_good(good),
            "a flood of new sources forgot good standing"
        );
        assert!(t.is_locked(locked, t0 + Duration::from_secs(1)));
    }

    // Goal: failures from many /64s of one /48 lock the /56 and the /48 at
    // their thresholds; a locked network refuses its fresh sources but not
    // one in good standing; a network's count is forgotten after
    // lockout_duration without failures; IPv4 aggregates per /24.
    #[test]
    fn networks_lock_at_their_thresholds() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(4096, 5, 100, 60));
        let insider = ip("2001:db8:7:ffff::1");
        t.admit(insider, t0);
        t.succeed(insider, t0);
        // 19 failures from distinct /64s of one /56: not yet.
        for n in 0..19u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, n, 0, 0, 0, 1));
            assert_eq!(t.fail(a, t0), Strike::Counted { failures: 1 });
            assert_eq!(t.take_locked_network(), None);
        }
        let fresh = ip("2001:db8:7:99::1");
        assert_eq!(t.admit(fresh, t0), Admit::Yes);
        t.fail(ip("2001:db8:7:19::1"), t0);
        let net = t.take_locked_network().unwrap();
        assert_eq!(net.to_string(), "2001:db8:7::/56");
        assert_eq!(t.admit(ip("2001:db8:7:98::1"), t0), Admit::Locked);
        assert!(t.is_network_locked(fresh, t0));
        // Good standing passes a network lock; another /56 is not locked.
        assert_eq!(t.admit(insider, t0), Admit::Yes);
        assert_eq!(t.admit(ip("2001:db8:7:100::1"), t0), Admit::Yes);
        // 80 failures across /56s lock the /48.
        let mut locked48 = None;
        for n in 0..80u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                8,
                n << 8,
                0,
                0,
                0,
                1,
            ));
            t.fail(a, t0);
            if let Some(n) = t.take_locked_network() {
                locked48 = Some(n.to_string());
            }
        }
        assert_eq!(locked48.as_deref(), Some("2001:db8:8::/48"));
        // Counts are forgotten after lockout_duration without failures.
        for n in 0..39u8 {
            t.fail(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, n)), t0);
        }
        let later = t0 + Duration::from_secs(61);
        t.fail(ip("203.0.113.200"), later);
        assert_eq!(t.take_locked_network(), None);
        for n in 0..39u8 {
            t.fail(
                IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 100 + n)),
                later,
            );
        }
        assert_eq!(
            t.take_locked_network().unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(t.admit(ip("203.0.113.250"), later), Admit::Locked);
    }

    // Goal: the verification budget is shared by sources not in good
    // standing, refills with time, is noted at most once per interval, and
    // does not apply to good-standing or exempt sources.
    #[test]
    fn verification_budget() {
        let t0 = Instant::now();
        let mut l = limits(4096, 5, 100, 60);
        l.verify_per_second = NonZeroU32::new(10).unwrap();
        let mut t = SourceTable::new(&l);
        let good = ip("192.0.2.1");
        t.admit(good, t0);
        t.succeed(good, t0);
        let burst = 10 * VERIFY_BURST_SECONDS - 1;
        for i in 0..burst {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xc633_6400 + i));
            assert_eq!(t.admit(a, t0), Admit::Yes, "{i}");
        }
        assert_eq!(
            t.admit(ip("198.51.101.1"), t0),
            Admit::OverBudget { first: true }
        );
        assert_eq!(
            t.admit(ip("198.51.101.2"), t0),
            Admit::OverBudget { first: false }
        );
        assert_eq!(t.admit(good, t0), Admit::Yes);
        assert_eq!(t.admit(ip("10.9.9.9"), t0), Admit::Yes);
        // 10 per second: one token per 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(t.admit(ip("198.51.101.3"), t1), Admit::Yes);
        assert_eq!(
            t.admit(ip("198.51.101.4"), t1),
            Admit::OverBudget { first: false }
        );
        let t2 = t0 + BUDGET_NOTE_INTERVAL + Duration::from_secs(3);
        for i in 0..=burst {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xc633_6500 + i));
            assert_eq!(t.admit(a, t2), Admit::Yes, "{i}");
        }
        assert_eq!(
            t.admit(ip("198.51.101.5"), t2),
            Admit::OverBudget { first: true }
        );
    }

    // Goal: at capacity the slots evict the oldest handshake of the
    // network holding the most slots, not the oldest overall.
    #[test]
    fn slots_evict_from_the_busiest_network() {
        let mut s: Slots<u32> = Slots::new(NonZeroUsize::new(4).unwrap());
        let operator = ip("192.0.2.1");
        let (i, _) = s.reserve();
        s.insert(i, operator, 0);
        for n in 1..4u32 {
            let (i, e) = s.reserve();
            assert!(e.is_none());
            s.insert(
                i,
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001, 0xdb8, 1, n as u16, 0, 0, 0, 1,
                )),
                n,
            );
        }
        for n in 4..20u32 {
            let (i, e) = s.reserve();
            let (ip, h) = e.unwrap();
            assert!(ip.is_ipv6(), "evicted the operator");
            assert_eq!(h, n - 3, "not the oldest of the busiest network");
            s.insert(
                i,
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001, 0xdb8, 1, n as u16, 0, 0, 0, 1,
                )),
                n,
            );
        }
        // Fair shares: 4 slots, 2 networks: the one holding 3 is over its
        // share, the one holding 1 (and one holding none) is not.
        assert!(s.over_share(ip("2001:db8:1:ff::1")));
        assert!(!s.over_share(operator));
        assert!(!s.over_share(ip("198.51.100.1")));
        // Equal counts: the network whose oldest handshake is oldest.
        let mut s: Slots<u32> = Slots::new(NonZeroUsize::new(2).unwrap());
        let (i, _) = s.reserve();
        s.insert(i, ip("192.0.2.1"), 0);
        let (i, _) = s.reserve();
        s.insert(i, ip("198.51.100.1"), 1);
        assert_eq!(s.reserve().1.map(|(_, h)| h), Some(0));
    }

    // Goal: what a table exports and a fresh table imports keeps every
    // lockout (source and network) with its remaining time, a
    // rate-limited source limited, strikes and good standing; untouched
    // sources are not exported; locks end when they would have.
    #[test]
    fn export_import_keeps_locks_rates_and_standing() {
        let t0 = Instant::now();
        let l = limits(4096, 3, 2, 60);
        let mut old = SourceTable::new(&l);
        let (locked, limited, struck, good, idle) = (
            ip("192.0.2.1"),
            ip("198.51.100.7"),
            ip("2001:db8:5:6::1"),
            ip("203.0.113.9"),
            ip("203.0.113.10"),
        );
        for _ in 0..3 {
            old.fail(locked, t0);
        }
        assert!(old.is_locked(locked, t0));
        assert_eq!(old.admit(limited, t0), Admit::Yes);
        assert_eq!(old.admit(limited, t0), Admit::Yes);
        assert_eq!(old.admit(limited, t0), Admit::RateLimited { first: true });
        old.fail(struck, t0);
        old.succeed(good, t0);
        // 24 failures from one /24 (8 x 3) lock it.
        for n in 0..24u8 {
            old.fail(IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, n)), t0);
        }
        let net = old.take_locked_network().unwrap();
        assert_eq!(net.to_string(), "198.18.0.0/24");
        // The idle source exists in the old table but holds nothing.
        let t1 = t0 + Duration::from_secs(10);
        old.admit(idle, t0);
        let records = old.export(t1);
        assert!(records.len() <= old.capacity());
        let mut new = SourceTable::new(&l);
        for r in &records {
            new.import(r, t1);
        }
        assert!(new.is_locked(locked, t1));
        assert!(new.is_locked(locked, t0 + Duration::from_secs(59)));
        assert!(!new.is_locked(locked, t0 + Duration::from_secs(61)));
        assert!(new.is_network_locked(ip("198.18.0.200"), t1));
        assert_eq!(new.admit(ip("198.18.0.201"), t1), Admit::Locked);
        // 60 per minute, burst 2: 10 s later the bucket is full again in
        // both tables; just after the refusal it is empty in both.
        let mut just_after = SourceTable::new(&l);
        for r in &old.export(t0) {
            just_after.import(r, t0);
        }
        assert_eq!(
            just_after.admit(limited, t0),
            Admit::RateLimited { first: true }
        );
        assert!(just_after.is_locked(locked, t0));
        assert!(new.has_strikes(struck));
        assert!(new.is_good(good));
        assert!(!new.has_strikes(idle) && !new.is_good(idle));
        let idle_key = SourceKey::of(idle);
        assert!(
            !records
                .iter()
                .any(|r| matches!(r, Carried::Source { v6: false, bits, .. }
                if SourceKey::V4(*bits as u32) == idle_key)),
            "an idle source was exported"
        );
        // Strikes continue: two more failures of `struck` (after = 3) lock it.
        new.fail(struck, t1);
        assert_eq!(new.fail(struck, t1), Strike::LockedOut { failures: 3 });
    }

    // Goal: importing more records than the table holds keeps its bound
    // and keeps the locks over plain entries; values beyond this table's
    // limits are cut to them.
    #[test]
    fn import_is_bounded_and_cut_to_limits() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(8, 3, 2, 60));
        for i in 0..1000u32 {
            t.import(
                &Carried::Source {
                    v6: false,
                    bits: u64::from(0xc000_0000 + i),
                    failures: u32::MAX,
                    locked_for: if i < 4 {
                        Duration::from_secs(86_400)
                    } else {
                        Duration::ZERO
                    },
                    good: false,
                    tokens: u64::MAX,
                },
                t0,
            );
            assert!(t.len() <= 8);
        }
        for i in 0..4u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0000 + i));
            assert!(t.is_locked(a, t0), "{a}");
            // Cut to lockout_duration (60 s).
            assert!(!t.is_locked(a, t0 + Duration::from_secs(61)), "{a}");
        }
        // An untracked network length or set host bits: ignored.
        t.import(
            &Carried::Network {
                v6: false,
                bits: 0xc633_6400,
                len: 16,
                failures: 1,
                locked_for: Duration::from_secs(5),
                since_failure: Duration::ZERO,
            },
            t0,
        );
        assert!(!t.is_network_locked(ip("198.51.100.1"), t0));
        assert!(Network::from_parts(Family::V4, 0xc633_6401, 24).is_none());
        assert!(Network::from_parts(Family::V4, 1 << 40, 24).is_none());
        assert_eq!(
            Network::from_parts(Family::V6, 0x2001_0db8_0007_0000, 48).map(|n| n.to_string()),
            Some("2001:db8:7::/48".to_string())
        );
    }

    // Goal: the mirror's setters (fed by the network process's events)
    // lock a source or a network for lockout_duration, keep an existing
    // lock's end, empty a bucket, and leave exempt sources alone.
    #[test]
    fn mirror_setters_lock_and_drain() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(&limits(64, 5, 2, 60));
        let a = ip("192.0.2.1");
        t.lock_source(a, t0);
        t.lock_source(a, t0 + Duration::from_secs(30));
        assert!(t.is_locked(a, t0 + Duration::from_secs(59)));
        assert!(
            !t.is_locked(a, t0 + Duration::from_secs(61)),
            "relocking moved the end"
        );
        let net = Network::of(ip("198.51.100.9"), Family::V4, 24).unwrap();
        t.lock_network(net, t0);
        assert_eq!(t.admit(ip("198.51.100.1"), t0), Admit::Locked);
        let b = ip("203.0.113.5");
        t.drain_bucket(b, t0);
        assert_eq!(t.admit(b, t0), Admit::RateLimited { first: true });
        assert_eq!(t.admit(b, t0 + Duration::from_secs(1)), Admit::Yes);
        t.lock_source(ip("10.1.1.1"), t0);
        t.drain_bucket(ip("10.1.1.1"), t0);
        assert_eq!(t.admit(ip("10.1.1.1"), t0), Admit::Yes);
    }
}
