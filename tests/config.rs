//! Configuration: the documented keys are the real ones (README table,
//! sample file), layers override in order through the real binary, bad
//! values are named, SIGHUP applies live settings, dns-record output.

use kmsd::config::{KEYS, Settings, markdown_table};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kmsd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kmsd"));
    c.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("KMSD_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn the_readme_table_is_generated_from_the_real_keys() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("<!-- config-keys:start -->\n")
        .expect("start marker")
        + 27;
    let end = readme.find("<!-- config-keys:end -->").expect("end marker");
    assert_eq!(
        &readme[start..end],
        markdown_table(),
        "README configuration table is stale: regenerate it with `kmsd config keys`"
    );
}

#[test]
fn the_sample_file_names_every_key_and_parses() {
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kmsd.toml"))
            .unwrap();
    // Every key appears, as a commented assignment or table header.
    for k in KEYS {
        let shown = sample.lines().any(|l| {
            let l = l.trim_start_matches('#').trim();
            l.starts_with(&format!("{} =", k.name)) || l == format!("[{}]", k.name)
        });
        assert!(shown, "packaging/kmsd.toml does not show `{}`", k.name);
    }
    // Uncommented, it is a valid configuration with no unknown key.
    let uncommented: String = sample
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| {
                    let header = r.starts_with('[') && r.ends_with(']') && !r.contains(' ');
                    header || (r.contains(" = ") && !r.contains('`'))
                })
                .unwrap_or("")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let s = Settings::from_toml(&uncommented, Path::new("sample")).unwrap();
    assert!(s.keys_set().len() >= KEYS.len() - 1, "{:?}", s.keys_set());
    Settings::resolve(&[&s]).unwrap();
}

#[test]
fn config_check_applies_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kmsd.toml");
    std::fs::write(
        &file,
        "activation_interval = 60\nrenewal_interval = 1440\nmax_pdu_len = 400\n",
    )
    .unwrap();
    let out = kmsd()
        .args(["config", "check", "--config"])
        .arg(&file)
        .args(["--renewal-interval", "2880"])
        .env("KMSD_ACTIVATION_INTERVAL", "90")
        .env("KMSD_RENEWAL_INTERVAL", "720")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let effective: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        effective["activation_interval"].as_integer(),
        Some(90),
        "environment over file"
    );
    assert_eq!(
        effective["renewal_interval"].as_integer(),
        Some(2880),
        "flag over environment"
    );
    assert_eq!(
        effective["max_pdu_len"].as_integer(),
        Some(400),
        "file over default"
    );
}

#[test]
fn bad_configuration_is_one_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        ("renewal_interval = 99999", "renewal_interval"),
        ("listne = [\"x\"]", "listne"),
        ("hwid = \"xyz\"", "hwid"),
        ("serve = [\"Office1997\"]", "serve"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, body).unwrap();
        let out = kmsd()
            .args(["config", "check", "--config"])
            .arg(&file)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{body} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{body}: {err}");
    }
    let out = kmsd()
        .args(["config", "check"])
        .env("KMSD_IDLE_TIMEOUT_SECS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("idle_timeout_secs"));
}

#[test]
fn dns_record_prints_the_srv_record_both_ways() {
    let out = kmsd()
        .args([
            "dns-record",
            "--domain",
            "lab.example.test",
            "--target",
            "kms1",
            "--port",
            "1688",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("_vlmcs._tcp.lab.example.test. 3600 IN SRV 0 0 1688 kms1.lab.example.test."),
        "{text}"
    );
    assert!(text.contains(
        "update add _vlmcs._tcp.lab.example.test. 3600 SRV 0 0 1688 kms1.lab.example.test."
    ));
    assert!(text.contains("\nsend"));
}

#[test]
fn sighup_applies_access_control_live_and_names_restart_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kmsd.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\n").unwrap();
    let mut child = kmsd()
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let wait_for = |msg: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line {msg:?}"));
            if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(msg))
            {
                return v;
            }
        }
    };
    let addr: std::net::SocketAddr = wait_for("listening")["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let activate = || {
        kmsd()
            .args([
                "activate",
                &addr.to_string(),
                "--product",
                "Windows Server 2022 Standard",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(activate());
    // Deny loopback and change a restart-only key, then SIGHUP.
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\"]\ndeny = [\"127.0.0.0/8\"]\nlcid = 1031\n",
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let v = wait_for("SIGHUP");
    assert!(
        v["fields"]["keys"]
            .as_str()
            .is_some_and(|k| k.contains("lcid")),
        "{v}"
    );
    assert!(!activate(), "loopback denied after the reload");
    // Allow it again.
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\n").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("SIGHUP");
    assert!(activate());
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(child.wait().unwrap().success());
}
