//! DNS: the host publishes its own `_vlmcs._tcp.DOMAIN` SRV record by
//! dynamic update (RFC 2136, signed with TSIG, RFC 8945), and clients find
//! hosts through those records (RFC 2782), the way Windows does.
//!
//! * [`tsig_key`]: the key file `tsig-keygen` writes (hmac-sha256/512).
//! * [`message`]: the messages, built and read without I/O: the UPDATE that
//!   replaces only this host's record, queries, and the server's answers
//!   turned into plain-word errors ([`DnsError`]).
//! * [`transport`]: one exchange with a server (UDP, TCP when truncated),
//!   the system's name servers (`/etc/resolv.conf`).
//! * [`publisher`]: the task `App` runs: publish once the listeners are
//!   bound, re-assert every `dns_refresh` and on SIGHUP, retry with backoff,
//!   withdraw on a clean stop; its state per domain goes to the store (for
//!   `kmsd status`), the status page and `/metrics`.
//! * [`discover`]: SRV lookup and the RFC 2782 order (priority, then
//!   weighted random), for `kmsd activate --discover` and `kmsd load
//!   --discover`.
//!
//! The host only ever touches its own record: an UPDATE deletes its previous
//! record by rdata and adds the current one, never the RRset, so the records
//! of other hosts (a fleet) stay.

pub mod discover;
pub mod message;
pub mod publisher;
pub mod transport;
pub mod tsig_key;

pub use message::{DnsError, Srv};
pub use publisher::{DnsHandle, DomainState};
pub use tsig_key::TsigKey;

use std::net::SocketAddr;
use std::time::Duration;

/// The service label Windows clients look up.
pub const SRV_PREFIX: &str = "_vlmcs._tcp";

/// One entry of `dns_publish`: `DOMAIN[,PRIORITY[,WEIGHT]]`, as Windows'
/// DnsDomainPublishList writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishDomain {
    /// The domain, lower case, without a trailing dot.
    pub domain: String,
    pub priority: u16,
    pub weight: u16,
}

impl std::str::FromStr for PublishDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',').map(str::trim);
        let domain = parts.next().unwrap_or("");
        let domain = normal_name(domain)
            .ok_or_else(|| format!("{s:?}: {domain:?} is not a DNS domain name"))?;
        let mut num = |what: &str| -> Result<u16, String> {
            match parts.next() {
                None | Some("") => Ok(0),
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("{s:?}: {what} {n:?} is not 0..=65535")),
            }
        };
        let priority = num("priority")?;
        let weight = num("weight")?;
        if parts.next().is_some() {
            return Err(format!("{s:?}: expected DOMAIN[,PRIORITY[,WEIGHT]]"));
        }
        Ok(Self {
            domain,
            priority,
            weight,
        })
    }
}

impl std::fmt::Display for PublishDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if (self.priority, self.weight) == (0, 0) {
            f.write_str(&self.domain)
        } else {
            write!(f, "{},{},{}", self.domain, self.priority, self.weight)
        }
    }
}

/// Parses `dns_publish` items. The environment and flags split lists at
/// commas, which also separate an entry's priority and weight, so items
/// that are only digits belong to the entry before them:
/// `lab.test,10,50,kms.test` is `lab.test,10,50` and `kms.test` (no label
/// of a domain name here is all digits: top-level domains never are).
pub fn parse_publish_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<PublishDomain>, String> {
    let mut entries: Vec<String> = Vec::new();
    for piece in items.iter().flat_map(|i| i.as_ref().split(',')) {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        match entries.last_mut() {
            Some(last) if piece.bytes().all(|b| b.is_ascii_digit()) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => entries.push(piece.to_owned()),
        }
    }
    let list: Vec<PublishDomain> = entries
        .iter()
        .map(|e| e.parse())
        .collect::<Result<_, _>>()?;
    for (i, d) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.domain == d.domain) {
            return Err(format!("{:?} is listed twice", d.domain));
        }
    }
    Ok(list)
}

/// A DNS name as kmsd keeps it: lower case, no trailing dot, labels of
/// 1..=63 letters, digits, `-` or `_`, the last not all digits (no
/// top-level domain is), at most 253 characters; None if it is not one.
pub fn normal_name(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(s)
}

