//! KMS activation requests: the 236-byte base (SPEC §3.2) and its protocol 4,
//! 5 and 6 envelopes (§3.4–3.6), decoded and verified for the host, encoded
//! for the client.

use super::KmsError;
use crate::protocol::crypto::{self, cbc};
use crate::protocol::guid::Guid;
use crate::protocol::wire::Reader;

/// Size of the request base every version carries.
pub const BASE_LEN: usize = 236;
/// A protocol 4 request: base + MAC.
pub const V4_LEN: usize = BASE_LEN + 16;
/// A protocol 5/6 request: version + IV + encrypted (base + 4 pad bytes).
pub const V5_V6_LEN: usize = 4 + 16 + BASE_LEN + 4;
/// Workstation name field size (64 UTF-16 code units).
pub const WORKSTATION_LEN: usize = 128;

/// A KMS protocol version the host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V4,
    V5,
    V6,
}

impl Version {
    pub const ALL: [Self; 3] = [Self::V4, Self::V5, Self::V6];

    pub const fn major(self) -> u16 {
        match self {
            Self::V4 => 4,
            Self::V5 => 5,
            Self::V6 => 6,
        }
    }

    /// The version for `major.minor`, if it is one of 4.0, 5.0, 6.0.
    pub const fn from_wire(major: u16, minor: u16) -> Option<Self> {
        match (major, minor) {
            (4, 0) => Some(Self::V4),
            (5, 0) => Some(Self::V5),
            (6, 0) => Some(Self::V6),
            _ => None,
        }
    }

    /// The first four bytes of a message: minor then major, little-endian.
    pub const fn wire(self) -> [u8; 4] {
        [0, 0, self.major() as u8, 0]
    }

    /// Size of a well-formed request of this version.
    pub const fn request_len(self) -> usize {
        match self {
            Self::V4 => V4_LEN,
            Self::V5 | Self::V6 => V5_V6_LEN,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.0", self.major())
    }
}

/// The workstation name as sent: UTF-16LE, NUL-terminated, in 128 bytes.
/// Bytes after the terminator are kept but carry no meaning.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Workstation(pub [u8; WORKSTATION_LEN]);

impl Workstation {
    /// Encodes `name`; it must fit 63 UTF-16 code units (one is the NUL).
    pub fn new(name: &str) -> Result<Self, KmsError> {
        let mut raw = [0u8; WORKSTATION_LEN];
        let units: Vec<u16> = name.encode_utf16().collect();
        if units.len() >= WORKSTATION_LEN / 2 || units.contains(&0) {
            return Err(KmsError::WorkstationName);
        }
        for (dst, u) in raw.chunks_exact_mut(2).zip(units) {
            dst.copy_from_slice(&u.to_le_bytes());
        }
        Ok(Self(raw))
    }

    /// The name up to the first NUL, with unpaired surrogates replaced.
    pub fn name(&self) -> String {
        let units = self
            .0
            .chunks_exact(2)
            .map(|c| {
                u16::from_le_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ])
            })
            .take_while(|&u| u != 0);
        char::decode_utf16(units)
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }
}

impl std::fmt::Debug for Workstation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.name())
    }
}

/// The request base: what the client says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBase {
    pub version: Version,
    /// 1 when the client runs in a virtual machine.
    pub vm_info: u32,
    /// 0 unlicensed, 1 licensed, 2 OOB grace, 3 OOT grace, 4 non-genuine grace,
    /// 5 notification, 6 extended grace.
    pub license_status: u32,
    /// Minutes left in the client's current license state.
    pub binding_expiration: u32,
    pub app_id: Guid,
    pub sku_id: Guid,
    pub kms_id: Guid,
    pub cmid: Guid,
    /// The count the client needs to activate (25 client OS, 5 server, 5 Office).
    pub n_policy: u32,
    /// FILETIME of the client clock.
    pub client_time: u64,
    pub previous_cmid: Guid,
    pub workstation: Workstation,
}

impl RequestBase {
    /// Decodes the 236-byte base; the version must be one of 4.0/5.0/6.0.
    pub fn decode(bytes: &[u8]) -> Result<Self, KmsError> {
        let mut r = Reader::new(bytes);
        let truncated = |_| KmsError::TooShort {
            len: bytes.len(),
            min: BASE_LEN,
        };
        let minor = r.u16().map_err(truncated)?;
        let major = r.u16().map_err(truncated)?;
        let version = Version::from_wire(major, minor)
            .ok_or(KmsError::UnsupportedVersion { major, minor })?;
        Ok(Self {
            version,
            vm_info: r.u32().map_err(truncated)?,
            license_status: r.u32().map_err(truncated)?,
            binding_expiration: r.u32().map_err(truncated)?,
            app_id: r.guid().map_err(truncated)?,
            sku_id: r.guid().map_err(truncated)?,
            kms_id: r.guid().map_err(truncated)?,
            cmid: r.guid().map_err(truncated)?,
            n_policy: r.u32().map_err(truncated)?,
            client_time: r.u64().map_err(truncated)?,
            previous_cmid: r.guid().map_err(truncated)?,
            workstation: Workstation(r.array().map_err(truncated)?),
        })
    }

