//! Rijndael with a 128-bit block and explicit round keys, driven by the `aes`
//! crate's hazmat round functions (AES-NI where the CPU has it).
//!
//! KMS needs two variants no stock AES API offers: Rijndael with a 160-bit key
//! (11 rounds, protocol 4's MAC) and AES-128 whose expanded key has three bytes
//! altered (protocol 6). Both are ordinary Rijndael rounds over a different
//! key schedule, so this type takes the schedule as data.
//!
//! Indexing here is over fixed-size schedules whose bounds hold by
//! construction (the round count is clamped to the array size); no index is
//! derived from peer data.
#![allow(clippy::indexing_slicing)]

use aes::Block;
use aes::hazmat::{cipher_round, equiv_inv_cipher_round, inv_mix_columns, mix_columns};

/// Most rounds any variant here uses (Nk = 5 gives Nr = 11).
const MAX_ROUNDS: usize = 11;

/// An expanded Rijndael key: `rounds + 1` round keys for encryption and their
/// InvMixColumns images for the equivalent inverse cipher.
#[derive(Clone)]
pub struct Rijndael {
    rounds: usize,
    enc: [Block; MAX_ROUNDS + 1],
    dec: [Block; MAX_ROUNDS + 1],
}

fn xor_in(state: &mut Block, key: &Block) {
    for (s, k) in state.iter_mut().zip(key.iter()) {
        *s ^= k;
    }
}

/// SubWord through the hazmat round: a state whose four columns are the same
/// word is unchanged by ShiftRows, so one AES round with a zero key followed by
/// InvMixColumns leaves SubBytes of the word in every column.
fn sub_word(w: [u8; 4]) -> [u8; 4] {
    let mut b = Block::default();
    for chunk in b.chunks_exact_mut(4) {
        chunk.copy_from_slice(&w);
    }
    cipher_round(&mut b, &Block::default());
    inv_mix_columns(&mut b);
    let mut out = [0u8; 4];
    out.copy_from_slice(b.get(..4).unwrap_or(&[0; 4]));
    out
}

/// The standard Rijndael key expansion for a key of `nk` 32-bit words
/// (4 ≤ nk ≤ 6), producing `4 × (nk + 7)` bytes of round keys.
pub fn expand_key(key: &[u8]) -> Vec<[u8; 16]> {
    let nk = key.len() / 4;
    debug_assert!((4..=6).contains(&nk) && key.len().is_multiple_of(4));
    let rounds = nk + 6;
    let total = 4 * (rounds + 1);
    let mut words: Vec<[u8; 4]> = key
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let mut rcon: u8 = 1;
    for i in nk..total {
        let mut t = words[i - 1];
        if i % nk == 0 {
            t.rotate_left(1);
            t = sub_word(t);
            t[0] ^= rcon;
            rcon = (rcon << 1) ^ if rcon & 0x80 != 0 { 0x1b } else { 0 };
        }
        let prev = words[i - nk];
        words.push([
            t[0] ^ prev[0],
            t[1] ^ prev[1],
            t[2] ^ prev[2],
            t[3] ^ prev[3],
        ]);
    }
    words
        .chunks_exact(4)
        .map(|c| {
            let mut rk = [0u8; 16];
            for (dst, w) in rk.chunks_exact_mut(4).zip(c) {
                dst.copy_from_slice(w);
            }
            rk
        })
        .collect()
}

impl Rijndael {
    /// Builds the cipher from a full round-key schedule (`rounds + 1` keys).
    pub fn from_round_keys(round_keys: &[[u8; 16]]) -> Self {
        let rounds = round_keys.len().saturating_sub(1).clamp(1, MAX_ROUNDS);
        let mut enc = [Block::default(); MAX_ROUNDS + 1];
        for (dst, src) in enc.iter_mut().zip(round_keys) {
            *dst = Block::from(*src);
        }
        let mut dec = enc;
        for k in dec.iter_mut().take(rounds).skip(1) {
            inv_mix_columns(k);
        }
        Self { rounds, enc, dec }
    }

    /// Rijndael with the standard key schedule for this key length.
    pub fn new(key: &[u8]) -> Self {
        Self::from_round_keys(&expand_key(key))
    }

    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        let mut s = Block::from(*block);
        let zero = Block::default();
        xor_in(&mut s, &self.enc[0]);
        for k in &self.enc[1..self.rounds] {
            cipher_round(&mut s, k);
        }
        // Last round has no MixColumns: undo the one cipher_round applies.
        cipher_round(&mut s, &zero);
        inv_mix_columns(&mut s);
        xor_in(&mut s, &self.enc[self.rounds]);
        *block = s.0;
    }

    pub fn decrypt_block(&self, block: &mut [u8; 16]) {
        let mut s = Block::from(*block);
        let zero = Block::default();
        xor_in(&mut s, &self.dec[self.rounds]);
        for k in self.dec[1..self.rounds].iter().rev() {
            equiv_inv_cipher_round(&mut s, k);
        }
        // Last inverse round has no InvMixColumns: undo it.
        equiv_inv_cipher_round(&mut s, &zero);
        mix_columns(&mut s);
        xor_in(&mut s, &self.dec[0]);
        *block = s.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::protocol::hex::decode(s).unwrap()
    }

    fn block(s: &str) -> [u8; 16] {
        hex(s).try_into().unwrap()
    }

    #[test]
    fn fips197_aes128_appendix_c1() {
        let c = Rijndael::new(&hex("000102030405060708090a0b0c0d0e0f"));
        let mut b = block("00112233445566778899aabbccddeeff");
        c.encrypt_block(&mut b);
        assert_eq!(b, block("69c4e0d86a7b0430d8cdb78070b4c55a"));
        c.decrypt_block(&mut b);
        assert_eq!(b, block("00112233445566778899aabbccddeeff"));
    }

    #[test]
    fn fips197_key_expansion_appendix_a1() {
        let rk = expand_key(&hex("2b7e151628aed2a6abf7158809cf4f3c"));
        assert_eq!(rk.len(), 11);
        assert_eq!(rk[1], block("a0fafe1788542cb123a339392a6c7605"));
        assert_eq!(rk[10], block("d014f9a8c9ee2589e13f0cc8b6630ca6"));
    }

    #[test]
    fn agrees_with_the_aes_crate_on_random_blocks() {
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let key = hex("cd7e796f2ab25dcb55ffc8ef8364c470");
        let ours = Rijndael::new(&key);
        let theirs = aes::Aes128::new_from_slice(&key).unwrap();
        let mut x = [0u8; 16];
        for i in 0..64u8 {
            x[usize::from(i) % 16] ^= i.wrapping_mul(37).wrapping_add(11);
            let mut a = x;
            ours.encrypt_block(&mut a);
            let mut b = Block::from(x);
            theirs.encrypt_block(&mut b);
            assert_eq!(a, b.0);
            ours.decrypt_block(&mut a);
            assert_eq!(a, x);
        }
    }
}
