//! When keys rotate and sessions end.

use std::time::Duration;

use crate::suite::UsageLimits;

/// A session's rotation and lifetime policy. The defaults are DESIGN.md's; build others
/// with `SessionConfig { field: value, ..SessionConfig::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Update a direction's key (one-way ratchet) after this many data bytes under one key.
    pub key_update_bytes: u64,
    /// Update a direction's key after this many records under one key.
    pub key_update_records: u64,
    /// Run a fresh ephemeral exchange this often. Both sides schedule it; the responder's
    /// timer runs an eighth longer, so the initiator normally asks first.
    pub rehandshake_interval: Option<Duration>,
    /// Also run one after this side sent this many data bytes since the last one.
    pub rehandshake_bytes: Option<u64>,
    /// End the session when a re-handshake has not completed this long after it was due.
    pub rehandshake_deadline: Duration,
    /// At this age the session sends its close; it ends when the peer closes in turn, and
    /// fails with [`Timeout::LifetimeClose`](crate::Timeout::LifetimeClose) if the peer has
    /// not done so within [`LIFETIME_GRACE`](super::LIFETIME_GRACE).
    pub max_lifetime: Option<Duration>,
    /// End the session when nothing arrives for this long.
    pub idle_timeout: Option<Duration>,
    /// Give up on a handshake that has not completed after this long.
    pub handshake_timeout: Duration,
    /// Refuse records longer than this (at most 65535, the frame limit).
    pub max_record_len: usize,
    /// Lower the suite's per-key usage limits (never raises them).
    pub usage_limits: Option<UsageLimits>,
    /// Failed decryptions tolerated across all keys of the session. Streams close at the
    /// first failure regardless; this bounds datagram sessions.
    pub max_failed_decryptions: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            key_update_bytes: 1 << 30,
            key_update_records: 1 << 20,
            rehandshake_interval: Some(Duration::from_secs(120)),
            rehandshake_bytes: Some(1 << 36),
            rehandshake_deadline: Duration::from_secs(60),
            max_lifetime: None,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            max_record_len: crate::record::MAX_BODY,
            usage_limits: None,
            max_failed_decryptions: 1 << 20,
        }
    }
}
