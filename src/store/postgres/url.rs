//! The fleet database's URL: `postgres://USER[:PASS]@HOST[:PORT][,HOST[:PORT]…]/DB[?sslmode=…]`
//! (a primary and its standbys, with `target_session_attrs=read-write` so
//! only the writable one is used; every other parameter goes to
//! tokio-postgres as it is), TLS through rustls (ring) for `sslmode=require` and `verify-full` with
//! the CA file named by `sslrootcert`, and a form of the URL without the
//! password for messages.

use crate::store::StoreError;
use std::path::PathBuf;
use std::sync::Arc;

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// `sslmode=disable` (the default: a fleet database on a private
    /// network or loopback).
    Off,
    /// `sslmode=require` or `verify-full`: TLS, the server's certificate
    /// checked against the CA file (and its name against the host's).
    On { ca_file: PathBuf },
}

/// A parsed fleet URL.
#[derive(Debug, Clone)]
pub struct FleetUrl {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    /// `postgres://USER@HOST:PORT[,HOST:PORT…]/DB`, for logs and errors.
    pub shown: String,
}

/// Parses `url`; the error names what is wrong without the password.
pub fn parse(url: &str) -> Result<FleetUrl, StoreError> {
    let bad = |why: String| StoreError::misconfigured(redact(url), why);
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("expected postgres://USER[:PASS]@HOST[:PORT]/DB".into()))?;
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut mode = "disable".to_owned();
    let mut ca_file = None;
    let mut passed = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = v.to_owned(),
            "sslrootcert" => ca_file = Some(PathBuf::from(v)),
            _ => passed.push(pair),
        }
    }
    let tls = match mode.as_str() {
        "disable" => Tls::Off,
        "require" | "verify-ca" | "verify-full" => Tls::On {
            ca_file: ca_file.ok_or_else(|| {
                bad(format!(
                    "sslmode={mode} needs sslrootcert=PATH (the CA file that signed the server's certificate)"
                ))
            })?,
        },
        other => {
            return Err(bad(format!(
                "sslmode={other}: expected disable, require or verify-full"
            )));
        }
    };
    let mut libpq = format!("postgres://{base}");
    if !passed.is_empty() {
        libpq.push('?');
        libpq.push_str(&passed.join("&"));
    }
    let mut config: tokio_postgres::Config = libpq.parse().map_err(|e| bad(with_sources(&e)))?;
    if config.get_dbname().is_none() {
        return Err(bad("no database name (…/DB)".into()));
    }
    if config.get_hosts().is_empty() {
        return Err(bad("no host".into()));
    }
    if config.get_user().is_none() {
        return Err(bad("no user (USER@HOST)".into()));
    }
    config.ssl_mode(match tls {
        Tls::Off => tokio_postgres::config::SslMode::Disable,
        Tls::On { .. } => tokio_postgres::config::SslMode::Require,
    });
    Ok(FleetUrl {
        shown: redact(url),
        config,
        tls,
    })
}

/// An error and its causes ("invalid connection string: invalid value for
/// option `target_session_attrs`"): tokio-postgres keeps the option's name
/// in the source.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

/// `url` with any password and query left out.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let rest = rest.split('?').next().unwrap_or("");
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

/// A backend as the configuration shows it (no password).
pub fn redact_backend(b: &crate::store::Backend) -> String {
    match b {
        crate::store::Backend::Postgres(url) => redact(url),
        other => other.to_string(),
    }
}

/// The rustls client configuration for `ca_file` (ring provider).
pub fn rustls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(ca_file)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", ca_file.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "sslrootcert {} holds no PEM certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_errors_hide_the_password() {
        let u = parse("postgres://kmsd:s3cret@127.0.0.1:5433/fleet").unwrap();
        assert_eq!(u.shown, "postgres://kmsd@127.0.0.1:5433/fleet");
        assert_eq!(u.tls, Tls::Off);
        assert_eq!(u.config.get_dbname(), Some("fleet"));
        let e = parse("postgres://kmsd:s3cret@db/fleet?sslmode=require")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslrootcert"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let u = parse("postgresql://k@db/f?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(
            u.tls,
            Tls::On {
                ca_file: "/etc/ca.pem".into()
            }
        );
        for bad in [
            "mysql://k@db/f",
            "postgres://k@db",
            "postgres://k@db/f?sslmode=maybe",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, StoreError::Misconfigured { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with(&redact(bad)), "{bad}: {e}");
        }
    }

    #[test]
    fn a_primary_and_its_standbys_pass_through_and_are_all_shown() {
        use tokio_postgres::config::{Host, TargetSessionAttrs};
        let u = parse(
            "postgres://kmsd:s3cret@db1:5432,db2:5433,127.0.0.1/kmsd?target_session_attrs=read-write&connect_timeout=3&tcp_user_timeout=5",
        )
        .unwrap();
        assert_eq!(u.shown, "postgres://kmsd@db1:5432,db2:5433,127.0.0.1/kmsd");
        let hosts: Vec<String> = u
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(hosts, ["db1", "db2", "127.0.0.1"]);
        // A host without a port gets the default one.
        assert_eq!(u.config.get_ports(), [5432, 5433, 5432]);
        assert_eq!(
            u.config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            u.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        // Seconds, as connect_timeout (libpq reads milliseconds here): the
        // README says so.
        assert_eq!(
            u.config.get_tcp_user_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(u.config.get_password(), Some(&b"s3cret"[..]));
        // Without the parameter any host will do (the first that answers).
        let any = parse("postgres://kmsd@db1,db2/kmsd").unwrap();
        assert_eq!(
            any.config.get_target_session_attrs(),
            TargetSessionAttrs::Any
        );
        // A wrong value is refused by name, without the password.
        let e = parse("postgres://kmsd:s3cret@db1,db2/kmsd?target_session_attrs=primary-ish")
            .unwrap_err()
            .to_string();
        assert!(e.contains("target_session_attrs"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("postgres://kmsd@db1,db2/kmsd"), "{e}");
    }
}
