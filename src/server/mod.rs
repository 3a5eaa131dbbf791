//! The tokio shell: listeners, the accept loop with its connection limits,
//! one task per connection, and graceful shutdown. No protocol logic here.

pub mod access;
pub mod connection;
pub mod signal;

use crate::config::ServeConfig;
use crate::host::Host;
use crate::protocol::rpc::bind::BindPolicy;
use connection::ConnLimits;
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

/// Why listening failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {err}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub err: std::io::Error,
}

/// Binds one listener; IPv6 ones are IPv6-only so `[::]` and `0.0.0.0` can
/// share a port.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let e = |err| BindError { addr, err };
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(e)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(e)?;
    }
    sock.set_reuse_address(true).map_err(e)?;
    sock.set_nonblocking(true).map_err(e)?;
    sock.bind(&addr.into()).map_err(e)?;
    sock.listen(1024).map_err(e)?;
    TcpListener::from_std(sock.into()).map_err(e)
}

/// Binds the configured addresses. A default IPv6 wildcard on a machine
/// without IPv6 is skipped with a warning; any other failure is an error.
pub fn bind_all(cfg: &ServeConfig) -> Result<Vec<TcpListener>, BindError> {
    let defaults = ServeConfig::default().listen;
    let mut out = Vec::new();
    for &addr in &cfg.listen {
        match bind(addr) {
            Ok(l) => out.push(l),
            Err(b)
                if addr.is_ipv6()
                    && defaults.contains(&addr)
                    && cfg.listen == defaults
                    && matches!(b.err.raw_os_error(), Some(97) | Some(99)) =>
            {
                warn!(%addr, error = %b.err, "no IPv6 here; serving IPv4 only");
            }
            Err(b) => return Err(b),
        }
    }
    Ok(out)
}

/// Counts open connections per source address.
#[derive(Default)]
struct PerIp(DashMap<IpAddr, usize>);

struct PerIpGuard(Arc<PerIp>, IpAddr);

impl PerIp {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let mut n = self.0.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard(self.clone(), ip))
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        self.0.0.remove_if_mut(&self.1, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// A running host: its listeners and what they share.
/// What a SIGHUP can change about connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    pub access: access::AccessList,
    pub max_connections_per_ip: usize,
    pub max_pdu_len: usize,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_requests: u32,
    pub shutdown_grace: Duration,
}

impl Tunables {
    pub fn from_config(cfg: &ServeConfig) -> Self {
        Self {
            access: cfg.access.clone(),
            max_connections_per_ip: cfg.max_connections_per_ip,
            max_pdu_len: cfg.max_pdu_len,
            read_timeout: cfg.read_timeout,
            idle_timeout: cfg.idle_timeout,
            max_requests: cfg.max_requests_per_connection,
            shutdown_grace: cfg.shutdown_grace,
        }
    }
}

/// Shared, replaceable connection settings.
pub type SharedTunables = Arc<std::sync::RwLock<Tunables>>;

fn read_tunables(t: &SharedTunables) -> Tunables {
    match t.read() {
        Ok(g) => g.clone(),
        Err(e) => e.into_inner().clone(),
    }
}

pub struct Server {
    listeners: Vec<TcpListener>,
    host: Arc<Host>,
    tunables: SharedTunables,
    cfg: ServeConfig,
}

impl Server {
    pub fn new(listeners: Vec<TcpListener>, host: Arc<Host>, cfg: ServeConfig) -> Self {
        let tunables = Arc::new(std::sync::RwLock::new(Tunables::from_config(&cfg)));
        Self {
            listeners,
            host,
            tunables,
            cfg,
        }
    }

    /// The connection settings in force; replace them to change them live.
    pub fn tunables(&self) -> SharedTunables {
        self.tunables.clone()
    }

    /// The addresses actually listened on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight exchanges
    /// finish (bounded by the configured grace) and flushes the store.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections));
        let per_ip = Arc::new(PerIp::default());
        let assoc = Arc::new(AtomicU32::new(rand::random::<u32>() | 1));
        let refusals = Arc::new(access::RefusalLog::default());
        let policy = BindPolicy {
            ndr64: self.cfg.ndr64,
            btfn: self.cfg.btfn,
        };
        for listener in self.listeners {
            let Ok(local) = listener.local_addr() else {
                continue;
            };
            info!(addr = %local, "listening");
            let port = local.port();
            let ctx = AcceptCtx {
                host: self.host.clone(),
                tunables: self.tunables.clone(),
                refusals: refusals.clone(),
                slots: slots.clone(),
                per_ip: per_ip.clone(),
                policy,
                port,
                assoc: assoc.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            };
            tracker.spawn(accept_loop(listener, ctx));
        }
        shutdown.cancelled().await;
        tracker.close();
        let grace = read_tunables(&self.tunables).shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                ?grace,
                "exchanges still running at the end of the grace period"
            );
        }
        if let Err(e) = self.host.flush().await {
            warn!(error = %e, "final store flush failed");
        }
        info!("stopped");
    }
}

struct AcceptCtx {
    host: Arc<Host>,
    tunables: SharedTunables,
    refusals: Arc<access::RefusalLog>,
    policy: BindPolicy,
    port: u16,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    assoc: Arc<AtomicU32>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

async fn accept_loop(listener: TcpListener, ctx: AcceptCtx) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        admit(stream, peer, &ctx);
    }
}

/// Admits or drops a fresh connection. Refusals happen before anything is
/// read or allocated for the peer, and are logged once a minute per source.
fn admit(stream: TcpStream, peer: SocketAddr, ctx: &AcceptCtx) {
    use crate::metrics::ConnEvent;
    let ip = access::normalize(peer.ip());
    let metrics = &ctx.host.metrics;
    let refuse = |event: ConnEvent, reason: &'static str| {
        metrics.conn_event(event);
        if ctx.refusals.should_log(ip, reason) {
            warn!(%peer, reason, "connection refused (logged once a minute per source)");
        }
    };
    let t = read_tunables(&ctx.tunables);
    let permitted = t.access.permits(ip);
    if !permitted {
        return refuse(
            ConnEvent::RefusedNotAllowed,
            "address not allowed (see --allow/--deny)",
        );
    }
    let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
        return refuse(ConnEvent::RefusedLimit, "connection limit reached");
    };
    let Some(ip_guard) = ctx.per_ip.enter(ip, t.max_connections_per_ip) else {
        return refuse(
            ConnEvent::RefusedPerAddressLimit,
            "per-address connection limit reached",
        );
    };
    metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let group = ctx.assoc.fetch_add(1, Ordering::Relaxed) | 1;
    let span = info_span!("conn", %peer);
    let host = ctx.host.clone();
    let fut = connection::serve(
        stream,
        peer,
        ctx.host.clone(),
        ConnLimits {
            policy: ctx.policy,
            port: ctx.port,
            max_pdu_len: t.max_pdu_len,
            read_timeout: t.read_timeout,
            idle_timeout: t.idle_timeout,
            max_requests: t.max_requests,
        },
        group,
        ctx.shutdown.clone(),
    );
    ctx.tracker.spawn(
        async move {
            fut.await;
            host.metrics
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
            drop(ip_guard);
            drop(permit);
        }
        .instrument(span),
    );
}
