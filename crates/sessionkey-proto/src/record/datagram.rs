//! Datagram records, for the VPN (DESIGN.md, "Datagram records").
//!
//! Datagrams may be lost, duplicated or reordered, so unlike stream records each one carries
//! its counter in the clear, with the key epoch it was sealed under and the receiver's index:
//!
//! ```text
//!  0      1      2      4                 8                                 16
//! +------+------+------+-----------------+----------------------------------+------------+-----+
//! | type | epoch| 0  0 | receiver index  | counter                          | ciphertext | tag |
//! | = 4  |  u8  |      | u32 big-endian  | u64 big-endian                   |            | 16  |
//! +------+------+------+-----------------+----------------------------------+------------+-----+
//! ```
//!
//! - **type** is 4, a data packet, as in WireGuard's transport message.
//! - **epoch** names the key the packet was sealed under; it wraps after 255. The receiver
//!   holds the current epoch's key and, for a short grace period after a rekey, the previous
//!   one, so packets sealed just before the peer switched keys still arrive.
//! - **reserved** bytes are zero; anything else is rejected.
//! - **receiver index** is the index the *receiver* chose for this session, so it can find the
//!   session of a packet without trying keys (WireGuard's receiver index).
//! - **counter** is the sender's record counter under this key; the nonce is derived from it
//!   (IV XOR counter, as for stream records), so the sender never picks one.
//!
//! The whole 16-byte header is the AEAD's associated data: changing any of it breaks the tag.
//!
//! Receiving checks, in order and before any decryption: the length, the type and reserved
//! bytes, the receiver index, the epoch (current, or previous within its grace period), and
//! that epoch's [`ReplayWindow`]. Only then is the packet decrypted at its counter, and only
//! after it authenticated is its counter recorded in the window. A packet rejected at any
//! step changes nothing but the failure count: the genuine next packet is still accepted
//! (snow's RUSTSEC-2024-0011 advanced its nonce on a failed decryption and so lost the
//! session to a single forged packet).

use std::fmt;
use std::time::{Duration, Instant};

use crate::crypto::aead::TAG_LEN;
use crate::error::{ApiMisuse, Limit, PeerMisbehaved};
use crate::keys::{Fingerprint, SecretKey};
use crate::replay::ReplayWindow;
use crate::suite::{OpeningKey, SealingKey, Suite, UsageLimits};
use crate::Error;

/// Length of the clear header.
pub const HEADER_LEN: usize = 16;
/// Bytes a packet adds to its payload: the header and the AEAD tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The type byte of a data packet.
pub const TYPE_DATA: u8 = 4;

/// How a [`DatagramSession`] keeps old keys and tolerates forgeries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramConfig {
    /// How long the previous epoch's receiving key is kept after a rekey, to accept packets
    /// the peer sealed before it switched. Default 10 s.
    ///
    /// WireGuard keeps the previous keypair until the next handshake replaces it (up to
    /// minutes). Here it is destroyed once packets under it can no longer be genuinely in
    /// flight: the peer keeps sealing under the old key until its side of the handshake
    /// completes, which takes at most the handshake timeout (10 s, DESIGN.md "Defaults"),
    /// and reordering in the network is far shorter. A shorter grace destroys the old key
    /// sooner; a longer one only keeps it around longer.
    pub grace: Duration,
    /// Failed decryptions tolerated across all keys of the session, past and present; once
    /// reached, the session is closed and every call fails with
    /// [`Limit::SessionIntegrity`]. Default `u64::MAX`: no bound but each key's suite
    /// integrity limit (2^36 forgeries for ChaCha20-Poly1305, 2^52 for AES-GCM), which
    /// only the key refuses. A lower bound here hands an attacker an off switch: forging
    /// needs only a receiver index and epoch copied from any header, so 2^20 forgeries
    /// (32 MiB of UDP) would shut the session down. Use
    /// [`rekey_after_failed_decryptions`](Self::rekey_after_failed_decryptions) instead.
    pub max_failed_decryptions: u64,
    /// Failed decryptions under the current receiving key after which
    /// [`needs_rekey`](DatagramSession::needs_rekey) turns true, so a new handshake
    /// replaces the key long before its suite's integrity limit. Default 2^20: far above
    /// what corruption on a working path produces. Reaching it refuses nothing.
    pub rekey_after_failed_decryptions: u64,
    /// Per-key usage limits, lowered from the suite's (`None`: the suite's own).
    pub usage_limits: Option<UsageLimits>,
}

