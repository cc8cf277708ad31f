//! Ed25519 signatures (RFC 8032) through aws-lc-rs, for the messaging identity keys.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::Error;

/// Length of an Ed25519 public key and of its private seed.
pub(crate) const ED25519_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key built from its 32-byte seed. aws-lc cleanses the key when freed.
pub(crate) struct SigningKey {
    pair: Ed25519KeyPair,
    public: [u8; ED25519_KEY_LEN],
}

impl SigningKey {
    pub(crate) fn from_seed(seed: &[u8; ED25519_KEY_LEN]) -> Result<Self, Error> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| Error::Crypto("Ed25519 seed rejected"))?;
        let public = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| Error::Crypto("Ed25519 public key of wrong length"))?;
        Ok(Self { pair, public })
    }

    pub(crate) fn public(&self) -> &[u8; ED25519_KEY_LEN] {
        &self.public
    }

    /// Sign `message`. Ed25519 signatures are deterministic (RFC 8032 5.1.6).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], Error> {
        let sig = self.pair.try_sign(message)?;
        sig.as_ref()
            .try_into()
            .map_err(|_| Error::Crypto("Ed25519 signature of wrong length"))
    }
}

/// Verify an Ed25519 signature; `false` for any failure, including a malformed key.
pub(crate) fn verify(public: &[u8; ED25519_KEY_LEN], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032 section 7.1, TEST 2.
    #[test]
    fn rfc8032_test_2() {
        let h = |s: &str| hex::decode(s).unwrap();
        let seed: [u8; 32] = h("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
            .try_into()
            .unwrap();
        let key = SigningKey::from_seed(&seed).unwrap();
        assert_eq!(
            key.public()[..],
            h("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")[..]
        );
        let sig = key.sign(&[0x72]).unwrap();
        assert_eq!(
            sig[..],
            h(
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
               085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
            )[..]
        );
        assert!(verify(key.public(), &[0x72], &sig));
        assert!(!verify(key.public(), &[0x73], &sig));
        assert!(!verify(key.public(), &[0x72], &sig[..63]));
    }
}
