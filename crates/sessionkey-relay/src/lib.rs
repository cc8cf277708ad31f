//! The sessionkey relay: an untrusted store-and-forward server for end-to-end encrypted
//! messages (docs/MESSAGING.md, "Relay API" and "Relay storage").
//!
//! It stores devices' public keys and opaque envelopes, hands out each one-time prekey once,
//! authenticates every request by a signature of the device's identity key, rate-limits
//! bundle requests, pushes over WebSocket (long-poll as fallback), expires what is not fetched
//! in 30 days, and logs counts, never bodies. Storage is SQLite (one process) or PostgreSQL
//! (several processes, one population) through one code path.

pub mod ratelimit;
pub mod server;
pub mod storage;

pub use server::{serve, RelayConfig, RunningRelay};
pub use storage::{Backend, Storage, StorageError};
