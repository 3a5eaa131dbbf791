//! Property tests: the invariants the fuzz targets check (fuzz/README.md),
//! run on every `cargo test` with proptest's default case count.
//!
//! * Decoders of peer bytes never panic, whatever they are given.
//! * Round trips: request base, KMS response, RPC request stub.
//! * Framing: any chunking of a stream gives the frames of one read, and a
//!   stream that cannot be framed errors before the bound is buffered.
//! * The count pool agrees with a 20-line reference model.
//!
//! Crashes found by fuzzing are pinned at the end as regression tests.

use crate::common;

use bytes::{Bytes, BytesMut};
use common::{Replay, read_bin, split_pdus};
use kmsd::codec::RpcPduCodec;
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::request::WORKSTATION_LEN;
use kmsd::protocol::kms::{
    self, Answer, Epid, RequestBase, ResponseRandom, SentRequest, Version, Workstation,
    decode_request, encode_response, verify_response,
};
use kmsd::protocol::rpc::bind::{Bind, BindPolicy, negotiate};
use kmsd::protocol::rpc::pdu::{
    DEFAULT_MAX_PDU_LEN, HEADER_LEN, Header, MAX_PDU_LEN, pdu_len, ptype,
};
use kmsd::protocol::rpc::request::{self as rpc, Reply, decode_call, decode_reply, decode_stub};
use kmsd::protocol::rpc::session::Session;
use kmsd::protocol::rpc::{KMS_INTERFACE, Syntax};
use kmsd::protocol::server::{Outcome, Verdict, handle_pdu};
use kmsd::store::window::{TTL_MS, Window};
use proptest::prelude::*;
use std::collections::BTreeMap;
use tokio_util::codec::Decoder;

const EPID: &str = "03612-00206-556-123727-03-1033-17763.0000-2972018";
const HWID: [u8; 8] = [0x3a, 0x1c, 0x04, 0x96, 0x00, 0xb6, 0x00, 0x76];
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Every captured scenario's client-to-server stream.
const CAPTURES: [&str; 15] = [
    "err_version41",
    "err_version7",
    "v4_evenLengthEpid",
    "v4_office2010",
    "v4_win7",
    "v5_office2013",
    "v5_win8",
    "v6_clientNoMultiplex",
    "v6_clientNoNDR64",
    "v6_clientNoNDR64NoBTFN",
    "v6_office2019",
    "v6_server2019",
    "v6_serverNoBTFN",
    "v6_serverNoNDR64",
    "v6_win10",
];

fn c2s(name: &str) -> Vec<u8> {
    read_bin(&format!("{name}.c2s.bin"))
}

// ---------------------------------------------------------------- strategies

fn any_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn syntaxes() -> impl Strategy<Value = Syntax> {
    prop_oneof![Just(Syntax::Ndr32), Just(Syntax::Ndr64)]
}

fn versions() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V4), Just(Version::V5), Just(Version::V6)]
}

fn guids() -> impl Strategy<Value = Guid> {
    any::<[u8; 16]>().prop_map(Guid)
}

/// A name of up to 63 UTF-16 code units without NUL, as a client sends it.
fn workstation_names() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=63).prop_map(|chars| {
        let mut name = String::new();
        for c in chars.into_iter().filter(|&c| c != '\0') {
            if name.encode_utf16().count() + c.len_utf16() > 63 {
                break;
            }
            name.push(c);
        }
        name
    })
}

/// A workstation field: a valid name, or 128 arbitrary bytes as a peer may
/// send them (garbage after the NUL, no NUL at all).
fn workstations() -> impl Strategy<Value = Workstation> {
    prop_oneof![
        workstation_names().prop_map(|n| Workstation::new(&n).expect("name fits 63 units")),
        prop::collection::vec(any::<u8>(), WORKSTATION_LEN)
            .prop_map(|v| Workstation(v.try_into().expect("128 bytes"))),
    ]
}

/// Any request base of any version.
fn request_bases() -> impl Strategy<Value = RequestBase> {
    (
        (versions(), any::<u32>(), any::<u32>(), any::<u32>()),
        (guids(), guids(), guids(), guids()),
        (any::<u32>(), any::<u64>(), guids(), workstations()),
    )
        .prop_map(
            |(
                (version, vm_info, license_status, binding_expiration),
                (app_id, sku_id, kms_id, cmid),
                (n_policy, client_time, previous_cmid, workstation),
            )| RequestBase {
                version,
                vm_info,
                license_status,
                binding_expiration,
                app_id,
                sku_id,
                kms_id,
                cmid,
                n_policy,
                client_time,
                previous_cmid,
                workstation,
            },
        )
}

