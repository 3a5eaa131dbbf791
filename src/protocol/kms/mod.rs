//! KMS activation messages (protocol 4.0, 5.0, 6.0) and the product catalog.

pub mod epid;
pub mod products;
pub mod request;
pub mod response;

pub use request::{
    Request, RequestBase, SentRequest, Version, Workstation, decode_request, encode_request,
};
pub use response::{
    Answer, Epid, INTERVAL_RANGE, ResponseRandom, VerifiedResponse, encode_response,
    verify_response,
};

/// HRESULTs a KMS host returns in place of a response.
pub mod hresult {
    /// HRESULT_FROM_WIN32(ERROR_INVALID_DATA): malformed or unsupported request.
    pub const INVALID_DATA: u32 = 0x8007_000D;
    /// SL_E_VL_KEY_MANAGEMENT_SERVICE_ID_MISMATCH: product not served by this host.
    pub const KMS_ID_MISMATCH: u32 = 0xC004_F042;
    /// The client clock is too far from the host's (SL_E_VL_BINDING_SERVICE_...
    /// "time-based activation window").
    pub const TIME_SKEW: u32 = 0xC004_F06C;
    /// E_FAIL: the host could not complete the request (e.g. its store
    /// failed); the client keeps its state and retries later.
    pub const FAIL: u32 = 0x8000_4005;
}

/// The result of a request as the host recorded it: 0 for an answer, else
/// the HRESULT sent in its place. One naming everywhere (CLI, page, API):
/// `answered`, or the code as `0x%08X`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hresult(pub u32);

impl Hresult {
    pub const ANSWERED: Hresult = Hresult(0);

    pub fn is_answered(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Hresult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_answered() {
            f.write_str("answered")
        } else {
            write!(f, "0x{:08X}", self.0)
        }
    }
}

impl serde::Serialize for Hresult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why the host refused a KMS request (each maps to an HRESULT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error("KMS message of {len} bytes is shorter than the {min} its version needs")]
    TooShort { len: usize, min: usize },
    #[error("unsupported KMS protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("outer version {outer} differs from the encrypted version {inner}")]
    InnerVersionMismatch { outer: u16, inner: u16 },
    #[error("protocol 4 request MAC does not verify")]
    BadMac,
    #[error("decrypted request has invalid padding (wrong key or tampered)")]
    BadPadding,
    #[error("workstation name does not fit 63 UTF-16 code units")]
    WorkstationName,
    #[error("ePID {0:?} is not 1 to 63 printable ASCII characters")]
    InvalidEpid(String),
}

#[cfg(test)]
mod hresult_tests {
    use super::Hresult;

    #[test]
    fn results_are_named_or_hex() {
        assert_eq!(Hresult(0).to_string(), "answered");
        assert_eq!(Hresult(0xC004_F042).to_string(), "0xC004F042");
        assert_eq!(Hresult(0x8007_000D).to_string(), "0x8007000D");
    }
}

impl KmsError {
    /// The HRESULT a host returns for this refusal.
    pub fn hresult(&self) -> u32 {
        hresult::INVALID_DATA
    }
}

/// Why a client rejected a response (SPEC §4.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("response is truncated")]
    Truncated,
    #[error("protocol versions of request and response do not match")]
    VersionMismatch,
    #[error("decryption of the response failed (bad padding)")]
    Decryption,
    #[error("IVs of request and response do not match")]
    IvMismatch,
    #[error("response reuses the request IV under protocol 6 (an emulator's mistake)")]
    EmulatorIv,
    #[error("ePID length {0} is not valid")]
    PidLength(usize),
    #[error("MAC or hash in the response does not verify")]
    Integrity,
    #[error("HMAC of the response is incorrect")]
    Hmac,
    #[error("client machine IDs of request and response do not match")]
    CmidMismatch,
    #[error("time stamps of request and response do not match")]
    TimeMismatch,
    #[error("response is {got} bytes, expected {expected}")]
    Size { expected: usize, got: usize },
}
