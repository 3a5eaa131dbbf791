//! `kmsd load --metrics URL`: the host's own figures for the run. The
//! Prometheus text at URL (kmsd's `/metrics`) is read before and after the
//! run, and the report shows how a few `kmsd_*` series moved: requests by
//! result, connections, store commits and batch sizes, and the host's
//! response time from its histogram.
//!
//! Plain HTTP/1.0 over one TCP connection (the admin API speaks it), with
//! the same loopback rule as the load target.

use anyhow::{Context, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest metrics page read.
const MAX_BODY: u64 = 8 << 20;
/// Time allowed for one scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Series whose movement the report shows (`_bucket` series are used for
/// the response-time quantiles instead).
const SHOWN: &[&str] = &[
    "kmsd_requests_total",
    "kmsd_connections_accepted_total",
    "kmsd_connections_ended_total",
    "kmsd_response_seconds_count",
    "kmsd_store_commit_seconds_count",
    "kmsd_store_batch_records_sum",
    "kmsd_pool_count",
];

/// Where the metrics are read from.
#[derive(Debug, Clone)]
pub struct MetricsUrl {
    pub url: String,
    pub addr: SocketAddr,
    host: String,
    path: String,
}

impl MetricsUrl {
    /// Parses `http://HOST[:PORT][/PATH]` (path `/metrics` when left out)
    /// and resolves HOST under the load target's rule
    /// ([`crate::client::check_remote`]): loopback only unless
    /// `allow_remote`.
    pub async fn resolve(url: &str, allow_remote: bool) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--metrics {url:?}: expected http://HOST:PORT/metrics");
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if hostport.is_empty() || path.contains(char::is_whitespace) {
            bail!("--metrics {url:?}: expected http://HOST:PORT/metrics");
        }
        let has_port = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok())
            && (!hostport.starts_with('[') || hostport.contains("]:"));
        let with_port = if has_port {
            hostport.to_owned()
        } else {
            format!("{hostport}:80")
        };
        let addr = crate::client::resolve_allowed("read the metrics of", &with_port, allow_remote)
            .await
            .with_context(|| format!("--metrics {url}"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            host: hostport.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Reads and parses the page once.
    pub async fn scrape(&self) -> anyhow::Result<Samples> {
        tokio::time::timeout(SCRAPE_TIMEOUT, self.get())
            .await
            .with_context(|| format!("{}: no answer within {SCRAPE_TIMEOUT:?}", self.url))?
            .with_context(|| format!("cannot read {}", self.url))
    }

    async fn get(&self) -> anyhow::Result<Samples> {
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\nUser-Agent: kmsd-load\r\n\r\n",
            self.path, self.host
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.take(MAX_BODY).read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("not an HTTP response")?;
        let status = head.lines().next().unwrap_or("");
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("answered {status:?}");
        }
        Ok(parse(body))
    }
}

/// The samples of a Prometheus text page: series (name and labels, as
/// written) to value.
pub type Samples = BTreeMap<String, f64>;

/// Parses the Prometheus text format's sample lines (comments skipped,
/// timestamps ignored).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace, or at the first space.
        let split = match line.find('{') {
            Some(_) => line.rfind('}').map(|i| i + 1),
            None => line.find(' '),
        };
        let Some(split) = split else { continue };
        let (series, rest) = line.split_at(split);
        let value = rest.split_whitespace().next().and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse::<f64>().ok(),
        });
        if let Some(v) = value {
            out.insert(series.trim().to_owned(), v);
        }
    }
    out
}

/// One series before and after the run.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub series: String,
    pub before: f64,
    pub after: f64,
}

impl Moved {
    pub fn delta(&self) -> f64 {
        self.after - self.before
    }
}

/// What the host's metrics say about the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    pub url: String,
    /// The shown series that moved, in [`SHOWN`] order, and the gauges.
    pub series: Vec<Moved>,
    /// Requests the host answered or refused during the run.
    pub requests: f64,
    /// The host's mean time from a request to its answer (µs).
    pub response_mean_us: Option<f64>,
    /// Upper bounds of the host's histogram bucket holding the median and
    /// the 99th percentile (µs).
    pub response_p50_le_us: Option<f64>,
    pub response_p99_le_us: Option<f64>,
    /// Records per store commit during the run.
    pub batch_mean: Option<f64>,
    /// Why there are no figures after the run, if the second scrape failed.
    pub error: Option<String>,
}

