//! Typed key encodings, prekey ids, identities and addresses (docs/MESSAGING.md, "Keys").
//!
//! Every encoded key starts with a type byte ([`KeyType`]), and every decoder names the type
//! it expects: an X25519 prekey can never be read as a ratchet key, nor an ML-KEM key as an
//! X25519 one (the key-confusion the PQXDH analysis found). Secret keys in stored state carry
//! the same byte with the high bit set.

use std::fmt;

use aws_lc_rs::agreement::PrivateKey;
use zeroize::{Zeroize, Zeroizing};

use super::wire::Reader;
use super::MsgError;
use crate::crypto::{dh, sig, SecureRandom};
use crate::keys::Fingerprint;

/// The first byte of every encoded key (docs/MESSAGING.md, "Key encodings").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// Ed25519 identity signing key (32 bytes).
    Ed25519Identity,
    /// ML-KEM-768 ciphertext to a KEM prekey (1088 bytes). Not a key, typed all the same.
    MlKem768Ciphertext,
    /// ML-KEM-768 last-resort prekey (1184 bytes), signed.
    MlKem768LastResortPrekey,
    /// ML-KEM-768 one-time prekey (1184 bytes), signed.
    MlKem768OneTimePrekey,
    /// X25519 base key: the initiator's ephemeral key of a setup (32 bytes).
    X25519BaseKey,
    /// X25519 identity key (32 bytes), bound to the signing key by a signature.
    X25519Identity,
    /// X25519 one-time prekey (32 bytes).
    X25519OneTimePrekey,
    /// X25519 ratchet key of the Double Ratchet (32 bytes).
    X25519Ratchet,
    /// X25519 signed prekey (32 bytes).
    X25519SignedPrekey,
}

/// The high bit marks a secret key of the same type in stored state.
pub(crate) const SECRET: u8 = 0x80;

impl KeyType {
    /// Every type, in type-byte order.
    pub const ALL: [Self; 9] = [
        Self::Ed25519Identity,
        Self::X25519Identity,
        Self::X25519SignedPrekey,
        Self::X25519OneTimePrekey,
        Self::MlKem768OneTimePrekey,
        Self::MlKem768LastResortPrekey,
        Self::X25519BaseKey,
        Self::X25519Ratchet,
        Self::MlKem768Ciphertext,
    ];

    /// The type byte.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Ed25519Identity => 0x01,
            Self::X25519Identity => 0x02,
            Self::X25519SignedPrekey => 0x03,
            Self::X25519OneTimePrekey => 0x04,
            Self::MlKem768OneTimePrekey => 0x05,
            Self::MlKem768LastResortPrekey => 0x06,
            Self::X25519BaseKey => 0x07,
            Self::X25519Ratchet => 0x08,
            Self::MlKem768Ciphertext => 0x09,
        }
    }

    /// The type with byte `b`.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.byte() == b)
    }

    /// Length of the key after its type byte.
    pub const fn raw_len(self) -> usize {
        match self {
            Self::MlKem768Ciphertext => crate::crypto::kem::CIPHERTEXT_LEN,
            Self::MlKem768LastResortPrekey | Self::MlKem768OneTimePrekey => {
                crate::crypto::kem::PUBLIC_LEN
            }
            _ => 32,
        }
    }
}

/// Append `ty || raw` to `out`.
pub(crate) fn encode_key(ty: KeyType, raw: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(raw.len(), ty.raw_len());
    out.push(ty.byte());
    out.extend_from_slice(raw);
}

/// Read a key of one of the types in `expected`: its type and its raw bytes.
pub(crate) fn decode_key<'a>(
    r: &mut Reader<'a>,
    expected: &[KeyType],
) -> Result<(KeyType, &'a [u8]), MsgError> {
    let b = r.u8()?;
    let ty = KeyType::from_byte(b)
        .filter(|t| expected.contains(t))
        .ok_or(MsgError::BadKeyEncoding("unexpected key type byte"))?;
    Ok((ty, r.take(ty.raw_len())?))
}

/// Read a 32-byte key of type `ty`.
pub(crate) fn decode_key32(r: &mut Reader<'_>, ty: KeyType) -> Result<[u8; 32], MsgError> {
    let (_, raw) = decode_key(r, &[ty])?;
    let mut out = [0; 32];
    out.copy_from_slice(raw);
    Ok(out)
}

