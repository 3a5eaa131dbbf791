//! DNS messages, built and read without I/O: the UPDATE that replaces only
//! this host's SRV record (RFC 2136), queries, and the server's answers
//! turned into plain-word errors.
//!
//! hickory's `update_message::create` adds an "RRset must not exist"
//! prerequisite, which fails for the second host of a fleet; the UPDATE
//! here has no prerequisite: it deletes this host's previous record by
//! rdata (class NONE) and adds the current one, leaving everyone else's.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// An SRV record's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host, with a trailing dot.
    pub target: String,
}

impl std::fmt::Display for Srv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.priority, self.weight, self.port, self.target
        )
    }
}

impl Srv {
    fn rdata(&self) -> Result<RData, DnsError> {
        Ok(RData::SRV(SRV::new(
            self.priority,
            self.weight,
            self.port,
            name(&self.target)?,
        )))
    }

    /// From a record's data.
    pub fn of(srv: &SRV) -> Self {
        Self {
            priority: srv.priority,
            weight: srv.weight,
            port: srv.port,
            target: srv.target.to_ascii().to_ascii_lowercase(),
        }
    }
}

/// Why a DNS exchange failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("no answer from the DNS server {server} within {secs} s")]
    Timeout { server: SocketAddr, secs: u64 },
    #[error("cannot reach the DNS server {server}: {reason}")]
    Unreachable { server: SocketAddr, reason: String },
    #[error("the DNS server rejected the TSIG key '{key}' ({code}){why}")]
    TsigRejected {
        key: String,
        code: String,
        why: &'static str,
    },
    #[error(
        "the DNS server refused the update of zone '{zone}' (REFUSED): its update policy does not let {who} change this record"
    )]
    Refused { zone: String, who: String },
    #[error(
        "the DNS server is not authoritative for zone '{zone}' or did not accept the update's signature (NOTAUTH)"
    )]
    NotAuth { zone: String },
    #[error("'{name}' is not in zone '{zone}' (NOTZONE)")]
    NotZone { name: String, zone: String },
    #[error("the DNS server answered {code} to {what}")]
    Rcode { code: String, what: String },
    #[error("the DNS server's answer is not signed with the TSIG key '{key}': {reason}")]
    BadResponseSignature { key: String, reason: String },
    #[error("the DNS server's answer cannot be read: {0}")]
    Malformed(String),
    #[error("cannot find the zone of '{domain}': {reason}")]
    NoZone { domain: String, reason: String },
    #[error(
        "no DNS server to ask: set dns_server (ADDR:PORT) or list a nameserver in /etc/resolv.conf"
    )]
    NoResolver,
    #[error("cannot find the address of the zone's primary '{mname}': {reason}")]
    NoPrimary { mname: String, reason: String },
    #[error("no SRV target name: set dns_host_name (this machine's name is unknown)")]
    NoTarget,
    #[error("cannot build the DNS message: {0}")]
    Build(String),
}

/// A DNS name from text (absolute).
pub fn name(s: &str) -> Result<Name, DnsError> {
    let s = if s.ends_with('.') {
        s.to_owned()
    } else {
        format!("{s}.")
    };
    Name::from_ascii(&s).map_err(|e| DnsError::Build(format!("{s:?}: {e}")))
}

/// `_vlmcs._tcp.DOMAIN.`
pub fn srv_owner(domain: &str) -> String {
    format!("{}.{domain}.", super::SRV_PREFIX)
}

/// The UPDATE of `zone` that deletes `delete` (this host's previous
/// record, by rdata) and adds `add` with `ttl` at `owner`, without
/// prerequisites; either may be None (a withdraw only deletes).
pub fn update(
    id: u16,
    zone: &str,
    owner: &str,
    ttl: u32,
    delete: Option<&Srv>,
    add: Option<&Srv>,
) -> Result<Message, DnsError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Update);
    m.metadata.recursion_desired = false;
    let mut z = Query::new();
    z.set_name(name(zone)?)
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    m.add_zone(z);
    let owner = name(owner)?;
    if let Some(old) = delete.filter(|old| Some(*old) != add) {
        // RFC 2136 2.5.4: delete an RR from an RRset: class NONE, TTL 0.
        let mut r = Record::from_rdata(owner.clone(), 0, old.rdata()?);
        r.dns_class = DNSClass::NONE;
        m.add_update(r);
    }
    if let Some(new) = add {
        // 2.5.1: add to an RRset (a duplicate is ignored by the server).
        m.add_update(Record::from_rdata(owner, ttl, new.rdata()?));
    }
    Ok(m)
}

