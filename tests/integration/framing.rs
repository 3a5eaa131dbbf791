//! The stream codec frames every captured PDU identically whether the bytes
//! arrive coalesced, split at any single point, or one byte at a time; and
//! refuses a bad header without buffering for it.

use crate::common;

use bytes::BytesMut;
use common::*;
use kmsd::codec::{CodecError, RpcPduCodec};
use kmsd::protocol::rpc::pdu::DEFAULT_MAX_PDU_LEN;
use tokio_util::codec::Decoder;

fn all_streams() -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 30, "15 scenarios, both directions");
    names
        .into_iter()
        .map(|n| (n.clone(), read_bin(&n)))
        .collect()
}

/// Feeds `chunks` in order, collecting every frame.
fn frames(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut codec = RpcPduCodec::new(DEFAULT_MAX_PDU_LEN);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f.to_vec());
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

#[test]
fn every_split_gives_the_same_frames() {
    for (name, stream) in all_streams() {
        let expected = split_pdus(&stream);
        assert_eq!(frames(&[&stream]), expected, "{name}: coalesced");
        for k in 0..=stream.len() {
            let (a, b) = stream.split_at(k);
            assert_eq!(frames(&[a, b]), expected, "{name}: split at {k}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(&bytes), expected, "{name}: byte by byte");
    }
}

#[test]
fn a_bad_header_is_an_error_before_any_buffering() {
    let mut codec = RpcPduCodec::new(DEFAULT_MAX_PDU_LEN);
    // frag_length 60000: refused on the header alone.
    let mut buf = BytesMut::from(&[5u8, 0, 0, 3, 0x10, 0, 0, 0, 0x60, 0xea, 0, 0, 1, 0, 0, 0][..]);
    let cap = buf.capacity();
    assert!(matches!(codec.decode(&mut buf), Err(CodecError::Pdu(_))));
    assert_eq!(buf.capacity(), cap, "nothing reserved for the bogus frame");
    // Partial header: wait, and reserve only the header's remainder.
    let mut buf = BytesMut::from(&[5u8, 0, 0][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() <= 64);
}
