//! Calendar days (UTC), as packs and the peak table keep them.

use crate::protocol::kms::products::Date;

/// Days since 1970-01-01, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The UTC day of unix milliseconds `ms`.
    pub fn of_ms(ms: i64) -> Self {
        Self(ms.div_euclid(86_400_000))
    }

    /// Unix milliseconds of the day's start.
    pub fn start_ms(self) -> i64 {
        self.0 * 86_400_000
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_day(*self))
    }
}

/// `YYYY-MM-DD`.
pub fn format_day(d: Day) -> String {
    Date::from_days_since_unix_epoch(d.0).to_string()
}

/// A date `YYYY-MM-DD` (`what` names it in the error).
pub fn parse_day(v: &str, what: &str) -> Result<Day, String> {
    let v = v.trim();
    Date::parse_iso(v)
        .map(|d| Day(d.days_since_unix_epoch()))
        .map_err(|e| format!("{what} {v:?}: {e}"))
}
