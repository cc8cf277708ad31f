//! The Noise Protocol Framework, revision 34, with the HFS extension's `e1`/`ekem1` tokens.
//!
//! [`HandshakeState`], SymmetricState and [`CipherState`] follow sections 5.1-5.3
//! of the specification. Supported: DH 25519 (plus ML-KEM-768 for `hfs`); ciphers AESGCM and
//! ChaChaPoly; hashes SHA256 and BLAKE2s; patterns NN, NK, XX, IK, KK with any psk modifiers
//! the specification allows. Everything is sans-IO: messages are read from and written into
//! caller buffers, and randomness is an input.

mod handshake;
mod pattern;
mod symmetric;

pub use crate::crypto::hash::HashChoice;
pub use handshake::{HandshakeBuilder, HandshakeState, NoiseTransport, Split};
pub use pattern::{CipherChoice, NoiseParams, Pattern};
pub use symmetric::CipherState;

/// The largest Noise message (section 3).
pub const MAX_MESSAGE_LEN: usize = 65535;
