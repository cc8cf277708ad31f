//! What a session reports: lifecycle events with fingerprints and counters, never key bytes.

use std::fmt;

use crate::keys::{Fingerprint, PublicKey};
use crate::noise::Pattern;
use crate::suite::Suite;
use crate::Error;

/// Which way records flow, seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Records this side sends.
    Send,
    /// Records this side receives.
    Receive,
}

/// One direction's key epoch and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// Key epoch: 0 after the handshake, +1 at each key update or re-handshake.
    pub epoch: u32,
    /// Fingerprint of the current key (a one-way hash of it).
    pub key_fingerprint: Fingerprint,
    /// Records in this direction over the session.
    pub records: u64,
    /// Application data bytes in this direction over the session.
    pub bytes: u64,
    /// Records under the current key.
    pub records_this_key: u64,
    /// Whether this direction is still open.
    pub open: bool,
}

/// A snapshot of an established session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// A short id for logs, from the handshake hash.
    pub id: u64,
    /// The session fingerprint both peers compute (PROTOCOL.md section 6).
    pub fingerprint: Fingerprint,
    /// The record suite.
    pub suite: Suite,
    /// The handshake pattern.
    pub pattern: Pattern,
    /// Whether the key exchanges are hybrid (X25519 + ML-KEM-768).
    pub hybrid: bool,
    /// The peer's static key, if the pattern has one.
    pub peer: Option<PublicKey>,
    /// The sending direction.
    pub send: DirectionStats,
    /// The receiving direction.
    pub receive: DirectionStats,
    /// Completed re-handshakes.
    pub rehandshakes: u32,
    /// Failed decryptions over the session.
    pub failed_decryptions: u64,
    /// When the next scheduled re-handshake is due, if one is scheduled.
    pub next_rehandshake: Option<std::time::Instant>,
}

/// Why a session ended.
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// Both sides sent their authenticated close, and the totals matched.
    Clean,
    /// Something went wrong; the error names it.
    Error(Error),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clean => f.write_str("closed cleanly"),
            Self::Error(e) => write!(f, "{e}"),
        }
    }
}

/// A lifecycle event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed.
    Established(SessionInfo),
    /// One direction moved to its next key (ratchet or re-handshake).
    KeyUpdated {
        /// Which direction.
        direction: Direction,
        /// The session after the change.
        info: SessionInfo,
    },
    /// A fresh ephemeral exchange completed and both directions use its keys.
    Rehandshaken(SessionInfo),
    /// The session ended.
    Closed {
        /// Why.
        reason: CloseReason,
        /// The session at its end, if it was established.
        info: Option<SessionInfo>,
    },
}
