//! The three KMS ciphers and their MAC/HMAC constructions (SPEC §4).
//!
//! | protocol | cipher | integrity |
//! |---|---|---|
//! | 4 | none (plaintext) | CBC-MAC under Rijndael-160 ([`v4_mac`]) |
//! | 5 | AES-128-CBC ([`aes5`]) | SHA-256 of a random value |
//! | 6 | AES-128-CBC with modified round keys ([`aes6`]) | SHA-256 + truncated HMAC-SHA256 ([`v6_hmac`]) |

pub mod cbc;
pub mod rijndael;
mod v4_mac;
mod v6_hmac;

use std::sync::LazyLock;

pub use rijndael::Rijndael;
pub use v4_mac::v4_mac;
pub use v6_hmac::{v6_hmac, v6_hmac_key};

/// Protocol 4 MAC key: a 160-bit Rijndael key.
const KEY_V4: [u8; 20] = [
    0x05, 0x3D, 0x83, 0x07, 0xF9, 0xE5, 0xF0, 0x88, 0xEB, 0x5E, 0xA6, 0x68, 0x6C, 0xF0, 0x37, 0xC7,
    0xE4, 0xEF, 0xD2, 0xD6,
];
/// Protocol 5 AES-128 key.
const KEY_V5: [u8; 16] = [
    0xCD, 0x7E, 0x79, 0x6F, 0x2A, 0xB2, 0x5D, 0xCB, 0x55, 0xFF, 0xC8, 0xEF, 0x83, 0x64, 0xC4, 0x70,
];
/// Protocol 6 AES-128 key (expanded with the modification below).
const KEY_V6: [u8; 16] = [
    0xA9, 0x4A, 0x41, 0x95, 0xE2, 0x01, 0x43, 0x2D, 0x9B, 0xCB, 0x46, 0x04, 0x05, 0xD8, 0x4A, 0x21,
];
/// Protocol 6 changes one byte in round keys 4, 6 and 8 after expansion.
const V6_TWEAKS: [(usize, u8); 3] = [(4, 0x73), (6, 0x09), (8, 0xE4)];

static V4: LazyLock<Rijndael> = LazyLock::new(|| Rijndael::new(&KEY_V4));
static V5: LazyLock<Rijndael> = LazyLock::new(|| Rijndael::new(&KEY_V5));
static V6: LazyLock<Rijndael> = LazyLock::new(|| {
    let mut rk = rijndael::expand_key(&KEY_V6);
    for (round, x) in V6_TWEAKS {
        if let Some(b) = rk.get_mut(round).and_then(|k| k.first_mut()) {
            *b ^= x;
        }
    }
    Rijndael::from_round_keys(&rk)
});

/// Rijndael-160 under the protocol 4 key.
pub fn rijndael160() -> &'static Rijndael {
    &V4
}

/// AES-128 under the protocol 5 key.
pub fn aes5() -> &'static Rijndael {
    &V5
}

/// The protocol 6 block cipher.
pub fn aes6() -> &'static Rijndael {
    &V6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(s: &str) -> [u8; 16] {
        crate::protocol::hex::decode(s).unwrap().try_into().unwrap()
    }

    const COUNTING: &str = "000102030405060708090a0b0c0d0e0f";

    fn enc(c: &Rijndael, s: &str) -> [u8; 16] {
        let mut b = block(s);
        c.encrypt_block(&mut b);
        let mut back = b;
        c.decrypt_block(&mut back);
        assert_eq!(back, block(s), "decrypt does not invert encrypt");
        b
    }

    // Expected values: vectors/index.json -> crypto.*
    #[test]
    fn rijndael160_matches_vectors() {
        let c = rijndael160();
        assert_eq!(enc(c, COUNTING), block("28916e4a0ee525b42cf393cae0f4dc9a"));
        assert_eq!(
            enc(c, &"0".repeat(32)),
            block("933030f10e2e7782b80915d5778a4957")
        );
        let rk = rijndael::expand_key(&KEY_V4);
        assert_eq!(rk.len(), 12);
        assert_eq!(rk[1], block("e4efd2d6db88756e226d85e6c933238e"));
        assert_eq!(&rk[2][..4], &block("a5c31449000000000000000000000000")[..4]);
    }

    #[test]
    fn aes5_matches_vectors() {
        assert_eq!(
            enc(aes5(), COUNTING),
            block("8d77cb43633c62cbe1d15d570c23dc75")
        );
        assert_eq!(
            enc(aes5(), &"0".repeat(32)),
            block("ec7c7e75b1923978eac4b2d2260235d5")
        );
    }

    #[test]
    fn aes6_matches_vectors_and_differs_from_aes() {
        assert_eq!(
            enc(aes6(), COUNTING),
            block("ca89ca11b2c4e77a94e806af17136b38")
        );
        assert_eq!(
            enc(aes6(), &"0".repeat(32)),
            block("8ca59de0c483c04aa7026a22d6dd208e")
        );
        let plain = Rijndael::new(&KEY_V6);
        assert_eq!(
            enc(&plain, COUNTING),
            block("2df55e42df325361b350af775ce6f279")
        );
    }
}
