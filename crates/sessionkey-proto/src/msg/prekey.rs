//! A device's private keys and prekeys ([`Device`]), the signed public prekeys it uploads,
//! and the bundle a relay hands to an initiator (docs/MESSAGING.md, "Prekeys").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aws_lc_rs::kem::DecapsulationKey;
use zeroize::Zeroizing;

use super::keys::{
    decode_key, decode_key32, decode_secret32, encode_key, DhKeyPair, IdentityKey, KeyType,
    PrekeyId, PrekeyKind, SECRET,
};
use super::wire::Reader;
use super::{MsgError, Timestamp};
use crate::crypto::kem::{self, DECAPSULATION_LEN, PUBLIC_LEN};
use crate::crypto::sig::SigningKey;
use crate::crypto::SecureRandom;

/// First bytes of what a prekey signature covers.
pub const PREKEY_SIGNATURE_LABEL: &[u8] = b"sessionkey-msg-v1 prekey";
/// Version byte of an encoded [`PrekeyBundle`] and of a stored [`Device`].
pub const PREKEY_FORMAT_VERSION: u8 = 0x01;
/// The most one-time prekeys of either kind a device holds; generating more drops the oldest
/// unused ones first.
pub const MAX_HELD_ONE_TIME_PREKEYS: usize = 10_000;

/// What a prekey signature covers: `label || id (u32 BE) || type byte || key`.
fn signed_data(id: PrekeyId, ty: KeyType, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREKEY_SIGNATURE_LABEL.len() + 5 + key.len());
    out.extend_from_slice(PREKEY_SIGNATURE_LABEL);
    out.extend_from_slice(&id.0.to_be_bytes());
    encode_key(ty, key, &mut out);
    out
}

/// A signed X25519 prekey as uploaded and handed out: `id (u32 BE) || 0x03 || key (32) ||
/// signature (64)`, 101 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedPrekey {
    /// Its id among the device's signed prekeys.
    pub id: PrekeyId,
    key: [u8; 32],
    signature: [u8; 64],
}

impl SignedPrekey {
    /// Length of the encoding.
    pub const ENCODED_LEN: usize = 4 + 33 + 64;

    /// The X25519 public key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Check the signature against the device's identity ([`MsgError::BadSignature`]).
    pub fn verify(&self, identity: &IdentityKey) -> Result<(), MsgError> {
        let data = signed_data(self.id, KeyType::X25519SignedPrekey, &self.key);
        if identity.verify(&data, &self.signature) {
            Ok(())
        } else {
            Err(MsgError::BadSignature("signed prekey"))
        }
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        self.write(&mut out);
        out
    }

    /// Parse (the signature is checked by [`SignedPrekey::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        parse_whole(bytes, Self::read)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0.to_be_bytes());
        encode_key(KeyType::X25519SignedPrekey, &self.key, out);
        out.extend_from_slice(&self.signature);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        Ok(Self {
            id: PrekeyId(r.u32()?),
            key: decode_key32(r, KeyType::X25519SignedPrekey)?,
            signature: r.array()?,
        })
    }
}

/// A one-time X25519 prekey: `id (u32 BE) || 0x04 || key (32)`, 37 bytes. Unsigned, as in
/// Signal: it only adds a DH to a setup that the signed prekeys already authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneTimePrekey {
    /// Its id among the device's one-time prekeys.
    pub id: PrekeyId,
    key: [u8; 32],
}

impl OneTimePrekey {
    /// Length of the encoding.
    pub const ENCODED_LEN: usize = 4 + 33;

    /// The X25519 public key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        self.write(&mut out);
        out
    }

    /// Parse.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        parse_whole(bytes, Self::read)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0.to_be_bytes());
        encode_key(KeyType::X25519OneTimePrekey, &self.key, out);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        Ok(Self {
            id: PrekeyId(r.u32()?),
            key: decode_key32(r, KeyType::X25519OneTimePrekey)?,
        })
    }
}

/// A signed ML-KEM-768 prekey, one-time or last-resort (its type byte says which):
/// `id (u32 BE) || 0x05 or 0x06 || key (1184) || signature (64)`, 1253 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KemPrekey {
    /// Its id among the device's KEM prekeys (one id space for both kinds).
    pub id: PrekeyId,
    last_resort: bool,
    key: Box<[u8; PUBLIC_LEN]>,
    signature: [u8; 64],
}

impl KemPrekey {
    /// Length of the encoding.
    pub const ENCODED_LEN: usize = 4 + 1 + PUBLIC_LEN + 64;

