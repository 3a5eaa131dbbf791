//! `--discover DOMAIN` for `kmsd activate`, `kmsd load` and `kmsd probe`:
//! the hosts published under `_vlmcs._tcp.DOMAIN` in the order Windows
//! tries them ([`crate::dns::discover`]), and the one failover loop
//! ([`first_answering`]): the first address that answers wins, and each one
//! that does not is logged, then named in the error if none does.

use crate::dns::discover::FoundHost;
use crate::dns::message::DnsError;
use std::fmt;
use std::net::SocketAddr;

/// Why discovery found no host to use.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot look up _vlmcs._tcp.{domain}: {err}")]
    Dns { domain: String, err: DnsError },
    #[error("no KMS host is published under _vlmcs._tcp.{0}")]
    NoHosts(String),
    #[error("no KMS host under _vlmcs._tcp.{domain} answered: {}", tried.join("; "))]
    NoneAnswered { domain: String, tried: Vec<String> },
}

/// The hosts published under `_vlmcs._tcp.DOMAIN` in RFC 2782 order,
/// asking `server` (else the system's name server); never empty.
pub async fn published(
    domain: &str,
    server: Option<SocketAddr>,
) -> Result<Vec<FoundHost>, DiscoverError> {
    use rand::SeedableRng;
    // A seeded generator: the thread's own cannot be held across the lookup.
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let hosts = crate::dns::discover::hosts(domain, server, &mut rng)
        .await
        .map_err(|err| DiscoverError::Dns {
            domain: domain.to_owned(),
            err,
        })?;
    if hosts.is_empty() {
        return Err(DiscoverError::NoHosts(domain.to_owned()));
    }
    Ok(hosts)
}

/// A found host as a target is written: `NAME:PORT`, without the root dot.
pub fn host_name(host: &FoundHost) -> String {
    format!(
        "{}:{}",
        host.srv.target.trim_end_matches('.'),
        host.srv.port
    )
}

/// The host that answered, at which address, and what `attempt` made of it.
#[derive(Debug)]
pub struct Discovered<T> {
    pub answer: T,
    pub host: FoundHost,
    pub addr: SocketAddr,
}

/// Tries every address of every host published under `_vlmcs._tcp.DOMAIN`
/// in order with `attempt`, as Windows does: the first that succeeds wins;
/// a host without an address, or one whose attempt fails, gives way to the
/// next and is logged.
pub async fn first_answering<T, E, F, Fut>(
    domain: &str,
    server: Option<SocketAddr>,
    mut attempt: F,
) -> Result<Discovered<T>, DiscoverError>
where
    E: fmt::Display,
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tried = Vec::new();
    for host in published(domain, server).await? {
        if host.addrs.is_empty() {
            tracing::warn!(host = %host, "no address for this KMS host; trying the next");
            tried.push(format!("{host}: no address"));
        }
        for &addr in &host.addrs {
            match attempt(addr).await {
                Ok(answer) => return Ok(Discovered { answer, host, addr }),
                Err(e) => {
                    tracing::warn!(host = %host, %addr, error = %e, "KMS host does not answer; trying the next");
                    tried.push(format!("{host} at {addr}: {e}"));
                }
            }
        }
    }
    Err(DiscoverError::NoneAnswered {
        domain: domain.to_owned(),
        tried,
    })
}
