//! The connection driver: moves the PDUs of the sans-IO client core
//! ([`crate::protocol::client`]) over a TCP stream, with a deadline on every
//! wait. [`Link`] is shared by `kmsd activate` ([`Connection`]), `kmsd load`
//! and the `/healthz` probe; [`Connection`] adds what `activate` needs: the
//! request it builds from [`ClientOptions`], the clock and the random IV.

use crate::client::request::ProductRequest;
use crate::codec::{CodecError, RpcPduCodec};
use crate::protocol::client::{
    AfterBind, AwaitingReply, BIND_CALL_ID, Binding, Bound, Context, Offer, ReplyError,
};
use crate::protocol::guid::Guid;
use crate::protocol::kms::{KmsError, RequestBase, VerifyError, Version, Workstation};
use crate::protocol::rpc::bind::AckError;
use crate::protocol::rpc::pdu::{MAX_PDU_LEN, PduError};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub use crate::protocol::client::Exchange;

/// What the client sends.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub version: Version,
    /// Offer NDR64 in the bind.
    pub ndr64: bool,
    /// Offer bind-time feature negotiation.
    pub btfn: bool,
    /// When the host rejects NDR32 in favour of NDR64, negotiate NDR32 with an
    /// alter_context and send the first request in it (as Windows does).
    pub alter_context: bool,
    pub app_id: Guid,
    pub sku_id: Guid,
    pub kms_id: Guid,
    pub n_policy: u32,
    pub workstation: String,
    pub license_status: u32,
    pub binding_expiration: u32,
    pub vm: bool,
    /// Per-exchange deadline.
    pub timeout: Duration,
    /// Added to the client clock sent (milliseconds; 0 for the true time).
    pub clock_offset_ms: i64,
}

impl ClientOptions {
    /// Options that send `request` (product, version, N_Policy, workstation,
    /// license state), binding as Windows does (NDR32, NDR64, BTFN, and the
    /// alter_context when the host prefers NDR64), `timeout` for each wait.
    pub fn sending(request: &ProductRequest, timeout: Duration) -> Self {
        let base = request.base(Guid::NIL, 0);
        Self {
            version: base.version,
            ndr64: true,
            btfn: true,
            alter_context: true,
            app_id: base.app_id,
            sku_id: base.sku_id,
            kms_id: base.kms_id,
            n_policy: base.n_policy,
            workstation: base.workstation.name(),
            license_status: base.license_status,
            binding_expiration: base.binding_expiration,
            vm: request.vm,
            timeout,
            clock_offset_ms: 0,
        }
    }

    /// The bind these options ask for (multiplexed, as Windows binds).
    pub fn offer(&self) -> Offer {
        Offer {
            ndr64: self.ndr64,
            btfn: self.btfn,
            alter_context: self.alter_context,
            multiplex: true,
        }
    }

    /// The request for `cmid` sent at `client_time` (a FILETIME).
    pub fn request_base(&self, cmid: Guid, client_time: u64) -> Result<RequestBase, KmsError> {
        Ok(RequestBase {
            version: self.version,
            vm_info: u32::from(self.vm),
            license_status: self.license_status,
            binding_expiration: self.binding_expiration,
            app_id: self.app_id,
            sku_id: self.sku_id,
            kms_id: self.kms_id,
            cmid,
            n_policy: self.n_policy,
            client_time,
            previous_cmid: Guid::NIL,
            workstation: Workstation::new(&self.workstation)?,
        })
    }
}

/// What the client was waiting for when time ran out or the host closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Connecting,
    BindAck,
    AlterContextResp,
    Response,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connecting => "connecting",
            Self::BindAck => "waiting for bind_ack",
            Self::AlterContextResp => "waiting for alter_context_resp",
            Self::Response => "waiting for the response",
        })
    }
}

/// A failed activation, precisely.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {err}")]
    Connect {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("timed out {0}")]
    Timeout(Stage),
    #[error("connection closed by the host {0}")]
    Closed(Stage),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply from the host: {0}")]
    Rpc(#[from] PduError),
    #[error("bind refused: {0}")]
    Bind(AckError),
    #[error("reply call_id {got} does not echo request {sent}")]
    CallId { got: u32, sent: u32 },
    #[error("RPC fault {0:#010x}")]
    Fault(u32),
    #[error("host answered error {0:#010X} instead of a response")]
    Hresult(u32),
    #[error("response failed verification: {0}")]
    Verify(#[from] VerifyError),
    #[error("invalid request: {0}")]
    Request(KmsError),
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => Self::Io(e),
            CodecError::Pdu(e) => Self::Rpc(e),
        }
    }
}

impl From<AckError> for ClientError {
    /// A bind_ack that cannot be parsed is a malformed reply; one that
    /// parses but refuses or mismatches is a bind failure.
    fn from(e: AckError) -> Self {
        match e {
            AckError::Malformed(p) => Self::Rpc(p),
            other => Self::Bind(other),
        }
    }
}

