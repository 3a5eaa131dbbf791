//! The fleet store: many hosts sharing one count, one inventory, one set
//! of ePIDs and one activation log in PostgreSQL, so every host gives the
//! answer a single host would and a host can die without losing a client.
//!
//! Each host runs one batcher task: the requests waiting at once share one
//! transaction ([`batch`]), which locks the pools it counts in, replays the
//! batch through the pool logic and commits before any count is handed
//! back. A heartbeat task keeps the host's row fresh (and the pool figures
//! for metrics); a retention task trims the activation log in small
//! chunks, on one host at a time (an advisory lock). How often each runs
//! is the store's [`Schedule`].
//!
//! Files by concern: [`batch`] (the group commit), [`pool_rows`] (pools
//! through the counting core), [`reads`], [`schema`], [`url`],
//! [`host_id`], [`import`] (`kmsd store copy`).

pub mod batch;
pub mod host_id;
pub mod import;
pub mod ledger;
pub mod pool_rows;
pub mod reads;
pub mod schema;
pub mod url;

use super::{
    Client, ClientQuery, CountMode, Counted, LoadedPool, Note, OpenOptions, PoolStatus, Record,
    Schedule, StoreError, StoreStatus, StoredActivation,
};
use crate::clock::Clock;
use crate::protocol::kms::products::Pool;
use batch::{Cached, Item};
use deadpool_postgres::{Manager, ManagerConfig, Pool as DbPool, RecyclingMethod, Runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::IsolationLevel;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most requests one transaction carries.
const MAX_BATCH: usize = 256;
/// Requests waiting for a transaction at most (more are refused at once).
const QUEUE: usize = 4096;
/// How long past its deadline a caller still waits for the batcher's
/// answer (which normally comes at the deadline at the latest).
const BACKSTOP: Duration = Duration::from_secs(1);
/// How many records one retention step deletes at the most.
const RETENTION_CHUNK: i64 = 2_000;
/// The advisory lock retention holds ("kmsd" in ASCII, then 2).
const RETENTION_LOCK: i64 = 0x6b6d_7364_0000_0002;

/// What the fleet database is called in errors that have no URL at hand.
const NAME: &str = "the fleet database";

/// Maps a database error to the store's error by what it means: the
/// database out of reach or shutting down, a login or database the
/// configuration names wrongly, or a failed statement; the server's words
/// are kept as the source.
pub fn pg_err(e: tokio_postgres::Error) -> StoreError {
    pg_err_at(NAME, e)
}

/// [`pg_err`] for the database shown as `store`.
pub fn pg_err_at(store: &str, e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    let store = store.to_owned();
    let Some(db) = e.as_db_error() else {
        // No answer from the server: a connection that failed or closed.
        return StoreError::unavailable(store, chain(&e));
    };
    let detail = format!("{} ({})", db.message(), db.code().code());
    let code = db.code().code();
    if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") {
        StoreError::unavailable(store, detail)
    } else if code.starts_with("28") || *db.code() == SqlState::INVALID_CATALOG_NAME {
        StoreError::misconfigured(store, detail)
    } else if code.starts_with("XX") {
        StoreError::Corrupt {
            store,
            source: super::error::cause(detail),
        }
    } else {
        StoreError::failed(store, detail)
    }
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

/// The transaction isolation the batches run under.
pub fn isolation(i: crate::store::Isolation) -> IsolationLevel {
    match i {
        crate::store::Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
        crate::store::Isolation::RepeatableRead => IsolationLevel::RepeatableRead,
        crate::store::Isolation::Serializable => IsolationLevel::Serializable,
    }
}

/// The fleet store's settings, read from the host's configuration.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    /// The host's data dir, where its fleet name is kept.
    pub data_dir: std::path::PathBuf,
    pub count_mode: CountMode,
    pub keep_records: u64,
    /// Most time a request waits for its commit before it is refused.
    pub timeout: Duration,
    pub isolation: IsolationLevel,
}

impl Settings {
    pub fn from_config(url: &str, cfg: &crate::config::ServeConfig) -> Result<Self, StoreError> {
        Ok(Self {
            url: url.to_owned(),
            data_dir: cfg.data_dir.clone(),
            count_mode: cfg.count_mode,
            keep_records: cfg.keep_records,
            timeout: cfg.store_timeout,
            isolation: isolation(cfg.store_isolation),
        })
    }
}

