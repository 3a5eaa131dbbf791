//! kmsd: a KMS host.
//!
//! * [`protocol`]: the sans-IO core (MS-RPC, KMS v4/v5/v6, crypto, catalog).
//! * [`server`]: the tokio shell (listeners, connections, shutdown).
//! * [`codec`]: frames MS-RPC PDUs on a TCP stream, for host and client.
//! * [`store`]: count pools in memory over a durable SQLite store.
//! * [`client`]: the activation client behind `kmsd activate`, `kmsd load` and
//!   the `/healthz` KMS probe (one tokio driver over [`protocol::client`]).
//! * [`config`]: typed configuration with validation, the key table and
//!   the file/environment/flag layers.
//! * [`probe`]: `kmsd probe`, grading any KMS host against a Windows one.
//! * [`dns`]: SRV publication by dynamic update (RFC 2136 + TSIG) and
//!   discovery (RFC 2782).
//! * [`docs`]: man pages and shell completions from the clap definitions.
pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod codec;
pub mod commands;
pub mod config;
pub mod dns;
pub mod docs;
pub mod host;
pub mod http;
pub mod licenses;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod protocol;
pub mod report;
pub mod server;
pub mod store;
pub mod term;
