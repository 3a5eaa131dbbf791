//! Configuration: the documented keys are the real ones (README table,
//! sample file, flags), every key reads the same from the file, the
//! environment and its flag, layers override in order through the real
//! binary, bad values are named, unknown environment variables are ignored,
//! SIGHUP applies live settings, dns-record output.

use clap::{CommandFactory, Parser};
use kmsd::cli::{Cli, Command as Sub, ConfigCommand, GLOBAL_KEY_FLAGS};
use kmsd::config::{KEYS, Kind, ServeConfig, Settings, markdown_table};
use std::collections::BTreeSet;
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
fn the_sample_file_is_generated_from_the_real_keys() {
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kmsd.toml"))
            .unwrap();
    assert_eq!(
        sample,
        kmsd::config::sample_toml(),
        "packaging/kmsd.toml is stale: regenerate it with `kmsd config sample`"
    );
    // Its [reload] marks are the table's.
    for k in KEYS {
        let block = sample
            .split("\n\n")
            .find(|b| {
                b.lines().any(|l| {
                    l.starts_with(&format!("# {} =", k.name)) || l == format!("# [{}]", k.name)
                })
            })
            .unwrap_or_else(|| panic!("no block for {}", k.name));
        assert_eq!(
            block.contains("[reload]"),
            k.reload == kmsd::config::Reload::Live,
            "{}",
            k.name
        );
    }
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

/// A value other than the default for every key, as the environment and
/// flags write it and as TOML writes it.
fn example(key: &str) -> (&'static str, &'static str) {
    match key {
        "listen" => (
            "127.0.0.1:1700,[::1]:1700",
            r#"["127.0.0.1:1700", "[::1]:1700"]"#,
        ),
        "data_dir" => ("/tmp/kmsd-example", r#""/tmp/kmsd-example""#),
        "count_mode" => ("fixed:50", r#""fixed:50""#),
        "serve" => ("Windows,office2024", r#"["Windows", "office2024"]"#),
        "strict_products" => ("false", "false"),
        "max_clock_skew_minutes" => ("240", "240"),
        "epids" => (
            "Windows=03612-00206-556-123727-03-1033-17763.0000-2972018",
            r#"{ Windows = "03612-00206-556-123727-03-1033-17763.0000-2972018" }"#,
        ),
        "hwid" => ("0102030405060708", r#""0102030405060708""#),
        "host_build" => ("17763", "17763"),
        "lcid" => ("1031", "1031"),
        "ndr64" => ("off", "false"),
        "btfn" => ("false", "false"),
        "activation_interval" => ("60", "60"),
        "renewal_interval" => ("1440", "1440"),
        "max_connections" => ("100", "100"),
        "max_connections_per_ip" => ("8", "8"),
        "max_queued_per_ip" => ("16", "16"),
        "max_requests_per_connection" => ("4", "4"),
        "read_timeout_secs" => ("5", "5"),
        "idle_timeout_secs" => ("20", "20"),
        "max_pdu_len" => ("1024", "1024"),
        "keep_records" => ("1000", "1000"),
        "license_reclaim_days" => ("90", "90"),
        "shutdown_grace_secs" => ("3", "3"),
        "allow" => ("203.0.113.0/24", r#"["203.0.113.0/24"]"#),
        "deny" => (
            "10.9.0.0/16,192.168.7.0/24",
            r#"["10.9.0.0/16", "192.168.7.0/24"]"#,
        ),
        "store" => (
            "postgres://kmsd@127.0.0.1:5432/fleet",
            r#""postgres://kmsd@127.0.0.1:5432/fleet""#,
        ),
        "store_timeout_ms" => ("2500", "2500"),
        "store_isolation" => ("serializable", r#""serializable""#),
        "store_busy_timeout_ms" => ("250", "250"),
        "durability" => ("os", r#""os""#),
        "http" => ("127.0.0.1:9688", r#""127.0.0.1:9688""#),
        "http_max_connections" => ("8", "8"),
        "log_level" => ("debug", r#""debug""#),
        "log_format" => ("json", r#""json""#),
        "dns_publish" => (
            "lab.example,10,50,kms.example",
            r#"["lab.example,10,50", "kms.example"]"#,
        ),
        "dns_server" => ("127.0.0.1:5353", r#""127.0.0.1:5353""#),
        "dns_tsig_key" => (
            "tests/dns/example-tsig.key",
            r#""tests/dns/example-tsig.key""#,
        ),
        "dns_host_name" => ("kms1.lab.example", r#""kms1.lab.example""#),
        "dns_ttl" => ("600", "600"),
        "dns_refresh" => ("300", "300"),
        "dns_withdraw_on_stop" => ("false", "false"),
        other => panic!("no example value for the key `{other}`: add one"),
    }
}

/// The flag layer of `kmsd ARGS...`.
fn flag_layer(args: &[&str]) -> Settings {
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (Sub::Serve(a) | Sub::Config(ConfigCommand::Check(a))) = &cli.command else {
        panic!("not serve");
    };
    a.to_settings(cli.verbose, cli.quiet, cli.log_format)
        .unwrap()
}

#[test]
fn every_key_reads_the_same_from_the_file_the_environment_and_its_flag() {
    let default = ServeConfig::default();
    for k in KEYS {
        let (text, toml) = example(k.name);
        let file =
            Settings::from_toml(&format!("{} = {toml}", k.name), Path::new("f.toml")).unwrap();
        let (env, warnings) = Settings::from_env([(k.env_var(), text.to_owned())]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let flag = format!("--{}", k.name.replace('_', "-"));
        let flags = flag_layer(&["kmsd", "serve", &flag, text]);
        let from_file = Settings::resolve(&[&file]).unwrap();
        assert_ne!(
            k.get(&from_file),
            k.get(&default),
            "{}: example is the default",
            k.name
        );
        assert_eq!(
            Settings::resolve(&[&env]).unwrap(),
            from_file,
            "{}: environment",
            k.name
        );
        assert_eq!(
            Settings::resolve(&[&flags]).unwrap(),
            from_file,
            "{}: flag",
            k.name
        );
        // `kmsd config check` takes the same flags.
        let check = flag_layer(&["kmsd", "config", "check", &flag, text]);
        assert_eq!(check, flags, "{}", k.name);
        // A list flag may also repeat.
        if k.kind == Kind::List {
            let mut args = vec!["kmsd", "serve"];
            for item in text.split(',') {
                args.extend([flag.as_str(), item]);
            }
            assert_eq!(Settings::resolve(&[&flag_layer(&args)]).unwrap(), from_file);
        }
    }
}

#[test]
fn the_serve_flags_are_the_keys() {
    let mut cmd = Cli::command();
    cmd.build();
    let expected: BTreeSet<String> = KEYS
        .iter()
        .map(|k| k.name.replace('_', "-"))
        .chain(["config", "verbose", "quiet", "help"].map(String::from))
        .collect();
    for path in [&["serve"][..], &["config", "check"]] {
        let sub = path
            .iter()
            .fold(&cmd, |c, name| c.find_subcommand(name).unwrap());
        let shown: BTreeSet<String> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .map(String::from)
            .collect();
        assert_eq!(shown, expected, "{path:?}");
    }
    // The global one is global indeed (the other commands log too).
    for k in GLOBAL_KEY_FLAGS {
        let long = k.replace('_', "-");
        assert!(
            cmd.get_arguments()
                .any(|a| a.is_global_set() && a.get_long() == Some(long.as_str()))
        );
    }
}

#[test]
fn old_flag_spellings_still_work() {
    let old = flag_layer(&[
        "kmsd",
        "serve",
        "--lenient-products",
        "--max-clock-skew",
        "240",
        "--idle-timeout",
        "20",
        "--epid",
        "Windows=03612-00206-556-123727-03-1033-17763.0000-2972018",
        "--ndr64",
        "off",
        "--btfn",
        "on",
    ]);
    let new = flag_layer(&[
        "kmsd",
        "serve",
        "--strict-products",
        "false",
        "--max-clock-skew-minutes",
        "240",
        "--idle-timeout-secs",
        "20",
        "--epids",
        "Windows=03612-00206-556-123727-03-1033-17763.0000-2972018",
        "--ndr64",
        "false",
        "--btfn",
    ]);
    assert_eq!(old, new);
    let cfg = Settings::resolve(&[&old]).unwrap();
    assert!(!cfg.strict_products && !cfg.ndr64 && cfg.btfn);
    assert_eq!(cfg.max_clock_skew, Some(Duration::from_secs(240 * 60)));
    // -v/-q are log_level flags too; --log-level wins over them.
    let v = flag_layer(&["kmsd", "-vv", "serve"]);
    assert_eq!(Settings::resolve(&[&v]).unwrap().log_level, "trace");
    let v = flag_layer(&["kmsd", "serve", "-v", "--log-level", "warn"]);
    assert_eq!(Settings::resolve(&[&v]).unwrap().log_level, "warn");
    assert!(
        Cli::try_parse_from(["kmsd", "serve", "--lenient-products", "--strict-products"]).is_err()
    );
}

#[test]
fn unknown_environment_variables_do_not_stop_the_host() {
    // What Kubernetes sets in every pod for a Service named kmsd, and a typo.
    let out = kmsd()
        .args(["config", "check"])
        .env("KMSD_SERVICE_HOST", "10.96.0.12")
        .env("KMSD_SERVICE_PORT", "1688")
        .env("KMSD_PORT", "tcp://10.96.0.12:1688")
        .env("KMSD_PORT_1688_TCP", "tcp://10.96.0.12:1688")
        .env("KMSD_PORT_1688_TCP_PROTO", "tcp")
        .env("KMSD_PORT_1688_TCP_PORT", "1688")
        .env("KMSD_PORT_1688_TCP_ADDR", "10.96.0.12")
        .env("KMSD_LISTN", "127.0.0.1:1")
        .env("KMSD_LCID", "1031")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("KMSD_LISTN") && err.contains("did you mean KMSD_LISTEN?"),
        "{err}"
    );
    assert!(
        err.contains("KMSD_SERVICE_HOST") && err.contains("KMSD_PORT_1688_TCP_ADDR"),
        "{err}"
    );
    assert_eq!(err.matches("did you mean").count(), 1, "{err}");
    let effective: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(effective["lcid"].as_integer(), Some(1031));
    assert_eq!(
        effective["listen"],
        ServeConfig::default()
            .listen
            .iter()
            .map(|a| toml::Value::String(a.to_string()))
            .collect::<Vec<_>>()
            .into()
    );
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
    // Only this host's record is deleted, never the whole RRset (a fleet's).
    assert!(text.contains(
        "update delete _vlmcs._tcp.lab.example.test. SRV 0 0 1688 kms1.lab.example.test.\n"
    ));
    assert!(!text.contains("SRV\n"), "no RRset-wide delete: {text}");
}

#[test]
fn sighup_applies_access_control_live_and_names_restart_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kmsd.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\n").unwrap();
    let mut child = kmsd()
        .env("KMSD_SERVICE_HOST", "10.96.0.12")
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
    // Kubernetes' variables are ignored, with a warning, not a refusal.
    let v = wait_for("not kmsd settings");
    assert_eq!(v["level"], "WARN", "{v}");
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
            .is_some_and(|k| k.contains("lcid") && !k.contains("deny")),
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
