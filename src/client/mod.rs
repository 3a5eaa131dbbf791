//! The activation client behind `kmsd activate`, `kmsd load`, `kmsd probe`
//! and the `/healthz` KMS probe. The protocol is the sans-IO core in
//! [`crate::protocol::client`] (bind, alter_context, requests, every check
//! of SPEC §4.5); this module builds the requests ([`request`]), drives the
//! core over TCP ([`exchange::Link`]), resolves targets under the
//! `--allow-remote` rule ([`target`]) and finds hosts by DNS ([`discover`]).

pub mod discover;
pub mod exchange;
pub mod load;
pub mod request;
pub mod target;

pub use exchange::{
    ClientError, ClientOptions, Connection, Exchange, Link, Stage, activate, connect, filetime_now,
};
pub use request::{ProductRequest, RequestError};
pub use target::{
    NotLoopback, ResolveError, Target, TargetError, check_remote, is_loopback, resolve,
    resolve_all, resolve_allowed,
};

#[cfg(test)]
mod replay;
