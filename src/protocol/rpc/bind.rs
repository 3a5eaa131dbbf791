//! bind / alter_context and their acknowledgements (SPEC §2.3, §2.4):
//! presentation-context negotiation for NDR32, NDR64 and bind-time feature
//! negotiation, decided per context item.

use super::pdu::{self, Header, PduError, flags, ptype};
use super::{BTFN_PREFIX, KMS_INTERFACE, NDR32, NDR64, Syntax};
use crate::protocol::guid::Guid;
use crate::protocol::wire::Reader;

/// Size of one transfer syntax entry: GUID + u32 version.
const SYNTAX_LEN: usize = 20;
/// Fixed part of a context item before its transfer syntaxes.
const ITEM_HEAD_LEN: usize = 24;
/// Most context items a bind or alter_context may carry.
pub const MAX_ITEMS: usize = 64;

/// What the host is willing to negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindPolicy {
    /// Offer NDR64 (Windows 8 / Server 2012 and later hosts do).
    pub ndr64: bool,
    /// Answer bind-time feature negotiation.
    pub btfn: bool,
}

impl Default for BindPolicy {
    fn default() -> Self {
        Self {
            ndr64: true,
            btfn: true,
        }
    }
}

/// One transfer syntax proposed in a context item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSyntax {
    pub guid: Guid,
    pub version: u32,
}

impl TransferSyntax {
    /// The BTFN feature bits, when this entry is a feature negotiation.
    pub fn btfn_bits(&self) -> Option<u16> {
        let b = self.guid.as_bytes();
        (b.get(..8) == Some(&BTFN_PREFIX[..])).then(|| {
            u16::from_le_bytes([
                b.get(8).copied().unwrap_or(0),
                b.get(9).copied().unwrap_or(0),
            ])
        })
    }

    fn syntax(&self) -> Option<Syntax> {
        match (self.guid, self.version) {
            (g, 2) if g == NDR32 => Some(Syntax::Ndr32),
            (g, 1) if g == NDR64 => Some(Syntax::Ndr64),
            _ => None,
        }
    }
}

/// A presentation context item of a bind or alter_context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextItem {
    pub id: u16,
    pub abstract_syntax: Guid,
    /// major in the low 16 bits, minor in the high 16 bits (wire order).
    pub abstract_version: u32,
    pub transfer: Vec<TransferSyntax>,
}

/// A decoded bind or alter_context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub header: Header,
    pub max_xmit_frag: u16,
    pub max_recv_frag: u16,
    pub assoc_group: u32,
    pub items: Vec<ContextItem>,
}

impl Bind {
    /// Decodes a whole bind/alter_context PDU. Every count is checked against
    /// the bytes actually present before anything is allocated for it.
    pub fn decode(header: Header, pdu_bytes: &[u8]) -> Result<Self, PduError> {
        let what = if header.ptype == ptype::BIND {
            "bind"
        } else {
            "alter_context"
        };
        let end = usize::from(header.frag_len).saturating_sub(usize::from(header.auth_len));
        let body = pdu_bytes
            .get(pdu::HEADER_LEN..end)
            .ok_or_else(|| PduError::malformed(what, "shorter than its header says"))?;
        let mut r = Reader::new(body);
        let e = |err| PduError::malformed(what, err);
        let max_xmit_frag = r.u16().map_err(e)?;
        let max_recv_frag = r.u16().map_err(e)?;
        let assoc_group = r.u32().map_err(e)?;
        let n = usize::from(r.u8().map_err(e)?);
        r.skip(3).map_err(e)?;
        // Windows clients offer 3 items; a bound here also bounds the
        // bind_ack (24 bytes a result) well below the largest PDU.
        if n > MAX_ITEMS {
            return Err(PduError::malformed(
                what,
                format!("{n} context items (at most {MAX_ITEMS})"),
            ));
        }
        if n * ITEM_HEAD_LEN > r.remaining() {
            return Err(PduError::malformed(
                what,
                format!("{n} context items cannot fit {} bytes", r.remaining()),
            ));
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u16().map_err(e)?;
            let n_syn = usize::from(r.u8().map_err(e)?);
            r.skip(1).map_err(e)?;
            let abstract_syntax = r.guid().map_err(e)?;
            let abstract_version = r.u32().map_err(e)?;
            if n_syn == 0 {
                return Err(PduError::malformed(
                    what,
                    format!("context {id} proposes no transfer syntax"),
                ));
            }
            if n_syn * SYNTAX_LEN > r.remaining() {
                return Err(PduError::malformed(
                    what,
                    format!("context {id} declares {n_syn} transfer syntaxes past the end"),
                ));
            }
            let mut transfer = Vec::with_capacity(n_syn);
            for _ in 0..n_syn {
                transfer.push(TransferSyntax {
                    guid: r.guid().map_err(e)?,
                    version: r.u32().map_err(e)?,
                });
            }
            items.push(ContextItem {
                id,
                abstract_syntax,
                abstract_version,
                transfer,
            });
        }
        Ok(Self {
            header,
            max_xmit_frag,
            max_recv_frag,
            assoc_group,
            items,
        })
    }
}

