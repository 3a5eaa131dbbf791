//! kmsd: a KMS host.
pub mod protocol;
