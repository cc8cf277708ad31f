//! A direction's record cipher: an AEAD suite, or (feature `legacy-ciphers`) DES or 3DES
//! with HMAC-SHA256, which pads and has a longer tag (PROTOCOL.md sections 8 and 9).

use crate::crypto::aead::TAG_LEN;
use crate::keys::SecretKey;
use crate::record::{write_prefix, LEN_PREFIX, MAX_CONTENT};
use crate::suite::{OpeningKey, SealingKey, Suite, UsageLimits};
use crate::{ApiMisuse, Error};

#[cfg(feature = "legacy-ciphers")]
use crate::crypto::legacy::{self, InsecureLegacyCipher, LegacyOpeningKey, LegacySealingKey};

#[cfg(feature = "legacy-ciphers")]
fn opt_in() -> InsecureLegacyCipher {
    // The suite value carries the opt-in: it exists only through `Suite::insecure_legacy`,
    // or as a header id that a responder admits only when its policy was built with one.
    InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken()
}

/// Seals whole stream records.
pub(crate) enum Sealer {
    Aead(SealingKey),
    #[cfg(feature = "legacy-ciphers")]
    // Boxed: a legacy key is large and rare.
    Legacy {
        key: Box<LegacySealingKey>,
        suite: Suite,
        limits: UsageLimits,
        scratch: Vec<u8>,
    },
}

/// Opens whole stream records.
pub(crate) enum Opener {
    Aead(OpeningKey),
    #[cfg(feature = "legacy-ciphers")]
    Legacy {
        key: Box<LegacyOpeningKey>,
        suite: Suite,
        limits: UsageLimits,
        blocks: u64,
        scratch: Vec<u8>,
    },
}

/// The most content a record of `suite` carries within the 65535-byte frame body.
pub(crate) fn max_content(suite: Suite) -> usize {
    #[cfg(feature = "legacy-ciphers")]
    if suite.legacy().is_some() {
        // ((content + 1) / 8 + 1) * 8 + 32 <= 65535
        return (crate::record::MAX_BODY - legacy::TAG_LEN) / legacy::BLOCK_LEN * legacy::BLOCK_LEN
            - 2;
    }
    let _ = suite;
    MAX_CONTENT
}

/// The most a record's body adds to its content: the type byte, padding and the tag.
pub(crate) fn max_overhead(suite: Suite) -> usize {
    #[cfg(feature = "legacy-ciphers")]
    if suite.legacy().is_some() {
        return 1 + legacy::BLOCK_LEN + legacy::TAG_LEN;
    }
    let _ = suite;
    1 + TAG_LEN
}

/// The body length of a record whose plaintext (content and type byte) is `plain` bytes.
fn body_len(suite: Suite, plain: usize) -> usize {
    #[cfg(feature = "legacy-ciphers")]
    if let Some(l) = suite.legacy() {
        return l.sealed_len(plain);
    }
    let _ = suite;
    plain + TAG_LEN
}

impl Sealer {
    pub(crate) fn new(
        suite: Suite,
        secret: &SecretKey,
        limits: UsageLimits,
    ) -> Result<Self, Error> {
        #[cfg(feature = "legacy-ciphers")]
        if let Some(l) = suite.legacy() {
            return Ok(Self::Legacy {
                key: Box::new(LegacySealingKey::new(l, secret, opt_in())),
                suite,
                limits: lower(suite, limits),
                scratch: Vec::new(),
            });
        }
        SealingKey::with_limits(suite, secret, limits).map(Self::Aead)
    }

