//! KMS responses built from arbitrary inputs: request fields (any version),
//! answer fields (ePID, HwId, count, intervals) and the host's randoms.
//!
//! The client encodes the request, the host decodes it and encodes the
//! response, the client verifies it; then the verified fields are encoded
//! again with the same randoms and must give the same bytes
//! (decode -> encode -> decode).
//!
//! Invariants: the response has the length `response_len` predicts and
//! verifies; count, both intervals, ePID text, CMID, client time and (v6)
//! HwId come back as given; re-encoding is byte-identical; for v4 and v6
//! (which authenticate the whole response) any single changed byte is
//! refused.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use kmsd::protocol::kms::response::response_len;
use kmsd::protocol::kms::{Answer, Epid, Version, decode_request, encode_request};
use kmsd::protocol::kms::{encode_response, verify_response};
use kmsd_fuzz::{epid, request_base, response_random};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(input) = (|| -> arbitrary::Result<_> {
        let base = request_base(&mut u)?;
        let iv = <[u8; 16]>::arbitrary(&mut u)?;
        let epid = epid(&mut u)?;
        let hwid = <[u8; 8]>::arbitrary(&mut u)?;
        let count = u32::arbitrary(&mut u)?;
        let activation_interval = u32::arbitrary(&mut u)?;
        let renewal_interval = u32::arbitrary(&mut u)?;
        let rnd = response_random(&mut u)?;
        let tamper = <(u16, u8)>::arbitrary(&mut u)?;
        Ok((
            base,
            iv,
            epid,
            hwid,
            [count, activation_interval, renewal_interval],
            rnd,
            tamper,
        ))
    })() else {
        return;
    };
    let (base, iv, epid, hwid, [count, activation_interval, renewal_interval], rnd, tamper) = input;
    let answer = Answer {
        epid: &epid,
        hwid,
        count,
        activation_interval,
        renewal_interval,
    };

    let (request_bytes, sent) = encode_request(&base, iv);
    let request = match decode_request(&request_bytes) {
        Ok(r) => r,
        Err(e) => panic!("host refused a client-encoded request: {e}"),
    };
    let mut response = Vec::new();
    encode_response(&request, &answer, &rnd, &mut response);
    assert_eq!(
        response.len(),
        response_len(base.version, epid.wire().len()),
        "response length"
    );
    let v = match verify_response(&sent, &response) {
        Ok(v) => v,
        Err(e) => panic!("response does not verify: {e} ({base:?}, {epid:?})"),
    };
    assert_eq!(v.version, base.version);
    assert_eq!(v.epid, epid.as_str(), "ePID text");
    assert_eq!(v.cmid, base.cmid, "CMID");
    assert_eq!(v.client_time, base.client_time, "client time");
    assert_eq!(v.count, count, "count");
    assert_eq!(
        v.activation_interval, activation_interval,
        "activation interval"
    );
    assert_eq!(v.renewal_interval, renewal_interval, "renewal interval");
    let want_hwid = (base.version == Version::V6).then_some(hwid);
    assert_eq!(v.hwid, want_hwid, "HwId");

    // decode -> encode -> decode: the verified fields build the same bytes.
    let epid2 = match Epid::new(&v.epid) {
        Ok(e) => e,
        Err(e) => panic!("verified ePID is not a valid ePID: {e}"),
    };
    let answer2 = Answer {
        epid: &epid2,
        hwid: v.hwid.unwrap_or(hwid),
        count: v.count,
        activation_interval: v.activation_interval,
        renewal_interval: v.renewal_interval,
    };
    let mut again = Vec::new();
    encode_response(&request, &answer2, &rnd, &mut again);
    assert_eq!(again, response, "re-encoding the verified fields differs");
    assert_eq!(verify_response(&sent, &again).as_ref(), Ok(&v));

    // v4 (MAC) and v6 (HMAC, padding) authenticate every byte; v5 leaves the
    // base unauthenticated, so only its framing is checked there.
    let (at, xor) = (usize::from(tamper.0) % response.len(), tamper.1.max(1));
    let mut bad = response.clone();
    bad[at] ^= xor;
    let tampered = verify_response(&sent, &bad);
    if base.version != Version::V5 {
        assert!(
            tampered.is_err(),
            "byte {at} ^ {xor:#04x} of a {:?} response still verifies: {tampered:?}",
            base.version
        );
    }
    // Truncated or extended responses never verify.
    assert!(verify_response(&sent, &response[..response.len() - 1]).is_err());
    let mut longer = response.clone();
    longer.push(0);
    assert!(verify_response(&sent, &longer).is_err());
});
