//! The one place that hands an explicit nonce to an AEAD.
//!
//! aws-lc-rs's `LessSafeKey` takes any nonce; everything above this module owns a counter
//! and derives the nonce from it, so no public API ever accepts a nonce. Keep every use of
//! `LessSafeKey` in this file.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::error::PeerMisbehaved;
use crate::Error;

/// Length of every nonce the core's AEADs take.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of every tag the core's AEADs produce.
pub(crate) const TAG_LEN: usize = 16;

/// The AEAD algorithms of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AeadAlg {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadAlg {
    fn aws(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    pub(crate) fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::ChaCha20Poly1305 => 32,
        }
    }
}

/// An AEAD key. aws-lc-rs zeroizes its key schedule when this is dropped.
pub(crate) struct AeadKey {
    key: LessSafeKey,
}

impl AeadKey {
    pub(crate) fn new(alg: AeadAlg, key: &[u8]) -> Result<Self, Error> {
        let unbound = UnboundKey::new(alg.aws(), key)
            .map_err(|_| Error::Crypto("AEAD key of wrong length"))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypt `in_out` in place and return the tag. The caller guarantees `nonce` is unique
    /// under this key.
    #[inline]
    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| Error::Crypto("AEAD seal failed"))?;
        let mut out = [0; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt `ciphertext || tag` in place; returns the plaintext, a prefix of `in_out`.
    /// On failure the plaintext is never released.
    #[inline]
    pub(crate) fn open_in_place<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        if in_out.len() < TAG_LEN {
            return Err(PeerMisbehaved::Truncated {
                needed: TAG_LEN,
                got: in_out.len(),
            }
            .into());
        }
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| PeerMisbehaved::BadTag.into())
    }
}

#[cfg(test)]
mod wycheproof {
    //! Wycheproof AES-GCM and ChaCha20-Poly1305 vectors through the core's AEAD adapter.
    use super::*;
    use crate::test_support::{report, vectors_dir};

    fn run(file: &str, pick: impl Fn(usize) -> Option<AeadAlg>) -> (usize, usize, usize) {
        let path = vectors_dir().join("wycheproof/testvectors_v1").join(file);
        let text = std::fs::read_to_string(&path).expect("read vectors");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let (mut passed, mut failed, mut skipped) = (0, 0, 0);
        for group in json["testGroups"].as_array().unwrap() {
            let key_size = group["keySize"].as_u64().unwrap() as usize;
            let iv_size = group["ivSize"].as_u64().unwrap();
            let tag_size = group["tagSize"].as_u64().unwrap();
            for t in group["tests"].as_array().unwrap() {
                let alg = match pick(key_size) {
                    Some(a) if iv_size == 96 && tag_size == 128 => a,
                    _ => {
                        skipped += 1;
                        continue;
                    }
                };
                let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
                let (key, iv, aad, msg, ct, tag) =
                    (h("key"), h("iv"), h("aad"), h("msg"), h("ct"), h("tag"));
                let valid = t["result"].as_str().unwrap() == "valid";
                let nonce: [u8; 12] = iv.try_into().unwrap();
                let key = AeadKey::new(alg, &key).unwrap();
                let mut ok = true;
                // Seal: valid cases must produce exactly ct || tag.
                if valid {
                    let mut buf = msg.clone();
                    let got_tag = key.seal_in_place(nonce, &aad, &mut buf).unwrap();
                    ok &= buf == ct && got_tag[..] == tag[..];
                }
                // Open: valid cases must return msg, invalid ones must fail.
                let mut buf = [ct.as_slice(), tag.as_slice()].concat();
                match key.open_in_place(nonce, &aad, &mut buf) {
                    Ok(pt) => ok &= valid && pt == msg.as_slice(),
                    Err(_) => ok &= !valid,
                }
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                    eprintln!("{file} tcId {} failed", t["tcId"]);
                }
            }
        }
        (passed, failed, skipped)
    }

    #[test]
    fn wycheproof_aead() {
        let gcm = run("aes_gcm_test.json", |bits| match bits {
            128 => Some(AeadAlg::Aes128Gcm),
            256 => Some(AeadAlg::Aes256Gcm),
            _ => None,
        });
        let chacha = run("chacha20_poly1305_test.json", |_| {
            Some(AeadAlg::ChaCha20Poly1305)
        });
        let passed = gcm.0 + chacha.0;
        let failed = gcm.1 + chacha.1;
        report("wycheproof-aead", passed, failed);
        // 133 AES-GCM cases with 128/256-bit keys and 96-bit IVs, 316 ChaCha20-Poly1305 cases
        // with 96-bit nonces (../shared/vectors/README.md).
        assert_eq!(failed, 0);
        assert_eq!(passed, 133 + 316);
    }
}
