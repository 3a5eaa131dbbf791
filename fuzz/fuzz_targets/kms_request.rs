//! Arbitrary bytes as a KMS request (v4 / v5 / v6), then the same bytes as
//! the fields of a valid request.
//!
//! Invariants: `decode_request` never panics; a request it accepts re-encodes
//! to exactly the bytes it read (decode -> encode is the identity on the
//! declared layout); a request built from any fields (any version, any
//! workstation bytes, any IV) encodes, decodes back to the same base, IV and
//! D(IV), tolerates trailing bytes and is refused when one byte short.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use kmsd::protocol::kms::{KmsError, decode_request, encode_request};
use kmsd_fuzz::request_base;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. The bytes as a peer's request.
    if let Ok(req) = decode_request(data) {
        let need = req.version().request_len();
        let (again, sent) = encode_request(&req.base, req.iv);
        assert_eq!(
            &again[..],
            &data[..need],
            "accepted request does not re-encode to its bytes"
        );
        assert_eq!(sent.decrypted_iv, req.decrypted_iv);
    }

    // 2. The bytes as the fields of a request a client builds.
    let mut u = Unstructured::new(data);
    let Ok(base) = request_base(&mut u) else {
        return;
    };
    let Ok(iv) = <[u8; 16]>::arbitrary(&mut u) else {
        return;
    };
    let (bytes, sent) = encode_request(&base, iv);
    assert_eq!(bytes.len(), base.version.request_len(), "request length");
    let req = match decode_request(&bytes) {
        Ok(r) => r,
        Err(e) => panic!("host refused a client-encoded request: {e} ({base:?})"),
    };
    assert_eq!(req.base, base, "base does not round-trip");
    assert_eq!(req.iv, sent.iv, "IV does not round-trip");
    assert_eq!(req.decrypted_iv, sent.decrypted_iv, "D(IV) differs");

    let mut longer = bytes.clone();
    longer.extend_from_slice(u.take_rest());
    assert_eq!(
        decode_request(&longer).map(|r| r.base),
        Ok(base),
        "trailing bytes changed the decode"
    );
    assert!(
        matches!(
            decode_request(&bytes[..bytes.len() - 1]),
            Err(KmsError::TooShort { .. })
        ),
        "a request one byte short was not refused as too short"
    );
});