    /// Whether this is the last-resort key (handed out when no one-time KEM prekey is left).
    pub fn is_last_resort(&self) -> bool {
        self.last_resort
    }

    /// The ML-KEM-768 encapsulation key.
    pub fn key(&self) -> &[u8; PUBLIC_LEN] {
        &self.key
    }

    pub(crate) fn key_type(&self) -> KeyType {
        kem_type(self.last_resort)
    }

    /// Check the signature against the device's identity ([`MsgError::BadSignature`]).
    pub fn verify(&self, identity: &IdentityKey) -> Result<(), MsgError> {
        let data = signed_data(self.id, self.key_type(), &self.key[..]);
        if identity.verify(&data, &self.signature) {
            Ok(())
        } else {
            Err(MsgError::BadSignature("ML-KEM-768 prekey"))
        }
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        self.write(&mut out);
        out
    }

    /// Parse (the signature is checked by [`KemPrekey::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        parse_whole(bytes, Self::read)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0.to_be_bytes());
        encode_key(self.key_type(), &self.key[..], out);
        out.extend_from_slice(&self.signature);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        let id = PrekeyId(r.u32()?);
        let (ty, raw) = decode_key(
            r,
            &[
                KeyType::MlKem768OneTimePrekey,
                KeyType::MlKem768LastResortPrekey,
            ],
        )?;
        let mut key = Box::new([0; PUBLIC_LEN]);
        key.copy_from_slice(raw);
        Ok(Self {
            id,
            last_resort: ty == KeyType::MlKem768LastResortPrekey,
            key,
            signature: r.array()?,
        })
    }
}

impl fmt::Debug for KemPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemPrekey")
            .field("id", &self.id)
            .field("last_resort", &self.last_resort)
            .finish_non_exhaustive()
    }
}

fn kem_type(last_resort: bool) -> KeyType {
    if last_resort {
        KeyType::MlKem768LastResortPrekey
    } else {
        KeyType::MlKem768OneTimePrekey
    }
}

fn parse_whole<T>(
    bytes: &[u8],
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, MsgError>,
) -> Result<T, MsgError> {
    let mut r = Reader::new(bytes, MsgError::BadKeyEncoding("prekey truncated"));
    let out = read(&mut r)?;
    r.finish()
        .map_err(|_| MsgError::BadKeyEncoding("bytes after the prekey"))?;
    Ok(out)
}

/// What an initiator fetches from the relay for one device: its identity, its current signed
/// prekey, a one-time prekey if any is left, and a KEM prekey (one-time, else the last-resort).
///
/// Encoding: `0x01 (version) || identity (130) || signed prekey (101) || 0 | 1 ||
/// [one-time prekey (37)] || KEM prekey (1253)`. Parsing checks the identity binding;
/// [`Session::initiate`](super::Session::initiate) checks the prekey signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The device's identity.
    pub identity: IdentityKey,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekey,
    /// A one-time prekey, handed out once, if any is left.
    pub one_time_prekey: Option<OneTimePrekey>,
    /// A one-time KEM prekey, handed out once, or else the last-resort one.
    pub kem_prekey: KemPrekey,
}

impl PrekeyBundle {
    /// Check every signature against the bundle's identity.
    pub fn verify(&self) -> Result<(), MsgError> {
        self.signed_prekey.verify(&self.identity)?;
        self.kem_prekey.verify(&self.identity)
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 130 + 101 + 1 + 37 + KemPrekey::ENCODED_LEN);
        out.push(PREKEY_FORMAT_VERSION);
        self.identity.write(&mut out);
        self.signed_prekey.write(&mut out);
        match &self.one_time_prekey {
            Some(k) => {
                out.push(1);
                k.write(&mut out);
            }
            None => out.push(0),
        }
        self.kem_prekey.write(&mut out);
        out
    }

    /// Parse a bundle (checking the identity binding, not yet the prekey signatures).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        let mut r = Reader::new(bytes, MsgError::BadKeyEncoding("bundle truncated"));
        let version = r.u8()?;
        if version != PREKEY_FORMAT_VERSION {
            return Err(MsgError::UnsupportedVersion(version));
        }
        let identity = IdentityKey::read(&mut r)?;
        let signed_prekey = SignedPrekey::read(&mut r)?;
        let one_time_prekey = if r.flag()? {
            Some(OneTimePrekey::read(&mut r)?)
        } else {
            None
        };
        let kem_prekey = KemPrekey::read(&mut r)?;
        r.finish()
            .map_err(|_| MsgError::BadKeyEncoding("bytes after the bundle"))?;
        Ok(Self {
            identity,
            signed_prekey,
            one_time_prekey,
            kem_prekey,
        })
    }
}