/// ePID texts a host may send: 1 to 63 printable ASCII characters.
fn epid_texts() -> impl Strategy<Value = String> {
    "[!-~]{1,63}"
}

/// (ePID, HwId, count, activation interval, renewal interval).
fn answer_fields() -> impl Strategy<Value = (String, [u8; 8], u32, u32, u32)> {
    (
        epid_texts(),
        any::<[u8; 8]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
}

fn response_randoms() -> impl Strategy<Value = ResponseRandom> {
    (any::<[u8; 16]>(), any::<[u8; 16]>())
        .prop_map(|(salt, iv_seed)| ResponseRandom { salt, iv_seed })
}

/// A PDU whose header passes `Header::peek` (version 5.0, little-endian,
/// frag_length = its length) with an arbitrary type, flags and body, so the
/// body decoders are reached.
fn pdu_shaped_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(ptype::BIND),
            Just(ptype::ALTER_CONTEXT),
            Just(ptype::REQUEST),
            Just(ptype::RESPONSE),
            Just(ptype::FAULT),
            any::<u8>(),
        ],
        prop_oneof![Just(0x03u8), Just(0x13), Just(0x83), any::<u8>()],
        prop_oneof![Just(0u16), any::<u16>()],
        any::<u32>(),
        any_bytes(400),
    )
        .prop_map(|(ty, flags, auth, call_id, body)| {
            let mut pdu = Vec::with_capacity(HEADER_LEN + body.len());
            Header::write(&mut pdu, ty, flags, call_id);
            pdu[10..12].copy_from_slice(&auth.to_le_bytes());
            pdu.extend_from_slice(&body);
            let len = pdu.len() as u16;
            pdu[8..10].copy_from_slice(&len.to_le_bytes());
            pdu
        })
}

/// Raw bytes or a PDU-shaped buffer.
fn peer_pdus() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![any_bytes(600), pdu_shaped_bytes()]
}

/// A request PDU carrying a well-formed KMS request (any version and
/// fields) on context 0, 1 or 2, in either syntax, sometimes with one byte
/// of the KMS message flipped.
fn activation_pdus() -> impl Strategy<Value = Vec<u8>> {
    (
        request_bases(),
        any::<[u8; 16]>(),
        (syntaxes(), 0u16..3, any::<u32>()),
        prop::option::weighted(0.25, (any::<prop::sample::Index>(), 1u8..)),
    )
        .prop_map(|(base, iv, (syntax, ctx, call_id), flip)| {
            let (mut kms_bytes, _) = kms::encode_request(&base, iv);
            if let Some((at, x)) = flip {
                let at = at.index(kms_bytes.len());
                kms_bytes[at] ^= x;
            }
            let mut pdu = Vec::new();
            rpc::encode_request(call_id, ctx, syntax, &kms_bytes, &mut pdu);
            pdu
        })
}

/// A bind that names the KMS interface with the given transfer syntaxes,
/// one item per syntax (context ids 0, 1, ...).
fn bind_pdu(call_id: u32, syntaxes: &[Syntax]) -> Vec<u8> {
    let mut pdu = Vec::new();
    Header::write(&mut pdu, ptype::BIND, 0x13, call_id);
    pdu.extend_from_slice(&5840u16.to_le_bytes());
    pdu.extend_from_slice(&5840u16.to_le_bytes());
    pdu.extend_from_slice(&0u32.to_le_bytes());
    pdu.extend_from_slice(&[syntaxes.len() as u8, 0, 0, 0]);
    for (id, s) in syntaxes.iter().enumerate() {
        pdu.extend_from_slice(&(id as u16).to_le_bytes());
        pdu.extend_from_slice(&[1, 0]);
        pdu.extend_from_slice(KMS_INTERFACE.as_bytes());
        pdu.extend_from_slice(&1u32.to_le_bytes());
        pdu.extend_from_slice(s.guid().as_bytes());
        pdu.extend_from_slice(&s.version().to_le_bytes());
    }
    let len = pdu.len() as u16;
    pdu[8..10].copy_from_slice(&len.to_le_bytes());
    pdu
}

