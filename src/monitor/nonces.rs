//! The nonces the monitor has issued to one network process and not yet
//! seen used: a fixed-capacity table, one per network process (a fresh
//! process starts with an empty one).
//!
//! Every nonce comes from the OS CSPRNG, is handed out once, and is good
//! for one check: [`NonceTable::take`] removes it whatever the outcome.
//! Each expires at the latest deadline a handshake greeted with it can
//! have: the network process uses a nonce within [`NONCE_KEEP`] of
//! receiving it, the handshake then lasts at most `handshake_timeout`,
//! and [`NONCE_SLACK`] covers the IPC in between. The monitor cannot see
//! when the handshake began (that is the network process's clock), so it
//! bounds it from above.
//!
//! A handle names a slot and the issue it was made in (`seq << 32 |
//! slot`); sequence numbers only grow, so a handle is never issued twice
//! in one table, and one from the future (never issued) is told apart
//! from one that was issued and is gone (used, given back or expired).

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::ipc::{IssuedNonce, NONCE_KEEP, NONCE_SLACK};
use crate::wire::NONCE_LEN;

/// Why [`NonceTable::take`] gave no nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// The handle was never issued by this table: the network process
    /// made it up.
    NeverIssued,
    /// Issued, but already used, given back or expired.
    Stale,
}

/// Why [`NonceTable::issue`] issued nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueError {
    /// The table holds its capacity of live nonces.
    Full,
    /// The OS random generator failed (never a weaker nonce).
    Random,
}

#[derive(Debug)]
struct Entry {
    handle: u64,
    nonce: [u8; NONCE_LEN],
    expires: Instant,
}

/// Outstanding nonces, at most `capacity` of them.
#[derive(Debug)]
pub struct NonceTable {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    live: usize,
    capacity: usize,
    next_seq: u64,
    lifetime: Duration,
}