/// What the batcher runs with.
#[derive(Clone)]
struct Run {
    settings: Settings,
    host_id: String,
    /// Where commit times and batch sizes are observed.
    metrics: Arc<crate::metrics::Metrics>,
    clock: Clock,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    /// A request to count (or record), with the moment its caller stops
    /// waiting: past it, it is answered [`StoreError::Timeout`] and never
    /// committed.
    Count(Item, tokio::time::Instant, Reply<Counted>),
    /// Completes once everything queued before it is committed.
    Barrier(Reply<()>),
}

/// Logs a failure at most once a minute (with how many were not logged).
#[derive(Default)]
struct Quiet {
    last: Mutex<Option<(Instant, u64)>>,
}

impl Quiet {
    fn error(&self, what: &str, e: &StoreError) {
        let mut g = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *g {
            Some((at, skipped)) if at.elapsed() < Duration::from_secs(60) => *skipped += 1,
            _ => {
                let skipped = g.map_or(0, |(_, s)| s);
                tracing::error!(error = %e, not_logged = skipped,
                    "{what}; requests get an error answer and are not counted (logged once a minute)");
                *g = Some((Instant::now(), 0));
            }
        }
    }
}

/// The fleet store of a running host.
pub struct PgStore {
    /// The fleet's URL (with its password: never shown).
    url: String,
    shown: String,
    db: DbPool,
    host_id: String,
    mode: CountMode,
    timeout: Duration,
    jobs: mpsc::Sender<Job>,
    pools: Arc<Mutex<Vec<PoolStatus>>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Opens a connection pool on `url` (no connection made yet).
fn connect_pool(url: &str, size: usize, timeout: Duration) -> Result<(DbPool, String), StoreError> {
    let u = url::parse(url)?;
    let mgr_cfg = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match &u.tls {
        url::Tls::Off => Manager::from_config(u.config.clone(), tokio_postgres::NoTls, mgr_cfg),
        url::Tls::On { ca_file } => {
            let tls = url::rustls_config(ca_file)
                .map_err(|detail| StoreError::misconfigured(u.shown.clone(), detail))?;
            Manager::from_config(
                u.config.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                mgr_cfg,
            )
        }
    };
    let pool = DbPool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| StoreError::misconfigured(u.shown.clone(), e.to_string()))?;
    Ok((pool, u.shown))
}

/// One connection outside a pool (for `kmsd store copy`).
pub async fn connect_one(u: &url::FleetUrl) -> Result<tokio_postgres::Client, StoreError> {
    fn spawn<F>(conn: F)
    where
        F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "fleet database connection ended");
            }
        });
    }
    match &u.tls {
        url::Tls::Off => {
            let (c, conn) = u
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| pg_err_at(&u.shown, e))?;
            spawn(conn);
            Ok(c)
        }
        url::Tls::On { ca_file } => {
            let tls = url::rustls_config(ca_file)
                .map_err(|detail| StoreError::misconfigured(u.shown.clone(), detail))?;
            let (c, conn) = u
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(|e| pg_err_at(&u.shown, e))?;
            spawn(conn);
            Ok(c)
        }
    }
}

/// One pooled connection, or the reason there is none in words.
async fn client(db: &DbPool, shown: &str) -> Result<deadpool_postgres::Object, StoreError> {
    db.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err_at(shown, e),
        deadpool_postgres::PoolError::Timeout(_) => StoreError::unavailable(shown, "timed out"),
        other => StoreError::unavailable(shown, other.to_string()),
    })
}