/// The `dns_*` keys: what the publisher runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Domains to publish in (empty: publishing is off).
    pub publish: Vec<PublishDomain>,
    /// The primary to send updates to; None: the zone's SOA MNAME, looked
    /// up through the system's name servers.
    pub server: Option<SocketAddr>,
    /// The TSIG key updates are signed with; None: unsigned updates.
    pub tsig_key: Option<TsigKey>,
    /// The SRV target; None: this machine's host name (a short name gets
    /// the domain appended).
    pub host_name: Option<String>,
    pub ttl: u32,
    /// How often the record is re-asserted.
    pub refresh: Duration,
    /// Delete the record on a clean stop.
    pub withdraw_on_stop: bool,
}

/// The default `dns_ttl` (seconds).
pub const DEFAULT_TTL: u32 = 3600;
/// The default `dns_refresh` (seconds).
pub const DEFAULT_REFRESH_SECS: u64 = 3600;

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            publish: Vec::new(),
            server: None,
            tsig_key: None,
            host_name: None,
            ttl: DEFAULT_TTL,
            refresh: Duration::from_secs(DEFAULT_REFRESH_SECS),
            withdraw_on_stop: true,
        }
    }
}

impl DnsSettings {
    /// Checks the values; the problem comes with its key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=604_800).contains(&self.ttl) {
            return Err(("dns_ttl", format!("{} s is outside 1..=604800", self.ttl)));
        }
        let r = self.refresh.as_secs();
        if !(1..=604_800).contains(&r) {
            return Err(("dns_refresh", format!("{r} s is outside 1..=604800")));
        }
        Ok(())
    }
}

/// `ADDR:PORT`, `ADDR` (port 53) or `[V6]:PORT`.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not ADDR:PORT (an IP address, port 53 when left out)"))
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn machine_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .and_then(|h| normal_name(&h))
}

/// The SRV target for `domain`: `host_name`, else this machine's name; a
/// name without a dot gets `domain` appended. With a trailing dot.
pub fn target_for(host_name: Option<&str>, domain: &str) -> Option<String> {
    let name = match host_name {
        Some(h) => normal_name(h)?,
        None => machine_name()?,
    };
    Some(if name.contains('.') {
        format!("{name}.")
    } else {
        format!("{name}.{domain}.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(domain: &str, priority: u16, weight: u16) -> PublishDomain {
        PublishDomain {
            domain: domain.into(),
            priority,
            weight,
        }
    }

    #[test]
    fn publish_entries_parse_like_windows_writes_them() {
        assert_eq!("Lab.Test.".parse(), Ok(pd("lab.test", 0, 0)));
        assert_eq!("lab.test,10".parse(), Ok(pd("lab.test", 10, 0)));
        assert_eq!("lab.test, 10 , 50".parse(), Ok(pd("lab.test", 10, 50)));
        for bad in [
            "",
            ",1,2",
            "lab.test,x",
            "lab.test,1,2,3",
            "a..b",
            "lab test",
        ] {
            assert!(bad.parse::<PublishDomain>().is_err(), "{bad}");
        }
        assert_eq!(pd("a.test", 0, 0).to_string(), "a.test");
        assert_eq!(pd("a.test", 1, 0).to_string(), "a.test,1,0");
    }

    #[test]
    fn a_comma_split_list_regroups_priorities_and_weights() {
        let want = vec![
            pd("lab.test", 10, 50),
            pd("kms.test", 0, 0),
            pd("x.test", 5, 0),
        ];
        for items in [
            vec!["lab.test,10,50,kms.test,x.test,5"],
            vec!["lab.test", "10", "50", "kms.test", "x.test", "5"],
            vec!["lab.test,10,50", "kms.test", "x.test,5"],
        ] {
            assert_eq!(parse_publish_list(&items), Ok(want.clone()), "{items:?}");
        }
        assert!(parse_publish_list(&["10,lab.test"]).is_err());
        assert!(parse_publish_list(&["a.test", "A.test."]).is_err());
    }

    #[test]
    fn servers_and_targets() {
        assert_eq!(
            parse_server("127.0.0.1"),
            Ok("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
        assert!(parse_server("ns.example:53").is_err());
        assert_eq!(
            target_for(Some("kms1"), "lab.test").as_deref(),
            Some("kms1.lab.test.")
        );
        assert_eq!(
            target_for(Some("KMS1.corp.test."), "lab.test").as_deref(),
            Some("kms1.corp.test.")
        );
        assert_eq!(target_for(Some("bad name"), "lab.test"), None);
    }
}
