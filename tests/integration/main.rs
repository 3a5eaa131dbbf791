//! The integration tests: one binary (one link step) with a module per
//! area. `common` holds the helpers they share: the captured vectors, PDU
//! splitting on the core's own `pdu_len`, hosts started through `App` or
//! as the real binary, loopback source spreading.

mod common;

mod config;
mod counting;
mod dns;
mod durability;
mod failover;
mod faults;
mod fleet;
mod framing;
mod hardening;
mod hostile;
mod http_ui;
mod licenses;
mod lifecycle;
mod load_report;
mod loopback;
mod probe;
mod proptests;
mod soak;
mod upkeep;
mod vectors;
mod vlmcs_interop;
