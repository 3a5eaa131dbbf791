//! The admin HTTP API end to end: a host in this process with a few real
//! activations, the admin API on loopback, plain HTTP/1.1 requests, and a
//! headless Chromium rendering the status page.

use crate::common::{self, client_options, new_cmid, start_server};
use kmsd::client::Connection;
use kmsd::http::{AdminState, router_with_shutdown, serve};
use kmsd::protocol::kms::Version;
use kmsd::protocol::kms::products;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SERVER: &str = "Windows Server 2022 Standard";
const OFFICE: &str = "Office Professional Plus 2019";
/// Workstation names; the last server one needs escaping.
const SERVERS: [&str; 3] = ["srv-alpha-01", "srv-beta-02", "<i>srv-gamma</i>&\"03\""];
const OFFICE_WS: &str = "office-pc-7";
const GAMMA_ESCAPED: &str = "&lt;i&gt;srv-gamma&lt;/i&gt;&amp;&quot;03&quot;";

/// Bound on every network wait here.
const WAIT: Duration = Duration::from_secs(15);

/// One HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Decodes a chunked body.
fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size_text = std::str::from_utf8(&b[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A plain HTTP/1.1 GET over a fresh loopback connection.
async fn get(addr: SocketAddr, path: &str) -> Resp {
    let raw = tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path}: no answer in time"))
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no header end"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = unchunk(&body);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// A host with 3 Windows Server clients and 1 Office 2019 client; with
/// `pack`, a warn pack of 2 for the server product (recorded by `kmsd
/// licenses` before the clients come; they stay below the threshold, so
/// they hold no seat and Office is in use without a pack).
async fn host_with_activations(pack: bool) -> common::TestServer {
    let srv = start_server(|_| {}).await;
    if pack {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
            .args(["licenses", "add", "--product", SERVER, "--quantity", "2"])
            .arg("--data-dir")
            .arg(srv.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        srv.host.licenses().refresh(true).await.unwrap();
    }
    for ws in SERVERS {
        let mut opts = client_options(SERVER, Version::V6);
        opts.workstation = ws.into();
        let mut conn = Connection::open(srv.addr, opts).await.expect("bind");
        conn.activate(new_cmid()).await.expect("server activation");
    }
    let mut opts = client_options(OFFICE, Version::V6);
    opts.workstation = OFFICE_WS.into();
    let mut conn = Connection::open(srv.addr, opts).await.expect("bind");
    conn.activate(new_cmid()).await.expect("office activation");
    tokio::time::timeout(WAIT, srv.host.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    srv
}

fn state(srv: &common::TestServer) -> AdminState {
    AdminState {
        host: srv.host.clone(),
        kms_addrs: vec![srv.addr],
    }
}

/// Starts the admin API on an ephemeral loopback port.
async fn start_admin(
    state: AdminState,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(listener, state, 32, token.clone()));
    (addr, token, task)
}

fn sku_name(product: &str) -> &'static str {
    products::find_sku(product).unwrap().name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_metrics_probes_and_search() {
    let srv = host_with_activations(false).await;
    let (admin, admin_token, admin_task) = start_admin(state(&srv)).await;

    // /metrics
    let m = get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        m.headers
    );
    for line in [
        "kmsd_pool_count{pool=\"windows\"} 3",
        "kmsd_pool_count{pool=\"office2013+\"} 1",
        "kmsd_requests_total{protocol=\"6.0\",result=\"answered\",pool=\"windows\"} 3",
        "kmsd_requests_total{protocol=\"6.0\",result=\"answered\",pool=\"office2013+\"} 1",
    ] {
        assert!(m.body.lines().any(|l| l == line), "{line} in\n{}", m.body);
    }

    // Probes.
    let h = get(admin, "/healthz").await;
    assert_eq!((h.status, h.body.trim()), (200, "ok"), "{h:?}");
    let r = get(admin, "/readyz").await;
    assert_eq!(r.status, 200, "{r:?}");

    // /api/status
    let s = get(admin, "/api/status").await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert!(
        s.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let s = s.json();
    let count = |pool: &str| {
        s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == pool)
            .map(|p| p["count"].as_u64().unwrap())
    };
    assert_eq!(count("windows"), Some(3), "{s}");
    assert_eq!(count("office2013+"), Some(1), "{s}");
    assert_eq!(s["inventory"], 4);

    // /api/clients
    let n = |path: &str| {
        let path = path.to_owned();
        async move {
            let r = get(admin, &path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            r.json().as_array().expect("array").len()
        }
    };
    assert_eq!(n("/api/clients").await, 4);
    assert_eq!(n("/api/clients?pool=windows").await, 3);
    assert_eq!(n("/api/clients?pool=office2013%2B").await, 1);
    assert_eq!(n("/api/clients?pool=office2013+").await, 1);
    assert_eq!(n("/api/clients?q=SRV-ALPHA").await, 1);
    assert_eq!(n("/api/clients?q=srv-").await, 3);
    assert_eq!(n("/api/clients?q=office+professional").await, 1);
    assert_eq!(n("/api/clients?q=127.0.0.1&limit=2").await, 2);
    assert_eq!(n("/api/clients?since=2000-01-01").await, 4);
    assert_eq!(n("/api/clients?since=99999999999999").await, 0);
    let clients = get(admin, "/api/clients?q=office-pc").await.json();
    let c = &clients[0];
    assert_eq!(c["workstation"], OFFICE_WS);
    assert_eq!(c["product"], sku_name(OFFICE));
    assert_eq!(c["live"], true);
    let by_cmid = format!(
        "/api/clients?q={}",
        c["cmid"].as_str().unwrap().to_uppercase()
    );
    assert_eq!(n(&by_cmid).await, 1);
    for bad in [
        "/api/clients?pool=linux",
        "/api/clients?limit=many",
        "/api/clients?since=2024-02-30",
        "/api/activations?limit=-1",
    ] {
        let r = get(admin, bad).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }

    // /api/activations
    let a = get(admin, "/api/activations").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = a.json();
    let rows = a.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["workstation"], OFFICE_WS, "newest first");
    assert_eq!(rows[0]["product"], sku_name(OFFICE));
    assert_eq!(rows[3]["workstation"], SERVERS[0]);
    assert_eq!(rows[3]["product"], sku_name(SERVER));
    for r in rows {
        assert_eq!(r["result"], "answered");
        assert_eq!(r["protocol"], 6);
        assert_eq!(r["license_status"], "initial grace");
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
        assert!(r["count"].as_u64().unwrap() >= 1);
    }
    assert_eq!(rows[3]["count"], 1);
    assert_eq!(rows[2]["count"], 2);
    assert_eq!(rows[1]["count"], 3);
    assert_eq!(
        get(admin, "/api/activations?limit=1")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The page, searched.
    let p = get(admin, "/?q=srv-beta").await;
    assert_eq!(p.status, 200);
    assert!(p.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        p.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'"))
    );
    assert_eq!(
        p.body.matches("<tr class=\"client").count(),
        1,
        "{}",
        p.body
    );
    assert!(p.body.contains("data-matching=\"1\""));
    assert!(p.body.contains("value=\"srv-beta\""));
    let p = get(admin, "/").await;
    assert_eq!(p.body.matches("<tr class=\"client").count(), 4);
    assert_eq!(p.body.matches("<tr class=\"activation\"").count(), 4);
    assert!(p.body.contains(GAMMA_ESCAPED), "escaped workstation");
    assert!(!p.body.contains("<i>srv-gamma"), "unescaped workstation");
    let p = get(admin, "/?q=%3Cscript%3E%22").await;
    assert!(p.body.contains("value=\"&lt;script&gt;&quot;\""));
    assert!(!p.body.contains("<script>"));
    assert_eq!(get(admin, "/nope").await.status, 404);

    // Readiness turns 503 once shutdown begins.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready_addr = listener.local_addr().unwrap();
    let ready_token = CancellationToken::new();
    let ready_task = tokio::spawn(
        axum::serve(
            listener,
            router_with_shutdown(state(&srv), ready_token.clone()),
        )
        .into_future(),
    );
    assert_eq!(get(ready_addr, "/readyz").await.status, 200);
    ready_token.cancel();
    let r = get(ready_addr, "/readyz").await;
    assert_eq!((r.status, r.body.trim()), (503, "shutting down"));
    ready_task.abort();

    // With the KMS listener gone, health fails and says why.
    let host = srv.host.clone();
    let dir = srv.stop().await;
    let h = get(admin, "/healthz").await;
    assert_eq!(h.status, 503, "{h:?}");
    assert!(h.body.starts_with("kms: "), "{}", h.body);
    assert!(!h.body.contains("store:"), "{}", h.body);

    // A database that cannot be read is a 500 with a message, not a panic.
    std::fs::remove_file(dir.path().join(kmsd::store::DB_FILE)).unwrap();
    let (broken, broken_token, broken_task) = start_admin(AdminState {
        host: host.clone(),
        kms_addrs: vec![],
    })
    .await;
    for path in ["/api/status", "/api/clients", "/api/activations", "/"] {
        let r = get(broken, path).await;
        assert_eq!(r.status, 500, "{path}: {r:?}");
        assert!(r.body.contains("no database here"), "{path}: {}", r.body);
    }
    let r = get(broken, "/readyz").await;
    assert_eq!(r.status, 503, "no KMS listener: {r:?}");

    // serve returns promptly once cancelled.
    for (token, task) in [(admin_token, admin_task), (broken_token, broken_task)] {
        token.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("admin API stops in time")
            .unwrap()
            .unwrap();
    }
    drop(host);
}

/// Where Chromium is, if installed.
pub(crate) fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Takes a Chromium screenshot of `url` at `size` ("W,H") and checks it is
/// a PNG of a non-trivial page; copies it to `$keep_env` when that is set.
pub(crate) async fn screenshot_is_not_blank(
    bin: &Path,
    profile: &Path,
    url: &str,
    size: &str,
    keep_env: &str,
) {
    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("shot.png");
    run_chromium(
        bin,
        profile,
        url,
        &[
            format!("--screenshot={}", shot.display()),
            format!("--window-size={size}"),
            "--hide-scrollbars".into(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 30_000,
        "a non-trivial page ({} bytes)",
        png.len()
    );
    if let Some(keep) = std::env::var_os(keep_env) {
        std::fs::copy(&shot, keep).expect("copy the screenshot");
    }
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout.
pub(crate) async fn run_chromium(
    bin: &Path,
    profile: &Path,
    url: &str,
    extra: &[String],
) -> String {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        // Resolve no names: the page is on 127.0.0.1 and nothing else may be fetched.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().expect("start chromium");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium finishes within 60 s (killed)")
        .expect("chromium output");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The element opened by the tag holding `marker`, up to `close`.
fn element<'a>(dom: &'a str, marker: &str, close: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = dom[at..].find(close).map_or(dom.len(), |e| at + e);
    &dom[start..end]
}

/// Text of an HTML fragment (tags dropped, whitespace collapsed).
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_the_pools_and_activations() {
    let Some(bin) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is required in CI (apt-get install -y chromium)");
        }
        eprintln!(
            "skipping the browser test: chromium is not installed (apt-get install -y chromium)"
        );
        return;
    };
    let srv = host_with_activations(true).await;
    srv.host.licenses().refresh(true).await.unwrap();
    let (admin, token, task) = start_admin(state(&srv)).await;
    let url = format!("http://{admin}/");
    let profile = tempfile::tempdir().unwrap();

    let started = Instant::now();
    let dom = run_chromium(&bin, profile.path(), &url, &["--dump-dom".into()]).await;
    eprintln!("chromium --dump-dom took {:?}", started.elapsed());

    let windows = element(&dom, "id=\"pool-windows\"", "</article>");
    assert!(windows.contains("data-count=\"3\""), "{windows}");
    let w = text_of(windows);
    assert!(w.contains("Windows Server 3 / 5 waiting"), "{w}");
    assert!(w.contains("Windows client OS 3 / 25 waiting"), "{w}");
    assert!(w.contains("2 more clients needed"), "{w}");
    let office = element(&dom, "id=\"pool-office2013plus\"", "</article>");
    assert!(office.contains("data-count=\"1\""), "{office}");
    let o = text_of(office);
    assert!(o.contains("1 / 5 waiting"), "{o}");
    let o2010 = text_of(element(&dom, "id=\"pool-office2010\"", "</article>"));
    assert!(o2010.contains("0 / 5"), "{o2010}");

    let activations = element(&dom, "id=\"activations\"", "</section>");
    let rows: Vec<String> = activations
        .split("<tr class=\"activation\"")
        .skip(1)
        .map(text_of)
        .collect();
    assert_eq!(rows.len(), 4, "{activations}");
    assert!(
        rows.iter()
            .any(|r| r.contains(OFFICE_WS) && r.contains(sku_name(OFFICE))),
        "{rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("srv-alpha-01") && r.contains(sku_name(SERVER))),
        "{rows:#?}"
    );
    // The hostile name is shown as text, not markup.
    // (A serialized text node escapes only `&`, `<` and `>`.)
    assert!(
        dom.contains("&lt;i&gt;srv-gamma&lt;/i&gt;&amp;\"03\""),
        "the name as text in the DOM"
    );
    assert!(!dom.contains("<i>srv-gamma"), "no markup injected");

    let inventory = element(&dom, "id=\"inventory\"", "</section>");
    assert_eq!(inventory.matches("class=\"client live\"").count(), 4);

    // The licenses section: the pack's bar, no seat taken below the
    // threshold, and Office in use without a pack.
    let licenses = text_of(element(&dom, "id=\"licenses\"", "</section>"));
    assert!(
        licenses.contains("0 / 2 seats in use") && licenses.contains("2 free"),
        "{licenses}"
    );
    assert!(
        licenses.contains(&format!("{}: 1 machine", sku_name(OFFICE))),
        "{licenses}"
    );

    // A search through the form's GET.
    let dom = run_chromium(
        &bin,
        profile.path(),
        &format!("{url}?q=office"),
        &["--dump-dom".into()],
    )
    .await;
    let inventory = element(&dom, "id=\"inventory\"", "</section>");
    let rows: Vec<String> = inventory
        .split("<tr class=\"client")
        .skip(1)
        .map(text_of)
        .collect();
    assert_eq!(rows.len(), 1, "{inventory}");
    assert!(rows[0].contains(OFFICE_WS) && rows[0].contains("live"));

    // A screenshot: it exists and is not blank.
    screenshot_is_not_blank(
        &bin,
        profile.path(),
        &url,
        "1280,2000",
        "KMSD_UI_SCREENSHOT",
    )
    .await;

    token.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("admin API stops in time")
        .unwrap()
        .unwrap();
    srv.stop().await;
}

/// A fleet host named `id` (its data dir's `host-id`) on the database `url`.
async fn fleet_host(url: &str, id: &str) -> common::TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("host-id"), id).unwrap();
    let url = url.to_owned();
    common::start_server_with_clock(dir, kmsd::host::system_clock(), move |c| {
        c.store = kmsd::store::Backend::Postgres(url);
    })
    .await
}

/// The fleet section lists every host of the shared database, as `kmsd
/// status --store URL` does: a running host alive, a stopped one silent
/// once its heartbeat is older than the CLI's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_page_lists_its_hosts() {
    let Some(url) = common::pg_database().await else {
        eprintln!("skipping: KMSD_TEST_PG is not set (scripts/test starts PostgreSQL)");
        return;
    };
    let east = fleet_host(&url, "kms-east-1").await;
    let west = fleet_host(&url, "kms-west-2").await;
    for srv in [&east, &west] {
        let mut conn = Connection::open(srv.addr, client_options(SERVER, Version::V6))
            .await
            .expect("bind");
        conn.activate(new_cmid()).await.expect("activation");
    }
    west.stop().await;
    // Silent for ten minutes, in the database's clock (the fleet's one clock).
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    c.batch_execute(
        "UPDATE hosts SET heartbeat_ms = heartbeat_ms - 600000 WHERE host_id = 'kms-west-2'",
    )
    .await
    .unwrap();
    drop(c);
    let _ = task.await;

    let (admin, token, task) = start_admin(state(&east)).await;
    let page = get(admin, "/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let fleet = text_of(element(&page.body, "id=\"fleet\"", "</section>"));
    assert!(
        fleet.contains("2 hosts share this database, 1 alive."),
        "{fleet}"
    );
    let row = |id: &str| text_of(element(&page.body, &format!("data-host=\"{id}\""), "</tr>"));
    let (e, w) = (row("kms-east-1"), row("kms-west-2"));
    assert!(e.starts_with("kms-east-1 alive "), "{e}");
    assert!(e.contains(&east.addr.to_string()), "its listener: {e}");
    assert!(e.contains(env!("CARGO_PKG_VERSION")), "its version: {e}");
    assert!(w.starts_with("kms-west-2 silent "), "{w}");
    assert!(
        e.ends_with(" 1") && w.ends_with(" 1"),
        "one request each: {e} / {w}"
    );

    if let Some(bin) = chromium() {
        let profile = tempfile::tempdir().unwrap();
        screenshot_is_not_blank(
            &bin,
            profile.path(),
            &format!("http://{admin}/"),
            "1280,1400",
            "KMSD_UI_FLEET_SCREENSHOT",
        )
        .await;
    }
    token.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("admin API stops in time")
        .unwrap()
        .unwrap();
    east.stop().await;
}
