//! One count pool as a Microsoft host keeps it (SPEC §6): the client machine
//! IDs seen in the last 30 days, at most 2 × the highest threshold any client
//! of the pool asked for, least recently seen evicted first. Pure: time is
//! passed in (unix milliseconds).

use crate::protocol::guid::Guid;
use std::collections::{BTreeSet, HashMap};

/// How long an entry lives without renewal.
pub const TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;
pub use crate::protocol::policy::MAX_N_POLICY;
/// A clock reading this far behind the latest one is a step back of the
/// clock, not two readings racing.
pub const STEP_BACK_MS: i64 = 1000;

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
    /// The latest time this pool was given (or held an entry at): a time
    /// well before it means the clock stepped back.
    latest: i64,
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

    /// Follows a step of the clock. Forward, nothing to do: the entries
    /// age by the step, as they would had the time passed. Back (more than
    /// [`STEP_BACK_MS`] behind the latest time), every entry moves back by
    /// the step, so it keeps its age and still expires 30 days after it
    /// was seen, and no entry is seen in the future.
    fn follow_clock(&mut self, now: i64) {
        let step = self.latest.saturating_sub(now);
        if step > STEP_BACK_MS {
            let moved: Vec<(i64, Guid)> = self
                .order
                .iter()
                .map(|&(t, g)| (t.saturating_sub(step), g))
                .collect();
            self.order = moved.iter().copied().collect();
            self.seen = moved.into_iter().map(|(t, g)| (g, t)).collect();
            self.latest = now;
        } else {
            self.latest = self.latest.max(now);
        }
    }

    /// Drops entries last seen 30 days or more before `now` (after
    /// following a step of the clock back).
    pub fn expire(&mut self, now: i64) {
        self.follow_clock(now);
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

    /// Takes an entry as a store or a log holds it: a CMID already held
    /// keeps the later of its two times; a new one older than everything
    /// held when the pool is full is ignored, as observe would have evicted
    /// it, and otherwise evicts the oldest. Nothing expires here.
    pub fn restore(&mut self, cmid: Guid, last_seen: i64) {
        if let Some(&t) = self.seen.get(&cmid) {
            if last_seen > t {
                self.order.remove(&(t, cmid));
                self.order.insert((last_seen, cmid));
                self.seen.insert(cmid, last_seen);
                self.latest = self.latest.max(last_seen);
            }
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
        self.latest = self.latest.max(last_seen);
    }

    /// Sets the capacity learnt from the store (never shrinks).
    pub fn grow_to(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// A pool as a backend stored it: `capacity` and its rows in any
    /// order. The pool rules decide what is kept (the newest `capacity`, by
    /// last seen then CMID); the rows they drop come back too, for the
    /// backend to delete. Nothing expires here: that is the caller's `now`.
    pub fn load(capacity: usize, rows: &[(Guid, i64)]) -> (Self, Vec<Guid>) {
        let mut w = Self::with_capacity(capacity);
        for &(g, t) in rows {
            w.restore(g, t);
        }
        let dropped = rows
            .iter()
            .filter(|(g, _)| !w.contains(g))
            .map(|&(g, _)| g)
            .collect();
        (w, dropped)
    }

    /// What a backend must write to turn the pool `before` (as it stored
    /// it) into this one: entries new or seen again, entries gone (evicted
    /// or expired), and the capacity when it grew.
    pub fn delta_from(&self, before: &Window) -> PoolDelta {
        let upserted = self
            .order
            .iter()
            .filter(|&&(t, g)| before.seen.get(&g) != Some(&t))
            .map(|&(t, g)| (g, t))
            .collect();
        let removed = before
            .order
            .iter()
            .filter(|(_, g)| !self.seen.contains_key(g))
            .map(|&(_, g)| g)
            .collect();
        PoolDelta {
            upserted,
            removed,
            capacity: (self.capacity > before.capacity).then_some(self.capacity as u32),
        }
    }
}

/// The change to a stored pool that brings it to what the pool rules hold
/// (see [`Window::delta_from`]); backends persist it as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDelta {
    /// Entries new or seen again, with their last-seen times.
    pub upserted: Vec<(Guid, i64)>,
    /// Entries no longer in the pool: evicted, expired, or dropped when
    /// the stored rows were loaded.
    pub removed: Vec<Guid>,
    /// The pool's capacity, when it grew.
    pub capacity: Option<u32>,
}

impl PoolDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty() && self.capacity.is_none()
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

    #[test]
    fn restoring_a_held_cmid_keeps_its_later_time() {
        let mut w = Window::with_capacity(3);
        w.restore(id(1), 50);
        w.restore(id(1), 20);
        w.restore(id(1), 70);
        assert_eq!(w.entries().collect::<Vec<_>>(), vec![(id(1), 70)]);
    }

    #[test]
    fn load_keeps_what_the_rules_keep_and_names_the_rest() {
        let rows = [
            (id(1), 50),
            (id(2), 10),
            (id(3), 40),
            (id(4), 30),
            (id(5), 30),
        ];
        let (w, mut dropped) = Window::load(3, &rows);
        dropped.sort();
        assert_eq!(
            dropped,
            vec![id(2), id(4)],
            "ties go by CMID, as the pool orders"
        );
        assert_eq!(w.len(), 3);
        assert_eq!(w.capacity(), 3);
    }

    #[test]
    fn the_delta_is_what_changed_and_nothing_else() {
        let (before, _) = Window::load(4, &[(id(1), 10), (id(2), 20), (id(3), 30), (id(4), 40)]);
        let mut w = before.clone();
        w.observe(id(2), 50, 2); // seen again
        w.observe(id(9), 60, 2); // new: evicts id 1, the oldest
        let d = w.delta_from(&before);
        assert_eq!(d.upserted, vec![(id(2), 50), (id(9), 60)]);
        assert_eq!(d.removed, vec![id(1)]);
        assert_eq!(d.capacity, None);
        // 30 days on, everything but the two refreshed expires; a higher
        // threshold grows the capacity.
        let before = w.clone();
        w.observe(id(7), 40 + TTL_MS, 25);
        let d = w.delta_from(&before);
        assert_eq!(d.upserted, vec![(id(7), 40 + TTL_MS)]);
        let mut removed = d.removed.clone();
        removed.sort();
        assert_eq!(removed, vec![id(3), id(4)]);
        assert_eq!(d.capacity, Some(50));
        assert!(w.delta_from(&w).is_empty());
    }

    #[test]
    fn a_step_back_keeps_every_entry_its_age() {
        let mut w = Window::default();
        w.observe(id(1), 100 * DAY, 25);
        w.observe(id(2), 110 * DAY, 25);
        assert_eq!(w.count_at(111 * DAY), 2);
        // The clock steps back a day at day 111: it reads day 110.
        assert_eq!(w.count_at(110 * DAY), 2);
        let ages: Vec<_> = w.entries().map(|(_, t)| 110 * DAY - t).collect();
        assert_eq!(ages, vec![11 * DAY, DAY], "ages kept; none in the future");
        // id 1 expires 30 days after it was seen (day 129 on the stepped
        // clock, day 130 on the old), not a day later.
        assert_eq!(w.count_at(129 * DAY - 1), 2);
        assert_eq!(w.count_at(129 * DAY), 1);
        // A renewal after the step never moves an entry back.
        w.observe(id(2), 129 * DAY, 25);
        assert!(w.entries().all(|(_, t)| t <= 129 * DAY));
    }

    #[test]
    fn a_step_forward_expires_what_the_rules_expire_and_no_more() {
        let mut w = Window::default();
        w.observe(id(1), 0, 25);
        w.observe(id(2), 10 * DAY, 25);
        // Forward 21 days from day 10: id 1 is 31 days old, id 2 21.
        assert_eq!(w.count_at(31 * DAY), 1);
        assert!(w.contains(&id(2)) && !w.contains(&id(1)));
        assert_eq!(w.entries().next(), Some((id(2), 10 * DAY)), "not moved");
    }

    #[test]
    fn readings_racing_by_a_few_milliseconds_are_not_a_step() {
        let mut w = Window::default();
        w.observe(id(1), 1000 * DAY, 25);
        w.observe(id(2), 1000 * DAY - 5, 25);
        assert_eq!(
            w.entries().map(|(_, t)| t).collect::<Vec<_>>(),
            vec![1000 * DAY - 5, 1000 * DAY]
        );
    }

    #[test]
    fn a_step_back_while_stopped_is_seen_from_the_restored_entries() {
        let mut w = Window::with_capacity(10);
        w.restore(id(1), 20 * DAY);
        w.restore(id(2), 5 * DAY);
        // Restarted with the clock a day behind the newest entry.
        assert_eq!(w.count_at(19 * DAY), 2);
        assert_eq!(w.entries().last(), Some((id(1), 19 * DAY)));
        assert_eq!(w.count_at(34 * DAY), 1, "id 2 at its 30 days");
    }
}
