//! Arbitrary bytes through `RpcPduCodec` in arbitrary chunk sizes.
//!
//! Input layout: byte 0 = number of chunk sizes k (mod 32), the next k bytes
//! are the chunk sizes (cycled; 0 feeds an empty read), the rest is the TCP
//! stream.
//!
//! Invariants: no panic; every frame has exactly its frag_length bytes and
//! at most the bound; while the decoder waits for more it holds less than
//! the bound; the frames (and whether the stream ends in an error) are the
//! same as when the whole stream arrives in one read.
#![no_main]

use bytes::{Bytes, BytesMut};
use kmsd::codec::RpcPduCodec;
use kmsd::protocol::rpc::pdu::{DEFAULT_MAX_PDU_LEN, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const BOUND: usize = DEFAULT_MAX_PDU_LEN;

/// Frames decoded from `stream` fed in `chunks`, and whether it errored.
fn run(stream: &[u8], chunks: &[usize]) -> (Vec<Bytes>, bool) {
    let mut codec = RpcPduCodec::new(BOUND);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        let n = sizes.next().unwrap_or(usize::MAX).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let declared = usize::from(u16::from_le_bytes([frame[8], frame[9]]));
                    assert_eq!(frame.len(), declared, "frame is not frag_length bytes");
                    assert!(frame.len() <= BOUND, "frame over the bound");
                    assert!(frame.len() >= HEADER_LEN, "frame shorter than a header");
                    assert_eq!(usize::from(frame.header().frag_len), frame.len());
                    frames.push(frame.into_bytes());
                }
                Ok(None) => {
                    assert!(
                        buf.len() < BOUND,
                        "decoder waits with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
        if at == stream.len() {
            return (frames, false);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 32).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    let mut chunks: Vec<usize> = sizes.iter().map(|&s| usize::from(s)).collect();
    // With no sizes, or only empty reads, fall back to byte-at-a-time.
    if chunks.iter().all(|&c| c == 0) {
        chunks.push(1);
    }
    let whole = run(stream, &[usize::MAX]);
    let split = run(stream, &chunks);
    assert_eq!(
        split, whole,
        "chunked reads frame differently from one read"
    );
});