impl PgStore {
    /// Connects, migrates, registers this host and starts its tasks. Every
    /// start error names the URL (without the password) and the reason.
    pub async fn open(settings: Settings, opts: OpenOptions) -> Result<Self, StoreError> {
        let dir = settings.data_dir.clone();
        let host_id = super::blocking(move || host_id::load_or_make(&dir)).await?;
        let (db, shown) = connect_pool(&settings.url, 8, settings.timeout)?;
        let mut c = client(&db, &shown).await?;
        schema::migrate(&mut c, &shown).await?;
        let now_ms = (opts.clock)();
        c.execute(
            "INSERT INTO hosts (host_id, started_ms, heartbeat_ms) VALUES ($1, $2, $2)
             ON CONFLICT (host_id) DO UPDATE SET started_ms = $2, heartbeat_ms = $2",
            &[&host_id, &now_ms],
        )
        .await
        .map_err(|e| pg_err_at(&shown, e))?;
        drop(c);
        let (jobs, rx) = mpsc::channel(QUEUE);
        let store = Self {
            url: settings.url.clone(),
            shown,
            db,
            host_id: host_id.clone(),
            mode: settings.count_mode,
            timeout: settings.timeout,
            jobs,
            pools: Arc::new(Mutex::new(Vec::new())),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        let (db, shown, stop) = (store.db.clone(), store.shown.clone(), store.stop.clone());
        store.refresh_pools().await;
        let run = Run {
            settings: settings.clone(),
            host_id,
            metrics: opts.metrics,
            clock: opts.clock,
        };
        let sched = opts.schedule;
        let snapshot = store.pools.clone();
        store.tasks.spawn(batcher(
            rx,
            db.clone(),
            shown.clone(),
            run.clone(),
            snapshot,
            stop.clone(),
        ));
        store.tasks.spawn(heartbeat(
            db.clone(),
            shown.clone(),
            run.host_id,
            sched,
            store.pools.clone(),
            stop.clone(),
        ));
        store
            .tasks
            .spawn(retention(db, shown, settings.keep_records, sched, stop));
        store.tasks.close();
        Ok(store)
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn mode(&self) -> CountMode {
        self.mode
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The fleet's URL, for the license ledger (holds the password).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    async fn refresh_pools(&self) {
        if let Ok(c) = client(&self.db, &self.shown).await
            && let Ok(p) = reads::pool_status(&c, None).await
        {
            *self.pools.lock().unwrap_or_else(|e| e.into_inner()) = p;
        }
    }

    /// The fleet's ePID for `group`: the first host to need one creates it,
    /// every other host adopts it. A configured ePID that differs from the
    /// fleet's is refused, naming both.
    pub async fn epid(
        &self,
        group: &str,
        candidate: &str,
        configured: bool,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let c = client(&self.db, &self.shown).await?;
        let err = |e| pg_err_at(&self.shown, e);
        c.execute(
            "INSERT INTO epids (grp, epid, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (grp) DO NOTHING",
            &[&group, &candidate, &now_ms],
        )
        .await
        .map_err(err)?;
        let fleet: String = c
            .query_one("SELECT epid FROM epids WHERE grp = $1", &[&group])
            .await
            .map_err(err)?
            .get(0);
        if configured && fleet != candidate {
            return Err(StoreError::Conflict {
                store: self.shown.clone(),
                what: format!(
                    "the configured ePID for {group} ({candidate}) differs from the fleet's ({fleet}); \
                     drop it from this host's configuration, or give every host the same one"
                ),
            });
        }
        Ok(fleet)
    }

    /// Counts a request; its count comes back once committed, within the
    /// configured timeout.
    pub async fn count(
        &self,
        pool: Pool,
        record: Record,
        seat: bool,
    ) -> Result<Counted, StoreError> {
        self.ask(|at, r| {
            Job::Count(
                Item {
                    pool: Some(pool),
                    record,
                    seat,
                },
                at,
                r,
            )
        })
        .await
    }

    /// Records a refused request.
    pub async fn record(&self, record: Record) -> Result<(), StoreError> {
        self.ask(|at, r| {
            Job::Count(
                Item {
                    pool: None,
                    record,
                    seat: false,
                },
                at,
                r,
            )
        })
        .await
        .map(|_| ())
    }

    /// Queues a job and waits for the batcher's answer. The batcher owns
    /// the deadline (a request it has not committed by then is answered
    /// Timeout and never committed later); the caller's own wait is only a
    /// backstop a little past it.
    async fn ask<T>(
        &self,
        job: impl FnOnce(tokio::time::Instant, Reply<T>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.jobs.try_send(job(deadline, tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Full,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        match tokio::time::timeout_at(deadline + BACKSTOP, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    pub fn pools_now(&self) -> Vec<PoolStatus> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes notes about this host.
    pub async fn note(&self, notes: Vec<(Note, String)>) -> Result<(), StoreError> {
        let c = client(&self.db, &self.shown).await?;
        for (n, v) in notes {
            c.execute(
                "INSERT INTO host_notes (host_id, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (host_id, key) DO UPDATE SET value = EXCLUDED.value",
                &[&self.host_id, &n.key(), &v],
            )
            .await
            .map_err(|e| pg_err_at(&self.shown, e))?;
        }
        Ok(())
    }

    /// Checks that the database answers right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let check = async {
            let c = client(&self.db, &self.shown).await?;
            c.query_one("SELECT 1", &[])
                .await
                .map_err(|e| pg_err_at(&self.shown, e))?;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(2), check)
            .await
            .unwrap_or(Err(StoreError::Timeout(Duration::from_secs(2))))
    }

    pub fn reader(&self) -> PgReader {
        PgReader {
            db: self.db.clone(),
            shown: self.shown.clone(),
            host_id: Some(self.host_id.clone()),
        }
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.ask(|_, r| Job::Barrier(r)).await
    }

    /// Commits what is queued and stops this host's tasks.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        self.stop.cancel();
        self.tasks.wait().await;
        flushed
    }
}

/// Runs the host's group commits until the store stops (what is queued
/// first) or every sender is gone.
async fn batcher(
    mut rx: mpsc::Receiver<Job>,
    db: DbPool,
    shown: String,
    run: Run,
    pools: Arc<Mutex<Vec<PoolStatus>>>,
    stop: CancellationToken,
) {
    let quiet = Quiet::default();
    let mut cache: HashMap<Pool, Cached> = HashMap::new();
    // The license book as this host last committed it (see `ledger`).
    let mut books: Option<(i64, crate::licenses::Book)> = None;
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            j = rx.recv() => match j {
                Some(j) => j,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut items = Vec::new();
        let mut replies = Vec::new();
        let mut barriers = Vec::new();
        let now = tokio::time::Instant::now();
        let mut deadline: Option<tokio::time::Instant> = None;
        for j in jobs.drain(..) {
            match j {
                // A caller that has given up, or whose time has passed, is
                // never committed: it was (or is now) answered Timeout.
                Job::Count(_, _, reply) if reply.is_closed() => {}
                Job::Count(_, at, reply) if at <= now => {
                    let _ = reply.send(Err(StoreError::Timeout(run.settings.timeout)));
                }
                Job::Count(item, at, reply) => {
                    deadline = Some(deadline.map_or(at, |d| d.min(at)));
                    items.push(item);
                    replies.push(reply);
                }
                Job::Barrier(reply) => barriers.push(reply),
            }
        }
        let result = if items.is_empty() {
            Ok(Vec::new())
        } else {
            let t = Instant::now();
            let until = deadline.unwrap_or(now + run.settings.timeout);
            let r = commit(&db, &shown, &run, &items, until, &mut cache, &mut books).await;
            run.metrics
                .store_commit_latency
                .observe(t.elapsed().as_secs_f64());
            run.metrics.store_batch_size.observe(items.len() as f64);
            r
        };
        match result {
            Ok(counts) => {
                for (reply, c) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(c));
                }
                snapshot(&pools, &cache, (run.clock)());
            }
            Err(e) => {
                quiet.error("the fleet database failed a commit", &e);
                cache.clear();
                books = None;
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        for b in barriers {
            let _ = b.send(Ok(()));
        }
    }
}

/// Updates this host's copy of the pool figures from the pools it just
/// committed, as the pool rules stand at `now_ms`.
fn snapshot(pools: &Mutex<Vec<PoolStatus>>, cache: &HashMap<Pool, Cached>, now_ms: i64) {
    let mut snap = pools.lock().unwrap_or_else(|e| e.into_inner());
    for (pool, c) in cache {
        let mut w = c.window.clone();
        let status = PoolStatus {
            pool: *pool,
            count: w.count_at(now_ms),
            capacity: w.capacity() as u32,
        };
        match snap.iter_mut().find(|p| p.pool == *pool) {
            Some(p) => *p = status,
            None => snap.push(status),
        }
    }
}

/// One batch, retried on serialization failures and deadlocks with
/// jittered backoff, until the earliest deadline of its requests: past it
/// the transaction is dropped (rolled back), so no request answered
/// Timeout is counted (short of a commit already sent, whose outcome the
/// database alone knows).
async fn commit(
    db: &DbPool,
    shown: &str,
    run: &Run,
    items: &[Item],
    deadline: tokio::time::Instant,
    cache: &mut HashMap<Pool, Cached>,
    books: &mut Option<(i64, crate::licenses::Book)>,
) -> Result<Vec<Counted>, StoreError> {
    let s = &run.settings;
    let attempt = async {
        let mut c = client(db, shown).await?;
        let mut backoff = Duration::from_millis(2);
        loop {
            match batch::run(
                &mut c,
                s.isolation,
                &run.host_id,
                s.count_mode,
                items,
                cache,
                books,
            )
            .await
            {
                Ok(counts) => return Ok(counts),
                Err(e) if batch::retryable(&e) => {
                    let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(pg_err_at(shown, e)),
            }
        }
    };
    tokio::time::timeout_at(deadline, attempt)
        .await
        .unwrap_or(Err(StoreError::Timeout(s.timeout)))
}

/// Keeps this host's row fresh (its heartbeat, on the database's clock)
/// and its copy of the pool figures.
async fn heartbeat(
    db: DbPool,
    shown: String,
    host_id: String,
    sched: Schedule,
    pools: Arc<Mutex<Vec<PoolStatus>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sched.heartbeat) => {}
        }
        let Ok(c) = client(&db, &shown).await else {
            continue;
        };
        if let Err(e) = c
            .execute(
                "UPDATE hosts SET heartbeat_ms = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT
                 WHERE host_id = $1",
                &[&host_id],
            )
            .await
        {
            tracing::debug!(error = %pg_err_at(&shown, e), "heartbeat not written; will retry");
        }
        if let Ok(p) = reads::pool_status(&c, None).await {
            *pools.lock().unwrap_or_else(|e| e.into_inner()) = p;
        }
    }
}

/// Trims the fleet's activation log to `keep` records, a chunk per run,
/// soon after start and then every `sched.retention`.
async fn retention(db: DbPool, shown: String, keep: u64, sched: Schedule, stop: CancellationToken) {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let mut wait = sched.retention.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = sched.retention;
        let Ok(mut c) = client(&db, &shown).await else {
            continue;
        };
        match trim(&mut c, keep).await {
            Ok(n) if n > 0 => tracing::debug!(records = n, "activation log trimmed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "trimming the activation log failed; will retry"),
        }
    }
}

/// Deletes at most one chunk of the oldest records past `keep`, unless
/// another host is trimming right now.
pub async fn trim(c: &mut tokio_postgres::Client, keep: i64) -> Result<u64, StoreError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    let mine: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
        .await
        .map_err(pg_err)?
        .get(0);
    if !mine {
        return Ok(0);
    }
    let n = tx
        .execute(
            "DELETE FROM activations WHERE id IN (
                 SELECT id FROM activations
                 WHERE id <= (SELECT MAX(id) FROM activations) - GREATEST($1::BIGINT, 1)
                 ORDER BY id LIMIT $2)",
            &[&keep, &RETENTION_CHUNK],
        )
        .await
        .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(n)
}

