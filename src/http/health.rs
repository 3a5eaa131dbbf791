//! The KMS half of `/healthz`: connect to a KMS listener, send a real
//! MS-RPC bind for the KMS interface (NDR32), and expect a bind_ack that
//! passes the client core's checks ([`crate::protocol::client`], driven by
//! [`crate::client::Link`] like `kmsd activate` and `kmsd load`).

use crate::client::{ClientError, Link, connect};
use crate::protocol::client::{Binding, Offer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

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

/// Binds to the KMS listener at `addr`; `Err` says what went wrong.
pub async fn probe_kms(addr: SocketAddr) -> Result<(), String> {
    let target = connect_addr(addr);
    match tokio::time::timeout(PROBE_TIMEOUT, bind_once(target)).await {
        Ok(Ok(())) => Ok(()),
        // The connect error names the address already.
        Ok(Err(e @ ClientError::Connect { .. })) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!(
            "{target}: no bind_ack within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

async fn bind_once(addr: SocketAddr) -> Result<(), ClientError> {
    let stream = connect(addr, PROBE_TIMEOUT).await?;
    let call_id = rand::random::<u32>() | 1;
    let binding = Binding::new(Offer::NDR32_ONLY, call_id);
    Link::bind(stream, binding, PROBE_TIMEOUT)
        .await?
        .close()
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_matches_the_spec_example() {
        let want = "05000b03100000004800000002000000d016d0160000000001000000000001007521c8514e845047b0d8ec255555bc0601000000045d888aeb1cc9119fe808002b10486002000000";
        // The probe's bind: one context, the KMS interface v1.0 in NDR32 v2.
        let mut pdu = Vec::new();
        Binding::new(Offer::NDR32_ONLY, 2).encode(&mut pdu);
        let got = crate::protocol::hex::lower(&pdu);
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
