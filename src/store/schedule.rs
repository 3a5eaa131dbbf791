//! How often a store's background tasks run. The defaults are what a host
//! runs with; tests shorten them (through `app::Options`) to watch each
//! task do its work against the real backend.

use std::time::Duration;

/// The background tasks' periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// SQLite: pruning expired pool entries and the activation log past
    /// `keep_records` (also after every 10,000 records).
    pub prune: Duration,
    /// PostgreSQL: trimming the fleet's activation log past `keep_records`
    /// (one host at a time).
    pub retention: Duration,
    /// PostgreSQL: this host's heartbeat and its copy of the pool figures
    /// (for metrics and the status page).
    pub heartbeat: Duration,
    /// License packs: re-reading them (the coverage the hot path asks, the
    /// usage `/metrics` shows), so a `kmsd licenses` change takes effect
    /// within this.
    pub licenses: Duration,
    /// License seats: reclaiming those nobody renewed, moving those of
    /// expired packs, keeping the day's peak.
    pub reclaim: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            prune: Duration::from_secs(3600),
            retention: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            licenses: Duration::from_secs(2),
            reclaim: Duration::from_secs(3600),
        }
    }
}
