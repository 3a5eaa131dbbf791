//! The activation client behind `kmsd activate`, `kmsd load` and the
//! `/healthz` KMS probe. The protocol is the sans-IO core in
//! [`crate::protocol::client`] (bind, alter_context, requests, every check
//! of SPEC §4.5); this module only drives it over TCP ([`exchange::Link`])
//! and resolves targets ([`target`]).

pub mod exchange;
pub mod load;
pub mod target;

pub use exchange::{
    ClientError, ClientOptions, Connection, Exchange, Link, Stage, activate, connect, filetime_now,
};
pub use target::{ResolveError, Target, resolve, resolve_all};

#[cfg(test)]
mod replay;
