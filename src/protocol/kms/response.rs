//! KMS activation responses (SPEC §3.3–3.6, §4.3): built by the host,
//! verified by the client with every check of §4.5.

use super::request::{Request, SentRequest, Version};
use super::{KmsError, VerifyError};
use crate::protocol::crypto::{self, cbc};
use crate::protocol::guid::Guid;
use crate::protocol::wire::Reader;
use sha2::{Digest, Sha256};

/// Most bytes the ePID field may take, its NUL included (clients check this).
pub const MAX_PID_SIZE: usize = 128;

/// A host ePID, validated once and kept in its wire form.
#[derive(Clone, PartialEq, Eq)]
pub struct Epid {
    text: String,
    /// UTF-16LE with the terminating NUL.
    wire: Vec<u8>,
}

impl Epid {
    /// Accepts printable ASCII of 1 to 63 characters.
    pub fn new(text: &str) -> Result<Self, KmsError> {
        let ok = !text.is_empty()
            && (text.len() + 1) * 2 <= MAX_PID_SIZE
            && text.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(KmsError::InvalidEpid(text.to_owned()));
        }
        let mut wire = Vec::with_capacity((text.len() + 1) * 2);
        for u in text.encode_utf16().chain([0]) {
            wire.extend_from_slice(&u.to_le_bytes());
        }
        Ok(Self {
            text: text.to_owned(),
            wire,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The KmsPID field: UTF-16LE plus one NUL code unit.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

impl std::fmt::Display for Epid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Debug for Epid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// The shortest and longest activation and renewal intervals (minutes) a
/// response may carry: what Windows accepts from a host (`slmgr /sai`,
/// `/sri`: 15 minutes to 30 days). The host's settings are checked against
/// it, and `kmsd probe` grades the intervals a host answers with it.
pub const INTERVAL_RANGE: std::ops::RangeInclusive<u32> = 15..=43_200;

/// What the host decided to answer.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub epid: &'a Epid,
    /// Host hardware ID (sent by protocol 6 only).
    pub hwid: [u8; 8],
    pub count: u32,
    /// Minutes between retries while not activated.
    pub activation_interval: u32,
    /// Minutes between renewals once activated.
    pub renewal_interval: u32,
}

/// The host's random inputs to one response (v5 uses `salt`, v6 both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseRandom {
    /// Hashed with SHA-256 and sent XORed with D(request IV).
    pub salt: [u8; 16],
    /// v6: the plaintext whose encryption is the response IV.
    pub iv_seed: [u8; 16],
}

impl ResponseRandom {
    pub fn draw(rng: &mut impl rand::CryptoRng) -> Self {
        let mut r = Self {
            salt: [0; 16],
            iv_seed: [0; 16],
        };
        rng.fill_bytes(&mut r.salt);
        rng.fill_bytes(&mut r.iv_seed);
        r
    }
}

/// Exact size of the response to `version` with an ePID of `pid_size` bytes.
pub const fn response_len(version: Version, pid_size: usize) -> usize {
    let base = 44 + pid_size;
    match version {
        Version::V4 => base + 16,
        // version + IV + PKCS#7(base + salt^D(IV) + hash [+ hwid + D(IV) + hmac])
        Version::V5 => 20 + (base + 48) / 16 * 16 + 16,
        Version::V6 => 20 + (base + 48 + 40) / 16 * 16 + 16,
    }
}

fn put_base(out: &mut Vec<u8>, version: Version, cmid: &Guid, client_time: u64, a: &Answer<'_>) {
    out.extend_from_slice(&version.wire());
    out.extend_from_slice(&(a.epid.wire().len() as u32).to_le_bytes());
    out.extend_from_slice(a.epid.wire());
    out.extend_from_slice(cmid.as_bytes());
    out.extend_from_slice(&client_time.to_le_bytes());
    out.extend_from_slice(&a.count.to_le_bytes());
    out.extend_from_slice(&a.activation_interval.to_le_bytes());
    out.extend_from_slice(&a.renewal_interval.to_le_bytes());
}

fn xor16(a: &[u8; 16], b: &[u8; 16]) -> [u8; 16] {
    let mut o = *a;
    o.iter_mut().zip(b).for_each(|(x, y)| *x ^= y);
    o
}

/// Appends the KMS response to `req` to `out`.
pub fn encode_response(req: &Request, a: &Answer<'_>, rnd: &ResponseRandom, out: &mut Vec<u8>) {
    let version = req.version();
    let b = &req.base;
    let start = out.len();
    out.reserve(response_len(version, a.epid.wire().len()));
    match version {
        Version::V4 => {
            put_base(out, version, &b.cmid, b.client_time, a);
            let mac = crypto::v4_mac(out.get(start..).unwrap_or(&[]));
            out.extend_from_slice(&mac);
        }
        Version::V5 | Version::V6 => {
            out.extend_from_slice(&version.wire());
            let iv = if version == Version::V5 {
                req.iv
            } else {
                let mut w = rnd.iv_seed;
                crypto::aes6().encrypt_block(&mut w);
                w
            };
            out.extend_from_slice(&iv);
            let body = out.len();
            put_base(out, version, &b.cmid, b.client_time, a);
            out.extend_from_slice(&xor16(&rnd.salt, &req.decrypted_iv));
            out.extend_from_slice(&Sha256::digest(rnd.salt));
            let cipher = if version == Version::V5 {
                crypto::aes5()
            } else {
                out.extend_from_slice(&a.hwid);
                out.extend_from_slice(&req.decrypted_iv);
                let key = crypto::v6_hmac_key(b.client_time, 0);
                let mac = crypto::v6_hmac(&key, &[&rnd.iv_seed, out.get(body..).unwrap_or(&[])]);
                out.extend_from_slice(&mac);
                crypto::aes6()
            };
            cbc::pad(out, body);
            if let Some(plain) = out.get_mut(body..) {
                cbc::encrypt(cipher, &iv, plain);
            }
        }
    }
}

/// A response that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedResponse {
    pub version: Version,
    pub epid: String,
    pub cmid: Guid,
    pub client_time: u64,
    pub count: u32,
    pub activation_interval: u32,
    pub renewal_interval: u32,
    /// Host hardware ID (protocol 6 only).
    pub hwid: Option<[u8; 8]>,
}

