//! Which host `kmsd load` loads: the target as written or the first host of
//! a `--discover` domain that accepts a connection, under the one rule of
//! `--allow-remote` ([`crate::client::target::check_remote`]): loopback
//! only unless the operator says they operate the target. Addresses the
//! rule keeps out are never connected to, not even to see if they answer.

use super::args::LoadArgs;
use crate::client::discover;
use crate::client::target::{self, check_remote};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

pub use crate::client::target::{TargetError, is_loopback};

/// What `kmsd load` refuses in the rule's words ("refusing to load ...").
const ACTION: &str = "load";

/// Resolves `target` and applies the `--allow-remote` rule to every address
/// it names; the first address is the one loaded.
pub async fn resolve_target(target: &str, allow_remote: bool) -> Result<SocketAddr, TargetError> {
    target::resolve_allowed(ACTION, target, allow_remote).await
}

/// The host `args` name (as the report names it) and the address to load.
pub(super) async fn chosen(args: &LoadArgs) -> anyhow::Result<(String, SocketAddr)> {
    let Some(domain) = &args.discover else {
        let addr = resolve_target(&args.target, args.allow_remote).await?;
        return Ok((args.target.clone(), addr));
    };
    let timeout = Duration::from_secs(args.timeout.clamp(1, 60));
    let found = discover::first_answering(domain, args.dns_server, |addr| async move {
        let name = addr.to_string();
        check_remote(ACTION, &name, addr, args.allow_remote)?;
        accepts(addr, timeout).await
    })
    .await?;
    eprintln!(
        "KMS host {} at {} answered (found under _vlmcs._tcp.{domain})",
        found.host, found.addr
    );
    Ok((discover::host_name(&found.host), found.addr))
}

/// Whether `addr` accepts a TCP connection within `timeout` (closed at once).
async fn accepts(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_without_the_flag() {
        for ok in [
            "127.0.0.1:1688",
            "127.3.4.5:99",
            "[::1]:1688",
            "::1",
            "127.0.0.1",
        ] {
            assert!(resolve_target(ok, false).await.is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:1688",
            "192.168.1.1",
            "[2001:db8::1]:1688",
            "0.0.0.0:1688",
        ] {
            let e = resolve_target(bad, false).await.unwrap_err();
            assert!(matches!(e, TargetError::NotLoopback { .. }), "{bad}: {e}");
            assert!(resolve_target(bad, true).await.is_ok(), "{bad}");
        }
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
    }
}
