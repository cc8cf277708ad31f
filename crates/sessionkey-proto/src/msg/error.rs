//! The errors of the messaging core.

use super::keys::PrekeyKind;

/// Everything that can go wrong while setting up a messaging session or moving a message
/// through it.
///
/// Every variant caused by received bytes leaves the session and the device exactly as they
/// were: a failed, forged or duplicated message changes no state (docs/MESSAGING.md,
/// "Decrypt on a copy").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsgError {
    /// A key's encoding is wrong: an unexpected type byte, a wrong length, an invalid or
    /// low-order X25519 key, or an ML-KEM-768 key that fails its checks.
    #[error("bad key encoding: {0}")]
    BadKeyEncoding(&'static str),
    /// A signature over an identity binding or a prekey did not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A sending chain reached 2^32 - 1 messages without a reply; the session must be
    /// replaced with a new setup.
    #[error("sending chain exhausted: 2^32 - 1 messages without a reply")]
    ChainExhausted,
    /// Stored state (a session or a device) could not be read back: truncated, corrupted or
    /// of an unknown version. It is refused as a whole, never half-used.
    #[error("stored messaging state is corrupt: {0}")]
    CorruptState(&'static str),
    /// The cryptographic provider failed internally (for example the random source).
    #[error("internal cryptographic failure: {0}")]
    Crypto(&'static str),
    /// The message was already decrypted, or its skipped message key was evicted (bounds) or
    /// has expired (14 days). Either way its key is gone.
    #[error("duplicated message (already decrypted, or its key was evicted or expired)")]
    Duplicated,
    /// An address is empty or longer than 255 bytes.
    #[error("an address must be 1 to 255 bytes, not {0}")]
    InvalidAddress(usize),
    /// The message is malformed or failed authentication (tampered with, or not meant for this
    /// session). Deliberately opaque about which check failed.
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    /// A plaintext is too large for one message.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Plaintext length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A ran-out counter of prekey ids (2^32 - 1 keys of one kind were made).
    #[error("prekey ids of kind {0} exhausted")]
    PrekeyIdsExhausted(PrekeyKind),
    /// An initial message reused the last-resort ML-KEM prekey with a base key already seen:
    /// a replayed session setup.
    #[error("replayed session setup (last-resort KEM prekey with a base key already used)")]
    PrekeyReplay,
    /// The message lies more than [`MAX_SKIP`](super::MAX_SKIP) messages ahead in its chain.
    #[error("message {skip} ahead in its chain; at most {max} may be skipped")]
    TooFarAhead {
        /// How many message keys would have to be skipped.
        skip: u64,
        /// The bound.
        max: u32,
    },
    /// One batch of prekeys larger than a device may hold of one kind (smaller batches make
    /// room by dropping the oldest unused keys instead).
    #[error("{held} one-time prekeys of one kind would exceed the maximum of {max}")]
    TooManyPrekeys {
        /// How many would be held.
        held: usize,
        /// The maximum.
        max: usize,
    },
    /// An initial message names a prekey this device does not hold (never made, already used
    /// once, or removed).
    #[error("unknown {kind} {id}")]
    UnknownPrekey {
        /// Which kind of prekey.
        kind: PrekeyKind,
        /// Its id.
        id: u32,
    },
    /// A version this implementation does not speak, or a reserved flag set.
    #[error("unsupported message or encoding version {0:#04x}")]
    UnsupportedVersion(u8),
    /// The peer's identity is not the one this side trusts for it.
    #[error("untrusted identity: the peer's identity key differs from the pinned one")]
    UntrustedIdentity,
}

impl From<crate::Error> for MsgError {
    fn from(e: crate::Error) -> Self {
        use crate::PeerMisbehaved as P;
        match e {
            crate::Error::PeerMisbehaved(P::InvalidPublicKey) => {
                Self::BadKeyEncoding("invalid or low-order X25519 public key")
            }
            crate::Error::PeerMisbehaved(P::InvalidKemPublicKey) => {
                Self::BadKeyEncoding("invalid ML-KEM-768 encapsulation key")
            }
            crate::Error::PeerMisbehaved(P::InvalidKemCiphertext) => {
                Self::InvalidMessage("malformed ML-KEM-768 ciphertext")
            }
            crate::Error::PeerMisbehaved(_) => Self::InvalidMessage("authentication failed"),
            crate::Error::Crypto(what) => Self::Crypto(what),
            _ => Self::Crypto("unexpected provider error"),
        }
    }
}