    pub(crate) fn suite(&self) -> Suite {
        match self {
            Self::Aead(k) => k.suite(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { suite, .. } => *suite,
        }
    }

    pub(crate) fn limits(&self) -> UsageLimits {
        match self {
            Self::Aead(k) => k.limits(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { limits, .. } => *limits,
        }
    }

    pub(crate) fn records(&self) -> u64 {
        match self {
            Self::Aead(k) => k.records(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { key, .. } => key.records(),
        }
    }

    /// Cipher blocks used, in the suite's own block size.
    pub(crate) fn blocks(&self) -> u64 {
        match self {
            Self::Aead(k) => k.blocks(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { key, .. } => key.blocks(),
        }
    }

    /// Seal the plaintext at `buf[LEN_PREFIX..LEN_PREFIX + plain]` into a whole frame in
    /// `buf`; returns the frame length.
    #[inline]
    pub(crate) fn seal_frame(&mut self, buf: &mut [u8], plain: usize) -> Result<usize, Error> {
        let body = body_len(self.suite(), plain);
        let total = LEN_PREFIX + body;
        if buf.len() < total {
            return Err(ApiMisuse::BufferTooSmall {
                needed: total,
                have: buf.len(),
            }
            .into());
        }
        write_prefix(buf, body);
        let (prefix, rest) = buf.split_at_mut(LEN_PREFIX);
        match self {
            Self::Aead(key) => {
                let tag = key.seal_in_place(prefix, &mut rest[..plain])?;
                rest[plain..plain + TAG_LEN].copy_from_slice(&tag);
            }
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { key, scratch, .. } => {
                scratch.clear();
                key.seal(prefix, &rest[..plain], scratch)?;
                rest[..body].copy_from_slice(scratch);
            }
        }
        Ok(total)
    }
}

/// The limits of a legacy key: the caller's, never above the suite's.
#[cfg(feature = "legacy-ciphers")]
fn lower(suite: Suite, limits: UsageLimits) -> UsageLimits {
    let max = suite.limits();
    UsageLimits {
        records: limits.records.min(max.records),
        blocks: limits.blocks.min(max.blocks),
        failed_decryptions: limits.failed_decryptions.min(max.failed_decryptions),
    }
}

impl Opener {
    pub(crate) fn new(
        suite: Suite,
        secret: &SecretKey,
        limits: UsageLimits,
    ) -> Result<Self, Error> {
        #[cfg(feature = "legacy-ciphers")]
        if let Some(l) = suite.legacy() {
            return Ok(Self::Legacy {
                key: Box::new(LegacyOpeningKey::new(l, secret, opt_in())),
                suite,
                limits: lower(suite, limits),
                blocks: 0,
                scratch: Vec::new(),
            });
        }
        OpeningKey::with_limits(suite, secret, limits).map(Self::Aead)
    }

    pub(crate) fn suite(&self) -> Suite {
        match self {
            Self::Aead(k) => k.suite(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { suite, .. } => *suite,
        }
    }

    pub(crate) fn records(&self) -> u64 {
        match self {
            Self::Aead(k) => k.records(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { key, .. } => key.records(),
        }
    }

    pub(crate) fn failures(&self) -> u64 {
        match self {
            Self::Aead(k) => k.failures(),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy { key, .. } => key.failures(),
        }
    }

    /// Open a whole frame (`prefix || body`) in place; returns the plaintext length (the
    /// plaintext starts at `LEN_PREFIX`).
    #[inline]
    pub(crate) fn open_frame(&mut self, frame: &mut [u8]) -> Result<usize, Error> {
        let (prefix, body) = frame.split_at_mut(LEN_PREFIX);
        match self {
            Self::Aead(key) => key.open_in_place(prefix, body).map(|p| p.len()),
            #[cfg(feature = "legacy-ciphers")]
            Self::Legacy {
                key,
                suite,
                limits,
                blocks,
                scratch,
            } => {
                // The receiver holds a legacy sender to the block limit too (section 8).
                let cost = suite.legacy().map_or(0, |l| {
                    l.blocks_for(body.len().saturating_sub(legacy::TAG_LEN))
                });
                let next = blocks.saturating_add(cost);
                if next > limits.blocks {
                    return Err(crate::Limit::ConfidentialityBlocks {
                        suite: suite.name(),
                        limit: limits.blocks,
                    }
                    .into());
                }
                scratch.clear();
                key.open(prefix, body, scratch)?;
                *blocks = next;
                body[..scratch.len()].copy_from_slice(scratch);
                Ok(scratch.len())
            }
        }
    }
}
