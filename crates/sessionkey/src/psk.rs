//! Pre-shared key files (docs/CONFIG.md, docs/VPN.md): 32 random bytes in standard base64,
//! readable by their owner only. The readers (tunnels, `vpn up`, `check`) check the file's
//! mode themselves and word their own messages; the text is read here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

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
