//! The fleet store: many hosts sharing one count, one inventory, one set
//! of ePIDs and one activation log in PostgreSQL, so every host gives the
//! answer a single host would and a host can die without losing a client.
//!
//! Each host runs one batcher task: the requests waiting at once share one
//! transaction ([`batch`]), which locks the pools it counts in, replays the
//! batch through the pool logic and commits before any count is handed
//! back. A heartbeat task keeps the host's row fresh (and the pool figures
//! for metrics); a retention task trims the activation log in small
//! chunks, on one host at a time (an advisory lock).

pub mod batch;
pub mod reads;
pub mod schema;
pub mod url;

use super::{
    Client, ClientQuery, CountMode, Counted, LoadedPool, Note, PoolStatus, Record, StoreError,
    StoreStatus, StoredActivation,
};
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
/// How often the host's heartbeat and the pool figures are refreshed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often retention runs, and how many records one step deletes.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const RETENTION_CHUNK: i64 = 2_000;
/// The advisory lock retention holds ("kmsd" in ASCII, then 2).
const RETENTION_LOCK: i64 = 0x6b6d_7364_0000_0002;

/// Maps a database error to the store's error, in the server's words.
pub fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    };
    StoreError::Postgres(detail)
}

/// The transaction isolation the batches run under.
pub fn isolation(name: &str) -> Option<IsolationLevel> {
    match name {
        "read-committed" => Some(IsolationLevel::ReadCommitted),
        "repeatable-read" => Some(IsolationLevel::RepeatableRead),
        "serializable" => Some(IsolationLevel::Serializable),
        _ => None,
    }
}

/// How the fleet store is opened.
#[derive(Clone)]
pub struct PgOptions {
    pub url: String,
    /// This host's name in the fleet (stable across restarts).
    pub host_id: String,
    pub count_mode: CountMode,
    pub keep_records: u64,
    /// Most time a request waits for its commit before it is refused.
    pub timeout: Duration,
    pub isolation: IsolationLevel,
    /// Where commit times and batch sizes are observed.
    pub metrics: Arc<crate::metrics::Metrics>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Count(Item, Reply<Counted>),
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
            let tls = url::rustls_config(ca_file).map_err(|detail| StoreError::Connect {
                url: u.shown.clone(),
                detail,
            })?;
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
        .map_err(|e| StoreError::Connect {
            url: u.shown.clone(),
            detail: e.to_string(),
        })?;
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
                .map_err(pg_err)?;
            spawn(conn);
            Ok(c)
        }
        url::Tls::On { ca_file } => {
            let tls = url::rustls_config(ca_file).map_err(StoreError::Postgres)?;
            let (c, conn) = u
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(pg_err)?;
            spawn(conn);
            Ok(c)
        }
    }
}

/// One pooled connection, or the reason there is none in words.
async fn client(db: &DbPool, shown: &str) -> Result<deadpool_postgres::Object, StoreError> {
    db.get().await.map_err(|e| {
        let detail = match e {
            deadpool_postgres::PoolError::Backend(e) => match pg_err(e) {
                StoreError::Postgres(d) => d,
                other => other.to_string(),
            },
            deadpool_postgres::PoolError::Timeout(_) => "timed out".into(),
            other => other.to_string(),
        };
        StoreError::Unavailable(format!("{shown}: {detail}"))
    })
}

