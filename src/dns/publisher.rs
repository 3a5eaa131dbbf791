//! The publisher: a task [`crate::app::App`] starts once the KMS listeners
//! are bound. For each domain of `dns_publish` it sends one UPDATE that
//! deletes this host's previous record (by rdata) and adds the current
//! `_vlmcs._tcp.DOMAIN SRV PRIORITY WEIGHT PORT TARGET`; it re-asserts the
//! record every `dns_refresh` and on SIGHUP ([`DnsHandle::reload`]), and on
//! a clean stop deletes it (`dns_withdraw_on_stop`). A domain dropped from
//! the list on reload has its record withdrawn.
//!
//! A failure (timeout, unreachable server, REFUSED, NOTAUTH, a rejected
//! TSIG key) never touches the KMS service: it is logged with its reason
//! and retried with backoff (1 s, doubling, at most `dns_refresh` or 5
//! minutes). The state per domain goes to the store ([`NoteValue::Dns`], for
//! `kmsd status` in another process and the status page) and to
//! [`crate::metrics::Metrics::dns`] for `/metrics`.

use super::message::{self, DnsError, Srv};
use super::transport::{self, Signer};
use super::{DnsSettings, PublishDomain, discover};
use crate::host::Host;
use crate::store::NoteValue;
use hickory_proto::rr::RecordType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The first retry after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between retries (also bounded by `dns_refresh`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long withdrawing may hold up a stop.
pub const WITHDRAW_TIME: Duration = Duration::from_secs(5);

/// What `kmsd status`, the status page and `/metrics` show for a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub domain: String,
    /// The record this host publishes there (zone-file form), if it can
    /// name one.
    pub record: String,
    /// The server the last update went to.
    pub server: Option<String>,
    /// This host's record is in the zone (as of the last successful update).
    pub published: bool,
    pub last_success_ms: Option<i64>,
    pub last_attempt_ms: Option<i64>,
    /// Why the last attempt failed (None once one succeeds).
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub failures: u64,
    /// Successful updates since start.
    pub updates: u64,
    /// The record data this host put there (deleted by rdata when it
    /// changes, also after a restart).
    pub current: Option<Srv>,
}

/// Tells the running publisher of new settings (SIGHUP): it applies them and
/// re-asserts every record.
#[derive(Debug)]
pub struct DnsHandle {
    tx: watch::Sender<DnsSettings>,
}

impl DnsHandle {
    pub fn reload(&self, s: DnsSettings) {
        self.tx.send_replace(s);
    }
}

/// Starts the publisher for the KMS `port` (tracked by `tasks`, stopped by
/// `shutdown` with a withdraw).
pub fn spawn(
    settings: DnsSettings,
    port: u16,
    host: Arc<Host>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> DnsHandle {
    let (tx, rx) = watch::channel(settings);
    tasks.spawn(run(rx, port, host, shutdown));
    DnsHandle { tx }
}

struct Slot {
    entry: PublishDomain,
    /// Still in `dns_publish` (else: withdraw, then forget).
    listed: bool,
    state: DomainState,
    due: Instant,
    backoff: Duration,
}

async fn run(
    mut rx: watch::Receiver<DnsSettings>,
    port: u16,
    host: Arc<Host>,
    shutdown: CancellationToken,
) {
    let mut settings = rx.borrow_and_update().clone();
    let previous = if settings.publish.is_empty() {
        Vec::new()
    } else {
        previous_states(&host).await
    };
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    apply(&mut slots, &settings, port, &previous);
    persist(&host, &slots).await;
    'serve: loop {
        let mut touched = false;
        let now = Instant::now();
        for slot in slots.values_mut().filter(|s| s.due <= now) {
            // A stop does not wait for a slow server.
            tokio::select! {
                _ = shutdown.cancelled() => break 'serve,
                _ = attempt(slot, &settings, port, host.now_ms()) => {}
            }
            touched = true;
        }
        slots.retain(|_, s| s.listed || s.state.current.is_some());
        if touched {
            persist(&host, &slots).await;
        }
        let next = slots.values().map(|s| s.due).min();
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break 'serve,
            changed = rx.changed() => match changed {
                Ok(()) => {
                    settings = rx.borrow_and_update().clone();
                    apply(&mut slots, &settings, port, &[]);
                }
                // The App is gone without stopping: nothing more to do.
                Err(_) => break 'serve,
            },
            _ = sleep => {}
        }
    }
    if settings.withdraw_on_stop && slots.values().any(|s| s.state.current.is_some()) {
        let withdraw = async {
            for slot in slots.values_mut().filter(|s| s.state.current.is_some()) {
                slot.listed = false;
                attempt(slot, &settings, port, host.now_ms()).await;
            }
        };
        if tokio::time::timeout(WITHDRAW_TIME, withdraw).await.is_err() {
            tracing::warn!("DNS: withdrawing the SRV records took too long; some may stay");
        }
        persist(&host, &slots).await;
    }
}

