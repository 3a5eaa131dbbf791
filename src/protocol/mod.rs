//! The sans-IO protocol core: bytes to messages to bytes.
//!
//! Nothing here touches a socket, a file, the clock or the OS random source:
//! `now` and the RNG are always passed in, so every exchange is reproducible.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod client;
pub mod crypto;
pub mod guid;
pub mod hex;
pub mod kms;
pub mod policy;
pub mod rpc;
pub mod server;
pub mod wire;
