//! The hot path: a PDU in, the host's decision (product policy, count), the
//! durable record, and the response out. The protocol work is
//! [`protocol::host::handle_pdu`]; this adds the state it decides with.

use crate::config::ServeConfig;
use crate::protocol::guid::Guid;
use crate::protocol::host::{self, Decision, Outcome};
use crate::protocol::kms::epid::EpidParts;
use crate::protocol::kms::products::{self, Date, Pool};
use crate::protocol::kms::{Answer, Epid, Request, hresult};
use crate::protocol::rpc::pdu::PduError;
use crate::protocol::rpc::request as rpc_request;
use crate::protocol::rpc::session::Session;
use crate::store::{self, CountMode, Durable, Pools, Record, StoreError, Ticket, sqlite, window};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// FILETIME of the unix epoch.
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// Unix milliseconds of a FILETIME (any peer value: no overflow).
pub fn filetime_to_unix_ms(ft: u64) -> i64 {
    let ms = (i128::from(ft) - i128::from(FILETIME_UNIX_EPOCH)) / 10_000;
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// FILETIME of unix milliseconds.
pub fn unix_ms_to_filetime(ms: i64) -> u64 {
    (ms * 10_000 + FILETIME_UNIX_EPOCH as i64) as u64
}

/// Running totals since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub answered: AtomicU64,
    pub refused: AtomicU64,
    pub invalid: AtomicU64,
    pub faults: AtomicU64,
    pub store_failures: AtomicU64,
}

/// What a SIGHUP can change about how requests are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub served: Vec<&'static str>,
    pub strict_products: bool,
    pub max_clock_skew: Option<Duration>,
    pub activation_interval: u32,
    pub renewal_interval: u32,
}

impl Policy {
    pub fn from_config(cfg: &ServeConfig) -> Self {
        Self {
            served: products::epid_groups()
                .iter()
                .map(|g| g.name)
                .filter(|n| cfg.served_groups.iter().any(|s| s.eq_ignore_ascii_case(n)))
                .collect(),
            strict_products: cfg.strict_products,
            max_clock_skew: cfg.max_clock_skew,
            activation_interval: cfg.activation_interval,
            renewal_interval: cfg.renewal_interval,
        }
    }
}

/// The host's wall clock in unix milliseconds (injected so tests can move
/// time 30 days forward).
pub type Clock = std::sync::Arc<dyn Fn() -> i64 + Send + Sync>;

