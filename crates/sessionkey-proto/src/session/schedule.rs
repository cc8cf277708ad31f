//! The session key schedule (docs/PROTOCOL.md section 10): from the handshake's Split() to
//! per-direction traffic secrets, the one-way key-update ratchet, and re-handshakes.

use aws_lc_rs::hkdf::{self, KeyType, HKDF_SHA256};
use zeroize::Zeroizing;

use crate::keys::SecretKey;

struct Len32;

impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The secrets one key-schedule step produces.
pub(crate) struct Secrets {
    pub(crate) initiator_to_responder: SecretKey,
    pub(crate) responder_to_initiator: SecretKey,
    /// Salt for the next re-handshake: keeps the chain of exchanges bound together.
    pub(crate) rehandshake: SecretKey,
}

fn expand(prk: &hkdf::Prk, label: &[u8]) -> SecretKey {
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(&[label], Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    SecretKey::from_bytes(*out)
}

/// HKDF-Extract(salt, ikm), then the three labelled secrets.
fn derive(salt: &[u8], ikm: &[&[u8]]) -> Secrets {
    let ikm: Zeroizing<Vec<u8>> = Zeroizing::new(ikm.concat());
    // The salt is a secret after the first exchange (the last rehandshake secret).
    let prk = crate::crypto::hash::hkdf_sha256_extract(salt, &ikm);
    Secrets {
        initiator_to_responder: expand(&prk, b"sessionkey v1 traffic i2r"),
        responder_to_initiator: expand(&prk, b"sessionkey v1 traffic r2i"),
        rehandshake: expand(&prk, b"sessionkey v1 rehandshake"),
    }
}

/// The first secrets, from Split()'s two keys and the handshake hash.
pub(crate) fn initial(k_i2r: &SecretKey, k_r2i: &SecretKey, handshake_hash: &[u8; 32]) -> Secrets {
    derive(handshake_hash, &[k_i2r.expose(), k_r2i.expose()])
}

/// The secrets after a re-handshake: the ephemeral X25519 secret, the static terms (the
/// initiator's, then the responder's, each present when that side has a static key), the
/// ML-KEM secret when hybrid, and the transcript hash, under the previous re-handshake salt.
pub(crate) fn rehandshake(
    salt: &SecretKey,
    dh: &[u8; 32],
    statics: &[Option<Zeroizing<[u8; 32]>>; 2],
    kem: Option<&[u8; 32]>,
    transcript: &[u8; 32],
) -> Secrets {
    fn term(t: &Option<Zeroizing<[u8; 32]>>) -> &[u8] {
        t.as_ref().map_or(&[], |k| &k[..])
    }
    let kem: &[u8] = kem.map_or(&[], |k| &k[..]);
    derive(
        salt.expose(),
        &[dh, term(&statics[0]), term(&statics[1]), kem, transcript],
    )
}

/// The next secret of a direction's one-way ratchet: the old one cannot be computed from it.
pub(crate) fn ratchet(secret: &SecretKey) -> SecretKey {
    let prk = hkdf::Prk::new_less_safe(HKDF_SHA256, secret.expose());
    expand(&prk, b"sessionkey v1 key update")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_everything() {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        let s = initial(&a, &b, &[3; 32]);
        let next = ratchet(&s.initiator_to_responder);
        let all = [
            s.initiator_to_responder.expose(),
            s.responder_to_initiator.expose(),
            s.rehandshake.expose(),
            next.expose(),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
        let none = [None, None];
        let r1 = rehandshake(&s.rehandshake, &[4; 32], &none, None, &[5; 32]);
        let r2 = rehandshake(&s.rehandshake, &[4; 32], &none, Some(&[6; 32]), &[5; 32]);
        assert_ne!(
            r1.initiator_to_responder.expose(),
            r2.initiator_to_responder.expose()
        );
    }
}
