//! A fleet of tunnel gateways on one PostgreSQL database: the authorized peers by group
//! ([`db`]), each gateway's live copy of its group's list ([`gateway`]), and every
//! gateway's live sessions ([`census`]), and the TLS ticket keys they share ([`tickets`]).
//!
//! ```text
//!   sessionkey peers add|remove ──► PostgreSQL ──NOTIFY──► gateway 1, 2, 3 (LISTEN)
//!                                                           each: list in memory + cache file
//! ```
//!
//! docs/OPERATIONS.md, "A fleet of gateways", describes what is stored and the failure modes.

pub mod census;
pub mod db;
pub mod gateway;
pub mod tickets;

pub use db::{FleetDb, FleetError, PeerRecord, PeerSelector, DEFAULT_GROUP};
