//! One client connection: bind (and alter_context, as Windows does when the
//! host prefers NDR64), then requests, each response verified.

use crate::protocol::guid::Guid;
use crate::protocol::kms::{
    self, RequestBase, VerifiedResponse, VerifyError, Version, Workstation,
};
use crate::protocol::rpc::bind::{AckError, AckResult, check_ack, encode_bind};
use crate::protocol::rpc::pdu::{Header, MAX_PDU_LEN, PduError, flags, ptype};
use crate::protocol::rpc::request::{self as rpc_request, Reply};
use crate::protocol::rpc::{BTFN_PREFIX, Syntax};
use crate::codec::{CodecError, RpcPduCodec};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

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

/// A failed activation, precisely.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {err}")]
    Connect {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("connection closed by the host {0}")]
    Closed(&'static str),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply from the host: {0}")]
    Rpc(#[from] PduError),
    #[error("bind refused: {0}")]
    Bind(String),
    #[error("RPC fault {0:#010x}")]
    Fault(u32),
    #[error("host answered error {0:#010X} instead of a response")]
    Hresult(u32),
    #[error("response failed verification: {0}")]
    Verify(#[from] VerifyError),
    #[error("invalid request: {0}")]
    Request(String),
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => Self::Io(e),
            CodecError::Pdu(e) => Self::Rpc(e),
        }
    }
}

/// One verified request/response.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub syntax: Syntax,
    pub cmid: Guid,
    pub response: VerifiedResponse,
}

/// FILETIME now.
pub fn filetime_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_nanos() / 100) as u64 + 116_444_736_000_000_000
}

/// A bound connection to a host.
pub struct Connection {
    framed: Framed<TcpStream, RpcPduCodec>,
    call_id: u32,
    /// Context for the first request, and for the rest.
    first: (u16, Syntax),
    rest: (u16, Syntax),
    sent: u32,
    opts: ClientOptions,
}

/// Reads one whole reply PDU (one fragment, no auth trailer) within
/// `deadline`; `what` names the wait in a timeout or close error.
pub(crate) async fn read_pdu(
    framed: &mut Framed<TcpStream, RpcPduCodec>,
    deadline: Duration,
    what: &'static str,
) -> Result<(Header, Bytes), ClientError> {
    let pdu = tokio::time::timeout(deadline, framed.next())
        .await
        .map_err(|_| ClientError::Timeout(what))?
        .ok_or(ClientError::Closed(what))??;
    let header =
        Header::peek(&pdu, MAX_PDU_LEN)?.ok_or_else(|| PduError::malformed("reply", "short"))?;
    if header.flags & flags::FIRST_LAST != flags::FIRST_LAST || header.auth_len != 0 {
        return Err(PduError::malformed("reply", "fragmented or authenticated").into());
    }
    Ok((header, pdu))
}

/// The results of a bind_ack / alter_context_resp, checked.
fn decode_ack(
    header: Header,
    pdu: &[u8],
    want: u8,
    call_id: u32,
    items: usize,
) -> Result<Vec<AckResult>, ClientError> {
    let mut out = Vec::with_capacity(items);
    check_ack(header, pdu, want, call_id, items, &mut out).map_err(|e| match e {
        AckError::Malformed(p) => ClientError::Rpc(p),
        other => ClientError::Bind(other.to_string()),
    })?;
    Ok(out)
}

