//! Inputs for the benches: the captured vlmcs <-> vlmcsd traffic in
//! tests/vectors, read once per bench binary.
#![allow(dead_code)]

use kmsd::protocol::kms::{Answer, Epid};
use serde_json::Value;
use std::path::PathBuf;

pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The client-to-server byte stream of a scenario.
pub fn c2s(scenario: &str) -> Vec<u8> {
    let path = vectors_dir().join(format!("{scenario}.c2s.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A stream split into PDUs by frag_length.
pub fn split_pdus(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let len = usize::from(u16::from_le_bytes([stream[at + 8], stream[at + 9]]));
        out.push(stream[at..at + len].to_vec());
        at += len;
    }
    out
}

/// The PDUs a scenario's client sent: for v4_win7, v5_win8 and v6_win10
/// these are bind, alter_context, request (NDR32), request (NDR64).
pub fn pdus(scenario: &str) -> Vec<Vec<u8>> {
    split_pdus(&c2s(scenario))
}

fn index() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The first KMS exchange of a scenario: (request bytes, response bytes).
pub fn kms_exchange(scenario: &str) -> (Vec<u8>, Vec<u8>) {
    let index = index();
    let s = index["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == scenario)
        .unwrap_or_else(|| panic!("no scenario {scenario}"));
    let x = &s["kms_exchanges"][0];
    (
        hex(x["kms_request_hex"].as_str().expect("request hex")),
        hex(x["kms_response_hex"].as_str().expect("response hex")),
    )
}

/// The scenario whose first request is KMS protocol `major`, NDR32 then NDR64.
pub fn scenario_for(major: u16) -> &'static str {
    match major {
        4 => "v4_win7",
        5 => "v5_win8",
        _ => "v6_win10",
    }
}

/// An ePID of the length kmsd generates.
pub fn epid() -> Epid {
    Epid::new("03612-00206-556-123727-03-1033-26100.0000-0012025").expect("valid ePID")
}

/// A host answer: count 50 (pool full), kmsd's default intervals.
pub fn answer(epid: &Epid) -> Answer<'_> {
    Answer {
        epid,
        hwid: [0x3A, 0x1C, 0x04, 0x96, 0x00, 0xB6, 0x00, 0x76],
        count: 50,
        activation_interval: 120,
        renewal_interval: 10080,
    }
}
