//! The key schedule as pure functions (docs/MESSAGING.md, "Key schedule").
//!
//! Everything here is a deterministic function of its inputs, so an independent
//! implementation can check it byte for byte (tests/msg_vectors/gen.py):
//!
//! - setup: `SK = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS,
//!   info = "sessionkey-msg-v1 PQXDH X25519 SHA-256 ML-KEM-768", 32)`, the first root key
//!   ([`pqxdh_root_key`]);
//! - root chain: `RK', CK = HKDF-SHA256(salt = RK, ikm = DH output,
//!   info = "sessionkey-msg-v1 root ratchet", 64)` ([`RootKey::ratchet`]);
//! - message chains: `MK = HMAC-SHA256(CK, 0x01)`, `CK' = HMAC-SHA256(CK, 0x02)`
//!   ([`ChainKey::step`]);
//! - message keys: `key || nonce = HKDF-SHA256(salt = 0^32, ikm = MK,
//!   info = "sessionkey-msg-v1 message key" || suite id, key length + 12)`
//!   ([`MessageKey::aead_key_and_nonce`]);
//! - associated data: [`associated_data`] (identities, addresses, base key, KEM prekey and
//!   ciphertext), hashed once per session ([`ad_hash`]); each message
//!   authenticates `ad_hash || header`.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use super::keys::{encode_key, Address, IdentityKey, KeyType};
use super::MsgError;
use crate::crypto::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::crypto::hash::{hkdf_sha256, hmac_sha256, sha256};
use crate::crypto::kem::{CIPHERTEXT_LEN, PUBLIC_LEN};
use crate::suite::Suite;

