//! The one error type of the protocol core.
//!
//! Variants are grouped by who is at fault: the peer ([`PeerMisbehaved`]), the caller
//! ([`ApiMisuse`]), a usage bound ([`Limit`]), a policy refusal ([`Refusal`]) or a key file
//! ([`KeyFileProblem`]). Decryption failures stay opaque: they never say which check failed.

use std::fmt;
use std::path::PathBuf;

use crate::handshake::Refusal;

/// Everything that can go wrong in the protocol core.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent something invalid; the session or handshake must be closed.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(PeerMisbehaved),
    /// The caller used the API in a way it does not allow.
    #[error("API misuse: {0}")]
    ApiMisuse(ApiMisuse),
    /// A usage bound of a key or a session was reached.
    #[error("limit reached: {0}")]
    LimitReached(Limit),
    /// The responder's policy refused the initiator's offer.
    #[error("refused by the responder: {0}")]
    Refused(Refusal),
    /// A key file could not be used.
    #[error("key file {}: {problem}", path.display())]
    KeyFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it and how to fix it.
        problem: KeyFileProblem,
    },
    /// The cryptographic provider failed internally (for example the system random source).
    #[error("internal cryptographic failure: {0}")]
    Crypto(&'static str),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(Timeout),
    /// The caller's check refused the peer's static key (for example a changed known-peers
    /// entry); the handshake stopped before this side revealed anything more.
    #[error("the peer's key was refused: {0}")]
    PeerKeyRejected(std::sync::Arc<dyn std::error::Error + Send + Sync>),
}

/// Deadlines of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Timeout {
    /// The handshake did not complete in time.
    #[error("the handshake did not complete within {0:?}; is the peer a sessionkey endpoint?")]
    Handshake(std::time::Duration),
    /// Nothing was received for too long.
    #[error("nothing received for {0:?}; the peer is gone or the path is broken")]
    Idle(std::time::Duration),
    /// A re-handshake was due and did not complete in time: the peer stopped answering, or
    /// someone on the path holds the old keys and cannot complete a fresh exchange.
    #[error(
        "the re-handshake did not complete within {0:?} of being due; \
         the session's keys are no longer trusted"
    )]
    Rehandshake(std::time::Duration),
    /// The peer did not close its direction after this side's lifetime close.
    #[error("the peer did not close within {0:?} after the session's lifetime ended")]
    LifetimeClose(std::time::Duration),
}

/// Ways a peer can misbehave. Any of these ends the handshake or session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// Authentication failed: the message was altered, is from someone else, or uses another key.
    #[error("decryption failed (message tampered with, or wrong key)")]
    BadTag,
    /// A message ended before all its fields.
    #[error("message truncated: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the next field needed.
        needed: usize,
        /// Bytes that were left.
        got: usize,
    },
    /// A message was longer than the protocol allows.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Length of the message.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A message had bytes after its last field.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// An X25519 public key was invalid or of low order (the shared secret would be all zero).
    #[error("invalid or low-order X25519 public key")]
    InvalidPublicKey,
    /// An ML-KEM-768 encapsulation key failed its validity checks (FIPS 203 7.2).
    #[error("invalid ML-KEM-768 encapsulation key")]
    InvalidKemPublicKey,
    /// An ML-KEM-768 ciphertext was malformed.
    #[error("malformed ML-KEM-768 ciphertext")]
    InvalidKemCiphertext,
    /// The clear handshake header was not understood.
    #[error("invalid handshake header: {0}")]
    InvalidHeader(&'static str),
    /// The stream ended without the peer's authenticated close record.
    #[error("the connection ended without an authenticated close: the stream was truncated")]
    StreamTruncated,
    /// The totals in the peer's close record do not match what was received.
    #[error(
        "close record says {sent_records} records and {sent_bytes} bytes were sent, \
         but {received_records} records and {received_bytes} bytes arrived"
    )]
    CloseMismatch {
        /// Records the peer says it sent.
        sent_records: u64,
        /// Data bytes the peer says it sent.
        sent_bytes: u64,
        /// Records received.
        received_records: u64,
        /// Data bytes received.
        received_bytes: u64,
    },
    /// The connection ended before the peer acknowledged this side's close.
    #[error(
        "the peer never confirmed receiving everything sent: its acknowledgement did not \
         arrive (the peer or its application stopped before reading to the end)"
    )]
    NotAcknowledged,
    /// The peer acknowledged other totals than this side's close said it sent.
    #[error(
        "the peer acknowledged {acked_bytes} bytes but {sent_bytes} were sent: \
         not everything was delivered"
    )]
    AckMismatch {
        /// Data bytes this side sent.
        sent_bytes: u64,
        /// Data bytes the peer says it received.
        acked_bytes: u64,
    },
    /// A record that is not allowed at this point, or of an unknown type.
    #[error("unexpected record: {0}")]
    UnexpectedRecord(&'static str),
    /// A datagram replayed, or too old for the replay window.
    #[error("replayed or too old datagram")]
    Replay,
}

