//! The count pools in memory, sharded by pool in a `DashMap`: the hot
//! path's count for a store whose pools live in this process.

use super::window::{self, Observed, Window};
use super::{Counted, LoadedPool};
use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use dashmap::DashMap;

/// How the host reports counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountMode {
    /// Count distinct client machine IDs as a Microsoft host does (default).
    Real,
    /// Always report this count and remember no pool (an emulator's answer;
    /// every client at or below it activates at once).
    Fixed(u32),
}

impl std::str::FromStr for CountMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "real" => Ok(Self::Real),
            _ => s
                .strip_prefix("fixed:")
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=window::MAX_N_POLICY * 2).contains(n))
                .map(Self::Fixed)
                .ok_or_else(|| {
                    format!("count mode {s:?}: expected `real` or `fixed:N` with N in 1..=2000")
                }),
        }
    }
}

impl CountMode {
    /// What every request is told in fixed mode, where no pool is kept
    /// (`None`: count for real). The one definition of fixed mode: every
    /// backend asks it before touching a pool.
    pub fn fixed(self) -> Option<Counted> {
        match self {
            Self::Real => None,
            Self::Fixed(n) => Some(Counted {
                count: n,
                ..Counted::default()
            }),
        }
    }
}

impl std::fmt::Display for CountMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Real => f.write_str("real"),
            Self::Fixed(n) => write!(f, "fixed:{n}"),
        }
    }
}

/// A counted observation, with what is needed to take it back.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub pool: Pool,
    pub cmid: Guid,
    pub count: u32,
    pub capacity: u32,
    observed: Option<Observed>,
}

/// Snapshot of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub pool: Pool,
    pub count: u32,
    pub capacity: u32,
}

/// The count pools in memory.
#[derive(Debug)]
pub struct Pools {
    mode: CountMode,
    pools: DashMap<Pool, Window>,
}

impl Pools {
    pub fn new(mode: CountMode) -> Self {
        Self {
            mode,
            pools: DashMap::new(),
        }
    }

    pub fn mode(&self) -> CountMode {
        self.mode
    }

    /// Fills the pools from what the store held.
    pub fn restore(&self, loaded: &[LoadedPool]) {
        for p in loaded {
            let mut w = self.pools.entry(p.pool).or_default();
            w.grow_to(p.capacity as usize);
            for (g, t) in &p.entries {
                w.restore(*g, *t);
            }
        }
    }

    /// Counts `cmid` in `pool` at `now_ms`.
    pub fn observe(&self, pool: Pool, cmid: Guid, now_ms: i64, n_policy: u32) -> Ticket {
        if let Some(c) = self.mode.fixed() {
            return Ticket {
                pool,
                cmid,
                count: c.count,
                capacity: c.capacity,
                observed: None,
            };
        }
        let mut w = self.pools.entry(pool).or_default();
        let o = w.observe(cmid, now_ms, n_policy);
        Ticket {
            pool,
            cmid,
            count: o.count,
            capacity: w.capacity() as u32,
            observed: Some(o),
        }
    }

    /// Takes back an observation whose record could not be committed.
    pub fn undo(&self, t: &Ticket) {
        if let (Some(o), Some(mut w)) = (t.observed, self.pools.get_mut(&t.pool)) {
            w.undo(t.cmid, &o);
        }
    }

    /// The entries of `pool` as last expired, newest first.
    pub fn entries(&self, pool: Pool) -> Vec<(Guid, i64)> {
        self.pools.get(&pool).map_or_else(Vec::new, |w| {
            let mut e: Vec<_> = w.entries().collect();
            e.reverse();
            e
        })
    }

    /// Current count and capacity of every pool at `now_ms`.
    pub fn status(&self, now_ms: i64) -> Vec<PoolStatus> {
        Pool::ALL
            .iter()
            .map(|&pool| match self.mode.fixed() {
                Some(c) => PoolStatus {
                    pool,
                    count: c.count,
                    capacity: c.capacity,
                },
                None => {
                    let mut w = self.pools.entry(pool).or_default();
                    PoolStatus {
                        pool,
                        count: w.count_at(now_ms),
                        capacity: w.capacity() as u32,
                    }
                }
            })
            .collect()
    }
}

/// A stored pool as the pool rules see it at `now_ms`: its capacity and
/// its live entries, newest first (for reports and start-up; backends load
/// their rows and leave the rules to this).
pub fn live(pool: Pool, capacity: u32, rows: &[(Guid, i64)], now_ms: i64) -> LoadedPool {
    let (mut w, _) = Window::load(capacity as usize, rows);
    w.expire(now_ms);
    LoadedPool {
        pool,
        capacity,
        entries: w.entries().collect::<Vec<_>>().into_iter().rev().collect(),
    }
}
