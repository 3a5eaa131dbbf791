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
    use kmsd::protocol::kms::products;
    let srv = start_server(|_| {}).await;
    for (product, group) in [
        ("Office LTSC Professional Plus 2021", "Office2021"),
        ("Office Professional Plus 2010", "Office2010"),
        ("Windows Server 2025 Standard", "Windows"),
    ] {
        let sku = products::find_sku(product).unwrap();
        let g = products::kms_group(&sku.kms_id).unwrap();
        let args = vec![
            format!("-{}", g.protocol_major),
            "--application-id".into(),
            sku.app_id.to_string(),
            "--activation-id".into(),
            sku.id.to_string(),
            "--kms-id".into(),
            sku.kms_id.to_string(),
            "--required-count".into(),
            g.n_policy.to_string(),
            srv.addr.to_string(),
        ];
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
