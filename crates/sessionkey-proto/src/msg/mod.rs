//! End-to-end messaging, sans-IO: per-device identities and signed prekeys, an asynchronous
//! setup after Signal's PQXDH with ML-KEM-768, then the Double Ratchet (docs/MESSAGING.md).
//!
//! The relay that carries the messages never holds a secret: it stores public prekeys
//! ([`SignedPrekey`], [`OneTimePrekey`], [`KemPrekey`]), hands out one [`PrekeyBundle`] per
//! setup (each one-time prekey once), and queues opaque envelopes. Everything secret lives in
//! two values the client persists, encrypted: its [`Device`] and each [`Session`].
//!
//! - Keys: an Ed25519 signing key and an X25519 identity key per device, bound by a signature
//!   ([`IdentityKey`]); a signed X25519 prekey, one-time X25519 prekeys, signed ML-KEM-768
//!   prekeys (one-time ones and a last-resort one). Every encoded key starts with a
//!   [`KeyType`] byte; prekey ids count up per [`PrekeyKind`] and are never reused.
//! - Setup ([`pqxdh`]): DH1..DH4 and the ML-KEM shared secret through HKDF-SHA256 into the
//!   first root key; the associated data binds both identities, both [`Address`]es, the KEM
//!   prekey and the KEM ciphertext. One-time prekeys are consumed on first use; a second setup
//!   on the last-resort KEM prekey with the same base key is [`MsgError::PrekeyReplay`].
//! - [`ratchet`]: Signal's Double Ratchet (revision 3) with the core's AEAD suites, the header
//!   authenticated, bounded skipping ([`MAX_SKIP`], [`MAX_SKIPPED_PER_CHAIN`],
//!   [`MAX_SKIPPED_PER_SESSION`], [`SKIPPED_KEY_LIFETIME_SECS`]), and decryption on a copy: a
//!   failed or duplicated message changes no state.
//! - [`kdf`]: the key schedule as pure functions, checked against an independent
//!   implementation (tests/msg_vectors).
//!
//! Time ([`Timestamp`]) and randomness ([`SecureRandom`](crate::crypto::SecureRandom)) are
//! inputs. A whole exchange in memory:
//!
//! ```
//! use sessionkey_proto::crypto::SystemRandom;
//! use sessionkey_proto::msg::{Address, Device, Envelope, PrekeyBundle, Session, Timestamp, Trust};
//! use sessionkey_proto::suite::Suite;
//!
//! let rng = &mut SystemRandom;
//! let now = Timestamp::from_unix_secs(1_700_000_000);
//! let (alice_addr, bob_addr) = (Address::new("alice.1")?, Address::new("bob.1")?);
//!
//! // Bob's device publishes its identity and prekeys to the relay.
//! let mut bob = Device::generate(rng)?;
//! let signed_prekey = bob.new_signed_prekey(now, rng)?;
//! let one_time = bob.new_one_time_prekeys(10, rng)?;
//! let kem = bob.new_kem_prekeys(10, now)?;
//! bob.new_last_resort_kem_prekey(now)?;
//!
//! // Alice fetches a bundle (the relay hands out each one-time prekey once) while Bob is
//! // offline, and writes at once.
//! let bundle = PrekeyBundle {
//!     identity: *bob.identity(),
//!     signed_prekey,
//!     one_time_prekey: Some(one_time[0]),
//!     kem_prekey: kem[0].clone(),
//! };
//! let alice = Device::generate(rng)?;
//! let mut to_bob = Session::initiate(
//!     &alice, &alice_addr, &bob_addr, &PrekeyBundle::from_bytes(&bundle.to_bytes())?,
//!     Trust::OnFirstUse, Suite::Aes256Gcm, rng,
//! )?;
//! let first = to_bob.encrypt(b"hello Bob")?;
//! let second = to_bob.encrypt(b"are you there?")?;
//!
//! // Bob comes online: the first envelope sets the session up.
//! let Envelope::Initial(initial) = Envelope::parse(&first)? else { unreachable!() };
//! let (mut to_alice, text) =
//!     Session::respond(&mut bob, &bob_addr, &alice_addr, &initial, Trust::OnFirstUse, now, rng)?;
//! assert_eq!(text, b"hello Bob");
//! assert_eq!(to_alice.decrypt(&Envelope::parse(&second)?, now, rng)?, b"are you there?");
//! assert_eq!(bob.one_time_prekey_count(), 9);
//!
//! // A reply: Alice stops repeating the setup, and the DH ratchet turns.
//! let reply = to_alice.encrypt(b"hi Alice")?;
//! assert_eq!(to_bob.decrypt(&Envelope::parse(&reply)?, now, rng)?, b"hi Alice");
//! assert!(!to_bob.awaiting_reply());
//!
//! // Both sides persist their state (encrypted, by the client) and carry on later.
//! let stored = to_bob.to_bytes();
//! let mut to_bob = Session::from_bytes(&stored)?;
//! let later = to_bob.encrypt(b"bye")?;
//! assert_eq!(to_alice.decrypt(&Envelope::parse(&later)?, now, rng)?, b"bye");
//! # Ok::<(), sessionkey_proto::msg::MsgError>(())
//! ```

