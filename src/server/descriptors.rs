//! File descriptors: at start the soft limit is raised to the hard one,
//! and the KMS listener's connection limit is fitted to what remains after
//! the admin listener's share and a reserve. A process that runs out of
//! descriptors stops accepting on every port at once; one that budgets
//! them refuses connections one by one and keeps serving the rest.

use crate::config::ServeConfig;

/// Descriptors kept for everything but client connections: the database
/// (file, WAL, shared memory, the readers of reports), the log, stdio, the
/// listeners, the runtime's own, the `/healthz` probe's connection, and a
/// connection accepted only to be refused.
pub const RESERVE: u64 = 128;

/// The descriptors the admin listener can hold: its connections, and as
/// many again being closed after being replaced (see `crate::http`).
pub fn admin_share(cfg: &ServeConfig) -> u64 {
    if cfg.http.is_some() {
        2 * cfg.http_max_connections as u64
    } else {
        0
    }
}

/// Linux refuses a soft limit above `fs.nr_open` (1,048,576 by default),
/// which an unlimited hard limit would ask for.
const CEILING: u64 = 1 << 20;

/// Raises the soft descriptor limit as far as the hard limit allows;
/// returns the soft limit in force, or None when it cannot be read.
pub fn raise_soft_limit() -> Option<u64> {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit");
            return None;
        }
    };
    let want = hard.min(CEILING).max(soft);
    if want == soft {
        return Some(soft);
    }
    match rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = want, "descriptor limit raised");
            Some(want)
        }
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
            Some(soft)
        }
    }
}

/// The KMS connection limit that fits `nofile` descriptors: `wanted`, or
/// what is left after the admin share and [`RESERVE`] (at least 1).
pub fn fit(wanted: usize, admin: u64, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return wanted;
    };
    let left = nofile.saturating_sub(admin + RESERVE).max(1);
    wanted.min(usize::try_from(left).unwrap_or(usize::MAX))
}

/// Raises the soft limit and returns the connection limit to run with;
/// says so in one warning when `max_connections` had to be lowered.
pub fn fit_config(cfg: &ServeConfig) -> usize {
    let nofile = raise_soft_limit();
    let admin = admin_share(cfg);
    let effective = fit(cfg.max_connections, admin, nofile);
    if effective < cfg.max_connections {
        tracing::warn!(
            max_connections = cfg.max_connections,
            effective,
            descriptor_limit = nofile,
            admin_share = admin,
            reserve = RESERVE,
            "max_connections does not fit the descriptor limit; serving at most {effective} \
             connections (raise `ulimit -n` or LimitNOFILE= to serve more)"
        );
    }
    effective
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_fits_what_the_descriptors_leave() {
        assert_eq!(fit(4096, 64, Some(1024)), 1024 - 64 - RESERVE as usize);
        assert_eq!(fit(4096, 0, Some(1_048_576)), 4096, "fits: unchanged");
        assert_eq!(fit(4096, 0, None), 4096, "unknown limit: unchanged");
        assert_eq!(fit(4096, 64, Some(100)), 1, "never zero");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let soft = raise_soft_limit().unwrap();
        assert_eq!(soft, hard.min(CEILING).max(soft));
        assert_eq!(rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0, soft);
    }
}