/// Ways the caller can misuse the API. These are bugs in the caller, never caused by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// A handshake message was written or read out of turn.
    #[error("handshake message out of order: it is not this side's turn to {0}")]
    OutOfOrder(&'static str),
    /// The handshake is already complete.
    #[error("the handshake is already complete")]
    HandshakeFinished,
    /// The handshake has not completed yet.
    #[error("the handshake has not completed yet")]
    HandshakeNotFinished,
    /// The handshake failed earlier and cannot be continued.
    #[error("the handshake failed earlier and cannot be used any more")]
    HandshakeFailed,
    /// A key the pattern needs was not supplied.
    #[error("missing key: {0}")]
    MissingKey(&'static str),
    /// A key was supplied that the pattern does not use.
    #[error("unexpected key: {0}")]
    UnexpectedKey(&'static str),
    /// The output buffer is too small.
    #[error("output buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A Noise protocol name was not understood or is not supported.
    #[error("unsupported Noise protocol name {0:?}")]
    UnsupportedProtocol(String),
    /// The session is closed (or this direction is) and cannot send.
    #[error("the session is closed for sending")]
    SendClosed,
    /// The session has not completed its handshake yet.
    #[error("the session is not established yet")]
    NotEstablished,
    /// The payload is larger than a message can carry.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

/// A usage bound. The variant names the bound, so the message can say which one was hit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Limit {
    /// Records sealed under one key reached the suite's confidentiality limit.
    #[error("{suite}: confidentiality limit of {limit} records per key reached; rotate the key")]
    ConfidentialityRecords {
        /// Suite name.
        suite: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Cipher blocks sealed under one key reached the suite's confidentiality limit.
    #[error("{suite}: confidentiality limit of {limit} blocks per key reached; rotate the key")]
    ConfidentialityBlocks {
        /// Suite name.
        suite: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Failed decryptions reached the suite's integrity (forgery) limit.
    #[error(
        "{suite}: integrity limit of {limit} failed decryptions reached; the session must end"
    )]
    Integrity {
        /// Suite name.
        suite: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The 64-bit nonce counter is exhausted.
    #[error("nonce counter exhausted")]
    NonceExhausted,
    /// A direction's key epoch counter would wrap.
    #[error("key epoch counter exhausted; start a new session")]
    EpochExhausted,
    /// The session reached its configured maximum lifetime.
    #[error("session lifetime of {0:?} reached; start a new session")]
    Lifetime(std::time::Duration),
    /// Failed decryptions across all keys of a session reached the session's bound.
    #[error("{limit} failed decryptions across the session's keys; the session must end")]
    SessionIntegrity {
        /// The limit.
        limit: u64,
    },
}

/// What is wrong with a key file, and how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The private key file can be read by other users.
    #[error(
        "private key is readable by group or others (mode {mode:04o}); \
         fix it with: chmod 600 {path}"
    )]
    TooOpen {
        /// The file's permission bits.
        mode: u32,
        /// The path, for the fix.
        path: DisplayPath,
    },
    /// The file does not hold a key in the expected format.
    #[error("{0}")]
    Malformed(String),
    /// The file already exists and will not be overwritten.
    #[error("already exists; remove it first or choose another path")]
    Exists,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(std::sync::Arc<std::io::Error>),
}

impl From<std::io::Error> for KeyFileProblem {
    fn from(e: std::io::Error) -> Self {
        Self::Io(std::sync::Arc::new(e))
    }
}

/// A path rendered for use inside a shell command in an error message.
#[derive(Debug, Clone)]
pub struct DisplayPath(pub PathBuf);

impl fmt::Display for DisplayPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.display().to_string();
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c))
        {
            f.write_str(&s)
        } else {
            write!(f, "'{}'", s.replace('\'', r"'\''"))
        }
    }
}

// Not `#[from]`: that would also make the inner error the source, and error reports that
// print the chain would say everything twice.
macro_rules! from_inner {
    ($($variant:ident($inner:ty)),*) => {$(
        impl From<$inner> for Error {
            fn from(e: $inner) -> Self {
                Self::$variant(e)
            }
        }
    )*};
}

from_inner!(
    PeerMisbehaved(PeerMisbehaved),
    ApiMisuse(ApiMisuse),
    LimitReached(Limit),
    Refused(Refusal),
    Timeout(Timeout)
);

impl From<aws_lc_rs::error::Unspecified> for Error {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto("aws-lc-rs operation failed")
    }
}
