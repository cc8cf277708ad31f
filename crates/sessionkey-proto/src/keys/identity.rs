//! Static X25519 identities and their public keys.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use aws_lc_rs::agreement::PrivateKey;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use super::Fingerprint;
use crate::crypto::{dh, SecureRandom};
use crate::Error;

/// The type word that starts a public key line in files (`sessionkey-x25519 BASE64 comment`),
/// as `ssh-ed25519` starts an ssh public key line.
pub const PUBLIC_KEY_TYPE: &str = "sessionkey-x25519";

/// A static X25519 key pair: who a peer is.
///
/// Not `Clone`: share it with `Arc`. `Debug` shows the public key's fingerprint only. The
/// private key lives in aws-lc, which cleanses it when it is freed.
pub struct Identity {
    private: PrivateKey,
    public: PublicKey,
    /// X25519 of this key with peers' static keys, kept as WireGuard keeps its
    /// `precomputed_static_static`: the `ss` token of an IK handshake with a peer seen before
    /// costs no scalar multiplication. Values are zeroized when dropped or cleared.
    static_static: Mutex<Option<StaticStatic>>,
}

/// Peer static public key to the X25519 shared secret with it.
type StaticStatic = HashMap<[u8; 32], Zeroizing<[u8; 32]>>;

/// Peers whose static-static secret is kept; past it the cache starts over. The map never
/// grows past its first allocation, so no copy of a secret is left in freed memory.
const STATIC_STATIC_CACHE: usize = 256;

impl Identity {
    /// Generate a new identity from `rng`.
    pub fn generate(rng: &mut dyn SecureRandom) -> Result<Self, Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill(&mut bytes[..])?;
        Self::from_secret_bytes(&bytes)
    }

    /// Build an identity from its 32 secret bytes.
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let private = dh::private_from_bytes(bytes)?;
        let public = PublicKey(dh::public_of(&private)?);
        Ok(Self {
            private,
            public,
            static_static: Mutex::new(None),
        })
    }

    /// X25519 of this identity with a peer's static public key, computed once per peer.
    pub(crate) fn static_dh(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, Error> {
        let (Ok(key), Ok(mut cache)) = (<[u8; 32]>::try_from(peer), self.static_static.lock())
        else {
            return dh::agree(&self.private, peer);
        };
        let map = cache.get_or_insert_with(|| HashMap::with_capacity(STATIC_STATIC_CACHE));
        if let Some(shared) = map.get(&key) {
            return Ok(shared.clone());
        }
        let shared = dh::agree(&self.private, peer)?;
        if map.len() >= STATIC_STATIC_CACHE {
            map.clear();
        }
        map.insert(key, shared.clone());
        Ok(shared)
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub(crate) fn private(&self) -> &PrivateKey {
        &self.private
    }

    /// A 32-byte key derived from this identity's secret for another purpose, named by
    /// `info`: HKDF-SHA256 with an all-zero salt, the secret as input keying material and
    /// `"sessionkey v1 derived key" || info` as info. The messaging client encrypts its state
    /// at rest with such a key, so that its key file is the one secret to guard.
    pub fn derive_key(&self, info: &[u8]) -> Result<Zeroizing<[u8; 32]>, Error> {
        let secret = self.secret_bytes()?;
        let mut out = Zeroizing::new([0u8; 32]);
        crate::crypto::hash::hkdf_sha256(
            &[0; 32],
            &secret[..],
            &[b"sessionkey v1 derived key".as_slice(), info].concat(),
            &mut out[..],
        );
        Ok(out)
    }

    /// The 32 secret bytes, for writing the key file.
    pub(crate) fn secret_bytes(&self) -> Result<Zeroizing<[u8; 32]>, Error> {
        dh::private_bytes(&self.private)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

/// An X25519 public key.
///
/// Text forms: bare base64 on a command line; a typed line in files,
/// `sessionkey-x25519 BASE64 [comment]`. [`FromStr`] accepts both.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wrap 32 public key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's fingerprint, `SHA256:...`.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_public_key(&self.0)
    }

    /// Bare base64, as given on a command line.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The typed line written to `.pub` files: `sessionkey-x25519 BASE64 comment`.
    pub fn to_line(&self, comment: &str) -> String {
        let comment = comment.trim();
        if comment.is_empty() {
            format!("{PUBLIC_KEY_TYPE} {}", self.to_base64())
        } else {
            format!("{PUBLIC_KEY_TYPE} {} {comment}", self.to_base64())
        }
    }
}

/// Why a public key text was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sessionkey public key ({0}); expected `{PUBLIC_KEY_TYPE} BASE64` or 44 base64 characters")]
pub struct ParsePublicKeyError(&'static str);

impl FromStr for PublicKey {
    type Err = ParsePublicKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let first = words.next().ok_or(ParsePublicKeyError("empty"))?;
        let b64 = if first == PUBLIC_KEY_TYPE {
            words
                .next()
                .ok_or(ParsePublicKeyError("no key after the type"))?
        } else if first.starts_with("sessionkey-") {
            return Err(ParsePublicKeyError("unknown key type"));
        } else {
            first
        };
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| ParsePublicKeyError("invalid base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ParsePublicKeyError("not 32 bytes"))?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SystemRandom;

    #[test]
    fn static_static_cache_agrees_with_x25519_and_stays_bounded() {
        let me = Identity::generate(&mut SystemRandom).unwrap();
        let peers: Vec<Identity> = (0..STATIC_STATIC_CACHE + 40)
            .map(|_| Identity::generate(&mut SystemRandom).unwrap())
            .collect();
        for round in 0..2 {
            for peer in &peers {
                let cached = me.static_dh(peer.public_key().as_bytes()).unwrap();
                let fresh = dh::agree(&peer.private, me.public_key().as_bytes()).unwrap();
                assert_eq!(*cached, *fresh, "round {round}");
            }
        }
        let cache = me.static_static.lock().unwrap();
        let map = cache.as_ref().unwrap();
        assert!(map.len() <= STATIC_STATIC_CACHE);
        assert!(map.capacity() >= STATIC_STATIC_CACHE);
        // A low-order key is refused, and not cached.
        drop(cache);
        assert!(me.static_dh(&[0u8; 32]).is_err());
    }

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 section 6.1: Alice's key pair.
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let id = Identity::from_secret_bytes(&sk.try_into().unwrap()).unwrap();
        assert_eq!(
            hex::encode(id.public_key().as_bytes()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn text_forms_round_trip() {
        let id = Identity::generate(&mut SystemRandom).unwrap();
        let pk = *id.public_key();
        assert_eq!(pk.to_base64().parse::<PublicKey>().unwrap(), pk);
        assert_eq!(pk.to_line("alice@laptop").parse::<PublicKey>().unwrap(), pk);
        // Copy and paste often adds surrounding white space.
        assert_eq!(
            format!("  {}\n", pk.to_line(""))
                .parse::<PublicKey>()
                .unwrap(),
            pk
        );
        assert!("sessionkey-ed25519 AAAA".parse::<PublicKey>().is_err());
        assert!("AAAA".parse::<PublicKey>().is_err());
        assert!(!format!("{id:?}").contains(&pk.to_base64()));
    }
}
