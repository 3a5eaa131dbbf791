//! The admin listener's connections, served one request each with hyper,
//! under limits that keep a slow or idle crowd from holding descriptors:
//!
//! * at most `max` connections; when all are taken, a new one replaces the
//!   oldest connection still waiting for its request headers (a
//!   half-sent request), so a fresh `/healthz` gets through a crowd of
//!   slow clients; when every connection is busy answering, the new one
//!   is closed at once;
//! * with the connections being closed after replacement, at most `2 × max`
//!   descriptors in all (past that, new connections are closed at once);
//! * headers within [`HEADER_TIMEOUT`], an answer within [`REQUEST_TIMEOUT`],
//!   the whole connection within [`CONNECTION_DEADLINE`];
//! * headers at most [`MAX_HEADER_BYTES`]; `GET` and `HEAD` only; no
//!   request body; no keep-alive.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Time for a client's request headers to arrive, from its connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for an answer once the headers are in.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an admin connection lives.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(20);
/// Largest request head read (hyper's smallest read buffer).
pub const MAX_HEADER_BYTES: usize = 8192;
/// Most request headers.
const MAX_HEADERS: usize = 32;
/// How long in-flight admin requests may take to finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The admin connections held, oldest first among those still waiting
/// for their headers.
struct Slots {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: usize,
    /// Connections whose request head has not arrived, oldest first.
    waiting: VecDeque<(u64, CancellationToken)>,
}

/// One admitted connection's slot; freed when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Cancelled when a newer connection replaces this one.
    replaced: CancellationToken,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        }
    }

    /// A slot for a new connection, replacing the oldest one still waiting
    /// for its headers if all are taken; None when every one is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.lock();
        if inner.open >= self.max {
            let (_, oldest) = inner.waiting.pop_front()?;
            oldest.cancel();
            inner.open -= 1;
        }
        inner.open += 1;
        inner.next_id += 1;
        let id = inner.next_id;
        let replaced = CancellationToken::new();
        inner.waiting.push_back((id, replaced.clone()));
        Some(Slot {
            slots: self.clone(),
            id,
            replaced,
        })
    }
}

impl Slot {
    /// The request head arrived: the connection is no longer replaceable.
    fn serving(&self) {
        let mut inner = self.slots.lock();
        inner.waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.replaced.is_cancelled() {
            return; // its slot went to the connection that replaced it
        }
        let mut inner = self.slots.lock();
        inner.waiting.retain(|(id, _)| *id != self.id);
        inner.open -= 1;
    }
}

/// Serves `app` on `listener` until `shutdown`; then lets requests in
/// flight finish (at most a few seconds).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max = max_connections.max(1);
    let slots = Arc::new(Slots {
        max,
        inner: Mutex::new(Inner::default()),
    });
    let descriptors = Arc::new(Semaphore::new(2 * max));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin API: accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Past either limit the stream is dropped here: closed at once.
        let Ok(fd) = descriptors.clone().try_acquire_owned() else {
            continue;
        };
        let Some(slot) = slots.admit() else {
            continue;
        };
        tracker.spawn(connection(stream, app.clone(), slot, fd, shutdown.clone()));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("admin API connections still open after the grace period; leaving them");
    }
    Ok(())
}

/// One connection: one request, within the deadlines, unless replaced.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    slot: Slot,
    _fd: tokio::sync::OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let replaced = slot.replaced.clone();
    let slot = Arc::new(slot);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        slot.serving();
        answer(app.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(CONNECTION_DEADLINE);
    tokio::pin!(deadline);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = replaced.cancelled() => return,
        () = &mut deadline => return,
        () = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        () = &mut deadline => {}
    }
}

/// Answers one request: `GET`/`HEAD` without a body, within
/// [`REQUEST_TIMEOUT`].
async fn answer(
    mut app: Router,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Ok(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a request body is not accepted\n",
        ));
    }
    let call = tower_service::Service::call(&mut app, req);
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(never)) => match never {},
        Err(_) => Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "request timed out\n",
        )),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_replaces_the_oldest_still_waiting() {
        let slots = Arc::new(Slots {
            max: 2,
            inner: Mutex::new(Inner::default()),
        });
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        b.serving();
        let c = slots.admit().expect("replaces a");
        assert!(a.replaced.is_cancelled() && !b.replaced.is_cancelled());
        drop(a);
        c.serving();
        assert!(slots.admit().is_none(), "every connection is busy");
        drop(b);
        let d = slots.admit().expect("a slot came back");
        drop((c, d));
        assert_eq!(slots.lock().open, 0);
        assert!(slots.lock().waiting.is_empty());
    }
}
