//! The activation client behind `kmsd activate` and `kmsd load`: binds like a
//! Windows client, sends activation requests and verifies every response
//! with all the checks of SPEC §4.5.

pub mod exchange;
pub mod load;

pub use exchange::{ClientError, ClientOptions, Connection, Exchange, activate};
