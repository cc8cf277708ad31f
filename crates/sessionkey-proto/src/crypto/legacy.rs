//! Legacy DES and 3DES suites, for talking to old systems only. **Insecure.**
//!
//! Two suites, both CBC with PKCS#7 padding and HMAC-SHA256 encrypt-then-MAC
//! ([`LegacySuite::TripleDesEdeCbcHmacSha256`], [`LegacySuite::DesCbcHmacSha256`]). DES has a
//! 56-bit key that is found by exhaustive search in about a day; both ciphers have 64-bit blocks,
//! so CBC leaks plaintext after about 2^32 blocks under one key (Sweet32, Bhargavan and
//! Leurent, CCS 2016). NIST disallowed TDEA for encryption after 2023 (SP 800-131A Rev. 2) and
//! withdrew DES in 2005 (FIPS 46-3). Keys are built only with an [`InsecureLegacyCipher`] token,
//! whose one constructor names the risk.
//!
//! # Construction
//!
//! From a 32-byte traffic secret, HKDF-SHA256 expand (RFC 5869) derives a cipher key (8 bytes
//! for DES, 24 for 3DES: three independent DES keys, keying option 1) and a 32-byte MAC key,
//! under labels that name the suite. A record with counter `n` (the key's own 64-bit counter,
//! starting at 0) and associated data `aad` is
//!
//! ```text
//! IV         = E_K(n as 8 bytes big-endian)
//! ciphertext = CBC-Encrypt_K(IV, PKCS#7-pad(plaintext))
//! tag        = HMAC-SHA256(mac_key, n (8 B, BE) || len(aad) (8 B, BE) || aad || ciphertext)
//! record     = ciphertext || tag
//! ```
//!
//! The IV is the first method of NIST SP 800-38A Appendix C: apply the forward cipher, under
//! the encryption key, to a nonce. Because the block cipher is a permutation and the counter
//! never repeats under one key, two records never share an IV; without the key the IV is
//! unpredictable, which CBC needs (a predictable IV allows the chosen-plaintext attack known as
//! BEAST). It also needs no second primitive and no extra key, and it is never sent: both sides
//! derive it from their counters. The price is one extra cipher block per record, which is
//! counted against the block limit.
//!
//! Opening checks the tag first, in constant time, and only then decrypts and unpads, so
//! padding errors are never visible to an attacker (no padding oracle). Every failure is the
//! same opaque [`PeerMisbehaved::BadTag`] and leaves the counter where it was.

use std::fmt;

use aws_lc_rs::{constant_time, hmac};
use cbc::cipher::block_padding::{Padding, Pkcs7};
use cbc::cipher::consts::U8;
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit,
};
use des::{Des, TdesEde3};
use zeroize::Zeroizing;

use crate::crypto::hash::hkdf_sha256_expand;
use crate::error::{Limit, PeerMisbehaved};
use crate::keys::SecretKey;
use crate::Error;

/// Block length of DES and 3DES, in bytes.
pub const BLOCK_LEN: usize = 8;

/// Length of the HMAC-SHA256 tag at the end of every record, in bytes (the full tag, never
/// truncated).
pub const TAG_LEN: usize = 32;

/// Confidentiality limit: 2^20 64-bit blocks per key, counting every block the cipher
/// encrypts while sealing (the padded plaintext and the IV-derivation block).
///
/// Source: NIST SP 800-67 Rev. 2 (November 2017), which limits one TDEA key bundle to 2^20
/// 64-bit data blocks, down from 2^32 in Rev. 1, because of Sweet32 (a birthday-bound
/// collision among 64-bit CBC blocks becomes likely near 2^32 blocks and leaks plaintext
/// XORs). The same bound is applied to single DES: the attack depends on the block size, which
/// DES shares, and FIPS 46-3 (withdrawn 2005) sets no better one.
pub const CONFIDENTIALITY_BLOCK_LIMIT: u64 = 1 << 20;

