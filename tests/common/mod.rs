//! Shared test helpers: the captured vectors and small decoders.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

pub fn index() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

pub fn probes() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("vlmcsd_edge_case_probes.json"))
        .expect("probes json");
    serde_json::from_str(&text).expect("probes parse")
}

pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn hex16(s: &str) -> [u8; 16] {
    hex(s).try_into().expect("16 bytes")
}

pub fn read_bin(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).expect(name)
}

/// Splits a captured byte stream into PDUs by frag_length.
pub fn split_pdus(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let len = u16::from_le_bytes([stream[at + 8], stream[at + 9]]) as usize;
        out.push(stream[at..at + len].to_vec());
        at += len;
    }
    out
}

/// A "random" source that replays fixed bytes (the captured server randoms),
/// then zeros.
pub struct Replay(pub Vec<u8>, pub usize);

impl rand::TryRng for Replay {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for d in dst {
            *d = self.0.get(self.1).copied().unwrap_or(0);
            self.1 += 1;
        }
        Ok(())
    }
}
impl rand::TryCryptoRng for Replay {}
