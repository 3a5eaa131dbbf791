//! DNS SRV publication and discovery against a real BIND 9 (`named`),
//! started by these tests on a free loopback port with a temporary zone
//! `lab.test`, a TSIG key from `tsig-keygen` and an update policy that lets
//! the key change only `_vlmcs._tcp.lab.test` SRV records. All DNS traffic
//! goes to that server on 127.0.0.1.
//!
//! In CI (`CI` set) a missing `named` fails these tests; elsewhere they are
//! skipped with a message (`apt-get install bind9 bind9-dnsutils`).

use crate::common::{self, client_options, new_cmid, start_server, start_server_in};
use kmsd::client::Connection;
use kmsd::dns::discover;
use kmsd::dns::{DnsSettings, PublishDomain, Srv, TsigKey};
use kmsd::protocol::kms::Version;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ZONE: &str = "lab.test";
/// How long anything here may take to happen.
const WAIT: Duration = Duration::from_secs(15);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A BIND tool from Debian's bind9 / bind9-dnsutils.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free loopback port (TCP and UDP), for named.
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `named -g` on 127.0.0.1 with the zone `lab.test`; killed on drop.
pub struct Named {
    pub addr: SocketAddr,
    /// The key named accepts (`kmsd-key`, hmac-sha256).
    pub key: PathBuf,
    /// A key of the same name with another secret.
    pub wrong_key: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Named {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Named {
    /// Starts named on a free port; None (the test returns) when bind9 is
    /// not installed and this is not CI.
    pub fn start() -> Option<Self> {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Option<Self> {
        let mut n = Self::prepare(port)?;
        n.run();
        Some(n)
    }

    /// Writes the configuration, zone and keys for `port`; not started.
    pub fn prepare(port: u16) -> Option<Self> {
        let (Some(_), Some(keygen)) = (tool("named"), tool("tsig-keygen")) else {
            assert!(
                !in_ci(),
                "named and tsig-keygen (Debian's bind9) are missing; scripts/test installs them"
            );
            eprintln!(
                "SKIPPED: named is not installed (apt-get install bind9 bind9-dnsutils); DNS tests not run"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keygen_to = |file: &str| {
            let out = Command::new(&keygen)
                .args(["-a", "hmac-sha256", "kmsd-key"])
                .output()
                .expect("tsig-keygen runs");
            assert!(out.status.success(), "tsig-keygen failed");
            std::fs::write(d.join(file), out.stdout).unwrap();
            d.join(file)
        };
        let key = keygen_to("kmsd-key.conf");
        let wrong_key = keygen_to("wrong-key.conf");
        std::fs::write(
            d.join("named.conf"),
            format!(
                r#"include "{key}";
controls {{ }};
options {{
    directory "{dir}";
    pid-file none;
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
zone "{ZONE}" {{
    type primary;
    file "{dir}/{ZONE}.zone";
    update-policy {{ grant kmsd-key name _vlmcs._tcp.{ZONE}. SRV; }};
}};
"#,
                key = key.display(),
                dir = d.display(),
            ),
        )
        .unwrap();
        let mut zone = format!(
            "$TTL 60\n@ IN SOA ns.{ZONE}. admin.{ZONE}. 1 60 60 600 60\n@ IN NS ns.{ZONE}.\nns IN A 127.0.0.1\n"
        );
        for h in ["kms-a", "kms-b", "kms-c", "kms-d"] {
            zone.push_str(&format!("{h} IN A 127.0.0.1\n"));
        }
        std::fs::write(d.join(format!("{ZONE}.zone")), zone).unwrap();
        Some(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            key,
            wrong_key,
            child: None,
            dir,
        })
    }

    /// Starts `named -g` and waits until it answers.
    pub fn run(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("named.log")).unwrap();
        self.child = Some(
            Command::new(tool("named").expect("named"))
                .arg("-g")
                .arg("-c")
                .arg(d.join("named.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("named starts"),
        );
        self.wait_ready();
    }

    /// Until named answers a SOA query for the zone.
    fn wait_ready(&mut self) {
        let q = kmsd::dns::message::query(1, ZONE, hickory_proto::rr::RecordType::SOA)
            .unwrap()
            .to_vec()
            .unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 1500];
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("named exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "named does not answer:\n{}",
                self.log()
            );
            let _ = sock.send_to(&q, self.addr);
            if sock.recv(&mut buf).is_ok_and(|n| n >= 12) {
                return;
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// The `_vlmcs._tcp.lab.test` SRV records, read back with our client,
    /// by target name.
    pub async fn srv(&self) -> Vec<Srv> {
        let mut r = discover::lookup(ZONE, self.addr).await.unwrap().records;
        r.sort_by_key(|s| (s.target.clone(), s.port, s.priority, s.weight));
        r
    }

    /// The same, read back with `dig` (bind9-dnsutils), as zone-file rdata.
    pub fn dig_srv(&self) -> Vec<String> {
        let Some(dig) = tool("dig") else {
            assert!(!in_ci(), "dig (bind9-dnsutils) is missing");
            return Vec::new();
        };
        let out = Command::new(dig)
            .args(["+short", "+time=2", "+tries=1", "-p"])
            .arg(self.addr.port().to_string())
            .arg("@127.0.0.1")
            .args([&format!("_vlmcs._tcp.{ZONE}"), "SRV"])
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// Settings that publish in `lab.test` as `host` with this key.
    pub fn settings(&self, host: &str, priority: u16, weight: u16) -> DnsSettings {
        DnsSettings {
            publish: vec![PublishDomain {
                domain: ZONE.into(),
                priority,
                weight,
            }],
            server: Some(self.addr),
            tsig_key: Some(TsigKey::load(&self.key).unwrap()),
            host_name: Some(host.into()),
            ttl: 60,
            refresh: Duration::from_secs(3600),
            withdraw_on_stop: true,
        }
    }
}

fn srv(priority: u16, weight: u16, port: u16, host: &str) -> Srv {
    Srv {
        priority,
        weight,
        port,
        target: format!("{host}.{ZONE}."),
    }
}

/// Polls `check` until it holds (or fails the test after [`WAIT`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DNS state `kmsd status` shows for the host whose data dir is `dir`.
fn dns_status(dir: &Path) -> Vec<kmsd::report::DnsReport> {
    common::status(dir, kmsd::store::unix_ms_now()).dns
}

async fn activate_once(addr: SocketAddr) {
    let opts = client_options("Windows Server 2022 Datacenter", Version::V6);
    let mut conn = Connection::open(addr, opts).await.unwrap();
    let x = conn.activate(new_cmid()).await.unwrap();
    assert!(x.response.count >= 1);
}

/// An HTTP/1.0 GET (no chunking) against the admin API.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_publishes_its_record_with_the_port_it_listens_on() {
    let Some(named) = Named::start() else { return };
    let settings = named.settings("kms-a", 0, 10);
    let srv_a = start_server(|c| {
        c.dns = settings;
        c.http = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let port = srv_a.addr.port();
    assert_ne!(port, 1688, "an ephemeral port, to see it is the bound one");
    let want = srv(0, 10, port, "kms-a");
    eventually("the record is published", || async {
        named.srv().await == [want.clone()]
    })
    .await;
    // An independent reader sees the same.
    if tool("dig").is_some() {
        assert_eq!(
            named.dig_srv(),
            [format!("0 10 {port} kms-a.{ZONE}.")],
            "dig"
        );
    }
    // `kmsd status`, /metrics and the status page show it.
    eventually("the state is noted", || async {
        dns_status(srv_a.dir.path())
            .first()
            .is_some_and(|d| d.published && d.last_success.is_some())
    })
    .await;
    let st = &dns_status(srv_a.dir.path())[0];
    assert_eq!(st.domain, ZONE);
    assert_eq!(
        st.record,
        format!("_vlmcs._tcp.{ZONE}. 60 IN SRV 0 10 {port} kms-a.{ZONE}.")
    );
    assert_eq!(st.last_error, None);
    let text = common::status(srv_a.dir.path(), kmsd::store::unix_ms_now()).to_string();
    assert!(
        text.contains("published") && text.contains(&st.record),
        "{text}"
    );
    let admin = srv_a.app.admin_addr().unwrap();
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("kmsd_dns_published{{domain=\"{ZONE}\"}} 1")),
        "{metrics}"
    );
    let page = http_get(admin, "/").await;
    assert!(page.contains("section id=\"dns\""), "{page}");
    assert!(page.contains(&format!("kms-a.{ZONE}.")), "{page}");
    srv_a.stop().await;
    assert_eq!(named.srv().await, [], "withdrawn on a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_the_rrset_and_a_stop_withdraws_only_its_own() {
    let Some(named) = Named::start() else { return };
    let (sa, sb) = (
        named.settings("kms-a", 0, 10),
        named.settings("kms-b", 5, 20),
    );
    let a = start_server(|c| c.dns = sa).await;
    let b = start_server(|c| c.dns = sb).await;
    let (ra, rb) = (
        srv(0, 10, a.addr.port(), "kms-a"),
        srv(5, 20, b.addr.port(), "kms-b"),
    );
    eventually("both records are published", || async {
        named.srv().await == [ra.clone(), rb.clone()]
    })
    .await;
    // The second host's add did not replace the first's record: both stay
    // through a re-assertion of each.
    a.app.reload(a.app.config()).await;
    b.app.reload(b.app.config()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(named.srv().await, [ra.clone(), rb.clone()]);
    a.stop().await;
    assert_eq!(named.srv().await, [rb], "only its own withdrawn");
    b.stop().await;
    assert_eq!(named.srv().await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_or_name_change_replaces_its_own_record() {
    let Some(named) = Named::start() else { return };
    let mut s = named.settings("kms-a", 0, 0);
    s.withdraw_on_stop = false;
    let keep = s.clone();
    let first = start_server(|c| c.dns = s).await;
    let p1 = first.addr.port();
    let other = start_server({
        let s = named.settings("kms-b", 0, 0);
        |c| c.dns = s
    })
    .await;
    let rb = srv(0, 0, other.addr.port(), "kms-b");
    eventually("published on the first port", || async {
        named.srv().await.contains(&srv(0, 0, p1, "kms-a"))
    })
    .await;
    // Stopped without withdrawing; started again on another port: the
    // record of the first port goes (by rdata, known from the store), the
    // new one comes, the other host's stays.
    let dir = first.stop().await;
    assert!(named.srv().await.contains(&srv(0, 0, p1, "kms-a")), "kept");
    let second = start_server_in(dir, |c| c.dns = keep).await;
    let p2 = second.addr.port();
    assert_ne!(p1, p2);
    eventually("the record follows the port", || async {
        named.srv().await == [srv(0, 0, p2, "kms-a"), rb.clone()]
    })
    .await;
    // A SIGHUP with another host name and priority: replaced again.
    let mut cfg = second.app.config();
    cfg.dns.host_name = Some("kms-c".into());
    cfg.dns.publish[0].priority = 3;
    assert!(second.app.reload(cfg).await.is_empty(), "dns keys are live");
    let rc = srv(3, 0, p2, "kms-c");
    eventually("the record follows the name", || async {
        named.srv().await == [rb.clone(), rc.clone()]
    })
    .await;
    // A domain dropped from the list on reload is withdrawn there.
    let mut cfg = second.app.config();
    cfg.dns.publish.clear();
    second.app.reload(cfg).await;
    eventually("withdrawn when no longer listed", || async {
        named.srv().await == [rb.clone()]
    })
    .await;
    second.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_re_asserted_every_refresh() {
    let Some(named) = Named::start() else { return };
    let mut s = named.settings("kms-a", 0, 0);
    s.refresh = Duration::from_secs(1);
    let key = s.tsig_key.clone().unwrap();
    let host = start_server(|c| c.dns = s).await;
    let mine = srv(0, 0, host.addr.port(), "kms-a");
    eventually("published", || async {
        named.srv().await == [mine.clone()]
    })
    .await;
    // Someone deletes it behind the host's back; it comes back.
    let owner = kmsd::dns::message::srv_owner(ZONE);
    let del = kmsd::dns::message::update(7, ZONE, &owner, 60, Some(&mine), None).unwrap();
    let signer = kmsd::dns::transport::Signer {
        key_name: key.name.clone(),
        tsig: key.signer().unwrap(),
        at_secs: (kmsd::clock::unix_ms_now() / 1000) as u64,
    };
    let resp = kmsd::dns::transport::send(named.addr, del, Some(&signer), Duration::from_secs(3))
        .await
        .unwrap();
    kmsd::dns::message::check_update(&resp, ZONE, &owner, Some("kmsd-key")).unwrap();
    assert_eq!(named.srv().await, []);
    eventually("re-asserted", || async {
        named.srv().await == [mine.clone()]
    })
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_updates_are_refused_in_plain_words_and_the_host_serves() {
    let Some(named) = Named::start() else { return };
    let mut s = named.settings("kms-a", 0, 0);
    s.tsig_key = None;
    let host = start_server(|c| c.dns = s).await;
    eventually("the refusal is noted", || async {
        dns_status(host.dir.path())
            .first()
            .and_then(|d| d.last_error.clone())
            .is_some_and(|e| e.contains("(REFUSED)") && e.contains("unsigned updates"))
    })
    .await;
    activate_once(host.addr).await;
    assert_eq!(named.srv().await, []);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_gets_the_record_after_a_retry() {
    // The server's files are ready, but it does not run yet.
    let Some(mut named) = Named::prepare(free_port()) else {
        return;
    };
    let host = start_server(|c| c.dns = named.settings("kms-a", 0, 0)).await;
    let down = named.addr;
    eventually("the failure is noted", || async {
        dns_status(host.dir.path()).first().is_some_and(|d| {
            d.failures >= 1
                && !d.published
                && d.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains(&format!("cannot reach the DNS server {down}")))
        })
    })
    .await;
    // Meanwhile the host serves.
    activate_once(host.addr).await;
    // The server comes up; the next retry (backoff, no SIGHUP) publishes.
    named.run();
    let mine = srv(0, 0, host.addr.port(), "kms-a");
    eventually("published after the retry", || async {
        named.srv().await == [mine.clone()]
    })
    .await;
    eventually("noted as published", || async {
        dns_status(host.dir.path())
            .first()
            .is_some_and(|d| d.published && d.last_error.is_none() && d.failures == 0)
    })
    .await;
    host.stop().await;
    assert_eq!(named.srv().await, []);
}

/// The real binary, with JSON logs; its log lines arrive on a channel.
fn spawn_kmsd(
    args: &[String],
) -> (
    Child,
    SocketAddr,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .env_remove("RUST_LOG")
        .args(["--log-format", "json", "serve"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kmsd starts");
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&l).unwrap_or_default());
        }
    });
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        let v: serde_json::Value = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no 'listening' line");
        if v["fields"]["message"] == "listening" {
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    (child, addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_leaves_the_host_serving_and_logs_the_rejection() {
    let Some(named) = Named::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data.path().display().to_string(),
        "--dns-publish",
        &format!("{ZONE},0,100"),
        "--dns-server",
        &named.addr.to_string(),
        "--dns-tsig-key",
        &named.wrong_key.display().to_string(),
        "--dns-host-name",
        "kms-a",
    ]
    .map(str::to_owned)
    .to_vec();
    let (mut child, addr, logs) = spawn_kmsd(&args);
    let deadline = Instant::now() + WAIT;
    let rejection = loop {
        let v = logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no log line about the rejected key");
        let err = v["fields"]["error"].as_str().unwrap_or("");
        if err.contains("TSIG") {
            break v;
        }
    };
    assert_eq!(rejection["level"], "WARN", "{rejection}");
    let err = rejection["fields"]["error"].as_str().unwrap();
    assert!(
        err.starts_with("the DNS server rejected the TSIG key 'kmsd-key' (BADSIG)"),
        "{err}"
    );
    // The KMS service is untouched.
    activate_once(addr).await;
    assert_eq!(named.srv().await, []);
    // `kmsd status` (another process) shows the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["status", "--json", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["dns"][0]["published"], false, "{st}");
    assert!(
        st["dns"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("(BADSIG)")),
        "{st}"
    );
    // SIGTERM: a clean stop, though nothing was published.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status}");
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kmsd did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_orders_by_priority_and_weight_and_fails_over() {
    use rand::SeedableRng;
    let Some(named) = Named::start() else { return };
    let mut hosts = Vec::new();
    for (name, p, w) in [
        ("kms-a", 0, 60),
        ("kms-b", 0, 30),
        ("kms-c", 0, 10),
        ("kms-d", 1, 50),
    ] {
        let mut s = named.settings(name, p, w);
        s.withdraw_on_stop = false;
        hosts.push(start_server(|c| c.dns = s).await);
    }
    eventually("four records", || async { named.srv().await.len() == 4 }).await;
    // The RFC 2782 order over what the server answers, with a fixed seed:
    // priority 0 always before priority 1, and the first place shared by
    // weight (60/30/10).
    let found = discover::lookup(ZONE, named.addr).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2782);
    let mut first = std::collections::BTreeMap::<String, u32>::new();
    let n = 10_000u32;
    for _ in 0..n {
        let o = discover::order(&found.records, &mut rng);
        assert_eq!(o[3].target, format!("kms-d.{ZONE}."));
        *first.entry(o[0].target.clone()).or_default() += 1;
    }
    for (h, share) in [("kms-a", 0.6), ("kms-b", 0.3), ("kms-c", 0.1)] {
        let got = f64::from(first[&format!("{h}.{ZONE}.")]) / f64::from(n);
        assert!((got - share).abs() < 0.02, "{h}: {got} vs {share}");
    }
    // The addresses come from the zone.
    let ordered = discover::hosts(
        ZONE,
        Some(named.addr),
        &mut rand::rngs::StdRng::seed_from_u64(1),
    )
    .await
    .unwrap();
    assert!(
        ordered
            .iter()
            .all(|h| h.addrs.iter().all(|a| a.ip().is_loopback()))
    );
    // The priority-0 hosts stop (their records stay): `kmsd activate
    // --discover` tries them, then the priority-1 host answers.
    let d_port = hosts[3].addr.port();
    for h in hosts.drain(..3) {
        h.stop().await;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .env_remove("RUST_LOG")
        .args(["activate", "--discover", ZONE, "--dns-server"])
        .arg(named.addr.to_string())
        .args([
            "--product",
            "Windows Server 2022 Datacenter",
            "--timeout",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "KMS host kms-d.{ZONE}:{d_port} (priority 1, weight 50)"
        )),
        "{stdout}"
    );
    for h in ["kms-a", "kms-b", "kms-c"] {
        assert!(stderr.contains(h), "{h} was not tried first: {stderr}");
    }
    assert!(stdout.contains("count 1 of 5"), "{stdout}");
    // `kmsd load --discover` finds the same host.
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["load", "--discover", ZONE, "--dns-server"])
        .arg(named.addr.to_string())
        .args([
            "--requests",
            "3",
            "--concurrency",
            "1",
            "--duration",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["target"], format!("kms-d.{ZONE}:{d_port}"));
    assert_eq!(report["activations"], 3, "{report}");
    // Nobody answers: a plain error naming every host tried.
    let last = hosts.pop().unwrap();
    last.stop().await;
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["activate", "--discover", ZONE, "--dns-server"])
        .arg(named.addr.to_string())
        .args(["--timeout", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no KMS host under _vlmcs._tcp.lab.test answered"),
        "{stderr}"
    );
}