/// Integrity limit: 2^36 failed opens per key; past it every open fails.
///
/// HMAC-SHA256 with its full 256-bit tag lets `q` forgery attempts succeed with probability
/// about `q / 2^256` plus HMAC-SHA256's PRF advantage (Bellare, "New Proofs for NMAC and HMAC",
/// CRYPTO 2006), so the tag needs no tighter bound. 2^36 is the smallest integrity limit the
/// crate uses elsewhere (ChaCha20-Poly1305, RFC 9001 section 6.6) and serves as a tripwire: a
/// peer that sends that many forged records is attacking, and the session must end.
pub const INTEGRITY_LIMIT: u64 = 1 << 36;

/// The explicit opt-in to DES and 3DES. The key constructors of this module need one.
///
/// The one way to get it is [`InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken`],
/// so every use of a legacy suite is easy to find in a code review (grep for that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsecureLegacyCipher {
    _private: (),
}

impl InsecureLegacyCipher {
    /// Accept that DES is broken by exhaustive key search, and that DES and 3DES leak
    /// plaintext through 64-bit block collisions (Sweet32). Use only to talk to a system that
    /// supports nothing better.
    pub fn i_accept_that_des_and_3des_are_broken() -> Self {
        Self { _private: () }
    }
}

/// A legacy suite: a 64-bit block cipher in CBC mode with HMAC-SHA256, encrypt-then-MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LegacySuite {
    /// Three-key 3DES (TDEA keying option 1, EDE) in CBC mode, HMAC-SHA256. Broken by Sweet32
    /// if used past its block limit; disallowed for encryption by NIST after 2023.
    TripleDesEdeCbcHmacSha256,
    /// Single DES in CBC mode, HMAC-SHA256. Its 56-bit key falls to exhaustive search.
    DesCbcHmacSha256,
}

impl LegacySuite {
    /// Both legacy suites, the less bad one first.
    pub const ALL: [Self; 2] = [Self::TripleDesEdeCbcHmacSha256, Self::DesCbcHmacSha256];

    /// The name used on the command line and in logs, e.g. `3des-ede-cbc-hmac-sha256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TripleDesEdeCbcHmacSha256 => "3des-ede-cbc-hmac-sha256",
            Self::DesCbcHmacSha256 => "des-cbc-hmac-sha256",
        }
    }

    /// Parse a name as [`LegacySuite::name`] writes it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Cipher key length in bytes (parity bits included): 24 for 3DES, 8 for DES.
    pub fn key_len(self) -> usize {
        match self {
            Self::TripleDesEdeCbcHmacSha256 => 24,
            Self::DesCbcHmacSha256 => 8,
        }
    }

    /// Length of the record that sealing `plaintext_len` bytes produces: the plaintext padded
    /// to the next whole block (PKCS#7 always adds 1 to 8 bytes), plus the tag.
    pub fn sealed_len(self, plaintext_len: usize) -> usize {
        (plaintext_len / BLOCK_LEN + 1) * BLOCK_LEN + TAG_LEN
    }

    /// Cipher blocks that sealing `plaintext_len` bytes costs against
    /// [`CONFIDENTIALITY_BLOCK_LIMIT`]: the padded plaintext plus the IV-derivation block.
    pub fn blocks_for(self, plaintext_len: usize) -> u64 {
        (plaintext_len / BLOCK_LEN) as u64 + 2
    }

    fn labels(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Self::TripleDesEdeCbcHmacSha256 => (
                b"sessionkey v1 legacy 3des-ede-cbc-hmac-sha256 cipher key",
                b"sessionkey v1 legacy 3des-ede-cbc-hmac-sha256 mac key",
            ),
            Self::DesCbcHmacSha256 => (
                b"sessionkey v1 legacy des-cbc-hmac-sha256 cipher key",
                b"sessionkey v1 legacy des-cbc-hmac-sha256 mac key",
            ),
        }
    }
}

impl fmt::Display for LegacySuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The block cipher of a suite, keyed.
///
/// Note: `des` erases its round keys on drop only when its `zeroize` feature is on. 3DES is
/// boxed: its three key schedules are three times the size of DES's.
enum CipherKey {
    Tdes(Box<TdesEde3>),
    Des(Des),
}

