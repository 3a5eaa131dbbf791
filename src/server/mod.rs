//! The tokio shell: listeners, the accept loop with its connection limits,
//! one task per connection, and graceful shutdown. No protocol logic here.

pub mod access;
pub mod connection;
pub mod descriptors;
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
use tracing::{Instrument, debug_span, info, warn};

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

/// The connection slots of each source address, with a short queue in
/// front of them: a burst from one address (a lab behind one NAT gateway)
/// waits for a slot instead of being closed, and a crowd from one address
/// holds at most `max_connections_per_ip` slots plus its queue.
#[derive(Default)]
struct PerIp(DashMap<IpAddr, AddressSlots>);

/// One address's slots. `sem` holds `limit` permits in all (taken or not);
/// `users` counts connections holding a permit or waiting for one, so the
/// entry goes once the address is quiet.
struct AddressSlots {
    sem: Arc<Semaphore>,
    limit: usize,
    users: usize,
    waiting: usize,
}

impl AddressSlots {
    fn new(limit: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
            users: 0,
            waiting: 0,
        }
    }

    /// Follows a reloaded limit: a raise at once, a cut as slots come back
    /// (permits in use are never taken away).
    fn resize(&mut self, limit: usize) {
        if limit > self.limit {
            self.sem.add_permits(limit - self.limit);
            self.limit = limit;
        } else if limit < self.limit {
            self.limit -= self.sem.forget_permits(self.limit - limit);
        }
    }
}

/// What a new connection from an address gets.
enum Entry {
    /// A slot, at once.
    Admitted(PerIpGuard),
    /// A place in the address's queue.
    Queued(QueuedSlot),
    /// Neither: the address's slots and queue are full.
    Full,
}

/// A slot held (or waited for) by one connection; dropping it frees it.
struct PerIpGuard {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    waiting: bool,
}

/// A connection waiting in its address's queue.
struct QueuedSlot {
    sem: Arc<Semaphore>,
    guard: PerIpGuard,
}

impl QueuedSlot {
    /// Waits (first come, first served) until `deadline` for a slot.
    async fn wait(mut self, deadline: tokio::time::Instant) -> Option<PerIpGuard> {
        let got = tokio::time::timeout_at(deadline, self.sem.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = got else {
            return None;
        };
        self.guard.permit = Some(permit);
        self.guard.stop_waiting();
        Some(self.guard)
    }
}

impl PerIp {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize, queue: usize) -> Entry {
        let mut e = self.0.entry(ip).or_insert_with(|| AddressSlots::new(max));
        e.resize(max);
        let guard = |permit, waiting| PerIpGuard {
            per_ip: self.clone(),
            ip,
            permit,
            waiting,
        };
        // A free permit never coexists with waiters (the semaphore hands a
        // returned permit to the first waiter), so this keeps the queue's order.
        if let Ok(p) = e.sem.clone().try_acquire_owned() {
            e.users += 1;
            return Entry::Admitted(guard(Some(p), false));
        }
        if e.waiting >= queue {
            return Entry::Full;
        }
        e.users += 1;
        e.waiting += 1;
        Entry::Queued(QueuedSlot {
            sem: e.sem.clone(),
            guard: guard(None, true),
        })
    }
}

impl PerIpGuard {
    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting)
            && let Some(mut e) = self.per_ip.0.get_mut(&self.ip)
        {
            e.waiting -= 1;
        }
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        self.stop_waiting();
        // The permit goes back (to the first waiter) before the entry may go.
        drop(self.permit.take());
        self.per_ip.0.remove_if_mut(&self.ip, |_, e| {
            e.users -= 1;
            e.users == 0
        });
    }
}

/// A running host: its listeners and what they share.
/// What a SIGHUP can change about connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    pub access: access::AccessList,
    pub max_connections_per_ip: usize,
    pub max_queued_per_ip: usize,
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
            max_queued_per_ip: cfg.max_queued_per_ip,
            max_pdu_len: cfg.max_pdu_len,
            read_timeout: cfg.read_timeout,
            idle_timeout: cfg.idle_timeout,
            max_requests: cfg.max_requests_per_connection,
            shutdown_grace: cfg.shutdown_grace,
        }
    }
}

/// How often the pools read the clock while no client asks.
const CLOCK_WATCH: Duration = Duration::from_secs(10);

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
        self.host
            .metrics()
            .max_connections
            .store(self.cfg.max_connections as u64, Ordering::Relaxed);
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
        // The pools read the clock now and then even when no client asks,
        // so a step of the clock back is measured to within this.
        let host = self.host.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut every = tokio::time::interval(CLOCK_WATCH);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => drop(host.pools_now()),
                }
            }
        });
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