/// Valid PDUs of 16 to 512 bytes (any type, any body), concatenated.
fn valid_pdu_streams() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
    prop::collection::vec(
        (
            any::<u8>(),
            any::<u32>(),
            any_bytes(DEFAULT_MAX_PDU_LEN - HEADER_LEN + 1),
        ),
        0..8,
    )
    .prop_map(|pdus| {
        let pdus: Vec<Vec<u8>> = pdus
            .into_iter()
            .map(|(ty, call_id, body)| {
                let mut pdu = Vec::new();
                Header::write(&mut pdu, ty, 0x03, call_id);
                pdu.extend_from_slice(&body);
                let len = pdu.len() as u16;
                pdu[8..10].copy_from_slice(&len.to_le_bytes());
                pdu
            })
            .collect();
        (pdus.concat(), pdus)
    })
}

/// Chunk sizes for a stream: mostly small reads, some large, some empty.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![4 => 1usize..20, 2 => 0usize..600, 1 => Just(0)],
        1..40,
    )
}

/// A 16-byte header `Header::peek` refuses (wrong version, big-endian,
/// frag_length under 16 or over the bound), behind arbitrary call data.
fn garbage_headers() -> impl Strategy<Value = Vec<u8>> {
    (0u8..4, any::<[u8; 16]>(), any::<u16>()).prop_map(|(kind, mut h, n)| {
        h[0] = 5;
        h[1] = 0;
        h[4] = 0x10;
        let bad_len = match kind {
            0 => n % 16,
            1 => (DEFAULT_MAX_PDU_LEN as u16 + 1).saturating_add(n % 60_000),
            _ => 300,
        };
        h[8..10].copy_from_slice(&bad_len.to_le_bytes());
        match kind {
            2 => h[0] = if n % 2 == 0 { 4 } else { 6 },
            3 => h[4] = 0,
            _ => {}
        }
        h.to_vec()
    })
}

/// (cmid index, forward step in ms, n_policy) events for the count pool.
fn pool_events() -> impl Strategy<Value = Vec<(u8, i64, u32)>> {
    let cmid = prop_oneof![0u8..6, 0u8..64];
    let step = prop_oneof![
        Just(0i64),
        (0i64..=10).prop_map(|d| d * DAY_MS),
        0i64..=10 * DAY_MS,
        (0i64..=10).prop_map(|d| d * DAY_MS + 1),
        (1i64..=10).prop_map(|d| d * DAY_MS - 1),
    ];
    let n_policy = prop_oneof![Just(1u32), Just(5), Just(25)];
    prop::collection::vec((cmid, step, n_policy), 1..150)
}

// ----------------------------------------------------------------- helpers

fn sent(req: &kms::Request) -> SentRequest {
    SentRequest {
        base: req.base,
        iv: req.iv,
        decrypted_iv: req.decrypted_iv,
    }
}

/// Frames and whether framing failed, feeding `stream` in `chunks` (cycled).
fn frame(stream: &[u8], chunks: &[usize]) -> Result<(Vec<Bytes>, bool), TestCaseError> {
    let mut codec = RpcPduCodec::new(DEFAULT_MAX_PDU_LEN);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    // Only empty reads would never finish: read a byte at a time then.
    let chunks = if chunks.iter().all(|&c| c == 0) {
        &[1][..]
    } else {
        chunks
    };
    let mut sizes = chunks.iter().copied().cycle();
    let mut at = 0;
    loop {
        let n = sizes.next().unwrap_or(usize::MAX).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    let declared = usize::from(u16::from_le_bytes([f[8], f[9]]));
                    prop_assert_eq!(f.len(), declared, "frame is not frag_length bytes");
                    prop_assert!(f.len() <= DEFAULT_MAX_PDU_LEN, "frame over the bound");
                    prop_assert_eq!(f.header().frag_len as usize, f.len());
                    frames.push(f.into_bytes());
                }
                Ok(None) => {
                    prop_assert!(
                        buf.len() < DEFAULT_MAX_PDU_LEN,
                        "decoder waits holding {} bytes",
                        buf.len()
                    );
                    break;
                }
                Err(_) => return Ok((frames, true)),
            }
        }
        if at == stream.len() {
            return Ok((frames, false));
        }
    }
}

