//! Shared test helpers: the captured vectors and small decoders.

use serde_json::Value;
use std::path::PathBuf;

pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

pub fn index() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

pub fn probes() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("vlmcsd_edge_case_probes.json"))
        .expect("probes json");
    serde_json::from_str(&text).expect("probes parse")
}

pub fn hex(s: &str) -> Vec<u8> {
    kmsd::protocol::hex::decode(s).expect("hex")
}

pub fn hex16(s: &str) -> [u8; 16] {
    hex(s).try_into().expect("16 bytes")
}

pub fn read_bin(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).expect(name)
}

/// Splits a captured byte stream into PDUs by frag_length, with the
/// core's own framing (`pdu_len`, as the codec frames them).
pub fn split_pdus(stream: &[u8]) -> Vec<Vec<u8>> {
    use kmsd::protocol::rpc::pdu::{MAX_PDU_LEN, pdu_len};
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let len = pdu_len(rest, MAX_PDU_LEN)
            .expect("a captured PDU frames")
            .expect("a captured stream ends on a PDU boundary");
        let (pdu, tail) = rest.split_at(len);
        out.push(pdu.to_vec());
        rest = tail;
    }
    out
}

/// A "random" source that replays fixed bytes (the captured server randoms),
/// then zeros.
pub struct Replay(pub Vec<u8>, pub usize);

impl rand::TryRng for Replay {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for d in dst {
            *d = self.0.get(self.1).copied().unwrap_or(0);
            self.1 += 1;
        }
        Ok(())
    }
}
impl rand::TryCryptoRng for Replay {}

/// A host running in this process on 127.0.0.1 with its own data dir.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub host: std::sync::Arc<kmsd::host::Host>,
    pub app: kmsd::app::App,
    pub dir: tempfile::TempDir,
}

/// The default configuration on an ephemeral loopback port and `dir`.
pub fn test_config(dir: &std::path::Path) -> kmsd::config::ServeConfig {
    kmsd::config::ServeConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.to_owned(),
        ..Default::default()
    }
}

/// Starts a host; `tweak` adjusts the test configuration first.
pub async fn start_server(tweak: impl FnOnce(&mut kmsd::config::ServeConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    start_server_in(dir, tweak).await
}

/// Starts a host on an existing data dir (restarts). With
/// `KMSD_TEST_STORE=postgres` (scripts/test runs the counting, loopback and
/// vlmcs tests a second time so), the host keeps its state in a fresh
/// database of the test cluster instead (the same one on a restart); with
/// `KMSD_TEST_STORE=memory` (a third time), in memory.
pub async fn start_server_in(
    dir: tempfile::TempDir,
    tweak: impl FnOnce(&mut kmsd::config::ServeConfig),
) -> TestServer {
    let wanted = std::env::var("KMSD_TEST_STORE");
    let store = if wanted.as_deref() == Ok("memory") {
        Some(kmsd::store::Backend::Memory)
    } else if wanted.as_deref() == Ok("postgres") {
        let file = dir.path().join("test-store-url");
        let url = match std::fs::read_to_string(&file) {
            Ok(u) => u,
            Err(_) => {
                let u = pg_database()
                    .await
                    .expect("KMSD_TEST_STORE=postgres needs KMSD_TEST_PG");
                std::fs::write(&file, &u).unwrap();
                u
            }
        };
        Some(kmsd::store::Backend::Postgres(url))
    } else {
        None
    };
    start_server_with_clock(dir, kmsd::host::system_clock(), |c| {
        if let Some(s) = store {
            c.store = s;
        }
        tweak(c)
    })
    .await
}

/// The admin URL of the test PostgreSQL cluster: scripts/test starts one
/// (scripts/pg) and exports it as `KMSD_TEST_PG`. Under CI its absence
/// fails the test; elsewhere the caller skips with a message.
pub fn pg_admin() -> Option<String> {
    match std::env::var("KMSD_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "KMSD_TEST_PG is not set: scripts/test starts PostgreSQL; CI never skips the fleet tests"
            )
        }
        _ => {
            eprintln!(
                "skipped: no test PostgreSQL (run scripts/test, or scripts/pg start DIR and export KMSD_TEST_PG)"
            );
            None
        }
    }
}

/// A fresh, empty database on the test cluster; its URL.
pub async fn pg_database() -> Option<String> {
    let admin = pg_admin()?;
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    let task = tokio::spawn(conn);
    let name = format!("kmsd_t_{:016x}", rand::random::<u64>());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let base = admin.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{name}"))
}

/// A clock tests can move: real time plus an offset in milliseconds.
#[derive(Clone, Default)]
pub struct TestClock(pub std::sync::Arc<std::sync::atomic::AtomicI64>);

