//! Bytes as hexadecimal text and back: the one helper for HwIds on the
//! command line and the probe's card, and for the hex test vectors.

const UPPER: &[u8; 16] = b"0123456789ABCDEF";
const LOWER: &[u8; 16] = b"0123456789abcdef";

fn encode(bytes: &[u8], digits: &[u8; 16]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from(
                digits.get(usize::from(nibble)).copied().unwrap_or(b'?'),
            ));
        }
    }
    out
}

/// `bytes` as upper-case hex, two digits a byte (how Windows shows a HwId).
pub fn upper(bytes: &[u8]) -> String {
    encode(bytes, UPPER)
}

/// `bytes` as lower-case hex, two digits a byte.
pub fn lower(bytes: &[u8]) -> String {
    encode(bytes, LOWER)
}

/// The bytes `text` spells, two hex digits a byte (either case); None for
/// an odd length or a non-hex character.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let digit = |d: u8| char::from(d).to_digit(16);
    digits
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((digit(*hi)? << 4 | digit(*lo)?) as u8),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_both_cases() {
        let b = [0x3a, 0x1c, 0x04, 0x96, 0x00, 0xb6, 0x00, 0xff];
        assert_eq!(upper(&b), "3A1C049600B600FF");
        assert_eq!(lower(&b), "3a1c049600b600ff");
        assert_eq!(decode(&upper(&b)).unwrap(), b);
        assert_eq!(decode(&lower(&b)).unwrap(), b);
        assert_eq!(upper(&[]), "");
        assert_eq!(decode(""), Some(Vec::new()));
    }

    #[test]
    fn refuses_what_is_not_hex() {
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("+1"), None);
    }
}
