//! AEAD suites: sizes, usage limits, and keys that own their nonces.
//!
//! A [`SealingKey`] or [`OpeningKey`] derives its AEAD key and a 96-bit IV from a 32-byte
//! traffic secret and forms each nonce as IV XOR the record counter (the TLS 1.3 construction,
//! RFC 8446 5.3). The counter lives inside the key: no API takes a nonce from the caller, and
//! a counter can never repeat under one key.

use std::fmt;

use crate::crypto::aead::{AeadAlg, AeadKey, NONCE_LEN, TAG_LEN};
use crate::crypto::hash::hkdf_sha256_expand;
use crate::error::Limit;
use crate::keys::SecretKey;
use crate::noise::CipherChoice;
use crate::Error;

/// An AEAD suite for session records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// AES-128-GCM (NIST SP 800-38D).
    Aes128Gcm,
    /// AES-256-GCM (NIST SP 800-38D). The default where the CPU has AES instructions.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439). The default elsewhere.
    ChaCha20Poly1305,
    /// DES or 3DES in CBC mode with HMAC-SHA256, for talking to old systems only
    /// ([`crate::crypto::legacy`]). Made only with [`Suite::insecure_legacy`]; never in
    /// [`Suite::ALL`], never offered or accepted unless both sides name it.
    #[cfg(feature = "legacy-ciphers")]
    Legacy(LegacyChoice),
}

/// A legacy suite chosen with the explicit opt-in (see [`Suite::insecure_legacy`]).
#[cfg(feature = "legacy-ciphers")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LegacyChoice(LegacySuite);

#[cfg(feature = "legacy-ciphers")]
impl LegacyChoice {
    /// The legacy suite.
    pub fn suite(self) -> LegacySuite {
        self.0
    }
}

#[cfg(feature = "legacy-ciphers")]
use crate::crypto::legacy::{self, InsecureLegacyCipher, LegacySuite};

/// How much one key of a suite may be used (per key, not per session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    /// Confidentiality: records sealed under one key.
    pub records: u64,
    /// Confidentiality: 16-byte cipher blocks sealed under one key (counting one extra block
    /// per record for the tag computation).
    pub blocks: u64,
    /// Integrity: failed decryptions (forgery attempts) tolerated across a key's life.
    pub failed_decryptions: u64,
}

/// Confidentiality limit of AES-GCM in records: 2^24.5 full-size (2^14-byte) records per key
/// keeps the authenticated-encryption advantage near 2^-57 (RFC 8446 section 5.5).
const AES_GCM_RECORDS: u64 = 23_726_566;
/// The same bound in 16-byte blocks: 2^24.5 records of 2^10 blocks, i.e. 2^34.5 blocks
/// (RFC 8446 section 5.5; draft-irtf-cfrg-aead-limits section 5.1 gives the formula).
const AES_GCM_BLOCKS: u64 = 24_296_003_999;
/// Integrity limit of AES-GCM: 2^52 failed decryptions per key (RFC 9001 section 6.6).
const AES_GCM_FORGERIES: u64 = 1 << 52;
/// ChaCha20-Poly1305 has no confidentiality limit below its 64-bit record counter
/// (RFC 8446 section 5.5: "the record sequence number would wrap before the safety limit").
const CHACHA_RECORDS: u64 = u64::MAX;
/// Integrity limit of ChaCha20-Poly1305: 2^36 failed decryptions per key (RFC 9001 6.6).
const CHACHA_FORGERIES: u64 = 1 << 36;

impl Suite {
    /// Every suite, in order of preference.
    pub const ALL: [Self; 3] = [Self::Aes256Gcm, Self::ChaCha20Poly1305, Self::Aes128Gcm];

    /// AES-256-GCM where the CPU has AES and carry-less multiply instructions, else
    /// ChaCha20-Poly1305 (which is faster than software AES and constant-time).
    pub fn default_for_this_cpu() -> Self {
        if hardware_aes() {
            Self::Aes256Gcm
        } else {
            Self::ChaCha20Poly1305
        }
    }

