//! The admin HTTP API: Prometheus metrics, health and readiness probes, JSON
//! views of the database, and a server-rendered status page.
//!
//! Routes (all `GET`; `HEAD` works too):
//!
//! | path | what |
//! |---|---|
//! | `/` | the status page (HTML, inline CSS, no scripts); `?q=` filters the inventory |
//! | `/metrics` | Prometheus text exposition |
//! | `/healthz` | 200 `ok` when a KMS listener answers a real RPC bind and the database is writable, else 503 |
//! | `/readyz` | 200 while serving, 503 once shutdown has begun |
//! | `/api/status` | [`report::status`](crate::report::status) as JSON |
//! | `/api/clients?pool=&since=&q=&limit=` | the client inventory as JSON |
//! | `/api/activations?limit=` | the most recent activation records as JSON, newest first |
//!
//! The listener is meant to be loopback-only: nothing here authenticates.
//! [`serve`] does not check; the caller picks the address.

mod data;
mod health;
pub mod listener;
mod page;

pub use data::ActivationRow;

use crate::host::Host;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the admin API reads.
pub struct AdminState {
    pub host: Arc<Host>,
    /// The KMS listeners' actual addresses.
    pub kms_addrs: Vec<SocketAddr>,
}

/// The state plus the shutdown signal readiness reports on.
struct Shared {
    st: AdminState,
    shutdown: CancellationToken,
}

type S = State<Arc<Shared>>;

/// Serves the admin API on `listener` until `shutdown` is cancelled; then
/// lets requests in flight finish (at most a few seconds) and returns. At
/// most `max_connections` connections are held, each for one request under
/// the limits of [`listener`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    max_connections: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, max_connections, "admin API listening");
    }
    let app = router_with_shutdown(state, shutdown.clone());
    listener::serve(listener, app, max_connections, shutdown).await
}

/// The admin API's routes (readiness never reports shutdown).
pub fn router(state: AdminState) -> Router {
    router_with_shutdown(state, CancellationToken::new())
}

/// [`router`] whose `/readyz` turns 503 once `shutdown` is cancelled.
pub fn router_with_shutdown(state: AdminState, shutdown: CancellationToken) -> Router {
    let shared = Arc::new(Shared {
        st: state,
        shutdown,
    });
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(api_status))
        .route("/api/clients", get(api_clients))
        .route("/api/activations", get(api_activations))
        .route("/api/licenses", get(api_licenses))
        .route("/api/seats", get(api_seats))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found\n".into()) })
        .with_state(shared)
}

/// A failed request: a status and a plain-text message.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
    fn internal(msg: impl std::fmt::Display) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::warn!(status = %self.0, error = %self.1, "admin API request failed");
        }
        text(self.0, format!("{}\n", self.1))
    }
}

