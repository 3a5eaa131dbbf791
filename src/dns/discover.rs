//! Finding KMS hosts the way Windows clients do: the `_vlmcs._tcp.DOMAIN`
//! SRV records, tried lowest priority first and, within a priority, in a
//! weighted random order (RFC 2782); a host that does not answer gives way
//! to the next.
//!
//! [`order`] is pure (the randomness is passed in), so it is tested with a
//! fixed seed; [`lookup`] asks a DNS server; [`addresses`] resolves a
//! target through the answer's additional records, the same server, then
//! the system resolver.

use super::message::{self, DnsError, Srv};
use super::transport;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use rand::{Rng, RngExt};
use std::net::{IpAddr, SocketAddr};

/// The SRV records of a domain and the addresses the answer carried for
/// their targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub records: Vec<Srv>,
    /// (target with trailing dot, address) from the additional section.
    pub glue: Vec<(String, IpAddr)>,
}

/// The records in the order a client tries them (RFC 2782): ascending
/// priority; within one priority, repeatedly a random pick weighted by
/// weight (a weight-0 record has a small chance, and is tried after the
/// weighted ones on average).
pub fn order<R: Rng + ?Sized>(records: &[Srv], rng: &mut R) -> Vec<Srv> {
    let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut out = Vec::with_capacity(records.len());
    for p in priorities {
        // Weight 0 first in the working list, as RFC 2782 says, in a
        // random order (else the first zero-weight record always wins when
        // all weights are 0).
        let mut left: Vec<&Srv> = records
            .iter()
            .filter(|r| r.priority == p && r.weight == 0)
            .collect();
        for i in (1..left.len()).rev() {
            left.swap(i, rng.random_range(0..=i));
        }
        left.extend(records.iter().filter(|r| r.priority == p && r.weight > 0));
        while !left.is_empty() {
            let total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut running = 0;
            let i = left
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(left.remove(i).clone());
        }
    }
    out
}

/// The server discovery asks: `dns_server` if given, else the first of
/// `/etc/resolv.conf`.
pub fn server_or_system(server: Option<SocketAddr>) -> Result<SocketAddr, DnsError> {
    server
        .or_else(|| transport::system_nameservers().first().copied())
        .ok_or(DnsError::NoResolver)
}

/// The `_vlmcs._tcp.DOMAIN` SRV records `server` answers.
pub async fn lookup(domain: &str, server: SocketAddr) -> Result<Found, DnsError> {
    let owner = message::srv_owner(domain.trim_end_matches('.'));
    let q = message::query(rand::random(), &owner, RecordType::SRV)?;
    let resp = transport::send(server, q, None, transport::TIMEOUT).await?;
    match resp.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        other => {
            return Err(DnsError::Rcode {
                code: format!("{other:?}"),
                what: format!("the SRV query for {owner}"),
            });
        }
    }
    let mut found = Found::default();
    for r in &resp.answers {
        if let RData::SRV(srv) = &r.data {
            found.records.push(Srv::of(srv));
        }
    }
    for r in &resp.additionals {
        if let Some(ip) = r.data.ip_addr() {
            found
                .glue
                .push((r.name.to_ascii().to_ascii_lowercase(), ip));
        }
    }
    Ok(found)
}

/// The addresses of `srv`'s target with its port: from the glue, else A and
/// AAAA queries to `server`, else the system resolver.
pub async fn addresses(srv: &Srv, found: &Found, server: SocketAddr) -> Vec<SocketAddr> {
    let mut ips: Vec<IpAddr> = found
        .glue
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(&srv.target))
        .map(|(_, ip)| *ip)
        .collect();
    if ips.is_empty() {
        for t in [RecordType::A, RecordType::AAAA] {
            let Ok(q) = message::query(rand::random(), &srv.target, t) else {
                continue;
            };
            if let Ok(resp) = transport::send(server, q, None, transport::TIMEOUT).await {
                ips.extend(resp.answers.iter().filter_map(|r| r.data.ip_addr()));
            }
        }
    }
    if ips.is_empty() {
        let host = srv.target.trim_end_matches('.');
        if let Ok(addrs) = tokio::net::lookup_host((host, srv.port)).await {
            return addrs.collect();
        }
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, srv.port))
        .collect()
}

/// A host found under `_vlmcs._tcp.DOMAIN`: its record and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHost {
    pub srv: Srv,
    pub addrs: Vec<SocketAddr>,
}

impl std::fmt::Display for FoundHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} (priority {}, weight {})",
            self.srv.target.trim_end_matches('.'),
            self.srv.port,
            self.srv.priority,
            self.srv.weight
        )
    }
}

/// The hosts of `domain` in the order to try them (RFC 2782, `rng` for
/// the weighted picks), asking `server` (else the system's name server).
pub async fn hosts<R: Rng + ?Sized>(
    domain: &str,
    server: Option<SocketAddr>,
    rng: &mut R,
) -> Result<Vec<FoundHost>, DnsError> {
    let server = server_or_system(server)?;
    let found = lookup(domain, server).await?;
    let ordered = order(&found.records, rng);
    let mut out = Vec::with_capacity(ordered.len());
    for srv in ordered {
        // "." as the target: the service is decidedly not available there.
        if srv.target == "." {
            continue;
        }
        let addrs = addresses(&srv, &found, server).await;
        out.push(FoundHost { srv, addrs });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn srv(p: u16, w: u16, name: &str) -> Srv {
        Srv {
            priority: p,
            weight: w,
            port: 1688,
            target: format!("{name}."),
        }
    }

    #[test]
    fn lower_priority_always_comes_first() {
        let recs = [srv(10, 100, "c"), srv(0, 1, "a"), srv(5, 0, "b")];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let o: Vec<_> = order(&recs, &mut rng)
                .into_iter()
                .map(|r| r.target)
                .collect();
            assert_eq!(o, ["a.", "b.", "c."]);
        }
    }

    #[test]
    fn weights_share_the_first_place_in_proportion() {
        let recs = [
            srv(0, 60, "a"),
            srv(0, 30, "b"),
            srv(0, 10, "c"),
            srv(1, 50, "d"),
        ];
        let mut rng = StdRng::seed_from_u64(2782);
        let n = 20_000;
        let mut first = std::collections::BTreeMap::new();
        for _ in 0..n {
            let o = order(&recs, &mut rng);
            assert_eq!(o.len(), 4);
            assert_eq!(o[3].target, "d.", "priority 1 after every priority 0");
            *first.entry(o[0].target.clone()).or_insert(0u32) += 1;
        }
        for (name, share) in [("a.", 0.60), ("b.", 0.30), ("c.", 0.10)] {
            let got = f64::from(first[name]) / f64::from(n);
            assert!((got - share).abs() < 0.015, "{name}: {got} vs {share}");
        }
    }

    #[test]
    fn zero_weights_are_still_tried() {
        let recs = [srv(0, 0, "a"), srv(0, 0, "b")];
        let mut rng = StdRng::seed_from_u64(3);
        let firsts: std::collections::BTreeSet<_> = (0..200)
            .map(|_| order(&recs, &mut rng)[0].target.clone())
            .collect();
        assert_eq!(firsts.len(), 2, "both come first sometimes");
        assert!(order(&[], &mut rng).is_empty());
    }
}
