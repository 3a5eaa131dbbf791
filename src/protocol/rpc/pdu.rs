//! The 16-byte common header of every connection-oriented PDU and the frame
//! boundary rule the stream codec uses.

use crate::protocol::wire::Reader;

pub const HEADER_LEN: usize = 16;
/// The largest PDU the host ever accepts, whatever the configuration says:
/// the fragment size Windows negotiates. KMS PDUs are under 320 bytes.
pub const MAX_PDU_LEN: usize = 5840;
/// Default bound on an incoming PDU: a KMS request is at most 300 bytes
/// (316 with an object UUID) and a Windows bind 160; 512 leaves room for a
/// bind of 11 context items and nothing a peer could use to make the host
/// buffer more.
pub const DEFAULT_MAX_PDU_LEN: usize = 512;

/// PDU types (PTYPE).
pub mod ptype {
    pub const REQUEST: u8 = 0;
    pub const RESPONSE: u8 = 2;
    pub const FAULT: u8 = 3;
    pub const BIND: u8 = 11;
    pub const BIND_ACK: u8 = 12;
    pub const BIND_NAK: u8 = 13;
    pub const ALTER_CONTEXT: u8 = 14;
    pub const ALTER_CONTEXT_RESP: u8 = 15;
}

/// pfc_flags bits.
pub mod flags {
    pub const FIRST_FRAG: u8 = 0x01;
    pub const LAST_FRAG: u8 = 0x02;
    pub const CONC_MPX: u8 = 0x10;
    pub const DID_NOT_EXECUTE: u8 = 0x20;
    pub const OBJECT_UUID: u8 = 0x80;
    pub const FIRST_LAST: u8 = FIRST_FRAG | LAST_FRAG;
}

/// Little-endian integers, ASCII characters, IEEE floats.
pub const DREP_LE: [u8; 4] = [0x10, 0, 0, 0];

/// A PDU the host cannot frame or will not talk to: the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("RPC version {major}.{minor} is not 5.0/5.1")]
    Version { major: u8, minor: u8 },
    #[error("data representation {0:02x?} is not little-endian ASCII")]
    Drep([u8; 4]),
    #[error("frag_length {len} outside {min}..={max}")]
    FragLength { len: usize, min: usize, max: usize },
    #[error("PDU type {0} is not one a KMS host accepts")]
    UnexpectedType(u8),
    #[error("fragmented PDU (flags {0:#04x}); KMS calls fit one fragment")]
    Fragmented(u8),
    #[error("{what} is malformed: {detail}")]
    Malformed { what: &'static str, detail: String },
}

impl PduError {
    pub(crate) fn malformed(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            detail: detail.to_string(),
        }
    }
}

/// The common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ptype: u8,
    pub flags: u8,
    pub frag_len: u16,
    pub auth_len: u16,
    pub call_id: u32,
}

impl Header {
    /// Decodes and checks the header at the start of `buf`: `Ok(None)` until
    /// 16 bytes are there. `max_len` bounds frag_length.
    pub fn peek(buf: &[u8], max_len: usize) -> Result<Option<Self>, PduError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(buf);
        let mut next = || r.u8().map_err(|e| PduError::malformed("header", e));
        let major = next()?;
        let minor = next()?;
        if major != 5 || minor > 1 {
            return Err(PduError::Version { major, minor });
        }
        let ptype = next()?;
        let flags = next()?;
        let mut r = Reader::new(buf.get(4..).unwrap_or(&[]));
        let e = |e| PduError::malformed("header", e);
        let drep: [u8; 4] = r.array().map_err(e)?;
        // Only the integer and character bits matter; the float format is unused.
        if drep[0] != DREP_LE[0] {
            return Err(PduError::Drep(drep));
        }
        let frag_len = r.u16().map_err(e)?;
        let auth_len = r.u16().map_err(e)?;
        let call_id = r.u32().map_err(e)?;
        let max = max_len.min(MAX_PDU_LEN);
        if !(HEADER_LEN..=max).contains(&usize::from(frag_len)) {
            return Err(PduError::FragLength {
                len: usize::from(frag_len),
                min: HEADER_LEN,
                max,
            });
        }
        Ok(Some(Self {
            ptype,
            flags,
            frag_len,
            auth_len,
            call_id,
        }))
    }

    /// Writes a server header with frag_length 0, patched by [`finish`].
    pub fn write(out: &mut Vec<u8>, ptype: u8, flags: u8, call_id: u32) {
        out.extend_from_slice(&[5, 0, ptype, flags]);
        out.extend_from_slice(&DREP_LE);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&call_id.to_le_bytes());
    }
}

/// Patches frag_length of the PDU that starts at `start` in `out`.
pub fn finish(out: &mut [u8], start: usize) {
    let len = out.len().saturating_sub(start);
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    if let Some(f) = out.get_mut(start + 8..start + 10) {
        f.copy_from_slice(&len.to_le_bytes());
    }
}

/// The length of the PDU at the start of `buf` once its header is there.
pub fn pdu_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, PduError> {
    Ok(Header::peek(buf, max_len)?.map(|h| usize::from(h.frag_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bounds_are_enforced() {
        let ok = [5, 0, 11, 3, 0x10, 0, 0, 0, 72, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(pdu_len(&ok, 1024), Ok(Some(72)));
        assert_eq!(pdu_len(&ok[..15], 1024), Ok(None));
        let mut small = ok;
        small[8] = 10;
        assert!(matches!(
            pdu_len(&small, 1024),
            Err(PduError::FragLength { len: 10, .. })
        ));
        let mut big = ok;
        big[8..10].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(
            pdu_len(&big, 512),
            Err(PduError::FragLength { len: 1000, .. })
        ));
        // The configured bound can never exceed the hard ceiling.
        big[8..10].copy_from_slice(&6000u16.to_le_bytes());
        assert!(pdu_len(&big, usize::MAX).is_err());
        let mut v4 = ok;
        v4[0] = 4;
        assert_eq!(
            pdu_len(&v4, 1024),
            Err(PduError::Version { major: 4, minor: 0 })
        );
        let mut be = ok;
        be[4] = 0;
        assert!(matches!(pdu_len(&be, 1024), Err(PduError::Drep(_))));
    }
}