/// HKDF info of the setup's key derivation.
pub const PQXDH_INFO: &[u8] = b"sessionkey-msg-v1 PQXDH X25519 SHA-256 ML-KEM-768";
/// HKDF info of the root chain.
pub const ROOT_INFO: &[u8] = b"sessionkey-msg-v1 root ratchet";
/// HKDF info prefix of the message-key expansion (the suite id follows).
pub const MESSAGE_INFO: &[u8] = b"sessionkey-msg-v1 message key";
/// First bytes of the associated data of a session.
pub const AD_LABEL: &[u8] = b"sessionkey-msg-v1 associated data";

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Not `Clone`; `Debug` prints nothing of the value; zeroized on drop.
        pub struct $name([u8; 32]);

        impl $name {
            /// Wrap secret bytes (for test vectors and stored state).
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The secret bytes. Never log or store them outside encrypted state.
            pub fn expose(&self) -> &[u8; 32] {
                &self.0
            }

            #[allow(dead_code)]
            pub(crate) fn duplicate(&self) -> Self {
                Self(self.0)
            }
        }

        impl Drop for $name {
            #[inline(never)]
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key!(
    /// A root key of the Double Ratchet; the first one is the setup's output.
    RootKey
);
secret_key!(
    /// A sending or receiving chain key.
    ChainKey
);
secret_key!(
    /// A message key: used for exactly one message, then deleted.
    MessageKey
);

/// The first root key from the setup's DH outputs and the ML-KEM shared secret (PQXDH
/// section 3.3 with 32 0xFF bytes prepended, as for X25519 there). `dh4` is present exactly
/// when a one-time prekey was used.
pub fn pqxdh_root_key(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    dh3: &[u8; 32],
    dh4: Option<&[u8; 32]>,
    kem_secret: &[u8; 32],
) -> RootKey {
    let mut ikm = Zeroizing::new(Vec::with_capacity(6 * 32));
    ikm.extend_from_slice(&[0xff; 32]);
    for part in [Some(dh1), Some(dh2), Some(dh3), dh4, Some(kem_secret)]
        .into_iter()
        .flatten()
    {
        ikm.extend_from_slice(part);
    }
    let mut out = [0; 32];
    hkdf_sha256(&[0; 32], &ikm, PQXDH_INFO, &mut out);
    RootKey(out)
}

impl RootKey {
    /// `KDF_RK` of the Double Ratchet (section 5.2): the next root key and a new chain key.
    pub fn ratchet(&self, dh_output: &[u8; 32]) -> (Self, ChainKey) {
        let mut okm = Zeroizing::new([0u8; 64]);
        hkdf_sha256(&self.0, dh_output, ROOT_INFO, &mut okm[..]);
        let mut rk = [0; 32];
        let mut ck = [0; 32];
        rk.copy_from_slice(&okm[..32]);
        ck.copy_from_slice(&okm[32..]);
        (Self(rk), ChainKey(ck))
    }
}

impl ChainKey {
    /// `KDF_CK` of the Double Ratchet (section 5.2): the next chain key and this step's
    /// message key.
    pub fn step(&self) -> (Self, MessageKey) {
        let mk = MessageKey(hmac_sha256(&self.0, &[&[0x01]]));
        (Self(hmac_sha256(&self.0, &[&[0x02]])), mk)
    }
}

impl MessageKey {
    /// The AEAD key (the suite's key length) and the 12-byte nonce of this message.
    ///
    /// A message key encrypts exactly one message, so a nonce derived with the key is never
    /// used twice under it.
    pub fn aead_key_and_nonce(&self, suite: Suite) -> (Zeroizing<Vec<u8>>, [u8; NONCE_LEN]) {
        let key_len = suite.key_len();
        let mut okm = Zeroizing::new(vec![0u8; key_len + NONCE_LEN]);
        let info = [MESSAGE_INFO, &[suite.id()]].concat();
        hkdf_sha256(&[0; 32], &self.0, &info, &mut okm);
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&okm[key_len..]);
        okm.truncate(key_len);
        (okm, nonce)
    }

    /// Encrypt `plaintext` with this (single-use) key: `ciphertext || tag`.
    pub(crate) fn seal(
        self,
        suite: Suite,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MsgError> {
        let (key, nonce) = self.aead_key_and_nonce(suite);
        let key = AeadKey::new(suite.alg()?, &key)?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = key.seal_in_place(nonce, aad, &mut out[start..])?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypt `ciphertext || tag`. Any failure is the opaque
    /// [`MsgError::InvalidMessage`]; the plaintext is never released unauthenticated.
    pub(crate) fn open(
        &self,
        suite: Suite,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, MsgError> {
        if ciphertext.len() < TAG_LEN {
            return Err(MsgError::InvalidMessage("shorter than a tag"));
        }
        let (key, nonce) = self.aead_key_and_nonce(suite);
        let key = AeadKey::new(suite.alg()?, &key)?;
        let mut buf = ciphertext.to_vec();
        let len = key
            .open_in_place(nonce, aad, &mut buf)
            .map_err(|_| MsgError::InvalidMessage("authentication failed"))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The associated data of a session (docs/MESSAGING.md, "Associated data"):
///
/// ```text
/// "sessionkey-msg-v1 associated data" || initiator identity (130) || responder identity (130)
///   || len || initiator address || len || responder address || base key (0x07 || 32)
///   || KEM prekey (type byte || 1184) || KEM ciphertext (0x09 || 1088)
/// ```
///
/// The base key is bound too, byte for byte: X25519 ignores a public key's top bit, so
/// without it a relay could alter the preamble's base key and still have the setup succeed
/// under a different session name.
#[allow(clippy::too_many_arguments)]
pub fn associated_data(
    initiator: &IdentityKey,
    responder: &IdentityKey,
    initiator_address: &Address,
    responder_address: &Address,
    base_key: &[u8; 32],
    kem_prekey_type: KeyType,
    kem_prekey: &[u8; PUBLIC_LEN],
    kem_ciphertext: &[u8; CIPHERTEXT_LEN],
) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_LABEL.len() + 2 * 130 + 2 * 256 + 33 + 1185 + 1089);
    ad.extend_from_slice(AD_LABEL);
    initiator.write(&mut ad);
    responder.write(&mut ad);
    initiator_address.write(&mut ad);
    responder_address.write(&mut ad);
    encode_key(KeyType::X25519BaseKey, base_key, &mut ad);
    encode_key(kem_prekey_type, kem_prekey, &mut ad);
    encode_key(KeyType::MlKem768Ciphertext, kem_ciphertext, &mut ad);
    ad
}

/// SHA-256 of the associated data: what each message authenticates before its header.
pub fn ad_hash(associated_data: &[u8]) -> [u8; 32] {
    sha256(&[associated_data])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_step_separates_message_and_chain_keys() {
        let ck = ChainKey::from_bytes([1; 32]);
        let (next, mk) = ck.step();
        assert_ne!(next.expose(), mk.expose());
        assert_ne!(next.expose(), ck.expose());
        let (next2, mk2) = next.step();
        assert_ne!(mk.expose(), mk2.expose());
        assert_ne!(next2.expose(), next.expose());
    }

    #[test]
    fn suites_get_their_key_lengths() {
        let mk = MessageKey::from_bytes([9; 32]);
        let (k128, n128) = mk.aead_key_and_nonce(Suite::Aes128Gcm);
        let (k256, n256) = mk.aead_key_and_nonce(Suite::Aes256Gcm);
        assert_eq!((k128.len(), k256.len()), (16, 32));
        assert_ne!(n128, n256, "suite id is part of the info");
    }

    #[test]
    fn seal_then_open_and_tamper() {
        for suite in Suite::ALL {
            let mut ct = Vec::new();
            MessageKey::from_bytes([3; 32])
                .seal(suite, b"aad", b"hello", &mut ct)
                .unwrap();
            let mk = MessageKey::from_bytes([3; 32]);
            assert_eq!(mk.open(suite, b"aad", &ct).unwrap(), b"hello");
            assert!(mk.open(suite, b"aae", &ct).is_err());
            ct[0] ^= 1;
            assert!(mk.open(suite, b"aad", &ct).is_err());
            assert!(mk.open(suite, b"aad", &ct[..15]).is_err());
        }
    }

    #[test]
    fn debug_redacts() {
        let text = format!(
            "{:?} {:?} {:?}",
            RootKey::from_bytes([0xab; 32]),
            ChainKey::from_bytes([0xab; 32]),
            MessageKey::from_bytes([0xab; 32])
        );
        assert!(!text.contains("ab") && !text.contains("171"), "{text}");
    }
}
