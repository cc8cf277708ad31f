//! Pre-shared key files: 32 random bytes in base64, mode 0600, mixed into every handshake
//! (`--psk FILE`, `psk = "FILE"`). Make one with
//! `(umask 077; head -c 32 /dev/urandom | base64 > FILE)`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::config::{invalid, ConfigError};

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
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
        invalid(format!(
            "pre-shared key {} is not base64; make one with: (umask 077; head -c 32 /dev/urandom | base64 > FILE)",
            path.display()
        ))
    })?);
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        invalid(format!(
            "pre-shared key {} must hold exactly 32 bytes",
            path.display()
        ))
    })
}