struct SignedPrekeySecret {
    public: SignedPrekey,
    pair: DhKeyPair,
    created: Timestamp,
}

struct KemPrekeySecret {
    public: KemPrekey,
    secret: DecapsulationKey,
    created: Timestamp,
}

/// The private side of one device: its identity keys and every prekey it has published and
/// not used up, the id counters, and the record of setups seen on last-resort KEM prekeys.
///
/// The client persists it (encrypted) with [`Device::to_bytes`] after each change: after
/// generating prekeys and after every successful [`Session::respond`](super::Session::respond),
/// which consumes one-time prekeys. Not `Clone`; `Debug` shows the identity's fingerprint
/// only; X25519 and Ed25519 secrets are zeroized on drop and aws-lc cleanses the ML-KEM ones.
pub struct Device {
    signing_seed: Zeroizing<[u8; 32]>,
    signing: SigningKey,
    identity_pair: DhKeyPair,
    identity: IdentityKey,
    /// Oldest first; the last one is current.
    signed_prekeys: Vec<SignedPrekeySecret>,
    one_time_prekeys: BTreeMap<PrekeyId, DhKeyPair>,
    kem_prekeys: BTreeMap<PrekeyId, KemPrekeySecret>,
    /// The last id handed out per kind (0: none yet).
    last_ids: BTreeMap<PrekeyKind, u32>,
    /// (last-resort KEM prekey id, base key) of every setup accepted on a last-resort key.
    last_resort_setups: BTreeSet<(PrekeyId, [u8; 32])>,
}

/// The private keys one setup uses, looked up without changing the device.
pub(crate) struct SetupKeys<'a> {
    pub(crate) identity_pair: &'a DhKeyPair,
    pub(crate) signed_prekey: &'a DhKeyPair,
    pub(crate) one_time_prekey: Option<&'a DhKeyPair>,
    pub(crate) kem_prekey: &'a KemPrekey,
    pub(crate) kem_secret: &'a DecapsulationKey,
}