/// Read a secret key stored as `ty | SECRET` and its 32 bytes.
pub(crate) fn decode_secret32(
    r: &mut Reader<'_>,
    ty: KeyType,
) -> Result<Zeroizing<[u8; 32]>, MsgError> {
    if r.u8()? != ty.byte() | SECRET {
        return Err(MsgError::CorruptState("unexpected secret key type byte"));
    }
    r.secret()
}

/// The kinds of prekeys; ids count up separately per kind and are never reused.
///
/// One-time and last-resort ML-KEM prekeys share one id space, because an initial message
/// names its KEM prekey by id alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PrekeyKind {
    /// ML-KEM-768 prekeys, one-time and last-resort.
    Kem,
    /// X25519 one-time prekeys.
    OneTime,
    /// X25519 signed prekeys.
    Signed,
}

impl fmt::Display for PrekeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kem => "ML-KEM-768 prekey",
            Self::OneTime => "one-time prekey",
            Self::Signed => "signed prekey",
        })
    }
}

/// A prekey's id, unique per [`PrekeyKind`] on one device. Ids start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrekeyId(pub u32);

impl fmt::Display for PrekeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

const IDENTITY_BINDING_LABEL: &[u8] = b"sessionkey-msg-v1 identity binding";
/// Prefix of every relay request signature, so that it can be taken for no other signature
/// (identity binding, prekeys) the signing key makes.
pub const RELAY_REQUEST_LABEL: &[u8] = b"sessionkey-msg-v1 relay request";

/// A device's public identity: its Ed25519 signing key, its X25519 identity key, and the
/// signing key's signature binding the two.
///
/// Encoded in 130 bytes: `0x01 || signing key (32) || 0x02 || X25519 key (32) ||
/// signature (64)`, the signature over `"sessionkey-msg-v1 identity binding" || the first 66
/// bytes`. A value of this type always carries a verified binding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    signing: [u8; 32],
    dh: [u8; 32],
    binding: [u8; 64],
}

impl IdentityKey {
    /// Length of the encoding.
    pub const ENCODED_LEN: usize = 130;

    fn keys_encoding(signing: &[u8; 32], dh: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(66);
        encode_key(KeyType::Ed25519Identity, signing, &mut out);
        encode_key(KeyType::X25519Identity, dh, &mut out);
        out
    }

    pub(crate) fn bind(signing: &sig::SigningKey, dh: &[u8; 32]) -> Result<Self, MsgError> {
        let keys = Self::keys_encoding(signing.public(), dh);
        let binding = signing.sign(&[IDENTITY_BINDING_LABEL, &keys].concat())?;
        Ok(Self {
            signing: *signing.public(),
            dh: *dh,
            binding,
        })
    }

    /// Parse and verify an identity. Fails with [`MsgError::BadKeyEncoding`] or
    /// [`MsgError::BadSignature`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        let mut r = Reader::new(bytes, MsgError::BadKeyEncoding("identity key truncated"));
        let id = Self::read(&mut r)?;
        r.finish()
            .map_err(|_| MsgError::BadKeyEncoding("identity key too long"))?;
        Ok(id)
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        let id = Self::read_verified_before(r)?;
        let keys = Self::keys_encoding(&id.signing, &id.dh);
        if !sig::verify(
            &id.signing,
            &[IDENTITY_BINDING_LABEL, &keys].concat(),
            &id.binding,
        ) {
            return Err(MsgError::BadSignature("identity binding"));
        }
        Ok(id)
    }

    /// Read an identity from this device's own stored state, whose binding was verified when
    /// it was first received; skips the signature check (an Ed25519 verification per load).
    pub(crate) fn read_verified_before(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        Ok(Self {
            signing: decode_key32(r, KeyType::Ed25519Identity)?,
            dh: decode_key32(r, KeyType::X25519Identity)?,
            binding: r.array::<64>()?,
        })
    }

    /// The 130-byte encoding.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..66].copy_from_slice(&Self::keys_encoding(&self.signing, &self.dh));
        out[66..].copy_from_slice(&self.binding);
        out
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The Ed25519 signing key, which signs the binding and every prekey.
    pub fn signing_key(&self) -> &[u8; 32] {
        &self.signing
    }

    /// The X25519 identity key used in the setup's DH1 and DH2.
    pub fn dh_key(&self) -> &[u8; 32] {
        &self.dh
    }

    /// What people compare to verify each other: SHA-256 over a label and both typed keys.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_msg_identity(&Self::keys_encoding(&self.signing, &self.dh))
    }

    /// Verify a relay request signature made with [`Device::sign_relay_request`]
    /// (docs/MESSAGING.md, "Relay API"). `false` for any failure.
    ///
    /// [`Device::sign_relay_request`]: super::Device::sign_relay_request
    pub fn verify_relay_request(&self, request: &[u8], signature: &[u8]) -> bool {
        sig::verify(
            &self.signing,
            &[RELAY_REQUEST_LABEL, request].concat(),
            signature,
        )
    }

    /// Verify a signature made by this identity's signing key.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        sig::verify(&self.signing, message, signature)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.fingerprint())
    }
}