/// A plain-text response that no cache keeps.
fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(s): S) -> Response {
    let host = &s.st.host;
    let pools: Vec<_> = host
        .pools_now()
        .into_iter()
        .map(|p| (p.pool, p.count, p.capacity))
        .collect();
    let mut body = host.metrics().render(&pools);
    crate::licenses::view::render_metrics(&mut body, &host.licenses().snapshot().report.packs);
    (
        [
            (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State(s): S) -> Response {
    let kms = async {
        match s.st.kms_addrs.first() {
            Some(&addr) => health::probe_kms(addr).await,
            None => Err("no KMS listener".to_owned()),
        }
    };
    let store = async {
        s.st.host
            .store()
            .probe()
            .await
            .map_err(|e| format!("not writable: {e}"))
    };
    let (kms, store) = tokio::join!(kms, store);
    let mut problems = String::new();
    if let Err(e) = kms {
        problems.push_str(&format!("kms: {e}\n"));
    }
    if let Err(e) = store {
        problems.push_str(&format!("store: {e}\n"));
    }
    if problems.is_empty() {
        text(StatusCode::OK, "ok\n".into())
    } else {
        tracing::warn!(problems = %problems.trim_end().replace('\n', "; "), "health check failed");
        text(StatusCode::SERVICE_UNAVAILABLE, problems)
    }
}

async fn readyz(State(s): S) -> Response {
    if s.shutdown.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
    } else if s.st.kms_addrs.is_empty() {
        text(StatusCode::SERVICE_UNAVAILABLE, "no KMS listener\n".into())
    } else {
        text(StatusCode::OK, "ready\n".into())
    }
}

async fn api_status(State(s): S) -> Result<Response, ApiError> {
    let now = s.st.host.now_ms();
    let status = s.st.host.store().status(now).await;
    let report = crate::report::StatusReport::new(status.map_err(ApiError::internal)?);
    Ok(json(&report))
}

/// Query of `/api/clients` (and `q` of `/`). Everything arrives as text so
/// that bad values get a clear 400 rather than an extractor's message.
#[derive(Debug, Default, Deserialize)]
struct ClientsQuery {
    pool: Option<String>,
    since: Option<String>,
    q: Option<String>,
    limit: Option<String>,
}

async fn api_clients(State(s): S, Query(p): Query<ClientsQuery>) -> Result<Response, ApiError> {
    let pool = data::parse_pool(p.pool.as_deref()).map_err(ApiError::bad)?;
    let now = s.st.host.now_ms();
    let since = data::parse_since(p.since.as_deref(), now).map_err(ApiError::bad)?;
    let limit = data::parse_limit(p.limit.as_deref(), 200, 5000).map_err(ApiError::bad)?;
    let q = p.q.unwrap_or_default();
    let query = crate::store::ClientQuery {
        now_ms: now,
        pool,
        since_ms: since,
        limit,
    };
    let rows = data::clients(s.st.host.store(), query, &q)
        .await
        .map_err(ApiError::internal)?;
    Ok(json(&rows))
}

/// The packs with their usage, read now (not the last refresh).
async fn api_licenses(State(s): S) -> Result<Response, ApiError> {
    let report = crate::licenses::commands::read_report(s.st.host.licenses(), s.st.host.now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok(json(&crate::licenses::view::LicensesView::from(&report)))
}

#[derive(Debug, Default, Deserialize)]
struct SeatsQuery {
    pack: Option<i64>,
    stale: Option<String>,
}

/// The seats, read now (`?pack=ID`, `?stale=1`).
async fn api_seats(State(s): S, Query(q): Query<SeatsQuery>) -> Result<Response, ApiError> {
    let w = s.st.host.licenses();
    let now = s.st.host.now_ms();
    let stale = matches!(q.stale.as_deref(), Some("1" | "true" | "yes"));
    let seats = crate::licenses::commands::read_seats(w, now, q.pack, stale)
        .await
        .map_err(ApiError::internal)?;
    Ok(json(&seats))
}

#[derive(Debug, Default, Deserialize)]
struct LimitQuery {
    limit: Option<String>,
}

async fn api_activations(State(s): S, Query(p): Query<LimitQuery>) -> Result<Response, ApiError> {
    let limit = data::parse_limit(p.limit.as_deref(), 50, 1000).map_err(ApiError::bad)?;
    let rows = data::recent_activations(s.st.host.store(), limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(json(&rows))
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec_pretty(v) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("cannot encode JSON: {e}")).into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    q: Option<String>,
}

async fn index(State(s): S, Query(p): Query<PageQuery>) -> Response {
    let q = p.q.unwrap_or_default();
    let now = s.st.host.now_ms();
    let loaded = page::load(s.st.host.store(), now, &q)
        .await
        .map_err(ApiError::internal);
    let (status, body) = match loaded {
        Ok(db) => {
            let view = page::View {
                host: &s.st.host,
                kms_addrs: &s.st.kms_addrs,
                shutting_down: s.shutdown.is_cancelled(),
                now_ms: now,
                q: &q,
                db: &db,
            };
            (StatusCode::OK, page::render(&view))
        }
        Err(ApiError(status, msg)) => {
            tracing::warn!(error = %msg, "status page: database unavailable");
            (status, page::render_error(status, &msg))
        }
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
