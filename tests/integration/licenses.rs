//! License packs and seats end to end: the real `kmsd serve` and `kmsd
//! licenses` binaries, the independent C-protocol client `vlmcs` for new
//! machines, and the store on SQLite and on a real PostgreSQL; a fleet of
//! three hosts binding seats at once; warn mode in the CLI, `/metrics` and
//! the page; the reclaim task against each backend.

use crate::common::*;
use kmsd::client::{ClientOptions, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DC: &str = "Windows Server 2019 Datacenter";
const STD: &str = "Windows Server 2019 Standard";
const ESS: &str = "Windows Server 2019 Essentials";
const OFFICE: &str = "Office LTSC Professional Plus 2021";

fn vlmcs_bin() -> Option<PathBuf> {
    let p = std::env::var_os("VLMCS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/vlmcs"));
    match p.is_file() {
        true => Some(p),
        false if std::env::var_os("CI").is_some() => panic!("vlmcs is missing in CI"),
        false => {
            eprintln!("SKIPPED: vlmcs not found (scripts/test installs it)");
            None
        }
    }
}

/// `kmsd licenses ARGS` on the store `at` (flags), asserting success.
fn licenses(at: &[String], args: &[&str]) -> String {
    let mut all = vec!["licenses"];
    all.extend_from_slice(args);
    kmsd(at, &all)
}

