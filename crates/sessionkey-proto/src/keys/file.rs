//! Key files: a private key file (mode 0600) and its `.pub` companion.
//!
//! Private key file: one line, `sessionkey-x25519-private BASE64`; lines starting with `#`
//! are comments. Public key file: one line, `sessionkey-x25519 BASE64 comment`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use super::{Identity, PublicKey};
use crate::error::{DisplayPath, KeyFileProblem};
use crate::Error;

const PRIVATE_TYPE: &str = "sessionkey-x25519-private";

fn key_file_error(path: &Path, problem: KeyFileProblem) -> Error {
    Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    }
}

/// The `.pub` path beside a private key path.
fn pub_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Write `identity` to `path` (created with mode 0600, never overwritten) and its public key
/// line to `path.pub`. Returns the `.pub` path.
pub fn write_keypair(path: &Path, identity: &Identity, comment: &str) -> Result<PathBuf, Error> {
    let secret = identity.secret_bytes()?;
    let line = Zeroizing::new(format!(
        "# sessionkey private key; keep it secret (fingerprint {})\n{PRIVATE_TYPE} {}\n",
        identity.public_key().fingerprint(),
        STANDARD.encode(&secret[..])
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        let problem = if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileProblem::Exists
        } else {
            KeyFileProblem::from(e)
        };
        key_file_error(path, problem)
    })?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| key_file_error(path, e.into()))?;

    let public_path = pub_path(path);
    let public_line = format!("{}\n", identity.public_key().to_line(comment));
    fs::write(&public_path, public_line).map_err(|e| key_file_error(&public_path, e.into()))?;
    Ok(public_path)
}

/// Read a private key file. Refuses a file that group or others can read, naming the fix.
pub fn read_private_key(path: &Path) -> Result<Identity, Error> {
    let file = fs::File::open(path).map_err(|e| key_file_error(path, e.into()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| key_file_error(path, e.into()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(key_file_error(
                path,
                KeyFileProblem::TooOpen {
                    mode: mode & 0o7777,
                    path: DisplayPath(path.to_path_buf()),
                },
            ));
        }
    }
    let text = Zeroizing::new(read_bounded(file, path)?);
    let malformed = |why: &str| {
        key_file_error(
            path,
            KeyFileProblem::Malformed(format!(
                "{why}; expected a line `{PRIVATE_TYPE} BASE64` as written by `sessionkey keygen`"
            )),
        )
    };
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if found.is_some() {
            return Err(malformed("more than one key line"));
        }
        let mut words = line.split_whitespace();
        if words.next() != Some(PRIVATE_TYPE) {
            return Err(if line.starts_with(super::PUBLIC_KEY_TYPE) {
                malformed("this is a public key file, not a private key")
            } else {
                malformed("unknown key type")
            });
        }
        let b64 = words
            .next()
            .ok_or_else(|| malformed("no key after the type"))?;
        let bytes = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|_| malformed("invalid base64"))?,
        );
        let bytes: &[u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| malformed("the key is not 32 bytes"))?;
        found = Some(Identity::from_secret_bytes(bytes)?);
    }
    found.ok_or_else(|| malformed("no key line"))
}

/// Read a public key file (`sessionkey-x25519 BASE64 comment`, or bare base64).
pub fn read_public_key(path: &Path) -> Result<PublicKey, Error> {
    let file = fs::File::open(path).map_err(|e| key_file_error(path, e.into()))?;
    let text = read_bounded(file, path)?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    line.parse()
        .map_err(|e: super::identity::ParsePublicKeyError| {
            key_file_error(path, KeyFileProblem::Malformed(e.to_string()))
        })
}

/// Key files are tiny; refuse to read more than this, so a wrong path cannot eat memory.
const MAX_KEY_FILE: u64 = 16 * 1024;

fn read_bounded(file: fs::File, path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            key_file_error(
                path,
                KeyFileProblem::Malformed(format!("not a text key file ({e})")),
            )
        })?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(key_file_error(
            path,
            KeyFileProblem::Malformed(format!("larger than {MAX_KEY_FILE} bytes; not a key file")),
        ));
    }
    Ok(text)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::crypto::SystemRandom;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sessionkey-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("id.key");
        let id = Identity::generate(&mut SystemRandom).unwrap();
        let pub_path = write_keypair(&path, &id, "test").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = read_private_key(&path).unwrap();
        assert_eq!(loaded.public_key(), id.public_key());
        assert_eq!(read_public_key(&pub_path).unwrap(), *id.public_key());
        // Never overwritten.
        let again = write_keypair(&path, &id, "test").unwrap_err();
        assert!(matches!(
            again,
            Error::KeyFile {
                problem: KeyFileProblem::Exists,
                ..
            }
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn group_readable_key_is_refused_with_the_fix() {
        let dir = temp_dir("open");
        let path = dir.join("id.key");
        write_keypair(&path, &Identity::generate(&mut SystemRandom).unwrap(), "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_private_key(&path).unwrap_err().to_string();
        assert!(err.contains("mode 0640"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_and_public_files_are_refused() {
        let dir = temp_dir("garbage");
        for (name, content) in [
            ("empty", "".to_string()),
            ("binary", "\u{0}\u{1}garbage".to_string()),
            ("short", format!("{PRIVATE_TYPE} AAAA\n")),
            (
                "public",
                "sessionkey-x25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".into(),
            ),
        ] {
            let path = dir.join(name);
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = read_private_key(&path).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::KeyFile {
                        problem: KeyFileProblem::Malformed(_),
                        ..
                    }
                ),
                "{name}: {err}"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
