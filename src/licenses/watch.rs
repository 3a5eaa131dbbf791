//! A running host's view of its license packs: the coverage the hot path
//! asks (one hash lookup, nothing when no pack exists), the usage
//! `/metrics` and the page show, and the two background tasks that keep
//! them: the refresh (every [`Schedule::licenses`], so a `kmsd licenses`
//! change reaches running hosts within seconds, on any backend) and the
//! reclaim pass (every [`Schedule::reclaim`]; on a fleet the ledger's lock
//! has hosts take turns).

use super::admin::{self, Actor, Report};
use super::{Ageing, Coverage, Day, Duplicate};
use crate::clock::Clock;
use crate::store::Schedule;
use crate::store::ledger::{AnyLedger, Ledger, LedgerAt};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the host last read of its packs.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub coverage: Coverage,
    pub report: Report,
    pub duplicates: Vec<Duplicate>,
    pub ageing: Option<Ageing>,
    /// When it was read (0: never).
    pub read_ms: i64,
}

/// The host's packs, refreshed in the background.
pub struct Watch {
    at: Option<LedgerAt>,
    clock: Clock,
    renewal_min: u32,
    reclaim_days: u32,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Watch {
    /// `at`: where the ledger is (None for a memory store: no packs).
    pub fn new(at: Option<LedgerAt>, clock: Clock, renewal_min: u32, reclaim_days: u32) -> Self {
        Self {
            at,
            clock,
            renewal_min,
            reclaim_days,
            snapshot: RwLock::default(),
        }
    }

    /// Whether a valid pack covers `sku` (as last read).
    pub fn covers(&self, sku: &crate::protocol::guid::Guid) -> bool {
        match self.snapshot.read() {
            Ok(s) => s.coverage.covers(sku),
            Err(e) => e.into_inner().coverage.covers(sku),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(e) => Arc::clone(&e.into_inner()),
        }
    }

    pub fn ageing(&self, now_ms: i64) -> Ageing {
        Ageing::at(now_ms, self.renewal_min, self.reclaim_days)
    }

    pub fn ledger_at(&self) -> Option<&LedgerAt> {
        self.at.as_ref()
    }

    /// Re-reads the packs and their usage (and, with `duplicates`, the
    /// CMIDs seen under several names).
    pub async fn refresh(&self, duplicates: bool) -> Result<(), admin::AdminError> {
        let Some(at) = &self.at else {
            return Ok(());
        };
        let now = (self.clock)();
        let ageing = self.ageing(now);
        let mut l = AnyLedger::read(at).await?;
        let report = admin::report(&mut l, ageing, now, false).await?;
        let packs: Vec<_> = report.packs.iter().map(|u| u.pack.clone()).collect();
        let dups = match duplicates {
            true => Some(l.duplicates().await?),
            false => None,
        };
        l.commit().await?;
        let old = self.snapshot();
        let next = Snapshot {
            coverage: Coverage::of(&packs, Day::of_ms(now)),
            report,
            duplicates: dups.unwrap_or_else(|| old.duplicates.clone()),
            ageing: Some(ageing),
            read_ms: now,
        };
        if next.coverage != old.coverage {
            tracing::info!(
                packs = packs.len(),
                "license packs changed; seats are bound by the new ones"
            );
        }
        match self.snapshot.write() {
            Ok(mut s) => *s = Arc::new(next),
            Err(e) => *e.into_inner() = Arc::new(next),
        }
        Ok(())
    }

    /// One reclaim pass now.
    pub async fn reclaim(&self) -> Result<super::Reclaim, admin::AdminError> {
        let Some(at) = &self.at else {
            return Ok(super::Reclaim::default());
        };
        let now = (self.clock)();
        let who = Actor {
            name: format!("kmsd reclaim on {}", crate::store::sqlite::hostname()),
            now_ms: now,
        };
        let mut l = AnyLedger::begin(at).await?;
        let plan = admin::reclaim(&mut l, self.ageing(now), &who).await?;
        l.commit().await?;
        if !plan.released.is_empty() || !plan.moved.is_empty() {
            tracing::info!(
                freed = plan.released.len(),
                moved = plan.moved.len(),
                "license seats reclaimed (not renewed within license_reclaim_days) or moved out of expired packs"
            );
        }
        Ok(plan)
    }
}

/// Duplicates are looked for once in this many refreshes (they scan the
/// activation log).
const DUPLICATES_EVERY: u32 = 30;

/// Starts the refresh and reclaim tasks (none for a memory store).
pub fn spawn(watch: Arc<Watch>, sched: Schedule, stop: CancellationToken, tasks: &TaskTracker) {
    if watch.at.is_none() {
        return;
    }
    let (w, s) = (watch.clone(), stop.clone());
    tasks.spawn(async move {
        let mut n = 0u32;
        loop {
            if let Err(e) = w.refresh(n.is_multiple_of(DUPLICATES_EVERY)).await {
                tracing::warn!(error = %e, "cannot read the license packs; keeping the last ones read");
            }
            n = n.wrapping_add(1);
            tokio::select! {
                _ = s.cancelled() => return,
                _ = tokio::time::sleep(sched.licenses) => {}
            }
        }
    });
    tasks.spawn(async move {
        // The first pass soon after start, then on the schedule.
        let mut wait = sched.reclaim.min(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = watch.reclaim().await {
                tracing::warn!(error = %e, "license seat reclaim failed; will retry");
            }
            wait = sched.reclaim;
        }
    });
}
