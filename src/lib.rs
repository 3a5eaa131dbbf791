//! kmsd: a KMS host.
//!
//! * [`protocol`]: the sans-IO core (MS-RPC, KMS v4/v5/v6, crypto, catalog).
//! * [`server`]: the tokio shell (listeners, codec, connections, shutdown).
//! * [`store`]: count pools in memory over a durable SQLite store.
//! * [`client`]: the activation client behind `kmsd activate` and `kmsd load`.
//! * [`config`]: typed configuration with validation, the key table and
//!   the file/environment/flag layers.
pub mod app;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod report;
pub mod server;
pub mod store;