#[cfg(feature = "relay-api")]
pub mod api;
mod error;
pub mod kdf;
mod keys;
pub mod pqxdh;
mod prekey;
pub mod ratchet;
mod session;
mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::MsgError;
pub use keys::{Address, IdentityKey, KeyType, PrekeyId, PrekeyKind, RELAY_REQUEST_LABEL};
pub use pqxdh::InitialMessage;
pub use prekey::{
    Device, KemPrekey, OneTimePrekey, PrekeyBundle, SignedPrekey, MAX_HELD_ONE_TIME_PREKEYS,
    PREKEY_FORMAT_VERSION, PREKEY_SIGNATURE_LABEL,
};
pub use ratchet::Header;
pub use session::{
    Envelope, RatchetMessage, Session, ENVELOPE_INITIAL, ENVELOPE_RATCHET, SESSION_FORMAT_VERSION,
};

/// At most this many message keys are skipped in one chain to reach a message (libsignal
/// allows 25,000 jumps, vodozemac 2,000). Beyond it: [`MsgError::TooFarAhead`].
pub const MAX_SKIP: u32 = 2_000;
/// At most this many skipped message keys are stored per receiving chain; the oldest are
/// evicted first.
pub const MAX_SKIPPED_PER_CHAIN: usize = 1_000;
/// At most this many skipped message keys are stored per session (libsignal: 2,000); the
/// oldest are evicted first.
pub const MAX_SKIPPED_PER_SESSION: usize = 2_000;
/// A stored skipped message key expires this long after it was stored: 14 days.
pub const SKIPPED_KEY_LIFETIME_SECS: u64 = 14 * 24 * 60 * 60;
/// The largest envelope accepted (Signal's server limit of 96 KiB a message).
pub const MAX_ENVELOPE_LEN: usize = 96 * 1024;
/// The largest plaintext one message carries: the envelope limit less room for the setup
/// preamble, the header and the tag.
pub const MAX_PLAINTEXT_LEN: usize = MAX_ENVELOPE_LEN - 2048;

/// Wall-clock time in whole seconds since the Unix epoch, passed in by the caller (the core
/// never reads a clock). Stored state outlives the process, so this is wall time, not
/// `Instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// Seconds since the Unix epoch.
    pub const fn from_unix_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// A `SystemTime` the caller read, rounded down to seconds (before the epoch: 0).
    pub fn from_system_time(time: SystemTime) -> Self {
        Self(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    /// Seconds since the Unix epoch.
    pub const fn unix_secs(self) -> u64 {
        self.0
    }

    /// This time plus `secs` (saturating).
    pub const fn plus_secs(self, secs: u64) -> Self {
        Self(self.0.saturating_add(secs))
    }
}

/// Which peer identity a setup accepts.
///
/// The client keeps the identities it has seen per address: [`Trust::OnFirstUse`] for an
/// address it has none for (then records the session's [`Session::peer_identity`]),
/// [`Trust::Pinned`] otherwise. A different identity is [`MsgError::UntrustedIdentity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// Accept any identity (the first contact with this address).
    OnFirstUse,
    /// Accept only this identity.
    Pinned(IdentityKey),
}
