//! Pre-shared key files (docs/CONFIG.md, docs/VPN.md): 32 random bytes in standard base64,
//! mode 0600, mixed into every handshake (`--psk FILE`, `psk = "FILE"`). Make one with
//! `(umask 077; head -c 32 /dev/urandom | base64 > FILE)`. [`read`] reads a tunnel's file;
//! [`decode`] reads the text alone (the VPN config and `check` check the mode themselves and
//! word their own messages).

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::config::{invalid, ConfigError};

/// Why a pre-shared key file's text holds no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PskTextError {
    /// The text is not standard base64 (with its padding).
    #[error("not base64")]
    NotBase64,
    /// The text is base64 of this many bytes, not 32.
    #[error("{0} bytes, not 32")]
    Length(usize),
}

/// The key in a pre-shared key file's text: standard base64 of exactly 32 bytes, with
/// whitespace around it (the newline `base64` writes) ignored.
pub fn decode(text: &str) -> Result<Zeroizing<[u8; 32]>, PskTextError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| PskTextError::NotBase64)?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(PskTextError::Length(bytes.len()));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Read a pre-shared key file: private to its owner, base64, exactly 32 bytes.
pub fn read(path: &Path) -> Result<[u8; 32], ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let read_err = |source| ConfigError::Read {
        what: format!("pre-shared key {}", path.display()),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(format!(
            "pre-shared key {} is readable by group or others; fix it with: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    match decode(&text) {
        Ok(key) => Ok(*key),
        Err(PskTextError::NotBase64) => Err(invalid(format!(
            "pre-shared key {} is not base64; make one with: (umask 077; head -c 32 /dev/urandom | base64 > FILE)",
            path.display()
        ))),
        Err(PskTextError::Length(_)) => Err(invalid(format!(
            "pre-shared key {} must hold exactly 32 bytes",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_one_spelling() {
        let text = format!("{}\n", STANDARD.encode([7u8; 32]));
        assert_eq!(*decode(&text).unwrap(), [7u8; 32]);
        assert_eq!(decode("AAAA"), Err(PskTextError::Length(3)));
        assert_eq!(decode("not base64!"), Err(PskTextError::NotBase64));
        // The same bytes with non-zero trailing bits in the last character: refused, so that
        // a key has one spelling.
        let mut odd = STANDARD.encode([7u8; 32]);
        odd.replace_range(42..43, "d");
        assert_eq!(decode(&odd), Err(PskTextError::NotBase64));
    }
}