/// Read-only queries on the fleet database.
#[derive(Clone)]
pub struct PgReader {
    db: DbPool,
    shown: String,
    /// The host reading through its own store: its notes are the status's
    /// notes (a reader from the CLI has none).
    host_id: Option<String>,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReader")
            .field("url", &self.shown)
            .finish()
    }
}

impl PgReader {
    /// A reader for `kmsd status --store URL` and the like.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let (db, shown) = connect_pool(url, 2, Duration::from_secs(5))?;
        Ok(Self {
            db,
            shown,
            host_id: None,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let c = client(&self.db, &self.shown).await?;
        reads::has_schema(&c, &self.shown).await?;
        Ok(c)
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The fleet's status; read by a host through its own store, the notes
    /// are that host's (as a single host's status has its own).
    pub async fn status(&self) -> Result<StoreStatus, StoreError> {
        let mut st = reads::status(&*self.client().await?, &self.shown).await?;
        if let Some(me) = st
            .hosts
            .iter()
            .find(|h| Some(&h.id) == self.host_id.as_ref())
        {
            st.notes = me.notes.clone();
        }
        Ok(st)
    }

    /// This host's notes (none for a reader from the CLI).
    pub async fn notes(&self) -> Result<Vec<(Note, String)>, StoreError> {
        let Some(id) = &self.host_id else {
            return Ok(Vec::new());
        };
        reads::host_notes(&*self.client().await?, id).await
    }

    pub async fn clients(&self, q: &ClientQuery) -> Result<Vec<Client>, StoreError> {
        reads::clients(&*self.client().await?, q).await
    }

    pub async fn recent(&self, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
        reads::recent(&*self.client().await?, limit).await
    }

    pub async fn pools(&self) -> Result<Vec<LoadedPool>, StoreError> {
        reads::pools(&*self.client().await?).await
    }
}
