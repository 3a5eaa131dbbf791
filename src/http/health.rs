//! The KMS half of `/healthz`: connect to a KMS listener, send a real
//! MS-RPC bind for the KMS interface (NDR32), and expect a bind_ack.

use crate::protocol::rpc::Syntax;
use crate::protocol::rpc::bind::encode_bind;
use crate::protocol::rpc::pdu::{HEADER_LEN, Header, MAX_PDU_LEN, flags, ptype};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole probe (connect, bind, bind_ack) must finish within this.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where to connect to reach a listener bound to `addr` (a wildcard
/// address is reached through loopback of the same family).
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// A bind offering one context: the KMS interface v1.0 in NDR32 v2.
pub fn bind_pdu(call_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(72);
    let item = (0, Syntax::Ndr32.guid().0, Syntax::Ndr32.version());
    encode_bind(ptype::BIND, flags::FIRST_LAST, call_id, &[item], &mut out);
    out
}

/// Binds to the KMS listener at `addr`; `Err` says what went wrong.
pub async fn probe_kms(addr: SocketAddr) -> Result<(), String> {
    let target = connect_addr(addr);
    match tokio::time::timeout(PROBE_TIMEOUT, bind_once(target)).await {
        Ok(r) => r.map_err(|e| format!("{target}: {e}")),
        Err(_) => Err(format!(
            "{target}: no bind_ack within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

async fn bind_once(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let call_id = rand::random::<u32>() | 1;
    stream
        .write_all(&bind_pdu(call_id))
        .await
        .map_err(|e| format!("cannot send the bind: {e}"))?;
    let mut head = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("no bind_ack: {e}"))?;
    let h = Header::peek(&head, MAX_PDU_LEN)
        .map_err(|e| format!("malformed reply: {e}"))?
        .ok_or("short reply")?;
    let mut body = vec![0u8; usize::from(h.frag_len) - HEADER_LEN];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("truncated reply: {e}"))?;
    let _ = stream.shutdown().await;
    if h.ptype == ptype::BIND_NAK {
        return Err("bind refused (bind_nak)".into());
    }
    if h.ptype != ptype::BIND_ACK {
        return Err(format!(
            "expected a bind_ack (type 12), got type {}",
            h.ptype
        ));
    }
    if h.call_id != call_id {
        return Err(format!(
            "bind_ack call_id {} does not echo {call_id}",
            h.call_id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_matches_the_spec_example() {
        let want = "05000b03100000004800000002000000d016d0160000000001000000000001007521c8514e845047b0d8ec255555bc0601000000045d888aeb1cc9119fe808002b10486002000000";
        let got: String = bind_pdu(2).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wildcards_map_to_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(connect_addr(a("0.0.0.0:1688")), a("127.0.0.1:1688"));
        assert_eq!(connect_addr(a("[::]:1688")), a("[::1]:1688"));
        assert_eq!(connect_addr(a("10.1.2.3:1688")), a("10.1.2.3:1688"));
    }
}