/// A device's address on the relay (for example a user id and a device number), opaque to
/// the core: 1 to 255 bytes. Both parties' addresses are bound into every message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(Vec<u8>);

impl Address {
    /// Wrap 1 to 255 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, MsgError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > 255 {
            return Err(MsgError::InvalidAddress(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// The address bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Append `length (1 byte) || bytes`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        // The constructor bounds the length to 255.
        out.push(self.0.len() as u8);
        out.extend_from_slice(&self.0);
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "Address({s:?})"),
            Err(_) => write!(f, "Address(0x{})", hex_lower(&self.0)),
        }
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An X25519 key pair: aws-lc's key object (which cleanses itself when freed) for the
/// agreements, and the 32 secret bytes (zeroized on drop, never printed) for stored state.
pub(crate) struct DhKeyPair {
    private: PrivateKey,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl DhKeyPair {
    pub(crate) fn generate(rng: &mut dyn SecureRandom) -> Result<Self, MsgError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill(&mut secret[..])?;
        Self::from_secret(secret)
    }

    pub(crate) fn from_secret(secret: Zeroizing<[u8; 32]>) -> Result<Self, MsgError> {
        let private = dh::private_from_bytes(&secret)?;
        let public = dh::public_of(&private)?;
        Ok(Self {
            private,
            secret,
            public,
        })
    }

    pub(crate) fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// X25519(self, their). A low-order or malformed key is [`MsgError::BadKeyEncoding`].
    pub(crate) fn agree(&self, their: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, MsgError> {
        Ok(dh::agree(&self.private, their)?)
    }

    /// Append `ty | SECRET || secret bytes`.
    pub(crate) fn write_secret(&self, ty: KeyType, out: &mut Vec<u8>) {
        out.push(ty.byte() | SECRET);
        out.extend_from_slice(&self.secret[..]);
    }

    pub(crate) fn read_secret(r: &mut Reader<'_>, ty: KeyType) -> Result<Self, MsgError> {
        Self::from_secret(decode_secret32(r, ty)?)
    }

    pub(crate) fn duplicate(&self) -> Result<Self, MsgError> {
        Self::from_secret(self.secret.clone())
    }
}

impl Drop for DhKeyPair {
    fn drop(&mut self) {
        self.public.zeroize();
    }
}

impl fmt::Debug for DhKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DhKeyPair(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bytes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for t in KeyType::ALL {
            assert!(seen.insert(t.byte()));
            assert_eq!(KeyType::from_byte(t.byte()), Some(t));
            assert_eq!(t.byte() & SECRET, 0);
        }
        assert_eq!(KeyType::from_byte(0), None);
        assert_eq!(KeyType::from_byte(0x0a), None);
    }

    #[test]
    fn a_key_of_one_type_is_refused_as_another() {
        let mut buf = Vec::new();
        encode_key(KeyType::X25519OneTimePrekey, &[7; 32], &mut buf);
        let mut r = Reader::new(&buf, MsgError::BadKeyEncoding("short"));
        assert_eq!(
            decode_key32(&mut r, KeyType::X25519Ratchet),
            Err(MsgError::BadKeyEncoding("unexpected key type byte"))
        );
        let mut r = Reader::new(&buf[..20], MsgError::BadKeyEncoding("short"));
        assert_eq!(
            decode_key32(&mut r, KeyType::X25519OneTimePrekey),
            Err(MsgError::BadKeyEncoding("short"))
        );
    }

    #[test]
    fn addresses_are_bounded() {
        assert_eq!(Address::new(Vec::new()), Err(MsgError::InvalidAddress(0)));
        assert_eq!(
            Address::new(vec![1; 256]),
            Err(MsgError::InvalidAddress(256))
        );
        assert_eq!(
            format!("{:?}", Address::new("alice.1").unwrap()),
            "Address(\"alice.1\")"
        );
    }
}
