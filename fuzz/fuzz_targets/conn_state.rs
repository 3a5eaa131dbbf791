//! A client byte stream through one host connection: PDUs (split by their
//! frag_length, leniently) handed one by one to `handle_pdu` on one
//! `Session`, with a fixed RNG and a decision that answers every verified
//! request with a fixed ePID and count 25.
//!
//! Input layout: byte 0 = configuration (bit 0 offer NDR64, bit 1 answer
//! BTFN, bit 2 refuse instead of answering), the rest is the stream (the
//! seeds are the captured client streams).
//!
//! Invariants: no panic; an error writes nothing and ends the connection;
//! every answer is one well-formed PDU (parses, frag_length = length,
//! auth_length 0, FIRST|LAST, call_id echoed) of the kind the outcome says;
//! an answered call's response verifies against the request the host
//! decoded, with the count, ePID and (v6) HwId it was given.
#![no_main]

use kmsd::protocol::kms::{Answer, Epid, SentRequest, Version, hresult, verify_response};
use kmsd::protocol::rpc::bind::BindPolicy;
use kmsd::protocol::rpc::pdu::{Header, ptype};
use kmsd::protocol::rpc::request::{Reply, decode_reply};
use kmsd::protocol::rpc::session::Session;
use kmsd::protocol::rpc::{Syntax, status};
use kmsd::protocol::server::{Outcome, Verdict, handle_pdu};
use kmsd_fuzz::{FIXED_EPID, check_host_pdu, fixed_rng, split_stream};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const HWID: [u8; 8] = [0x3a, 0x1c, 0x04, 0x96, 0x00, 0xb6, 0x00, 0x76];
const COUNT: u32 = 25;

static EPID: LazyLock<Epid> = LazyLock::new(|| match Epid::new(FIXED_EPID) {
    Ok(e) => e,
    Err(e) => panic!("fixed ePID refused: {e}"),
});

/// The host wrote a fault with status `want`; both syntaxes read it the same.
fn expect_fault(header: Header, out: &[u8], want: u32) {
    assert_eq!(
        header.ptype,
        ptype::FAULT,
        "fault outcome wrote another PTYPE"
    );
    for syntax in [Syntax::Ndr32, Syntax::Ndr64] {
        let reply = decode_reply(header, out, syntax);
        assert_eq!(reply, Ok(Reply::Fault(want)), "fault PDU");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, stream)) = data.split_first() else {
        return;
    };
    let policy = BindPolicy {
        ndr64: config & 1 != 0,
        btfn: config & 2 != 0,
    };
    let refuse = config & 4 != 0;
    let mut session = Session::new(policy, 1688, 0x1234);
    let mut rng = fixed_rng();
    let mut out = Vec::new();
    for pdu in split_stream(stream) {
        out.clear();
        let decide = |_: &_| {
            if refuse {
                Verdict::Refuse {
                    hresult: hresult::KMS_ID_MISMATCH,
                    why: "fuzz: refuse all",
                }
            } else {
                Verdict::Answer(Answer {
                    epid: &EPID,
                    hwid: HWID,
                    count: COUNT,
                    activation_interval: 120,
                    renewal_interval: 10080,
                })
            }
        };
        let outcome = match handle_pdu(&mut session, pdu, decide, &mut rng, &mut out) {
            Ok(o) => o,
            Err(_) => {
                assert!(out.is_empty(), "an error wrote {} bytes", out.len());
                // The connection closes: nothing after this is read.
                return;
            }
        };
        assert!(!out.is_empty(), "{outcome:?} wrote nothing");
        let call_id = u32::from_le_bytes([pdu[12], pdu[13], pdu[14], pdu[15]]);
        let header = check_host_pdu(&out, call_id);
        match outcome {
            Outcome::Negotiated { alter, .. } => {
                let want = if alter {
                    ptype::ALTER_CONTEXT_RESP
                } else {
                    ptype::BIND_ACK
                };
                assert_eq!(
                    header.ptype, want,
                    "negotiation answered with the wrong PTYPE"
                );
            }
            Outcome::Fault { status, .. } => expect_fault(header, &out, status),
            Outcome::BadStub { .. } => expect_fault(header, &out, status::BAD_STUB_DATA),
            Outcome::Invalid { syntax, error, .. } => {
                let reply = decode_reply(header, &out, syntax);
                assert_eq!(reply, Ok(Reply::Hresult(error.hresult())), "error stub");
            }
            Outcome::Refused {
                syntax, hresult, ..
            } => {
                assert!(refuse, "refused without being told to");
                let reply = decode_reply(header, &out, syntax);
                assert_eq!(reply, Ok(Reply::Hresult(hresult)), "refusal stub");
            }
            Outcome::Answered {
                syntax,
                request,
                count,
                ..
            } => {
                assert!(!refuse, "answered though told to refuse");
                assert_eq!(count, COUNT);
                let kms = match decode_reply(header, &out, syntax) {
                    Ok(Reply::Kms(k)) => k,
                    other => panic!("answer does not decode as a KMS reply: {other:?}"),
                };
                let sent = SentRequest {
                    base: request.base,
                    iv: request.iv,
                    decrypted_iv: request.decrypted_iv,
                };
                let v = match verify_response(&sent, kms) {
                    Ok(v) => v,
                    Err(e) => panic!("host response does not verify: {e}"),
                };
                assert_eq!(v.count, COUNT);
                assert_eq!(v.epid, FIXED_EPID);
                assert_eq!(v.cmid, request.base.cmid);
                assert_eq!(v.client_time, request.base.client_time);
                assert_eq!(v.version, request.base.version);
                let want_hwid = (request.base.version == Version::V6).then_some(HWID);
                assert_eq!(v.hwid, want_hwid);
            }
        }
    }
});
