//! One count pool as a Microsoft host keeps it (SPEC §6): the client machine
//! IDs seen in the last 30 days, at most 2 × the highest threshold any client
//! of the pool asked for, least recently seen evicted first. Pure: time is
//! passed in (unix milliseconds).

use crate::protocol::guid::Guid;
use std::collections::{BTreeSet, HashMap};

/// How long an entry lives without renewal.
pub const TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// The largest N_Policy the host accepts (larger is refused as invalid).
pub const MAX_N_POLICY: u32 = 1000;

/// What one observation did, enough to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Live entries after the caller's insert or refresh.
    pub count: u32,
    /// The caller's previous last-seen time, if it was already live.
    pub previous: Option<i64>,
    /// The entry evicted to make room, with its last-seen time.
    pub evicted: Option<(Guid, i64)>,
    /// Capacity before this observation (it may have grown).
    pub previous_capacity: usize,
}

/// A pool of client machine IDs with their last-seen times.
#[derive(Debug, Clone, Default)]
pub struct Window {
    seen: HashMap<Guid, i64>,
    order: BTreeSet<(i64, Guid)>,
    capacity: usize,
}

impl Window {
    /// An empty pool that holds up to `capacity` IDs until a client asks for more.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Live entries (as of the last call that was given the time).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn contains(&self, cmid: &Guid) -> bool {
        self.seen.contains_key(cmid)
    }

    /// Entries, least recently seen first.
    pub fn entries(&self) -> impl Iterator<Item = (Guid, i64)> + '_ {
        self.order.iter().map(|&(t, g)| (g, t))
    }

    /// Drops entries last seen 30 days or more before `now`.
    pub fn expire(&mut self, now: i64) {
        while let Some(&(t, g)) = self.order.first() {
            if t > now - TTL_MS {
                break;
            }
            self.order.pop_first();
            self.seen.remove(&g);
        }
    }

    /// The live count at `now` without recording anything.
    pub fn count_at(&mut self, now: i64) -> u32 {
        self.expire(now);
        self.seen.len() as u32
    }

    /// Records that `cmid` asked at `now` with threshold `n_policy`.
    pub fn observe(&mut self, cmid: Guid, now: i64, n_policy: u32) -> Observed {
        self.expire(now);
        let previous_capacity = self.capacity;
        let wanted = 2 * n_policy.clamp(1, MAX_N_POLICY) as usize;
        self.capacity = self.capacity.max(wanted);
        let previous = self.seen.get(&cmid).copied();
        let mut evicted = None;
        match previous {
            Some(t) => {
                self.order.remove(&(t, cmid));
            }
            None => {
                if self.seen.len() >= self.capacity
                    && let Some((t, g)) = self.order.pop_first()
                {
                    self.seen.remove(&g);
                    evicted = Some((g, t));
                }
            }
        }
        // A clock that stepped back never makes an entry older than it was.
        let at = previous.map_or(now, |t| t.max(now));
        self.seen.insert(cmid, at);
        self.order.insert((at, cmid));
        Observed {
            count: self.seen.len() as u32,
            previous,
            evicted,
            previous_capacity,
        }
    }

    /// Reverts an observation of `cmid` (when it could not be made durable).
    /// Later observations of other IDs are left as they are.
    pub fn undo(&mut self, cmid: Guid, o: &Observed) {
        if let Some(t) = self.seen.remove(&cmid) {
            self.order.remove(&(t, cmid));
        }
        if let Some(t) = o.previous {
            self.seen.insert(cmid, t);
            self.order.insert((t, cmid));
        }
        if let Some((g, t)) = o.evicted
            && !self.seen.contains_key(&g)
            && self.seen.len() < self.capacity
        {
            self.seen.insert(g, t);
            self.order.insert((t, g));
        }
        self.capacity = self.capacity.max(o.previous_capacity);
    }

    /// Restores an entry from the store (start-up); older than what is held
    /// or beyond capacity is ignored, as observe would have evicted it.
    pub fn restore(&mut self, cmid: Guid, last_seen: i64) {
        if self.seen.contains_key(&cmid) {
            return;
        }
        if self.seen.len() >= self.capacity {
            match self.order.first() {
                Some(&(t, g)) if (t, g) < (last_seen, cmid) => {
                    self.order.pop_first();
                    self.seen.remove(&g);
                }
                _ => return,
            }
        }
        self.seen.insert(cmid, last_seen);
        self.order.insert((last_seen, cmid));
    }

    /// Sets the capacity learnt from the store (never shrinks).
    pub fn grow_to(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Guid {
        Guid::from_u128(n)
    }

    const DAY: i64 = 24 * 60 * 60 * 1000;

    #[test]
    fn servers_count_to_five_and_repeats_do_not_count() {
        let mut w = Window::default();
        for n in 1..=5 {
            assert_eq!(w.observe(id(n), n as i64, 5).count, n as u32);
        }
        assert_eq!(w.observe(id(3), 10, 5).count, 5, "a repeat does not count");
        assert_eq!(w.capacity(), 10);
    }

    #[test]
    fn capacity_is_twice_the_highest_threshold_and_never_shrinks() {
        let mut w = Window::default();
        for n in 0..30 {
            w.observe(id(n), n as i64, 5);
        }
        assert_eq!(w.len(), 10, "servers only: 10 entries");
        for n in 100..160 {
            w.observe(id(n), n as i64, 25);
        }
        assert_eq!(w.len(), 50);
        assert_eq!(w.capacity(), 50);
        w.observe(id(999), 1000, 5);
        assert_eq!(w.capacity(), 50);
        // The oldest were evicted: the last 50 remain.
        assert!(!w.contains(&id(109)) && w.contains(&id(999)) && w.contains(&id(159)));
    }

    #[test]
    fn entries_expire_after_thirty_days_and_renewal_restarts_the_clock() {
        let mut w = Window::default();
        w.observe(id(1), 0, 25);
        w.observe(id(2), 10 * DAY, 25);
        assert_eq!(w.observe(id(1), 20 * DAY, 25).count, 2, "renewed at day 20");
        assert_eq!(w.count_at(30 * DAY + 1), 2);
        assert_eq!(w.count_at(40 * DAY), 1, "id 2 dropped at day 40");
        assert_eq!(
            w.count_at(50 * DAY),
            0,
            "id 1 dropped 30 days after its renewal"
        );
    }

    #[test]
    fn undo_restores_the_previous_state() {
        let mut w = Window::default();
        for n in 0..10 {
            w.observe(id(n), n as i64, 5);
        }
        let before: Vec<_> = w.entries().collect();
        let o = w.observe(id(77), 100, 5);
        assert_eq!(o.evicted, Some((id(0), 0)));
        w.undo(id(77), &o);
        assert_eq!(w.entries().collect::<Vec<_>>(), before);
        let o = w.observe(id(4), 200, 5);
        w.undo(id(4), &o);
        assert_eq!(w.entries().collect::<Vec<_>>(), before);
    }

    #[test]
    fn restore_keeps_the_most_recent_within_capacity() {
        let mut w = Window::with_capacity(3);
        for (n, t) in [(1, 50), (2, 10), (3, 40), (4, 30), (5, 20)] {
            w.restore(id(n), t);
        }
        let mut kept: Vec<_> = w.entries().map(|(g, _)| g).collect();
        kept.sort();
        assert_eq!(kept, vec![id(1), id(3), id(4)]);
    }
}
