//! The writer thread: every record goes through one thread that batches
//! whatever is waiting into one transaction (group commit), then folds and
//! prunes in the gaps.

use super::fold::{FOLD_BACKLOG, FOLD_CHUNK, FOLD_EVERY, commit_level, fold_all, fold_unsynced};
use super::ledger::{BookCache, persist_seat, raise_peaks};
use super::meta::set_meta;
use super::prune::prune;
use crate::clock::Clock;
use crate::licenses::{Day, Seat};
use crate::protocol::kms::products::Pool;
use crate::protocol::kms::{Hresult, hresult};
use crate::store::{Durability, StoreError};
use crate::store::{Note, Record};
use rusqlite::{Connection, TransactionBehavior, params};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// What the writer keeps up besides committing: the log's length, the
/// commits' durability, pruning, and the clock they go by.
pub struct Upkeep {
    /// Bounds the activation log.
    pub keep_records: u64,
    /// Whether a commit waits for the disk.
    pub durability: Durability,
    /// Pruning runs at least this often (and after every 10,000 records).
    pub prune_every: Duration,
    /// The host's clock (expiry when folding and pruning).
    pub clock: Clock,
    /// This host's name, on the seats it binds.
    pub host: String,
}

/// Records committed between prunes at the most.
const PRUNE_RECORDS: u64 = 10_000;

/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<(), StoreError>>;
type SeatReply = oneshot::Sender<Result<Seat, StoreError>>;

enum Job {
    Write(Box<Record>, Reply),
    /// A counted record whose machine asks for a seat: bound in the
    /// commit's transaction; a refusal is written instead of the count.
    Seated(Box<Record>, SeatReply),
    /// Completes once everything queued before it is committed.
    Barrier(Reply),
    /// Commits what is queued before it, folds the whole log tail, and
    /// stops the writer.
    Close(Reply),
    /// Writes notes about the running host (after the batch before it).
    Note(Vec<(Note, String)>, Reply),
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

fn write_record(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id, kms_id,
             n_policy, license_status, binding_expiration, vm, protocol, count, hresult, pool)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        r.time_ms,
        r.address,
        r.workstation,
        r.cmid,
        r.app_id,
        r.sku_id,
        r.kms_id,
        r.n_policy,
        r.license_status,
        r.binding_expiration,
        r.vm,
        r.protocol,
        r.count,
        r.hresult.0,
        r.counted_in.map(Pool::name),
    ])?;
    Ok(())
}

/// Writes a batch in one transaction: per record the activation record
/// (an append), and a pool's capacity when it grew. Nothing else: the
/// inventory, the stored pools and the running totals are folded from the
/// log later, off the clients' path, so a commit dirties the log's last
/// page and nothing more.
#[cfg(test)]
pub(super) fn commit_batch(conn: &mut Connection, batch: &[&Record]) -> Result<(), StoreError> {
    let batch: Vec<(&Record, bool)> = batch.iter().map(|r| (*r, false)).collect();
    let mut books = BookCache::default();
    commit_batch_known(conn, &batch, &mut Vec::new(), &mut books, "").map(|_| ())
}

/// A counted record refused for want of a seat, as the log keeps it.
fn refused(r: &Record) -> Record {
    Record {
        counted_in: None,
        capacity: 0,
        count: 0,
        hresult: Hresult(hresult::KMS_ID_MISMATCH),
        ..r.clone()
    }
}