impl Default for DatagramConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            max_failed_decryptions: u64::MAX,
            rekey_after_failed_decryptions: 1 << 20,
            usage_limits: None,
        }
    }
}

/// One epoch's receiving key with its own replay window.
struct RecvEpoch {
    epoch: u8,
    key: OpeningKey,
    window: ReplayWindow,
    fingerprint: Fingerprint,
}

impl RecvEpoch {
    fn new(
        suite: Suite,
        epoch: u8,
        secret: &SecretKey,
        limits: UsageLimits,
    ) -> Result<Self, Error> {
        Ok(Self {
            epoch,
            key: OpeningKey::with_limits(suite, secret, limits)?,
            window: ReplayWindow::new(),
            fingerprint: Fingerprint::of_secret(secret.expose()),
        })
    }
}

/// The previous epoch's receiving key and when it is destroyed.
struct Previous {
    recv: RecvEpoch,
    expires: Instant,
}

/// Sealing and opening of datagram records for one peer: the current epoch's keys, the
/// previous epoch's receiving key during its grace period, replay windows and counters.
///
/// Sans-IO, in quinn's vocabulary: the caller moves packets and time.
///
/// 1. Create it from a completed handshake's keys with [`new`](Self::new).
/// 2. Send: put the payload at `buf[HEADER_LEN..]` and call
///    [`seal_in_place`](Self::seal_in_place); send the bytes it reports. When
///    [`needs_rekey`](Self::needs_rekey) turns true, start a handshake.
/// 3. Receive: find the session by the packet's [receiver index](peek_receiver_index), call
///    [`open_in_place`](Self::open_in_place) with the current time, and deliver the
///    plaintext it returns. Errors concern that packet only (drop it), except
///    [`Error::LimitReached`], which means the key (or, with a lowered
///    [`max_failed_decryptions`](DatagramConfig::max_failed_decryptions), the session)
///    must be replaced. Forgeries also turn [`needs_rekey`](Self::needs_rekey) true past
///    [`rekey_after_failed_decryptions`](DatagramConfig::rekey_after_failed_decryptions).
/// 4. After each handshake, install the new keys with [`rekey`](Self::rekey).
/// 5. Wake up at [`poll_timeout`](Self::poll_timeout) and call
///    [`handle_timeout`](Self::handle_timeout), which destroys the previous epoch's key.
///
/// Secrets are not kept: the keys are derived at construction and the [`SecretKey`]s
/// dropped (zeroized). `Debug` shows the epoch and indexes only.
pub struct DatagramSession {
    suite: Suite,
    config: DatagramConfig,
    limits: UsageLimits,
    local_index: u32,
    remote_index: u32,
    epoch: u8,
    send: SealingKey,
    send_fingerprint: Fingerprint,
    recv: RecvEpoch,
    previous: Option<Previous>,
    packets_sent: u64,
    bytes_sent: u64,
    packets_received: u64,
    bytes_received: u64,
    failures: u64,
}

impl DatagramSession {
    /// A session whose current epoch `epoch` seals with `send` and opens with `recv`.
    /// `local_index` is the index this side chose (packets to it carry it); `remote_index`
    /// is the peer's (packets sent carry it).
    pub fn new(
        suite: Suite,
        local_index: u32,
        remote_index: u32,
        epoch: u8,
        send: SecretKey,
        recv: SecretKey,
        config: DatagramConfig,
    ) -> Result<Self, Error> {
        let limits = config.usage_limits.unwrap_or_else(|| suite.limits());
        Ok(Self {
            suite,
            config,
            limits,
            local_index,
            remote_index,
            epoch,
            send: SealingKey::with_limits(suite, &send, limits)?,
            send_fingerprint: Fingerprint::of_secret(send.expose()),
            recv: RecvEpoch::new(suite, epoch, &recv, limits)?,
            previous: None,
            packets_sent: 0,
            bytes_sent: 0,
            packets_received: 0,
            bytes_received: 0,
            failures: 0,
        })
    }

