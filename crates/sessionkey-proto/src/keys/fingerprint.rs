//! Fingerprints: what people see instead of keys.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

use crate::crypto::hash::sha256;

/// A SHA-256 fingerprint, shown as ssh shows key fingerprints: `SHA256:` and unpadded base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a public key's 32 bytes.
    pub(crate) fn of_public_key(key: &[u8; 32]) -> Self {
        Self(sha256(&[key]))
    }

    /// A session's fingerprint, from its Noise handshake hash. Both peers compute the same
    /// value; it is also the channel-binding value (docs/PROTOCOL.md, "Session fingerprint").
    pub(crate) fn of_session(handshake_hash: &[u8]) -> Self {
        Self(sha256(&[
            b"sessionkey v1 session fingerprint",
            handshake_hash,
        ]))
    }

    /// A fingerprint of a traffic secret, safe to show: a one-way hash under its own label,
    /// so people can see that every epoch's key differs without learning anything of it.
    pub(crate) fn of_secret(secret: &[u8; 32]) -> Self {
        Self(sha256(&[b"sessionkey v1 key fingerprint", secret]))
    }

    /// A SHA-256 value computed elsewhere, shown as a fingerprint: a TLS certificate's
    /// public-key hash, or a TLS session's exporter value (RFC 8446 7.5).
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self(hash)
    }

    /// The fingerprint of a messaging identity (its typed signing and X25519 identity key
    /// encodings), under its own label (docs/MESSAGING.md, "Identity").
    pub(crate) fn of_msg_identity(encoded_keys: &[u8]) -> Self {
        Self(sha256(&[
            b"sessionkey v1 msg identity fingerprint",
            encoded_keys,
        ]))
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short form for tables and logs: `SHA256:` and the first 11 base64 characters (66 bits).
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[..7 + 11].to_string()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_format() {
        // SHA-256 of 32 zero bytes, in ssh's unpadded base64.
        let fp = Fingerprint::of_public_key(&[0; 32]);
        assert_eq!(
            fp.to_string(),
            "SHA256:Zmh6rfhivXdsj8GLjp+OIAiXFIVu4jOzkCpZHQ1fKSU"
        );
        assert_eq!(fp.short(), "SHA256:Zmh6rfhivXd");
    }
}
