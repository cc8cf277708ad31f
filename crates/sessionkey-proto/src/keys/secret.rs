//! Secret byte strings: zeroized on drop, never cloned, never printed.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret: a traffic secret, a chaining key, a split key.
///
/// Not `Clone`; `Debug` prints nothing of the value; the bytes are zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wrap secret bytes. The caller's copy should be zeroized by the caller.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes, for deriving keys from them. Never log or store them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A 32-byte pre-shared key for the Noise psk modifiers.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Psk([u8; 32]);

impl Psk {
    /// Wrap pre-shared key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let s = SecretKey::from_bytes([0xab; 32]);
        let p = Psk::from_bytes([0xcd; 32]);
        let text = format!("{s:?} {p:?}");
        assert!(!text.contains("ab") && !text.contains("171"), "{text}");
        assert!(!text.contains("cd") && !text.contains("205"), "{text}");
    }
}