/// The states the previous run of this host noted (for its records).
async fn previous_states(host: &Host) -> Vec<DomainState> {
    match host.store().reader().notes().await {
        Ok(notes) => notes.dns,
        Err(e) => {
            tracing::warn!(error = %e, "DNS: cannot read the records noted by the previous run");
            Vec::new()
        }
    }
}

/// Brings the slots in line with `settings`: new domains are added, gone
/// ones marked for withdrawal; every slot is due now (a SIGHUP re-asserts).
fn apply(
    slots: &mut BTreeMap<String, Slot>,
    settings: &DnsSettings,
    port: u16,
    previous: &[DomainState],
) {
    let now = Instant::now();
    for s in slots.values_mut() {
        s.listed = false;
    }
    for entry in &settings.publish {
        let slot = slots.entry(entry.domain.clone()).or_insert_with(|| {
            let current = previous
                .iter()
                .find(|p| p.domain == entry.domain)
                .and_then(|p| p.current.clone());
            Slot {
                entry: entry.clone(),
                listed: true,
                state: DomainState {
                    domain: entry.domain.clone(),
                    published: current.is_some(),
                    current,
                    ..DomainState::default()
                },
                due: now,
                backoff: FIRST_BACKOFF,
            }
        });
        slot.entry = entry.clone();
        slot.listed = true;
        slot.state.record = desired(settings, entry, port)
            .map(|srv| record_text(&entry.domain, settings.ttl, &srv))
            .unwrap_or_default();
    }
    for s in slots.values_mut() {
        s.due = now;
        s.backoff = FIRST_BACKOFF;
    }
}

fn desired(settings: &DnsSettings, entry: &PublishDomain, port: u16) -> Option<Srv> {
    Some(Srv {
        priority: entry.priority,
        weight: entry.weight,
        port,
        target: super::target_for(settings.host_name.as_deref(), &entry.domain)?,
    })
}

fn record_text(domain: &str, ttl: u32, srv: &Srv) -> String {
    format!("{} {ttl} IN SRV {srv}", message::srv_owner(domain))
}