    /// Seal the payload already at `buf[HEADER_LEN..HEADER_LEN + payload_len]`: write the
    /// header in front of it, encrypt it in place and append the tag. Returns the packet's
    /// length, `payload_len + OVERHEAD`; the packet is `buf[..len]`.
    ///
    /// Fails with [`ApiMisuse::BufferTooSmall`] if `buf` cannot hold the packet, with
    /// [`Error::LimitReached`] once the key's confidentiality limit is reached (rekey
    /// before: see [`needs_rekey`](Self::needs_rekey)), and with [`Limit::SessionIntegrity`]
    /// once the session is closed.
    pub fn seal_in_place(&mut self, buf: &mut [u8], payload_len: usize) -> Result<usize, Error> {
        self.ensure_open()?;
        let len = payload_len
            .checked_add(OVERHEAD)
            .ok_or(ApiMisuse::BufferTooSmall {
                needed: usize::MAX,
                have: buf.len(),
            })?;
        if buf.len() < len {
            return Err(ApiMisuse::BufferTooSmall {
                needed: len,
                have: buf.len(),
            }
            .into());
        }
        // The key's next record counter is the one it seals under.
        let counter = self.send.records();
        let (header, rest) = buf.split_at_mut(HEADER_LEN);
        write_header(header, self.epoch, self.remote_index, counter);
        let tag = self.send.seal_in_place(header, &mut rest[..payload_len])?;
        debug_assert_eq!(self.send.records(), counter.wrapping_add(1));
        rest[payload_len..payload_len + TAG_LEN].copy_from_slice(&tag);
        self.packets_sent += 1;
        self.bytes_sent += payload_len as u64;
        Ok(len)
    }

    /// Whether a handshake for new keys should start now: the sending key reached half of
    /// its confidentiality limits (records or blocks), well before
    /// [`seal_in_place`](Self::seal_in_place) has to refuse, or the current receiving key
    /// saw [`rekey_after_failed_decryptions`](DatagramConfig::rekey_after_failed_decryptions)
    /// forgeries, well before its suite's integrity limit.
    pub fn needs_rekey(&self) -> bool {
        let limits = self.send.limits();
        self.send.records() >= limits.records / 2
            || self.send.blocks() >= limits.blocks / 2
            || self.recv.key.failures() >= self.config.rekey_after_failed_decryptions
    }

    /// Failed decryptions under the current receiving key.
    pub fn failures_this_key(&self) -> u64 {
        self.recv.key.failures()
    }

