//! The provider boundary: every primitive the core uses, on aws-lc-rs (and RustCrypto's
//! BLAKE2s, which aws-lc-rs does not have). Nothing here is hand-written cryptography; these
//! modules only adapt the providers' APIs to the core's types and errors.

pub(crate) mod aead;
pub(crate) mod dh;
pub(crate) mod hash;
pub(crate) mod kem;
#[cfg(test)]
mod kem_vectors;
#[cfg(feature = "legacy-ciphers")]
pub mod legacy;
pub(crate) mod sig;

use crate::Error;

/// A source of cryptographically secure random bytes.
///
/// The core never reaches for an operating-system source itself: randomness is an input, so
/// tests can replay published vectors with fixed ephemeral keys. aws-lc-rs's own
/// `SecureRandom` trait is sealed, hence this one (as rustls's `CryptoProvider` does).
pub trait SecureRandom: Send {
    /// Fill `dest` entirely with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error>;
}

/// The system's cryptographically secure generator, through aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl SecureRandom for SystemRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        aws_lc_rs::rand::fill(dest).map_err(|_| Error::Crypto("system random source failed"))
    }
}