/// The answer to one context item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextResult {
    /// 0 acceptance, 2 provider rejection, 3 negotiate_ack (BTFN).
    pub result: u16,
    /// For rejections: 1 abstract syntax / 2 transfer syntaxes not supported.
    /// For negotiate_ack: the feature bits granted.
    pub reason: u16,
    /// The accepted syntax (`None` for rejections and BTFN).
    pub accepted: Option<Syntax>,
}

impl ContextResult {
    const fn reject(reason: u16) -> Self {
        Self {
            result: 2,
            reason,
            accepted: None,
        }
    }
}

/// Bind-time features the host grants (security context multiplexing, keep
/// connection on orphan).
const BTFN_SUPPORTED: u16 = 0x0003;

/// Decides every item of a bind/alter_context (SPEC §2.4): NDR64 is
/// preferred whenever the peer offers it in this PDU and the policy allows;
/// NDR32 is accepted otherwise; a BTFN item is acknowledged with the feature
/// bits granted; anything else is rejected with the precise reason.
pub fn negotiate(items: &[ContextItem], policy: BindPolicy) -> Vec<ContextResult> {
    let ndr64_offered = policy.ndr64
        && items.iter().any(|i| {
            i.abstract_syntax == KMS_INTERFACE
                && i.transfer.iter().any(|t| t.syntax() == Some(Syntax::Ndr64))
        });
    items
        .iter()
        .map(|item| {
            if let Some(bits) = item.transfer.iter().find_map(TransferSyntax::btfn_bits) {
                return if policy.btfn {
                    ContextResult {
                        result: 3,
                        reason: bits & BTFN_SUPPORTED,
                        accepted: None,
                    }
                } else {
                    ContextResult::reject(2)
                };
            }
            // The KMS interface is version 1.0.
            if item.abstract_syntax != KMS_INTERFACE || item.abstract_version != 1 {
                return ContextResult::reject(1);
            }
            let acceptable = |s: Syntax| match s {
                Syntax::Ndr64 => policy.ndr64,
                Syntax::Ndr32 => !ndr64_offered,
            };
            item.transfer
                .iter()
                .filter_map(TransferSyntax::syntax)
                .find(|&s| acceptable(s))
                .map_or(ContextResult::reject(2), |s| ContextResult {
                    result: 0,
                    reason: 0,
                    accepted: Some(s),
                })
        })
        .collect()
}