    /// Authenticate and decrypt `packet` in place; returns the payload, a part of `packet`.
    ///
    /// Errors, none of which changes any state but the failure count:
    /// [`PeerMisbehaved::Truncated`] (shorter than [`OVERHEAD`]),
    /// [`PeerMisbehaved::UnexpectedRecord`] (another type, nonzero reserved bytes, another
    /// receiver index, or an epoch that is neither the current one nor the previous one
    /// within its grace period at `now`), [`PeerMisbehaved::Replay`] (seen before or older
    /// than the epoch's replay window), [`PeerMisbehaved::BadTag`] (forged or corrupted:
    /// counted), and [`Error::LimitReached`] (a key's integrity limit, or the session's
    /// [`max_failed_decryptions`](DatagramConfig::max_failed_decryptions): the session
    /// must end).
    pub fn open_in_place<'a>(
        &mut self,
        now: Instant,
        packet: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        self.ensure_open()?;
        let header = parse_header(packet)?;
        if header.receiver != self.local_index {
            return Err(PeerMisbehaved::UnexpectedRecord("datagram for another receiver").into());
        }
        let recv = if header.epoch == self.recv.epoch {
            &mut self.recv
        } else {
            match &mut self.previous {
                Some(p) if p.recv.epoch == header.epoch && now < p.expires => &mut p.recv,
                _ => {
                    return Err(PeerMisbehaved::UnexpectedRecord(
                        "datagram for an unknown or expired key epoch",
                    )
                    .into())
                }
            }
        };
        recv.window.check(header.counter)?;
        let (aad, body) = packet.split_at_mut(HEADER_LEN);
        let failures_before = recv.key.failures();
        let result = recv.key.open_at(header.counter, aad, body);
        // Count what the key counted (authentication failures), whatever the error type.
        self.failures += recv.key.failures() - failures_before;
        let plaintext = result?;
        recv.window.commit(header.counter);
        self.packets_received += 1;
        self.bytes_received += plaintext.len() as u64;
        Ok(plaintext)
    }

    /// Install the keys of a new epoch `epoch`, as of `now`. The current receiving key
    /// becomes the previous epoch's, kept until `now + grace` (destroyed at once if the grace
    /// is zero or too long to represent); the current sending key is dropped at once, and so
    /// is an older previous epoch's key. Fails without changing anything if `epoch` is the
    /// current epoch (packets would be ambiguous) or a key cannot be derived.
    pub fn rekey(
        &mut self,
        now: Instant,
        epoch: u8,
        send: SecretKey,
        recv: SecretKey,
    ) -> Result<(), Error> {
        if epoch == self.epoch {
            return Err(ApiMisuse::UnexpectedKey(
                "a new key epoch must differ from the current one",
            )
            .into());
        }
        let new_send = SealingKey::with_limits(self.suite, &send, self.limits)?;
        let send_fingerprint = Fingerprint::of_secret(send.expose());
        let new_recv = RecvEpoch::new(self.suite, epoch, &recv, self.limits)?;
        drop((send, recv));

        self.send = new_send;
        self.send_fingerprint = send_fingerprint;
        let old = std::mem::replace(&mut self.recv, new_recv);
        self.previous = match now.checked_add(self.config.grace) {
            Some(expires) if expires > now => Some(Previous { recv: old, expires }),
            _ => None,
        };
        self.epoch = epoch;
        Ok(())
    }

    /// When the previous epoch's key is due to be destroyed, if one is kept.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.previous.as_ref().map(|p| p.expires)
    }

    /// Destroy the previous epoch's key if its grace period is over at `now`; does nothing
    /// when called early.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.previous.as_ref().is_some_and(|p| p.expires <= now) {
            self.previous = None;
        }
    }

    /// The current key epoch.
    pub fn epoch(&self) -> u8 {
        self.epoch
    }

    /// The previous key epoch, while its receiving key is kept.
    pub fn previous_epoch(&self) -> Option<u8> {
        self.previous.as_ref().map(|p| p.recv.epoch)
    }

    /// The index this side chose; packets to it carry it.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The peer's index; packets sent carry it.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Packets sealed, over all epochs.
    pub fn packets_sent(&self) -> u64 {
        self.packets_sent
    }

    /// Payload bytes sealed, over all epochs.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Packets accepted, over all epochs.
    pub fn packets_received(&self) -> u64 {
        self.packets_received
    }

    /// Payload bytes accepted, over all epochs.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Packets sealed under the current sending key; also the next packet's counter.
    pub fn packets_sent_this_key(&self) -> u64 {
        self.send.records()
    }

    /// Failed decryptions (forged or corrupted packets) over all keys of the session.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Whether the session is closed because it reached
    /// [`max_failed_decryptions`](DatagramConfig::max_failed_decryptions).
    pub fn is_closed(&self) -> bool {
        self.failures >= self.config.max_failed_decryptions
    }

    /// Fingerprint of the current sending key (a one-way hash; the peer's
    /// [`recv_fingerprint`](Self::recv_fingerprint) is the same).
    pub fn send_fingerprint(&self) -> Fingerprint {
        self.send_fingerprint
    }

    /// Fingerprint of the current receiving key.
    pub fn recv_fingerprint(&self) -> Fingerprint {
        self.recv.fingerprint
    }

    /// The configuration.
    pub fn config(&self) -> &DatagramConfig {
        &self.config
    }

    fn ensure_open(&self) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Limit::SessionIntegrity {
                limit: self.config.max_failed_decryptions,
            }
            .into());
        }
        Ok(())
    }
}

impl fmt::Debug for DatagramSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramSession")
            .field("epoch", &self.epoch)
            .field("previous_epoch", &self.previous_epoch())
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

/// The receiver index of a datagram, read without checking anything else, to find its
/// session. `None` if the packet is too short to have one.
pub fn peek_receiver_index(packet: &[u8]) -> Option<u32> {
    let bytes = packet.get(4..8)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The fields of a datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    epoch: u8,
    receiver: u32,
    counter: u64,
}

fn write_header(out: &mut [u8], epoch: u8, receiver: u32, counter: u64) {
    out[0] = TYPE_DATA;
    out[1] = epoch;
    out[2..4].fill(0);
    out[4..8].copy_from_slice(&receiver.to_be_bytes());
    out[8..16].copy_from_slice(&counter.to_be_bytes());
}

