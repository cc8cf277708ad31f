//! Hash functions, HMAC and the Noise HKDF (Noise rev 34, section 4.3).

use ::hmac::{Mac, SimpleHmac};
use aws_lc_rs::{digest, hmac};
use blake2::Blake2s256;
use zeroize::Zeroizing;

/// Output length of every hash the core supports (SHA-256 and BLAKE2s).
pub(crate) const HASH_LEN: usize = 32;

/// A hash function usable in a Noise protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashChoice {
    /// SHA-256 (aws-lc-rs). The default.
    Sha256,
    /// BLAKE2s-256 (RustCrypto `blake2`), for published vectors and WireGuard-style handshakes.
    Blake2s,
}

impl HashChoice {
    /// The name used in Noise protocol names.
    pub fn noise_name(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA256",
            Self::Blake2s => "BLAKE2s",
        }
    }

    /// HASH(a || b).
    pub(crate) fn hash2(self, a: &[u8], b: &[u8]) -> [u8; HASH_LEN] {
        match self {
            Self::Sha256 => {
                let mut ctx = digest::Context::new(&digest::SHA256);
                ctx.update(a);
                ctx.update(b);
                to_array(ctx.finish().as_ref())
            }
            Self::Blake2s => {
                use blake2::Digest;
                let mut h = Blake2s256::new();
                h.update(a);
                h.update(b);
                h.finalize().into()
            }
        }
    }

    /// HMAC-HASH(key, a || b).
    fn hmac2(self, key: &[u8], a: &[u8], b: &[u8]) -> Zeroizing<[u8; HASH_LEN]> {
        Zeroizing::new(match self {
            Self::Sha256 => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, key);
                let mut ctx = hmac::Context::with_key(&key);
                ctx.update(a);
                ctx.update(b);
                to_array(ctx.sign().as_ref())
            }
            Self::Blake2s => {
                // SimpleHmac accepts keys of any length, so this cannot fail.
                let mut mac = <SimpleHmac<Blake2s256> as Mac>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
                mac.update(a);
                mac.update(b);
                mac.finalize().into_bytes().into()
            }
        })
    }

    /// Noise's HKDF(chaining_key, input_key_material, n), for n = 2 or 3 outputs.
    pub(crate) fn hkdf<const N: usize>(
        self,
        chaining_key: &[u8; HASH_LEN],
        ikm: &[u8],
    ) -> [Zeroizing<[u8; HASH_LEN]>; N] {
        debug_assert!(N == 2 || N == 3);
        let temp_key = self.hmac2(chaining_key, ikm, &[]);
        let mut prev: Zeroizing<[u8; HASH_LEN]> = Zeroizing::new([0; HASH_LEN]);
        std::array::from_fn(|i| {
            let counter = [i as u8 + 1];
            let out = if i == 0 {
                self.hmac2(&*temp_key, &counter, &[])
            } else {
                self.hmac2(&*temp_key, &*prev, &counter)
            };
            *prev = *out;
            out
        })
    }
}

fn to_array(bytes: &[u8]) -> [u8; HASH_LEN] {
    let mut out = [0; HASH_LEN];
    out.copy_from_slice(bytes);
    out
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    to_array(ctx.finish().as_ref())
}

/// HKDF-SHA256 (RFC 5869) expand of a pseudorandom key with a label, into `out`.
pub(crate) fn hkdf_sha256_expand(prk: &[u8; HASH_LEN], label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl aws_lc_rs::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = aws_lc_rs::hkdf::Prk::new_less_safe(aws_lc_rs::hkdf::HKDF_SHA256, prk);
    let info = [label];
    // Lengths used here are at most 255 * 32 bytes, the only failure condition of expand.
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .unwrap_or_else(|_| unreachable!("HKDF output length within 255 * HashLen"));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Noise's HKDF is RFC 5869 extract (salt = chaining key) followed by expand with empty info.
    #[test]
    fn noise_hkdf_matches_rfc5869() {
        let ck = [7u8; 32];
        let ikm = b"input key material";
        let [a, b, c] = HashChoice::Sha256.hkdf::<3>(&ck, ikm);
        let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &ck);
        let prk = salt.extract(ikm);
        struct L;
        impl aws_lc_rs::hkdf::KeyType for L {
            fn len(&self) -> usize {
                96
            }
        }
        let mut expected = [0u8; 96];
        prk.expand(&[], L).unwrap().fill(&mut expected).unwrap();
        assert_eq!(&expected[..32], &a[..]);
        assert_eq!(&expected[32..64], &b[..]);
        assert_eq!(&expected[64..], &c[..]);
    }
}