/// A recursive query for `qname`/`qtype`.
pub fn query(id: u16, qname: &str, qtype: RecordType) -> Result<Message, DnsError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname)?, qtype));
    Ok(m)
}

/// Parses an answer.
pub fn parse(bytes: &[u8]) -> Result<Message, DnsError> {
    Message::from_vec(bytes).map_err(|e| DnsError::Malformed(e.to_string()))
}

fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP (it does not implement dynamic update)".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("RCODE {}", u16::from(other)),
    }
}

fn tsig_error(key: &str, e: TsigError) -> DnsError {
    let (code, why) = match e {
        TsigError::BadSig => (
            "BADSIG".to_owned(),
            ": the secret does not match the server's copy of the key",
        ),
        TsigError::BadKey => (
            "BADKEY".to_owned(),
            ": the server knows no key of that name and algorithm",
        ),
        TsigError::BadTime => (
            "BADTIME".to_owned(),
            ": this machine's clock and the server's differ by more than 5 minutes",
        ),
        TsigError::BadTrunc => ("BADTRUNC".to_owned(), ""),
        TsigError::Unknown(n) => (format!("TSIG error {n}"), ""),
    };
    DnsError::TsigRejected {
        key: key.to_owned(),
        code,
        why,
    }
}

/// Reads the answer to an UPDATE of `zone` (signed with the key named
/// `key`, if any): Ok when the server applied it. The answer's own
/// signature is checked by the caller (transport), before this.
pub fn check_update(
    resp: &Message,
    zone: &str,
    owner: &str,
    key: Option<&str>,
) -> Result<(), DnsError> {
    if let (Some(k), Some(sig)) = (key, resp.signature())
        && let Some(e) = sig.data.error
    {
        return Err(tsig_error(k, e));
    }
    match resp.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        ResponseCode::Refused => Err(DnsError::Refused {
            zone: zone.to_owned(),
            who: key.map_or_else(
                || "unsigned updates".to_owned(),
                |k| format!("the key '{k}'"),
            ),
        }),
        ResponseCode::NotAuth => Err(DnsError::NotAuth {
            zone: zone.to_owned(),
        }),
        ResponseCode::NotZone => Err(DnsError::NotZone {
            name: owner.trim_end_matches('.').to_owned(),
            zone: zone.to_owned(),
        }),
        other => Err(DnsError::Rcode {
            code: rcode_name(other),
            what: format!("the update of zone '{zone}'"),
        }),
    }
}

