//! A messaging session: the setup's result and the Double Ratchet, with the envelopes that
//! carry its messages (docs/MESSAGING.md, "Envelopes" and "Stored session").

use zeroize::Zeroizing;

use super::keys::{decode_key32, encode_key, IdentityKey, KeyType};
use super::pqxdh::{self, Encapsulation, InitialMessage};
use super::prekey::{Device, PrekeyBundle};
use super::ratchet::{Header, Ratchet, HEADER_LEN};
use super::wire::Reader;
use super::{Address, MsgError, Timestamp, Trust, MAX_ENVELOPE_LEN, MAX_PLAINTEXT_LEN};
use crate::crypto::hash::sha256;
use crate::crypto::kem::{CIPHERTEXT_LEN, SECRET_LEN};
use crate::crypto::SecureRandom;
use crate::suite::Suite;

/// First byte of an envelope carrying an initial message (preamble and ratchet message).
pub const ENVELOPE_INITIAL: u8 = 0x01;
/// First byte of an envelope carrying a ratchet message.
pub const ENVELOPE_RATCHET: u8 = 0x02;
/// Version byte of a stored [`Session`].
pub const SESSION_FORMAT_VERSION: u8 = 0x01;

/// A parsed envelope: what the relay carries between devices.
///
/// ```text
/// 0x01 || preamble (1266) || header (43) || ciphertext || tag (16)    initial message
/// 0x02 || header (43) || ciphertext || tag (16)                       ratchet message
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Envelope {
    /// A session setup (or a message of a session whose initiator has not heard back yet):
    /// look for a session with [`InitialMessage::base_key`], else [`Session::respond`]. A
    /// session accepts a repeated setup only if its preamble matches the first byte for byte.
    Initial(InitialMessage),
    /// A message of an established session.
    Ratchet(RatchetMessage),
}

/// A ratchet message: its header and the whole `header || ciphertext || tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    header: Header,
    bytes: Vec<u8>,
}

impl RatchetMessage {
    /// The clear (authenticated, not yet verified) header.
    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl Envelope {
    /// Parse an envelope. Parsing checks the structure and the initiator's identity binding;
    /// authentication happens in [`Session::decrypt`] or [`Session::respond`].
    pub fn parse(bytes: &[u8]) -> Result<Self, MsgError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(MsgError::InvalidMessage("envelope too large"));
        }
        let mut r = Reader::new(bytes, MsgError::InvalidMessage("envelope truncated"));
        match r.u8()? {
            ENVELOPE_INITIAL => {
                let initial = InitialMessage::read(&mut r)?;
                check_ratchet_message(initial.message())?;
                Ok(Self::Initial(initial))
            }
            ENVELOPE_RATCHET => {
                let bytes = r.rest();
                let header = check_ratchet_message(bytes)?;
                Ok(Self::Ratchet(RatchetMessage {
                    header,
                    bytes: bytes.to_vec(),
                }))
            }
            other => Err(MsgError::UnsupportedVersion(other)),
        }
    }
}

fn check_ratchet_message(bytes: &[u8]) -> Result<Header, MsgError> {
    if bytes.len() < HEADER_LEN + crate::crypto::aead::TAG_LEN {
        return Err(MsgError::InvalidMessage("ratchet message truncated"));
    }
    Header::from_bytes(&bytes[..HEADER_LEN])
}

/// One end-to-end session with one peer device.
///
/// Call order (sans-IO; the client does the I/O and persistence):
///
/// 1. Initiator: fetch the peer's [`PrekeyBundle`] from the relay, then
///    [`Session::initiate`]; [`Session::encrypt`] at once (no round trip needed). Until the
///    peer's first reply, every envelope repeats the setup preamble.
/// 2. Responder: [`Envelope::parse`] what the relay delivers. For [`Envelope::Initial`], use
///    the session whose [`Session::base_key`] and [`Session::peer_identity`] match it if one
///    exists, else [`Session::respond`] (which consumes the one-time prekeys it used: persist
///    the [`Device`] and the new session together).
/// 3. Both: [`Session::decrypt`] each envelope, [`Session::encrypt`] replies; persist
///    [`Session::to_bytes`] after each call that succeeded.
///
/// Any error leaves the session unchanged. Not `Clone`; `Debug` shows no secret.
pub struct Session {
    ratchet: Ratchet,
    local_identity: IdentityKey,
    peer_identity: IdentityKey,
    base_key: [u8; 32],
    /// SHA-256 of the setup preamble: a repeated preamble must match it byte for byte.
    preamble_hash: [u8; 32],
    initiator: bool,
    /// The setup preamble, repeated until the peer's first reply (initiator only).
    preamble: Option<Vec<u8>>,
}

