//! request, response and fault PDUs, and the NDR32/NDR64 stubs of
//! `RequestActivation` (SPEC §2.5–2.7).

use super::Syntax;
use super::pdu::{self, Header, PduError, flags, ptype};
use crate::protocol::wire::Reader;

/// Referent ID of the non-NULL `*response` pointer.
const REFERENT: u32 = 0x0002_0000;

/// A request PDU's call data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    pub call_id: u32,
    pub context_id: u16,
    pub opnum: u16,
    /// Stub data (after the object UUID, if any, and before any auth trailer).
    pub stub: &'a [u8],
}

/// Decodes a request PDU (the header already checked).
pub fn decode_call(header: Header, pdu_bytes: &[u8]) -> Result<Call<'_>, PduError> {
    let e = |err| PduError::malformed("request", err);
    let end = usize::from(header.frag_len);
    let body = pdu_bytes
        .get(pdu::HEADER_LEN..end)
        .ok_or_else(|| PduError::malformed("request", "shorter than its header says"))?;
    let mut r = Reader::new(body);
    let _alloc_hint = r.u32().map_err(e)?;
    let context_id = r.u16().map_err(e)?;
    let opnum = r.u16().map_err(e)?;
    if header.flags & flags::OBJECT_UUID != 0 {
        r.skip(16).map_err(e)?;
    }
    Ok(Call {
        call_id: header.call_id,
        context_id,
        opnum,
        stub: r.rest(),
    })
}

/// Why a stub could not be unmarshalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StubError {
    #[error("stub truncated")]
    Truncated,
    #[error("requestSize {size} differs from the array's conformance {count}")]
    SizeMismatch { size: u64, count: u64 },
    #[error("array of {count} bytes exceeds the {available} in the stub")]
    Overrun { count: u64, available: usize },
}

/// The KMS request bytes inside a `RequestActivation` stub.
pub fn decode_stub(stub: &[u8], syntax: Syntax) -> Result<&[u8], StubError> {
    let mut r = Reader::new(stub);
    let t = |_| StubError::Truncated;
    let (size, count) = match syntax {
        Syntax::Ndr32 => (
            u64::from(r.u32().map_err(t)?),
            u64::from(r.u32().map_err(t)?),
        ),
        Syntax::Ndr64 => {
            // int32 then 4 pad bytes, then the 64-bit conformance.
            let size = u64::from(r.u32().map_err(t)?);
            r.skip(4).map_err(t)?;
            (size, r.u64().map_err(t)?)
        }
    };
    if size != count {
        return Err(StubError::SizeMismatch { size, count });
    }
    let available = r.remaining();
    let n = usize::try_from(count)
        .ok()
        .filter(|&n| n <= available)
        .ok_or(StubError::Overrun { count, available })?;
    r.take(n).map_err(t)
}

/// Writes a response PDU whose success stub carries the KMS bytes that
/// `write_kms` appends; lengths and alignment are fixed up after it runs.
pub fn encode_response(
    call_id: u32,
    context_id: u16,
    syntax: Syntax,
    out: &mut Vec<u8>,
    write_kms: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    Header::write(out, ptype::RESPONSE, flags::FIRST_LAST, call_id);
    out.extend_from_slice(&[0; 4]); // alloc_hint, patched below
    out.extend_from_slice(&context_id.to_le_bytes());
    out.extend_from_slice(&[0, 0]); // cancel_count, reserved
    let stub = out.len();
    let size_at;
    let count_at;
    match syntax {
        Syntax::Ndr32 => {
            size_at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&REFERENT.to_le_bytes());
            count_at = out.len();
            out.extend_from_slice(&[0; 4]);
        }
        Syntax::Ndr64 => {
            size_at = out.len();
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&u64::from(REFERENT).to_le_bytes());
            count_at = out.len();
            out.extend_from_slice(&[0; 8]);
        }
    }
    let data = out.len();
    write_kms(out);
    let n = out.len() - data;
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    patch(out, size_at, &n32.to_le_bytes());
    match syntax {
        Syntax::Ndr32 => patch(out, count_at, &n32.to_le_bytes()),
        Syntax::Ndr64 => patch(out, count_at, &(n as u64).to_le_bytes()),
    }
    // NDR aligns the return value to 4 bytes from the stub start.
    while !(out.len() - stub).is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    finish_response(out, start, stub);
}

/// Writes a response PDU whose stub is the NULL `*response` and `hresult`.
pub fn encode_error(
    call_id: u32,
    context_id: u16,
    syntax: Syntax,
    hresult: u32,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    Header::write(out, ptype::RESPONSE, flags::FIRST_LAST, call_id);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&context_id.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    let stub = out.len();
    match syntax {
        Syntax::Ndr32 => out.extend_from_slice(&[0; 8]),
        Syntax::Ndr64 => out.extend_from_slice(&[0; 16]),
    }
    out.extend_from_slice(&hresult.to_le_bytes());
    finish_response(out, start, stub);
}

