//! The independent `vlmcs` client (crates.io `vlmcs` 0.1.0, its own RPC and
//! KMS code) against our host: a shared mistake between our client and our
//! host cannot pass here. `.ci/run` installs it into .tools/bin; in CI the
//! test fails rather than skips when it is missing.

use crate::common::*;
use std::path::PathBuf;
use std::process::Command;

fn vlmcs() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("VLMCS").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/vlmcs")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn binary_or_skip() -> Option<PathBuf> {
    match vlmcs() {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("vlmcs is missing in CI: .ci/run must install it into .tools/bin")
        }
        None => {
            eprintln!(
                "SKIPPED: vlmcs not found. Install it with:\n  cargo install vlmcs --version 0.1.0 --ignore-rust-version --locked --root .tools"
            );
            None
        }
    }
}

/// Runs vlmcs and returns its stdout, asserting success and a clean stderr.
fn run(bin: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("vlmcs runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "vlmcs {args:?} failed: {stderr}\n{stdout}"
    );
    assert!(
        stderr.trim().is_empty(),
        "vlmcs {args:?} complained: {stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlmcs_activates_with_every_protocol_version() {
    let Some(bin) = binary_or_skip() else { return };
    let srv = start_server(|_| {}).await;
    let addr = srv.addr.to_string();
    let epid = srv.host.epid("Windows").unwrap().to_string();
    for (i, (flag, v)) in [("-4", "4"), ("-5", "5"), ("-6", "6")]
        .into_iter()
        .enumerate()
    {
        // vlmcs uses one client machine ID for all -n requests of a run.
        let bin2 = bin.clone();
        let a = addr.clone();
        let stdout = tokio::task::spawn_blocking(move || run(&bin2, &[flag, "-n", "3", &a]))
            .await
            .unwrap();
        for n in 1..=3 {
            assert!(
                stdout.contains(&format!("Response {n}: KMS V{v}")),
                "{stdout}"
            );
        }
        assert_eq!(
            stdout.matches(&format!("ePID: {epid}")).count(),
            3,
            "{stdout}"
        );
        // Distinct runs count up; repeats within a run do not.
        let want = format!("Client Count: {}", i + 1);
        assert_eq!(stdout.matches(&want).count(), 3, "{stdout}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlmcs_ndr64_and_a_host_without_ndr64() {
    let Some(bin) = binary_or_skip() else { return };
    for host_ndr64 in [true, false] {
        let srv = start_server(|c| c.ndr64 = host_ndr64).await;
        let a = srv.addr.to_string();
        let b = bin.clone();
        let args: Vec<String> = if host_ndr64 {
            vec!["--ndr64".into(), "-6".into(), "-n".into(), "2".into(), a]
        } else {
            vec!["-5".into(), a]
        };
        let stdout = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&b, &args)
        })
        .await
        .unwrap();
        assert!(stdout.contains("Client Count: 1"), "{stdout}");
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlmcs_sees_office_and_server_products_with_their_own_epids() {
    let Some(bin) = binary_or_skip() else { return };
    let srv = start_server(|_| {}).await;
    for (product, group) in [
        ("Office LTSC Professional Plus 2021", "Office2021"),
        ("Office Professional Plus 2010", "Office2010"),
        ("Windows Server 2025 Standard", "Windows"),
    ] {
        let args = product_args(product, srv.addr);
        let b = bin.clone();
        let stdout = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&b, &args)
        })
        .await
        .unwrap();
        let epid = srv.host.epid(group).unwrap().to_string();
        assert!(
            stdout.contains(&format!("ePID: {epid}")),
            "{product}: {stdout}"
        );
        assert!(stdout.contains("Client Count: 1"), "{product}: {stdout}");
    }
    srv.stop().await;
}

/// vlmcs's arguments to ask `addr` as a new machine of `product` (its
/// catalog protocol, IDs and threshold).
pub(crate) fn product_args(product: &str, addr: std::net::SocketAddr) -> Vec<String> {
    use kmsd::protocol::kms::products;
    let sku = products::find_sku(product).unwrap();
    let g = products::kms_group(&sku.kms_id).unwrap();
    vec![
        format!("-{}", g.protocol_major),
        "--application-id".into(),
        sku.app_id.to_string(),
        "--activation-id".into(),
        sku.id.to_string(),
        "--kms-id".into(),
        sku.kms_id.to_string(),
        "--required-count".into(),
        g.n_policy.to_string(),
        addr.to_string(),
    ]
}

/// Asks `addr` once as a new Windows Server machine; the count vlmcs shows.
fn vlmcs_server_count(bin: &PathBuf, addr: std::net::SocketAddr) -> u32 {
    let args = product_args("Windows Server 2022 Standard", addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(bin, &args);
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Client Count: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"))
}

/// `kmsd serve --store memory` (the real binary) counts new server
/// machines 1 to 5 for the C client, writes nothing into its data dir, and
/// after a restart counts from 1 again; `kmsd status` points elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_host_counts_like_the_others_writes_nothing_and_forgets_at_exit() {
    let Some(bin) = binary_or_skip() else { return };
    let top = tempfile::tempdir().unwrap();
    let data = top.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for (round, machines) in [(1, 5), (2, 1)] {
        let (mut host, addr) = spawn_host_with(&data, 0, &["--store", "memory"]);
        let b = bin.clone();
        let counts = tokio::task::spawn_blocking(move || {
            (0..machines)
                .map(|_| vlmcs_server_count(&b, addr))
                .collect::<Vec<u32>>()
        })
        .await
        .unwrap();
        assert_eq!(
            counts,
            (1..=machines).collect::<Vec<u32>>(),
            "round {round}"
        );
        let pid = host.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(host.wait().unwrap().success(), "a clean stop");
        let left: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
        assert!(left.is_empty(), "nothing on disk: {left:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["status", "--store", "memory", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        msg.contains("memory") && msg.contains("/api/status"),
        "{msg}"
    );
}
