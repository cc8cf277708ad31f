//! Asynchronous session setup after Signal's PQXDH (revision 2's structure) with ML-KEM-768
//! in place of Kyber-1024 (docs/MESSAGING.md, "Setup").
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//! SK = KDF(DH1 || DH2 || DH3 [|| DH4] || SS)                    (kdf::pqxdh_root_key)
//! AD = label || IK_A || IK_B || addr_A || addr_B || EK_A || PQPK_B || CT  (kdf::associated_data)
//! ```
//!
//! The initiator's first message carries its identity, its base key EK_A, the ids of the
//! prekeys it used and CT (the "preamble"), then the first Double Ratchet message. It repeats
//! the preamble on every message until the responder's first reply arrives.

use zeroize::Zeroizing;

use super::kdf::{ad_hash, associated_data, pqxdh_root_key, RootKey};
use super::keys::{
    decode_key, decode_key32, encode_key, DhKeyPair, IdentityKey, KeyType, PrekeyId,
};
use super::prekey::{Device, PrekeyBundle};
use super::wire::Reader;
use super::{Address, MsgError, Trust};
use crate::crypto::hash::sha256;
use crate::crypto::kem::{self, CIPHERTEXT_LEN, SECRET_LEN};
use crate::crypto::SecureRandom;

/// Version byte of the initial-message preamble.
pub const PREAMBLE_VERSION: u8 = 0x01;
/// Length of the preamble: version, identity, base key, three prekey ids with a presence flag,
/// KEM ciphertext.
pub const PREAMBLE_LEN: usize =
    1 + IdentityKey::ENCODED_LEN + 33 + 4 + 1 + 4 + 4 + 1 + CIPHERTEXT_LEN;

/// A parsed initial message: the setup preamble and the first ratchet message.
///
/// The identity binding is checked at parsing; everything else needs the responder's keys
/// ([`Session::respond`](super::Session::respond)).
#[derive(Clone, PartialEq, Eq)]
pub struct InitialMessage {
    identity: IdentityKey,
    base_key: [u8; 32],
    signed_prekey: PrekeyId,
    one_time_prekey: Option<PrekeyId>,
    kem_prekey: PrekeyId,
    kem_ciphertext: Box<[u8; CIPHERTEXT_LEN]>,
    preamble_hash: [u8; 32],
    message: Vec<u8>,
}

impl InitialMessage {
    /// The initiator's identity.
    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    /// The initiator's base key: with the initiator's identity, it names the session, so a
    /// client finds an existing session for a repeated preamble by it.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// The signed prekey used.
    pub fn signed_prekey_id(&self) -> PrekeyId {
        self.signed_prekey
    }

    /// The one-time prekey used, if any.
    pub fn one_time_prekey_id(&self) -> Option<PrekeyId> {
        self.one_time_prekey
    }

    /// The ML-KEM-768 prekey used.
    pub fn kem_prekey_id(&self) -> PrekeyId {
        self.kem_prekey
    }

    /// The ratchet message carried after the preamble (`header || ciphertext || tag`).
    pub(crate) fn message(&self) -> &[u8] {
        &self.message
    }

    /// The clear (authenticated, not yet verified) header of the first ratchet message
    /// inside: two envelopes with the same header were encrypted with the same message key.
    pub fn header(&self) -> Result<super::Header, MsgError> {
        let bytes = self
            .message
            .get(..super::ratchet::HEADER_LEN)
            .ok_or(MsgError::InvalidMessage("shorter than a header"))?;
        super::Header::from_bytes(bytes)
    }

    /// SHA-256 of the preamble as received: a session compares it with its own before it
    /// accepts a repeated preamble, so no byte of it can change unnoticed.
    pub(crate) fn preamble_hash(&self) -> &[u8; 32] {
        &self.preamble_hash
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        let whole = r.peek_rest();
        let version = r.u8()?;
        if version != PREAMBLE_VERSION {
            return Err(MsgError::UnsupportedVersion(version));
        }
        let identity = IdentityKey::read(r)?;
        let base_key = decode_key32(r, KeyType::X25519BaseKey)?;
        let signed_prekey = PrekeyId(r.u32()?);
        let has_one_time = r.flag()?;
        let one_time = PrekeyId(r.u32()?);
        let kem_prekey = PrekeyId(r.u32()?);
        let (_, ct) = decode_key(r, &[KeyType::MlKem768Ciphertext])?;
        let mut kem_ciphertext = Box::new([0; CIPHERTEXT_LEN]);
        kem_ciphertext.copy_from_slice(ct);
        let preamble = whole
            .get(..PREAMBLE_LEN)
            .ok_or(MsgError::InvalidMessage("preamble truncated"))?;
        let preamble_hash = sha256(&[preamble]);
        Ok(Self {
            identity,
            base_key,
            signed_prekey,
            one_time_prekey: has_one_time.then_some(one_time),
            kem_prekey,
            kem_ciphertext,
            preamble_hash,
            message: r.rest().to_vec(),
        })
    }
}

impl std::fmt::Debug for InitialMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialMessage")
            .field("identity", &self.identity)
            .field("signed_prekey", &self.signed_prekey)
            .field("one_time_prekey", &self.one_time_prekey)
            .field("kem_prekey", &self.kem_prekey)
            .field("message_len", &self.message.len())
            .finish_non_exhaustive()
    }
}

