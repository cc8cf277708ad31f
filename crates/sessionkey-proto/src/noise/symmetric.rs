//! CipherState and SymmetricState (Noise sections 5.1 and 5.2).

use std::fmt;

use zeroize::Zeroizing;

use super::pattern::CipherChoice;
use crate::crypto::aead::{AeadAlg, AeadKey, NONCE_LEN, TAG_LEN};
use crate::crypto::hash::{HashChoice, HASH_LEN};
use crate::error::{ApiMisuse, Limit};
use crate::Error;

/// A Noise CipherState: a key and the 64-bit nonce counter it owns (section 5.1).
///
/// The counter advances only after a successful operation, so a failed decryption changes
/// nothing (snow's RUSTSEC-2024-0011 advanced it).
pub struct CipherState {
    cipher: CipherChoice,
    key: Option<AeadKey>,
    n: u64,
}

impl CipherState {
    pub(crate) fn empty(cipher: CipherChoice) -> Self {
        Self {
            cipher,
            key: None,
            n: 0,
        }
    }

    pub(crate) fn with_key(cipher: CipherChoice, key: &[u8; 32]) -> Result<Self, Error> {
        let mut cs = Self::empty(cipher);
        cs.initialize_key(key)?;
        Ok(cs)
    }

    fn initialize_key(&mut self, key: &[u8; 32]) -> Result<(), Error> {
        self.load_key(key)?;
        self.n = 0;
        Ok(())
    }

    /// Build the AEAD key schedule for `key`; the counter is left as it is.
    fn load_key(&mut self, key: &[u8; 32]) -> Result<(), Error> {
        let alg = match self.cipher {
            CipherChoice::AesGcm => AeadAlg::Aes256Gcm,
            CipherChoice::ChaChaPoly => AeadAlg::ChaCha20Poly1305,
        };
        self.key = Some(AeadKey::new(alg, key)?);
        Ok(())
    }

    pub(crate) fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn nonce(&self, n: u64) -> [u8; NONCE_LEN] {
        let mut nonce = [0; NONCE_LEN];
        match self.cipher {
            CipherChoice::AesGcm => nonce[4..].copy_from_slice(&n.to_be_bytes()),
            CipherChoice::ChaChaPoly => nonce[4..].copy_from_slice(&n.to_le_bytes()),
        }
        nonce
    }

    /// The number of messages this state has encrypted or decrypted.
    pub fn nonce_counter(&self) -> u64 {
        self.n
    }

    /// EncryptWithAd: writes `plaintext` encrypted, plus its tag, into `out`; returns the
    /// length written. Without a key the plaintext is copied unchanged.
    pub fn encrypt_with_ad(
        &mut self,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let overhead = if self.has_key() { TAG_LEN } else { 0 };
        let len = plaintext.len() + overhead;
        if out.len() < len {
            return Err(ApiMisuse::BufferTooSmall {
                needed: len,
                have: out.len(),
            }
            .into());
        }
        out[..plaintext.len()].copy_from_slice(plaintext);
        let Some(key) = &self.key else {
            return Ok(len);
        };
        // n = 2^64 - 1 is reserved (section 5.1).
        if self.n == u64::MAX {
            return Err(Limit::NonceExhausted.into());
        }
        let tag = key.seal_in_place(self.nonce(self.n), ad, &mut out[..plaintext.len()])?;
        out[plaintext.len()..len].copy_from_slice(&tag);
        self.n += 1;
        Ok(len)
    }

    /// DecryptWithAd: writes the plaintext of `ciphertext` into `out`; returns its length.
    /// On failure nothing changes and no plaintext is released.
    pub fn decrypt_with_ad(
        &mut self,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let Some(key) = &self.key else {
            if out.len() < ciphertext.len() {
                return Err(ApiMisuse::BufferTooSmall {
                    needed: ciphertext.len(),
                    have: out.len(),
                }
                .into());
            }
            out[..ciphertext.len()].copy_from_slice(ciphertext);
            return Ok(ciphertext.len());
        };
        let plain_len = ciphertext.len().checked_sub(TAG_LEN).ok_or(
            crate::error::PeerMisbehaved::Truncated {
                needed: TAG_LEN,
                got: ciphertext.len(),
            },
        )?;
        if out.len() < ciphertext.len() {
            return Err(ApiMisuse::BufferTooSmall {
                needed: ciphertext.len(),
                have: out.len(),
            }
            .into());
        }
        if self.n == u64::MAX {
            return Err(Limit::NonceExhausted.into());
        }
        let buf = &mut out[..ciphertext.len()];
        buf.copy_from_slice(ciphertext);
        if let Err(e) = key.open_in_place(self.nonce(self.n), ad, buf) {
            buf.fill(0);
            return Err(e);
        }
        self.n += 1;
        Ok(plain_len)
    }