impl Device {
    /// A new device: an Ed25519 signing key and an X25519 identity key (64 bytes of `rng`, in
    /// that order), bound by a signature. It has no prekeys yet.
    pub fn generate(rng: &mut dyn SecureRandom) -> Result<Self, MsgError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(&mut seed[..])?;
        let identity_pair = DhKeyPair::generate(rng)?;
        Self::from_identity_secrets(seed, identity_pair)
    }

    fn from_identity_secrets(
        signing_seed: Zeroizing<[u8; 32]>,
        identity_pair: DhKeyPair,
    ) -> Result<Self, MsgError> {
        let signing = SigningKey::from_seed(&signing_seed)?;
        let identity = IdentityKey::bind(&signing, identity_pair.public())?;
        Ok(Self {
            signing_seed,
            signing,
            identity_pair,
            identity,
            signed_prekeys: Vec::new(),
            one_time_prekeys: BTreeMap::new(),
            kem_prekeys: BTreeMap::new(),
            last_ids: BTreeMap::new(),
            last_resort_setups: BTreeSet::new(),
        })
    }

    /// This device's public identity.
    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    fn next_id(&mut self, kind: PrekeyKind) -> Result<PrekeyId, MsgError> {
        let last = self.last_ids.entry(kind).or_insert(0);
        *last = last
            .checked_add(1)
            .ok_or(MsgError::PrekeyIdsExhausted(kind))?;
        Ok(PrekeyId(*last))
    }

    fn sign(&self, id: PrekeyId, ty: KeyType, key: &[u8]) -> Result<[u8; 64], MsgError> {
        Ok(self.signing.sign(&signed_data(id, ty, key))?)
    }

    /// Sign a relay request (its canonical form, docs/MESSAGING.md "Relay API") with the
    /// identity signing key, under the label [`RELAY_REQUEST_LABEL`](super::RELAY_REQUEST_LABEL),
    /// so the signature can stand for nothing else. The relay checks it with
    /// [`IdentityKey::verify_relay_request`].
    pub fn sign_relay_request(&self, request: &[u8]) -> Result<[u8; 64], MsgError> {
        Ok(self
            .signing
            .sign(&[super::keys::RELAY_REQUEST_LABEL, request].concat())?)
    }

    /// Make a new signed prekey (32 bytes of `rng`); it becomes the current one. Earlier ones
    /// stay usable for setups in flight until [`Device::remove_signed_prekeys_before`].
    pub fn new_signed_prekey(
        &mut self,
        now: Timestamp,
        rng: &mut dyn SecureRandom,
    ) -> Result<SignedPrekey, MsgError> {
        let pair = DhKeyPair::generate(rng)?;
        let id = self.next_id(PrekeyKind::Signed)?;
        let public = SignedPrekey {
            id,
            key: *pair.public(),
            signature: self.sign(id, KeyType::X25519SignedPrekey, pair.public())?,
        };
        self.signed_prekeys.push(SignedPrekeySecret {
            public,
            pair,
            created: now,
        });
        Ok(public)
    }

    /// The current signed prekey, if one was made.
    pub fn signed_prekey(&self) -> Option<SignedPrekey> {
        self.signed_prekeys.last().map(|k| k.public)
    }

    /// Remove the signed prekeys made before `cutoff`, except the current one.
    pub fn remove_signed_prekeys_before(&mut self, cutoff: Timestamp) {
        let current = self.signed_prekeys.last().map(|k| k.public.id);
        self.signed_prekeys
            .retain(|k| Some(k.public.id) == current || k.created >= cutoff);
    }

    /// When the current signed prekey was made.
    pub fn signed_prekey_created(&self) -> Option<Timestamp> {
        self.signed_prekeys.last().map(|k| k.created)
    }

    /// When the current last-resort ML-KEM-768 prekey was made.
    pub fn last_resort_kem_prekey_created(&self) -> Option<Timestamp> {
        self.kem_prekeys
            .values()
            .rev()
            .find(|k| k.public.last_resort)
            .map(|k| k.created)
    }

    /// Whether a replaced (not current) signed or last-resort prekey made before `cutoff` is
    /// held: what [`Device::remove_signed_prekeys_before`] and
    /// [`Device::remove_last_resort_kem_prekeys_before`] would remove.
    pub fn has_replaced_prekeys_before(&self, cutoff: Timestamp) -> bool {
        let n = self.signed_prekeys.len();
        let old_signed = self.signed_prekeys[..n.saturating_sub(1)]
            .iter()
            .any(|k| k.created < cutoff);
        let current = self.last_resort_kem_prekey().map(|k| k.id);
        old_signed
            || self
                .kem_prekeys
                .iter()
                .any(|(id, k)| k.public.last_resort && Some(*id) != current && k.created < cutoff)
    }

    /// The last id handed out for `kind` (0: none yet).
    pub fn last_prekey_id(&self, kind: PrekeyKind) -> PrekeyId {
        PrekeyId(self.last_ids.get(&kind).copied().unwrap_or(0))
    }

    /// Erase the one-time prekeys (X25519 and ML-KEM, never the last-resort one) with ids up
    /// to `one_time` and `kem`: retired unused after their retention window. Returns how
    /// many were erased.
    pub fn retire_one_time_prekeys(&mut self, one_time: PrekeyId, kem: PrekeyId) -> usize {
        let before = self.one_time_prekeys.len() + self.kem_prekeys.len();
        self.one_time_prekeys.retain(|id, _| *id > one_time);
        self.kem_prekeys
            .retain(|id, k| k.public.last_resort || *id > kem);
        before - self.one_time_prekeys.len() - self.kem_prekeys.len()
    }

    /// Number of signed prekeys held (the current one and those in their grace period).
    pub fn signed_prekey_count(&self) -> usize {
        self.signed_prekeys.len()
    }

    /// Number of last-resort ML-KEM-768 prekeys held (the current one and older ones).
    pub fn last_resort_kem_prekey_count(&self) -> usize {
        self.kem_prekeys
            .values()
            .filter(|k| k.public.last_resort)
            .count()
    }

    /// Refuse a batch larger than the cap itself; otherwise make room for `count` new keys
    /// by dropping the oldest (lowest ids) of those held: the caps bound the device and
    /// never make a caller fail.
    fn check_room(count: usize) -> Result<(), MsgError> {
        if count > MAX_HELD_ONE_TIME_PREKEYS {
            return Err(MsgError::TooManyPrekeys {
                held: count,
                max: MAX_HELD_ONE_TIME_PREKEYS,
            });
        }
        Ok(())
    }

    /// Make `count` one-time X25519 prekeys (32 bytes of `rng` each) for upload. Beyond
    /// [`MAX_HELD_ONE_TIME_PREKEYS`] held, the oldest unused ones are dropped first.
    pub fn new_one_time_prekeys(
        &mut self,
        count: usize,
        rng: &mut dyn SecureRandom,
    ) -> Result<Vec<OneTimePrekey>, MsgError> {
        Self::check_room(count)?;
        while self.one_time_prekeys.len() + count > MAX_HELD_ONE_TIME_PREKEYS {
            self.one_time_prekeys.pop_first();
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let pair = DhKeyPair::generate(rng)?;
            let id = self.next_id(PrekeyKind::OneTime)?;
            out.push(OneTimePrekey {
                id,
                key: *pair.public(),
            });
            self.one_time_prekeys.insert(id, pair);
        }
        Ok(out)
    }

    /// Number of one-time X25519 prekeys not yet used.
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time_prekeys.len()
    }

    /// Make `count` one-time ML-KEM-768 prekeys for upload (beyond
    /// [`MAX_HELD_ONE_TIME_PREKEYS`] held, the oldest unused ones are dropped first).
    /// aws-lc-rs draws their randomness itself (it has no seeded ML-KEM key generation).
    pub fn new_kem_prekeys(
        &mut self,
        count: usize,
        now: Timestamp,
    ) -> Result<Vec<KemPrekey>, MsgError> {
        Self::check_room(count)?;
        let held = self.kem_prekey_count();
        let excess = (held + count).saturating_sub(MAX_HELD_ONE_TIME_PREKEYS);
        let oldest: Vec<PrekeyId> = self
            .kem_prekeys
            .iter()
            .filter(|(_, k)| !k.public.last_resort)
            .take(excess)
            .map(|(id, _)| *id)
            .collect();
        for id in oldest {
            self.kem_prekeys.remove(&id);
        }
        (0..count)
            .map(|_| {
                let (secret, public) = kem::generate_decapsulation_key()?;
                self.add_kem_prekey(false, secret, &public, now)
            })
            .collect()
    }

    /// Make a new last-resort ML-KEM-768 prekey; it becomes the current one. Earlier ones stay
    /// usable until [`Device::remove_last_resort_kem_prekeys_before`].
    pub fn new_last_resort_kem_prekey(&mut self, now: Timestamp) -> Result<KemPrekey, MsgError> {
        let (secret, public) = kem::generate_decapsulation_key()?;
        self.add_kem_prekey(true, secret, &public, now)
    }

    /// Add an ML-KEM-768 prekey generated elsewhere, from its expanded decapsulation key
    /// (2400 bytes, FIPS 203) and its encapsulation key (1184 bytes). The pair is checked for
    /// consistency. For keys made from a seed by another implementation, as the test vectors
    /// are; [`Device::new_kem_prekeys`] is the ordinary way.
    pub fn import_kem_prekey(
        &mut self,
        last_resort: bool,
        decapsulation_key: &[u8],
        encapsulation_key: &[u8],
        now: Timestamp,
    ) -> Result<KemPrekey, MsgError> {
        let ek: &[u8; PUBLIC_LEN] = encapsulation_key
            .try_into()
            .map_err(|_| MsgError::BadKeyEncoding("ML-KEM-768 encapsulation key length"))?;
        kem::parse_public(ek)?;
        let secret = kem::decapsulation_key_from_bytes(decapsulation_key, ek)
            .map_err(|_| MsgError::BadKeyEncoding("ML-KEM-768 decapsulation key"))?;
        self.add_kem_prekey(last_resort, secret, ek, now)
    }

    fn add_kem_prekey(
        &mut self,
        last_resort: bool,
        secret: DecapsulationKey,
        key: &[u8; PUBLIC_LEN],
        now: Timestamp,
    ) -> Result<KemPrekey, MsgError> {
        let id = self.next_id(PrekeyKind::Kem)?;
        let public = KemPrekey {
            id,
            last_resort,
            key: Box::new(*key),
            signature: self.sign(id, kem_type(last_resort), key)?,
        };
        self.kem_prekeys.insert(
            id,
            KemPrekeySecret {
                public: public.clone(),
                secret,
                created: now,
            },
        );
        Ok(public)
    }

    /// Number of one-time ML-KEM-768 prekeys not yet used.
    pub fn kem_prekey_count(&self) -> usize {
        self.kem_prekeys
            .values()
            .filter(|k| !k.public.last_resort)
            .count()
    }

    /// The current (newest) last-resort ML-KEM-768 prekey, if one was made.
    pub fn last_resort_kem_prekey(&self) -> Option<KemPrekey> {
        self.kem_prekeys
            .values()
            .rev()
            .find(|k| k.public.last_resort)
            .map(|k| k.public.clone())
    }

    /// Remove last-resort KEM prekeys made before `cutoff`, except the current one, and the
    /// replay records of setups on them.
    pub fn remove_last_resort_kem_prekeys_before(&mut self, cutoff: Timestamp) {
        let current = self.last_resort_kem_prekey().map(|k| k.id);
        self.kem_prekeys
            .retain(|id, k| !k.public.last_resort || Some(*id) == current || k.created >= cutoff);
        let kem_prekeys = &self.kem_prekeys;
        self.last_resort_setups
            .retain(|(id, _)| kem_prekeys.contains_key(id));
    }

    /// Look up the keys an initial message names, changing nothing.
    pub(crate) fn setup_keys(
        &self,
        signed: PrekeyId,
        one_time: Option<PrekeyId>,
        kem: PrekeyId,
        base_key: &[u8; 32],
    ) -> Result<SetupKeys<'_>, MsgError> {
        let unknown = |kind, id: PrekeyId| MsgError::UnknownPrekey { kind, id: id.0 };
        let kem_key = self
            .kem_prekeys
            .get(&kem)
            .ok_or_else(|| unknown(PrekeyKind::Kem, kem))?;
        if kem_key.public.last_resort && self.last_resort_setups.contains(&(kem, *base_key)) {
            return Err(MsgError::PrekeyReplay);
        }
        let signed_prekey = self
            .signed_prekeys
            .iter()
            .find(|k| k.public.id == signed)
            .ok_or_else(|| unknown(PrekeyKind::Signed, signed))?;
        let one_time_prekey = match one_time {
            Some(id) => Some(
                self.one_time_prekeys
                    .get(&id)
                    .ok_or_else(|| unknown(PrekeyKind::OneTime, id))?,
            ),
            None => None,
        };
        Ok(SetupKeys {
            identity_pair: &self.identity_pair,
            signed_prekey: &signed_prekey.pair,
            one_time_prekey,
            kem_prekey: &kem_key.public,
            kem_secret: &kem_key.secret,
        })
    }

    /// After a setup authenticated: one-time prekeys are gone, a last-resort setup recorded.
    pub(crate) fn commit_setup(
        &mut self,
        one_time: Option<PrekeyId>,
        kem: PrekeyId,
        base_key: &[u8; 32],
    ) {
        if let Some(id) = one_time {
            self.one_time_prekeys.remove(&id);
        }
        let last_resort = self
            .kem_prekeys
            .get(&kem)
            .is_some_and(|k| k.public.last_resort);
        if last_resort {
            self.last_resort_setups.insert((kem, *base_key));
        } else {
            self.kem_prekeys.remove(&kem);
        }
    }

    pub(crate) fn identity_pair(&self) -> &DhKeyPair {
        &self.identity_pair
    }

    /// The stored form (docs/MESSAGING.md, "Stored device"), zeroized when dropped. It holds
    /// every private key of the device: store it encrypted.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, MsgError> {
        // Allocated once at its final size: a growing Vec would leave copies of the secrets
        // in the buffers it frees.
        let len = 1
            + 2 * 33
            + 3 * 4
            + 4 * 4
            + self.signed_prekeys.len() * (SignedPrekey::ENCODED_LEN + 33 + 8)
            + self.one_time_prekeys.len() * (4 + 33)
            + self.kem_prekeys.len() * (KemPrekey::ENCODED_LEN + 1 + DECAPSULATION_LEN + 8)
            + self.last_resort_setups.len() * (4 + 32);
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        out.push(PREKEY_FORMAT_VERSION);
        out.push(KeyType::Ed25519Identity.byte() | SECRET);
        out.extend_from_slice(&self.signing_seed[..]);
        self.identity_pair
            .write_secret(KeyType::X25519Identity, &mut out);
        for kind in [PrekeyKind::Signed, PrekeyKind::OneTime, PrekeyKind::Kem] {
            let last = self.last_ids.get(&kind).copied().unwrap_or(0);
            out.extend_from_slice(&last.to_be_bytes());
        }
        write_count(&mut out, self.signed_prekeys.len());
        for k in &self.signed_prekeys {
            k.public.write(&mut out);
            k.pair.write_secret(KeyType::X25519SignedPrekey, &mut out);
            out.extend_from_slice(&k.created.unix_secs().to_be_bytes());
        }
        write_count(&mut out, self.one_time_prekeys.len());
        for (id, pair) in &self.one_time_prekeys {
            out.extend_from_slice(&id.0.to_be_bytes());
            pair.write_secret(KeyType::X25519OneTimePrekey, &mut out);
        }
        write_count(&mut out, self.kem_prekeys.len());
        for k in self.kem_prekeys.values() {
            k.public.write(&mut out);
            out.push(k.public.key_type().byte() | SECRET);
            out.extend_from_slice(&kem::decapsulation_key_bytes(&k.secret)?);
            out.extend_from_slice(&k.created.unix_secs().to_be_bytes());
        }
        write_count(&mut out, self.last_resort_setups.len());
        for (id, base) in &self.last_resort_setups {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(base);
        }
        debug_assert_eq!(out.len(), len);
        Ok(out)
    }

    /// Read [`Device::to_bytes`] back. Every signature and key pair is checked again; any
    /// inconsistency is [`MsgError::CorruptState`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        let corrupt = |_| MsgError::CorruptState("device: invalid key");
        let mut r = Reader::new(bytes, MsgError::CorruptState("device truncated"));
        let version = r.u8()?;
        if version != PREKEY_FORMAT_VERSION {
            return Err(MsgError::UnsupportedVersion(version));
        }
        let seed = decode_secret32(&mut r, KeyType::Ed25519Identity)?;
        let identity_pair = DhKeyPair::read_secret(&mut r, KeyType::X25519Identity)?;
        let mut device = Self::from_identity_secrets(seed, identity_pair)?;
        for kind in [PrekeyKind::Signed, PrekeyKind::OneTime, PrekeyKind::Kem] {
            device.last_ids.insert(kind, r.u32()?);
        }
        let last = |d: &Self, kind| d.last_ids.get(&kind).copied().unwrap_or(0);
        for _ in 0..r.u32()? {
            let public = SignedPrekey::read(&mut r).map_err(corrupt)?;
            let pair = DhKeyPair::read_secret(&mut r, KeyType::X25519SignedPrekey)?;
            let created = Timestamp::from_unix_secs(r.u64()?);
            public.verify(&device.identity).map_err(corrupt)?;
            if pair.public() != public.key() || public.id.0 > last(&device, PrekeyKind::Signed) {
                return Err(MsgError::CorruptState("device: signed prekey"));
            }
            device.signed_prekeys.push(SignedPrekeySecret {
                public,
                pair,
                created,
            });
        }
        for _ in 0..r.u32()? {
            let id = PrekeyId(r.u32()?);
            let pair = DhKeyPair::read_secret(&mut r, KeyType::X25519OneTimePrekey)?;
            if id.0 > last(&device, PrekeyKind::OneTime) {
                return Err(MsgError::CorruptState("device: one-time prekey id"));
            }
            device.one_time_prekeys.insert(id, pair);
        }
        for _ in 0..r.u32()? {
            let public = KemPrekey::read(&mut r).map_err(corrupt)?;
            if r.u8()? != public.key_type().byte() | SECRET {
                return Err(MsgError::CorruptState("device: KEM secret type byte"));
            }
            let dk = r.take(DECAPSULATION_LEN)?;
            let created = Timestamp::from_unix_secs(r.u64()?);
            public.verify(&device.identity).map_err(corrupt)?;
            let secret = kem::decapsulation_key_from_bytes(dk, public.key())
                .map_err(|_| MsgError::CorruptState("device: KEM key pair"))?;
            if public.id.0 > last(&device, PrekeyKind::Kem) {
                return Err(MsgError::CorruptState("device: KEM prekey id"));
            }
            device.kem_prekeys.insert(
                public.id,
                KemPrekeySecret {
                    public,
                    secret,
                    created,
                },
            );
        }
        for _ in 0..r.u32()? {
            let id = PrekeyId(r.u32()?);
            device.last_resort_setups.insert((id, r.array()?));
        }
        r.finish()
            .map_err(|_| MsgError::CorruptState("device: trailing bytes"))?;
        Ok(device)
    }
}