impl PgStore {
    /// Connects, migrates, registers this host and starts its tasks. Every
    /// start error names the URL (without the password) and the reason.
    pub async fn open(opts: &PgOptions, now_ms: i64) -> Result<Self, StoreError> {
        let (db, shown) = connect_pool(&opts.url, 8, opts.timeout)?;
        let start_err = |e: StoreError| StoreError::Connect {
            url: shown.clone(),
            detail: match e {
                StoreError::Postgres(d) | StoreError::Unavailable(d) => d,
                other => other.to_string(),
            },
        };
        let mut c = client(&db, &shown).await.map_err(start_err)?;
        schema::migrate(&mut c).await.map_err(start_err)?;
        c.execute(
            "INSERT INTO hosts (host_id, started_ms, heartbeat_ms) VALUES ($1, $2, $2)
             ON CONFLICT (host_id) DO UPDATE SET started_ms = $2, heartbeat_ms = $2",
            &[&opts.host_id, &now_ms],
        )
        .await
        .map_err(|e| start_err(pg_err(e)))?;
        drop(c);
        let (jobs, rx) = mpsc::channel(QUEUE);
        let store = Self {
            shown,
            db,
            host_id: opts.host_id.clone(),
            mode: opts.count_mode,
            timeout: opts.timeout,
            jobs,
            pools: Arc::new(Mutex::new(Vec::new())),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        store.refresh_pools().await;
        store.tasks.spawn(batcher(
            rx,
            store.db.clone(),
            store.shown.clone(),
            opts.clone(),
            store.pools.clone(),
            store.stop.clone(),
        ));
        store.tasks.spawn(heartbeat(
            store.db.clone(),
            store.shown.clone(),
            store.host_id.clone(),
            store.pools.clone(),
            store.stop.clone(),
        ));
        store.tasks.spawn(retention(
            store.db.clone(),
            store.shown.clone(),
            opts.keep_records,
            store.stop.clone(),
        ));
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
        c.execute(
            "INSERT INTO epids (grp, epid, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (grp) DO NOTHING",
            &[&group, &candidate, &now_ms],
        )
        .await
        .map_err(pg_err)?;
        let fleet: String = c
            .query_one("SELECT epid FROM epids WHERE grp = $1", &[&group])
            .await
            .map_err(pg_err)?
            .get(0);
        if configured && fleet != candidate {
            return Err(StoreError::EpidConflict {
                group: group.to_owned(),
                configured: candidate.to_owned(),
                fleet,
            });
        }
        Ok(fleet)
    }

    /// Counts a request; its count comes back once committed, within the
    /// configured timeout.
    pub async fn count(&self, pool: Pool, record: Record) -> Result<Counted, StoreError> {
        self.ask(|r| {
            Job::Count(
                Item {
                    pool: Some(pool),
                    record,
                },
                r,
            )
        })
        .await
    }

    /// Records a refused request.
    pub async fn record(&self, record: Record) -> Result<(), StoreError> {
        self.ask(|r| Job::Count(Item { pool: None, record }, r))
            .await
            .map(|_| ())
    }

    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.try_send(job(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
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
            .map_err(pg_err)?;
        }
        Ok(())
    }

    /// Checks that the database answers right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let check = async {
            let c = client(&self.db, &self.shown).await?;
            c.query_one("SELECT 1", &[]).await.map_err(pg_err)?;
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
        }
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.ask(Job::Barrier).await
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
    opts: PgOptions,
    pools: Arc<Mutex<Vec<PoolStatus>>>,
    stop: CancellationToken,
) {
    let quiet = Quiet::default();
    let mut cache: HashMap<Pool, Cached> = HashMap::new();
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
        for j in jobs.drain(..) {
            match j {
                Job::Count(item, reply) => {
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
            let r = commit(&db, &shown, &opts, &items, &mut cache).await;
            opts.metrics
                .store_commit_latency
                .observe(t.elapsed().as_secs_f64());
            opts.metrics.store_batch_size.observe(items.len() as f64);
            r
        };
        match result {
            Ok(counts) => {
                for (reply, c) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(c));
                }
                let now = crate::store::unix_ms_now();
                let mut snap = pools.lock().unwrap_or_else(|e| e.into_inner());
                for (pool, c) in &cache {
                    let mut w = c.window.clone();
                    let status = PoolStatus {
                        pool: *pool,
                        count: w.count_at(now),
                        capacity: w.capacity() as u32,
                    };
                    match snap.iter_mut().find(|p| p.pool == *pool) {
                        Some(p) => *p = status,
                        None => snap.push(status),
                    }
                }
            }
            Err(e) => {
                quiet.error("the fleet database failed a commit", &e);
                cache.clear();
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

/// One batch, retried on serialization failures and deadlocks with
/// jittered backoff, within the request timeout.
async fn commit(
    db: &DbPool,
    shown: &str,
    opts: &PgOptions,
    items: &[Item],
    cache: &mut HashMap<Pool, Cached>,
) -> Result<Vec<Counted>, StoreError> {
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let attempt = async {
        let mut c = client(db, shown).await?;
        let mut backoff = Duration::from_millis(2);
        loop {
            match batch::run(
                &mut c,
                opts.isolation,
                &opts.host_id,
                opts.count_mode,
                items,
                cache,
            )
            .await
            {
                Ok(counts) => return Ok(counts),
                Err(e) if batch::retryable(&e) => {
                    let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(batch::store_error(e)),
            }
        }
    };
    tokio::time::timeout_at(deadline, attempt)
        .await
        .unwrap_or(Err(StoreError::Timeout(opts.timeout)))
}

async fn heartbeat(
    db: DbPool,
    shown: String,
    host_id: String,
    pools: Arc<Mutex<Vec<PoolStatus>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let Ok(c) = client(&db, &shown).await else {
            continue;
        };
        let _ = c
            .execute(
                "UPDATE hosts SET heartbeat_ms = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT
                 WHERE host_id = $1",
                &[&host_id],
            )
            .await;
        if let Ok(p) = reads::pool_status(&c, None).await {
            *pools.lock().unwrap_or_else(|e| e.into_inner()) = p;
        }
    }
}

async fn retention(db: DbPool, shown: String, keep: u64, stop: CancellationToken) {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
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
        Ok(Self { db, shown })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let c = client(&self.db, &self.shown).await?;
        reads::has_schema(&c, &self.shown).await?;
        Ok(c)
    }

    pub async fn status(&self) -> Result<StoreStatus, StoreError> {
        reads::status(&*self.client().await?, &self.shown).await
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