impl CipherKey {
    fn new(suite: LegacySuite, key: &[u8]) -> Self {
        match suite {
            LegacySuite::TripleDesEdeCbcHmacSha256 => {
                Self::Tdes(Box::new(TdesEde3::new(GenericArray::from_slice(key))))
            }
            LegacySuite::DesCbcHmacSha256 => Self::Des(Des::new(GenericArray::from_slice(key))),
        }
    }

    /// The IV of record `counter`: the counter block encrypted under the cipher key
    /// (NIST SP 800-38A Appendix C, first method).
    fn iv(&self, counter: u64) -> [u8; BLOCK_LEN] {
        let mut block = GenericArray::from(counter.to_be_bytes());
        match self {
            Self::Tdes(c) => c.encrypt_block(&mut block),
            Self::Des(c) => c.encrypt_block(&mut block),
        }
        block.into()
    }

    /// CBC-encrypt the first `msg_len` bytes of `buf` in place under `iv`, padding with `P`;
    /// returns the ciphertext length, or `None` if `buf` has no room for the padding.
    fn cbc_encrypt<P: Padding<U8>>(
        &self,
        iv: &[u8; BLOCK_LEN],
        buf: &mut [u8],
        msg_len: usize,
    ) -> Option<usize> {
        match self {
            Self::Tdes(c) => cbc_encrypt::<TdesEde3, P>(c, iv, buf, msg_len),
            Self::Des(c) => cbc_encrypt::<_, P>(c, iv, buf, msg_len),
        }
    }

    /// CBC-decrypt `buf` in place under `iv` and remove padding `P`; returns the plaintext
    /// length, or `None` if the length or the padding is invalid.
    fn cbc_decrypt<P: Padding<U8>>(&self, iv: &[u8; BLOCK_LEN], buf: &mut [u8]) -> Option<usize> {
        match self {
            Self::Tdes(c) => cbc_decrypt::<TdesEde3, P>(c, iv, buf),
            Self::Des(c) => cbc_decrypt::<_, P>(c, iv, buf),
        }
    }
}

fn cbc_encrypt<C, P>(
    cipher: &C,
    iv: &[u8; BLOCK_LEN],
    buf: &mut [u8],
    msg_len: usize,
) -> Option<usize>
where
    C: BlockCipher + BlockEncrypt + BlockSizeUser<BlockSize = U8>,
    P: Padding<U8>,
{
    cbc::Encryptor::<&C>::inner_iv_init(cipher, GenericArray::from_slice(iv))
        .encrypt_padded_mut::<P>(buf, msg_len)
        .ok()
        .map(<[u8]>::len)
}

fn cbc_decrypt<C, P>(cipher: &C, iv: &[u8; BLOCK_LEN], buf: &mut [u8]) -> Option<usize>
where
    C: BlockCipher + BlockDecrypt + BlockSizeUser<BlockSize = U8>,
    P: Padding<U8>,
{
    cbc::Decryptor::<&C>::inner_iv_init(cipher, GenericArray::from_slice(iv))
        .decrypt_padded_mut::<P>(buf)
        .ok()
        .map(<[u8]>::len)
}

/// Cipher key, MAC key and counter shared by both directions' key types.
struct KeyState {
    suite: LegacySuite,
    cipher: CipherKey,
    mac: hmac::Key,
    /// The next record's counter; also the number of records processed.
    counter: u64,
}

impl KeyState {
    fn new(suite: LegacySuite, secret: &SecretKey) -> Self {
        let (cipher_label, mac_label) = suite.labels();
        let mut cipher_key = Zeroizing::new([0u8; 24]);
        let cipher_key = &mut cipher_key[..suite.key_len()];
        hkdf_sha256_expand(secret.expose(), cipher_label, cipher_key);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        hkdf_sha256_expand(secret.expose(), mac_label, &mut mac_key[..]);
        Self {
            suite,
            cipher: CipherKey::new(suite, cipher_key),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac_key[..]),
            counter: 0,
        }
    }

    /// HMAC-SHA256 over counter || len(aad) || aad || ciphertext.
    fn tag(&self, aad: &[u8], ciphertext: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(&self.counter.to_be_bytes());
        ctx.update(&(aad.len() as u64).to_be_bytes());
        ctx.update(aad);
        ctx.update(ciphertext);
        ctx.sign()
    }
}

