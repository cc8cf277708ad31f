//! The in-band re-handshake: a fresh X25519 (and ML-KEM-768 when hybrid) exchange carried in
//! records, authenticated by both static keys, and mixed into the key schedule (PROTOCOL.md
//! section 10.2).
//!
//! ```text
//! requester                                   peer
//!   REHANDSHAKE_REQUEST(e_pub [|| ek])  -->     (old keys)
//!                                       <--   REHANDSHAKE_REPLY(e_pub [|| ct])  (old key,
//!                                             then the peer sends under the new key)
//!   REHANDSHAKE_FINISH                  -->   (old key, then the requester sends under the new key)
//! ```

use aws_lc_rs::agreement::PrivateKey;
use zeroize::Zeroizing;

use crate::crypto::dh::{self, DH_LEN};
use crate::crypto::hash::sha256;
use crate::crypto::kem::{self, KemKeyPair};
use crate::crypto::SecureRandom;
use crate::error::PeerMisbehaved;
use crate::keys::{Identity, PublicKey, SecretKey};
use crate::Error;

use super::schedule::{self, Secrets};
use super::Role;

/// The static keys that authenticate a re-handshake (PROTOCOL.md 10.2): each side's static
/// key is combined with the other side's fresh ephemeral, so only the holders of the static
/// keys can compute the new secrets, even if the old traffic secrets leaked.
pub(crate) struct Statics<'a> {
    role: Role,
    local: Option<&'a Identity>,
    peer: Option<PublicKey>,
}

impl<'a> Statics<'a> {
    pub(crate) fn new(role: Role, local: Option<&'a Identity>, peer: Option<PublicKey>) -> Self {
        Self { role, local, peer }
    }

    /// The two static terms, in the handshake's role order: X25519 of the initiator's static
    /// key with the other side's ephemeral, then the same for the responder's static key. A
    /// side without a static key (anonymous initiator) contributes no term.
    pub(crate) fn terms(
        &self,
        my_e: &PrivateKey,
        peer_e: &[u8],
    ) -> Result<[Option<Shared>; 2], Error> {
        let mine = match self.local {
            Some(id) => Some(dh::agree(id.private(), peer_e)?),
            None => None,
        };
        let theirs = match &self.peer {
            Some(key) => Some(dh::agree(my_e, key.as_bytes())?),
            None => None,
        };
        Ok(match self.role {
            Role::Initiator => [mine, theirs],
            Role::Responder => [theirs, mine],
        })
    }
}

type Shared = Zeroizing<[u8; DH_LEN]>;

/// Where a session is in a re-handshake.
pub(crate) enum Rekey {
    Idle,
    /// This side sent a request and waits for the reply.
    Requested {
        e: PrivateKey,
        kem: Option<Box<KemKeyPair>>,
        request: Box<[u8]>,
    },
    /// This side must send its reply, then switch its sending key.
    ///
    /// The secrets waiting here are boxed: the state moves (`mem::replace`) as the exchange
    /// advances, and a move of an inline secret would leave a copy behind in the session's
    /// memory, which no drop zeroizes. A box moves only its pointer, and the secret is
    /// zeroized where it lies when the box is dropped.
    Replying {
        reply: Box<[u8]>,
        send: Box<SecretKey>,
        recv: Box<SecretKey>,
    },
    /// This side replied and waits for the requester's finish to switch its receiving key.
    AwaitingFinish {
        recv: Box<SecretKey>,
    },
    /// This side got the reply and must send its finish, then switch its sending key.
    Finishing {
        send: Box<SecretKey>,
    },
}

/// Generate a request: ephemeral keys and the record content carrying their public halves.
pub(crate) fn request(rng: &mut dyn SecureRandom, hybrid: bool) -> Result<Rekey, Error> {
    let mut secret = Zeroizing::new([0u8; DH_LEN]);
    rng.fill(&mut secret[..])?;
    let e = dh::private_from_bytes(&secret)?;
    let mut content = dh::public_of(&e)?.to_vec();
    let kem = if hybrid {
        let pair = KemKeyPair::generate()?;
        content.extend_from_slice(pair.public());
        Some(Box::new(pair))
    } else {
        None
    };
    Ok(Rekey::Requested {
        e,
        kem,
        request: content.into_boxed_slice(),
    })
}

fn request_len(hybrid: bool) -> usize {
    DH_LEN + if hybrid { kem::PUBLIC_LEN } else { 0 }
}

fn reply_len(hybrid: bool) -> usize {
    DH_LEN + if hybrid { kem::CIPHERTEXT_LEN } else { 0 }
}

/// Answer a peer's request: returns the reply content and the new secrets.
pub(crate) fn answer(
    rng: &mut dyn SecureRandom,
    hybrid: bool,
    salt: &SecretKey,
    statics: &Statics<'_>,
    request: &[u8],
) -> Result<(Box<[u8]>, Secrets), Error> {
    if request.len() != request_len(hybrid) {
        return Err(
            PeerMisbehaved::UnexpectedRecord("re-handshake request of the wrong length").into(),
        );
    }
    let mut secret = Zeroizing::new([0u8; DH_LEN]);
    rng.fill(&mut secret[..])?;
    let e = dh::private_from_bytes(&secret)?;
    let mut reply = dh::public_of(&e)?.to_vec();
    let shared = dh::agree(&e, &request[..DH_LEN])?;
    let terms = statics.terms(&e, &request[..DH_LEN])?;
    let kem_secret = if hybrid {
        let ek = kem::parse_public(&request[DH_LEN..])?;
        let (ct, ss) = kem::encapsulate(&ek)?;
        reply.extend_from_slice(&ct);
        Some(ss)
    } else {
        None
    };
    let transcript = sha256(&[request, &reply]);
    let secrets = schedule::rehandshake(salt, &shared, &terms, kem_secret.as_deref(), &transcript);
    Ok((reply.into_boxed_slice(), secrets))
}

/// Complete a request with the peer's reply: the new secrets.
pub(crate) fn complete(
    e: &PrivateKey,
    kem: Option<&KemKeyPair>,
    salt: &SecretKey,
    statics: &Statics<'_>,
    request: &[u8],
    reply: &[u8],
) -> Result<Secrets, Error> {
    if reply.len() != reply_len(kem.is_some()) {
        return Err(
            PeerMisbehaved::UnexpectedRecord("re-handshake reply of the wrong length").into(),
        );
    }
    let shared = dh::agree(e, &reply[..DH_LEN])?;
    let terms = statics.terms(e, &reply[..DH_LEN])?;
    let kem_secret = match kem {
        Some(pair) => Some(pair.decapsulate(&reply[DH_LEN..])?),
        None => None,
    };
    let transcript = sha256(&[request, reply]);
    Ok(schedule::rehandshake(
        salt,
        &shared,
        &terms,
        kem_secret.as_deref(),
        &transcript,
    ))
}