impl From<ReplyError> for ClientError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Malformed(p) => Self::Rpc(p),
            ReplyError::CallId { got, sent } => Self::CallId { got, sent },
            ReplyError::Fault(s) => Self::Fault(s),
            ReplyError::Hresult(h) => Self::Hresult(h),
            ReplyError::Verify(v) => Self::Verify(v),
        }
    }
}

/// FILETIME now.
pub fn filetime_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_nanos() / 100) as u64 + 116_444_736_000_000_000
}

/// Connects to `addr` within `timeout`, with Nagle off (a PDU is one write).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout(Stage::Connecting))?
        .map_err(|err| ClientError::Connect { addr, err })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A TCP connection bound by the client core: sends its PDUs, reads the
/// replies (each within the timeout) and hands them back to it.
pub struct Link {
    framed: Framed<TcpStream, RpcPduCodec>,
    bound: Bound,
    timeout: Duration,
    out: Vec<u8>,
}

impl Link {
    /// Binds on `stream` (and sends the alter_context when the core asks
    /// for it). `timeout` bounds each wait for a reply.
    pub async fn bind(
        stream: TcpStream,
        binding: Binding,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut framed = Framed::new(stream, RpcPduCodec::new(MAX_PDU_LEN));
        let mut out = Vec::with_capacity(320);
        binding.encode(&mut out);
        framed.send(out.as_slice()).await?;
        let ack = recv(&mut framed, timeout, Stage::BindAck).await?;
        let bound = match binding.on_bind_ack(&ack)? {
            AfterBind::Bound(b) => b,
            AfterBind::AlterContext(alter) => {
                out.clear();
                alter.encode(&mut out);
                framed.send(out.as_slice()).await?;
                let resp = recv(&mut framed, timeout, Stage::AlterContextResp).await?;
                alter.on_response(&resp)?
            }
        };
        Ok(Self {
            framed,
            bound,
            timeout,
            out,
        })
    }

    /// The context of the first request and of the ones after it.
    pub fn contexts(&self) -> (Context, Context) {
        self.bound.contexts()
    }

    /// Requests sent on this connection.
    pub fn requests_sent(&self) -> u32 {
        self.bound.requests_sent()
    }

    /// Sends the request for `base` (encrypted with `iv` for v5/v6) and
    /// verifies the response.
    pub async fn request(
        &mut self,
        base: &RequestBase,
        iv: [u8; 16],
    ) -> Result<Exchange, ClientError> {
        self.out.clear();
        let pending = self.bound.request(base, iv, &mut self.out);
        self.call(pending).await
    }

    async fn call(&mut self, pending: AwaitingReply) -> Result<Exchange, ClientError> {
        self.framed.send(self.out.as_slice()).await?;
        let reply = recv(&mut self.framed, self.timeout, Stage::Response).await?;
        Ok(pending.on_reply(&reply)?)
    }

    /// Shuts the connection down politely (errors ignored: nothing is owed).
    pub async fn close(mut self) {
        let _ = self.framed.close().await;
    }
}

/// Reads one whole PDU within `timeout`; the core checks its framing.
async fn recv(
    framed: &mut Framed<TcpStream, RpcPduCodec>,
    timeout: Duration,
    stage: Stage,
) -> Result<Bytes, ClientError> {
    Ok(tokio::time::timeout(timeout, framed.next())
        .await
        .map_err(|_| ClientError::Timeout(stage))?
        .ok_or(ClientError::Closed(stage))??
        .into_bytes())
}

/// A bound connection to a host, for `kmsd activate` and the tests.
pub struct Connection {
    link: Link,
    opts: ClientOptions,
}

impl Connection {
    /// Connects and binds as `opts` say.
    pub async fn open(addr: SocketAddr, opts: ClientOptions) -> Result<Self, ClientError> {
        // Refuse a request that cannot be built before connecting.
        opts.request_base(Guid::NIL, 0)
            .map_err(ClientError::Request)?;
        let stream = connect(addr, opts.timeout).await?;
        let binding = Binding::new(opts.offer(), BIND_CALL_ID);
        let link = Link::bind(stream, binding, opts.timeout).await?;
        Ok(Self { link, opts })
    }

    /// The context of the first request and of the ones after it.
    pub fn contexts(&self) -> (Context, Context) {
        self.link.contexts()
    }

    /// Sends one activation request for `cmid` at the current time (plus
    /// the options' clock offset) with a random IV, and verifies the
    /// response.
    pub async fn activate(&mut self, cmid: Guid) -> Result<Exchange, ClientError> {
        let o = &self.opts;
        let time = filetime_now().wrapping_add_signed(o.clock_offset_ms.saturating_mul(10_000));
        let base = o.request_base(cmid, time).map_err(ClientError::Request)?;
        let mut iv = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut iv);
        self.link.request(&base, iv).await
    }
}

/// Connects, binds and performs `cmids.len()` activations on one connection.
pub async fn activate(
    addr: SocketAddr,
    opts: ClientOptions,
    cmids: &[Guid],
) -> Result<Vec<Exchange>, ClientError> {
    let mut conn = Connection::open(addr, opts).await?;
    let mut out = Vec::with_capacity(cmids.len());
    for &cmid in cmids {
        out.push(conn.activate(cmid).await?);
    }
    Ok(out)
}