fn finish_response(out: &mut [u8], start: usize, stub: usize) {
    let stub_len = u32::try_from(out.len() - stub).unwrap_or(u32::MAX);
    patch(out, start + 16, &stub_len.to_le_bytes());
    pdu::finish(out, start);
}

fn patch(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes a fault PDU for `call_id` (flags FIRST|LAST|DID_NOT_EXECUTE).
pub fn encode_fault(call_id: u32, context_id: u16, status: u32, out: &mut Vec<u8>) {
    let start = out.len();
    Header::write(
        out,
        ptype::FAULT,
        flags::FIRST_LAST | flags::DID_NOT_EXECUTE,
        call_id,
    );
    out.extend_from_slice(&32u32.to_le_bytes()); // alloc_hint, as Windows hosts send
    out.extend_from_slice(&context_id.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    pdu::finish(out, start);
}

/// A decoded server answer to a call, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The KMS response bytes.
    Kms(&'a [u8]),
    /// The host answered an HRESULT instead of a response.
    Hresult(u32),
    /// An RPC fault with its status.
    Fault(u32),
}

/// Decodes a response or fault PDU for a client (header checked by the caller).
pub fn decode_reply(
    header: Header,
    pdu_bytes: &[u8],
    syntax: Syntax,
) -> Result<Reply<'_>, PduError> {
    let e = |err| PduError::malformed("response", err);
    let body = pdu_bytes
        .get(pdu::HEADER_LEN..usize::from(header.frag_len))
        .ok_or_else(|| PduError::malformed("response", "shorter than its header says"))?;
    let mut r = Reader::new(body);
    let alloc_hint = r.u32().map_err(e)?;
    let _ctx = r.u16().map_err(e)?;
    let cancel = r.u8().map_err(e)?;
    r.skip(1).map_err(e)?;
    if header.ptype == ptype::FAULT {
        return Ok(Reply::Fault(r.u32().map_err(e)?));
    }
    if header.ptype != ptype::RESPONSE {
        return Err(PduError::UnexpectedType(header.ptype));
    }
    if cancel != 0 {
        return Err(PduError::malformed("response", "non-zero cancel_count"));
    }
    let stub = r.rest();
    if alloc_hint as usize != stub.len() {
        return Err(PduError::malformed(
            "response",
            format!("alloc_hint {alloc_hint} but stub is {} bytes", stub.len()),
        ));
    }
    let mut s = Reader::new(stub);
    let wide = syntax == Syntax::Ndr64;
    let word = |s: &mut Reader<'_>| -> Result<u64, PduError> {
        if wide {
            s.u64().map_err(e)
        } else {
            s.u32().map(u64::from).map_err(e)
        }
    };
    let size = word(&mut s)?;
    let referent = word(&mut s)?;
    if referent == 0 {
        let hr = s.u32().map_err(e)?;
        if s.remaining() != 0 {
            return Err(PduError::malformed(
                "response",
                "trailing bytes after the HRESULT",
            ));
        }
        return Ok(Reply::Hresult(hr));
    }
    let count = word(&mut s)?;
    if size != count || count > 4096 {
        return Err(PduError::malformed(
            "response",
            format!("responseSize {size} vs conformance {count}"),
        ));
    }
    let kms = s.take(count as usize).map_err(e)?;
    s.align(4).map_err(e)?;
    let hr = s.u32().map_err(e)?;
    if s.remaining() != 0 {
        return Err(PduError::malformed(
            "response",
            "trailing bytes after the return value",
        ));
    }
    if hr != 0 {
        return Ok(Reply::Hresult(hr));
    }
    Ok(Reply::Kms(kms))
}

/// Writes a request PDU carrying `kms` in `syntax` (the client side).
pub fn encode_request(
    call_id: u32,
    context_id: u16,
    syntax: Syntax,
    kms: &[u8],
    out: &mut Vec<u8>,
) {
    encode_call(call_id, context_id, 0, syntax, kms, out);
}

/// [`encode_request`] for operation `opnum` (the KMS interface has only
/// 0; `kmsd probe` sends another to see the host's fault).
pub fn encode_call(
    call_id: u32,
    context_id: u16,
    opnum: u16,
    syntax: Syntax,
    kms: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    Header::write(out, ptype::REQUEST, flags::FIRST_LAST, call_id);
    let n = kms.len();
    let stub_len = n + if syntax == Syntax::Ndr64 { 16 } else { 8 };
    out.extend_from_slice(&(stub_len as u32).to_le_bytes());
    out.extend_from_slice(&context_id.to_le_bytes());
    out.extend_from_slice(&opnum.to_le_bytes());
    match syntax {
        Syntax::Ndr32 => {
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        Syntax::Ndr64 => {
            out.extend_from_slice(&(n as u64).to_le_bytes());
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
    }
    out.extend_from_slice(kms);
    pdu::finish(out, start);
}
