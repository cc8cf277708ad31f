//! The responder's policy: which offers it accepts, and the refusal it sends otherwise.

use std::fmt;

use super::header::{pattern_id, RawHeader, MAGIC, VERSION};
use super::Header;
use crate::noise::Pattern;
use crate::suite::Suite;

/// What a responder accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Patterns allowed. Patterns with an anonymous initiator (NN, NK) also need
    /// [`allow_anonymous`](Self::allow_anonymous).
    pub patterns: Vec<Pattern>,
    /// Suites allowed.
    pub suites: Vec<Suite>,
    /// Refuse classical (X25519-only) handshakes.
    pub require_hybrid: bool,
    /// Accept initiators without a static key (NN, NK). Off unless explicitly chosen.
    pub allow_anonymous: bool,
    /// The responder has a pre-shared key: every offer must use it. Without one, offers that
    /// use a psk are refused.
    pub has_psk: bool,
}

impl Default for Policy {
    /// Authenticated initiators (IK, XX), every suite, hybrid required, no psk.
    fn default() -> Self {
        Self {
            patterns: vec![Pattern::IK, Pattern::XX],
            suites: Suite::ALL.to_vec(),
            require_hybrid: true,
            allow_anonymous: false,
            has_psk: false,
        }
    }
}

/// Length of a refusal message.
pub const REFUSAL_LEN: usize = 9;

fn pattern_mask(patterns: &[Pattern]) -> u16 {
    patterns
        .iter()
        .fold(0, |m, p| m | 1 << (pattern_id(*p) - 1))
}

fn suite_mask(suites: &[Suite]) -> u16 {
    // Legacy suites (ids above 128) are never listed: a refusal does not advertise them.
    suites
        .iter()
        .filter(|s| s.id() <= 16)
        .fold(0, |m, s| m | 1 << (s.id() - 1))
}

impl Policy {
    /// Judge an initiator's header: the accepted offer, or the reason to refuse it.
    pub(crate) fn check(&self, raw: &RawHeader) -> Result<Header, Refusal> {
        if raw.version != VERSION {
            return Err(Refusal::UnsupportedVersion {
                supported: VERSION.into(),
            });
        }
        // Anonymity first: it is the more useful reason for NN and NK offers.
        if raw.pattern.is_some_and(|p| !p.initiator_has_static()) && !self.allow_anonymous {
            return Err(Refusal::AnonymousNotAllowed);
        }
        let pattern = raw.pattern.filter(|p| self.patterns.contains(p)).ok_or(
            Refusal::PatternNotAllowed {
                allowed: pattern_mask(&self.patterns),
            },
        )?;
        let suite =
            raw.suite
                .filter(|s| self.suites.contains(s))
                .ok_or(Refusal::SuiteNotAllowed {
                    allowed: suite_mask(&self.suites),
                })?;
        if !raw.known_flags() {
            return Err(Refusal::UnknownFlags);
        }
        if self.require_hybrid && !raw.hybrid() {
            return Err(Refusal::HybridRequired);
        }
        match (self.has_psk, raw.psk()) {
            (true, false) => return Err(Refusal::PskRequired),
            (false, true) => return Err(Refusal::PskNotConfigured),
            _ => {}
        }
        Ok(Header {
            pattern,
            suite,
            hybrid: raw.hybrid(),
            psk: raw.psk(),
        })
    }
}

