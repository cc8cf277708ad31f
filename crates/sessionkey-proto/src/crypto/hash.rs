//! Hash functions, HMAC and the Noise HKDF (Noise rev 34, section 4.3).

use ::hmac::{Mac, SimpleHmac};
use aws_lc_rs::digest;
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
                // Most calls hash h and a key or a tag: one-shot on a stack copy is cheaper
                // than aws-lc-rs's `Context`, which allocates its state on the heap.
                const SMALL: usize = 128;
                if a.len() + b.len() <= SMALL {
                    let mut buf = [0u8; SMALL];
                    buf[..a.len()].copy_from_slice(a);
                    buf[a.len()..a.len() + b.len()].copy_from_slice(b);
                    return to_array(
                        digest::digest(&digest::SHA256, &buf[..a.len() + b.len()]).as_ref(),
                    );
                }
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

    /// HMAC-BLAKE2s(key, a || b).
    fn hmac_blake2s(key: &[u8], a: &[u8], b: &[u8]) -> Zeroizing<[u8; HASH_LEN]> {
        // SimpleHmac accepts keys of any length, so this cannot fail.
        let mut mac = <SimpleHmac<Blake2s256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(a);
        mac.update(b);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Noise's HKDF(chaining_key, input_key_material, n), for n = 2 or 3 outputs. For
    /// SHA-256 this is exactly RFC 5869 (extract with the chaining key as salt, expand with
    /// empty info), done by aws-lc; BLAKE2s follows section 4.3's HMAC steps.
    pub(crate) fn hkdf<const N: usize>(
        self,
        chaining_key: &[u8; HASH_LEN],
        ikm: &[u8],
    ) -> [Zeroizing<[u8; HASH_LEN]>; N] {
        debug_assert!(N == 2 || N == 3);
        match self {
            Self::Sha256 => {
                // RFC 5869 with the chaining key as salt and empty info.
                let mut okm = Zeroizing::new([0u8; 3 * HASH_LEN]);
                let okm = &mut okm[..N * HASH_LEN];
                hkdf_sha256_extract(chaining_key, ikm)
                    .expand(&[], Len(okm.len()))
                    .and_then(|k| k.fill(okm))
                    .unwrap_or_else(|_| unreachable!("at most 96 bytes of HKDF output"));
                std::array::from_fn(|i| {
                    let mut out = Zeroizing::new([0; HASH_LEN]);
                    out.copy_from_slice(&okm[i * HASH_LEN..(i + 1) * HASH_LEN]);
                    out
                })
            }
            Self::Blake2s => {
                let temp_key = Self::hmac_blake2s(chaining_key, ikm, &[]);
                let mut prev: Zeroizing<[u8; HASH_LEN]> = Zeroizing::new([0; HASH_LEN]);
                std::array::from_fn(|i| {
                    let counter = [i as u8 + 1];
                    let out = if i == 0 {
                        Self::hmac_blake2s(&*temp_key, &counter, &[])
                    } else {
                        Self::hmac_blake2s(&*temp_key, &*prev, &counter)
                    };
                    *prev = *out;
                    out
                })
            }
        }
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

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    to_array(ctx.sign().as_ref())
}

/// Whether `a == b`, in time independent of their contents (for MACs).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// An HKDF output length.
struct Len(usize);

impl aws_lc_rs::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256-Extract (RFC 5869): HMAC(salt, ikm), as a PRK to expand.
///
/// Not aws-lc-rs's `hkdf::Salt`: it keeps a heap copy of the salt and frees it without
/// zeroizing it, and salts here are often secret (Noise's chaining key, the ratchets' root
/// keys). aws-lc cleanses the HMAC key, and `Prk` zeroizes its copy of the result.
pub(crate) fn hkdf_sha256_extract(salt: &[u8], ikm: &[u8]) -> aws_lc_rs::hkdf::Prk {
    use aws_lc_rs::hmac::{sign_to_buffer, Key, HMAC_SHA256};
    let mut prk = Zeroizing::new([0u8; HASH_LEN]);
    sign_to_buffer(&Key::new(HMAC_SHA256, salt), ikm, &mut prk[..])
        .map(|_| ())
        .unwrap_or_else(|_| unreachable!("HMAC-SHA256 into a 32-byte buffer"));
    aws_lc_rs::hkdf::Prk::new_less_safe(aws_lc_rs::hkdf::HKDF_SHA256, &prk[..])
}

/// HKDF-SHA256 (RFC 5869) expand of a pseudorandom key with a label, into `out`.
pub(crate) fn hkdf_sha256_expand(prk: &[u8; HASH_LEN], label: &[u8], out: &mut [u8]) {
    let prk = aws_lc_rs::hkdf::Prk::new_less_safe(aws_lc_rs::hkdf::HKDF_SHA256, prk);
    let info = [label];
    // Lengths used here are at most 255 * 32 bytes, the only failure condition of expand.
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .unwrap_or_else(|_| unreachable!("HKDF output length within 255 * HashLen"));
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, then expand with `info`, into `out`
/// (at most 255 * 32 bytes; the callers ask for at most 64).
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let info = [info];
    hkdf_sha256_extract(salt, ikm)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .unwrap_or_else(|_| unreachable!("HKDF output length within 255 * HashLen"));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Noise section 4.3's HKDF against its steps written out with aws-lc's HMAC, and against
    // aws-lc's one-pass RFC 5869 HKDF.
    #[test]
    fn noise_hkdf_matches_section_4_3() {
        use aws_lc_rs::hmac::{sign, Key, HMAC_SHA256};
        let ck = [7u8; 32];
        let ikm = b"input key material";
        let [a, b, c] = HashChoice::Sha256.hkdf::<3>(&ck, ikm);
        let temp = sign(&Key::new(HMAC_SHA256, &ck), ikm);
        let temp = Key::new(HMAC_SHA256, temp.as_ref());
        let o1 = sign(&temp, &[1]);
        let o2 = sign(&temp, &[o1.as_ref(), &[2]].concat());
        let o3 = sign(&temp, &[o2.as_ref(), &[3]].concat());
        assert_eq!(o1.as_ref(), &a[..]);
        assert_eq!(o2.as_ref(), &b[..]);
        assert_eq!(o3.as_ref(), &c[..]);
        // And RFC 5869 in aws-lc's one pass: the chaining key as salt, empty info.
        let mut okm = [0u8; 96];
        hkdf_sha256(&ck, ikm, &[], &mut okm);
        assert_eq!(okm[..], [&a[..], &b[..], &c[..]].concat()[..]);
        let [a2, b2] = HashChoice::Sha256.hkdf::<2>(&ck, &[]);
        hkdf_sha256(&ck, &[], &[], &mut okm[..64]);
        assert_eq!(okm[..64], [&a2[..], &b2[..]].concat()[..]);
    }

    fn wycheproof(file: &str) -> serde_json::Value {
        let path = crate::test_support::vectors_dir()
            .join("wycheproof/testvectors_v1")
            .join(file);
        serde_json::from_str(&std::fs::read_to_string(path).expect("read vectors")).expect("json")
    }

    /// Wycheproof HKDF-SHA256 through `hkdf_sha256` (the messaging KDFs and the record key
    /// derivation use it). Invalid cases ask for more than 255 * 32 bytes, which the callers
    /// never do; they are counted as skipped.
    #[test]
    fn wycheproof_hkdf_sha256() {
        let json = wycheproof("hkdf_sha256_test.json");
        let (mut passed, mut failed, mut skipped) = (0, 0, 0);
        for group in json["testGroups"].as_array().unwrap() {
            for t in group["tests"].as_array().unwrap() {
                let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
                let size = t["size"].as_u64().unwrap() as usize;
                if t["result"] != "valid" || size > 255 * HASH_LEN {
                    skipped += 1;
                    continue;
                }
                let mut out = vec![0u8; size];
                hkdf_sha256(&h("salt"), &h("ikm"), &h("info"), &mut out);
                if out == h("okm") {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        crate::test_support::report("wycheproof/hkdf_sha256", passed, failed);
        assert!(
            passed > 50 && failed == 0,
            "{passed} passed, {failed} failed, {skipped} skipped"
        );
    }

    /// Wycheproof HMAC-SHA256 (full and truncated tags) through `hmac_sha256` and `ct_eq`,
    /// as the VPN's cookies use them: a valid tag matches, every invalid one does not.
    #[test]
    fn wycheproof_hmac_sha256() {
        let json = wycheproof("hmac_sha256_test.json");
        let (mut passed, mut failed) = (0, 0);
        for group in json["testGroups"].as_array().unwrap() {
            let tag_len = group["tagSize"].as_u64().unwrap() as usize / 8;
            for t in group["tests"].as_array().unwrap() {
                let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
                let mac = hmac_sha256(&h("key"), &[&h("msg")]);
                let matches = ct_eq(&mac[..tag_len], &h("tag"));
                if matches == (t["result"] == "valid") {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        crate::test_support::report("wycheproof/hmac_sha256", passed, failed);
        assert!(
            passed > 100 && failed == 0,
            "{passed} passed, {failed} failed"
        );
    }
}
