//! Frames MS-RPC PDUs on a TCP stream by their frag_length, with a hard
//! upper bound checked before any buffer grows for the frame. Both sides
//! use it: the host reads requests with it, the client reads replies.

use crate::protocol::rpc::pdu::{self, HEADER_LEN, Header, PduError};
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Codec errors: I/O, or a stream that cannot be framed (close it).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pdu(#[from] PduError),
}

/// One whole PDU as framed, with the header the framing parsed (so the
/// session does not parse it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    header: Header,
    bytes: Bytes,
}

impl Pdu {
    /// The common header, checked against the frame's bound.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The whole PDU (exactly frag_length bytes).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl std::ops::Deref for Pdu {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `Decoder` yielding whole PDUs; `Encoder` writing prepared PDUs.
#[derive(Debug, Clone, Copy)]
pub struct RpcPduCodec {
    max_len: usize,
}

impl RpcPduCodec {
    /// `max_len` bounds frag_length (and so the buffer a peer can make us hold).
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len: max_len.min(pdu::MAX_PDU_LEN),
        }
    }
}

impl Decoder for RpcPduCodec {
    type Item = Pdu;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Pdu>, CodecError> {
        let Some(header) = Header::peek(src, self.max_len)? else {
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        };
        let len = usize::from(header.frag_len);
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        Ok(Some(Pdu {
            header,
            bytes: src.split_to(len).freeze(),
        }))
    }
}

impl Encoder<&[u8]> for RpcPduCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(item);
        Ok(())
    }
}
