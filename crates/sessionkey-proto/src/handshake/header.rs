//! The clear handshake header (docs/PROTOCOL.md, "Header") and the refusal message.

use std::fmt;

use crate::error::PeerMisbehaved;
use crate::noise::{HashChoice, NoiseParams, Pattern};
use crate::suite::Suite;
use crate::Error;

/// The first four bytes of every initiator hello and every refusal.
pub const MAGIC: [u8; 4] = *b"SKEY";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Length of the header, and of a refusal.
pub const HEADER_LEN: usize = 8;

const FLAG_HYBRID: u8 = 0b01;
const FLAG_PSK: u8 = 0b10;

/// What the initiator offers, sent in the clear before its first Noise message and bound into
/// the Noise prologue, so that any change in flight makes the handshake fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The handshake pattern.
    pub pattern: Pattern,
    /// The record suite.
    pub suite: Suite,
    /// Hybrid post-quantum (X25519 + ML-KEM-768, Noise `hfs`) or classical X25519 only.
    pub hybrid: bool,
    /// Whether a pre-shared key is mixed in (at the end of the last handshake message).
    pub psk: bool,
}

pub(crate) fn pattern_id(p: Pattern) -> u8 {
    match p {
        Pattern::NN => 1,
        Pattern::NK => 2,
        Pattern::XX => 3,
        Pattern::IK => 4,
        Pattern::KK => 5,
        Pattern::NK1 => 6,
        Pattern::XX1 => 7,
        Pattern::KK1 => 8,
        Pattern::IK1 => 9,
    }
}

fn pattern_from_id(id: u8) -> Option<Pattern> {
    Pattern::ALL.into_iter().find(|p| pattern_id(*p) == id)
}

/// What a hello's header says, before the policy judges it: known fields decoded, unknown
/// ones kept as numbers so the refusal can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawHeader {
    pub(crate) version: u8,
    pub(crate) pattern: Option<Pattern>,
    pub(crate) suite: Option<Suite>,
    pub(crate) flags: u8,
}

impl Header {
    /// The header's eight bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut flags = 0;
        if self.hybrid {
            flags |= FLAG_HYBRID;
        }
        if self.psk {
            flags |= FLAG_PSK;
        }
        let [m0, m1, m2, m3] = MAGIC;
        [
            m0,
            m1,
            m2,
            m3,
            VERSION,
            pattern_id(self.pattern),
            self.suite.id(),
            flags,
        ]
    }

    pub(crate) fn decode_raw(bytes: &[u8]) -> Result<RawHeader, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(PeerMisbehaved::Truncated {
                needed: HEADER_LEN,
                got: bytes.len(),
            }
            .into());
        }
        if bytes[..4] != MAGIC {
            return Err(PeerMisbehaved::InvalidHeader("not a sessionkey hello (bad magic)").into());
        }
        Ok(RawHeader {
            version: bytes[4],
            pattern: pattern_from_id(bytes[5]),
            suite: Suite::from_header_id(bytes[6]),
            flags: bytes[7],
        })
    }

    /// The Noise protocol this header selects: SHA-256, the suite's Noise cipher, `hfs` when
    /// hybrid, and `pskN` at the end of the last message when `psk` is set.
    pub fn noise_params(&self) -> NoiseParams {
        let mut params =
            NoiseParams::new(self.pattern, self.suite.noise_cipher(), HashChoice::Sha256);
        if self.hybrid {
            params = params.with_hfs();
        }
        if self.psk {
            let last = self.pattern.message_count() as u8;
            params = params
                .with_psk(last)
                .unwrap_or_else(|_| unreachable!("psk at the last message is always allowed"));
        }
        params
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}{}",
            self.pattern.name(),
            self.suite,
            if self.hybrid {
                "hybrid X25519+ML-KEM-768"
            } else {
                "classical X25519"
            },
            if self.psk { " +psk" } else { "" }
        )
    }
}

impl RawHeader {
    pub(crate) fn known_flags(&self) -> bool {
        self.flags & !(FLAG_HYBRID | FLAG_PSK) == 0
    }

    pub(crate) fn hybrid(&self) -> bool {
        self.flags & FLAG_HYBRID != 0
    }

    pub(crate) fn psk(&self) -> bool {
        self.flags & FLAG_PSK != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let h = Header {
            pattern: Pattern::IK,
            suite: Suite::Aes256Gcm,
            hybrid: true,
            psk: false,
        };
        assert_eq!(h.encode(), [b'S', b'K', b'E', b'Y', 1, 4, 2, 1]);
        let raw = Header::decode_raw(&h.encode()).unwrap();
        assert_eq!(raw.pattern, Some(Pattern::IK));
        assert_eq!(raw.suite, Some(Suite::Aes256Gcm));
        assert!(raw.hybrid() && !raw.psk() && raw.known_flags());
        assert_eq!(
            h.noise_params().to_string(),
            "Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256"
        );
        let xx = Header {
            pattern: Pattern::XX,
            suite: Suite::ChaCha20Poly1305,
            hybrid: false,
            psk: true,
        };
        assert_eq!(
            xx.noise_params().to_string(),
            "Noise_XXpsk3_25519_ChaChaPoly_SHA256"
        );
        assert!(Header::decode_raw(b"SKEY\x01\x04").is_err());
        assert!(Header::decode_raw(b"HTTP/1.1 200").is_err());
    }
}
