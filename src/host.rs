//! The host: what an activation is decided with (product policy, ePIDs,
//! HwId, intervals), the store it is counted in, and the hot path that runs
//! one PDU through them in a straight line:
//!
//! decode and verify ([`server::decode`]) → product policy
//! ([`policy::decide`]) → count and durable commit ([`Store::count`],
//! awaited) → encode the answer or the refusal ([`server::answer`],
//! [`server::refuse`]).
//!
//! Nothing is encrypted before the count is durable; a failed commit is
//! answered E_FAIL and counts nothing.

use crate::codec::Pdu;
use crate::config::ServeConfig;
use crate::licenses::Seat;
use crate::licenses::watch::Watch;
use crate::metrics::{Metrics, RequestResult};
use crate::protocol::kms::epid::EpidParts;
use crate::protocol::kms::products::{self, Date, Pool};
use crate::protocol::kms::{Answer, Epid, Request, hresult};
use crate::protocol::policy::{self, Decision, ProductPolicy};
use crate::protocol::rpc::pdu::PduError;
use crate::protocol::rpc::session::Session;
use crate::protocol::server::{self, Decoded, Outcome, Pending};
use crate::store::{
    CountMode, CountRequest, Counted, NoteValue, PoolStatus, Record, Store, StoreError,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What a SIGHUP can change about how requests are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub product: ProductPolicy,
    pub activation_interval: u32,
    pub renewal_interval: u32,
}

impl Policy {
    pub fn from_config(cfg: &ServeConfig) -> Self {
        Self {
            product: ProductPolicy {
                served: products::epid_groups()
                    .iter()
                    .map(|g| g.name)
                    .filter(|n| cfg.served_groups.iter().any(|s| s.eq_ignore_ascii_case(n)))
                    .collect(),
                strict_products: cfg.strict_products,
                max_clock_skew_ms: cfg
                    .max_clock_skew
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            activation_interval: cfg.activation_interval,
            renewal_interval: cfg.renewal_interval,
        }
    }
}

pub use crate::clock::{Clock, system_clock};

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Everything the host decides with.
pub struct Host {
    clock: Clock,
    epids: HashMap<&'static str, Epid>,
    /// Swapped whole on SIGHUP; a request takes a reference (no copy).
    policy: RwLock<Arc<Policy>>,
    hwid: [u8; 8],
    store: Store,
    /// The one set of counters: `/metrics`, the status page and the
    /// tiles all read it ([`Host::metrics`]).
    metrics: Arc<Metrics>,
    /// The license packs as last read ([`Host::licenses`]).
    licenses: Arc<Watch>,
}

/// What one PDU came to: the outcome, and the seat of a counted request.
#[derive(Debug)]
pub struct Handled {
    pub outcome: Outcome,
    pub seat: Seat,
}

impl Host {
    /// Opens the store (creating it), loads the pools, gets or makes an
    /// ePID for every group, and notes the host's facts for reports.
    pub async fn open(
        cfg: &ServeConfig,
        clock: Clock,
        schedule: crate::store::Schedule,
    ) -> Result<Self, StartError> {
        cfg.validate()?;
        let build = products::win_build(cfg.host_build).ok_or(crate::config::ConfigError {
            key: "host_build",
            problem: "unknown".into(),
        })?;
        let metrics = Arc::new(Metrics::default());
        let store = crate::store::open(
            cfg,
            crate::store::OpenOptions {
                clock: clock.clone(),
                metrics: metrics.clone(),
                schedule,
            },
        )
        .await?;
        let now = clock();
        let today = Date::from_days_since_unix_epoch(now.div_euclid(86_400_000));
        let mut epids = HashMap::new();
        for g in products::epid_groups() {
            let (candidate, configured) = match cfg.epids.get(g.name) {
                Some(e) => (e.clone(), true),
                None => {
                    let mut rng = rand::rng();
                    let fresh = EpidParts::generate(g, build, cfg.lcid, today, &mut rng);
                    (fresh.to_string(), false)
                }
            };
            let text = store.epid(g.name, candidate, configured, now).await?;
            let epid = Epid::new(&text).map_err(|e| StoreError::Corrupt {
                store: store.location(),
                source: crate::store::error::cause(format!(
                    "stored ePID for {} is unusable: {e}",
                    g.name
                )),
            })?;
            if EpidParts::parse(&text).is_none_or(|p| p.build != cfg.host_build) {
                tracing::warn!(group = g.name, epid = %text, host_build = cfg.host_build,
                    "ePID does not name the configured host build; clients accept it, a careful observer may notice");
            }
            epids.insert(g.name, epid);
        }
        let licenses = Arc::new(Watch::new(
            store.ledger_at(),
            clock.clone(),
            cfg.renewal_interval,
            cfg.license_reclaim_days,
        ));
        if let Err(e) = licenses.refresh(true).await {
            tracing::warn!(error = %e, "cannot read the license packs; no seat is bound until they can be read");
        }
        let host = Self {
            clock,
            epids,
            policy: RwLock::new(Arc::new(Policy::from_config(cfg))),
            hwid: cfg.hwid,
            store,
            metrics,
            licenses,
        };
        host.store
            .note(vec![
                NoteValue::StartedMs(now),
                NoteValue::ServedGroups(host.served_groups()),
                NoteValue::CountMode(cfg.count_mode),
                NoteValue::HostBuild(cfg.host_build),
                NoteValue::Hwid(cfg.hwid),
                NoteValue::Pid(std::process::id()),
                NoteValue::Version(env!("CARGO_PKG_VERSION")),
                NoteValue::Listen(Vec::new()),
            ])
            .await?;
        Ok(host)
    }

