//! # sessionkey
//!
//! Fresh, short-lived session keys for byte streams, tunnels and VPNs. This crate will hold
//! the tokio layer (secure streams, tunnels, the VPN); today it re-exports the sans-IO
//! protocol core, [`proto`], on which everything is built.

pub use sessionkey_proto as proto;
