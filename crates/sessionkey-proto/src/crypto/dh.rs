//! X25519 (RFC 7748) through aws-lc-rs.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroizing;

use crate::error::PeerMisbehaved;
use crate::Error;

/// Length of X25519 public keys, private keys and shared secrets.
pub(crate) const DH_LEN: usize = 32;

/// Build an X25519 private key from its 32 secret bytes (clamped by aws-lc as RFC 7748 says).
pub(crate) fn private_from_bytes(bytes: &[u8; DH_LEN]) -> Result<PrivateKey, Error> {
    PrivateKey::from_private_key(&X25519, bytes).map_err(|_| Error::Crypto("X25519 key rejected"))
}

/// The public key of `private`.
pub(crate) fn public_of(private: &PrivateKey) -> Result<[u8; DH_LEN], Error> {
    let public = private.compute_public_key()?;
    public
        .as_ref()
        .try_into()
        .map_err(|_| Error::Crypto("X25519 public key of wrong length"))
}

/// The 32 secret bytes of an X25519 private key, for saving it to a file.
pub(crate) fn private_bytes(private: &PrivateKey) -> Result<Zeroizing<[u8; DH_LEN]>, Error> {
    use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
    let seed: Curve25519SeedBin<'static> = private.as_be_bytes()?;
    let mut out = Zeroizing::new([0; DH_LEN]);
    out.copy_from_slice(seed.as_ref());
    Ok(out)
}

/// X25519(private, public). A low-order public key makes the result all zero, which aws-lc
/// rejects (as BoringSSL does); that and any malformed key are reported as the peer's fault.
pub(crate) fn agree(private: &PrivateKey, public: &[u8]) -> Result<Zeroizing<[u8; DH_LEN]>, Error> {
    agreement::agree(
        private,
        UnparsedPublicKey::new(&X25519, public),
        Error::from(PeerMisbehaved::InvalidPublicKey),
        |shared| {
            let mut out = Zeroizing::new([0; DH_LEN]);
            if shared.len() != DH_LEN {
                return Err(PeerMisbehaved::InvalidPublicKey.into());
            }
            out.copy_from_slice(shared);
            Ok(out)
        },
    )
}

#[cfg(test)]
mod wycheproof {
    use super::*;
    use crate::test_support::{report, vectors_dir};

    // BoringSSL's Wycheproof harness accepts an "acceptable" case only when all its flags are
    // benign; ZeroSharedSecret cases must fail (crypto/curve25519/x25519_test.cc).
    const BENIGN: &[&str] = &[
        "NonCanonicalPublic",
        "Twist",
        "SpecialPublicKey",
        "EdgeCaseShared",
        "EdgeCaseMultiplication",
        "SmallPublicKey",
        "LowOrderPublic",
        "Ktv",
    ];

    #[test]
    fn wycheproof_x25519() {
        let path = vectors_dir().join("wycheproof/testvectors_v1/x25519_test.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (mut passed, mut failed) = (0, 0);
        for group in json["testGroups"].as_array().unwrap() {
            for t in group["tests"].as_array().unwrap() {
                let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
                let private: [u8; 32] = h("private").try_into().unwrap();
                let (public, shared) = (h("public"), h("shared"));
                let flags: Vec<&str> = t["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap())
                    .collect();
                let must_succeed = match t["result"].as_str().unwrap() {
                    "valid" => true,
                    "acceptable" => flags.iter().all(|f| BENIGN.contains(f)),
                    _ => false,
                };
                let got = agree(&private_from_bytes(&private).unwrap(), &public);
                let ok = match got {
                    Ok(s) => must_succeed && s[..] == shared[..],
                    Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidPublicKey)) => !must_succeed,
                    Err(_) => false,
                };
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                    eprintln!("x25519 tcId {} failed ({flags:?})", t["tcId"]);
                }
            }
        }
        report("wycheproof-x25519", passed, failed);
        assert_eq!(failed, 0);
        assert!(passed >= 500, "only {passed} X25519 cases ran");
    }

    #[test]
    fn all_zero_shared_secret_is_an_error() {
        let private = private_from_bytes(&[0x42; 32]).unwrap();
        // The identity point and a point of order 8 give an all-zero X25519 output.
        for low_order in [[0u8; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }] {
            assert!(matches!(
                agree(&private, &low_order),
                Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidPublicKey))
            ));
        }
        assert!(agree(&private, &[9u8; 31]).is_err(), "short key accepted");
    }
}
