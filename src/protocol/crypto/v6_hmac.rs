//! Protocol 6's response HMAC and its time-slot key (SPEC §4.4).

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const C1: u64 = 0x0000_0022_8168_89BD;
const C2: u64 = 0x0000_0020_8CBA_B5ED;
const C3: u64 = 0x3156_CD5A_C628_477A;

/// The HMAC key for the ~4.12 h slot holding `client_time` (FILETIME).
/// A verifier also tries `slot_offset` −1 and +1, which (as vlmcs and the
/// captured vectors have it) add ±C1 to the slot value itself.
pub fn v6_hmac_key(client_time: u64, slot_offset: i64) -> [u8; 16] {
    let slot = (client_time / C1)
        .wrapping_mul(C2)
        .wrapping_add(C3)
        .wrapping_add(C1.wrapping_mul(slot_offset as u64));
    let digest = Sha256::digest(slot.to_le_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(digest.get(16..32).unwrap_or(&[0; 16]));
    key
}

/// The last 16 bytes of HMAC-SHA256 over the concatenated `parts`.
pub fn v6_hmac(key: &[u8; 16], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable_key_len());
    for p in parts {
        mac.update(p);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(full.get(16..32).unwrap_or(&[0; 16]));
    out
}

/// HMAC accepts keys of any length, so construction cannot fail.
#[cold]
fn unreachable_key_len() -> Hmac<Sha256> {
    // A distinct zero-length key keeps this path total without panicking.
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::protocol::hex::decode(s).unwrap()
    }

    // vectors/index.json -> crypto.v6_hmac_key_derivation
    #[test]
    fn key_derivation_matches_vectors() {
        let t = 133_485_408_000_000_000;
        assert_eq!(
            (t / C1).wrapping_mul(C2).wrapping_add(C3),
            0x3316_2861_3556_5fd5
        );
        assert_eq!(
            v6_hmac_key(t, 0).to_vec(),
            hex("2e37461994584e155504b4d24dad5ddf")
        );
        assert_eq!(
            v6_hmac_key(t, -1).to_vec(),
            hex("ffd3fd3518adbe5675ba3f0686b62ff2")
        );
        assert_eq!(
            v6_hmac_key(t, 1).to_vec(),
            hex("81142ce06abf6e8445b98417e9e694fc")
        );
    }
}