/// The sending half of a legacy record key: seals records in order, each under an IV derived
/// from its own counter. No API takes an IV.
pub struct LegacySealingKey {
    state: KeyState,
    blocks: u64,
}

impl LegacySealingKey {
    /// Derive the sealing key for `suite` from a traffic secret. Needs the explicit
    /// [`InsecureLegacyCipher`] opt-in.
    pub fn new(suite: LegacySuite, secret: &SecretKey, _opt_in: InsecureLegacyCipher) -> Self {
        Self {
            state: KeyState::new(suite, secret),
            blocks: 0,
        }
    }

    /// Seal `plaintext` with `aad` and append the record, `ciphertext || tag`
    /// ([`LegacySuite::sealed_len`] bytes), to `out`.
    ///
    /// Refuses with [`Limit::ConfidentialityBlocks`] if the record would take the key past
    /// [`CONFIDENTIALITY_BLOCK_LIMIT`]. On any error `out` and the key are left as they were.
    pub fn seal(&mut self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let suite = self.state.suite;
        let blocks = self
            .blocks
            .saturating_add(suite.blocks_for(plaintext.len()));
        if blocks > CONFIDENTIALITY_BLOCK_LIMIT {
            return Err(Limit::ConfidentialityBlocks {
                suite: suite.name(),
                limit: CONFIDENTIALITY_BLOCK_LIMIT,
            }
            .into());
        }
        // Unreachable while the block limit holds (each record costs at least 2 blocks), but
        // a counter must never wrap.
        let Some(next) = self.state.counter.checked_add(1) else {
            return Err(Limit::NonceExhausted.into());
        };
        let start = out.len();
        let padded_len = suite.sealed_len(plaintext.len()) - TAG_LEN;
        out.reserve(padded_len + TAG_LEN);
        out.extend_from_slice(plaintext);
        out.resize(start + padded_len, 0);
        let iv = self.state.cipher.iv(self.state.counter);
        let sealed =
            self.state
                .cipher
                .cbc_encrypt::<Pkcs7>(&iv, &mut out[start..], plaintext.len());
        if sealed != Some(padded_len) {
            out.truncate(start);
            return Err(Error::Crypto("CBC padding failed"));
        }
        let tag = self.state.tag(aad, &out[start..]);
        out.extend_from_slice(tag.as_ref());
        self.state.counter = next;
        self.blocks = blocks;
        Ok(())
    }

    /// Records sealed so far.
    pub fn records(&self) -> u64 {
        self.state.counter
    }

    /// 64-bit blocks encrypted so far, as counted against [`CONFIDENTIALITY_BLOCK_LIMIT`].
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The suite.
    pub fn suite(&self) -> LegacySuite {
        self.state.suite
    }
}

impl fmt::Debug for LegacySealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacySealingKey")
            .field("suite", &self.state.suite)
            .field("records", &self.state.counter)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a legacy record key: opens records in order.
pub struct LegacyOpeningKey {
    state: KeyState,
    failures: u64,
}

impl LegacyOpeningKey {
    /// Derive the opening key for `suite` from a traffic secret. Needs the explicit
    /// [`InsecureLegacyCipher`] opt-in.
    pub fn new(suite: LegacySuite, secret: &SecretKey, _opt_in: InsecureLegacyCipher) -> Self {
        Self {
            state: KeyState::new(suite, secret),
            failures: 0,
        }
    }

    /// Open the next record, `ciphertext || tag`, with `aad`, and append its plaintext to
    /// `out`.
    ///
    /// The tag is checked first, in constant time; only an authentic record is decrypted.
    /// Every failure is [`PeerMisbehaved::BadTag`], leaves `out` and the counter as they were,
    /// and counts against [`INTEGRITY_LIMIT`]; past that limit every call fails with
    /// [`Limit::Integrity`].
    pub fn open(&mut self, aad: &[u8], record: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let suite = self.state.suite;
        if self.failures >= INTEGRITY_LIMIT {
            return Err(Limit::Integrity {
                suite: suite.name(),
                limit: INTEGRITY_LIMIT,
            }
            .into());
        }
        let Some(next) = self.state.counter.checked_add(1) else {
            return Err(Limit::NonceExhausted.into());
        };
        match self.open_inner(aad, record, out) {
            Some(()) => {
                self.state.counter = next;
                Ok(())
            }
            None => {
                self.failures += 1;
                Err(PeerMisbehaved::BadTag.into())
            }
        }
    }

