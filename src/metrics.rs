//! Counters and histograms the host keeps for `/metrics` (Prometheus text
//! format): lock-free atomics updated on the hot path, rendered on demand.

use crate::protocol::kms::products::Pool;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Answered,
    Refused,
    Invalid,
    Fault,
    StoreError,
    /// Refused: a hard-enforced license pack had no free seat.
    NoSeat,
}

impl RequestResult {
    const ALL: [Self; 6] = [
        Self::Answered,
        Self::Refused,
        Self::Invalid,
        Self::Fault,
        Self::StoreError,
        Self::NoSeat,
    ];
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Fault => "rpc_fault",
            Self::StoreError => "store_error",
            Self::NoSeat => "no_seat",
        }
    }
}

/// Why a connection was refused or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    RefusedNotAllowed,
    RefusedLimit,
    RefusedPerAddressLimit,
    RefusedQueueTimeout,
    ClosedIdle,
    ClosedReadTimeout,
    ClosedMalformed,
    ClosedRequestLimit,
}

impl ConnEvent {
    const ALL: [Self; 8] = [
        Self::RefusedNotAllowed,
        Self::RefusedLimit,
        Self::RefusedPerAddressLimit,
        Self::RefusedQueueTimeout,
        Self::ClosedIdle,
        Self::ClosedReadTimeout,
        Self::ClosedMalformed,
        Self::ClosedRequestLimit,
    ];
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::RefusedNotAllowed => ("refused", "not_allowed"),
            Self::RefusedLimit => ("refused", "connection_limit"),
            Self::RefusedPerAddressLimit => ("refused", "per_address_limit"),
            Self::RefusedQueueTimeout => ("refused", "per_address_queue_timeout"),
            Self::ClosedIdle => ("closed", "idle_timeout"),
            Self::ClosedReadTimeout => ("closed", "read_timeout"),
            Self::ClosedMalformed => ("closed", "malformed"),
            Self::ClosedRequestLimit => ("closed", "request_limit"),
        }
    }
}

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    total: AtomicU64,
}

/// Seconds: 50 µs to 1 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Records per store batch.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Records `v` (in the histogram's unit); the sum is kept in millionths.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b)
            && let Some(c) = self.counts.get(i)
        {
            c.fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Relaxed);
        self.total.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let total = self.total.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let lb = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{lb} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{lb} {total}");
    }
}

/// Pool index for labels (`None`: no pool, e.g. refused before counting).
fn pool_index(p: Option<Pool>) -> usize {
    match p {
        Some(Pool::Windows) => 0,
        Some(Pool::Office2010) => 1,
        Some(Pool::Office2013Plus) => 2,
        None => 3,
    }
}

const POOL_LABELS: [&str; 4] = ["windows", "office2010", "office2013+", "none"];

/// Everything `/metrics` reports that the host accumulates.
#[derive(Debug)]
pub struct Metrics {
    /// [version 4/5/6][result][pool]
    requests: Vec<AtomicU64>,
    conn_events: Vec<AtomicU64>,
    pub connections_open: AtomicI64,
    /// Connections waiting in their address's queue for a slot.
    pub connections_waiting: AtomicI64,
    pub connections_accepted: AtomicU64,
    /// The KMS listener's connection limit in force (`max_connections`,
    /// lowered at start when the descriptor limit cannot hold it).
    pub max_connections: AtomicU64,
    pub response_latency: Histogram,
    pub store_commit_latency: Histogram,
    pub store_batch_size: Histogram,
    /// The DNS publisher's state per domain (written by it, rendered here).
    pub dns: std::sync::Mutex<Vec<crate::dns::DomainState>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: (0..4 * RequestResult::ALL.len() * 4)
                .map(|_| AtomicU64::new(0))
                .collect(),
            conn_events: ConnEvent::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            connections_open: AtomicI64::new(0),
            connections_waiting: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            max_connections: AtomicU64::new(0),
            response_latency: Histogram::new(LATENCY_BOUNDS),
            store_commit_latency: Histogram::new(LATENCY_BOUNDS),
            store_batch_size: Histogram::new(BATCH_BOUNDS),
            dns: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// `version_major` 4, 5, 6, or anything else for "unknown".
    fn req_slot(version_major: u16, r: RequestResult, pool: Option<Pool>) -> usize {
        let v = match version_major {
            4..=6 => usize::from(version_major - 4),
            _ => 3,
        };
        let ri = RequestResult::ALL.iter().position(|x| *x == r).unwrap_or(0);
        (v * RequestResult::ALL.len() + ri) * 4 + pool_index(pool)
    }

