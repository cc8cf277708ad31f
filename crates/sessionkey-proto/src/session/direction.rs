//! A direction: its traffic secret, record key, epoch and counters. Sealing and opening of
//! stream records happen here (PROTOCOL.md section 9).

use crate::keys::{Fingerprint, SecretKey};
use crate::record::{RecordType, LEN_PREFIX};
use crate::suite::{Suite, UsageLimits};
use crate::Error;

use super::cipher::{Opener, Sealer};
use super::event::DirectionStats;

/// Counters shared by both directions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// The epoch after `epoch`; a peer that rotates 2^32 times ends the session, never wraps it.
fn next_epoch(epoch: u32) -> Result<u32, Error> {
    epoch
        .checked_add(1)
        .ok_or_else(|| crate::error::Limit::EpochExhausted.into())
}

pub(crate) struct SendDirection {
    secret: SecretKey,
    key: Sealer,
    pub(crate) epoch: u32,
    fingerprint: Fingerprint,
    pub(crate) totals: Totals,
    bytes_this_key: u64,
    pub(crate) open: bool,
}

impl SendDirection {
    pub(crate) fn new(suite: Suite, secret: SecretKey, limits: UsageLimits) -> Result<Self, Error> {
        Ok(Self {
            key: Sealer::new(suite, &secret, limits)?,
            fingerprint: Fingerprint::of_secret(secret.expose()),
            secret,
            epoch: 0,
            totals: Totals::default(),
            bytes_this_key: 0,
            open: true,
        })
    }

    /// Move to a new secret; the old one is zeroized as it is dropped.
    pub(crate) fn install(&mut self, secret: &SecretKey) -> Result<(), Error> {
        let epoch = next_epoch(self.epoch)?;
        let suite = self.key.suite();
        self.key = Sealer::new(suite, secret, self.key.limits())?;
        self.fingerprint = Fingerprint::of_secret(secret.expose());
        // A copy into this direction's own storage; the caller's secret is zeroized where
        // it lies when the caller drops it (see `Rekey`).
        self.secret = SecretKey::from_bytes(*secret.expose());
        self.epoch = epoch;
        self.bytes_this_key = 0;
        Ok(())
    }

    pub(crate) fn secret(&self) -> &SecretKey {
        &self.secret
    }

    /// Seal the record whose content is already at `buf[LEN_PREFIX..LEN_PREFIX + len]`;
    /// returns the frame length.
    #[inline]
    pub(crate) fn seal_in_place(
        &mut self,
        kind: RecordType,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, Error> {
        let Some(type_byte) = buf.get_mut(LEN_PREFIX + len) else {
            return Err(crate::ApiMisuse::BufferTooSmall {
                needed: LEN_PREFIX + len + 1,
                have: buf.len(),
            }
            .into());
        };
        *type_byte = kind as u8;
        let total = self.key.seal_frame(buf, len + 1)?;
        self.totals.records += 1;
        if kind == RecordType::Data {
            self.totals.bytes += len as u64;
            self.bytes_this_key += len as u64;
        }
        Ok(total)
    }

    /// The most content one record can carry, and what a record adds to its content.
    pub(crate) fn record_sizes(&self) -> (usize, usize) {
        let suite = self.key.suite();
        (
            super::cipher::max_content(suite),
            super::cipher::max_overhead(suite),
        )
    }

    /// Whether the key should be updated before sealing more (policy, or half of a limit).
    pub(crate) fn wants_update(&self, after_records: u64, after_bytes: u64) -> bool {
        let limits = self.key.limits();
        self.key.records() >= after_records.min(limits.records / 2)
            || self.bytes_this_key >= after_bytes
            || self.key.blocks() >= limits.blocks / 2
    }

    pub(crate) fn stats(&self) -> DirectionStats {
        DirectionStats {
            epoch: self.epoch,
            key_fingerprint: self.fingerprint,
            records: self.totals.records,
            bytes: self.totals.bytes,
            records_this_key: self.key.records(),
            open: self.open,
        }
    }
}

pub(crate) struct RecvDirection {
    secret: SecretKey,
    key: Opener,
    pub(crate) epoch: u32,
    fingerprint: Fingerprint,
    pub(crate) totals: Totals,
    pub(crate) open: bool,
    limits: UsageLimits,
}

impl RecvDirection {
    pub(crate) fn new(suite: Suite, secret: SecretKey, limits: UsageLimits) -> Result<Self, Error> {
        Ok(Self {
            key: Opener::new(suite, &secret, limits)?,
            fingerprint: Fingerprint::of_secret(secret.expose()),
            secret,
            epoch: 0,
            totals: Totals::default(),
            open: true,
            limits,
        })
    }

    pub(crate) fn install(&mut self, secret: &SecretKey) -> Result<(), Error> {
        let epoch = next_epoch(self.epoch)?;
        let suite = self.key_suite();
        self.key = Opener::new(suite, secret, self.limits)?;
        self.fingerprint = Fingerprint::of_secret(secret.expose());
        // A copy into this direction's own storage; the caller's secret is zeroized where
        // it lies when the caller drops it (see `Rekey`).
        self.secret = SecretKey::from_bytes(*secret.expose());
        self.epoch = epoch;
        Ok(())
    }

    fn key_suite(&self) -> Suite {
        self.key.suite()
    }

    pub(crate) fn secret(&self) -> &SecretKey {
        &self.secret
    }

    /// Open a whole frame (`prefix || body`) in place; returns the record type and the
    /// content's length (the content starts at `LEN_PREFIX`).
    #[inline]
    pub(crate) fn open_in_place(&mut self, frame: &mut [u8]) -> Result<(RecordType, usize), Error> {
        let n = self.key.open_frame(frame)?;
        let plain = &mut frame[LEN_PREFIX..LEN_PREFIX + n];
        // The type byte is authenticated; an unknown one is the peer's error.
        let (&mut kind, content) = plain
            .split_last_mut()
            .ok_or(crate::PeerMisbehaved::UnexpectedRecord("empty record"))?;
        let kind = RecordType::from_byte(kind).ok_or(crate::PeerMisbehaved::UnexpectedRecord(
            "unknown record type",
        ))?;
        self.totals.records += 1;
        if kind == RecordType::Data {
            self.totals.bytes += content.len() as u64;
        }
        Ok((kind, content.len()))
    }

    pub(crate) fn failures(&self) -> u64 {
        self.key.failures()
    }

    pub(crate) fn stats(&self) -> DirectionStats {
        DirectionStats {
            epoch: self.epoch,
            key_fingerprint: self.fingerprint,
            records: self.totals.records,
            bytes: self.totals.bytes,
            records_this_key: self.key.records(),
            open: self.open,
        }
    }
}