// ---------------------------------------------------------------- no panics

proptest! {
    #[test]
    fn rpc_decoders_never_panic(bytes in peer_pdus()) {
        for bound in [0, DEFAULT_MAX_PDU_LEN, MAX_PDU_LEN, usize::MAX] {
            if let Ok(Some(n)) = pdu_len(&bytes, bound) {
                prop_assert!(n <= MAX_PDU_LEN && n <= bound && n >= HEADER_LEN,
                    "pdu_len {} with bound {}", n, bound);
            }
        }
        for syntax in [Syntax::Ndr32, Syntax::Ndr64] {
            if let Ok(kms) = decode_stub(&bytes, syntax) {
                prop_assert!(kms.len() <= bytes.len(), "stub data outside the stub");
            }
        }
        let Ok(Some(header)) = Header::peek(&bytes, MAX_PDU_LEN) else {
            return Ok(());
        };
        if let Ok(bind) = Bind::decode(header, &bytes) {
            for policy in [BindPolicy::default(), BindPolicy { ndr64: false, btfn: false }] {
                prop_assert_eq!(negotiate(&bind.items, policy).len(), bind.items.len(),
                    "one result per context item");
            }
        }
        if let Ok(call) = decode_call(header, &bytes) {
            for syntax in [Syntax::Ndr32, Syntax::Ndr64] {
                let _ = decode_stub(call.stub, syntax);
            }
        }
        for syntax in [Syntax::Ndr32, Syntax::Ndr64] {
            let _ = decode_reply(header, &bytes, syntax);
        }
        // A short buffer behind a longer frag_length is refused, not over-read.
        let short = &bytes[..bytes.len().min(usize::from(header.frag_len)).saturating_sub(1)];
        let _ = Bind::decode(header, short);
        let _ = decode_call(header, short);
        let _ = decode_reply(header, short, Syntax::Ndr64);
    }

    #[test]
    fn kms_decoders_never_panic(
        bytes in any_bytes(400),
        version in versions(),
        base in request_bases(),
        iv in any::<[u8; 16]>(),
    ) {
        let _ = decode_request(&bytes);
        // Behind a valid version the decoders get past the first check.
        let mut prefixed = version.wire().to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = decode_request(&prefixed);
        let (_, sent) = kms::encode_request(&RequestBase { version, ..base }, iv);
        prop_assert!(verify_response(&sent, &bytes).is_err(), "random bytes verified");
        let _ = verify_response(&sent, &prefixed);
    }

    #[test]
    fn session_never_panics_on_peer_pdus(
        pdus in prop::collection::vec(prop_oneof![peer_pdus(), activation_pdus()], 1..6),
        bind_first in any::<bool>(),
        ndr64 in any::<bool>(),
        btfn in any::<bool>(),
    ) {
        let mut session = Session::new(BindPolicy { ndr64, btfn }, 1688, 1);
        let mut rng = Replay(Vec::new(), 0);
        let epid = Epid::new(EPID).expect("ePID");
        let bind = bind_pdu(2, &[Syntax::Ndr32, Syntax::Ndr64]);
        let all = bind_first.then_some(&bind).into_iter().chain(pdus.iter());
        for pdu in all {
            let mut out = Vec::new();
            let decide = |_: &kms::Request| Verdict::Answer(Answer {
                epid: &epid,
                hwid: HWID,
                count: 25,
                activation_interval: 120,
                renewal_interval: 10080,
            });
            match handle_pdu(&mut session, pdu, decide, &mut rng, &mut out) {
                Ok(outcome) => {
                    let h = Header::peek(&out, MAX_PDU_LEN);
                    prop_assert!(matches!(h, Ok(Some(_))), "answer does not parse: {:?}", h);
                    let h = h.unwrap().unwrap();
                    prop_assert_eq!(usize::from(h.frag_len), out.len(), "frag_length");
                    prop_assert_eq!(h.auth_len, 0, "auth_length");
                    if let Outcome::Answered { syntax, request, .. } = outcome {
                        let reply = decode_reply(h, &out, syntax);
                        let Ok(Reply::Kms(k)) = reply else {
                            return Err(TestCaseError::fail(format!("answer: {reply:?}")));
                        };
                        let v = verify_response(&sent(&request), k);
                        prop_assert!(v.is_ok(), "answer does not verify: {:?}", v);
                        let v = v.unwrap();
                        prop_assert_eq!((v.count, v.epid.as_str()), (25, EPID));
                        prop_assert_eq!(v.cmid, request.base.cmid);
                    }
                }
                Err(_) => {
                    prop_assert!(out.is_empty(), "an error still wrote {} bytes", out.len());
                    break;
                }
            }
        }
        // Session::handle alone, on the raw inputs.
        let mut session = Session::new(BindPolicy::default(), 1688, 1);
        for pdu in &pdus {
            let mut out = Vec::new();
            let _ = session.handle(pdu, &mut out);
        }
    }
}

