//! Who may talk to the host: CIDR allow and deny lists over a default of
//! the addresses a lab or company network uses (loopback, RFC 1918 private,
//! link-local, IPv6 unique-local). A KMS host answers anonymous clients and
//! reveals its ePIDs and counts to them, so it should not answer the whole
//! internet unless its operator says so.

use dashmap::DashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    /// Whether `ip` is inside the block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        let (net, width) = Self::bits(self.addr);
        let (host, host_width) = Self::bits(ip);
        if width != host_width {
            return false;
        }
        let shift = u32::from(width - self.prefix);
        shift >= 128 || (net >> shift) == (host >> shift)
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
        };
        Ok(Self {
            addr: normalize(addr),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The blocks allowed when the operator names none.
pub const DEFAULT_ALLOWED: [&str; 8] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
];

/// Allow and deny lists; deny wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessList {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl Default for AccessList {
    fn default() -> Self {
        Self {
            allow: DEFAULT_ALLOWED
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            deny: Vec::new(),
        }
    }
}

impl AccessList {
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip)) && self.allow.iter().any(|c| c.contains(ip))
    }
}

/// Logs a refusal at most once a minute per source address and reason.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: DashMap<(IpAddr, &'static str), Instant>,
}

/// Entries kept before the log forgets old sources.
const MAX_TRACKED: usize = 10_000;
const EVERY: Duration = Duration::from_secs(60);

impl RefusalLog {
    /// Whether to log this refusal now (and note that it was).
    pub fn should_log(&self, ip: IpAddr, reason: &'static str) -> bool {
        let now = Instant::now();
        if self.last.len() >= MAX_TRACKED {
            self.last.retain(|_, t| now.duration_since(*t) < EVERY);
        }
        let mut fresh = false;
        self.last
            .entry((ip, reason))
            .and_modify(|t| {
                if now.duration_since(*t) >= EVERY {
                    *t = now;
                    fresh = true;
                }
            })
            .or_insert_with(|| {
                fresh = true;
                now
            });
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_allows_private_networks_only() {
        let a = AccessList::default();
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.1",
            "192.168.0.10",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd12::3",
            "::ffff:10.0.0.1",
        ] {
            assert!(a.permits(ip(ok)), "{ok}");
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!a.permits(ip(no)), "{no}");
        }
    }

    #[test]
    fn deny_wins_and_allow_extends() {
        let mut a = AccessList::default();
        a.allow.push("203.0.113.0/24".parse().unwrap());
        a.deny.push("10.9.0.0/16".parse().unwrap());
        assert!(a.permits(ip("203.0.113.7")));
        assert!(!a.permits(ip("10.9.1.1")));
        assert!(a.permits(ip("10.8.1.1")));
        a.allow.push("0.0.0.0/0".parse().unwrap());
        assert!(a.permits(ip("8.8.8.8")));
        assert!(
            !a.permits(ip("2001:db8::1")),
            "IPv4 blocks say nothing of IPv6"
        );
    }

    #[test]
    fn cidr_parsing_is_strict() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fe80::/129".parse::<Cidr>().is_err());
        assert!("example.com/8".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_source() {
        let log = RefusalLog::default();
        assert!(log.should_log(ip("8.8.8.8"), "denied"));
        assert!(!log.should_log(ip("8.8.8.8"), "denied"));
        assert!(log.should_log(ip("8.8.4.4"), "denied"));
        assert!(log.should_log(ip("8.8.8.8"), "limit"));
    }
}
