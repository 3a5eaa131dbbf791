//! Arbitrary bytes as one RPC PDU: `pdu_len`, `Header::peek`, then the body
//! decoder its PTYPE selects (bind / alter_context, request and its stub in
//! both syntaxes, response / fault as a client reads them).
//!
//! Invariants: nothing panics; `pdu_len` never returns more than
//! `MAX_PDU_LEN` (nor the configured bound, nor less than a header) and
//! agrees with `Header::peek`; a decoded bind yields one negotiation result
//! per item and an ack that is itself a well-formed PDU; a decoded stub lies
//! inside the stub.
#![no_main]

use kmsd::protocol::rpc::Syntax;
use kmsd::protocol::rpc::bind::{Bind, BindPolicy, encode_ack, negotiate};
use kmsd::protocol::rpc::pdu::{
    DEFAULT_MAX_PDU_LEN, HEADER_LEN, Header, MAX_PDU_LEN, pdu_len, ptype,
};
use kmsd::protocol::rpc::request::{decode_call, decode_reply, decode_stub};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for bound in [0, HEADER_LEN, DEFAULT_MAX_PDU_LEN, MAX_PDU_LEN, usize::MAX] {
        let len = pdu_len(data, bound);
        if let Ok(Some(n)) = len {
            assert!(n <= MAX_PDU_LEN, "pdu_len {n} > MAX_PDU_LEN");
            assert!(n <= bound, "pdu_len {n} > bound {bound}");
            assert!(n >= HEADER_LEN, "pdu_len {n} < header");
        }
        if data.len() < HEADER_LEN {
            assert_eq!(len, Ok(None), "short input must ask for more");
        }
        let peeked = Header::peek(data, bound).map(|h| h.map(|h| usize::from(h.frag_len)));
        assert_eq!(peeked, len, "pdu_len and Header::peek disagree");
    }

    let Ok(Some(header)) = Header::peek(data, MAX_PDU_LEN) else {
        return;
    };
    // Decoders get the PDU as framed (or the short buffer, which they must
    // refuse rather than read past).
    let pdu = data.get(..usize::from(header.frag_len)).unwrap_or(data);
    match header.ptype {
        ptype::BIND | ptype::ALTER_CONTEXT => {
            let Ok(bind) = Bind::decode(header, pdu) else {
                return;
            };
            assert!(
                bind.items.len() <= 255,
                "more items than n_context_elem can say"
            );
            for (ndr64, btfn) in [(true, true), (true, false), (false, true), (false, false)] {
                let results = negotiate(&bind.items, BindPolicy { ndr64, btfn });
                assert_eq!(results.len(), bind.items.len(), "one result per item");
                for r in &results {
                    assert!(
                        r.accepted.is_none() || r.result == 0,
                        "accepted syntax on a non-acceptance: {r:?}"
                    );
                    assert!(
                        ndr64 || r.accepted != Some(Syntax::Ndr64),
                        "NDR64 accepted though the policy disables it"
                    );
                }
                let mut out = Vec::new();
                let port = (header.ptype == ptype::BIND).then_some(1688);
                encode_ack(&bind, &results, 7, port, &mut out);
                assert_eq!(
                    usize::from(u16::from_le_bytes([out[8], out[9]])),
                    out.len(),
                    "ack frag_length differs from its length"
                );
            }
        }
        ptype::REQUEST => {
            let Ok(call) = decode_call(header, pdu) else {
                return;
            };
            assert_eq!(call.call_id, header.call_id);
            for syntax in [Syntax::Ndr32, Syntax::Ndr64] {
                if let Ok(kms) = decode_stub(call.stub, syntax) {
                    assert!(kms.len() <= call.stub.len(), "KMS bytes outside the stub");
                }
            }
        }
        ptype::RESPONSE | ptype::FAULT => {
            for syntax in [Syntax::Ndr32, Syntax::Ndr64] {
                let _ = decode_reply(header, pdu, syntax);
            }
        }
        _ => {}
    }
});