struct ParsedBase {
    version: (u16, u16),
    epid: String,
    cmid: Guid,
    client_time: u64,
    count: u32,
    activation_interval: u32,
    renewal_interval: u32,
    len: usize,
}

fn parse_base(bytes: &[u8]) -> Result<ParsedBase, VerifyError> {
    let mut r = Reader::new(bytes);
    let t = |_| VerifyError::Truncated;
    let minor = r.u16().map_err(t)?;
    let major = r.u16().map_err(t)?;
    let pid_size = r.u32().map_err(t)? as usize;
    if !(2..=MAX_PID_SIZE).contains(&pid_size) || !pid_size.is_multiple_of(2) {
        return Err(VerifyError::PidLength(pid_size));
    }
    let pid = r.take(pid_size).map_err(t)?;
    let units: Vec<u16> = pid
        .chunks_exact(2)
        .map(|c| {
            u16::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .collect();
    // Exactly one NUL, at the end.
    if units.iter().position(|&u| u == 0) != Some(units.len() - 1) {
        return Err(VerifyError::PidLength(pid_size));
    }
    let epid = String::from_utf16_lossy(units.get(..units.len() - 1).unwrap_or(&[]));
    Ok(ParsedBase {
        version: (major, minor),
        epid,
        cmid: r.guid().map_err(t)?,
        client_time: r.u64().map_err(t)?,
        count: r.u32().map_err(t)?,
        activation_interval: r.u32().map_err(t)?,
        renewal_interval: r.u32().map_err(t)?,
        len: r.position(),
    })
}

fn read16(r: &mut Reader<'_>) -> Result<[u8; 16], VerifyError> {
    r.array().map_err(|_| VerifyError::Truncated)
}

/// Verifies a response to `sent` the way a Windows client (and vlmcs) does.
pub fn verify_response(sent: &SentRequest, bytes: &[u8]) -> Result<VerifiedResponse, VerifyError> {
    let version = sent.base.version;
    let mut outer = Reader::new(bytes);
    let minor = outer.u16().map_err(|_| VerifyError::Truncated)?;
    let major = outer.u16().map_err(|_| VerifyError::Truncated)?;
    if (major, minor) != (version.major(), 0) {
        return Err(VerifyError::VersionMismatch);
    }
    let mut hwid = None;
    let (base, expected_len) = match version {
        Version::V4 => {
            let base = parse_base(bytes)?;
            let mac = bytes
                .get(base.len..base.len + 16)
                .ok_or(VerifyError::Truncated)?;
            if crypto::v4_mac(bytes.get(..base.len).unwrap_or(&[])) != mac {
                return Err(VerifyError::Integrity);
            }
            let n = base.len + 16;
            (base, n)
        }
        Version::V5 | Version::V6 => {
            let iv = read16(&mut outer)?;
            let mut plain = outer.rest().to_vec();
            let cipher = if version == Version::V5 {
                if iv != sent.iv {
                    return Err(VerifyError::IvMismatch);
                }
                crypto::aes5()
            } else {
                if iv == sent.iv {
                    return Err(VerifyError::EmulatorIv);
                }
                crypto::aes6()
            };
            cbc::decrypt(cipher, &iv, &mut plain).map_err(|_| VerifyError::Decryption)?;
            let len = cbc::unpadded_len(&plain).map_err(|_| VerifyError::Decryption)?;
            let plain = plain.get(..len).unwrap_or(&[]);
            let base = parse_base(plain)?;
            let mut r = Reader::new(plain);
            r.skip(base.len).map_err(|_| VerifyError::Truncated)?;
            let salt = xor16(&read16(&mut r)?, &sent.decrypted_iv);
            let hash: [u8; 32] = r.array().map_err(|_| VerifyError::Truncated)?;
            if Sha256::digest(salt).as_slice() != hash {
                return Err(VerifyError::Integrity);
            }
            if version == Version::V6 {
                hwid = Some(r.array().map_err(|_| VerifyError::Truncated)?);
                if read16(&mut r)? != sent.decrypted_iv {
                    return Err(VerifyError::IvMismatch);
                }
                let signed = plain.get(..r.position()).unwrap_or(&[]);
                let mac = read16(&mut r)?;
                let mut seed = iv;
                cipher.decrypt_block(&mut seed);
                let ok = [0, -1, 1].iter().any(|&t| {
                    crypto::v6_hmac(&crypto::v6_hmac_key(base.client_time, t), &[&seed, signed])
                        == mac
                });
                if !ok {
                    return Err(VerifyError::Hmac);
                }
            }
            if r.remaining() != 0 {
                return Err(VerifyError::Size {
                    expected: 20 + r.position(),
                    got: 20 + plain.len(),
                });
            }
            let n = response_len(version, base.len - 44);
            (base, n)
        }
    };
    if bytes.len() != expected_len {
        return Err(VerifyError::Size {
            expected: expected_len,
            got: bytes.len(),
        });
    }
    if base.version != (version.major(), 0) {
        return Err(VerifyError::VersionMismatch);
    }
    if base.cmid != sent.base.cmid {
        return Err(VerifyError::CmidMismatch);
    }
    if base.client_time != sent.base.client_time {
        return Err(VerifyError::TimeMismatch);
    }
    Ok(VerifiedResponse {
        version,
        epid: base.epid,
        cmid: base.cmid,
        client_time: base.client_time,
        count: base.count,
        activation_interval: base.activation_interval,
        renewal_interval: base.renewal_interval,
        hwid,
    })
}
