//! `--keylog FILE`: TLS secrets in the NSS key log format, written only when asked for.
//! (`SSLKEYLOGFILE` in the environment is never read.)

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::TlsError;

/// Appends `LABEL CLIENT_RANDOM SECRET` lines (hex) to a file of mode 0600, as Wireshark
/// reads them.
pub struct KeyLogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl KeyLogFile {
    /// Open (or create, mode 0600) `path` for appending. Refused: a symbolic link (the
    /// secrets would go wherever it points), anything but a regular file, and a file that
    /// group or others may read.
    pub fn open(path: &Path) -> Result<Self, TlsError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |source| TlsError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_symlink() {
                return Err(TlsError::Config(format!(
                    "--keylog {} is a symbolic link; give the real file, or a new name",
                    path.display()
                )));
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            // No symbolic link even if one appears after the check above.
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ELOOP) => TlsError::Config(format!(
                    "--keylog {} is a symbolic link; give the real file, or a new name",
                    path.display()
                )),
                _ => io(e),
            })?;
        // Checked on the open file, so that what was checked is what is written.
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(TlsError::Config(format!(
                "--keylog {} is not a regular file",
                path.display()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TlsError::Config(format!(
                "--keylog {} may be read by group or others, and it would hold session \
                 secrets; fix it with: chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }
}

impl std::fmt::Debug for KeyLogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyLogFile({})", self.path.display())
    }
}

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let mut line =
            String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
        line.push_str(label);
        for part in [client_random, secret] {
            line.push(' ');
            for b in part {
                let _ = write!(line, "{b:02x}");
            }
        }
        line.push('\n');
        if let Ok(mut f) = self.file.lock() {
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!(file = %self.path.display(), "cannot write the TLS key log: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn refuses_readable_files_and_symlinks_and_creates_0600() {
        let dir = std::env::temp_dir().join(format!("sk-keylog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let new = dir.join("new.log");
        KeyLogFile::open(&new).unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "created with mode {mode:o}");

        let readable = dir.join("readable.log");
        std::fs::write(&readable, "").unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyLogFile::open(&readable).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");

        let link = dir.join("link.log");
        std::os::unix::fs::symlink(&new, &link).unwrap();
        let err = KeyLogFile::open(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A dangling link (to a file it would create) is refused too.
        let dangling = dir.join("dangling.log");
        std::os::unix::fs::symlink(dir.join("elsewhere.log"), &dangling).unwrap();
        let err = KeyLogFile::open(&dangling).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!dir.join("elsewhere.log").exists());

        std::fs::remove_dir_all(dir).unwrap();
    }
}