fn write_count(out: &mut Vec<u8>, n: usize) {
    // Collections are bounded far below 2^32 (MAX_HELD_ONE_TIME_PREKEYS and the like).
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.identity.fingerprint())
            .field("one_time_prekeys", &self.one_time_prekeys.len())
            .field("kem_prekeys", &self.kem_prekeys.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SystemRandom;

    fn device() -> Device {
        let mut d = Device::generate(&mut SystemRandom).unwrap();
        let now = Timestamp::from_unix_secs(100);
        d.new_signed_prekey(now, &mut SystemRandom).unwrap();
        d.new_one_time_prekeys(3, &mut SystemRandom).unwrap();
        d.new_kem_prekeys(2, now).unwrap();
        d.new_last_resort_kem_prekey(now).unwrap();
        d
    }

    #[test]
    fn caps_drop_the_oldest_unused_keys_and_never_fail() {
        let now = Timestamp::from_unix_secs(100);
        let mut d = device();
        d.new_one_time_prekeys(MAX_HELD_ONE_TIME_PREKEYS - 3, &mut SystemRandom)
            .unwrap();
        d.new_kem_prekeys(MAX_HELD_ONE_TIME_PREKEYS - 2, now)
            .unwrap();
        let more = d.new_one_time_prekeys(5, &mut SystemRandom).unwrap();
        let kem = d.new_kem_prekeys(4, now).unwrap();
        assert_eq!(d.one_time_prekey_count(), MAX_HELD_ONE_TIME_PREKEYS);
        assert_eq!(d.kem_prekey_count(), MAX_HELD_ONE_TIME_PREKEYS);
        assert!(d.one_time_prekeys.contains_key(&more[4].id));
        assert!(d.kem_prekeys.contains_key(&kem[3].id));
        let oldest = *d.one_time_prekeys.keys().next().unwrap();
        assert_eq!(oldest, PrekeyId(6), "ids 1 to 5 went first");
        assert!(
            d.last_resort_kem_prekey().is_some(),
            "the last-resort key is never dropped for room"
        );
        assert!(matches!(
            d.new_one_time_prekeys(MAX_HELD_ONE_TIME_PREKEYS + 1, &mut SystemRandom),
            Err(MsgError::TooManyPrekeys { .. })
        ));
    }

    #[test]
    fn ids_count_up_per_kind_and_are_never_reused() {
        let mut d = device();
        let more = d.new_one_time_prekeys(2, &mut SystemRandom).unwrap();
        assert_eq!(more[0].id, PrekeyId(4));
        assert_eq!(d.last_resort_kem_prekey().unwrap().id, PrekeyId(3));
        d.commit_setup(Some(PrekeyId(5)), PrekeyId(1), &[0; 32]);
        let after = d.new_one_time_prekeys(1, &mut SystemRandom).unwrap();
        assert_eq!(
            after[0].id,
            PrekeyId(6),
            "a used id is not handed out again"
        );
        let kem = d.new_kem_prekeys(1, Timestamp::from_unix_secs(0)).unwrap();
        assert_eq!(kem[0].id, PrekeyId(4));
        assert_eq!(d.kem_prekey_count(), 2);
    }

    #[test]
    fn signatures_verify_and_bind_ids_and_types() {
        let d = device();
        let spk = d.signed_prekey().unwrap();
        spk.verify(d.identity()).unwrap();
        let mut moved = spk;
        moved.id = PrekeyId(9);
        assert_eq!(
            moved.verify(d.identity()),
            Err(MsgError::BadSignature("signed prekey"))
        );
        let mut kem = d.last_resort_kem_prekey().unwrap();
        kem.verify(d.identity()).unwrap();
        kem.last_resort = false;
        assert!(
            kem.verify(d.identity()).is_err(),
            "a last-resort key cannot pass as one-time"
        );
        let other = device();
        assert!(spk.verify(other.identity()).is_err());
    }

    #[test]
    fn stored_device_round_trips_and_refuses_corruption() {
        let d = device();
        let bytes = d.to_bytes().unwrap();
        let back = Device::from_bytes(&bytes).unwrap();
        assert_eq!(back.identity(), d.identity());
        assert_eq!(*back.to_bytes().unwrap(), *bytes);
        for cut in [0, 1, 40, 200, bytes.len() - 1] {
            assert!(Device::from_bytes(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes.to_vec();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        assert!(Device::from_bytes(&flipped).is_err());
        assert!(!format!("{d:?}").contains(&format!("{:?}", &d.signing_seed[..4])));
    }

    #[test]
    fn bundle_round_trip() {
        let d = device();
        let bundle = PrekeyBundle {
            identity: *d.identity(),
            signed_prekey: d.signed_prekey().unwrap(),
            one_time_prekey: None,
            kem_prekey: d.last_resort_kem_prekey().unwrap(),
        };
        let bytes = bundle.to_bytes();
        assert_eq!(PrekeyBundle::from_bytes(&bytes).unwrap(), bundle);
        PrekeyBundle::from_bytes(&bytes).unwrap().verify().unwrap();
        for cut in 0..bytes.len() {
            assert!(PrekeyBundle::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