// -------------------------------------------------------------- round trips

proptest! {
    #[test]
    fn request_base_round_trips(base in request_bases(), iv in any::<[u8; 16]>()) {
        let (bytes, sent) = kms::encode_request(&base, iv);
        prop_assert_eq!(bytes.len(), base.version.request_len(), "request length");
        let req = decode_request(&bytes);
        prop_assert!(req.is_ok(), "host refused a client request: {:?}", req);
        let req = req.unwrap();
        prop_assert_eq!(req.base, base, "base does not round-trip");
        prop_assert_eq!(req.iv, sent.iv, "IV");
        prop_assert_eq!(req.decrypted_iv, sent.decrypted_iv, "D(IV)");
        // And back: the decoded request encodes to the same bytes.
        prop_assert_eq!(kms::encode_request(&req.base, req.iv).0, bytes, "re-encoding");
    }

    #[test]
    fn response_round_trips(
        base in request_bases(),
        iv in any::<[u8; 16]>(),
        (epid, hwid, count, activation_interval, renewal_interval) in answer_fields(),
        rnd in response_randoms(),
    ) {
        let epid = Epid::new(&epid).expect("valid ePID");
        let (bytes, client) = kms::encode_request(&base, iv);
        let req = decode_request(&bytes).expect("client request decodes");
        let answer = Answer { epid: &epid, hwid, count, activation_interval, renewal_interval };
        let mut out = Vec::new();
        encode_response(&req, &answer, &rnd, &mut out);
        prop_assert_eq!(&client, &sent(&req), "host and client see the same request");
        let v = verify_response(&client, &out);
        prop_assert!(v.is_ok(), "response does not verify: {:?}", v);
        let v = v.unwrap();
        prop_assert_eq!(v.version, base.version);
        prop_assert_eq!(v.epid.as_str(), epid.as_str(), "ePID text");
        prop_assert_eq!(v.cmid, base.cmid, "CMID");
        prop_assert_eq!(v.client_time, base.client_time, "client time");
        prop_assert_eq!(v.count, count, "count");
        prop_assert_eq!(v.activation_interval, activation_interval, "activation interval");
        prop_assert_eq!(v.renewal_interval, renewal_interval, "renewal interval");
        prop_assert_eq!(v.hwid, (base.version == Version::V6).then_some(hwid), "HwId");
    }

    #[test]
    fn rpc_request_round_trips_in_both_syntaxes(
        kms_bytes in any_bytes(600),
        call_id in any::<u32>(),
        context_id in any::<u16>(),
        syntax in syntaxes(),
    ) {
        let mut pdu = Vec::new();
        rpc::encode_request(call_id, context_id, syntax, &kms_bytes, &mut pdu);
        let header = Header::peek(&pdu, MAX_PDU_LEN);
        prop_assert!(matches!(header, Ok(Some(_))), "request PDU does not parse: {:?}", header);
        let header = header.unwrap().unwrap();
        prop_assert_eq!(usize::from(header.frag_len), pdu.len());
        prop_assert_eq!(header.ptype, ptype::REQUEST);
        let call = decode_call(header, &pdu).expect("request decodes");
        prop_assert_eq!(call.call_id, call_id);
        prop_assert_eq!(call.context_id, context_id);
        prop_assert_eq!(call.opnum, 0);
        let alloc_hint = u32::from_le_bytes(pdu[16..20].try_into().unwrap()) as usize;
        prop_assert_eq!(alloc_hint, call.stub.len(), "alloc_hint is the stub length");
        prop_assert_eq!(decode_stub(call.stub, syntax), Ok(&kms_bytes[..]), "stub");
    }

    #[test]
    fn rpc_response_round_trips_in_both_syntaxes(
        kms_bytes in any_bytes(400),
        call_id in any::<u32>(),
        context_id in any::<u16>(),
        syntax in syntaxes(),
        hresult in 1u32..,
    ) {
        let mut pdu = Vec::new();
        rpc::encode_response(call_id, context_id, syntax, &mut pdu, |o| {
            o.extend_from_slice(&kms_bytes)
        });
        let header = Header::peek(&pdu, MAX_PDU_LEN).expect("parses").expect("whole");
        prop_assert_eq!(usize::from(header.frag_len), pdu.len());
        prop_assert_eq!(decode_reply(header, &pdu, syntax), Ok(Reply::Kms(&kms_bytes[..])));
        let mut err = Vec::new();
        rpc::encode_error(call_id, context_id, syntax, hresult, &mut err);
        let header = Header::peek(&err, MAX_PDU_LEN).expect("parses").expect("whole");
        prop_assert_eq!(decode_reply(header, &err, syntax), Ok(Reply::Hresult(hresult)));
    }
}

