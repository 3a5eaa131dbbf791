//! Builders the fuzz targets share: KMS requests and answers made from
//! fuzzer bytes, a deterministic RNG, and the framing rule that splits a
//! captured client stream back into its PDUs.

use arbitrary::{Arbitrary, Unstructured};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::request::WORKSTATION_LEN;
use kmsd::protocol::kms::{Epid, RequestBase, ResponseRandom, Version, Workstation};
use kmsd::protocol::rpc::pdu::Header;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The ePID every fuzzed answer carries unless a target builds its own.
pub const FIXED_EPID: &str = "03612-00206-556-123727-03-1033-17763.0000-2972018";

/// A seeded, reproducible `CryptoRng`: a crash replays byte for byte.
pub fn fixed_rng() -> StdRng {
    StdRng::seed_from_u64(0x6b6d_7364)
}

/// Picks a KMS version from one byte.
pub fn version_from(b: u8) -> Version {
    Version::ALL[usize::from(b % 3)]
}

fn guid(u: &mut Unstructured<'_>) -> arbitrary::Result<Guid> {
    Ok(Guid(<[u8; 16]>::arbitrary(u)?))
}

/// A request base with every field drawn from the input. The workstation is
/// either a name of up to 63 UTF-16 units (what a client sends) or 128 raw
/// bytes (what a peer may send: bytes after the NUL, no NUL at all).
pub fn request_base(u: &mut Unstructured<'_>) -> arbitrary::Result<RequestBase> {
    let version = version_from(u8::arbitrary(u)?);
    let vm_info = u32::arbitrary(u)?;
    let license_status = u32::arbitrary(u)?;
    let binding_expiration = u32::arbitrary(u)?;
    let app_id = guid(u)?;
    let sku_id = guid(u)?;
    let kms_id = guid(u)?;
    let cmid = guid(u)?;
    let n_policy = u32::arbitrary(u)?;
    let client_time = u64::arbitrary(u)?;
    let previous_cmid = guid(u)?;
    let workstation = if bool::arbitrary(u)? {
        Workstation(<[u8; WORKSTATION_LEN]>::arbitrary(u)?)
    } else {
        let units = u.int_in_range(0..=63usize)?;
        let name: String = (0..units)
            .map(|_| char::arbitrary(u))
            .collect::<arbitrary::Result<String>>()?;
        // Cut to 63 UTF-16 units without splitting a surrogate pair, no NUL.
        let mut cut = String::new();
        for c in name.chars().filter(|&c| c != '\0') {
            if cut.encode_utf16().count() + c.len_utf16() > 63 {
                break;
            }
            cut.push(c);
        }
        match Workstation::new(&cut) {
            Ok(w) => w,
            Err(e) => panic!("Workstation::new refused {cut:?} ({e})"),
        }
    };
    Ok(RequestBase {
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
    })
}

/// A valid ePID: 1 to 63 printable ASCII characters.
pub fn epid(u: &mut Unstructured<'_>) -> arbitrary::Result<Epid> {
    let n = u.int_in_range(1..=63usize)?;
    let text: String = (0..n)
        .map(|_| u.int_in_range(0x21u8..=0x7e).map(char::from))
        .collect::<arbitrary::Result<String>>()?;
    match Epid::new(&text) {
        Ok(e) => Ok(e),
        Err(e) => panic!("Epid::new refused {text:?} ({e})"),
    }
}

pub fn response_random(u: &mut Unstructured<'_>) -> arbitrary::Result<ResponseRandom> {
    Ok(ResponseRandom {
        salt: <[u8; 16]>::arbitrary(u)?,
        iv_seed: <[u8; 16]>::arbitrary(u)?,
    })
}

/// Splits a client byte stream into PDUs by frag_length, as the codec does,
/// but leniently: a frag_length under 16 or past the end takes the rest, so
/// the host also sees PDUs whose length field lies.
pub fn split_stream(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let declared = match (stream.get(8), stream.get(9)) {
            (Some(&a), Some(&b)) => usize::from(u16::from_le_bytes([a, b])),
            _ => 0,
        };
        let n = if (16..=stream.len()).contains(&declared) {
            declared
        } else {
            stream.len()
        };
        let (pdu, rest) = stream.split_at(n);
        out.push(pdu);
        stream = rest;
    }
    out
}

/// Checks what the host writes: one whole PDU, version 5.0, little-endian,
/// unfragmented, unauthenticated, frag_length equal to its length, within
/// the hard bound; returns its header.
pub fn check_host_pdu(out: &[u8], call_id: u32) -> Header {
    let header = match Header::peek(out, kmsd::protocol::rpc::pdu::MAX_PDU_LEN) {
        Ok(Some(h)) => h,
        other => panic!(
            "host wrote a PDU that does not parse ({other:?}), {} bytes: {out:02x?}",
            out.len()
        ),
    };
    assert_eq!(
        usize::from(header.frag_len),
        out.len(),
        "frag_length differs from the bytes written"
    );
    assert_eq!(header.auth_len, 0, "host PDU carries auth_length");
    assert_eq!(header.flags & 0x03, 0x03, "host PDU is not FIRST|LAST");
    assert_eq!(
        header.call_id, call_id,
        "host PDU does not echo the call_id"
    );
    header
}