impl NonceTable {
    /// An empty table holding at most `capacity` live nonces, each
    /// expiring `NONCE_KEEP + handshake_timeout + NONCE_SLACK` after it
    /// is issued. Slots are allocated as they are first needed.
    pub fn new(capacity: NonZeroUsize, handshake_timeout: Duration) -> NonceTable {
        NonceTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            // Slot numbers are 32 bits; config bounds keep it far below.
            capacity: capacity.get().min(u32::MAX as usize),
            next_seq: 1,
            lifetime: NONCE_KEEP + handshake_timeout + NONCE_SLACK,
        }
    }

    /// The capacity for a network process allowed `max_handshakes`
    /// handshakes at once: one nonce per handshake in progress, plus the
    /// batch it keeps at hand, one being delivered, and evicted or closed
    /// handshakes whose nonce is on its way back.
    pub fn capacity_for(max_handshakes: NonZeroUsize) -> NonZeroUsize {
        max_handshakes.saturating_add(4 * crate::ipc::NONCE_BATCH)
    }

    /// Adopts a reloaded config's bound and deadline. Live nonces stay
    /// (their expiry is unchanged); a smaller bound only stops issuing
    /// until enough are gone.
    pub fn reconfigure(&mut self, capacity: NonZeroUsize, handshake_timeout: Duration) {
        self.capacity = capacity.get().min(u32::MAX as usize);
        self.lifetime = NONCE_KEEP + handshake_timeout + NONCE_SLACK;
    }

    /// Live nonces (issued, not used, given back or swept as expired).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no nonce is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The bound on [`len`](Self::len).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots allocated so far: never more than the largest capacity the
    /// table has had.
    pub fn allocated(&self) -> usize {
        self.slots.len()
    }

    /// Issues one fresh nonce at `now`.
    pub fn issue(&mut self, now: Instant) -> Result<IssuedNonce, IssueError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| IssueError::Random)?;
        self.insert(nonce, now)
    }

    /// Enters `nonce` (fresh from the OS generator) into a free slot.
    fn insert(&mut self, nonce: [u8; NONCE_LEN], now: Instant) -> Result<IssuedNonce, IssueError> {
        if self.live >= self.capacity {
            self.sweep(now);
            if self.live >= self.capacity {
                return Err(IssueError::Full);
            }
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.slots.len() < self.capacity => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
            None => {
                // Every allocated slot is live or the bound shrank below
                // the allocation; sweeping made room above, so a free slot
                // exists unless the capacity was lowered on reload.
                self.sweep(now);
                self.free.pop().ok_or(IssueError::Full)?
            }
        };
        let handle = (self.next_seq << 32) | u64::from(slot);
        self.next_seq += 1;
        self.slots[slot as usize] = Some(Entry {
            handle,
            nonce,
            expires: now + self.lifetime,
        });
        self.live += 1;
        Ok((handle, nonce))
    }

    /// Issues up to `count` nonces, at most a batch (fewer when full; none
    /// when the random generator fails, which the second value reports).
    /// The batch's random bytes come from one call to the OS generator.
    pub fn issue_many(&mut self, count: usize, now: Instant) -> (Vec<IssuedNonce>, bool) {
        let count = count.min(crate::ipc::NONCE_BATCH);
        let mut random = [0u8; NONCE_LEN * crate::ipc::NONCE_BATCH];
        if getrandom::getrandom(&mut random[..count * NONCE_LEN]).is_err() {
            return (Vec::new(), true);
        }
        let mut out = Vec::with_capacity(count);
        for chunk in random.chunks_exact(NONCE_LEN).take(count) {
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(chunk);
            match self.insert(nonce, now) {
                Ok(n) => out.push(n),
                Err(_) => break,
            }
        }
        (out, false)
    }

    /// Consumes nonce `handle`: it is gone after this whatever the
    /// outcome, so a reply can be checked against it once.
    pub fn take(&mut self, handle: u64, now: Instant) -> Result<[u8; NONCE_LEN], TakeError> {
        if handle >> 32 >= self.next_seq || handle >> 32 == 0 {
            return Err(TakeError::NeverIssued);
        }
        let entry = self.remove(handle).ok_or(TakeError::Stale)?;
        if entry.expires <= now {
            return Err(TakeError::Stale);
        }
        Ok(entry.nonce)
    }

    /// Gives nonce `handle` back unused (its handshake ended without a
    /// reply). Unknown handles are ignored.
    pub fn release(&mut self, handle: u64) {
        let _ = self.remove(handle);
    }

    fn remove(&mut self, handle: u64) -> Option<Entry> {
        let slot = (handle & u64::from(u32::MAX)) as usize;
        let cell = self.slots.get_mut(slot)?;
        if cell.as_ref().is_some_and(|e| e.handle == handle) {
            self.live -= 1;
            self.free.push(slot as u32);
            cell.take()
        } else {
            None
        }
    }

    /// Frees every expired slot (only when the table is full, so the
    /// cost, one pass over at most `capacity` slots, is paid rarely).
    fn sweep(&mut self, now: Instant) {
        for (i, cell) in self.slots.iter_mut().enumerate() {
            if cell.as_ref().is_some_and(|e| e.expires <= now) {
                *cell = None;
                self.live -= 1;
                self.free.push(i as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn table(cap: usize) -> NonceTable {
        NonceTable::new(NonZeroUsize::new(cap).unwrap(), Duration::from_secs(5))
    }

    // Goal: a nonce is good for one take; a second take, a made-up handle
    // and a handle from the future are refused, and told apart.
    #[test]
    fn each_nonce_is_taken_once() {
        let now = Instant::now();
        let mut t = table(4);
        let (h, n) = t.issue(now).unwrap();
        assert_eq!(t.take(h, now), Ok(n));
        assert_eq!(t.take(h, now), Err(TakeError::Stale));
        assert_eq!(t.take(0, now), Err(TakeError::NeverIssued));
        assert_eq!(t.take(h + (5 << 32), now), Err(TakeError::NeverIssued));
        // A handle naming a slot that holds another nonce is stale.
        let (h2, _) = t.issue(now).unwrap();
        assert_eq!(h2 & 0xffff_ffff, h & 0xffff_ffff, "slot reused");
        assert_eq!(t.take(h, now), Err(TakeError::Stale));
        assert!(t.take(h2, now).is_ok());
    }

    // Goal: a nonce expires at its handshake's latest deadline, and
    // taking an expired one consumes it.
    #[test]
    fn nonces_expire() {
        let now = Instant::now();
        let mut t = table(4);
        let (h, _) = t.issue(now).unwrap();
        let life = NONCE_KEEP + Duration::from_secs(5) + NONCE_SLACK;
        let (h2, n2) = t.issue(now).unwrap();
        assert_eq!(t.take(h2, now + life - Duration::from_millis(1)), Ok(n2));
        assert_eq!(t.take(h, now + life), Err(TakeError::Stale));
        assert!(t.is_empty());
    }

    // Goal: the table never holds more than its capacity, whatever is
    // asked of it; expired nonces make room, live ones do not; slots are
    // never allocated beyond the capacity.
    #[test]
    fn bounded() {
        let now = Instant::now();
        let mut t = table(8);
        let (got, random_failed) = t.issue_many(100, now);
        assert_eq!((got.len(), random_failed), (8, false));
        assert!(t.issue_many(5, now).0.is_empty());
        assert_eq!(t.issue(now), Err(IssueError::Full));
        for _ in 0..10_000 {
            let _ = t.issue(now);
        }
        assert_eq!((t.len(), t.allocated()), (8, 8));
        t.release(got[0].0);
        assert_eq!(t.len(), 7);
        assert!(t.issue(now).is_ok());
        let later = now + Duration::from_secs(3600);
        let (again, _) = t.issue_many(100, later);
        assert_eq!(again.len(), 8, "expired ones were swept");
        assert_eq!(t.issue_many(100, later).0.len(), 0);
        assert_eq!(t.allocated(), 8);
        // All nonces differ (from the OS generator).
        let mut all: Vec<_> = got.iter().chain(again.iter()).map(|(_, n)| *n).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 16);
    }
}