impl Session {
    /// Start a session with the device whose `bundle` the relay handed out. Checks `trust`
    /// and every signature of the bundle. Draws 64 bytes of `rng`: the base key, then the
    /// first ratchet key.
    pub fn initiate(
        device: &Device,
        own_address: &Address,
        peer_address: &Address,
        bundle: &PrekeyBundle,
        trust: Trust,
        suite: Suite,
        rng: &mut dyn SecureRandom,
    ) -> Result<Self, MsgError> {
        let setup = (device, own_address, peer_address, bundle, trust, suite);
        Self::initiate_with(setup, Encapsulation::Random, rng)
    }

    /// [`Session::initiate`] with the ML-KEM ciphertext and shared secret given instead of
    /// encapsulated, so that a setup made by another implementation can be reproduced byte
    /// for byte (tests/msg_vectors). NEVER use it outside tests: a fixed encapsulation gives
    /// the post-quantum part of the setup no secret at all.
    #[allow(clippy::too_many_arguments)]
    pub fn initiate_with_fixed_kem_for_testing_only(
        device: &Device,
        own_address: &Address,
        peer_address: &Address,
        bundle: &PrekeyBundle,
        trust: Trust,
        suite: Suite,
        kem_ciphertext: &[u8; CIPHERTEXT_LEN],
        kem_secret: &[u8; SECRET_LEN],
        rng: &mut dyn SecureRandom,
    ) -> Result<Self, MsgError> {
        let setup = (device, own_address, peer_address, bundle, trust, suite);
        Self::initiate_with(setup, Encapsulation::Fixed(kem_ciphertext, kem_secret), rng)
    }

    #[allow(clippy::type_complexity)]
    fn initiate_with(
        (device, own_address, peer_address, bundle, trust, suite): (
            &Device,
            &Address,
            &Address,
            &PrekeyBundle,
            Trust,
            Suite,
        ),
        encapsulation: Encapsulation<'_>,
        rng: &mut dyn SecureRandom,
    ) -> Result<Self, MsgError> {
        let setup = pqxdh::initiate(
            device,
            own_address,
            peer_address,
            bundle,
            &trust,
            encapsulation,
            rng,
        )?;
        let ratchet = Ratchet::init_initiator(
            suite,
            setup.ad_hash,
            setup.root_key,
            bundle.signed_prekey.key(),
            rng,
        )?;
        Ok(Self {
            ratchet,
            local_identity: *device.identity(),
            peer_identity: bundle.identity,
            base_key: setup.base_key,
            preamble_hash: sha256(&[&setup.preamble]),
            initiator: true,
            preamble: Some(setup.preamble),
        })
    }

    /// Accept a session setup: check `trust`, look up the prekeys named, derive the keys and
    /// decrypt the first message. Only when it authenticates is `device` changed (its
    /// one-time prekeys consumed, a last-resort setup recorded against replays). Draws 32
    /// bytes of `rng` (the next ratchet key). Returns the session and the first plaintext.
    pub fn respond(
        device: &mut Device,
        own_address: &Address,
        peer_address: &Address,
        initial: &InitialMessage,
        trust: Trust,
        now: Timestamp,
        rng: &mut dyn SecureRandom,
    ) -> Result<(Self, Vec<u8>), MsgError> {
        let setup = pqxdh::respond(device, own_address, peer_address, initial, &trust)?;
        let header = check_ratchet_message(initial.message())?;
        let mut ratchet = Ratchet::init_responder(
            header.suite,
            setup.ad_hash,
            setup.root_key,
            setup.signed_prekey,
        );
        let plaintext = ratchet.decrypt(initial.message(), now, rng)?;
        device.commit_setup(
            initial.one_time_prekey_id(),
            initial.kem_prekey_id(),
            initial.base_key(),
        );
        let session = Self {
            ratchet,
            local_identity: *device.identity(),
            peer_identity: *initial.identity(),
            base_key: *initial.base_key(),
            preamble_hash: *initial.preamble_hash(),
            initiator: false,
            preamble: None,
        };
        Ok((session, plaintext))
    }