    /// The name used on the command line and in logs, e.g. `aes-256-gcm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Gcm => "aes-128-gcm",
            Self::Aes256Gcm => "aes-256-gcm",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy(c) => c.0.name(),
        }
    }

    /// A legacy DES or 3DES suite, for session records only (the handshake itself stays
    /// under AES-256-GCM). The opt-in names the risk, so every use is found by a search.
    #[cfg(feature = "legacy-ciphers")]
    pub fn insecure_legacy(suite: LegacySuite, _opt_in: InsecureLegacyCipher) -> Self {
        Self::Legacy(LegacyChoice(suite))
    }

    /// The legacy suite, if this is one.
    #[cfg(feature = "legacy-ciphers")]
    pub fn legacy(self) -> Option<LegacySuite> {
        match self {
            Self::Legacy(c) => Some(c.0),
            _ => None,
        }
    }

    /// The suite a handshake header names: [`Suite::from_id`], and with the
    /// `legacy-ciphers` feature the legacy ids (which a responder still refuses unless its
    /// policy lists them).
    pub(crate) fn from_header_id(id: u8) -> Option<Self> {
        #[cfg(feature = "legacy-ciphers")]
        {
            let legacy = LegacySuite::ALL
                .into_iter()
                .map(|s| Self::Legacy(LegacyChoice(s)))
                .find(|s| s.id() == id);
            if legacy.is_some() {
                return legacy;
            }
        }
        Self::from_id(id)
    }

    /// Parse a name as [`Suite::name`] writes it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The suite's id in the handshake header (docs/PROTOCOL.md, "Header").
    pub fn id(self) -> u8 {
        match self {
            Self::Aes128Gcm => 1,
            Self::Aes256Gcm => 2,
            Self::ChaCha20Poly1305 => 3,
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy(c) => match c.0 {
                LegacySuite::DesCbcHmacSha256 => 129,
                _ => 130,
            },
        }
    }

    /// The AEAD suite with header id `id` (legacy suites are never found here).
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.id() == id)
    }

    /// AEAD key length in bytes.
    pub fn key_len(self) -> usize {
        match self.alg() {
            Ok(alg) => alg.key_len(),
            #[cfg(feature = "legacy-ciphers")]
            Err(_) => self.legacy().map_or(0, LegacySuite::key_len),
            #[cfg(not(feature = "legacy-ciphers"))]
            Err(_) => 0,
        }
    }

    /// Nonce length in bytes.
    pub fn nonce_len(self) -> usize {
        NONCE_LEN
    }

    /// Tag length in bytes.
    pub fn tag_len(self) -> usize {
        #[cfg(feature = "legacy-ciphers")]
        if self.legacy().is_some() {
            return legacy::TAG_LEN;
        }
        TAG_LEN
    }

    /// The per-key usage limits, each with its source in the constants' documentation.
    pub fn limits(self) -> UsageLimits {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => UsageLimits {
                records: AES_GCM_RECORDS,
                blocks: AES_GCM_BLOCKS,
                failed_decryptions: AES_GCM_FORGERIES,
            },
            Self::ChaCha20Poly1305 => UsageLimits {
                records: CHACHA_RECORDS,
                blocks: u64::MAX,
                failed_decryptions: CHACHA_FORGERIES,
            },
            // Blocks are 64-bit cipher blocks here (crate::crypto::legacy).
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy(_) => UsageLimits {
                records: u64::MAX,
                blocks: legacy::CONFIDENTIALITY_BLOCK_LIMIT,
                failed_decryptions: legacy::INTEGRITY_LIMIT,
            },
        }
    }

    /// The Noise cipher the handshake runs under for this suite. AES-128-GCM sessions
    /// handshake with Noise's AESGCM (AES-256) and use 128-bit record keys afterwards.
    pub fn noise_cipher(self) -> CipherChoice {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => CipherChoice::AesGcm,
            Self::ChaCha20Poly1305 => CipherChoice::ChaChaPoly,
            // The handshake of a legacy session is as strong as any other.
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy(_) => CipherChoice::AesGcm,
        }
    }

    /// The AEAD of this suite; a legacy suite has none.
    pub(crate) fn alg(self) -> Result<AeadAlg, Error> {
        match self {
            Self::Aes128Gcm => Ok(AeadAlg::Aes128Gcm),
            Self::Aes256Gcm => Ok(AeadAlg::Aes256Gcm),
            Self::ChaCha20Poly1305 => Ok(AeadAlg::ChaCha20Poly1305),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy(_) => Err(crate::ApiMisuse::UnexpectedKey(
                "a legacy suite where an AEAD is needed",
            )
            .into()),
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Labels of the record key derivation (docs/PROTOCOL.md, "Record keys").
const KEY_LABEL: &[u8] = b"sessionkey v1 record key";
const IV_LABEL: &[u8] = b"sessionkey v1 record iv";

/// Key, IV and counter shared by both directions' key types.
struct KeyState {
    suite: Suite,
    limits: UsageLimits,
    key: AeadKey,
    iv: zeroize::Zeroizing<[u8; NONCE_LEN]>,
    /// The next record's counter; also the number of records processed.
    counter: u64,
}

/// A traffic secret's record key (the first `suite.key_len()` bytes) and IV (PROTOCOL.md
/// section 7).
pub(crate) fn record_key_and_iv(
    suite: Suite,
    secret: &SecretKey,
) -> (
    zeroize::Zeroizing<[u8; 32]>,
    zeroize::Zeroizing<[u8; NONCE_LEN]>,
) {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    hkdf_sha256_expand(secret.expose(), KEY_LABEL, &mut key[..suite.key_len()]);
    let mut iv = zeroize::Zeroizing::new([0; NONCE_LEN]);
    hkdf_sha256_expand(secret.expose(), IV_LABEL, &mut iv[..]);
    (key, iv)
}

/// The nonce of record `counter`: the IV XOR the counter, big-endian, in its last 8 bytes.
pub(crate) fn record_nonce(iv: &[u8; NONCE_LEN], counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *iv;
    for (n, c) in nonce[4..].iter_mut().zip(counter.to_be_bytes()) {
        *n ^= c;
    }
    nonce
}

impl KeyState {
    fn new(suite: Suite, secret: &SecretKey, limits: UsageLimits) -> Result<Self, Error> {
        let (key, iv) = record_key_and_iv(suite, secret);
        let key = &key[..suite.key_len()];
        let max = suite.limits();
        Ok(Self {
            suite,
            limits: UsageLimits {
                records: limits.records.min(max.records),
                blocks: limits.blocks.min(max.blocks),
                failed_decryptions: limits.failed_decryptions.min(max.failed_decryptions),
            },
            key: AeadKey::new(suite.alg()?, key)?,
            iv,
            counter: 0,
        })
    }

    #[inline]
    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        record_nonce(&self.iv, counter)
    }
}

/// Blocks a record of `len` plaintext bytes costs against the confidentiality limit.
fn blocks_for(len: usize) -> u64 {
    len.div_ceil(16) as u64 + 1
}

/// The sending half of a record key: seals records in order under counter-derived nonces.
pub struct SealingKey {
    state: KeyState,
    blocks: u64,
}

impl SealingKey {
    /// Derive the sealing key for `suite` from a traffic secret.
    pub fn new(suite: Suite, secret: &SecretKey) -> Result<Self, Error> {
        Self::with_limits(suite, secret, suite.limits())
    }

    /// The same, with usage limits lowered to `limits` where they are below the suite's.
    pub fn with_limits(
        suite: Suite,
        secret: &SecretKey,
        limits: UsageLimits,
    ) -> Result<Self, Error> {
        Ok(Self {
            state: KeyState::new(suite, secret, limits)?,
            blocks: 0,
        })
    }

    /// Encrypt `in_out` in place, authenticating `aad` too, and return the tag. Refuses with
    /// [`Error::LimitReached`] once the suite's confidentiality limit would be passed.
    #[inline]
    pub fn seal_in_place(&mut self, aad: &[u8], in_out: &mut [u8]) -> Result<[u8; TAG_LEN], Error> {
        let suite = self.state.suite;
        let limits = self.state.limits;
        let blocks = self.blocks.saturating_add(blocks_for(in_out.len()));
        if self.state.counter >= limits.records {
            return Err(Limit::ConfidentialityRecords {
                suite: suite.name(),
                limit: limits.records,
            }
            .into());
        }
        if blocks > limits.blocks {
            return Err(Limit::ConfidentialityBlocks {
                suite: suite.name(),
                limit: limits.blocks,
            }
            .into());
        }
        let nonce = self.state.nonce(self.state.counter);
        let tag = self.state.key.seal_in_place(nonce, aad, in_out)?;
        self.state.counter += 1;
        self.blocks = blocks;
        Ok(tag)
    }

    /// Records sealed so far; also the counter of the next record.
    pub fn records(&self) -> u64 {
        self.state.counter
    }

    /// The limits in force for this key.
    pub fn limits(&self) -> UsageLimits {
        self.state.limits
    }

    /// 16-byte blocks sealed so far, as counted against [`UsageLimits::blocks`].
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.state.suite
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("suite", &self.state.suite)
            .field("records", &self.state.counter)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a record key: opens records in order.
pub struct OpeningKey {
    state: KeyState,
    failures: u64,
    /// Blocks opened in order, counted as the sender counts them.
    blocks: u64,
}

impl OpeningKey {
    /// Derive the opening key for `suite` from a traffic secret.
    pub fn new(suite: Suite, secret: &SecretKey) -> Result<Self, Error> {
        Self::with_limits(suite, secret, suite.limits())
    }

    /// The same, with usage limits lowered to `limits` where they are below the suite's.
    pub fn with_limits(
        suite: Suite,
        secret: &SecretKey,
        limits: UsageLimits,
    ) -> Result<Self, Error> {
        Ok(Self {
            state: KeyState::new(suite, secret, limits)?,
            failures: 0,
            blocks: 0,
        })
    }

    /// Decrypt `ciphertext || tag` in place and return the plaintext. A failure leaves the
    /// counter where it was and counts against the suite's integrity limit; past that limit
    /// every call fails with [`Error::LimitReached`].
    ///
    /// The receiver enforces the suite's confidentiality limits too: a peer that seals past
    /// them under one key (it should have rotated at half) is refused, so a broken or hostile
    /// sender cannot make this side accept records under a worn-out key.
    #[inline]
    pub fn open_in_place<'a>(
        &mut self,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        let limits = self.state.limits;
        let suite = self.state.suite.name();
        if self.state.counter == u64::MAX {
            return Err(Limit::NonceExhausted.into());
        }
        if self.state.counter >= limits.records {
            return Err(Limit::ConfidentialityRecords {
                suite,
                limit: limits.records,
            }
            .into());
        }
        let blocks = self
            .blocks
            .saturating_add(blocks_for(in_out.len().saturating_sub(TAG_LEN)));
        if blocks > limits.blocks {
            return Err(Limit::ConfidentialityBlocks {
                suite,
                limit: limits.blocks,
            }
            .into());
        }
        let plaintext = self.open_at(self.state.counter, aad, in_out)?;
        self.state.counter += 1;
        self.blocks = blocks;
        Ok(plaintext)
    }

    /// Open the record with explicit counter `counter` (datagrams carry it; streams do not).
    /// The implicit counter is not touched; a failure counts against the integrity limit.
    #[inline]
    pub(crate) fn open_at<'a>(
        &mut self,
        counter: u64,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        let limits = self.state.limits;
        if self.failures >= limits.failed_decryptions {
            return Err(Limit::Integrity {
                suite: self.state.suite.name(),
                limit: limits.failed_decryptions,
            }
            .into());
        }
        let nonce = self.state.nonce(counter);
        self.state
            .key
            .open_in_place(nonce, aad, in_out)
            .inspect_err(|_| self.failures += 1)
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.state.suite
    }

    /// Records opened so far.
    pub fn records(&self) -> u64 {
        self.state.counter
    }

    /// Failed decryptions so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

impl fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpeningKey")
            .field("suite", &self.state.suite)
            .field("records", &self.state.counter)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PeerMisbehaved;

    fn pair(suite: Suite) -> (SealingKey, OpeningKey) {
        let secret = SecretKey::from_bytes([9; 32]);
        (
            SealingKey::new(suite, &secret).unwrap(),
            OpeningKey::new(suite, &secret).unwrap(),
        )
    }

    #[test]
    fn round_trip_every_suite_and_nonces_differ() {
        for suite in Suite::ALL {
            let (mut s, mut o) = pair(suite);
            let mut seen = Vec::new();
            for i in 0..5u8 {
                let mut buf = vec![i; 100];
                let tag = s.seal_in_place(b"aad", &mut buf).unwrap();
                assert_ne!(buf, vec![i; 100]);
                seen.push(buf.clone());
                buf.extend_from_slice(&tag);
                assert_eq!(o.open_in_place(b"aad", &mut buf).unwrap(), &[i; 100][..]);
            }
            // Same plaintext length, different counters: all ciphertexts differ.
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 5);
            assert_eq!(s.records(), 5);
            assert_eq!(s.blocks(), 5 * (7 + 1));
        }
    }

    #[test]
    fn failed_open_changes_no_counter() {
        let (mut s, mut o) = pair(Suite::Aes256Gcm);
        let mut buf = b"hello".to_vec();
        let tag = s.seal_in_place(&[], &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert!(matches!(
            o.open_in_place(&[], &mut bad),
            Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
        ));
        assert_eq!((o.records(), o.failures()), (0, 1));
        assert_eq!(o.open_in_place(&[], &mut buf).unwrap(), b"hello");
    }

    #[test]
    fn hard_limits_refuse_and_name_themselves() {
        let secret = SecretKey::from_bytes([7; 32]);
        let limits = UsageLimits {
            records: 3,
            blocks: 1 << 30,
            failed_decryptions: 2,
        };
        let mut s = SealingKey::with_limits(Suite::ChaCha20Poly1305, &secret, limits).unwrap();
        let mut o = OpeningKey::with_limits(Suite::ChaCha20Poly1305, &secret, limits).unwrap();
        for _ in 0..3 {
            s.seal_in_place(&[], &mut [0; 4]).unwrap();
        }
        let err = s.seal_in_place(&[], &mut [0; 4]).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitReached(Limit::ConfidentialityRecords { limit: 3, .. })
        ));
        // Integrity: two forgeries tolerated, then every open refuses, even a genuine one.
        for _ in 0..2 {
            assert!(o.open_in_place(&[], &mut [0; 20]).is_err());
        }
        let err = o.open_in_place(&[], &mut [0; 20]).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitReached(Limit::Integrity { limit: 2, .. })
        ));
        assert!(err.to_string().contains("integrity limit of 2"));
        // Limits can only be lowered.
        let raised = UsageLimits {
            records: u64::MAX,
            blocks: u64::MAX,
            failed_decryptions: u64::MAX,
        };
        let s = SealingKey::with_limits(Suite::Aes256Gcm, &secret, raised).unwrap();
        assert_eq!(s.limits(), Suite::Aes256Gcm.limits());
    }

    #[test]
    fn names_and_ids_round_trip() {
        for s in Suite::ALL {
            assert_eq!(Suite::from_name(s.name()), Some(s));
            assert_eq!(Suite::from_id(s.id()), Some(s));
        }
        assert_eq!(Suite::from_name("3des"), None);
        assert_eq!(Suite::from_id(0), None);
    }
}