    /// Counts one request and its latency.
    pub fn request(
        &self,
        version_major: u16,
        r: RequestResult,
        pool: Option<Pool>,
        took: Duration,
    ) {
        if let Some(c) = self.requests.get(Self::req_slot(version_major, r, pool)) {
            c.fetch_add(1, Relaxed);
        }
        self.response_latency.observe(took.as_secs_f64());
    }

    /// Total requests with this result (all versions and pools).
    pub fn requests_with(&self, r: RequestResult) -> u64 {
        let mut n = 0;
        for v in 4..=7 {
            for p in 0..4 {
                let pool = [
                    Some(Pool::Windows),
                    Some(Pool::Office2010),
                    Some(Pool::Office2013Plus),
                    None,
                ][p];
                n += self
                    .requests
                    .get(Self::req_slot(v, r, pool))
                    .map_or(0, |c| c.load(Relaxed));
            }
        }
        n
    }

    pub fn conn_event(&self, e: ConnEvent) {
        if let Some(i) = ConnEvent::ALL.iter().position(|x| *x == e)
            && let Some(c) = self.conn_events.get(i)
        {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn conn_events(&self, e: ConnEvent) -> u64 {
        ConnEvent::ALL
            .iter()
            .position(|x| *x == e)
            .and_then(|i| self.conn_events.get(i))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Prometheus text exposition; `pools` gives (pool, count, capacity).
    pub fn render(&self, pools: &[(Pool, u32, u32)]) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP kmsd_requests_total KMS activation requests by protocol version, result and pool.\n");
        out.push_str("# TYPE kmsd_requests_total counter\n");
        for v in 4u16..=7 {
            let proto = if v == 7 {
                "unknown".to_owned()
            } else {
                format!("{v}.0")
            };
            for r in RequestResult::ALL {
                for (pi, pl) in POOL_LABELS.iter().enumerate() {
                    let pool = [
                        Some(Pool::Windows),
                        Some(Pool::Office2010),
                        Some(Pool::Office2013Plus),
                        None,
                    ][pi];
                    let n = self
                        .requests
                        .get(Self::req_slot(v, r, pool))
                        .map_or(0, |c| c.load(Relaxed));
                    let _ = writeln!(
                        out,
                        "kmsd_requests_total{{protocol=\"{proto}\",result=\"{}\",pool=\"{pl}\"}} {n}",
                        r.label()
                    );
                }
            }
        }
        out.push_str("# HELP kmsd_pool_count Distinct clients counted in each pool.\n# TYPE kmsd_pool_count gauge\n");
        for (p, count, _) in pools {
            let _ = writeln!(out, "kmsd_pool_count{{pool=\"{}\"}} {count}", p.name());
        }
        out.push_str("# HELP kmsd_pool_capacity Capacity of each pool (2 x the highest threshold seen).\n# TYPE kmsd_pool_capacity gauge\n");
        for (p, _, cap) in pools {
            let _ = writeln!(out, "kmsd_pool_capacity{{pool=\"{}\"}} {cap}", p.name());
        }
        out.push_str("# HELP kmsd_connections_open Connections open now.\n# TYPE kmsd_connections_open gauge\n");
        let _ = writeln!(
            out,
            "kmsd_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        out.push_str("# HELP kmsd_connections_waiting Connections waiting for a per-address slot.\n# TYPE kmsd_connections_waiting gauge\n");
        let _ = writeln!(
            out,
            "kmsd_connections_waiting {}",
            self.connections_waiting.load(Relaxed)
        );
        out.push_str("# HELP kmsd_max_connections The KMS listener's connection limit in force.\n# TYPE kmsd_max_connections gauge\n");
        let _ = writeln!(
            out,
            "kmsd_max_connections {}",
            self.max_connections.load(Relaxed)
        );
        out.push_str("# HELP kmsd_connections_accepted_total Connections admitted.\n# TYPE kmsd_connections_accepted_total counter\n");
        let _ = writeln!(
            out,
            "kmsd_connections_accepted_total {}",
            self.connections_accepted.load(Relaxed)
        );
        out.push_str("# HELP kmsd_connections_ended_total Connections refused or closed by the host, by reason.\n# TYPE kmsd_connections_ended_total counter\n");
        for (e, c) in ConnEvent::ALL.iter().zip(&self.conn_events) {
            let (kind, reason) = e.labels();
            let _ = writeln!(
                out,
                "kmsd_connections_ended_total{{event=\"{kind}\",reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        out.push_str("# HELP kmsd_response_seconds Time from a request PDU to its answer (commit included).\n# TYPE kmsd_response_seconds histogram\n");
        self.response_latency
            .render(&mut out, "kmsd_response_seconds", "");
        out.push_str("# HELP kmsd_store_commit_seconds Time to commit one store batch.\n# TYPE kmsd_store_commit_seconds histogram\n");
        self.store_commit_latency
            .render(&mut out, "kmsd_store_commit_seconds", "");
        out.push_str("# HELP kmsd_store_batch_records Records per store batch (group commit).\n# TYPE kmsd_store_batch_records histogram\n");
        self.store_batch_size
            .render(&mut out, "kmsd_store_batch_records", "");
        self.render_dns(&mut out);
        out
    }

    /// The DNS publisher's gauges and counters, one series per domain
    /// (domain names are letters, digits, `-`, `_` and dots: no escaping).
    fn render_dns(&self, out: &mut String) {
        let dns = match self.dns.lock() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        };
        out.push_str("# HELP kmsd_dns_published Whether this host's _vlmcs._tcp SRV record is in the domain's zone (1) or not (0).\n# TYPE kmsd_dns_published gauge\n");
        for d in &dns {
            let _ = writeln!(
                out,
                "kmsd_dns_published{{domain=\"{}\"}} {}",
                d.domain,
                u8::from(d.published)
            );
        }
        out.push_str("# HELP kmsd_dns_last_success_timestamp_seconds When the record was last published or re-asserted (0: never).\n# TYPE kmsd_dns_last_success_timestamp_seconds gauge\n");
        for d in &dns {
            let t = d.last_success_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            let _ = writeln!(
                out,
                "kmsd_dns_last_success_timestamp_seconds{{domain=\"{}\"}} {t}",
                d.domain
            );
        }
        out.push_str("# HELP kmsd_dns_failures Failed updates since the last success.\n# TYPE kmsd_dns_failures gauge\n");
        for d in &dns {
            let _ = writeln!(
                out,
                "kmsd_dns_failures{{domain=\"{}\"}} {}",
                d.domain, d.failures
            );
        }
        out.push_str("# HELP kmsd_dns_updates_total Successful updates (publish, re-assert, withdraw) since start.\n# TYPE kmsd_dns_updates_total counter\n");
        for d in &dns {
            let _ = writeln!(
                out,
                "kmsd_dns_updates_total{{domain=\"{}\"}} {}",
                d.domain, d.updates
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request(
            6,
            RequestResult::Answered,
            Some(Pool::Windows),
            Duration::from_micros(80),
        );
        m.request(
            6,
            RequestResult::Answered,
            Some(Pool::Windows),
            Duration::from_millis(3),
        );
        m.request(4, RequestResult::Refused, None, Duration::from_micros(10));
        m.conn_event(ConnEvent::RefusedNotAllowed);
        let text = m.render(&[(Pool::Windows, 7, 50)]);
        assert!(
            text.contains(
                "kmsd_requests_total{protocol=\"6.0\",result=\"answered\",pool=\"windows\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kmsd_requests_total{protocol=\"4.0\",result=\"refused\",pool=\"none\"} 1"
            )
        );
        assert!(text.contains("kmsd_pool_count{pool=\"windows\"} 7"));
        assert!(text.contains("kmsd_pool_capacity{pool=\"windows\"} 50"));
        assert!(
            text.contains(
                "kmsd_connections_ended_total{event=\"refused\",reason=\"not_allowed\"} 1"
            )
        );
        assert!(
            text.contains("kmsd_response_seconds_bucket{le=\"0.0001\"} 2"),
            "{text}"
        );
        assert!(text.contains("kmsd_response_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("kmsd_response_seconds_count 3"));
        assert_eq!(m.requests_with(RequestResult::Answered), 2);
    }

    #[test]
    fn renders_the_dns_state_per_domain() {
        let m = Metrics::default();
        *m.dns.lock().unwrap() = vec![crate::dns::DomainState {
            domain: "lab.test".into(),
            published: true,
            last_success_ms: Some(1_700_000_000_500),
            failures: 2,
            updates: 3,
            ..Default::default()
        }];
        let text = m.render(&[]);
        for line in [
            "kmsd_dns_published{domain=\"lab.test\"} 1",
            "kmsd_dns_last_success_timestamp_seconds{domain=\"lab.test\"} 1700000000.5",
            "kmsd_dns_failures{domain=\"lab.test\"} 2",
            "kmsd_dns_updates_total{domain=\"lab.test\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
