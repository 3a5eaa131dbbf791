//! Connection-oriented MS-RPC (DCE/RPC over TCP) as KMS uses it: the common
//! header, bind/alter_context negotiation, and the request/response/fault
//! PDUs carrying the one `RequestActivation` operation.

pub mod bind;
pub mod pdu;
pub mod request;
pub mod session;

use crate::protocol::guid::Guid;

/// The KMS RPC interface (abstract syntax), version 1.0.
pub const KMS_INTERFACE: Guid = Guid::from_u128(0x51c82175_844e_4750_b0d8_ec255555bc06);
/// NDR 2.0 (32-bit) transfer syntax, version 2.
pub const NDR32: Guid = Guid::from_u128(0x8a885d04_1ceb_11c9_9fe8_08002b104860);
/// NDR64 transfer syntax, version 1.
pub const NDR64: Guid = Guid::from_u128(0x71710533_beba_4937_8319_b5dbef9ccc36);
/// First 8 wire bytes of a bind-time feature negotiation "syntax"; bytes 8–9
/// carry the requested feature bits.
pub const BTFN_PREFIX: [u8; 8] = [0x2c, 0x1c, 0xb7, 0x6c, 0x12, 0x98, 0x40, 0x45];

/// A transfer syntax the host can marshal the KMS call in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syntax {
    Ndr32,
    Ndr64,
}

impl Syntax {
    pub const fn guid(self) -> Guid {
        match self {
            Self::Ndr32 => NDR32,
            Self::Ndr64 => NDR64,
        }
    }

    pub const fn version(self) -> u32 {
        match self {
            Self::Ndr32 => 2,
            Self::Ndr64 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ndr32 => "NDR32",
            Self::Ndr64 => "NDR64",
        }
    }
}

/// Fault status codes (MS-RPCE / DCE nca_* values).
pub mod status {
    /// Unknown or not-accepted presentation context.
    pub const UNKNOWN_INTERFACE: u32 = 0x1c01_0003;
    /// Operation number out of range.
    pub const OP_RANGE_ERROR: u32 = 0x1c01_0002;
    /// Protocol error (a PDU the host does not accept in this form).
    pub const PROTOCOL_ERROR: u32 = 0x1c01_000b;
    /// The stub data could not be unmarshalled (RPC_X_BAD_STUB_DATA).
    pub const BAD_STUB_DATA: u32 = 0x0000_06f7;
}
