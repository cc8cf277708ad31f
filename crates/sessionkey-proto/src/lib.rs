//! # sessionkey-proto
//!
//! The sans-IO core of sessionkey: AEAD [`suite`]s with their usage limits, static
//! identities and key files ([`keys`]), the Noise Protocol Framework ([`noise`]) with hybrid
//! post-quantum tokens, and the native [`handshake`] (a clear header bound into the prologue,
//! and a responder policy). No sockets, no clock, no operating-system randomness: bytes,
//! time and randomness are inputs.
//!
//! A complete in-memory handshake, hybrid X25519 + ML-KEM-768 by default:
//!
//! ```
//! use std::sync::Arc;
//! use sessionkey_proto::crypto::SystemRandom;
//! use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
//! use sessionkey_proto::keys::Identity;
//! use sessionkey_proto::noise::Pattern;
//! use sessionkey_proto::suite::{OpeningKey, SealingKey, Suite};
//!
//! let server = Arc::new(Identity::generate(&mut SystemRandom)?);
//! let client = Arc::new(Identity::generate(&mut SystemRandom)?);
//! let header = Header { pattern: Pattern::XX, suite: Suite::ChaCha20Poly1305, hybrid: true, psk: false };
//!
//! let mut initiator = Initiator::new(header, Some(client), None, None)?;
//! let responder = Responder::new(Policy::default(), Some(server), None);
//! let (mut wire, mut payload) = (vec![0; 4096], vec![0; 4096]);
//! let n = initiator.write_hello(b"", &mut wire)?;
//! let (mut accepted, _) = responder.read_hello(&wire[..n], &mut payload)?;
//! let n = accepted.state.write_message(b"", &mut wire)?;
//! initiator.read_reply(&wire[..n], &mut payload)?;
//! let n = initiator.state.write_message(b"", &mut wire)?;
//! accepted.state.read_message(&wire[..n], &mut payload)?;
//!
//! let client_keys = initiator.state.split()?;
//! let server_keys = accepted.state.split()?;
//! let mut seal = SealingKey::new(header.suite, &client_keys.initiator_to_responder)?;
//! let mut open = OpeningKey::new(header.suite, &server_keys.initiator_to_responder)?;
//! let mut record = b"attack at dawn".to_vec();
//! let tag = seal.seal_in_place(&[], &mut record)?;
//! record.extend_from_slice(&tag);
//! assert_eq!(open.open_in_place(&[], &mut record)?, b"attack at dawn");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod crypto;
mod error;
pub mod handshake;
pub mod keys;
pub mod msg;
pub mod noise;
#[cfg(test)]
mod own_vectors;
pub mod record;
pub mod replay;
pub mod session;
pub mod suite;
#[cfg(test)]
mod test_support;
pub mod vpn;

pub use error::{ApiMisuse, DisplayPath, Error, KeyFileProblem, Limit, PeerMisbehaved, Timeout};
pub use keys::Fingerprint;

/// The fingerprint people compare for a session: both peers derive the same one from the
/// handshake hash (docs/PROTOCOL.md, "Session fingerprint").
pub fn session_fingerprint(handshake_hash: &[u8; 32]) -> Fingerprint {
    Fingerprint::of_session(handshake_hash)
}
