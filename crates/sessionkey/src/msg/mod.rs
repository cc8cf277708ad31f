//! The messaging client (docs/MESSAGING.md): a device's state kept encrypted at rest in a
//! local SQLite [`store`], the [`relay`] API client (signed requests over TLS to a pinned
//! relay, WebSocket push), and the [`client`] logic: send and receive through the Double
//! Ratchet of `sessionkey_proto::msg`, trust on first use per contact, safety numbers.
//!
//! [`api`] is the relay's HTTP/JSON API as data, shared with the relay (`sessionkey-relay`).

pub mod api;
pub mod client;
pub mod payload;
pub mod relay;
pub mod store;

pub use client::{ClientError, ContactInfo, InitReport, Messenger, Received, Verification};
