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
    /// Run a fresh ephemeral exchange this often (the handshake's initiator schedules it).
    pub rehandshake_interval: Option<Duration>,
    /// End the session after this long.
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
            max_lifetime: None,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            max_record_len: crate::record::MAX_BODY,
            usage_limits: None,
            max_failed_decryptions: 1 << 20,
        }
    }
}
