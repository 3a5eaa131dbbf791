//! GUIDs as KMS and MS-RPC carry them: 16 bytes in Microsoft's mixed-endian
//! layout (Data1 u32 LE, Data2 u16 LE, Data3 u16 LE, Data4 as-is).

use std::fmt;
use std::str::FromStr;

/// A GUID held in its wire layout, so decoding and encoding are plain copies.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID.
    pub const NIL: Self = Self([0; 16]);

    /// Builds a GUID from the 128-bit number its string form spells, e.g.
    /// `Guid::from_u128(0x55c92734_d682_4d71_983e_d6ec3f16059f)`.
    pub const fn from_u128(v: u128) -> Self {
        let be = v.to_be_bytes();
        Self([
            be[3], be[2], be[1], be[0], // Data1, little-endian
            be[5], be[4], // Data2
            be[7], be[6], // Data3
            be[8], be[9], be[10], be[11], be[12], be[13], be[14], be[15],
        ])
    }

    /// The 128-bit number of the string form (inverse of [`Guid::from_u128`]).
    pub const fn to_u128(self) -> u128 {
        let w = self.0;
        u128::from_be_bytes([
            w[3], w[2], w[1], w[0], w[5], w[4], w[7], w[6], w[8], w[9], w[10], w[11], w[12], w[13],
            w[14], w[15],
        ])
    }

    /// Wire bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A random version-4 GUID, as Windows makes client machine IDs.
    pub fn random_v4(rng: &mut impl rand::Rng) -> Self {
        let mut v = [0u8; 16];
        rng.fill_bytes(&mut v);
        let mut g = Self::from_u128(u128::from_be_bytes(v));
        // Version nibble lives in Data3's high nibble, the variant in Data4[0].
        g.0[7] = (g.0[7] & 0x0f) | 0x40;
        g.0[8] = (g.0[8] & 0x3f) | 0x80;
        g
    }
}

impl Guid {
    /// The canonical lower-case text, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`,
    /// without going through `core::fmt` per field (GUIDs are formatted for
    /// every activation's log line).
    pub fn to_text(&self) -> [u8; 36] {
        let v = self.to_u128();
        let mut out = [b'-'; 36];
        let mut shift = 128u32;
        for (i, slot) in out.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            shift -= 4;
            let d = ((v >> shift) & 0xf) as u8;
            *slot = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        }
        out
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_text();
        std::str::from_utf8(&text).map_or(Err(fmt::Error), |s| f.pad(s))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a GUID string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, braces optional): {0:?}")]
pub struct GuidParseError(pub String);

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || GuidParseError(s.to_owned());
        let t = s.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(t);
        let b = t.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b.get(i) != Some(&b'-')) {
            return Err(err());
        }
        let mut v: u128 = 0;
        for (i, c) in t.chars().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                continue;
            }
            let d = c.to_digit(16).ok_or_else(err)?;
            v = (v << 4) | u128::from(d);
        }
        Ok(Self::from_u128(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layout_matches_spec_example() {
        // SPEC conventions: 55c92734-d682-4d71-983e-d6ec3f16059f on the wire.
        let g: Guid = "55c92734-d682-4d71-983e-d6ec3f16059f".parse().unwrap();
        assert_eq!(
            g.0,
            [
                0x34, 0x27, 0xc9, 0x55, 0x82, 0xd6, 0x71, 0x4d, 0x98, 0x3e, 0xd6, 0xec, 0x3f, 0x16,
                0x05, 0x9f
            ]
        );
        assert_eq!(g, Guid::from_u128(0x55c92734_d682_4d71_983e_d6ec3f16059f));
        assert_eq!(g.to_string(), "55c92734-d682-4d71-983e-d6ec3f16059f");
        assert_eq!(
            "{55C92734-D682-4D71-983E-D6EC3F16059F}".parse::<Guid>(),
            Ok(g)
        );
    }

    #[test]
    fn bad_strings_are_refused() {
        for s in [
            "",
            "55c92734d6824d71983ed6ec3f16059f",
            "55c92734-d682-4d71-983e-d6ec3f16059",
            "55c92734-d682-4d71-983e-d6ec3f16059g",
            "55c92734+d682-4d71-983e-d6ec3f16059f",
        ] {
            assert!(s.parse::<Guid>().is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn random_v4_sets_version_and_variant() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        for _ in 0..32 {
            let g = Guid::random_v4(&mut rng);
            let s = g.to_string();
            assert_eq!(s.as_bytes()[14], b'4', "{s}");
            assert!(matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{s}");
        }
    }

    #[test]
    fn text_matches_field_by_field_formatting_and_parses_back() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
        let edge = [0u128, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        let random = (0..256).map(|_| rand::RngExt::random::<u128>(&mut rng));
        for v in edge.into_iter().chain(random) {
            let g = Guid::from_u128(v);
            let expect = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                (v >> 96) as u32,
                (v >> 80) as u16,
                (v >> 64) as u16,
                (v >> 48) as u16,
                v & 0xffff_ffff_ffff
            );
            assert_eq!(g.to_string(), expect);
            assert_eq!(expect.parse::<Guid>(), Ok(g));
        }
        // Width and alignment still apply.
        assert_eq!(format!("{:>38}|", Guid::from_u128(0)).len(), 39);
    }
}