/// Admits, queues or drops a fresh connection. Refusals happen before
/// anything is read or allocated for the peer, and are logged once a minute
/// per source. A connection over its address's limit waits in the
/// address's queue (holding one of the total slots, so the total stays
/// bounded) for at most the read timeout.
fn admit(stream: TcpStream, peer: SocketAddr, ctx: &AcceptCtx) {
    use crate::metrics::ConnEvent;
    let ip = access::normalize(peer.ip());
    let metrics = &ctx.host.metrics();
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
    let queued = match ctx
        .per_ip
        .enter(ip, t.max_connections_per_ip, t.max_queued_per_ip)
    {
        Entry::Admitted(g) => Ok(g),
        Entry::Queued(q) => Err(q),
        Entry::Full => {
            return refuse(
                ConnEvent::RefusedPerAddressLimit,
                "per-address connection limit and queue full",
            );
        }
    };
    let _ = stream.set_nodelay(true);
    // A debug span: at the default level an info span costs each
    // connection a registry entry, its fields formatted, and an enter and
    // exit per poll (about a tenth of the server's CPU per activation at 16
    // clients). The lines a connection logs at info and warn name the peer
    // themselves.
    let span = debug_span!("conn", %peer);
    let host = ctx.host.clone();
    let refusals = ctx.refusals.clone();
    let shutdown = ctx.shutdown.clone();
    let limits = ConnLimits {
        policy: ctx.policy,
        port: ctx.port,
        max_pdu_len: t.max_pdu_len,
        read_timeout: t.read_timeout,
        idle_timeout: t.idle_timeout,
        max_requests: t.max_requests,
    };
    let assoc = ctx.assoc.clone();
    ctx.tracker.spawn(
        async move {
            let metrics = &host.metrics();
            let ip_guard = match queued {
                Ok(g) => g,
                Err(q) => {
                    // Over the address's limit: wait for one of its slots,
                    // no longer than a PDU may take to arrive.
                    metrics.connections_waiting.fetch_add(1, Ordering::Relaxed);
                    let deadline = tokio::time::Instant::now() + limits.read_timeout;
                    let got = tokio::select! {
                        _ = shutdown.cancelled() => None,
                        g = q.wait(deadline) => g,
                    };
                    metrics.connections_waiting.fetch_sub(1, Ordering::Relaxed);
                    match got {
                        Some(g) => g,
                        None if shutdown.is_cancelled() => return,
                        None => {
                            metrics.conn_event(ConnEvent::RefusedQueueTimeout);
                            let reason = "no per-address slot within the read timeout";
                            if refusals.should_log(ip, reason) {
                                warn!(%peer, reason,
                                    "connection refused (logged once a minute per source)");
                            }
                            return;
                        }
                    }
                }
            };
            metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let group = assoc.fetch_add(1, Ordering::Relaxed) | 1;
            connection::serve(stream, peer, host.clone(), limits, group, shutdown).await;
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(ip_guard);
            drop(permit);
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(e: Entry) -> PerIpGuard {
        match e {
            Entry::Admitted(g) => g,
            _ => panic!("expected a slot at once"),
        }
    }

    #[tokio::test]
    async fn an_address_over_its_limit_queues_then_is_full() {
        let per_ip = Arc::new(PerIp::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = admitted(per_ip.enter(ip, 2, 1));
        let _b = admitted(per_ip.enter(ip, 2, 1));
        let Entry::Queued(q) = per_ip.enter(ip, 2, 1) else {
            panic!("expected a place in the queue");
        };
        assert!(matches!(per_ip.enter(ip, 2, 1), Entry::Full));
        // Another address is not affected.
        let _c = admitted(per_ip.enter(other, 2, 1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let waiter = tokio::spawn(q.wait(deadline));
        drop(a);
        let got = waiter.await.unwrap();
        assert!(got.is_some(), "the queued connection got the freed slot");
        // The queue has room again; nothing is free.
        let Entry::Queued(q) = per_ip.enter(ip, 2, 1) else {
            panic!("expected a place in the queue");
        };
        let short = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(q.wait(short).await.is_none(), "no slot before the deadline");
        // A reload that raises the limit frees a slot at once.
        let _d = admitted(per_ip.enter(ip, 3, 1));
        drop(got);
        drop(_b);
        drop(_d);
        drop(_c);
        assert!(per_ip.0.is_empty(), "a quiet address leaves no entry");
    }

    #[tokio::test]
    async fn a_lowered_limit_takes_effect_as_slots_come_back() {
        let per_ip = Arc::new(PerIp::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held: Vec<_> = (0..4).map(|_| admitted(per_ip.enter(ip, 4, 0))).collect();
        assert!(matches!(per_ip.enter(ip, 2, 0), Entry::Full));
        // Two come back: the cut to 2 takes them, and the two still held
        // fill the new limit.
        held.truncate(2);
        assert!(matches!(per_ip.enter(ip, 2, 0), Entry::Full));
        held.truncate(1);
        held.push(admitted(per_ip.enter(ip, 2, 0)));
        assert!(matches!(per_ip.enter(ip, 2, 0), Entry::Full));
    }
}