/// [`commit_batch`], skipping a pool's capacity upsert when `known` says
/// the stored capacity is already at least the batch's (capacities only
/// grow, and the upsert keeps the larger one, so skipping it changes
/// nothing). `known` is updated once the commit succeeds.
///
/// A record marked `true` asks for a seat: the packs are read once per
/// batch into a [`crate::licenses::Book`], which decides in arrival order;
/// a refused one is logged as a refusal and not counted. The seats per
/// record come back.
pub(super) fn commit_batch_known(
    conn: &mut Connection,
    batch: &[(&Record, bool)],
    known: &mut Vec<(Pool, u32)>,
    books: &mut BookCache,
    host: &str,
) -> Result<Vec<Seat>, StoreError> {
    // Immediate: a `kmsd licenses` change elsewhere waits for this commit
    // (or this for it) rather than failing the upgrade to a write.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut capacities: Vec<(Pool, u32)> = Vec::new();
    let mut seats = vec![Seat::None; batch.len()];
    let asks: Vec<_> = batch
        .iter()
        .filter(|(_, a)| *a)
        .map(|(r, _)| r.cmid)
        .collect();
    let mut book = if asks.is_empty() {
        None
    } else {
        Some(books.take(&tx, &asks)?)
    };
    for (k, &(r, ask)) in batch.iter().enumerate() {
        if let (true, Some((_, book))) = (ask, book.as_mut()) {
            let day = Day::of_ms(r.time_ms);
            seats[k] = book.decide(&r.sku_id, r.cmid, r.count >= r.n_policy, day);
            if let Seat::Refused(_) = seats[k] {
                write_record(&tx, &refused(r))?;
                continue;
            }
            persist_seat(&tx, seats[k], &r.seat_row(host))?;
        }
        write_record(&tx, r)?;
        if let Some(pool) = r.counted_in {
            match capacities.iter_mut().find(|(p, _)| *p == pool) {
                Some((_, c)) => *c = (*c).max(r.capacity),
                None => capacities.push((pool, r.capacity)),
            }
        }
    }
    capacities.retain(|(pool, c)| !known.iter().any(|(p, k)| p == pool && k >= c));
    for &(pool, capacity) in &capacities {
        tx.prepare_cached(
            "INSERT INTO pools (pool, capacity) VALUES (?1, ?2)
             ON CONFLICT(pool) DO UPDATE SET capacity = MAX(capacity, excluded.capacity)",
        )?
        .execute(params![pool.name(), capacity])?;
    }
    if let (Some((_, b)), Some((r, _))) = (&book, batch.first()) {
        raise_peaks(&tx, b, Day::of_ms(r.time_ms), &seats)?;
    }
    tx.commit()?;
    if let Some((version, book)) = book {
        books.keep(version, book);
    }
    for (pool, c) in capacities {
        match known.iter_mut().find(|(p, _)| *p == pool) {
            Some((_, k)) => *k = (*k).max(c),
            None => known.push((pool, c)),
        }
    }
    Ok(seats)
}

impl Writer {
    /// Starts the writer thread on `conn` (already opened and migrated).
    /// `keep_records` bounds the activation log; `durability` says whether
    /// a commit waits for the disk (set on `conn` here).
    pub fn start(
        conn: Connection,
        upkeep: Upkeep,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        commit_level(&conn, upkeep.durability)?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("kmsd-store".into())
            .spawn(move || writer(conn, rx, &upkeep, &metrics))
            .map_err(|e| {
                StoreError::failed(super::NAME, format!("cannot start the store thread: {e}"))
            })?;
        Ok(Self { tx })
    }

    /// Queues `record` and waits until it is committed.
    pub async fn write(&self, record: Record) -> Result<(), StoreError> {
        self.ask(|done| Job::Write(Box::new(record), done)).await
    }

    /// Queues a counted `record` whose machine asks for a seat, and waits
    /// for the commit and the seat (a refused one was logged as refused).
    pub async fn write_seated(&self, record: Record) -> Result<Seat, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Seated(Box::new(record), done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits everything queued so far, folds the log tail into the
    /// inventory and stops the writer (a clean shutdown). Writes after this
    /// fail with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.ask(Job::Close).await
    }

    /// Writes notes about the running host for reports.
    pub async fn note(&self, notes: Vec<(Note, String)>) -> Result<(), StoreError> {
        self.ask(|done| Job::Note(notes, done)).await
    }

    /// Waits until everything queued so far is committed.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.ask(Job::Barrier).await
    }

    /// Queues a job and waits for the writer's answer to it.
    async fn ask(&self, job: impl FnOnce(Reply) -> Job) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(job(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }
}