    fn open_inner(&self, aad: &[u8], record: &[u8], out: &mut Vec<u8>) -> Option<()> {
        // The length is public: checking it first reveals nothing.
        let ct_len = record.len().checked_sub(TAG_LEN)?;
        if ct_len == 0 || ct_len % BLOCK_LEN != 0 {
            return None;
        }
        let (ciphertext, tag) = record.split_at(ct_len);
        // What `hmac::verify` does (sign, then `verify_slices_are_equal`), over an input in
        // several parts.
        let expected = self.state.tag(aad, ciphertext);
        constant_time::verify_slices_are_equal(expected.as_ref(), tag).ok()?;
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let iv = self.state.cipher.iv(self.state.counter);
        match self
            .state
            .cipher
            .cbc_decrypt::<Pkcs7>(&iv, &mut out[start..])
        {
            Some(len) => {
                out.truncate(start + len);
                Some(())
            }
            None => {
                out.truncate(start);
                None
            }
        }
    }

    /// Records opened so far.
    pub fn records(&self) -> u64 {
        self.state.counter
    }

    /// Failed opens so far, as counted against [`INTEGRITY_LIMIT`].
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The suite.
    pub fn suite(&self) -> LegacySuite {
        self.state.suite
    }
}

impl fmt::Debug for LegacyOpeningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyOpeningKey")
            .field("suite", &self.state.suite)
            .field("records", &self.state.counter)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// Raw CBC without padding under an explicit IV, for the known-answer tests only. It goes
