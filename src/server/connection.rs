//! One client connection: frames PDUs, hands each to the host, writes the
//! answer, and enforces the per-connection limits. Requests on a connection
//! are answered one at a time, in order.

use crate::codec::{CodecError, RpcPduCodec};
use crate::host::Host;
use crate::licenses::Seat;
use crate::metrics::ConnEvent;
use crate::protocol::kms::products;
use crate::protocol::rpc::bind::BindPolicy;
use crate::protocol::rpc::session::Session;
use crate::protocol::server::Outcome;
use futures_util::StreamExt;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why a wait for the next PDU ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadTimeout {
    /// No byte of a next PDU within the idle timeout.
    Idle,
    /// A PDU begun but not finished within the read timeout.
    Incomplete,
}

impl ReadTimeout {
    fn reason(self) -> &'static str {
        match self {
            Self::Idle => "idle timeout",
            Self::Incomplete => "read timeout (PDU incomplete)",
        }
    }

    fn event(self) -> ConnEvent {
        match self {
            Self::Idle => ConnEvent::ClosedIdle,
            Self::Incomplete => ConnEvent::ClosedReadTimeout,
        }
    }
}

/// How long a connection may idle once shutdown has begun.
const SHUTDOWN_IDLE: Duration = Duration::from_millis(250);

/// The limits a connection runs under.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub policy: BindPolicy,
    pub port: u16,
    pub max_pdu_len: usize,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_requests: u32,
}

/// Serves one connection until the peer closes, a limit ends it, the stream
/// turns out to be garbage, or shutdown begins (between exchanges only).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    host: Arc<Host>,
    limits: ConnLimits,
    assoc_group: u32,
    shutdown: CancellationToken,
) {
    // Reads are framed with a buffer the size of the largest PDU accepted;
    // answers are written straight from `out`. An idle connection holds no
    // more than that (10,000 of them must fit in well under 100 MB).
    let mut framed = FramedRead::with_capacity(
        stream,
        RpcPduCodec::new(limits.max_pdu_len),
        limits.max_pdu_len,
    );
    let mut session = Session::new(limits.policy, limits.port, assoc_group);
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut out = Vec::new();
    let mut requests = 0u32;
    loop {
        let next = match next_pdu(&mut framed, &limits, &shutdown).await {
            Some(n) => n,
            // Shutdown began while waiting: wait again, with the short idle window.
            None => continue,
        };
        let pdu = match next {
            Err(why) => {
                host.metrics().conn_event(why.event());
                debug!(reason = why.reason(), "closing connection");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(CodecError::Io(e)))) => {
                debug!(error = %e, "connection error");
                break;
            }
            Ok(Some(Err(CodecError::Pdu(e)))) => {
                host.metrics().conn_event(ConnEvent::ClosedMalformed);
                warn!(%peer, error = %e, "unframeable PDU; closing connection");
                break;
            }
            Ok(Some(Ok(pdu))) => pdu,
        };
        out.clear();
        let (outcome, seat) = match host
            .handle(&mut session, &pdu, peer.ip(), &mut rng, &mut out)
            .await
        {
            Ok(h) => (h.outcome, h.seat),
            Err(e) => {
                host.metrics().conn_event(ConnEvent::ClosedMalformed);
                warn!(%peer, error = %e, "malformed PDU; closing connection");
                break;
            }
        };
        // The answer leaves before its log line is formatted: the line is
        // not on the client's critical path.
        let sent = out.is_empty() || framed.get_mut().write_all(&out).await.is_ok();
        log_outcome(&outcome, seat, peer);
        if !sent {
            break;
        }
        if is_request(&outcome) {
            requests += 1;
            if requests >= limits.max_requests {
                host.metrics().conn_event(ConnEvent::ClosedRequestLimit);
                debug!(requests, "request limit reached; closing connection");
                break;
            }
        }
    }
}

/// Whether `o` answered a request (which counts toward `max_requests`), as
/// opposed to a bind or alter_context.
fn is_request(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Answered { .. }
            | Outcome::Refused { .. }
            | Outcome::Invalid { .. }
            | Outcome::Fault { .. }
            | Outcome::BadStub { .. }
    )
}

type Framed = FramedRead<TcpStream, RpcPduCodec>;