fn writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    upkeep: &Upkeep,
    metrics: &crate::metrics::Metrics,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut tidy = Tidy {
        since_prune: 0,
        last_prune: Instant::now(),
        unfolded: 0,
        synced: true,
    };
    // Pool capacities this thread has committed (they only grow).
    let mut capacities: Vec<(Pool, u32)> = Vec::new();
    // The license book between batches that bind seats.
    let mut books = BookCache::default();
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let records: Vec<(&Record, bool)> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Write(r, _) => Some((&**r, false)),
                Job::Seated(r, _) => Some((&**r, true)),
                Job::Barrier(_) | Job::Close(_) | Job::Note(..) => None,
            })
            .collect();
        let n = records.len() as u64;
        let result = if records.is_empty() {
            Ok(Vec::new())
        } else if !tidy.synced
            && let Err(e) = commit_level(&conn, upkeep.durability)
        {
            // Never acknowledge a record from a commit below the configured
            // level (with the default, one that did not wait for the disk).
            Err(e)
        } else {
            tidy.synced = true;
            let t = Instant::now();
            let r = commit_batch_known(
                &mut conn,
                &records,
                &mut capacities,
                &mut books,
                &upkeep.host,
            );
            metrics
                .store_commit_latency
                .observe(t.elapsed().as_secs_f64());
            metrics.store_batch_size.observe(n as f64);
            r
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, records = n, "store commit failed; these clients get an error answer");
        } else {
            tracing::trace!(records = n, "store batch committed");
            tidy.since_prune += n;
            tidy.unfolded += n;
        }
        if let Some(reply) = answer(&conn, &mut jobs, &result) {
            let _ = reply.send(fold_all(&mut conn, (upkeep.clock)()).map(|n| {
                tracing::debug!(records = n, "log tail folded at shutdown");
            }));
            return;
        }
        tidy.run(&mut conn, upkeep, rx.is_empty());
    }
    // Every sender is gone without a Close: leave the tables folded anyway.
    if let Err(e) = fold_all(&mut conn, (upkeep.clock)()) {
        tracing::warn!(error = %e, "folding the activation log at shutdown failed; the next start folds it");
    }
}

/// Answers a batch's jobs with the commit's result (notes are written
/// now); returns the reply of a close among them.
fn answer(
    conn: &Connection,
    jobs: &mut Vec<Job>,
    result: &Result<Vec<Seat>, StoreError>,
) -> Option<Reply> {
    let mut close = None;
    // Records are numbered in job order, as the batch was built.
    let mut k = 0;
    for j in jobs.drain(..) {
        let reply = match j {
            Job::Write(_, r) => {
                k += 1;
                r
            }
            Job::Seated(_, r) => {
                let seat = result
                    .as_ref()
                    .map(|s| s.get(k).copied().unwrap_or_default());
                k += 1;
                let _ = r.send(seat.map_err(Clone::clone));
                continue;
            }
            Job::Barrier(r) => r,
            Job::Note(notes, r) => {
                let entries: Vec<(&str, String)> =
                    notes.into_iter().map(|(n, v)| (n.key(), v)).collect();
                let _ = r.send(set_meta(conn, &entries));
                continue;
            }
            Job::Close(r) => {
                close = Some(r);
                continue;
            }
        };
        let _ = reply.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
    }
    close
}

/// The writer's upkeep between batches: how much is unfolded, when it
/// last pruned, and whether commits still wait for the disk.
struct Tidy {
    since_prune: u64,
    last_prune: Instant,
    unfolded: u64,
    /// False when a fold may have left the connection's commits below the
    /// configured level.
    synced: bool,
}

impl Tidy {
    /// Folding and pruning run after the replies, so the clients whose
    /// records were just committed do not wait for them. A fold is a
    /// transaction of its own whose cost hardly depends on how many
    /// records it folds, so records are folded in chunks of
    /// [`FOLD_CHUNK`]: once [`FOLD_EVERY`] wait and no commit is queued
    /// (`idle`), or regardless once the tail passes [`FOLD_BACKLOG`] (or
    /// before a prune, which only deletes folded records). Readers fold the
    /// tail in memory and start-up folds it all, so a short tail left
    /// unfolded on a quiet host costs nothing.
    fn run(&mut self, conn: &mut Connection, upkeep: &Upkeep, idle: bool) {
        let prune_due =
            self.since_prune >= PRUNE_RECORDS || self.last_prune.elapsed() >= upkeep.prune_every;
        let fold_due = self.unfolded >= FOLD_BACKLOG
            || (prune_due && self.unfolded > 0)
            || (self.unfolded >= FOLD_EVERY && idle);
        if fold_due {
            let now = (upkeep.clock)();
            match fold_unsynced(
                conn,
                FOLD_CHUNK,
                upkeep.keep_records,
                upkeep.durability,
                now,
            ) {
                Ok(n) if n < FOLD_CHUNK as u64 => self.unfolded = 0, // the whole tail
                Ok(n) => self.unfolded = self.unfolded.saturating_sub(n),
                Err(e) => {
                    // Checked again before the next commit.
                    self.synced = false;
                    tracing::warn!(error = %e, "folding the activation log failed; will retry")
                }
            }
        }
        if prune_due {
            match prune(conn, (upkeep.clock)(), upkeep.keep_records) {
                Ok(()) => tracing::debug!("store pruned"),
                Err(e) => tracing::warn!(error = %e, "store pruning failed; will retry later"),
            }
            self.since_prune = 0;
            self.last_prune = Instant::now();
        }
    }
}