/// Encodes a bind_ack (with `port` as secondary address) or, for
/// `port == None`, an alter_context_resp.
pub fn encode_ack(
    bind: &Bind,
    results: &[ContextResult],
    assoc_group: u32,
    port: Option<u16>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    let (ty, fl) = match port {
        // bind_ack echoes the client's multiplexing bit.
        Some(_) => (
            ptype::BIND_ACK,
            flags::FIRST_LAST | (bind.header.flags & flags::CONC_MPX),
        ),
        None => (ptype::ALTER_CONTEXT_RESP, flags::FIRST_LAST),
    };
    Header::write(out, ty, fl, bind.header.call_id);
    let frag = |v: u16| v.min(pdu::MAX_PDU_LEN as u16);
    out.extend_from_slice(&frag(bind.max_xmit_frag).to_le_bytes());
    out.extend_from_slice(&frag(bind.max_recv_frag).to_le_bytes());
    out.extend_from_slice(&assoc_group.to_le_bytes());
    match port {
        Some(p) => {
            let s = format!("{p}\0");
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => out.extend_from_slice(&0u16.to_le_bytes()),
    }
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(&[u8::try_from(results.len()).unwrap_or(u8::MAX), 0, 0, 0]);
    for r in results {
        out.extend_from_slice(&r.result.to_le_bytes());
        out.extend_from_slice(&r.reason.to_le_bytes());
        match r.accepted {
            Some(s) => {
                out.extend_from_slice(s.guid().as_bytes());
                out.extend_from_slice(&s.version().to_le_bytes());
            }
            None => out.extend_from_slice(&[0; 20]),
        }
    }
    pdu::finish(out, start);
}

/// A context item a client proposes for the KMS interface v1.0: context
/// id, transfer syntax (wire bytes) and its version.
pub type Proposal = (u16, [u8; 16], u32);

/// Writes a client's bind or alter_context (`ty`) proposing `items`, one
/// transfer syntax each, with 5840-byte fragments and a new association.
pub fn encode_bind(ty: u8, pfc_flags: u8, call_id: u32, items: &[Proposal], out: &mut Vec<u8>) {
    let start = out.len();
    Header::write(out, ty, pfc_flags, call_id);
    out.extend_from_slice(&5840u16.to_le_bytes()); // max_xmit_frag
    out.extend_from_slice(&5840u16.to_le_bytes()); // max_recv_frag
    out.extend_from_slice(&0u32.to_le_bytes()); // assoc_group_id: new
    out.extend_from_slice(&[u8::try_from(items.len()).unwrap_or(u8::MAX), 0, 0, 0]);
    for (id, syntax, version) in items {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // one transfer syntax
        out.extend_from_slice(KMS_INTERFACE.as_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // interface 1.0
        out.extend_from_slice(syntax);
        out.extend_from_slice(&version.to_le_bytes());
    }
    pdu::finish(out, start);
}

/// One context result as a client reads it: result, reason, transfer
/// syntax (wire bytes), version.
pub type AckResult = (u16, u16, [u8; 16], u32);

/// Why a client refuses a bind_ack / alter_context_resp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("bind_nak")]
    Nak,
    #[error("unexpected PDU type {0}")]
    UnexpectedType(u8),
    #[error("call_id {got} does not echo {sent}")]
    CallId { got: u32, sent: u32 },
    #[error("association group 0")]
    NoAssociationGroup,
    #[error("secondary address is not a port number")]
    SecondaryAddress,
    #[error("{got} results for {sent} items")]
    ResultCount { got: usize, sent: usize },
    #[error("trailing bytes after the results")]
    Trailing,
    /// A context result the client cannot take: acceptance of a syntax it
    /// did not propose, a rejection naming a syntax, an unknown result.
    #[error("context {id}: unexpected result {result} (reason {reason})")]
    UnexpectedResult { id: u16, result: u16, reason: u16 },
    #[error("the host accepted neither NDR32 nor NDR64")]
    NoTransferSyntax,
    #[error(transparent)]
    Malformed(#[from] PduError),
}

/// Checks a bind_ack (`want` = BIND_ACK) or alter_context_resp the way a
/// client does (type, call_id echo, non-zero association group, the
/// secondary address a port, one result per item, nothing trailing) and
/// fills `results`.
pub fn check_ack(
    header: Header,
    pdu_bytes: &[u8],
    want: u8,
    call_id: u32,
    items: usize,
    results: &mut Vec<AckResult>,
) -> Result<(), AckError> {
    if header.ptype == ptype::BIND_NAK {
        return Err(AckError::Nak);
    }
    if header.ptype != want {
        return Err(AckError::UnexpectedType(header.ptype));
    }
    if header.call_id != call_id {
        return Err(AckError::CallId {
            got: header.call_id,
            sent: call_id,
        });
    }
    let body = pdu_bytes
        .get(pdu::HEADER_LEN..usize::from(header.frag_len))
        .ok_or_else(|| PduError::malformed("bind_ack", "shorter than its header says"))?;
    let mut r = Reader::new(body);
    let e = |err| PduError::malformed("bind_ack", err);
    r.skip(4).map_err(e)?; // max_xmit_frag, max_recv_frag
    if r.u32().map_err(e)? == 0 {
        return Err(AckError::NoAssociationGroup);
    }
    let sec_len = usize::from(r.u16().map_err(e)?);
    let sec = r.take(sec_len).map_err(e)?;
    if want == ptype::BIND_ACK {
        let (nul, digits) = sec.split_last().ok_or(AckError::SecondaryAddress)?;
        if *nul != 0 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(AckError::SecondaryAddress);
        }
    }
    // Padding to 4 counts from the PDU start; the body starts at 16.
    r.align(4).map_err(e)?;
    let n = usize::from(r.u8().map_err(e)?);
    r.skip(3).map_err(e)?;
    if n != items {
        return Err(AckError::ResultCount {
            got: n,
            sent: items,
        });
    }
    results.clear();
    for _ in 0..n {
        results.push((
            r.u16().map_err(e)?,
            r.u16().map_err(e)?,
            r.array().map_err(e)?,
            r.u32().map_err(e)?,
        ));
    }
    if r.remaining() != 0 {
        return Err(AckError::Trailing);
    }
    Ok(())
}