    /// Encrypt one message with a fresh message key; returns the envelope to send.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, MsgError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(MsgError::PayloadTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let preamble_len = self.preamble.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(1 + preamble_len + HEADER_LEN + plaintext.len() + 16);
        match &self.preamble {
            Some(p) => {
                out.push(ENVELOPE_INITIAL);
                out.extend_from_slice(p);
            }
            None => out.push(ENVELOPE_RATCHET),
        }
        self.ratchet.encrypt(plaintext, &mut out)?;
        Ok(out)
    }

    /// Decrypt one envelope of this session. `now` ages stored skipped keys (14 days) and
    /// stamps new ones; a DH ratchet step draws 32 bytes of `rng`. On any error nothing
    /// changes.
    pub fn decrypt(
        &mut self,
        envelope: &Envelope,
        now: Timestamp,
        rng: &mut dyn SecureRandom,
    ) -> Result<Vec<u8>, MsgError> {
        match envelope {
            Envelope::Initial(initial) => {
                if self.initiator || initial.preamble_hash() != &self.preamble_hash {
                    return Err(MsgError::InvalidMessage(
                        "initial message of another session",
                    ));
                }
                self.ratchet.decrypt(initial.message(), now, rng)
            }
            Envelope::Ratchet(message) => {
                let plaintext = self.ratchet.decrypt(&message.bytes, now, rng)?;
                // The peer's reply proves it has the session: stop repeating the preamble.
                self.preamble = None;
                Ok(plaintext)
            }
        }
    }

    /// The peer device's identity (fixed for the session's life).
    pub fn peer_identity(&self) -> &IdentityKey {
        &self.peer_identity
    }

    /// This device's identity.
    pub fn local_identity(&self) -> &IdentityKey {
        &self.local_identity
    }

    /// The initiator's base key, which names the session.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// Whether this side started the session.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Whether this side still repeats the setup preamble (initiator before any reply).
    pub fn awaiting_reply(&self) -> bool {
        self.preamble.is_some()
    }

    /// The session's AEAD suite, chosen by the initiator.
    pub fn suite(&self) -> Suite {
        self.ratchet.suite()
    }

    /// Number of stored skipped message keys.
    pub fn skipped_keys(&self) -> usize {
        self.ratchet.skipped_len()
    }

    /// Skipped message keys this session dropped since it was made or loaded with
    /// [`Session::from_bytes`] (the count is not stored): `(evicted, expired)`, those dropped
    /// by [`MAX_SKIPPED_PER_CHAIN`](super::MAX_SKIPPED_PER_CHAIN) or
    /// [`MAX_SKIPPED_PER_SESSION`](super::MAX_SKIPPED_PER_SESSION) and those older than
    /// [`SKIPPED_KEY_LIFETIME_SECS`](super::SKIPPED_KEY_LIFETIME_SECS). Each is a message of
    /// the peer that can no longer be decrypted if it arrives: report it to the user.
    pub fn dropped_skipped_keys(&self) -> (u32, u32) {
        self.ratchet.dropped_skipped()
    }

    /// The stored form (docs/MESSAGING.md, "Stored session"), zeroized when dropped. It holds
    /// the session's secrets: store it encrypted, and overwrite it after each call that
    /// succeeded (older copies keep keys the session has deleted).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // Allocated once at its final size: a growing Vec would leave copies of the secrets
        // in the buffers it frees.
        let len = 2 + 2 * IdentityKey::ENCODED_LEN + 33 + 32 + 1 + pqxdh::PREAMBLE_LEN;
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.ratchet.stored_len_bound()));
        out.push(SESSION_FORMAT_VERSION);
        out.push(u8::from(self.initiator));
        self.local_identity.write(&mut out);
        self.peer_identity.write(&mut out);
        encode_key(KeyType::X25519BaseKey, &self.base_key, &mut out);
        out.extend_from_slice(&self.preamble_hash);
        match &self.preamble {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(p);
            }
            None => out.push(0),
        }
        let capacity = out.capacity();
        self.ratchet.write(&mut out);
        debug_assert_eq!(
            out.capacity(),
            capacity,
            "stored session outgrew its buffer"
        );
        out
    }

    /// Read [`Session::to_bytes`] back; anything inconsistent is [`MsgError::CorruptState`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        let corrupt = |_| MsgError::CorruptState("session: invalid identity or key");
        let mut r = Reader::new(bytes, MsgError::CorruptState("session truncated"));
        let version = r.u8()?;
        if version != SESSION_FORMAT_VERSION {
            return Err(MsgError::UnsupportedVersion(version));
        }
        let initiator = r.flag()?;
        // The client's own state: the identities were verified when the session was made.
        let local_identity = IdentityKey::read_verified_before(&mut r).map_err(corrupt)?;
        let peer_identity = IdentityKey::read_verified_before(&mut r).map_err(corrupt)?;
        let base_key = decode_key32(&mut r, KeyType::X25519BaseKey).map_err(corrupt)?;
        let preamble_hash = r.array()?;
        let preamble = if r.flag()? {
            let bytes = r.take(pqxdh::PREAMBLE_LEN)?;
            if sha256(&[bytes]) != preamble_hash {
                return Err(MsgError::CorruptState("session: preamble hash"));
            }
            Some(bytes.to_vec())
        } else {
            None
        };
        if preamble.is_some() && !initiator {
            return Err(MsgError::CorruptState("session: responder with a preamble"));
        }
        let ratchet = Ratchet::read(&mut r)?;
        r.finish()
            .map_err(|_| MsgError::CorruptState("session: trailing bytes"))?;
        Ok(Self {
            ratchet,
            local_identity,
            peer_identity,
            base_key,
            preamble_hash,
            initiator,
            preamble,
        })
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer_identity)
            .field("initiator", &self.initiator)
            .field("suite", &self.suite())
            .field("awaiting_reply", &self.awaiting_reply())
            .field("skipped_keys", &self.skipped_keys())
            .finish_non_exhaustive()
    }
}
