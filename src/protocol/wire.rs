//! A bounds-checked reader over peer bytes. Every length that comes off the
//! wire is read through it, so a short or lying input is a typed error, never a
//! panic or an out-of-range slice.

use super::guid::Guid;

/// Input ended before a field it declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("input truncated: needed {needed} more bytes at offset {offset}, {remaining} left")]
pub struct Truncated {
    pub offset: usize,
    pub needed: usize,
    pub remaining: usize,
}

/// Cursor over a byte slice; reads are little-endian.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next byte from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let err = Truncated {
            offset: self.pos,
            needed: n,
            remaining: self.remaining(),
        };
        let end = self.pos.checked_add(n).ok_or(err)?;
        let out = self.buf.get(self.pos..end).ok_or(err)?;
        self.pos = end;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), Truncated> {
        self.take(n).map(|_| ())
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn guid(&mut self) -> Result<Guid, Truncated> {
        Ok(Guid(self.array()?))
    }

    /// Skips to the next multiple of `align`, counted from the input start.
    pub fn align(&mut self, align: usize) -> Result<(), Truncated> {
        let pad = (align - self.pos % align) % align;
        self.skip(pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_the_end() {
        let mut r = Reader::new(&[1, 0, 2, 0, 0, 0, 9]);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.u32(), Ok(2));
        assert_eq!(r.remaining(), 1);
        assert_eq!(
            r.u16(),
            Err(Truncated {
                offset: 6,
                needed: 2,
                remaining: 1
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.u8(), Ok(9));
        assert!(r.take(usize::MAX).is_err());
    }

    #[test]
    fn align_counts_from_the_start() {
        let mut r = Reader::new(&[0; 8]);
        r.skip(5).unwrap();
        r.align(4).unwrap();
        assert_eq!(r.position(), 8);
        r.align(4).unwrap();
        assert_eq!(r.position(), 8);
    }
}