impl ServerFigures {
    /// The figures from the scrapes before and after.
    pub fn new(url: &str, before: &Samples, after: anyhow::Result<Samples>) -> Self {
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                return Self {
                    url: url.to_owned(),
                    series: Vec::new(),
                    requests: 0.0,
                    response_mean_us: None,
                    response_p50_le_us: None,
                    response_p99_le_us: None,
                    batch_mean: None,
                    error: Some(format!("{e:#}")),
                };
            }
        };
        let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).unwrap_or(&0.0);
        let mut series = Vec::new();
        for name in SHOWN {
            for (k, &v) in &after {
                let base = k.split('{').next().unwrap_or(k);
                let before = before.get(k).copied().unwrap_or(0.0);
                // Counters that did not move are noise; gauges always show.
                if base == *name && (v != before || *name == "kmsd_pool_count") {
                    series.push(Moved {
                        series: k.clone(),
                        before,
                        after: v,
                    });
                }
            }
        }
        let requests = series
            .iter()
            .filter(|m| m.series.starts_with("kmsd_requests_total"))
            .map(Moved::delta)
            .sum();
        let n = delta("kmsd_response_seconds_count");
        let response_mean_us = (n > 0.0).then(|| delta("kmsd_response_seconds_sum") / n * 1e6);
        let commits = delta("kmsd_store_batch_records_count");
        let batch_mean = (commits > 0.0).then(|| delta("kmsd_store_batch_records_sum") / commits);
        // Cumulative bucket deltas, by upper bound.
        let mut buckets: Vec<(f64, f64)> = after
            .iter()
            .filter_map(|(k, &v)| {
                let le = k
                    .strip_prefix("kmsd_response_seconds_bucket{")?
                    .split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v - before.get(k).copied().unwrap_or(0.0)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let quantile = |q: f64| {
            let total = buckets.last()?.1;
            if total <= 0.0 {
                return None;
            }
            buckets
                .iter()
                .find(|(_, c)| *c >= q * total)
                .map(|(le, _)| le * 1e6)
        };
        Self {
            url: url.to_owned(),
            series,
            requests,
            response_mean_us,
            response_p50_le_us: quantile(0.5),
            response_p99_le_us: quantile(0.99),
            batch_mean,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# HELP kmsd_requests_total KMS activation requests.
# TYPE kmsd_requests_total counter
kmsd_requests_total{protocol=\"6.0\",result=\"answered\",pool=\"windows\"} 10
kmsd_pool_count{pool=\"windows\"} 10
kmsd_response_seconds_bucket{le=\"0.001\"} 8
kmsd_response_seconds_bucket{le=\"0.01\"} 10
kmsd_response_seconds_bucket{le=\"+Inf\"} 10
kmsd_response_seconds_sum 0.01
kmsd_response_seconds_count 10
kmsd_store_batch_records_sum 10
kmsd_store_batch_records_count 10
kmsd_connections_open 1
kmsd_connections_accepted_total 7
";

    const AFTER: &str = "\
kmsd_requests_total{protocol=\"6.0\",result=\"answered\",pool=\"windows\"} 110
kmsd_requests_total{protocol=\"6.0\",result=\"refused\",pool=\"none\"} 2
kmsd_pool_count{pool=\"windows\"} 50
kmsd_response_seconds_bucket{le=\"0.001\"} 58
kmsd_response_seconds_bucket{le=\"0.01\"} 109
kmsd_response_seconds_bucket{le=\"+Inf\"} 112
kmsd_response_seconds_sum 0.214
kmsd_response_seconds_count 112
kmsd_store_batch_records_sum 110
kmsd_store_batch_records_count 35
kmsd_connections_open 3
kmsd_connections_accepted_total 7
";

    #[test]
    fn parses_the_text_format() {
        let s = parse(BEFORE);
        assert_eq!(
            s["kmsd_requests_total{protocol=\"6.0\",result=\"answered\",pool=\"windows\"}"],
            10.0
        );
        assert_eq!(s["kmsd_response_seconds_bucket{le=\"+Inf\"}"], 10.0);
        assert_eq!(s["kmsd_connections_open"], 1.0);
        assert_eq!(s.len(), 11);
    }

    #[test]
    fn deltas_of_the_run() {
        let f = ServerFigures::new("u", &parse(BEFORE), Ok(parse(AFTER)));
        assert_eq!(f.requests, 102.0);
        let refused = f
            .series
            .iter()
            .find(|m| m.series.contains("refused"))
            .unwrap();
        assert_eq!((refused.before, refused.after), (0.0, 2.0));
        let pool = f
            .series
            .iter()
            .find(|m| m.series.starts_with("kmsd_pool_count"))
            .unwrap();
        assert_eq!(pool.delta(), 40.0);
        assert!(!f.series.iter().any(|m| m.series.contains("_open")));
        // A counter that did not move is left out.
        assert!(!f.series.iter().any(|m| m.series.contains("accepted")));
        // 102 responses in 0.204 s: 2000 µs each.
        assert!((f.response_mean_us.unwrap() - 2000.0).abs() < 1e-6);
        // 50 of 102 under 1 ms, 99 under 10 ms: the median is in (1, 10] ms.
        assert_eq!(f.response_p50_le_us, Some(10_000.0));
        assert_eq!(f.response_p99_le_us, Some(f64::INFINITY));
        assert!((f.batch_mean.unwrap() - 4.0).abs() < 1e-9);
        let failed = ServerFigures::new("u", &parse(BEFORE), Err(anyhow::anyhow!("gone")));
        assert_eq!(failed.error.as_deref(), Some("gone"));
    }

    #[tokio::test]
    async fn urls_follow_the_loopback_rule() {
        let m = MetricsUrl::resolve("http://127.0.0.1:9688/metrics", false)
            .await
            .unwrap();
        assert_eq!(m.addr, "127.0.0.1:9688".parse().unwrap());
        assert_eq!(m.path, "/metrics");
        let m = MetricsUrl::resolve("http://[::1]:9688", false)
            .await
            .unwrap();
        assert_eq!((m.addr.port(), m.path.as_str()), (9688, "/metrics"));
        let m = MetricsUrl::resolve("http://127.0.0.1", false)
            .await
            .unwrap();
        assert_eq!(m.addr.port(), 80);
        assert!(
            MetricsUrl::resolve("http://10.1.2.3:9688/metrics", false)
                .await
                .is_err()
        );
        assert!(
            MetricsUrl::resolve("https://127.0.0.1:9688/metrics", false)
                .await
                .is_err()
        );
    }
}
