//! Frames MS-RPC PDUs on a TCP stream by their frag_length, with a hard
//! upper bound checked before any buffer grows for the frame. Both sides
//! use it: the host reads requests with it, the client reads replies.

use crate::protocol::rpc::pdu::{self, HEADER_LEN, PduError};
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
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match pdu::pdu_len(src, self.max_len)? {
            None => {
                src.reserve(HEADER_LEN - src.len());
                Ok(None)
            }
            Some(len) if src.len() < len => {
                src.reserve(len - src.len());
                Ok(None)
            }
            Some(len) => Ok(Some(src.split_to(len).freeze())),
        }
    }
}

impl Encoder<&[u8]> for RpcPduCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(item);
        Ok(())
    }
}