    /// Rekey (section 4.2): the key becomes the first 32 bytes of ENCRYPT(k, 2^64-1, "", 0^32).
    /// The counter is unchanged.
    pub fn rekey(&mut self) -> Result<(), Error> {
        let Some(key) = &self.key else {
            return Err(ApiMisuse::MissingKey("rekey needs a key").into());
        };
        let mut new_key = Zeroizing::new([0u8; 32]);
        key.seal_in_place(self.nonce(u64::MAX), &[], &mut new_key[..])?;
        let n = self.n;
        self.initialize_key(&new_key)?;
        self.n = n;
        Ok(())
    }
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("cipher", &self.cipher)
            .field("has_key", &self.has_key())
            .field("n", &self.n)
            .finish()
    }
}

/// SymmetricState (section 5.2): the chaining key, the handshake hash and a CipherState.
pub(crate) struct SymmetricState {
    hash: HashChoice,
    ck: Zeroizing<[u8; HASH_LEN]>,
    h: [u8; HASH_LEN],
    /// The CipherState's nonce, and its AEAD key schedule once built from `k`.
    cipher: CipherState,
    /// The CipherState's key (section 5.2's `k`). Its AEAD key schedule (for AES-GCM, the key
    /// expansion and GHASH table) is built on the first encryption or decryption under it:
    /// a key that MixKey replaces before any use (IK's second message: the key after
    /// `ekem1`, or after `ee` when classical) never costs one, and a copy of the state for
    /// [`clone_for_retry`](Self::clone_for_retry) needs none.
    k: Option<Zeroizing<[u8; 32]>>,
}

impl SymmetricState {
    pub(crate) fn initialize(protocol_name: &str, cipher: CipherChoice, hash: HashChoice) -> Self {
        let name = protocol_name.as_bytes();
        let h = if name.len() <= HASH_LEN {
            let mut h = [0; HASH_LEN];
            h[..name.len()].copy_from_slice(name);
            h
        } else {
            hash.hash2(name, &[])
        };
        Self {
            hash,
            ck: Zeroizing::new(h),
            h,
            cipher: CipherState::empty(cipher),
            k: None,
        }
    }

    /// A copy, to restore if a message read into this state fails.
    pub(crate) fn clone_for_retry(&self) -> Self {
        Self {
            hash: self.hash,
            ck: self.ck.clone(),
            h: self.h,
            cipher: CipherState {
                cipher: self.cipher.cipher,
                key: None,
                n: self.cipher.n,
            },
            k: self.k.clone(),
        }
    }

    /// The CipherState, with its AEAD key schedule built if it has a key.
    fn cipher(&mut self) -> Result<&mut CipherState, Error> {
        if let (Some(k), None) = (&self.k, &self.cipher.key) {
            self.cipher.load_key(k)?;
        }
        Ok(&mut self.cipher)
    }

    /// InitializeKey (section 5.1), deferred: see `k`.
    fn initialize_key(&mut self, key: Zeroizing<[u8; 32]>) {
        self.cipher = CipherState::empty(self.cipher.cipher);
        self.k = Some(key);
    }

    pub(crate) fn mix_key(&mut self, ikm: &[u8]) -> Result<(), Error> {
        let [ck, temp_k] = self.hash.hkdf::<2>(&self.ck, ikm);
        self.ck = ck;
        self.initialize_key(temp_k);
        Ok(())
    }

    pub(crate) fn mix_hash(&mut self, data: &[u8]) {
        self.h = self.hash.hash2(&self.h, data);
    }

    pub(crate) fn mix_key_and_hash(&mut self, ikm: &[u8]) -> Result<(), Error> {
        let [ck, temp_h, temp_k] = self.hash.hkdf::<3>(&self.ck, ikm);
        self.ck = ck;
        self.mix_hash(&temp_h[..]);
        self.initialize_key(temp_k);
        Ok(())
    }

    pub(crate) fn has_key(&self) -> bool {
        self.k.is_some()
    }

    pub(crate) fn handshake_hash(&self) -> &[u8; HASH_LEN] {
        &self.h
    }

    pub(crate) fn encrypt_and_hash(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let h = self.h;
        let len = self.cipher()?.encrypt_with_ad(&h, plaintext, out)?;
        self.mix_hash(&out[..len]);
        Ok(len)
    }

    pub(crate) fn decrypt_and_hash(
        &mut self,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let h = self.h;
        let len = self.cipher()?.decrypt_with_ad(&h, ciphertext, out)?;
        self.mix_hash(ciphertext);
        Ok(len)
    }

    /// Split (section 5.2): the two transport keys, initiator-to-responder first.
    pub(crate) fn split(&self) -> [Zeroizing<[u8; HASH_LEN]>; 2] {
        self.hash.hkdf::<2>(&self.ck, &[])
    }
}