/// Everything the host decides with.
pub struct Host {
    clock: Clock,
    epids: HashMap<&'static str, Epid>,
    policy: std::sync::RwLock<Policy>,
    hwid: [u8; 8],
    pools: Pools,
    durable: Durable,
    pub stats: Stats,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the data dir {}: {err}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Host {
    /// Opens the data dir (creating it), loads the pools and ePIDs, and makes
    /// an ePID for every group that has none yet.
    pub fn open(cfg: &ServeConfig) -> Result<Self, StartError> {
        Self::open_with_clock(cfg, std::sync::Arc::new(store::unix_ms_now))
    }

    /// [`Host::open`] with an explicit clock.
    pub fn open_with_clock(cfg: &ServeConfig, clock: Clock) -> Result<Self, StartError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|err| StartError::DataDir {
            path: cfg.data_dir.clone(),
            err,
        })?;
        let path = cfg.data_dir.join(store::DB_FILE);
        let mut conn = sqlite::open_rw(&path)?;
        conn.busy_timeout(cfg.store_busy_timeout)
            .map_err(|e| StoreError::Sqlite(e.to_string()))?;
        // Records committed after the last fold (a crash, a kill -9) go into
        // the inventory and the stored pools before anything else reads them.
        let folded = sqlite::fold_all(&mut conn)?;
        if folded > 0 {
            tracing::info!(
                records = folded,
                "folded the activation log's tail into the inventory (the last stop was not clean)"
            );
        }
        let now = clock();
        let today = Date::from_days_since_unix_epoch(now.div_euclid(86_400_000));
        let build = products::win_build(cfg.host_build).ok_or(crate::config::ConfigError {
            key: "host_build",
            problem: "unknown".into(),
        })?;
        let mut rng = rand::rng();
        let mut epids = HashMap::new();
        for g in products::epid_groups() {
            let text = match cfg.epids.get(g.name) {
                Some(e) => {
                    sqlite::set_epid(&conn, g.name, e, now)?;
                    e.clone()
                }
                None => {
                    let fresh =
                        EpidParts::generate(g, build, cfg.lcid, today, &mut rng).to_string();
                    sqlite::ensure_epid(&conn, g.name, &fresh, now)?
                }
            };
            let epid = Epid::new(&text).map_err(|e| StoreError::Open {
                path: path.clone(),
                detail: format!("stored ePID for {} is unusable: {e}", g.name),
            })?;
            if EpidParts::parse(&text).is_none_or(|p| p.build != cfg.host_build) {
                tracing::warn!(group = g.name, epid = %text, host_build = cfg.host_build,
                    "ePID does not name the configured host build; clients accept it, a careful observer may notice");
            }
            epids.insert(g.name, epid);
        }
        let loaded = sqlite::load(&conn, now)?;
        let pools = Pools::new(cfg.count_mode);
        pools.restore(&loaded);
        let policy = Policy::from_config(cfg);
        sqlite::set_meta(
            &conn,
            &[
                ("started_ms", now.to_string()),
                ("served_groups", policy.served.join(",")),
                ("count_mode", cfg.count_mode.to_string()),
                ("host_build", cfg.host_build.to_string()),
                (
                    "hwid",
                    cfg.hwid.iter().map(|b| format!("{b:02X}")).collect(),
                ),
                ("pid", std::process::id().to_string()),
                ("listen", String::new()),
            ],
        )?;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let durable = Durable::start(conn, path, cfg.keep_records, metrics.clone())?;
        Ok(Self {
            clock,
            epids,
            policy: std::sync::RwLock::new(policy),
            hwid: cfg.hwid,

            pools,
            durable,
            stats: Stats::default(),
            metrics,
        })
    }

    pub fn epid(&self, group: &str) -> Option<&Epid> {
        self.epids.get(group)
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The ePID groups served right now.
    pub fn served_groups(&self) -> Vec<&'static str> {
        self.policy().served
    }

    /// The decision policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Replaces the decision policy (SIGHUP) and notes the served groups
    /// for `kmsd status`.
    pub fn set_policy(&self, p: Policy) {
        let served = p.served.join(",");
        match self.policy.write() {
            Ok(mut g) => *g = p,
            Err(e) => *e.into_inner() = p,
        }
        if let Ok(conn) = sqlite::open_rw(self.durable.path())
            && let Err(e) = sqlite::set_meta(&conn, &[("served_groups", served)])
        {
            tracing::warn!(error = %e, "cannot note the served groups");
        }
    }

    pub fn count_mode(&self) -> CountMode {
        self.pools.mode()
    }

    pub fn db_path(&self) -> &Path {
        self.durable.path()
    }

    /// Waits until every record queued so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable.barrier().await
    }

    /// Stops the store cleanly: commits what is queued, folds the activation
    /// log into the inventory. Call once no connection is left.
    pub async fn close_store(&self) -> Result<(), StoreError> {
        self.durable.close().await
    }

    /// The product policy and the count: what a host with the configured
    /// host keys installed answers to `req` at `now_ms`.
    fn decide(&self, req: &Request, now_ms: i64, ticket: &mut Option<Ticket>) -> Decision<'_> {
        let b = &req.base;
        let refuse = |hresult, why| Decision::Refuse { hresult, why };
        let guard = match self.policy.read() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let policy = &*guard;
        if b.n_policy > window::MAX_N_POLICY {
            return refuse(hresult::INVALID_DATA, "N_Policy above 1000");
        }
        if let Some(max) = policy.max_clock_skew {
            let skew = (filetime_to_unix_ms(b.client_time) - now_ms).unsigned_abs();
            if skew > max.as_millis() as u64 {
                return refuse(hresult::TIME_SKEW, "client clock too far from the host's");
            }
        }
        let (pool, group) = match products::kms_group(&b.kms_id) {
            Some(g) => {
                if !g.is_volume() && policy.strict_products {
                    return refuse(
                        hresult::KMS_ID_MISMATCH,
                        "retail or pre-release KMS counted ID",
                    );
                }
                if g.app_id != b.app_id {
                    return refuse(
                        hresult::KMS_ID_MISMATCH,
                        "Application ID does not match the KMS counted ID",
                    );
                }
                (g.pool, g.epid_group)
            }
            None if policy.strict_products => {
                return refuse(hresult::KMS_ID_MISMATCH, "unknown KMS counted ID");
            }
            None => match products::app(&b.app_id) {
                Some(app) => (app.pool, app.default_epid_group),
                None => return refuse(hresult::KMS_ID_MISMATCH, "unknown Application ID"),
            },
        };
        if !policy.served.contains(&group) {
            return refuse(
                hresult::KMS_ID_MISMATCH,
                "product group not served by this host",
            );
        }
        let Some(epid) = self.epids.get(group) else {
            return refuse(hresult::KMS_ID_MISMATCH, "no ePID for the product group");
        };
        let t = self.pools.observe(pool, b.cmid, now_ms, b.n_policy);
        *ticket = Some(t);
        Decision::Answer(Answer {
            epid,
            hwid: self.hwid,
            count: t.count,
            activation_interval: policy.activation_interval,
            renewal_interval: policy.renewal_interval,
        })
    }

    fn record(
        req: &Request,
        peer: IpAddr,
        now_ms: i64,
        t: Option<&Ticket>,
        count: u32,
        hr: u32,
    ) -> Record {
        let b = &req.base;
        Record {
            time_ms: now_ms,
            address: peer.to_string(),
            workstation: b.workstation.name(),
            cmid: b.cmid,
            app_id: b.app_id,
            sku_id: b.sku_id,
            kms_id: b.kms_id,
            counted_in: t.filter(|t| t.capacity > 0).map(|t| t.pool),
            capacity: t.map_or(0, |t| t.capacity),
            n_policy: b.n_policy,
            license_status: b.license_status,
            binding_expiration: b.binding_expiration,
            vm: b.vm_info != 0,
            protocol: b.version.major(),
            count,
            hresult: hr,
        }
    }

    /// Answers one PDU from `peer`. The reply (if any) is in `out` when this
    /// returns; a count it reveals is already committed. `Err`: close.
    pub async fn handle(
        &self,
        session: &mut Session,
        pdu: &[u8],
        peer: IpAddr,
        rng: &mut impl rand::CryptoRng,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, PduError> {
        let started = std::time::Instant::now();
        let now = (self.clock)();
        let mut ticket = None;
        let outcome =
            host::handle_pdu(session, pdu, |r| self.decide(r, now, &mut ticket), rng, out)?;
        let outcome = self.finish(outcome, ticket, peer, now, out).await;
        self.count(&outcome, started.elapsed());
        Ok(outcome)
    }

    /// Counts one outcome in the metrics.
    fn count(&self, outcome: &Outcome, took: Duration) {
        use crate::metrics::RequestResult as R;
        let (v, r, pool) = match outcome {
            Outcome::Negotiated { .. } => return,
            Outcome::Answered { request, .. } => (
                request.base.version.major(),
                R::Answered,
                products::kms_group(&request.base.kms_id)
                    .map(|g| g.pool)
                    .or_else(|| Pool::from_app_id(&request.base.app_id)),
            ),
            Outcome::Refused {
                request, hresult, ..
            } => (
                request.base.version.major(),
                if *hresult == hresult::FAIL {
                    R::StoreError
                } else {
                    R::Refused
                },
                None,
            ),
            Outcome::Invalid { error, .. } => (
                match error {
                    crate::protocol::kms::KmsError::UnsupportedVersion { major, .. } => *major,
                    _ => 0,
                },
                R::Invalid,
                None,
            ),
            Outcome::Fault { .. } | Outcome::BadStub { .. } => (0, R::Fault, None),
        };
        self.metrics.request(v, r, pool, took);
    }

    /// Commits what an outcome must commit before its answer leaves.
    async fn finish(
        &self,
        outcome: Outcome,
        ticket: Option<Ticket>,
        peer: IpAddr,
        now: i64,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match &outcome {
            Outcome::Answered {
                call_id,
                context_id,
                syntax,
                request,
                count,
            } => {
                let rec = Self::record(request, peer, now, ticket.as_ref(), *count, 0);
                if let Err(e) = self.durable.write(rec).await {
                    if let Some(t) = &ticket {
                        self.pools.undo(t);
                    }
                    self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
                    out.clear();
                    rpc_request::encode_error(*call_id, *context_id, *syntax, hresult::FAIL, out);
                    tracing::error!(error = %e, cmid = %request.base.cmid, "record not committed; answering E_FAIL so the client retries");
                    return Outcome::Refused {
                        call_id: *call_id,
                        context_id: *context_id,
                        syntax: *syntax,
                        request: *request,
                        hresult: hresult::FAIL,
                        why: "store unavailable",
                    };
                }
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused {
                request, hresult, ..
            } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let rec = Self::record(request, peer, now, None, 0, *hresult);
                if let Err(e) = self.durable.write(rec).await {
                    tracing::warn!(error = %e, "refusal record not committed");
                }
            }
            Outcome::Invalid { .. } => {
                self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Fault { .. } | Outcome::BadStub { .. } => {
                self.stats.faults.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Negotiated { .. } => {}
        }
        outcome
    }

    /// Notes the addresses actually listened on, for `kmsd status`.
    pub fn note_listening(&self, addrs: &[std::net::SocketAddr]) -> Result<(), StoreError> {
        let conn = sqlite::open_rw(self.durable.path())?;
        let list = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sqlite::set_meta(&conn, &[("listen", list)])
    }

    /// Checks that the database can be written right now (takes and
    /// releases the write lock on a separate connection).
    pub fn probe_store(&self) -> Result<(), StoreError> {
        let conn = sqlite::open_rw(self.durable.path())?;
        conn.busy_timeout(Duration::from_millis(500))
            .map_err(|e| StoreError::Sqlite(e.to_string()))?;
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        Ok(())
    }

    /// The host clock, unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Whether `cmid` is live in `pool` right now.
    pub fn is_live(&self, pool: Pool, cmid: &Guid) -> bool {
        self.pools.contains(pool, cmid)
    }
}