/// through the same [`CipherKey`] and `cbc` wiring as sealing and opening.
#[cfg(test)]
fn raw_cbc(
    suite: LegacySuite,
    key: &[u8],
    iv: &[u8; BLOCK_LEN],
    data: &[u8],
    encrypt: bool,
) -> Vec<u8> {
    use cbc::cipher::block_padding::NoPadding;
    let cipher = CipherKey::new(suite, key);
    let mut buf = data.to_vec();
    let len = if encrypt {
        cipher.cbc_encrypt::<NoPadding>(iv, &mut buf, data.len())
    } else {
        cipher.cbc_decrypt::<NoPadding>(iv, &mut buf)
    };
    assert_eq!(len, Some(data.len()));
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{report, vectors_dir};

    fn opt_in() -> InsecureLegacyCipher {
        InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken()
    }

    fn pair(suite: LegacySuite) -> (LegacySealingKey, LegacyOpeningKey) {
        let secret = SecretKey::from_bytes([0x5a; 32]);
        (
            LegacySealingKey::new(suite, &secret, opt_in()),
            LegacyOpeningKey::new(suite, &secret, opt_in()),
        )
    }

    fn is_bad_tag(r: Result<(), Error>) -> bool {
        matches!(r, Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag)))
    }

    #[test]
    fn legacy_round_trip_both_suites() {
        for suite in LegacySuite::ALL {
            let (mut s, mut o) = pair(suite);
            let mut expected_blocks = 0;
            for (i, len) in [0usize, 1, 7, 8, 9, 1000].into_iter().enumerate() {
                let plaintext: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
                let mut record = b"header".to_vec();
                s.seal(b"aad", &plaintext, &mut record).unwrap();
                assert_eq!(&record[..6], b"header", "seal appends");
                let record = &record[6..];
                assert_eq!(record.len(), suite.sealed_len(len));
                assert_eq!(record.len() % BLOCK_LEN, 0);
                assert!(len < 8 || record[..len] != plaintext[..]);
                expected_blocks += suite.blocks_for(len);
                let mut out = vec![0xee];
                o.open(b"aad", record, &mut out).unwrap();
                assert_eq!(out[0], 0xee, "open appends");
                assert_eq!(&out[1..], &plaintext[..]);
            }
            assert_eq!((s.records(), o.records(), o.failures()), (6, 6, 0));
            assert_eq!(s.blocks(), expected_blocks);
            assert_eq!(s.suite(), suite);
            assert_eq!(LegacySuite::from_name(suite.name()), Some(suite));
        }
    }

    #[test]
    fn legacy_same_plaintext_gives_different_records() {
        let (mut s, _) = pair(LegacySuite::TripleDesEdeCbcHmacSha256);
        let mut records: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                let mut r = Vec::new();
                s.seal(b"", &[0; 16], &mut r).unwrap();
                r
            })
            .collect();
        records.sort();
        records.dedup();
        assert_eq!(records.len(), 8);
    }

    #[test]
    fn legacy_suites_and_secrets_give_different_keys() {
        let secret = SecretKey::from_bytes([1; 32]);
        let other = SecretKey::from_bytes([2; 32]);
        let mut tdes = Vec::new();
        let mut des = Vec::new();
        let mut tdes_other = Vec::new();
        LegacySealingKey::new(LegacySuite::TripleDesEdeCbcHmacSha256, &secret, opt_in())
            .seal(b"", b"same", &mut tdes)
            .unwrap();
        LegacySealingKey::new(LegacySuite::DesCbcHmacSha256, &secret, opt_in())
            .seal(b"", b"same", &mut des)
            .unwrap();
        LegacySealingKey::new(LegacySuite::TripleDesEdeCbcHmacSha256, &other, opt_in())
            .seal(b"", b"same", &mut tdes_other)
            .unwrap();
        assert_ne!(tdes, des);
        assert_ne!(tdes, tdes_other);
        let mut out = Vec::new();
        let mut o = LegacyOpeningKey::new(LegacySuite::DesCbcHmacSha256, &secret, opt_in());
        assert!(is_bad_tag(o.open(b"", &tdes, &mut out)));
    }

    #[test]
    fn legacy_tampering_is_rejected_and_changes_nothing() {
        for suite in LegacySuite::ALL {
            let (mut s, mut o) = pair(suite);
            // Open one record first so the counter under test is not zero.
            let mut first = Vec::new();
            s.seal(b"ad", b"first", &mut first).unwrap();
            let mut out = Vec::new();
            o.open(b"ad", &first, &mut out).unwrap();

            let mut record = Vec::new();
            s.seal(b"ad", b"attack at dawn, 3 blocks", &mut record)
                .unwrap();
            let mut rejected = 0u64;
            let mut out = b"keep".to_vec();
            for bit in 0..record.len() * 8 {
                let mut bad = record.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(is_bad_tag(o.open(b"ad", &bad, &mut out)), "bit {bit}");
                rejected += 1;
            }
            for len in 0..record.len() {
                assert!(
                    is_bad_tag(o.open(b"ad", &record[..len], &mut out)),
                    "len {len}"
                );
                rejected += 1;
            }
            let mut longer = record.clone();
            longer.push(0);
            assert!(is_bad_tag(o.open(b"ad", &longer, &mut out)));
            assert!(is_bad_tag(o.open(b"ae", &record, &mut out)));
            assert!(is_bad_tag(o.open(b"", &record, &mut out)));
            assert!(is_bad_tag(o.open(b"ad\0", &record, &mut out)));
            // The first record again: right key, wrong counter.
            assert!(is_bad_tag(o.open(b"ad", &first, &mut out)));
            rejected += 5;
            assert_eq!(out, b"keep", "a failed open leaves `out` alone");
            assert_eq!((o.records(), o.failures()), (1, rejected));

            o.open(b"ad", &record, &mut out).unwrap();
            assert_eq!(out, b"keepattack at dawn, 3 blocks");
            assert_eq!(o.records(), 2);
        }
    }

    #[test]
    fn legacy_integrity_limit_stops_opening() {
        let (mut s, mut o) = pair(LegacySuite::TripleDesEdeCbcHmacSha256);
        let mut record = Vec::new();
        s.seal(b"", b"x", &mut record).unwrap();
        o.failures = INTEGRITY_LIMIT - 1;
        assert!(is_bad_tag(o.open(b"", &record[1..], &mut Vec::new())));
        let err = o.open(b"", &record, &mut Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitReached(Limit::Integrity { suite: "3des-ede-cbc-hmac-sha256", limit })
                if limit == 1 << 36
        ));
        assert_eq!((o.records(), o.failures()), (0, INTEGRITY_LIMIT));
    }

    #[test]
    fn legacy_block_cap_stops_sealing_at_exactly_2_pow_20() {
        // Single DES, so that the 2^20 blocks take a third of 3DES's time in a debug build;
        // the limit and its accounting are the same code for both suites.
        let suite = LegacySuite::DesCbcHmacSha256;
        let (mut s, _) = pair(suite);
        let big = vec![0x42; 64 * 1024];
        let mut record = Vec::with_capacity(suite.sealed_len(big.len()));
        let err = loop {
            record.clear();
            match s.seal(b"", &big, &mut record) {
                Ok(()) => assert_eq!(record.len(), suite.sealed_len(big.len())),
                Err(e) => break e,
            }
        };
        // A 64 KiB record is 8192 + 1 padding block + 1 IV block = 8194 blocks;
        // 127 of them fit (1,040,638 blocks), the 128th would pass 2^20.
        assert!(matches!(
            err,
            Error::LimitReached(Limit::ConfidentialityBlocks { suite: "des-cbc-hmac-sha256", limit })
                if limit == 1 << 20
        ));
        assert_eq!((s.records(), s.blocks()), (127, 127 * 8194));
        assert!(record.is_empty(), "a refused seal leaves `out` alone");

        // Fill the key to exactly 2^20 blocks, one byte too many is refused first.
        let left = CONFIDENTIALITY_BLOCK_LIMIT - s.blocks();
        let fits = (left as usize - 2) * BLOCK_LEN + (BLOCK_LEN - 1);
        assert_eq!(suite.blocks_for(fits), left);
        assert!(s.seal(b"", &big[..fits + 1], &mut record).is_err());
        s.seal(b"", &big[..fits], &mut record).unwrap();
        assert_eq!((s.records(), s.blocks()), (128, 1 << 20));
        assert!(matches!(
            s.seal(b"", b"", &mut record),
            Err(Error::LimitReached(Limit::ConfidentialityBlocks { .. }))
        ));
        assert_eq!(s.blocks(), CONFIDENTIALITY_BLOCK_LIMIT);
    }

    #[test]
    fn legacy_block_cap_3des() {
        let suite = LegacySuite::TripleDesEdeCbcHmacSha256;
        let (mut s, _) = pair(suite);
        // Skip ahead rather than spend 2^20 3DES blocks; the full run is the DES test above.
        s.blocks = CONFIDENTIALITY_BLOCK_LIMIT - 3;
        let mut out = Vec::new();
        s.seal(b"", &[1; 8], &mut out).unwrap();
        assert_eq!(s.blocks(), CONFIDENTIALITY_BLOCK_LIMIT);
        assert!(matches!(
            s.seal(b"", b"", &mut out),
            Err(Error::LimitReached(Limit::ConfidentialityBlocks {
                suite: "3des-ede-cbc-hmac-sha256",
                ..
            }))
        ));
        assert_eq!(s.records(), 1);
    }

    #[test]
    fn legacy_debug_shows_no_key() {
        let secret = SecretKey::from_bytes([0xab; 32]);
        for suite in LegacySuite::ALL {
            let s = LegacySealingKey::new(suite, &secret, opt_in());
            let o = LegacyOpeningKey::new(suite, &secret, opt_in());
            let text = format!("{s:?} {o:?}");
            assert_eq!(
                text,
                format!(
                    "LegacySealingKey {{ suite: {suite:?}, records: 0, blocks: 0, .. }} \
                     LegacyOpeningKey {{ suite: {suite:?}, records: 0, failures: 0, .. }}"
                )
            );
        }
    }

    fn hex_field_str<'a>(block: &[(&'a str, &'a str)], name: &str) -> &'a str {
        block.iter().find(|(k, _)| *k == name).unwrap().1
    }

    fn hex_field(block: &[(&str, &str)], name: &str) -> Vec<u8> {
        let value = block
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .1;
        hex::decode(value).unwrap()
    }

    /// Blocks of `key = value` lines, separated by blank lines; `[SECTION]` lines become a
    /// `("section", ...)` entry of every following block.
    fn parse_blocks(text: &str) -> Vec<Vec<(&str, &str)>> {
        let mut blocks = Vec::new();
        let mut section = "";
        let mut current: Vec<(&str, &str)> = Vec::new();
        for line in text.lines().map(str::trim).chain([""]) {
            if line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some((k, v)) = line.split_once('=') {
                current.push((k.trim(), v.trim()));
            } else if line.is_empty() && !current.is_empty() {
                current.push(("section", section));
                blocks.push(std::mem::take(&mut current));
            }
        }
        blocks
    }

    #[test]
    fn legacy_tdes_cbc_matches_nist_cavp_tcbcmmt3() {
        let path = vectors_dir().join("tdes/nist-cavp-TCBCMMT3.rsp");
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut passed, mut failed) = (0, 0);
        for block in parse_blocks(&text) {
            let key = [
                hex_field(&block, "KEY1"),
                hex_field(&block, "KEY2"),
                hex_field(&block, "KEY3"),
            ]
            .concat();
            let iv: [u8; BLOCK_LEN] = hex_field(&block, "IV").try_into().unwrap();
            let plaintext = hex_field(&block, "PLAINTEXT");
            let ciphertext = hex_field(&block, "CIPHERTEXT");
            let suite = LegacySuite::TripleDesEdeCbcHmacSha256;
            let ok = match hex_field_str(&block, "section") {
                "ENCRYPT" => raw_cbc(suite, &key, &iv, &plaintext, true) == ciphertext,
                "DECRYPT" => raw_cbc(suite, &key, &iv, &ciphertext, false) == plaintext,
                other => panic!("unknown section {other}"),
            };
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        report("tdes-vectors", passed, failed);
        assert_eq!((passed, failed), (20, 0));
    }

    #[test]
    fn legacy_des_matches_boringssl_des_ecb() {
        let path = vectors_dir().join("tdes/boringssl-cipher_tests-des-subset.txt");
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut passed, mut failed) = (0, 0);
        for block in parse_blocks(&text) {
            if hex_field_str(&block, "Cipher") != "DES-ECB" {
                continue;
            }
            let key = hex_field(&block, "Key");
            let plaintext = hex_field(&block, "Plaintext");
            let ciphertext = hex_field(&block, "Ciphertext");
            // ECB on one block is CBC under a zero IV; the cases have at most one block.
            assert!(plaintext.len() <= BLOCK_LEN);
            let suite = LegacySuite::DesCbcHmacSha256;
            let zero = [0; BLOCK_LEN];
            if raw_cbc(suite, &key, &zero, &plaintext, true) == ciphertext
                && raw_cbc(suite, &key, &zero, &ciphertext, false) == plaintext
            {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        report("des-vectors", passed, failed);
        assert_eq!((passed, failed), (8, 0));
    }

    #[test]
    fn legacy_iv_is_the_encrypted_counter() {
        // CBC of (counter block || P) under a zero IV puts E_K(counter) first, then the same
        // blocks as CBC of P under IV = E_K(counter): checks `iv` against the raw wiring.
        let key = [0x13u8; 24];
        let suite = LegacySuite::TripleDesEdeCbcHmacSha256;
        let counter = 0x0102_0304_0506_0708u64;
        let p = [0x77u8; 16];
        let chained = raw_cbc(
            suite,
            &key,
            &[0; BLOCK_LEN],
            &[&counter.to_be_bytes()[..], &p].concat(),
            true,
        );
        let iv = CipherKey::new(suite, &key).iv(counter);
        assert_eq!(&chained[..8], &iv);
        assert_eq!(&chained[8..], &raw_cbc(suite, &key, &iv, &p, true)[..]);
    }
}