impl TestClock {
    pub fn advance_days(&self, days: i64) {
        self.0
            .fetch_add(days * 86_400_000, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn clock(&self) -> kmsd::host::Clock {
        let off = self.0.clone();
        std::sync::Arc::new(move || {
            kmsd::store::unix_ms_now() + off.load(std::sync::atomic::Ordering::SeqCst)
        })
    }
}

/// Starts a host with an explicit clock (the host's clock counts only in
/// the SQLite store: a fleet uses its database's).
pub async fn start_server_with_clock(
    dir: tempfile::TempDir,
    clock: kmsd::host::Clock,
    tweak: impl FnOnce(&mut kmsd::config::ServeConfig),
) -> TestServer {
    let opts = kmsd::app::Options {
        clock,
        ..Default::default()
    };
    start_server_with_options(dir, opts, tweak).await
}

/// Starts a host with explicit lifecycle options (its clock, how often the
/// store's background tasks run).
pub async fn start_server_with_options(
    dir: tempfile::TempDir,
    opts: kmsd::app::Options,
    tweak: impl FnOnce(&mut kmsd::config::ServeConfig),
) -> TestServer {
    let mut cfg = test_config(dir.path());
    tweak(&mut cfg);
    let app = kmsd::app::App::start(cfg, opts).await.unwrap();
    TestServer {
        addr: app.kms_addrs()[0],
        host: app.host().clone(),
        app,
        dir,
    }
}

/// The (blocking) reader of the SQLite store in `dir`.
pub fn sqlite_reader(dir: &std::path::Path) -> kmsd::store::sqlite::SqliteReader {
    kmsd::store::sqlite::SqliteReader::new(dir.join(kmsd::store::DB_FILE))
}

/// `kmsd status` of the host whose data dir is `dir`.
pub fn status(dir: &std::path::Path, now_ms: i64) -> kmsd::report::StatusReport {
    kmsd::report::StatusReport::new(sqlite_reader(dir).status(now_ms).unwrap())
}

/// `kmsd clients` of the host whose data dir is `dir`, at most `limit`.
pub fn clients(dir: &std::path::Path, now_ms: i64, limit: usize) -> Vec<kmsd::report::ClientRow> {
    let q = kmsd::store::ClientQuery {
        now_ms,
        pool: None,
        since_ms: None,
        limit,
    };
    let rows = sqlite_reader(dir).clients(&q).unwrap();
    rows.iter().map(kmsd::report::ClientRow::new).collect()
}

impl TestServer {
    /// `kmsd status`, read through the host's store.
    pub async fn status(&self) -> kmsd::report::StatusReport {
        kmsd::report::StatusReport::new(self.host.store().status(self.host.now_ms()).await.unwrap())
    }

    /// `kmsd clients`, read through the host's store.
    pub async fn clients(&self, limit: usize) -> Vec<kmsd::report::ClientRow> {
        let q = kmsd::store::ClientQuery {
            now_ms: self.host.now_ms(),
            pool: None,
            since_ms: None,
            limit,
        };
        let rows = self.host.store().clients(q).await.unwrap();
        rows.iter().map(kmsd::report::ClientRow::new).collect()
    }

    /// Stops the host and returns its data dir for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(20), self.app.stop())
            .await
            .expect("server stops in time");
        // Let the store thread release the database.
        drop(self.host);
        self.dir
    }
}

/// Client options for a catalog SKU.
pub fn client_options(
    product: &str,
    version: kmsd::protocol::kms::Version,
) -> kmsd::client::ClientOptions {
    use kmsd::protocol::kms::products;
    let sku = products::find_sku(product).unwrap();
    let group = products::kms_group(&sku.kms_id).unwrap();
    kmsd::client::ClientOptions {
        version,
        ndr64: true,
        btfn: true,
        alter_context: true,
        app_id: sku.app_id,
        sku_id: sku.id,
        kms_id: sku.kms_id,
        n_policy: group.n_policy,
        workstation: "test-ws".into(),
        license_status: 2,
        binding_expiration: 43200,
        vm: false,
        timeout: std::time::Duration::from_secs(10),
        clock_offset_ms: 0,
    }
}

/// A fresh random client machine ID.
pub fn new_cmid() -> kmsd::protocol::guid::Guid {
    kmsd::protocol::guid::Guid::random_v4(&mut rand::rng())
}

/// Starts the real `kmsd serve` binary on 127.0.0.1:`port` (0: any) with
/// JSON logs; returns it once it says it listens, and the address.
pub fn spawn_host(dir: &std::path::Path, port: u16) -> (std::process::Child, std::net::SocketAddr) {
    spawn_host_with(dir, port, &[])
}

/// [`spawn_host`] with more `serve` flags.
pub fn spawn_host_with(
    dir: &std::path::Path,
    port: u16,
    flags: &[&str],
) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .env_remove("RUST_LOG")
        .args(["--log-format", "json", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kmsd starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let addr = loop {
        assert!(std::time::Instant::now() < deadline, "no 'listening' line");
        let line = lines.next().expect("kmsd exited early").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "listening" {
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the host never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}