/// Parse and check the header of a whole packet (header, ciphertext, tag).
fn parse_header(packet: &[u8]) -> Result<Header, Error> {
    if packet.len() < OVERHEAD {
        return Err(PeerMisbehaved::Truncated {
            needed: OVERHEAD,
            got: packet.len(),
        }
        .into());
    }
    if packet[0] != TYPE_DATA {
        return Err(PeerMisbehaved::UnexpectedRecord("not a datagram data packet").into());
    }
    if packet[2..4] != [0, 0] {
        return Err(
            PeerMisbehaved::UnexpectedRecord("nonzero reserved bytes in datagram header").into(),
        );
    }
    let mut receiver = [0; 4];
    receiver.copy_from_slice(&packet[4..8]);
    let mut counter = [0; 8];
    counter.copy_from_slice(&packet[8..16]);
    Ok(Header {
        epoch: packet[1],
        receiver: u32::from_be_bytes(receiver),
        counter: u64::from_be_bytes(counter),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite, config: DatagramConfig) -> (DatagramSession, DatagramSession) {
        let a = DatagramSession::new(
            suite,
            7,
            9,
            0,
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
            config,
        )
        .unwrap();
        let b = DatagramSession::new(
            suite,
            9,
            7,
            0,
            SecretKey::from_bytes([2; 32]),
            SecretKey::from_bytes([1; 32]),
            config,
        )
        .unwrap();
        (a, b)
    }

    fn seal(s: &mut DatagramSession, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; payload.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = s.seal_in_place(&mut buf, payload.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn header_layout() {
        let (mut a, _) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default());
        seal(&mut a, b"x");
        let p = seal(&mut a, b"hello");
        assert_eq!(p.len(), 5 + OVERHEAD);
        assert_eq!(
            &p[..HEADER_LEN],
            &[4, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(peek_receiver_index(&p), Some(9));
        assert_eq!(peek_receiver_index(&p[..7]), None);
        assert_eq!(
            parse_header(&p).unwrap(),
            Header {
                epoch: 0,
                receiver: 9,
                counter: 1
            }
        );
    }

    #[test]
    fn parse_rejects_garbage_with_typed_errors() {
        let (mut a, _) = pair(Suite::Aes128Gcm, DatagramConfig::default());
        let p = seal(&mut a, b"");
        assert_eq!(p.len(), OVERHEAD);
        assert!(matches!(
            parse_header(&p[..OVERHEAD - 1]),
            Err(Error::PeerMisbehaved(PeerMisbehaved::Truncated {
                needed: OVERHEAD,
                got: 31
            }))
        ));
        for (i, v) in [(0, 1u8), (0, 5), (2, 1), (3, 0x80)] {
            let mut q = p.clone();
            q[i] = v;
            assert!(matches!(
                parse_header(&q),
                Err(Error::PeerMisbehaved(PeerMisbehaved::UnexpectedRecord(_)))
            ));
        }
    }

    #[test]
    fn buffer_too_small_and_huge_lengths_refused() {
        let (mut a, _) = pair(Suite::Aes256Gcm, DatagramConfig::default());
        let mut buf = [0; 40];
        assert!(matches!(
            a.seal_in_place(&mut buf, 9),
            Err(Error::ApiMisuse(ApiMisuse::BufferTooSmall {
                needed: 41,
                have: 40
            }))
        ));
        assert!(a.seal_in_place(&mut buf, usize::MAX).is_err());
        assert_eq!(a.packets_sent_this_key(), 0);
        assert_eq!(a.seal_in_place(&mut buf, 8).unwrap(), 40);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (a, _) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default());
        let text = format!("{a:?}");
        assert!(
            text.contains("epoch: 0") && text.contains("local_index: 7"),
            "{text}"
        );
        assert!(!text.contains("key:") && !text.contains("[1, 1"), "{text}");
    }

    #[test]
    fn rekey_to_the_current_epoch_is_refused_and_changes_nothing() {
        let (mut a, _) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default());
        let fp = a.send_fingerprint();
        let err = a
            .rekey(
                Instant::now(),
                0,
                SecretKey::from_bytes([5; 32]),
                SecretKey::from_bytes([6; 32]),
            )
            .unwrap_err();
        assert!(matches!(err, Error::ApiMisuse(ApiMisuse::UnexpectedKey(_))));
        assert_eq!(
            (a.epoch(), a.send_fingerprint(), a.previous_epoch()),
            (0, fp, None)
        );
    }

    #[test]
    fn zero_grace_keeps_no_previous_key() {
        let config = DatagramConfig {
            grace: Duration::ZERO,
            ..DatagramConfig::default()
        };
        let (mut a, _) = pair(Suite::ChaCha20Poly1305, config);
        let now = Instant::now();
        a.rekey(
            now,
            1,
            SecretKey::from_bytes([5; 32]),
            SecretKey::from_bytes([6; 32]),
        )
        .unwrap();
        assert_eq!((a.previous_epoch(), a.poll_timeout()), (None, None));
        let config = DatagramConfig {
            grace: Duration::MAX,
            ..DatagramConfig::default()
        };
        let (mut a, _) = pair(Suite::ChaCha20Poly1305, config);
        a.rekey(
            now,
            1,
            SecretKey::from_bytes([5; 32]),
            SecretKey::from_bytes([6; 32]),
        )
        .unwrap();
        assert_eq!(a.previous_epoch(), None);
    }
}