    /// The 236 wire bytes.
    pub fn encode(&self) -> [u8; BASE_LEN] {
        let mut out = Vec::with_capacity(BASE_LEN);
        out.extend_from_slice(&self.version.wire());
        for v in [self.vm_info, self.license_status, self.binding_expiration] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for g in [self.app_id, self.sku_id, self.kms_id, self.cmid] {
            out.extend_from_slice(g.as_bytes());
        }
        out.extend_from_slice(&self.n_policy.to_le_bytes());
        out.extend_from_slice(&self.client_time.to_le_bytes());
        out.extend_from_slice(self.previous_cmid.as_bytes());
        out.extend_from_slice(&self.workstation.0);
        let mut a = [0u8; BASE_LEN];
        a.copy_from_slice(&out);
        a
    }
}

/// A request the host has decoded and verified, with what the response needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub base: RequestBase,
    /// The request IV (v5/v6; zero for v4).
    pub iv: [u8; 16],
    /// The raw block decryption of the request IV (v5/v6; zero for v4).
    pub decrypted_iv: [u8; 16],
}

impl Request {
    pub fn version(&self) -> Version {
        self.base.version
    }
}

fn cipher_for(version: Version) -> &'static crypto::Rijndael {
    match version {
        Version::V6 => crypto::aes6(),
        Version::V4 | Version::V5 => crypto::aes5(),
    }
}

/// Decodes and verifies a KMS request as a host receives it: the version,
/// the length, and the integrity check of that version (the v4 MAC; the v5/v6
/// padding and inner version).
pub fn decode_request(bytes: &[u8]) -> Result<Request, KmsError> {
    let mut r = Reader::new(bytes);
    let short = |min| KmsError::TooShort {
        len: bytes.len(),
        min,
    };
    let minor = r.u16().map_err(|_| short(V4_LEN))?;
    let major = r.u16().map_err(|_| short(V4_LEN))?;
    let version =
        Version::from_wire(major, minor).ok_or(KmsError::UnsupportedVersion { major, minor })?;
    let need = version.request_len();
    // Longer messages are tolerated (Windows hosts and vlmcsd do); only the
    // declared layout is read.
    let msg = bytes.get(..need).ok_or(short(need))?;
    match version {
        Version::V4 => {
            let (base, mac) = msg.split_at(BASE_LEN);
            if crypto::v4_mac(base) != mac {
                return Err(KmsError::BadMac);
            }
            Ok(Request {
                base: RequestBase::decode(base)?,
                iv: [0; 16],
                decrypted_iv: [0; 16],
            })
        }
        Version::V5 | Version::V6 => {
            let mut r = Reader::new(msg);
            r.skip(4).map_err(|_| short(need))?;
            let iv: [u8; 16] = r.array().map_err(|_| short(need))?;
            let mut plain = [0u8; BASE_LEN + 4];
            plain.copy_from_slice(r.rest());
            let cipher = cipher_for(version);
            cbc::decrypt(cipher, &iv, &mut plain).map_err(|_| KmsError::BadPadding)?;
            if cbc::unpadded_len(&plain) != Ok(BASE_LEN) {
                return Err(KmsError::BadPadding);
            }
            let base = RequestBase::decode(plain.get(..BASE_LEN).unwrap_or(&[]))?;
            if base.version != version {
                return Err(KmsError::InnerVersionMismatch {
                    outer: version.major(),
                    inner: base.version.major(),
                });
            }
            let mut decrypted_iv = iv;
            cipher.decrypt_block(&mut decrypted_iv);
            Ok(Request {
                base,
                iv,
                decrypted_iv,
            })
        }
    }
}

/// What a client must remember of its request to verify the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentRequest {
    pub base: RequestBase,
    pub iv: [u8; 16],
    pub decrypted_iv: [u8; 16],
}

/// Encodes a request as a client sends it; `iv` is used by v5/v6 only.
pub fn encode_request(base: &RequestBase, iv: [u8; 16]) -> (Vec<u8>, SentRequest) {
    let plain = base.encode();
    let version = base.version;
    match version {
        Version::V4 => {
            let mut out = Vec::with_capacity(V4_LEN);
            out.extend_from_slice(&plain);
            out.extend_from_slice(&crypto::v4_mac(&plain));
            let sent = SentRequest {
                base: *base,
                iv: [0; 16],
                decrypted_iv: [0; 16],
            };
            (out, sent)
        }
        Version::V5 | Version::V6 => {
            let cipher = cipher_for(version);
            let mut out = Vec::with_capacity(V5_V6_LEN);
            out.extend_from_slice(&version.wire());
            out.extend_from_slice(&iv);
            out.extend_from_slice(&plain);
            cbc::pad(&mut out, 20);
            if let Some(body) = out.get_mut(20..) {
                cbc::encrypt(cipher, &iv, body);
            }
            let mut decrypted_iv = iv;
            cipher.decrypt_block(&mut decrypted_iv);
            let sent = SentRequest {
                base: *base,
                iv,
                decrypted_iv,
            };
            (out, sent)
        }
    }
}