/// Waits for the next PDU: idle until its first byte, then the whole PDU
/// must arrive within `read_timeout`, so a slow sender is cut off either
/// way. Once shutdown begins, a connection is only kept for what its
/// client has already sent or sends at once (the request following a
/// bind): a short idle window, then it closes. `None`: shutdown began
/// while waiting (ask again, with the short window).
async fn next_pdu(
    framed: &mut Framed,
    limits: &ConnLimits,
    shutdown: &CancellationToken,
) -> Option<Result<Option<Result<crate::codec::Pdu, CodecError>>, ReadTimeout>> {
    let idle = if shutdown.is_cancelled() {
        SHUTDOWN_IDLE.min(limits.idle_timeout)
    } else {
        limits.idle_timeout
    };
    let idle_deadline = Instant::now() + idle;
    let read_timeout = limits.read_timeout;
    let read = async move {
        // One timer: the idle deadline until the first bytes of a PDU are
        // buffered, then read_timeout from that moment for the rest.
        let timer = tokio::time::sleep_until(idle_deadline);
        tokio::pin!(timer);
        let mut reading = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(next) = framed.poll_next_unpin(cx) {
                return Poll::Ready(Ok(next));
            }
            if !reading && !framed.read_buffer().is_empty() {
                reading = true;
                timer.as_mut().reset(Instant::now() + read_timeout);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) if reading => Poll::Ready(Err(ReadTimeout::Incomplete)),
                Poll::Ready(()) => Poll::Ready(Err(ReadTimeout::Idle)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    if shutdown.is_cancelled() {
        return Some(read.await);
    }
    tokio::select! {
        _ = shutdown.cancelled() => None,
        r = read => Some(r),
    }
}

fn log_outcome(o: &Outcome, seat: Seat, peer: SocketAddr) {
    match o {
        Outcome::Negotiated { alter, accepted } => {
            debug!(alter, accepted, "presentation contexts negotiated");
        }
        Outcome::Answered { request, count, .. } => {
            // The fields of the Windows host's event 12290, on one line.
            let b = &request.base;
            info!(
                %peer,
                workstation = %b.workstation.name(),
                cmid = %b.cmid,
                app_id = %b.app_id,
                sku_id = %b.sku_id,
                product = products::sku(&b.sku_id).map_or("unknown SKU", |s| s.name),
                kms_id = %b.kms_id,
                n_policy = b.n_policy,
                license_status = b.license_status,
                minutes_to_expiry = b.binding_expiration,
                vm = b.vm_info != 0,
                protocol = %b.version,
                count,
                activated = *count >= b.n_policy,
                seat = %SeatLog(seat),
                result = "0x00000000",
                "activation answered"
            );
        }
        Outcome::Refused {
            request,
            hresult,
            why,
            ..
        } => {
            let b = &request.base;
            warn!(
                %peer,
                workstation = %b.workstation.name(),
                cmid = %b.cmid,
                app_id = %b.app_id,
                sku_id = %b.sku_id,
                kms_id = %b.kms_id,
                n_policy = b.n_policy,
                license_status = b.license_status,
                protocol = %b.version,
                result = format_args!("{hresult:#010X}"),
                reason = why,
                seat = %SeatLog(seat),
                "activation refused"
            );
        }
        Outcome::Invalid { error, .. } => {
            warn!(%peer, error = %error, "invalid KMS request answered with 0x8007000D");
        }
        Outcome::Fault {
            status,
            why,
            call_id,
        } => {
            warn!(
                %peer,
                call_id,
                status = format_args!("{status:#010x}"),
                reason = why,
                "RPC fault sent"
            );
        }
        Outcome::BadStub { error, call_id } => {
            warn!(%peer, call_id, error = %error, "bad stub data; RPC fault sent");
        }
    }
}

/// A seat as the activation log line names it.
struct SeatLog(Seat);

impl std::fmt::Display for SeatLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Seat::None => f.write_str("none"),
            Seat::Renewed(p) => write!(f, "pack {p} (renewed)"),
            Seat::Taken(p) => write!(f, "pack {p} (taken)"),
            Seat::Over(p) => write!(f, "pack {p} (OVER its quantity)"),
            Seat::Refused(p) => write!(f, "pack {p} has no free seat"),
        }
    }
}
