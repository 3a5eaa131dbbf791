//! One DNS exchange with a server: UDP, then TCP when the answer is
//! truncated; TSIG signing of the request and verification of the answer;
//! and the system's name servers (`/etc/resolv.conf`).

use super::message::{self, DnsError};
use hickory_proto::op::Message;
use hickory_proto::rr::TSigner;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A signer and the key's name (for error messages).
#[derive(Clone)]
pub struct Signer {
    pub key_name: String,
    pub tsig: TSigner,
    /// The signing time (unix seconds, from the host's clock).
    pub at_secs: u64,
}

/// Sends `msg` to `server` (signed when `signer` is given) and returns the
/// answer. A successful answer to a signed request must carry a valid
/// signature; an error answer is returned as is, for its code to be read
/// (servers answer BADSIG and BADKEY unsigned).
pub async fn send(
    server: SocketAddr,
    mut msg: Message,
    signer: Option<&Signer>,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let verifier = match signer {
        Some(s) => msg
            .finalize(&s.tsig, s.at_secs)
            .map_err(|e| DnsError::Build(e.to_string()))?,
        None => None,
    };
    let bytes = msg.to_vec().map_err(|e| DnsError::Build(e.to_string()))?;
    let answer = exchange(server, &bytes, timeout).await?;
    let resp = message::parse(&answer)?;
    if let (Some(s), Some(mut v)) = (signer, verifier) {
        let tsig_error = resp.signature().is_some_and(|r| r.data.error.is_some());
        let ok = resp.metadata.response_code == hickory_proto::op::ResponseCode::NoError;
        if ok && !tsig_error {
            v.verify(&answer)
                .map_err(|e| DnsError::BadResponseSignature {
                    key: s.key_name.clone(),
                    reason: e.to_string(),
                })?;
        }
    }
    Ok(resp)
}

/// One request's bytes to `server`, the answer's bytes back (UDP; TCP when
/// the UDP answer is truncated).
pub async fn exchange(
    server: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, DnsError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || DnsError::Timeout {
        server,
        secs: timeout.as_secs().max(1),
    };
    let unreachable = |e: std::io::Error| DnsError::Unreachable {
        server,
        reason: match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (nothing listens there)".into()
            }
            _ => e.to_string(),
        },
    };
    let id = request
        .get(..2)
        .ok_or(DnsError::Build("empty request".into()))?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0u8; 4], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(unreachable)?;
    sock.connect(server).await.map_err(unreachable)?;
    sock.send(request).await.map_err(unreachable)?;
    let mut buf = vec![0u8; 4096];
    let truncated = loop {
        let n = timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| timed_out())?
            .map_err(unreachable)?;
        let Some(head) = buf.get(..n).filter(|b| b.len() >= 12) else {
            continue;
        };
        // The answer to this request: same ID, QR set. Others are dropped.
        if &head[..2] != id || head[2] & 0x80 == 0 {
            continue;
        }
        if head[2] & 0x02 == 0 {
            return Ok(head.to_vec());
        }
        break true;
    };
    debug_assert!(truncated);
    let tcp = async {
        let mut s = TcpStream::connect(server).await?;
        let len =
            u16::try_from(request.len()).map_err(|_| std::io::Error::other("request too long"))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        s.write_all(&framed).await?;
        let n = s.read_u16().await?;
        let mut body = vec![0u8; usize::from(n)];
        s.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    timeout_at(deadline, tcp)
        .await
        .map_err(|_| timed_out())?
        .map_err(unreachable)
}

/// The name servers of `/etc/resolv.conf`, port 53, in order.
pub fn system_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// The `nameserver` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| {
            // A scoped IPv6 address (fe80::1%eth0) is not usable here.
            a.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# generated\nsearch lab.test\nnameserver 10.0.0.2\nnameserver ::1\nnameserver fe80::1%eth0\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_silence_times_out() {
        // A UDP port nobody listens on: refused at once.
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let req = message::query(9, "lab.test", hickory_proto::rr::RecordType::SOA)
            .unwrap()
            .to_vec()
            .unwrap();
        let e = exchange(port, &req, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, DnsError::Unreachable { .. }), "{e}");
        // A socket that reads and never answers: a timeout.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = exchange(
            silent.local_addr().unwrap(),
            &req,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DnsError::Timeout { .. }), "{e}");
    }
}
