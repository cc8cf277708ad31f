//! # sessionkey
//!
//! Fresh, short-lived session keys for byte streams, tunnels and VPNs, on tokio.
//! [`SecureStream`] runs the sans-IO core ([`proto`]) over any `AsyncRead + AsyncWrite`
//! transport; [`tls`] offers the same tunnels over standard TLS 1.3.

pub mod admission;
pub mod check;
mod error;
pub mod metrics;
pub mod msg;
pub mod psk;
pub mod status;
mod stream;
pub mod tls;
pub mod trust;
pub mod tunnel;
pub mod vpn;

pub use error::protocol_error;
pub use sessionkey_proto as proto;
pub use stream::{RotationHandle, SecureStream, StatusCell};
