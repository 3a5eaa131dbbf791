//! The serve lifecycle, in one place for `kmsd serve`, the tests, the
//! benchmarks and the floor: [`App::start`] opens the store, binds the KMS
//! listeners and the admin API and spawns their tasks (all tracked);
//! [`App::reload`] takes a new configuration, applies what can change live
//! and names the keys that need a restart; [`App::stop`] drains the
//! connections, flushes and closes the store and waits for every task.
//! [`App::run`] does the same on signals: SIGINT/SIGTERM stop, SIGHUP
//! reloads.

use crate::config::ServeConfig;
use crate::host::{Clock, Host, Policy, StartError, system_clock};
use crate::server::{self, Server, SharedTunables, Tunables};
use crate::store::StoreError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Replaces the log filter of a running process (on reload).
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How [`App::start`] runs the host.
pub struct Options {
    /// The host's wall clock (tests move it).
    pub clock: Clock,
    /// How often the store's background tasks run (tests shorten it).
    pub store_schedule: crate::store::Schedule,
    /// Applies a new log level on reload; None leaves logging alone.
    pub log_reload: Option<LogReload>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: system_clock(),
            store_schedule: crate::store::Schedule::default(),
            log_reload: None,
        }
    }
}

/// Why the host could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot start the host: {0}")]
    Start(#[from] StartError),
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error("cannot listen on {addr} for the admin API: {err}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        err: std::io::Error,
    },
}

/// A running host.
pub struct App {
    host: Arc<Host>,
    tunables: SharedTunables,
    config: Mutex<ServeConfig>,
    kms_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    log_reload: Option<LogReload>,
    /// The DNS SRV publisher (idle while `dns_publish` is empty).
    dns: crate::dns::DnsHandle,
}

impl App {
    /// Starts a host on `cfg`: store, KMS listeners, admin API.
    pub async fn start(cfg: ServeConfig, opts: Options) -> Result<Self, AppError> {
        let host = Arc::new(Host::open(&cfg, opts.clock.clone(), opts.store_schedule).await?);
        tracing::info!(
            store = %host.store().location(),
            count_mode = %host.count_mode(),
            served = ?host.served_groups(),
            "store open"
        );
        for g in host.served_groups() {
            if let Some(e) = host.epid(g) {
                tracing::info!(group = g, epid = %e, "ePID");
            }
        }
        let listeners = server::bind_all(&cfg)?;
        // The connection limit that fits the descriptors (soft limit raised).
        let max_connections = server::descriptors::fit_config(&cfg);
        let server_cfg = ServeConfig {
            max_connections,
            ..cfg.clone()
        };
        let server = Server::new(listeners, host.clone(), server_cfg);
        let kms_addrs = server.local_addrs();
        if let Err(e) = host.note_listening(&kms_addrs, max_connections).await {
            tracing::warn!(error = %e, "cannot note the listen addresses for `kmsd status`");
        }
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let tunables = server.tunables();
        let admin = match cfg.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|err| AppError::AdminBind { addr, err })?,
            ),
            None => None,
        };
        tasks.spawn(server.run(shutdown.clone()));
        crate::licenses::watch::spawn(
            host.licenses().clone(),
            opts.store_schedule,
            shutdown.clone(),
            &tasks,
        );
        // Published once the listeners are bound, with the port they got;
        // withdrawn when `shutdown` is cancelled.
        let dns = crate::dns::publisher::spawn(
            cfg.dns.clone(),
            kms_addrs.first().map_or(0, SocketAddr::port),
            host.clone(),
            shutdown.clone(),
            &tasks,
        );
        let admin_addr = match admin {
            Some(l) => {
                let addr = l.local_addr().ok();
                let state = crate::http::AdminState {
                    host: host.clone(),
                    kms_addrs: kms_addrs.clone(),
                };
                let token = shutdown.clone();
                let max = cfg.http_max_connections;
                tasks.spawn(async move {
                    if let Err(e) = crate::http::serve(l, state, max, token).await {
                        tracing::error!(error = %e, "admin API stopped");
                    }
                });
                addr
            }
            None => None,
        };
        tasks.close();
        Ok(Self {
            host,
            tunables,
            config: Mutex::new(cfg),
            kms_addrs,
            admin_addr,
            shutdown,
            tasks,
            log_reload: opts.log_reload,
            dns,
        })
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The KMS listeners' actual addresses.
    pub fn kms_addrs(&self) -> &[SocketAddr] {
        &self.kms_addrs
    }

    /// The admin API's actual address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The configuration in force (with the keys that need a restart as
    /// they were at start).
    pub fn config(&self) -> ServeConfig {
        match self.config.lock() {
            Ok(c) => c.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Cancelled when the host begins to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Applies `new`: product policy, access lists, limits and timeouts
    /// take effect at once (no connection dropped), the DNS records are
    /// re-asserted with the new `dns_*` keys; returns the keys whose change
    /// needs a restart.
    pub async fn reload(&self, new: ServeConfig) -> Vec<&'static str> {
        self.host.set_policy(Policy::from_config(&new)).await;
        self.dns.reload(new.dns.clone());
        match self.tunables.write() {
            Ok(mut t) => *t = Tunables::from_config(&new),
            Err(e) => *e.into_inner() = Tunables::from_config(&new),
        }
        let mut cur = match self.config.lock() {
            Ok(c) => c,
            Err(e) => e.into_inner(),
        };
        let restart = crate::config::restart_needed(&cur, &new);
        *cur = new;
        restart
    }

    /// Stops: no new connections, in-flight exchanges finish (bounded by
    /// the shutdown grace), the DNS records are withdrawn (if so
    /// configured), the store is flushed and closed, every task has ended
    /// when this returns.
    pub async fn stop(self) -> Result<(), StoreError> {
        self.shutdown.cancel();
        self.tasks.wait().await;
        let closed = self.host.close_store().await;
        match &closed {
            Ok(()) => tracing::info!("store closed"),
            Err(e) => {
                tracing::warn!(error = %e, "store not closed cleanly; the next start folds the log");
            }
        }
        closed
    }

    /// Serves until SIGINT or SIGTERM, then [`App::stop`]s. On SIGHUP,
    /// `reread` gives the configuration again (file and environment read
    /// anew); it is applied with [`App::reload`] and the log level is
    /// replaced.
    pub async fn run(
        self,
        mut reread: impl FnMut() -> Result<ServeConfig, String>,
    ) -> Result<(), StoreError> {
        use tokio::signal::unix::{SignalKind, signal};
        let stop = self.shutdown.clone();
        let signals = tokio::spawn(crate::server::signal::cancel_on_signal(stop.clone()));
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    got = hup.recv() => if got.is_none() { break },
                }
                match reread() {
                    Ok(r) => self.apply(r).await,
                    Err(e) => tracing::error!(error = %e,
                        "SIGHUP: configuration invalid; keeping the running one"),
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; configuration reload is off");
                stop.cancelled().await;
            }
        }
        let _ = signals.await;
        self.stop().await
    }

    async fn apply(&self, new: ServeConfig) {
        if let Some(set) = &self.log_reload
            && let Err(e) = set(&new.log_level)
        {
            tracing::warn!(error = %e, "SIGHUP: log level not changed");
        }
        let restart = self.reload(new).await;
        if restart.is_empty() {
            tracing::info!("SIGHUP: configuration reloaded");
        } else {
            tracing::warn!(keys = ?restart,
                "SIGHUP: configuration reloaded; these changes need a restart to apply");
        }
    }
}