// ------------------------------------------------------------------ framing

proptest! {
    #[test]
    fn captured_streams_frame_the_same_in_any_chunks(chunks in chunk_sizes()) {
        for name in CAPTURES {
            let stream = c2s(name);
            let want: Vec<Bytes> = split_pdus(&stream).into_iter().map(Bytes::from).collect();
            let (whole, whole_err) = frame(&stream, &[usize::MAX])?;
            prop_assert!(!whole_err, "{}: capture does not frame", name);
            prop_assert_eq!(&whole, &want, "{}: one read", name);
            let (split, split_err) = frame(&stream, &chunks)?;
            prop_assert!(!split_err, "{}: chunked capture does not frame", name);
            prop_assert_eq!(&split, &want, "{}: chunks {:?}", name, chunks);
        }
    }

    #[test]
    fn random_pdu_streams_frame_the_same_in_any_chunks(
        (stream, pdus) in valid_pdu_streams(),
        chunks in chunk_sizes(),
    ) {
        let want: Vec<Bytes> = pdus.into_iter().map(Bytes::from).collect();
        let (whole, whole_err) = frame(&stream, &[usize::MAX])?;
        prop_assert!(!whole_err);
        prop_assert_eq!(&whole, &want);
        let (split, split_err) = frame(&stream, &chunks)?;
        prop_assert!(!split_err);
        prop_assert_eq!(&split, &want, "chunks {:?}", chunks);
    }

    #[test]
    fn garbage_header_errors_instead_of_buffering(
        (prefix, pdus) in valid_pdu_streams(),
        garbage in garbage_headers(),
        tail in any_bytes(2 * DEFAULT_MAX_PDU_LEN),
        chunks in chunk_sizes(),
    ) {
        let stream = [prefix, garbage, tail].concat();
        let want: Vec<Bytes> = pdus.into_iter().map(Bytes::from).collect();
        for sizes in [&[usize::MAX][..], &chunks] {
            let (frames, failed) = frame(&stream, sizes)?;
            prop_assert!(failed, "a garbage header did not end the stream");
            prop_assert_eq!(&frames, &want, "frames before the garbage");
        }
    }
}

// --------------------------------------------------------------- count pool

/// The reference: cmid -> last seen, capacity never shrinking.
#[derive(Default)]
struct PoolModel {
    seen: BTreeMap<Guid, i64>,
    capacity: usize,
}

impl PoolModel {
    fn observe(&mut self, cmid: Guid, now: i64, n_policy: u32) -> usize {
        self.seen.retain(|_, &mut t| t > now - TTL_MS);
        self.capacity = self.capacity.max(2 * n_policy as usize);
        if !self.seen.contains_key(&cmid) && self.seen.len() == self.capacity {
            let oldest = self
                .seen
                .iter()
                .map(|(&g, &t)| (t, g))
                .min()
                .expect("full pool is not empty");
            self.seen.remove(&oldest.1);
        }
        self.seen.insert(cmid, now);
        self.seen.len()
    }
}