/// One update for `slot`: publish (listed) or withdraw (not listed), at
/// `now_ms` on the host's clock.
async fn attempt(slot: &mut Slot, settings: &DnsSettings, port: u16, now_ms: i64) {
    let domain = slot.entry.domain.clone();
    let want = if slot.listed {
        match desired(settings, &slot.entry, port) {
            Some(d) => Some(d),
            None => {
                fail(slot, settings, &DnsError::NoTarget);
                return;
            }
        }
    } else {
        None
    };
    if want.is_none() && slot.state.current.is_none() {
        return;
    }
    slot.state.last_attempt_ms = Some(now_ms);
    let old = slot.state.current.clone();
    match update_once(settings, &domain, old.as_ref(), want.as_ref(), now_ms).await {
        Ok(server) => {
            let s = &mut slot.state;
            match (&want, &old) {
                (Some(w), Some(o)) if w == o && s.failures == 0 && s.updates > 0 => {
                    tracing::debug!(%domain, record = %s.record, "DNS: SRV record re-asserted");
                }
                (Some(_), _) => {
                    tracing::info!(%domain, record = %s.record, %server, "DNS: SRV record published");
                }
                (None, _) => {
                    tracing::info!(%domain, %server, "DNS: SRV record withdrawn");
                }
            }
            s.server = Some(server.to_string());
            s.published = want.is_some();
            s.current = want;
            s.last_success_ms = s.last_attempt_ms;
            s.last_error = None;
            s.failures = 0;
            s.updates += 1;
            slot.due = Instant::now() + settings.refresh;
            slot.backoff = FIRST_BACKOFF;
        }
        Err(e) => fail(slot, settings, &e),
    }
}

fn fail(slot: &mut Slot, settings: &DnsSettings, e: &DnsError) {
    let retry = slot.backoff;
    tracing::warn!(domain = %slot.entry.domain, error = %e, retry_in_secs = retry.as_secs(),
        "DNS: SRV record not updated; the KMS service is unaffected");
    slot.state.last_error = Some(e.to_string());
    slot.state.failures += 1;
    slot.due = Instant::now() + retry;
    slot.backoff = (retry * 2)
        .min(MAX_BACKOFF)
        .min(settings.refresh.max(FIRST_BACKOFF));
}

/// Finds the zone of `domain` and its primary, and sends the UPDATE that
/// deletes `delete` and adds `add` (signed as of `now_ms`, the host's
/// clock); the primary it went to.
async fn update_once(
    settings: &DnsSettings,
    domain: &str,
    delete: Option<&Srv>,
    add: Option<&Srv>,
    now_ms: i64,
) -> Result<SocketAddr, DnsError> {
    let signer = match &settings.tsig_key {
        Some(k) => Some(Signer {
            key_name: k.name.clone(),
            tsig: k.signer().map_err(DnsError::Build)?,
            at_secs: u64::try_from(now_ms.div_euclid(1000)).unwrap_or(0),
        }),
        None => None,
    };
    let ask = discover::server_or_system(settings.server)?;
    let soa = message::query(rand::random(), domain, RecordType::SOA)?;
    let answer = transport::send(ask, soa, None, transport::TIMEOUT).await?;
    let (zone, mname) = message::zone_of(&answer, domain)?;
    let primary = match settings.server {
        Some(s) => s,
        None => {
            let no_primary = |reason: String| DnsError::NoPrimary {
                mname: mname.clone(),
                reason,
            };
            tokio::net::lookup_host((mname.as_str(), 53))
                .await
                .map_err(|e| no_primary(e.to_string()))?
                .next()
                .ok_or_else(|| no_primary("no address".into()))?
        }
    };
    let owner = message::srv_owner(domain);
    let update = message::update(rand::random(), &zone, &owner, settings.ttl, delete, add)?;
    let resp = transport::send(primary, update, signer.as_ref(), transport::TIMEOUT).await?;
    message::check_update(
        &resp,
        &zone,
        &owner,
        signer.as_ref().map(|s| s.key_name.as_str()),
    )?;
    Ok(primary)
}

/// Writes the states for `kmsd status` and `/metrics`.
async fn persist(host: &Host, slots: &BTreeMap<String, Slot>) {
    let states: Vec<DomainState> = slots.values().map(|s| s.state.clone()).collect();
    match host.metrics().dns.lock() {
        Ok(mut g) => g.clone_from(&states),
        Err(e) => e.into_inner().clone_from(&states),
    }
    if let Err(e) = host.store().note(vec![NoteValue::Dns(states)]).await {
        tracing::warn!(error = %e, "DNS: cannot note the publication state for `kmsd status`");
    }
}