/// Why a responder refused an offer. Sent in the clear (docs/PROTOCOL.md, "Refusal"), so an
/// initiator can tell its user what to change. It is unauthenticated: treat it as a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The protocol version is not spoken.
    #[error("the responder speaks protocol version {supported} only; upgrade the older side")]
    UnsupportedVersion {
        /// The responder's version.
        supported: u16,
    },
    /// The handshake pattern is not allowed.
    #[error("the responder does not allow this handshake pattern; it allows: {}", patterns(*.allowed))]
    PatternNotAllowed {
        /// Bit (id - 1) set for each allowed pattern.
        allowed: u16,
    },
    /// The suite is not allowed.
    #[error("the responder does not allow this cipher suite; choose one with --suite: {}", suites(*.allowed))]
    SuiteNotAllowed {
        /// Bit (id - 1) set for each allowed suite.
        allowed: u16,
    },
    /// Classical-only key exchange is refused.
    #[error(
        "the responder requires hybrid post-quantum key exchange (X25519+ML-KEM-768); \
         drop --classic, or have the responder allow classical handshakes"
    )]
    HybridRequired,
    /// The responder requires a pre-shared key.
    #[error("the responder requires a pre-shared key; give the same one with --psk FILE")]
    PskRequired,
    /// A pre-shared key was offered but the responder has none.
    #[error(
        "the responder has no pre-shared key configured; drop --psk or configure it on both sides"
    )]
    PskNotConfigured,
    /// The initiator has no static key and anonymous initiators are refused.
    #[error(
        "the responder refuses anonymous initiators; use a key (--key), or have the responder \
         opt in with --insecure-anonymous"
    )]
    AnonymousNotAllowed,
    /// The initiator's static key is not among the keys the responder admits.
    #[error(
        "the responder does not admit this initiator's key; ask its operator to add your \
         public key (`sessionkey pubkey KEYFILE`) to its authorized peers"
    )]
    KeyNotAuthorized,
    /// The responder could not decrypt the hello: the initiator encrypted it to a key that is
    /// not the responder's (a wrong pin), or it was altered on the way.
    #[error(
        "the responder could not decrypt the hello: the server key this side pinned is not \
         the server's key (or the hello was altered on the way)"
    )]
    UndecryptableHello,
    /// The header set flags this version does not know.
    #[error("the offer set header flags the responder does not know; upgrade the responder")]
    UnknownFlags,
    /// A refusal code this version does not know.
    #[error("the responder refused the offer (reason code {0})")]
    Other(u8),
}

fn patterns(mask: u16) -> String {
    let names: Vec<&str> = Pattern::ALL
        .into_iter()
        .filter(|p| mask & 1 << (pattern_id(*p) - 1) != 0)
        .map(Pattern::name)
        .collect();
    names.join(", ")
}

fn suites(mask: u16) -> String {
    let names: Vec<&str> = Suite::ALL
        .into_iter()
        .filter(|s| mask & 1 << (s.id() - 1) != 0)
        .map(Suite::name)
        .collect();
    names.join(", ")
}

impl Refusal {
    fn code_detail(&self) -> (u8, u16) {
        match *self {
            Self::UnsupportedVersion { supported } => (1, supported),
            Self::PatternNotAllowed { allowed } => (2, allowed),
            Self::SuiteNotAllowed { allowed } => (3, allowed),
            Self::HybridRequired => (4, 0),
            Self::PskRequired => (5, 0),
            Self::PskNotConfigured => (6, 0),
            Self::AnonymousNotAllowed => (7, 0),
            Self::UnknownFlags => (8, 0),
            Self::KeyNotAuthorized => (9, 0),
            Self::UndecryptableHello => (10, 0),
            Self::Other(code) => (code, 0),
        }
    }

    /// The refusal's nine bytes: magic, version, 0 (never a pattern id), code, and a
    /// big-endian 16-bit detail.
    pub fn encode(&self) -> [u8; REFUSAL_LEN] {
        let (code, detail) = self.code_detail();
        let [m0, m1, m2, m3] = MAGIC;
        let [d0, d1] = detail.to_be_bytes();
        [m0, m1, m2, m3, VERSION, 0, code, d0, d1]
    }

    /// Recognise a refusal among the responder's replies: exactly nine bytes, starting with
    /// the magic. A Noise reply is never that short (at least 48 bytes).
    pub fn decode(message: &[u8]) -> Option<Self> {
        if message.len() != REFUSAL_LEN || message[..4] != MAGIC || message[5] != 0 {
            return None;
        }
        let detail = u16::from_be_bytes([message[7], message[8]]);
        Some(match message[6] {
            1 => Self::UnsupportedVersion { supported: detail },
            2 => Self::PatternNotAllowed { allowed: detail },
            3 => Self::SuiteNotAllowed { allowed: detail },
            4 => Self::HybridRequired,
            5 => Self::PskRequired,
            6 => Self::PskNotConfigured,
            7 => Self::AnonymousNotAllowed,
            8 => Self::UnknownFlags,
            9 => Self::KeyNotAuthorized,
            10 => Self::UndecryptableHello,
            code => Self::Other(code),
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "patterns {}; suites {}; {}; {}",
            patterns(pattern_mask(&self.patterns)),
            suites(suite_mask(&self.suites)),
            if self.require_hybrid {
                "hybrid required"
            } else {
                "classical allowed"
            },
            if self.has_psk {
                "psk required"
            } else {
                "no psk"
            }
        )
    }
}
