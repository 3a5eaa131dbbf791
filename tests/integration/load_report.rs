//! `kmsd load` as people use it: the real binary against a host on
//! 127.0.0.1 (in this process, with its admin API for `--metrics`), every
//! run bounded in count and time.
//!
//! * `--report FILE.html` parses as HTML without errors, holds the charts
//!   and the numbers the same run printed as JSON, and the host's own
//!   figures; headless Chromium renders it to a screenshot that is not
//!   blank.
//! * `--scenario boot-storm`: N machines once each; exactly the first
//!   threshold − 1 stay below it.
//! * The progress line shows on a terminal (a pty from `script`), never
//!   with `--json` or when stderr is not a terminal.
//! * Bad combinations and a remote metrics URL are refused before any
//!   traffic.

use crate::common::{TestServer, start_server};
use crate::http_ui::{chromium, run_chromium, screenshot_is_not_blank};
use scraper::{Html, Selector};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn kmsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kmsd")
}

/// Runs `kmsd load ARGS` off the async runtime (the host serves on it).
async fn load(args: Vec<String>) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        let mut all = vec!["load".to_owned()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        kmsd(&refs)
    });
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("kmsd load ends by itself")
        .unwrap()
}

async fn host_with_metrics() -> (TestServer, String) {
    let srv = start_server(|c| c.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = srv.app.admin_addr().expect("admin listener");
    (srv, format!("http://{admin}/metrics"))
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "kmsd load failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

/// The `data-value` of the element with `id`.
fn value(doc: &Html, id: &str) -> u64 {
    doc.select(&sel(&format!("#{id}")))
        .next()
        .unwrap_or_else(|| panic!("#{id} in the report"))
        .value()
        .attr("data-value")
        .unwrap_or_else(|| panic!("#{id} has data-value"))
        .parse()
        .unwrap()
}

fn read_report(path: &Path) -> (String, Html) {
    let html = std::fs::read_to_string(path).expect("the report was written");
    let doc = Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    (html, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_holds_the_run_the_charts_and_the_hosts_figures() {
    let (srv, metrics) = host_with_metrics().await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("run.html");
    let out = load(vec![
        srv.addr.to_string(),
        "--concurrency".into(),
        "4".into(),
        "--duration".into(),
        "3".into(),
        "--requests".into(),
        "20000".into(),
        "--report".into(),
        report.display().to_string(),
        "--metrics".into(),
        metrics.clone(),
        "--json".into(),
    ])
    .await;
    let j = json_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\r'),
        "no progress line off a terminal: {stderr:?}"
    );
    let activations = j["activations"].as_u64().unwrap();
    assert!(activations > 0, "{j}");
    assert_eq!(j["error_total"], 0, "{j}");
    // A fresh host: the first 24 Windows clients stay below 25.
    assert_eq!(j["below_threshold"], 24.min(activations), "{j}");
    let series = j["series"].as_array().unwrap();
    let per_second: u64 = series
        .iter()
        .map(|s| s["activations"].as_u64().unwrap())
        .sum();
    assert_eq!(per_second, activations, "the seconds add up to the total");

    let (html, doc) = read_report(&report);
    // The numbers of the run, as printed.
    assert_eq!(value(&doc, "t-activations"), activations);
    assert_eq!(value(&doc, "t-errors"), 0);
    assert_eq!(
        value(&doc, "t-below"),
        j["below_threshold"].as_u64().unwrap()
    );
    assert_eq!(value(&doc, "t-activated"), j["activated"].as_u64().unwrap());
    assert_eq!(
        value(&doc, "t-connections"),
        j["connections"].as_u64().unwrap()
    );
    let p50 = doc
        .select(&sel("#percentiles td[data-q=\"p50\"]"))
        .next()
        .expect("p50 cell");
    assert_eq!(
        p50.value().attr("data-us").unwrap(),
        j["latency_us"]["p50"].as_u64().unwrap().to_string()
    );
    // The parameters.
    let params: String = doc
        .select(&sel("#parameters td"))
        .map(|td| td.text().collect::<String>() + "|")
        .collect();
    assert!(params.contains(&format!("{}|", srv.addr)), "{params}");
    assert!(params.contains("KMS 6.0|") && params.contains("Windows 10/11 Enterprise|"));
    // Three charts, each drawing something.
    for id in ["chart-throughput", "chart-latency-time", "chart-latency"] {
        let svg = doc
            .select(&sel(&format!("svg#{id}")))
            .next()
            .unwrap_or_else(|| panic!("{id}"));
        let drawn = svg
            .select(&sel("path"))
            .filter_map(|p| p.value().attr("d"))
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(drawn > 20, "{id} draws a shape");
    }
    // A run of three seconds: the latency lines join several points.
    let p50_line = doc
        .select(&sel("svg#chart-latency-time path.p50"))
        .next()
        .and_then(|p| p.value().attr("d"))
        .unwrap_or("");
    assert!(p50_line.matches('L').count() >= 1, "{p50_line}");
    // The host's figures: it answered exactly the verified activations.
    assert_eq!(value(&doc, "s-requests"), activations);
    let answered: f64 = doc
        .select(&sel("#server-series tr"))
        .filter(|tr| {
            let t: String = tr.text().collect();
            t.contains("kmsd_requests_total") && t.contains("answered")
        })
        .map(|tr| {
            tr.value()
                .attr("data-delta")
                .unwrap()
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    assert_eq!(answered, activations as f64, "kmsd_requests_total answered");
    // Self-contained: nothing to fetch, nothing to run.
    for bad in ["<script", " src=", "<link", "url("] {
        assert!(!html.contains(bad), "{bad}");
    }

    // What a person sees: Chromium renders it, and it is not blank.
    let Some(bin) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is required in CI (apt-get install -y chromium)");
        }
        eprintln!("skipping the screenshot: chromium is not installed");
        srv.stop().await;
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", report.display());
    screenshot_is_not_blank(
        &bin,
        profile.path(),
        &url,
        "1200,2200",
        "KMSD_REPORT_SCREENSHOT",
    )
    .await;
    // The rendered DOM still holds the charts (nothing was blocked).
    let dom = run_chromium(&bin, profile.path(), &url, &["--dump-dom".into()]).await;
    assert!(dom.contains("id=\"chart-latency\"") && dom.contains("<path"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_storm_activates_all_but_the_first_threshold_minus_one() {
    let srv = start_server(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("storm.html");
    let started = std::time::Instant::now();
    let out = load(vec![
        srv.addr.to_string(),
        "--scenario".into(),
        "boot-storm".into(),
        "--clients".into(),
        "40".into(),
        "--over".into(),
        "2".into(),
        "--concurrency".into(),
        "8".into(),
        "--report".into(),
        report.display().to_string(),
        "--json".into(),
    ])
    .await;
    let j = json_of(&out);
    assert_eq!(j["scenario"], "boot-storm");
    assert_eq!(j["activations"], 40, "{j}");
    assert_eq!(j["error_total"], 0, "{j}");
    // 40 distinct Windows client machines against a threshold of 25: the
    // host counts 1..=40, so 24 stay below and 16 activate.
    assert_eq!(j["n_policy"], 25);
    assert_eq!(j["below_threshold"], 24, "{j}");
    assert_eq!(j["activated"], 16, "{j}");
    assert_eq!(j["connections"], 40);
    assert_eq!(j["stopped_by"], "requests");
    // Spread over the window, not all at once.
    let elapsed = j["elapsed_secs"].as_f64().unwrap();
    assert!((1.9..30.0).contains(&elapsed), "{elapsed}");
    assert!(started.elapsed() < Duration::from_secs(40));
    srv.host.flush().await.unwrap();
    let status = crate::common::status(srv.dir.path(), kmsd::store::unix_ms_now());
    let windows = status.pools.iter().find(|p| p.pool == "windows").unwrap();
    assert_eq!(windows.count, 40, "the host counted 40 distinct machines");

    let (html, doc) = read_report(&report);
    assert_eq!(value(&doc, "t-activated"), 16);
    assert_eq!(value(&doc, "t-below"), 24);
    assert!(html.contains("40 machines over 2 s"), "the summary");
    // The throughput chart shows both kinds of answer.
    let chart = doc.select(&sel("svg#chart-throughput")).next().unwrap();
    for class in ["activated", "below"] {
        let d = chart
            .select(&sel(&format!("path.{class}")))
            .next()
            .and_then(|p| p.value().attr("d"))
            .unwrap_or("");
        assert!(d.len() > 10, "{class} bars drawn");
    }
    srv.stop().await;
}

/// Runs `kmsd ARGS` under a pseudo-terminal (`script`), so its stderr is a
/// terminal; returns everything it wrote there.
fn on_a_terminal(args: &[&str]) -> String {
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_kmsd"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_line_on_a_terminal_only() {
    let srv = start_server(|_| {}).await;
    let target = srv.addr.to_string();
    let run = |json: bool| {
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["load", &target, "--concurrency", "2", "--duration", "3"];
            if json {
                args.push("--json");
            }
            on_a_terminal(&args)
        })
    };
    let tty = tokio::time::timeout(Duration::from_secs(60), run(false))
        .await
        .unwrap()
        .unwrap();
    // One line a second, rewritten in place, then cleared for the summary.
    assert!(tty.contains("\r\x1b[K"), "{tty:?}");
    assert!(tty.contains("s left | "), "{tty:?}");
    assert!(tty.contains("verified, "), "{tty:?}");
    assert!(tty.contains("/s | 0 errors"), "{tty:?}");
    assert!(tty.contains("activations "), "the summary follows: {tty:?}");
    let json = tokio::time::timeout(Duration::from_secs(60), run(true))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !json.contains("s left"),
        "no progress with --json: {json:?}"
    );
    assert!(json.contains("\"activations\""), "{json:?}");
    srv.stop().await;
}

#[test]
fn bad_combinations_and_remote_metrics_are_refused_before_any_traffic() {
    for (args, says) in [
        (
            vec!["load", "127.0.0.1:9", "--over", "5"],
            "--over is for --scenario boot-storm",
        ),
        (
            vec!["load", "127.0.0.1:9", "--scenario", "boot-storm"],
            "needs --clients N",
        ),
        (
            vec![
                "load",
                "127.0.0.1:9",
                "--scenario",
                "boot-storm",
                "--clients",
                "5",
                "--requests",
                "5",
            ],
            "--requests is for the classic scenario",
        ),
        (
            vec![
                "load",
                "127.0.0.1:9",
                "--metrics",
                "http://192.0.2.1:9688/metrics",
            ],
            "not a loopback address",
        ),
        (
            vec!["load", "127.0.0.1:9", "--metrics", "ftp://127.0.0.1/x"],
            "expected http://",
        ),
    ] {
        let started = std::time::Instant::now();
        let out = kmsd(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
    }
}