    pub fn epid(&self, group: &str) -> Option<&Epid> {
        self.epids.get(group)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The license packs and seats as last read.
    pub fn licenses(&self) -> &Arc<Watch> {
        &self.licenses
    }

    /// The host's counters and histograms (requests by result, connection
    /// events, latencies, the DNS state) for `/metrics`, the page and the
    /// server.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The pools' counts and capacities right now.
    pub fn pools_now(&self) -> Vec<PoolStatus> {
        self.store.pools_now(self.now_ms())
    }

    /// The ePID groups served right now.
    pub fn served_groups(&self) -> Vec<&'static str> {
        self.policy().product.served.clone()
    }

    /// The decision policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => Arc::clone(&p),
            Err(e) => Arc::clone(&e.into_inner()),
        }
    }

    /// Replaces the decision policy (SIGHUP) and notes the served groups
    /// for `kmsd status`.
    pub async fn set_policy(&self, p: Policy) {
        let served = NoteValue::ServedGroups(p.product.served.clone());
        let p = Arc::new(p);
        match self.policy.write() {
            Ok(mut g) => *g = p,
            Err(e) => *e.into_inner() = p,
        }
        if let Err(e) = self.store.note(vec![served]).await {
            tracing::warn!(error = %e, "cannot note the served groups");
        }
    }

    /// Notes the addresses actually listened on, for `kmsd status`.
    pub async fn note_listening(
        &self,
        addrs: &[std::net::SocketAddr],
        max_connections: usize,
    ) -> Result<(), StoreError> {
        self.store
            .note(vec![
                NoteValue::Listen(addrs.to_vec()),
                NoteValue::MaxConnections(max_connections),
            ])
            .await
    }

    pub fn count_mode(&self) -> CountMode {
        self.store.count_mode()
    }

    /// The host clock, unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Answers one PDU from `peer`. The reply (if any) is in `out` when this
    /// returns; a count it reveals is already durable. `Err`: close.
    pub async fn handle(
        &self,
        session: &mut Session,
        pdu: &Pdu,
        peer: IpAddr,
        rng: &mut impl rand::CryptoRng,
        out: &mut Vec<u8>,
    ) -> Result<Handled, PduError> {
        let started = Instant::now();
        let p = match server::decode_parsed(session, pdu.header(), pdu, out)? {
            Decoded::Done(outcome) => {
                self.count_other(&outcome, started.elapsed());
                return Ok(Handled {
                    outcome,
                    seat: Seat::None,
                });
            }
            Decoded::Request(p) => p,
        };
        let mut seat = Seat::None;
        let now = self.now_ms();
        let policy = self.policy();
        let decision = policy::decide(&policy.product, &p.request.base, now);
        let version = p.request.base.version.major();
        let (outcome, result, pool) = match decision {
            Decision::Refuse(r) => (
                self.refuse(&p, r.hresult, r.why, peer, now, out).await,
                RequestResult::Refused,
                None,
            ),
            Decision::Count(c) => match self.epids.get(c.epid_group) {
                None => (
                    self.refuse(
                        &p,
                        hresult::KMS_ID_MISMATCH,
                        "no ePID for the product group",
                        peer,
                        now,
                        out,
                    )
                    .await,
                    RequestResult::Refused,
                    None,
                ),
                Some(epid) => {
                    let act = CountRequest {
                        pool: c.pool,
                        record: record(&p.request, peer, now, 0),
                        seat: self.licenses.covers(&p.request.base.sku_id),
                    };
                    match self.store.count(act).await {
                        Ok(Counted {
                            seat: Seat::Refused(pack),
                            ..
                        }) => {
                            seat = Seat::Refused(pack);
                            // Recorded by the store, which took the count back.
                            (
                                server::refuse(&p, hresult::KMS_ID_MISMATCH, "no free seat", out),
                                RequestResult::NoSeat,
                                Some(c.pool),
                            )
                        }
                        Ok(counted) => {
                            seat = counted.seat;
                            let answer = Answer {
                                epid,
                                hwid: self.hwid,
                                count: counted.count,
                                activation_interval: policy.activation_interval,
                                renewal_interval: policy.renewal_interval,
                            };
                            (
                                server::answer(&p, &answer, rng, out),
                                RequestResult::Answered,
                                Some(c.pool),
                            )
                        }
                        Err(e) => {
                            tracing::error!(%peer, error = %e, cmid = %p.request.base.cmid,
                                "record not committed; answering E_FAIL so the client retries");
                            (
                                server::refuse(&p, hresult::FAIL, "store unavailable", out),
                                RequestResult::StoreError,
                                None,
                            )
                        }
                    }
                }
            },
        };
        self.metrics
            .request(version, result, pool, started.elapsed());
        Ok(Handled { outcome, seat })
    }

    /// Refuses `p`: records the refusal, then writes the error stub.
    async fn refuse(
        &self,
        p: &Pending,
        hr: u32,
        why: &'static str,
        peer: IpAddr,
        now: i64,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if let Err(e) = self.store.record(record(&p.request, peer, now, hr)).await {
            tracing::warn!(%peer, error = %e, "refusal record not committed");
        }
        server::refuse(p, hr, why, out)
    }

    /// Counts an outcome that needed no decision.
    fn count_other(&self, outcome: &Outcome, took: Duration) {
        let (version, result) = match outcome {
            Outcome::Invalid { error, .. } => {
                let v = match error {
                    crate::protocol::kms::KmsError::UnsupportedVersion { major, .. } => *major,
                    _ => 0,
                };
                (v, RequestResult::Invalid)
            }
            Outcome::Fault { .. } | Outcome::BadStub { .. } => (0, RequestResult::Fault),
            Outcome::Negotiated { .. } | Outcome::Answered { .. } | Outcome::Refused { .. } => {
                return;
            }
        };
        self.metrics.request(version, result, None::<Pool>, took);
    }

    /// Waits until every record queued so far is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Stops the store cleanly. Call once no connection is left.
    pub async fn close_store(&self) -> Result<(), StoreError> {
        self.store.close().await
    }
}

/// The record of `req` from `peer` at `now` (the store fills in the count
/// of a counted request).
fn record(req: &Request, peer: IpAddr, now_ms: i64, hr: u32) -> Record {
    let b = &req.base;
    Record {
        time_ms: now_ms,
        address: peer.to_string(),
        workstation: b.workstation.name(),
        cmid: b.cmid,
        app_id: b.app_id,
        sku_id: b.sku_id,
        kms_id: b.kms_id,
        counted_in: None,
        capacity: 0,
        n_policy: b.n_policy,
        license_status: b.license_status,
        binding_expiration: b.binding_expiration,
        vm: b.vm_info != 0,
        protocol: b.version.major(),
        count: 0,
        hresult: crate::protocol::kms::Hresult(hr),
    }
}