impl Connection {
    /// Connects and binds.
    pub async fn open(addr: SocketAddr, opts: ClientOptions) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(opts.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connecting"))?
            .map_err(|err| ClientError::Connect { addr, err })?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, RpcPduCodec::new(MAX_PDU_LEN));
        let call_id = 2;
        let mut items = vec![(0u16, Syntax::Ndr32.guid().0, Syntax::Ndr32.version())];
        if opts.ndr64 {
            items.push((1, Syntax::Ndr64.guid().0, Syntax::Ndr64.version()));
        }
        if opts.btfn {
            let mut btfn = [0u8; 16];
            btfn[..8].copy_from_slice(&BTFN_PREFIX);
            btfn[8] = 0x03;
            items.push((2, btfn, 1));
        }
        let mut out = Vec::new();
        encode_bind(
            ptype::BIND,
            flags::FIRST_LAST | flags::CONC_MPX,
            call_id,
            &items,
            &mut out,
        );
        framed.send(out.as_slice()).await?;
        let (h, pdu) = read_pdu(&mut framed, opts.timeout, "waiting for bind_ack").await?;
        if h.ptype == ptype::BIND_NAK {
            return Err(ClientError::Bind("bind_nak".into()));
        }
        let results = decode_ack(h, &pdu, ptype::BIND_ACK, call_id, items.len())?;
        let mut ndr32 = None;
        let mut ndr64 = None;
        for ((id, syntax, version), (result, reason, got, got_version)) in
            items.iter().zip(&results)
        {
            let is_btfn = syntax[..8] == BTFN_PREFIX;
            match (is_btfn, *result) {
                (true, 3) if reason & !0x03 == 0 => {}
                (true, 2) => {}
                (false, 0) if got == syntax && got_version == version => {
                    if *syntax == Syntax::Ndr32.guid().0 {
                        ndr32 = Some(*id);
                    } else {
                        ndr64 = Some(*id);
                    }
                }
                (false, 2) if *got == [0; 16] && *got_version == 0 => {}
                _ => {
                    return Err(ClientError::Bind(format!(
                        "item {id}: unexpected result {result}/{reason}"
                    )));
                }
            }
        }
        let (first, rest) = match (ndr32, ndr64) {
            (Some(c), None) => ((c, Syntax::Ndr32), (c, Syntax::Ndr32)),
            (_, Some(c64)) => {
                let c64 = (c64, Syntax::Ndr64);
                match ndr32 {
                    Some(c) => ((c, Syntax::Ndr32), c64),
                    None if opts.alter_context => {
                        let alter = [(0u16, Syntax::Ndr32.guid().0, Syntax::Ndr32.version())];
                        out.clear();
                        encode_bind(
                            ptype::ALTER_CONTEXT,
                            flags::FIRST_LAST | flags::CONC_MPX,
                            call_id,
                            &alter,
                            &mut out,
                        );
                        framed.send(out.as_slice()).await?;
                        let (h, pdu) =
                            read_pdu(&mut framed, opts.timeout, "waiting for alter_context_resp")
                                .await?;
                        let r = decode_ack(h, &pdu, ptype::ALTER_CONTEXT_RESP, call_id, 1)?;
                        if r.first().is_some_and(|x| x.0 == 0) {
                            ((0, Syntax::Ndr32), c64)
                        } else {
                            (c64, c64)
                        }
                    }
                    None => (c64, c64),
                }
            }
            (None, None) => {
                return Err(ClientError::Bind("neither NDR32 nor NDR64 accepted".into()));
            }
        };
        Ok(Self {
            framed,
            call_id,
            first,
            rest,
            sent: 0,
            opts,
        })
    }

    /// Sends one activation request for `cmid` and verifies the response.
    pub async fn activate(&mut self, cmid: Guid) -> Result<Exchange, ClientError> {
        let o = &self.opts;
        let base = RequestBase {
            version: o.version,
            vm_info: u32::from(o.vm),
            license_status: o.license_status,
            binding_expiration: o.binding_expiration,
            app_id: o.app_id,
            sku_id: o.sku_id,
            kms_id: o.kms_id,
            cmid,
            n_policy: o.n_policy,
            client_time: filetime_now().wrapping_add_signed(o.clock_offset_ms * 10_000),
            previous_cmid: Guid::NIL,
            workstation: Workstation::new(&o.workstation)
                .map_err(|e| ClientError::Request(e.to_string()))?,
        };
        let mut iv = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut iv);
        let (kms_bytes, sent) = kms::encode_request(&base, iv);
        let (ctx, syntax) = if self.sent == 0 {
            self.first
        } else {
            self.rest
        };
        self.sent += 1;
        self.call_id += 1;
        let call_id = self.call_id;
        let mut out = Vec::with_capacity(320);
        rpc_request::encode_request(call_id, ctx, syntax, &kms_bytes, &mut out);
        self.framed.send(out.as_slice()).await?;
        let (h, pdu) = read_pdu(
            &mut self.framed,
            self.opts.timeout,
            "waiting for the response",
        )
        .await?;
        if h.call_id != call_id {
            return Err(PduError::malformed(
                "response",
                format!("call_id {} for request {call_id}", h.call_id),
            )
            .into());
        }
        match rpc_request::decode_reply(h, &pdu, syntax)? {
            Reply::Fault(st) => Err(ClientError::Fault(st)),
            Reply::Hresult(hr) => Err(ClientError::Hresult(hr)),
            Reply::Kms(bytes) => Ok(Exchange {
                syntax,
                cmid,
                response: kms::verify_response(&sent, bytes)?,
            }),
        }
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