/// Encode the preamble.
fn write_preamble(
    identity: &IdentityKey,
    base_key: &[u8; 32],
    signed_prekey: PrekeyId,
    one_time_prekey: Option<PrekeyId>,
    kem_prekey: PrekeyId,
    kem_ciphertext: &[u8; CIPHERTEXT_LEN],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREAMBLE_LEN);
    out.push(PREAMBLE_VERSION);
    identity.write(&mut out);
    encode_key(KeyType::X25519BaseKey, base_key, &mut out);
    out.extend_from_slice(&signed_prekey.0.to_be_bytes());
    out.push(u8::from(one_time_prekey.is_some()));
    out.extend_from_slice(&one_time_prekey.map_or(0, |id| id.0).to_be_bytes());
    out.extend_from_slice(&kem_prekey.0.to_be_bytes());
    encode_key(KeyType::MlKem768Ciphertext, kem_ciphertext, &mut out);
    out
}

fn check_trust(trust: &Trust, identity: &IdentityKey) -> Result<(), MsgError> {
    match trust {
        Trust::OnFirstUse => Ok(()),
        Trust::Pinned(pinned) if pinned == identity => Ok(()),
        Trust::Pinned(_) => Err(MsgError::UntrustedIdentity),
    }
}

/// Where the initiator's KEM encapsulation comes from.
pub(crate) enum Encapsulation<'a> {
    /// aws-lc-rs encapsulates with its own randomness (the only choice outside tests).
    Random,
    /// Given ciphertext and shared secret, for vectors made by another implementation.
    Fixed(&'a [u8; CIPHERTEXT_LEN], &'a [u8; SECRET_LEN]),
}

/// What the initiator's side of the setup yields.
pub(crate) struct Initiated {
    pub(crate) root_key: RootKey,
    pub(crate) ad_hash: [u8; 32],
    pub(crate) preamble: Vec<u8>,
    pub(crate) base_key: [u8; 32],
}

/// The initiator's setup: check the bundle, then the four DHs and the encapsulation.
/// Draws 32 bytes of `rng` for the base key.
pub(crate) fn initiate(
    device: &Device,
    own_address: &Address,
    peer_address: &Address,
    bundle: &PrekeyBundle,
    trust: &Trust,
    encapsulation: Encapsulation<'_>,
    rng: &mut dyn SecureRandom,
) -> Result<Initiated, MsgError> {
    check_trust(trust, &bundle.identity)?;
    bundle.verify()?;
    let kem_public = kem::parse_public(bundle.kem_prekey.key())?;
    let spk = bundle.signed_prekey.key();

    let base = DhKeyPair::generate(rng)?;
    let dh1 = device.identity_pair().agree(spk)?;
    let dh2 = base.agree(bundle.identity.dh_key())?;
    let dh3 = base.agree(spk)?;
    let dh4 = match &bundle.one_time_prekey {
        Some(opk) => Some(base.agree(opk.key())?),
        None => None,
    };
    let (ciphertext, secret) = match encapsulation {
        Encapsulation::Random => kem::encapsulate(&kem_public)?,
        Encapsulation::Fixed(ct, ss) => (*ct, Zeroizing::new(*ss)),
    };
    let root_key = pqxdh_root_key(&dh1, &dh2, &dh3, dh4.as_deref(), &secret);
    let ad = associated_data(
        device.identity(),
        &bundle.identity,
        own_address,
        peer_address,
        base.public(),
        bundle.kem_prekey.key_type(),
        bundle.kem_prekey.key(),
        &ciphertext,
    );
    let preamble = write_preamble(
        device.identity(),
        base.public(),
        bundle.signed_prekey.id,
        bundle.one_time_prekey.map(|k| k.id),
        bundle.kem_prekey.id,
        &ciphertext,
    );
    Ok(Initiated {
        root_key,
        ad_hash: ad_hash(&ad),
        preamble,
        base_key: *base.public(),
    })
}

/// What the responder's side of the setup yields (before the first message authenticates).
pub(crate) struct Responded {
    pub(crate) root_key: RootKey,
    pub(crate) ad_hash: [u8; 32],
    pub(crate) signed_prekey: DhKeyPair,
}

/// The responder's setup: look up the named prekeys (changing nothing), then the same DHs and
/// the decapsulation.
pub(crate) fn respond(
    device: &Device,
    own_address: &Address,
    peer_address: &Address,
    initial: &InitialMessage,
    trust: &Trust,
) -> Result<Responded, MsgError> {
    check_trust(trust, &initial.identity)?;
    let keys = device.setup_keys(
        initial.signed_prekey,
        initial.one_time_prekey,
        initial.kem_prekey,
        &initial.base_key,
    )?;
    let dh1 = keys.signed_prekey.agree(initial.identity.dh_key())?;
    let dh2 = keys.identity_pair.agree(&initial.base_key)?;
    let dh3 = keys.signed_prekey.agree(&initial.base_key)?;
    let dh4 = match keys.one_time_prekey {
        Some(opk) => Some(opk.agree(&initial.base_key)?),
        None => None,
    };
    let secret = kem::decapsulate_with(keys.kem_secret, &initial.kem_ciphertext[..])?;
    let root_key = pqxdh_root_key(&dh1, &dh2, &dh3, dh4.as_deref(), &secret);
    let ad = associated_data(
        &initial.identity,
        device.identity(),
        peer_address,
        own_address,
        &initial.base_key,
        keys.kem_prekey.key_type(),
        keys.kem_prekey.key(),
        &initial.kem_ciphertext,
    );
    Ok(Responded {
        root_key,
        ad_hash: ad_hash(&ad),
        signed_prekey: keys.signed_prekey.duplicate()?,
    })
}
