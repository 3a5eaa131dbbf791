//! The client core against the captured vlmcs <-> vlmcsd exchanges
//! (tests/vectors): given the captured host replies, it must send the
//! captured client PDUs byte for byte (call ids aside: vlmcs reuses the
//! bind's call id for its first request, we count up from it) and accept
//! every captured response.

use crate::protocol::client::{AfterBind, Binding, Bound, Offer, ReplyError};
use crate::protocol::kms::{self, RequestBase, Version, Workstation};
use crate::protocol::rpc::pdu::{Header, MAX_PDU_LEN, flags, ptype};
use crate::protocol::rpc::request::{decode_call, decode_stub};
use crate::protocol::rpc::{BTFN_PREFIX, NDR64};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    crate::protocol::hex::decode(s).unwrap()
}

fn scenarios() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/index.json");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    index["scenarios"].as_array().unwrap().clone()
}

/// The offer behind a captured bind: which items it proposes, its flags.
fn offer_of(bind: &[u8]) -> Offer {
    let n = usize::from(bind[24]);
    let syntax = |i: usize| &bind[28 + 44 * i + 24..28 + 44 * i + 40];
    Offer {
        ndr64: (0..n).any(|i| syntax(i) == NDR64.as_bytes()),
        btfn: (0..n).any(|i| syntax(i)[..8] == BTFN_PREFIX),
        alter_context: true,
        multiplex: bind[3] & flags::CONC_MPX != 0,
    }
}

fn call_id(pdu: &[u8]) -> u32 {
    u32::from_le_bytes(pdu[12..16].try_into().unwrap())
}

fn with_call_id(pdu: &[u8], id: u32) -> Vec<u8> {
    let mut p = pdu.to_vec();
    p[12..16].copy_from_slice(&id.to_le_bytes());
    p
}

#[test]
fn the_core_replays_every_captured_client_stream() {
    let all = scenarios();
    assert_eq!(all.len(), 15);
    let mut verified = 0;
    for s in all {
        let name = s["name"].as_str().unwrap();
        let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
        for p in s["pdus"].as_array().unwrap() {
            let bytes = hex(p["hex"].as_str().unwrap());
            if p["dir"] == "client_to_server" {
                c2s.push(bytes);
            } else {
                s2c.push(bytes);
            }
        }
        let mut c2s = c2s.into_iter();
        let mut s2c = s2c.into_iter();

        // bind, bind_ack, and the alter_context when the core wants one.
        let bind = c2s.next().unwrap();
        let binding = Binding::new(offer_of(&bind), call_id(&bind));
        let mut out = Vec::new();
        binding.encode(&mut out);
        assert_eq!(out, bind, "{name}: bind");
        let mut bound: Bound = match binding.on_bind_ack(&s2c.next().unwrap()) {
            Ok(AfterBind::Bound(b)) => b,
            Ok(AfterBind::AlterContext(alter)) => {
                out.clear();
                alter.encode(&mut out);
                assert_eq!(out, c2s.next().unwrap(), "{name}: alter_context");
                alter.on_response(&s2c.next().unwrap()).unwrap()
            }
            Err(e) => panic!("{name}: {e}"),
        };

        // Each request re-encoded from its captured inputs, each reply
        // checked.
        for (req, reply) in c2s.zip(s2c) {
            let h = Header::peek(&req, MAX_PDU_LEN).unwrap().unwrap();
            assert_eq!(h.ptype, ptype::REQUEST, "{name}");
            let (first, rest) = bound.contexts();
            let ctx = if bound.requests_sent() == 0 {
                first
            } else {
                rest
            };
            let call = decode_call(h, &req).unwrap();
            assert_eq!(call.context_id, ctx.id, "{name}: context");
            let kms_bytes = decode_stub(call.stub, ctx.syntax).unwrap();
            out.clear();
            let pending = match kms::decode_request(kms_bytes) {
                Ok(r) => bound.request(&r.base, r.iv, &mut out),
                Err(_) => {
                    // A version the client core cannot build (the error
                    // scenarios): sent as captured.
                    let base = RequestBase {
                        version: Version::V6,
                        vm_info: 0,
                        license_status: 0,
                        binding_expiration: 0,
                        app_id: Default::default(),
                        sku_id: Default::default(),
                        kms_id: Default::default(),
                        cmid: Default::default(),
                        n_policy: 0,
                        client_time: 0,
                        previous_cmid: Default::default(),
                        workstation: Workstation::new("").unwrap(),
                    };
                    let (_, sent) = kms::encode_request(&base, [0; 16]);
                    bound.request_encoded(kms_bytes, sent, &mut out)
                }
            };
            assert_eq!(
                with_call_id(&out, call_id(&req)),
                req,
                "{name}: request {}",
                call_id(&req)
            );
            let reply = with_call_id(&reply, pending.call_id());
            match pending.on_reply(&reply) {
                Ok(x) => {
                    assert_eq!(x.syntax, ctx.syntax);
                    verified += 1;
                }
                Err(ReplyError::Hresult(0x8007_000D)) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
    assert_eq!(verified, 19, "every successful captured exchange");
}