/// The zone holding `domain` and its primary (SOA MNAME), from the answer
/// to a SOA query for `domain`: the SOA in the answer (the domain is a zone
/// apex) or in the authority section (the zone above it).
pub fn zone_of(resp: &Message, domain: &str) -> Result<(String, String), DnsError> {
    let no_zone = |reason: String| DnsError::NoZone {
        domain: domain.to_owned(),
        reason,
    };
    let rc = resp.metadata.response_code;
    if !matches!(rc, ResponseCode::NoError | ResponseCode::NXDomain) {
        return Err(no_zone(format!(
            "the SOA query was answered {}",
            rcode_name(rc)
        )));
    }
    resp.answers
        .iter()
        .chain(&resp.authorities)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some((
                r.name.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
                soa.mname
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        })
        .ok_or_else(|| no_zone("the answer to the SOA query names no zone".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::SOA;

    fn srv(port: u16) -> Srv {
        Srv {
            priority: 0,
            weight: 10,
            port,
            target: "kms1.lab.test.".into(),
        }
    }

    #[test]
    fn the_update_replaces_only_its_own_record() {
        let m = update(
            7,
            "lab.test",
            "_vlmcs._tcp.lab.test.",
            600,
            Some(&srv(1688)),
            Some(&srv(1700)),
        )
        .unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert!(m.answers.is_empty(), "no prerequisite");
        let z = &m.queries[0];
        assert_eq!(
            (z.name().to_ascii(), z.query_type()),
            ("lab.test.".into(), RecordType::SOA)
        );
        let [del, add] = &m.authorities[..] else {
            panic!("{:?}", m.authorities);
        };
        assert_eq!(
            (del.dns_class, del.ttl),
            (DNSClass::NONE, 0),
            "delete by rdata"
        );
        assert_eq!(del.data, srv(1688).rdata().unwrap());
        assert_eq!((add.dns_class, add.ttl), (DNSClass::IN, 600));
        assert_eq!(add.data, srv(1700).rdata().unwrap());
        // Never the RRset (class ANY).
        assert!(m.authorities.iter().all(|r| r.dns_class != DNSClass::ANY));
        // Unchanged: only the add; withdraw: only the delete.
        let same = update(
            7,
            "lab.test",
            "_vlmcs._tcp.lab.test.",
            600,
            Some(&srv(1)),
            Some(&srv(1)),
        )
        .unwrap();
        assert_eq!(same.authorities.len(), 1);
        assert_eq!(same.authorities[0].dns_class, DNSClass::IN);
        let gone = update(
            7,
            "lab.test",
            "_vlmcs._tcp.lab.test.",
            600,
            Some(&srv(1)),
            None,
        )
        .unwrap();
        assert_eq!(gone.authorities.len(), 1);
        assert_eq!(gone.authorities[0].dns_class, DNSClass::NONE);
        // It encodes and reads back.
        let back = parse(&m.to_vec().unwrap()).unwrap();
        assert_eq!(back.authorities.len(), 2);
    }

    #[test]
    fn answers_become_plain_words() {
        let mut r = Message::new(1, MessageType::Response, OpCode::Update);
        let zone = "lab.test";
        let owner = "_vlmcs._tcp.lab.test.";
        assert_eq!(check_update(&r, zone, owner, Some("k")), Ok(()));
        r.metadata.response_code = ResponseCode::Refused;
        let e = check_update(&r, zone, owner, None).unwrap_err().to_string();
        assert!(
            e.contains("(REFUSED)") && e.contains("unsigned updates"),
            "{e}"
        );
        r.metadata.response_code = ResponseCode::NotAuth;
        assert!(
            check_update(&r, zone, owner, Some("k"))
                .unwrap_err()
                .to_string()
                .contains("NOTAUTH")
        );
        r.metadata.response_code = ResponseCode::ServFail;
        assert!(
            check_update(&r, zone, owner, Some("k"))
                .unwrap_err()
                .to_string()
                .contains("SERVFAIL")
        );
        assert_eq!(
            tsig_error("kmsd-key", TsigError::BadSig).to_string(),
            "the DNS server rejected the TSIG key 'kmsd-key' (BADSIG): the secret does not match the server's copy of the key"
        );
        assert!(
            tsig_error("k", TsigError::BadKey)
                .to_string()
                .contains("(BADKEY)")
        );
    }

    #[test]
    fn the_zone_comes_from_the_answer_or_the_authority() {
        let soa = |owner: &str| {
            Record::from_rdata(
                name(owner).unwrap(),
                60,
                RData::SOA(SOA::new(
                    name("ns1.test").unwrap(),
                    name("admin.test").unwrap(),
                    1,
                    60,
                    60,
                    600,
                    60,
                )),
            )
        };
        let mut r = Message::new(1, MessageType::Response, OpCode::Query);
        r.add_answer(soa("lab.test"));
        assert_eq!(
            zone_of(&r, "lab.test").unwrap(),
            ("lab.test".into(), "ns1.test".into())
        );
        let mut r = Message::new(1, MessageType::Response, OpCode::Query);
        r.metadata.response_code = ResponseCode::NXDomain;
        r.add_authority(soa("test"));
        assert_eq!(zone_of(&r, "sub.test").unwrap().0, "test");
        let r = Message::new(1, MessageType::Response, OpCode::Query);
        assert!(matches!(
            zone_of(&r, "x.test"),
            Err(DnsError::NoZone { .. })
        ));
    }
}