proptest! {
    #[test]
    fn count_pool_matches_the_reference_model(events in pool_events()) {
        let ids: Vec<Guid> = (0..64u128)
            .map(|n| Guid::from_u128((0x5d0c_3a6e_u128 << 64) | (n * 7919))).collect();
        let mut window = Window::default();
        let mut model = PoolModel::default();
        let mut now = 1_704_067_200_000i64;
        for (i, &(cmid, step, n_policy)) in events.iter().enumerate() {
            now += step;
            let id = ids[usize::from(cmid)];
            let count = window.observe(id, now, n_policy).count;
            let want = model.observe(id, now, n_policy);
            prop_assert_eq!(count as usize, want, "event {}: count", i);
            prop_assert_eq!(window.capacity(), model.capacity, "event {}: capacity", i);
            prop_assert!(count as usize <= window.capacity(), "event {}: over capacity", i);
            let again = window.observe(id, now, n_policy).count;
            prop_assert_eq!(again, count, "event {}: a repeat grew the count", i);
            for g in &ids {
                prop_assert_eq!(window.contains(g), model.seen.contains_key(g),
                    "event {}: contains({})", i, g);
            }
            let mut entries: Vec<(i64, Guid)> = window.entries().map(|(g, t)| (t, g)).collect();
            let mut want_entries: Vec<(i64, Guid)> =
                model.seen.iter().map(|(&g, &t)| (t, g)).collect();
            entries.sort();
            want_entries.sort();
            prop_assert_eq!(entries, want_entries, "event {}: entries", i);
            prop_assert_eq!(window.count_at(now) as usize, model.seen.len());
        }
    }
}

// -------------------------------------------------------- deterministic pins

/// Every capture through one session answers every request, and each answer
/// verifies against the request the host decoded.
#[test]
fn every_capture_is_answered_and_verifies() {
    let epid = Epid::new(EPID).unwrap();
    for name in CAPTURES {
        let mut session = Session::new(BindPolicy::default(), 1688, 1);
        let mut rng = Replay(vec![7; 64], 0);
        for pdu in split_pdus(&c2s(name)) {
            let mut out = Vec::new();
            let decide = |_: &kms::Request| {
                Verdict::Answer(Answer {
                    epid: &epid,
                    hwid: HWID,
                    count: 25,
                    activation_interval: 120,
                    renewal_interval: 10080,
                })
            };
            let outcome = handle_pdu(&mut session, &pdu, decide, &mut rng, &mut out)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let header = Header::peek(&out, MAX_PDU_LEN).unwrap().unwrap();
            if let Outcome::Answered {
                syntax, request, ..
            } = outcome
            {
                let Ok(Reply::Kms(k)) = decode_reply(header, &out, syntax) else {
                    panic!("{name}: answer is not a KMS reply");
                };
                let v = verify_response(&sent(&request), k).unwrap();
                assert_eq!((v.count, v.epid.as_str()), (25, EPID), "{name}");
            }
        }
    }
}

/// A bind of 242 context items with no transfer syntax fits the largest PDU
/// the host accepts (28 + 242 × 24 = 5836 bytes), but its bind_ack (36 +
/// 242 × 24 = 5844 bytes) is larger than MAX_PDU_LEN and than the 5840-byte
/// max_recv_frag the client announced; a client framing with MAX_PDU_LEN (as
/// `kmsd activate` does) refuses it. Reachable with `max_pdu_len` raised
/// above 5812 (the config allows up to 5840); with the default 512 the ack
/// of a 20-item bind is 516 bytes.
#[test]
fn bind_ack_never_exceeds_the_largest_pdu() {
    let n = (MAX_PDU_LEN - 28) / 24;
    let mut pdu = Vec::new();
    Header::write(&mut pdu, ptype::BIND, 0x03, 2);
    pdu.extend_from_slice(&5840u16.to_le_bytes());
    pdu.extend_from_slice(&5840u16.to_le_bytes());
    pdu.extend_from_slice(&0u32.to_le_bytes());
    pdu.extend_from_slice(&[n as u8, 0, 0, 0]);
    for id in 0..n {
        pdu.extend_from_slice(&(id as u16).to_le_bytes());
        pdu.extend_from_slice(&[0, 0]);
        pdu.extend_from_slice(KMS_INTERFACE.as_bytes());
        pdu.extend_from_slice(&1u32.to_le_bytes());
    }
    let len = pdu.len() as u16;
    pdu[8..10].copy_from_slice(&len.to_le_bytes());
    assert!(pdu.len() <= MAX_PDU_LEN);
    let mut session = Session::new(BindPolicy::default(), 1688, 1);
    let mut out = Vec::new();
    // Fixed by refusing items with no transfer syntax (and binds of more
    // than 64 items): such a bind is malformed and closes the connection.
    // Whatever the host answers, it is never larger than the largest PDU.
    if session.handle(&pdu, &mut out).is_ok() {
        assert!(
            out.len() <= MAX_PDU_LEN,
            "bind_ack of {} bytes for a {}-byte bind",
            out.len(),
            pdu.len()
        );
        assert!(matches!(Header::peek(&out, MAX_PDU_LEN), Ok(Some(_))));
    } else {
        assert!(out.is_empty(), "nothing is written before closing");
    }
}