/// `kmsd ARGS` on the store `at` (flags), asserting success.
fn kmsd(at: &[String], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(args)
        .args(at)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kmsd {args:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One new machine of `product` named `name`, asked by vlmcs: Ok(count)
/// when answered, Err(output) when refused.
fn vlmcs(bin: &Path, addr: SocketAddr, product: &str, name: &str) -> Result<u32, String> {
    let mut args = crate::vlmcs_interop::product_args(product, addr);
    args.splice(0..0, ["-w".to_owned(), name.to_owned()]);
    let out = Command::new(bin).args(&args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Client Count: "))
    {
        Some(n) if out.status.success() => Ok(n.trim().parse().unwrap()),
        _ => Err(text),
    }
}

/// Whether a client's output reports 0xC004F042 (vlmcs prints it in
/// decimal).
fn no_seat(text: &str) -> bool {
    text.to_uppercase().contains("C004F042") || text.contains("3221549122")
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn seat_of(at: &[String], workstation: &str) -> Option<Guid> {
    json(&licenses(at, &["seats", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["workstation"] == workstation)
        .map(|s| s["cmid"].as_str().unwrap().parse().unwrap())
}

async fn renew(
    addr: SocketAddr,
    product: &str,
    cmid: Guid,
) -> Result<kmsd::client::Exchange, kmsd::client::ClientError> {
    let opts: ClientOptions = client_options(product, Version::V6);
    let mut c = Connection::open(addr, opts).await.unwrap();
    c.activate(cmid).await
}

/// A spawned `kmsd serve`: stopped cleanly by [`Spawned::stop`], killed
/// if the test fails first (no host outlives its test).
struct Spawned(Option<std::process::Child>);

impl Spawned {
    fn stop(mut self) {
        let mut c = self.0.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        assert!(c.wait().unwrap().success(), "a clean stop");
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The scenario, on the store the flags `at` name.
async fn hard_pack_scenario(at: Vec<String>, serve_flags: Vec<String>, data: &Path) {
    let Some(bin) = vlmcs_bin() else { return };
    let added = licenses(
        &at,
        &[
            "add",
            "--product",
            DC,
            "--covers",
            STD,
            "--quantity",
            "3",
            "--enforce",
            "hard",
        ],
    );
    let id = added.lines().last().unwrap().trim().to_owned();
    assert!(
        id.parse::<i64>().is_ok(),
        "the id alone on the last line: {added}"
    );
    let flags: Vec<&str> = serve_flags.iter().map(String::as_str).collect();
    let (host, addr) = spawn_host_with(data, 0, &flags);
    let host = Spawned(Some(host));
    let b = bin.clone();
    let results = tokio::task::spawn_blocking(move || {
        let mut r = Vec::new();
        for (k, product) in [DC, DC, DC, DC, DC, STD, DC, DC].iter().enumerate() {
            r.push(vlmcs(&b, addr, product, &format!("m{}", k + 1)));
        }
        r.push(vlmcs(&b, addr, ESS, "ess"));
        r
    })
    .await
    .unwrap();
    let counts: Vec<u32> = results[..7].iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(counts, vec![1, 2, 3, 4, 5, 6, 7], "machines 1-7 answered");
    let refused = results[7].as_ref().unwrap_err();
    assert!(no_seat(refused), "machine 8 refused 0xC004F042: {refused}");
    assert_eq!(
        results[8].as_ref().unwrap(),
        &8,
        "Essentials: no pack, answered; 8 refused uncounted"
    );
    // Machines 1-4 took no seat; 5, 6 (Standard) and 7 did.
    for m in ["m1", "m2", "m3", "m4", "m8", "ess"] {
        assert!(seat_of(&at, m).is_none(), "{m} holds no seat");
    }
    let m5 = seat_of(&at, "m5").expect("m5 holds a seat");
    assert!(seat_of(&at, "m6").is_some() && seat_of(&at, "m7").is_some());
    // Machine 5 renews although the pack is full.
    let r = renew(addr, DC, m5).await.expect("a seat holder renews");
    assert!(r.response.count >= 5);
    let report = json(&licenses(&at, &["--json"]));
    let p = &report["packs"][0];
    assert_eq!(
        (
            p["quantity"].as_u64(),
            p["in_use"].as_u64(),
            p["free"].as_u64()
        ),
        (Some(3), Some(3), Some(0)),
        "{report}"
    );
    assert_eq!(p["id"].to_string(), id);
    let uncovered = report["uncovered"].as_array().unwrap();
    assert!(
        uncovered
            .iter()
            .any(|u| u["product"] == ESS && u["machines"] == 1),
        "Essentials listed as uncovered: {report}"
    );
    // A quantity below the seats in use is refused and changes nothing.
    let below = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["licenses", "set", &id, "--quantity", "2"])
        .args(&at)
        .output()
        .unwrap();
    assert!(!below.status.success());
    let e = String::from_utf8_lossy(&below.stderr);
    assert!(e.contains("3 seats in use") && e.contains("--force"), "{e}");
    assert_eq!(json(&licenses(&at, &["--json"]))["packs"][0]["quantity"], 3);
    // Releasing machine 6 lets a new machine 8 in within 5 s.
    let m6 = seat_of(&at, "m6").unwrap().to_string();
    licenses(&at, &["release", &m6, "--reason", "retired"]);
    let start = Instant::now();
    let b = bin.clone();
    let again = tokio::task::spawn_blocking(move || {
        loop {
            match vlmcs(&b, addr, DC, "m8") {
                Ok(n) => return Some(n),
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(_) => return None,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        again.is_some(),
        "machine 8 answered within 5 s of the release"
    );
    let csv = licenses(&at, &["export", "--csv"]);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("pack,product,cmid,workstation")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{csv}");
    // Machine 5 renewed through our client, under its name.
    let m5 = m5.to_string();
    for m in [m5.as_str(), ",m7,", ",m8,"] {
        assert!(rows.iter().any(|r| r.contains(m)), "{m} in {csv}");
    }
    assert!(!csv.contains(",m1,"), "machine 1 holds no seat: {csv}");
    // Distinct machines under distinct names: no likely duplicate.
    let seats = json(&licenses(&at, &["seats", "--json"]));
    assert!(
        seats
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["likely_duplicate_of"].as_array().unwrap().is_empty()),
        "{seats}"
    );
    let m7 = seat_of(&at, "m7").unwrap().to_string();
    licenses(&at, &["release", &m7]);
    let peak = licenses(&at, &["peak", "--csv"]);
    assert!(
        peak.starts_with("date,pack,product,quantity,peak"),
        "{peak}"
    );
    let today = kmsd::licenses::format_day(kmsd::licenses::Day::of_ms(kmsd::store::unix_ms_now()));
    assert!(
        peak.lines()
            .any(|l| l.starts_with(&format!("{today},{id},{DC},3,3"))),
        "today's peak 3 after two releases: {peak}"
    );
    let audit = licenses(&at, &["audit"]);
    assert!(
        audit.contains("release") && audit.contains("add"),
        "{audit}"
    );
    host.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_pack_on_sqlite_binds_three_seats_refuses_the_fourth_and_frees_on_release() {
    let top = tempfile::tempdir().unwrap();
    let data = top.path().join("data");
    let at = vec!["--data-dir".to_owned(), data.display().to_string()];
    hard_pack_scenario(at, vec![], &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_pack_on_postgres_binds_three_seats_refuses_the_fourth_and_frees_on_release() {
    let Some(url) = pg_database().await else {
        eprintln!("SKIPPED: no KMSD_TEST_PG");
        return;
    };
    let top = tempfile::tempdir().unwrap();
    let at = vec!["--store".to_owned(), url.clone()];
    hard_pack_scenario(at.clone(), at, top.path()).await;
}

/// Twelve new machines at once over three hosts of one fleet, a hard
/// pack of five for an Office product past its threshold: exactly five
/// answers, under every isolation level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_never_binds_more_seats_than_the_pack_holds() {
    for isolation in ["read-committed", "repeatable-read", "serializable"] {
        let Some(url) = pg_database().await else {
            eprintln!("SKIPPED: no KMSD_TEST_PG");
            return;
        };
        let mut hosts = Vec::new();
        for _ in 0..3 {
            let u = url.clone();
            hosts.push(
                start_server(move |c| {
                    c.store = kmsd::store::Backend::Postgres(u);
                    c.store_isolation = isolation.parse().unwrap();
                })
                .await,
            );
        }
        // Past the threshold before any pack exists.
        for _ in 0..5 {
            renew(hosts[0].addr, OFFICE, new_cmid()).await.unwrap();
        }
        let at = vec!["--store".to_owned(), url.clone()];
        licenses(
            &at,
            &[
                "add",
                "--product",
                OFFICE,
                "--quantity",
                "5",
                "--enforce",
                "hard",
            ],
        );
        let sku = kmsd::protocol::kms::products::find_sku(OFFICE).unwrap().id;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !hosts.iter().all(|h| h.host.licenses().covers(&sku)) {
            assert!(
                Instant::now() < deadline,
                "every host sees the pack within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tasks: Vec<_> = (0..12)
            .map(|k| {
                let addr = hosts[k % 3].addr;
                tokio::spawn(async move { renew(addr, OFFICE, new_cmid()).await })
            })
            .collect();
        let mut answered = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => answered += 1,
                Err(e) => assert!(no_seat(&format!("{e:?}")), "{e:?}"),
            }
        }
        assert_eq!(answered, 5, "{isolation}: exactly the pack's five seats");
        let report = json(&licenses(&at, &["--json"]));
        assert_eq!(report["packs"][0]["in_use"], 5, "{isolation}: {report}");
        for h in hosts {
            h.stop().await;
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Warn mode: the sixth machine is answered and shows as over in the CLI,
/// `/metrics`, `/api/licenses` and the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warn_pack_answers_the_sixth_machine_and_reports_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let at = vec!["--data-dir".to_owned(), dir.path().display().to_string()];
    licenses(
        &at,
        &[
            "add",
            "--product",
            OFFICE,
            "--quantity",
            "5",
            "--agreement",
            "EA-1",
        ],
    );
    let srv = start_server_in(dir, |c| {
        c.store = kmsd::store::Backend::Sqlite;
        c.count_mode = "fixed:25".parse().unwrap();
        c.http = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    for _ in 0..6 {
        renew(srv.addr, OFFICE, new_cmid())
            .await
            .expect("warn answers");
    }
    let report = json(&licenses(&at, &["--json"]));
    let p = &report["packs"][0];
    assert_eq!(
        (p["in_use"].as_u64(), p["over"].as_u64(), p["free"].as_u64()),
        (Some(6), Some(1), Some(0)),
        "{report}"
    );
    let admin = srv.app.admin_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = http_get(admin, "/metrics").await;
        if m.contains(&format!(
            "kmsd_license_over{{pack=\"1\",product=\"{OFFICE}\"}} 1"
        )) {
            assert!(m.contains(&format!(
                "kmsd_license_in_use{{pack=\"1\",product=\"{OFFICE}\"}} 6"
            )));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics show the overage within 5 s: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api = http_get(admin, "/api/licenses").await;
    let body = |r: &str| json(r.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(body(&api)["packs"][0]["over"], 1, "{api}");
    let seats = http_get(admin, "/api/seats").await;
    let seats = body(&seats);
    assert_eq!(seats.as_array().unwrap().len(), 6, "{seats}");
    // Six CMIDs under one workstation name (our client's): each seat is
    // reported as a likely duplicate of the five others, none merged.
    for s in seats.as_array().unwrap() {
        assert_eq!(s["likely_duplicate_of"].as_array().unwrap().len(), 5, "{s}");
    }
    let page = http_get(admin, "/").await;
    assert!(
        page.contains("Licenses") && page.contains("1 over"),
        "the page's licenses section: {page}"
    );
    srv.stop().await;
}

/// The reclaim task, run by the host against each backend: a seat not
/// renewed for the reclaim age is freed in the store itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reclaim_task_frees_seats_nobody_renewed() {
    let mut stores = vec![None];
    if let Some(url) = pg_database().await {
        stores.push(Some(url));
    }
    for url in stores {
        let dir = tempfile::tempdir().unwrap();
        let at = match &url {
            Some(u) => vec!["--store".to_owned(), u.clone()],
            None => vec!["--data-dir".to_owned(), dir.path().display().to_string()],
        };
        licenses(&at, &["add", "--product", OFFICE, "--quantity", "5"]);
        let clock = TestClock::default();
        let opts = kmsd::app::Options {
            clock: clock.clock(),
            store_schedule: kmsd::store::Schedule {
                reclaim: Duration::from_millis(200),
                licenses: Duration::from_millis(200),
                ..Default::default()
            },
            ..Default::default()
        };
        let u = url.clone();
        let srv = start_server_with_options(dir, opts, move |c| {
            c.count_mode = "fixed:25".parse().unwrap();
            c.license_reclaim_days = 30;
            if let Some(u) = u {
                c.store = kmsd::store::Backend::Postgres(u);
            }
        })
        .await;
        let cmid = new_cmid();
        renew(srv.addr, OFFICE, cmid).await.unwrap();
        assert!(seat_present(&at, cmid), "the seat is taken");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(seat_present(&at, cmid), "not reclaimed while fresh");
        clock.advance_days(31);
        let deadline = Instant::now() + Duration::from_secs(5);
        while seat_present(&at, cmid) {
            assert!(Instant::now() < deadline, "reclaimed within 5 s ({url:?})");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let audit = licenses(&at, &["audit"]);
        assert!(audit.contains("reclaim"), "{audit}");
        srv.stop().await;
    }
}

fn seat_present(at: &[String], cmid: Guid) -> bool {
    licenses(at, &["seats", "--json"]).contains(&cmid.to_string())
}

/// Bad input changes nothing and says what is wrong on one line.
#[test]
fn bad_input_is_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let at = ["--data-dir".to_owned(), dir.path().display().to_string()];
    let fail = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
            .arg("licenses")
            .args(args)
            .args(&at)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = fail(&[
        "add",
        "--product",
        "Windows Server 2019 Datacentre",
        "--quantity",
        "3",
    ]);
    assert!(
        e.contains("Windows Server 2019 Datacenter"),
        "closest names: {e}"
    );
    let e = fail(&[
        "add",
        "--product",
        DC,
        "--quantity",
        "3",
        "--expires",
        "2027-13-01",
    ]);
    assert!(e.contains("--expires"), "{e}");
    let csv = dir.path().join("packs.csv");
    std::fs::write(
        &csv,
        format!("product,quantity,expires\n{DC},5,\n{STD},x,\n"),
    )
    .unwrap();
    let e = fail(&["import", csv.to_str().unwrap()]);
    assert!(e.contains("line 3"), "{e}");
    assert_eq!(
        json(&licenses(&at, &["--json"]))["packs"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing imported"
    );
    let id = licenses(&at, &["add", "--product", DC, "--quantity", "1"]);
    let e = fail(&["set", id.trim(), "--enforce", "strict"]);
    assert!(e.contains("off, warn or hard"), "{e}");
}

/// The log names the pack: a warn pack's overage and a hard pack's
/// refusal (with the reason) are in the real binary's JSON log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_line_names_the_seat_the_overage_and_the_refusal() {
    use std::io::{BufRead, BufReader};
    let Some(bin) = vlmcs_bin() else { return };
    let top = tempfile::tempdir().unwrap();
    let data = top.path().join("data");
    let at = vec!["--data-dir".to_owned(), data.display().to_string()];
    licenses(&at, &["add", "--product", DC, "--quantity", "1"]);
    licenses(
        &at,
        &[
            "add",
            "--product",
            OFFICE,
            "--quantity",
            "0",
            "--enforce",
            "hard",
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .env_remove("RUST_LOG")
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--count-mode", "fixed:25"])
        .args(&at)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let (l, stderr) = (lines.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "listening" {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap().to_owned());
            }
            l.lock().unwrap().push(v);
        }
    });
    let host = Spawned(Some(child));
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .parse()
        .unwrap();
    let b = bin.clone();
    let results = tokio::task::spawn_blocking(move || {
        [(DC, "w1"), (DC, "w2"), (OFFICE, "o1")]
            .iter()
            .map(|(p, w)| vlmcs(&b, addr, p, w))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        results[0].is_ok() && results[1].is_ok(),
        "warn answers: {results:?}"
    );
    assert!(no_seat(results[2].as_ref().unwrap_err()), "{results:?}");
    host.stop();
    let lines = lines.lock().unwrap();
    let field = |ws: &str, f: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["workstation"] == ws)
            .map(|v| v["fields"][f].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field("w1", "seat"), "pack 1 (taken)");
    assert_eq!(field("w2", "seat"), "pack 1 (OVER its quantity)");
    assert_eq!(field("o1", "reason"), "no free seat");
    assert_eq!(field("o1", "seat"), "pack 2 has no free seat");
    assert_eq!(field("o1", "result"), "0xC004F042");
}
