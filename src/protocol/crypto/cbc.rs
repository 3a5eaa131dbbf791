//! Textbook CBC and PKCS#7 over any 16-byte block cipher, in place.

use super::rijndael::Rijndael;

/// Why a CBC payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CbcError {
    #[error("ciphertext length {0} is not a positive multiple of 16")]
    Length(usize),
    #[error("PKCS#7 padding is invalid")]
    Padding,
}

/// Encrypts `data` (a multiple of 16 bytes) in place.
pub fn encrypt(cipher: &Rijndael, iv: &[u8; 16], data: &mut [u8]) {
    let mut chain = *iv;
    for chunk in data.chunks_exact_mut(16) {
        for (c, p) in chain.iter_mut().zip(chunk.iter()) {
            *c ^= p;
        }
        cipher.encrypt_block(&mut chain);
        chunk.copy_from_slice(&chain);
    }
}

/// Decrypts `data` in place; it must be a positive multiple of 16 bytes.
pub fn decrypt(cipher: &Rijndael, iv: &[u8; 16], data: &mut [u8]) -> Result<(), CbcError> {
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(CbcError::Length(data.len()));
    }
    let mut chain = *iv;
    for chunk in data.chunks_exact_mut(16) {
        let mut block = [0u8; 16];
        block.copy_from_slice(chunk);
        let next = block;
        cipher.decrypt_block(&mut block);
        for (b, c) in block.iter_mut().zip(chain.iter()) {
            *b ^= c;
        }
        chunk.copy_from_slice(&block);
        chain = next;
    }
    Ok(())
}

/// Appends PKCS#7 padding (1 to 16 bytes) to `buf`, padding the bytes after
/// `start` to a multiple of 16.
pub fn pad(buf: &mut Vec<u8>, start: usize) {
    let len = buf.len().saturating_sub(start);
    let n = 16 - len % 16;
    buf.resize(buf.len() + n, n as u8);
}

/// Length of `data` once its PKCS#7 padding is checked and stripped.
pub fn unpadded_len(data: &[u8]) -> Result<usize, CbcError> {
    let n = usize::from(*data.last().ok_or(CbcError::Padding)?);
    if n == 0 || n > 16 || n > data.len() {
        return Err(CbcError::Padding);
    }
    let body = data.len() - n;
    if data
        .get(body..)
        .is_some_and(|p| p.iter().all(|&b| usize::from(b) == n))
    {
        Ok(body)
    } else {
        Err(CbcError::Padding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding_rules() {
        let c = Rijndael::new(&[7u8; 16]);
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut buf = plain.clone();
            pad(&mut buf, 0);
            assert!(buf.len() > plain.len() && buf.len().is_multiple_of(16));
            encrypt(&c, &[3; 16], &mut buf);
            decrypt(&c, &[3; 16], &mut buf).unwrap();
            assert_eq!(unpadded_len(&buf), Ok(len));
            assert_eq!(&buf[..len], &plain[..]);
        }
        assert_eq!(unpadded_len(&[1, 2, 0]), Err(CbcError::Padding));
        assert_eq!(unpadded_len(&[1, 3, 2]), Err(CbcError::Padding));
        assert_eq!(unpadded_len(&[17; 17]), Err(CbcError::Padding));
        assert_eq!(unpadded_len(&[]), Err(CbcError::Padding));
        assert_eq!(
            decrypt(&c, &[0; 16], &mut [0; 15]),
            Err(CbcError::Length(15))
        );
    }
}
