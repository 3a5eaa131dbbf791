//! Where a client connects: `host`, `host:port`, `[v6]:port`, `[v6]` or a
//! bare IPv6 address, port 1688 when left out. One resolver for
//! `kmsd activate`, `kmsd load` and `kmsd probe`, and the one rule of
//! `--allow-remote` ([`check_remote`]): without it, `load` (and its
//! `--metrics`) and `probe` talk only to this machine's loopback.

use crate::config::DEFAULT_PORT;
use std::net::{IpAddr, SocketAddr};

/// A target as written, before any name lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address: nothing to look up.
    Addr(SocketAddr),
    /// A host name and the port to reach it on.
    Name { host: String, port: u16 },
}

/// Why a target names no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{target:?} is not HOST, HOST:PORT, [IPV6]:PORT or an IPv6 address")]
    Syntax { target: String },
    #[error("cannot resolve {target:?}: {err}")]
    Lookup { target: String, err: std::io::Error },
    #[error("{target:?} resolves to no address")]
    NoAddress { target: String },
}

impl Target {
    /// Parses `target` (no lookup).
    pub fn parse(target: &str) -> Result<Self, ResolveError> {
        let syntax = || ResolveError::Syntax {
            target: target.to_owned(),
        };
        if let Ok(a) = target.parse::<SocketAddr>() {
            return Ok(Self::Addr(a));
        }
        let bare = target
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(target);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Addr(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        let (host, port) = match target.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| syntax())?),
            None => (target, DEFAULT_PORT),
        };
        // What is left is a name: no brackets, no further colon, no space.
        let name_ok = !host.is_empty()
            && !host.contains([':', '[', ']'])
            && !host.contains(char::is_whitespace);
        if !name_ok {
            return Err(syntax());
        }
        Ok(Self::Name {
            host: host.to_owned(),
            port,
        })
    }
}

/// Every address `target` names, in the resolver's order.
pub async fn resolve_all(target: &str) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = match Target::parse(target)? {
        Target::Addr(a) => vec![a],
        Target::Name { host, port } => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|err| ResolveError::Lookup {
                target: target.to_owned(),
                err,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ResolveError::NoAddress {
            target: target.to_owned(),
        });
    }
    Ok(addrs)
}

/// Whether `addr` is on this machine's loopback (127.0.0.0/8, ::1, or an
/// IPv4-mapped loopback address).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// A target the `--allow-remote` rule keeps out.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to {action} {target} ({addr}): it is not a loopback address; pass \
     --allow-remote only for a host you operate"
)]
pub struct NotLoopback {
    /// What was refused, e.g. "load", "probe".
    pub action: &'static str,
    pub target: String,
    pub addr: SocketAddr,
}

/// The rule of `--allow-remote`: without it, `addr` (named `target`) must
/// be on this machine's loopback; with it, the operator says they operate
/// the target and anything goes.
pub fn check_remote(
    action: &'static str,
    target: &str,
    addr: SocketAddr,
    allow_remote: bool,
) -> Result<(), NotLoopback> {
    if allow_remote || is_loopback(&addr) {
        return Ok(());
    }
    Err(NotLoopback {
        action,
        target: target.to_owned(),
        addr,
    })
}

/// Why a target is not used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    NotLoopback(#[from] NotLoopback),
}

/// Resolves `target` ([`resolve_all`]) and applies [`check_remote`] to
/// every address it names, so a name with one remote address among
/// loopback ones is refused too. The first address is the one to use.
pub async fn resolve_allowed(
    action: &'static str,
    target: &str,
    allow_remote: bool,
) -> Result<SocketAddr, TargetError> {
    let addrs = resolve_all(target).await?;
    for &addr in &addrs {
        check_remote(action, target, addr, allow_remote)?;
    }
    addrs.first().copied().ok_or_else(|| {
        ResolveError::NoAddress {
            target: target.to_owned(),
        }
        .into()
    })
}

/// The first address `target` names.
pub async fn resolve(target: &str) -> Result<SocketAddr, ResolveError> {
    let addrs = resolve_all(target).await?;
    addrs
        .first()
        .copied()
        .ok_or_else(|| ResolveError::NoAddress {
            target: target.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        let addr = |s: &str| Target::Addr(s.parse().unwrap());
        let name = |h: &str, port| Target::Name {
            host: h.into(),
            port,
        };
        for (input, want) in [
            ("127.0.0.1", addr("127.0.0.1:1688")),
            ("10.1.2.3:1700", addr("10.1.2.3:1700")),
            ("::1", addr("[::1]:1688")),
            ("2001:db8::7", addr("[2001:db8::7]:1688")),
            ("[2001:db8::7]", addr("[2001:db8::7]:1688")),
            ("[::1]:99", addr("[::1]:99")),
            ("kms.example.org", name("kms.example.org", 1688)),
            ("kms.example.org:1700", name("kms.example.org", 1700)),
            ("localhost:0", name("localhost", 0)),
        ] {
            assert_eq!(Target::parse(input).unwrap(), want, "{input}");
        }
        for bad in [
            "",
            ":1688",
            "kms:http",
            "kms:99999",
            "[::1",
            "[::1]:",
            "[kms]:1688",
            "a:b:c",
            "two words",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(ResolveError::Syntax { .. })),
                "{bad}: {:?}",
                Target::parse(bad)
            );
        }
    }

    #[tokio::test]
    async fn without_the_flag_only_loopback_whatever_the_command() {
        for ok in [
            "127.0.0.1:1688",
            "127.3.4.5:99",
            "[::1]:1688",
            "localhost:1700",
        ] {
            for action in ["load", "probe"] {
                assert!(resolve_allowed(action, ok, false).await.is_ok(), "{ok}");
            }
        }
        // Private networks are remote too: a probe of a LAN host is said so.
        for bad in [
            "10.0.0.1:1688",
            "192.168.1.1",
            "172.16.0.9",
            "[fd00::1]:1688",
        ] {
            let e = resolve_allowed("probe", bad, false).await.unwrap_err();
            assert!(matches!(e, TargetError::NotLoopback(_)), "{bad}: {e}");
            assert!(e.to_string().contains("refusing to probe"), "{e}");
            assert!(e.to_string().contains("--allow-remote"), "{e}");
            assert!(resolve_allowed("probe", bad, true).await.is_ok(), "{bad}");
        }
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback(&"[::ffff:10.0.0.1]:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn names_and_addresses_resolve() {
        assert_eq!(
            resolve("127.0.0.1").await.unwrap(),
            "127.0.0.1:1688".parse().unwrap()
        );
        let local = resolve_all("localhost:1700").await.unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.port() == 1700 && a.ip().is_loopback())
        );
    }
}
