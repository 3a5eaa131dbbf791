//! The one wall clock of the host, injected: the host, the store (its
//! counts, pruning, the fleet's pool snapshot) and the DNS publisher all
//! read the [`Clock`] they were given, so a test can move time for all of
//! them at once. Only [`system_clock`] reads the system's time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A wall clock in unix milliseconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system's wall clock.
pub fn system_clock() -> Clock {
    Arc::new(unix_ms_now)
}

/// The system's wall clock in unix milliseconds (for the CLI's one-shot
/// commands; a running host reads its injected [`Clock`]).
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