/// A request whose ClientTime is at or above 2^63 (e.g. FILETIME
/// 0x8000000000000000) makes `filetime_to_unix_ms` subtract past i64::MIN:
/// with `max_clock_skew` set, a peer panics the connection task in debug
/// builds (overflow check) and gets a wrapped, meaningless skew in release.
#[test]
fn filetime_of_any_client_time_converts_without_overflow() {
    use kmsd::protocol::policy::filetime_to_unix_ms;
    for ft in [
        0x8000_0000_0000_0000u64,
        0x8000_0000_0000_0001,
        0x819b_0000_0000_0000,
    ] {
        let ms = std::panic::catch_unwind(|| filetime_to_unix_ms(ft));
        assert!(ms.is_ok(), "filetime_to_unix_ms({ft:#x}) panicked");
    }
}

/// A request with a catalog KMS counted ID (with its own Application ID or
/// another), or an unknown one, and a policy serving any subset of groups.
fn policy_cases() -> impl Strategy<Value = (RequestBase, kmsd::protocol::policy::ProductPolicy, i64)>
{
    use kmsd::protocol::kms::products;
    let groups = products::kms_groups().len();
    (
        request_bases(),
        0..2 * groups,
        any::<bool>(),
        any::<u16>(),
        any::<bool>(),
        prop::option::of(0u64..1_000_000_000),
        any::<i64>(),
    )
        .prop_map(move |(mut base, pick, own_app, mask, strict, skew, now)| {
            if let Some(g) = products::kms_groups().get(pick) {
                base.kms_id = g.id;
                if own_app {
                    base.app_id = g.app_id;
                }
            }
            if pick % 3 == 0 {
                base.n_policy %= 1100;
            }
            let served = products::epid_groups()
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, g)| g.name)
                .collect();
            let policy = kmsd::protocol::policy::ProductPolicy {
                served,
                strict_products: strict,
                max_clock_skew_ms: skew,
            };
            (base, policy, now)
        })
}

proptest! {
    /// The product policy: N_Policy above 1000 is always 0x8007000D; a
    /// count names a served group and, for a known counted ID, that ID's
    /// pool and Application ID (a volume ID when strict); serving more
    /// groups never turns a count into a refusal.
    #[test]
    fn product_policy_invariants((base, policy, now) in policy_cases()) {
        use kmsd::protocol::kms::{hresult, products};
        use kmsd::protocol::policy::{Decision, ProductPolicy, decide};
        let d = decide(&policy, &base, now);
        if base.n_policy > 1000 {
            prop_assert!(matches!(d, Decision::Refuse(r) if r.hresult == hresult::INVALID_DATA));
        }
        if let Decision::Count(c) = d {
            prop_assert!(policy.served.contains(&c.epid_group));
            if let Some(g) = products::kms_group(&base.kms_id) {
                prop_assert_eq!((c.pool, base.app_id), (g.pool, g.app_id));
                prop_assert!(g.is_volume() || !policy.strict_products);
            }
            let all = ProductPolicy {
                served: products::epid_groups().iter().map(|g| g.name).collect(),
                ..policy.clone()
            };
            prop_assert_eq!(decide(&all, &base, now), d);
        }
        if let Decision::Refuse(r) = d {
            prop_assert!([hresult::INVALID_DATA, hresult::TIME_SKEW, hresult::KMS_ID_MISMATCH]
                .contains(&r.hresult));
        }
    }
}
