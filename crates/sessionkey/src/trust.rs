//! Who may connect, and whom to connect to: authorized-peers files (the grammar of ssh's
//! `authorized_keys`) and known-peers files (the grammar of ssh's `known_hosts`).
//!
//! ```text
//! # authorized peers: one key a line
//! sessionkey-x25519 m3Lq...= alice@laptop
//! tls-spki-sha256 Qm9i...= bob's client certificate
//!
//! # known peers: host patterns, then the key
//! [203.0.113.5]:7000,vpn.example.com:7000 sessionkey-x25519 k9Xa...= added 2026-11-26
//! [203.0.113.5]:7443 tls-spki-sha256 3fGh...=
//! ```
//!
//! A host may have one key of each type on record: its sessionkey identity and its TLS
//! certificate's public key, as ssh keeps one host key per algorithm.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sessionkey_proto::keys::{Fingerprint, PublicKey, PUBLIC_KEY_TYPE};

mod live;
pub use live::{LivePeers, LiveSession, LiveSessions};

/// The type word of a TLS public-key pin in trust files.
pub const TLS_SPKI_TYPE: &str = "tls-spki-sha256";

/// A key a peer proves it holds: a sessionkey identity, or the public key of a TLS
/// certificate, named by the SHA-256 of its SubjectPublicKeyInfo (RFC 7469's pin-sha256,
/// so a certificate renewed with the same key keeps its pin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A sessionkey X25519 identity.
    Native(PublicKey),
    /// SHA-256 of a certificate's DER SubjectPublicKeyInfo.
    TlsSpki([u8; 32]),
}

impl PeerKey {
    /// What people compare: `SHA256:...`.
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Self::Native(k) => k.fingerprint(),
            Self::TlsSpki(h) => Fingerprint::from_sha256(*h),
        }
    }

    /// The key's line in a trust file: `TYPE BASE64 [comment]`.
    pub fn to_line(&self, comment: &str) -> String {
        match self {
            Self::Native(k) => k.to_line(comment),
            Self::TlsSpki(h) => {
                format!("{TLS_SPKI_TYPE} {} {}", STANDARD.encode(h), comment.trim())
                    .trim_end()
                    .to_string()
            }
        }
    }

    fn same_kind(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (Self::Native(_), Self::Native(_)) | (Self::TlsSpki(_), Self::TlsSpki(_))
        )
    }
}

impl From<PublicKey> for PeerKey {
    fn from(k: PublicKey) -> Self {
        Self::Native(k)
    }
}

/// Why a key did not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ParsePeerKeyError(String);

impl FromStr for PeerKey {
    type Err = ParsePeerKeyError;

    /// `sessionkey-x25519 BASE64`, `tls-spki-sha256 BASE64`, a bare sessionkey key, or a
    /// TLS pin as shown in logs (`SHA256:` and unpadded base64).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let tls = |b64: &str, engine: &dyn Fn(&str) -> Result<Vec<u8>, base64::DecodeError>| {
            engine(b64)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(Self::TlsSpki)
                .ok_or_else(|| {
                    ParsePeerKeyError(format!("{TLS_SPKI_TYPE}: expected 32 bytes in base64"))
                })
        };
        // The type is a word of its own: `tls-spki-sha256BASE64` is not a key.
        let mut words = s.split_whitespace();
        if words.next() == Some(TLS_SPKI_TYPE) {
            let b64 = words.next().unwrap_or_default();
            return tls(b64, &|b| STANDARD.decode(b));
        }
        if let Some(b64) = s.strip_prefix("SHA256:") {
            return tls(b64.trim(), &|b| STANDARD_NO_PAD.decode(b));
        }
        s.parse::<PublicKey>()
            .map(Self::Native)
            .map_err(|e| ParsePeerKeyError(e.to_string()))
    }
}

/// A trust file problem, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not in the file's grammar.
    #[error("{}:{line}: {why}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The server presented a different key than the one on record.
    #[error("{0}")]
    KeyChanged(Box<KeyChanged>),
    /// The server presented another key than the one pinned on the command line.
    #[error(
        "the server presented key {presented}, but --server-key pins {pinned}; if the server's \
         key changed on purpose, pin the new one with --server-key '{line}'"
    )]
    PinMismatch {
        /// The pinned key's fingerprint.
        pinned: String,
        /// The presented key's fingerprint.
        presented: String,
        /// The presented key's line.
        line: String,
    },
    /// The server's key is not on record and learning it was not allowed.
    #[error(
        "the server {host} presented key {fingerprint}, which is not in {}; \
         if you trust it, run again with --accept-new, or add it with:\n  echo '{host} {line}' >> {}",
        path.display(),
        path.display()
    )]
    UnknownHost {
        /// The host as written in the file.
        host: String,
        /// The presented key's fingerprint.
        fingerprint: String,
        /// The key line to add.
        line: String,
        /// The known-peers file.
        path: PathBuf,
    },
}

/// A changed server key: what ssh prints, with the command that removes the old entry.
#[derive(Debug, Clone)]
pub struct KeyChanged {
    host: String,
    fingerprint: String,
    path: PathBuf,
    line: usize,
}

impl fmt::Display for KeyChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bar = "@".repeat(59);
        writeln!(f, "{bar}")?;
        writeln!(
            f,
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @"
        )?;
        writeln!(f, "{bar}")?;
        writeln!(f, "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!")?;
        writeln!(
            f,
            "Someone could be eavesdropping on you right now (man-in-the-middle attack)!"
        )?;
        writeln!(
            f,
            "It is also possible that the server's key has just been changed."
        )?;
        writeln!(
            f,
            "The fingerprint for the sessionkey key sent by {} is",
            self.host
        )?;
        writeln!(f, "{}.", self.fingerprint)?;
        writeln!(f, "Please contact your system administrator.")?;
        writeln!(f, "Offending key in {}:{}", self.path.display(), self.line)?;
        writeln!(
            f,
            "  remove it with: sed -i '{}d' {}",
            self.line,
            self.path.display()
        )?;
        write!(f, "Host key verification failed.")
    }
}

impl TrustError {
    /// A copy, for an error that must be reported from behind a shared reference (a TLS
    /// verifier's). An I/O cause keeps its kind and message.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Io { path, source } => Self::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Self::Syntax { path, line, why } => Self::Syntax {
                path: path.clone(),
                line: *line,
                why: why.clone(),
            },
            Self::KeyChanged(k) => Self::KeyChanged(k.clone()),
            Self::PinMismatch {
                pinned,
                presented,
                line,
            } => Self::PinMismatch {
                pinned: pinned.clone(),
                presented: presented.clone(),
                line: line.clone(),
            },
            Self::UnknownHost {
                host,
                fingerprint,
                line,
                path,
            } => Self::UnknownHost {
                host: host.clone(),
                fingerprint: fingerprint.clone(),
                line: line.clone(),
                path: path.clone(),
            },
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> TrustError {
    TrustError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lines that carry content: (1-based number, trimmed text).
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// The keys allowed to connect to a server.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedPeers {
    keys: Vec<(PeerKey, String)>,
}

impl AuthorizedPeers {
    /// Parse an authorized-peers file: `sessionkey-x25519 BASE64 [comment]` or
    /// `tls-spki-sha256 BASE64 [comment]` a line.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        Self::parse(path, &text)
    }

    /// Parse `text`, the contents of the authorized-peers file `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, TrustError> {
        let mut keys = Vec::new();
        for (line, content) in content_lines(text) {
            let syntax = |why: String| TrustError::Syntax {
                path: path.to_path_buf(),
                line,
                why,
            };
            if !content.starts_with(PUBLIC_KEY_TYPE) && !content.starts_with(TLS_SPKI_TYPE) {
                return Err(syntax(format!(
                    "expected `{PUBLIC_KEY_TYPE} BASE64 [comment]` or `{TLS_SPKI_TYPE} BASE64 \
                     [comment]` (options are not supported)"
                )));
            }
            let key: PeerKey = content.parse().map_err(|e| syntax(format!("{e}")))?;
            let comment = content
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ");
            keys.push((key, comment));
        }
        Ok(Self { keys })
    }

    /// Add keys given on the command line.
    pub fn allow(&mut self, key: PeerKey) {
        self.keys.push((key, String::from("--allow")));
    }

    /// The keys in file order (then those given with [`allow`](Self::allow)), each with its
    /// comment: the words after the key, joined by single spaces.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerKey, &str)> {
        self.keys.iter().map(|(k, c)| (k, c.as_str()))
    }

    /// Whether `key` may connect.
    pub fn contains(&self, key: &PeerKey) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }

    /// Number of sessionkey identities.
    pub fn native_keys(&self) -> usize {
        self.keys
            .iter()
            .filter(|(k, _)| matches!(k, PeerKey::Native(_)))
            .count()
    }

    /// Number of TLS certificate keys.
    pub fn tls_keys(&self) -> usize {
        self.len() - self.native_keys()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is allowed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &PeerKey> {
        self.keys.iter().map(|(k, _)| k)
    }
}

/// The host string written to known-peers files for an address: `[host]:port`, as ssh
/// writes hosts on ports other than 22.
pub fn host_pattern(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.starts_with('[') => format!("[{host}]:{port}"),
        _ => addr.to_string(),
    }
}

/// The outcome of checking a server key against a known-peers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// On record and matching.
    Known,
    /// Not on record; it was added (trust on first use, `--accept-new`).
    Learned,
}

/// A known-peers file: server keys learned or given, by host.
#[derive(Debug, Clone)]
pub struct KnownPeers {
    path: PathBuf,
}

impl KnownPeers {
    /// Use `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The key of `kind`'s type on record for `host`, with its line number.
    pub fn lookup(
        &self,
        host: &str,
        kind: &PeerKey,
    ) -> Result<Option<(PeerKey, usize)>, TrustError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&self.path, e)),
        };
        self.lookup_in(&text, host, kind)
    }

    /// As [`lookup`](Self::lookup), in `text`, the file's contents.
    pub fn lookup_in(
        &self,
        text: &str,
        host: &str,
        kind: &PeerKey,
    ) -> Result<Option<(PeerKey, usize)>, TrustError> {
        let pattern = host_pattern(host);
        for (line, content) in content_lines(text) {
            let syntax = |why: String| TrustError::Syntax {
                path: self.path.clone(),
                line,
                why,
            };
            let (hosts, key) = content
                .split_once(char::is_whitespace)
                .ok_or_else(|| syntax("expected `HOSTS sessionkey-x25519 BASE64`".into()))?;
            if hosts.split(',').any(|h| h == pattern || h == host) {
                let key: PeerKey = key.trim().parse().map_err(|e| syntax(format!("{e}")))?;
                if key.same_kind(kind) {
                    return Ok(Some((key, line)));
                }
            }
        }
        Ok(None)
    }

    /// Check the key `host` presented without changing the file: `Ok` if it is on record,
    /// [`TrustError::UnknownHost`] if no key of its type is, [`TrustError::KeyChanged`] if
    /// another is.
    pub fn verify_only(&self, host: &str, key: &PeerKey) -> Result<(), TrustError> {
        self.judge(self.lookup(host, key)?, host, key)
    }

    fn judge(
        &self,
        found: Option<(PeerKey, usize)>,
        host: &str,
        key: &PeerKey,
    ) -> Result<(), TrustError> {
        match found {
            Some((known, _)) if known == *key => Ok(()),
            Some((_, line)) => Err(TrustError::KeyChanged(Box::new(KeyChanged {
                host: host_pattern(host),
                fingerprint: key.fingerprint().to_string(),
                path: self.path.clone(),
                line,
            }))),
            None => Err(TrustError::UnknownHost {
                host: host_pattern(host),
                fingerprint: key.fingerprint().to_string(),
                line: key.to_line(""),
                path: self.path.clone(),
            }),
        }
    }

    /// Check the key `host` presented: accept it if on record; learn it if new and
    /// `accept_new`; refuse a changed key with ssh's warning.
    ///
    /// Learning holds an exclusive lock on the file (`flock`) and reads it again under
    /// the lock before appending, so that of two first connections at once to two different
    /// servers behind one name, one key is learned and the other connection is refused as
    /// a changed key (other `sessionkey` processes take the same lock).
    pub fn verify(
        &self,
        host: &str,
        key: &PeerKey,
        accept_new: bool,
    ) -> Result<HostKey, TrustError> {
        match self.verify_only(host, key) {
            Ok(()) => Ok(HostKey::Known),
            Err(TrustError::UnknownHost { .. }) if accept_new => self.learn(host, key),
            Err(e) => Err(e),
        }
    }

    fn learn(&self, host: &str, key: &PeerKey) -> Result<HostKey, TrustError> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, e))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(&self.path, errno.into()))?;
        let mut text = String::new();
        file.rewind()
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|e| io_err(&self.path, e))?;
        match self.judge(self.lookup_in(&text, host, key)?, host, key) {
            // Another connection learned this very key in the meantime.
            Ok(()) => return Ok(HostKey::Known),
            Err(TrustError::UnknownHost { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut line = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            line.push('\n');
        }
        line.push_str(&format!("{} {}\n", host_pattern(host), key.to_line("")));
        file.write_all(line.as_bytes())
            .map_err(|e| io_err(&self.path, e))?;
        // The lock is released when `file` is dropped.
        Ok(HostKey::Learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PeerKey {
        PeerKey::Native(PublicKey::from_bytes([b; 32]))
    }

    #[test]
    fn known_peers_learn_then_refuse_a_change() {
        let dir = std::env::temp_dir().join(format!("sk-trust-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_peers");
        let kp = KnownPeers::new(&path);
        assert!(matches!(
            kp.verify("127.0.0.1:7000", &key(1), false),
            Err(TrustError::UnknownHost { .. })
        ));
        assert_eq!(
            kp.verify("127.0.0.1:7000", &key(1), true).unwrap(),
            HostKey::Learned
        );
        assert_eq!(
            kp.verify("127.0.0.1:7000", &key(1), false).unwrap(),
            HostKey::Known
        );
        let err = kp
            .verify("127.0.0.1:7000", &key(2), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{err}"
        );
        assert!(err.contains(&key(2).fingerprint().to_string()), "{err}");
        assert!(
            err.contains(&format!("sed -i '1d' {}", path.display())),
            "{err}"
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("[127.0.0.1]:7000 sessionkey-x25519 "),
            "{text}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// Two first connections at once to two servers behind one name (in threads here; in
    /// processes the lock is the same): one key is learned, the other refused as changed,
    /// and the file holds one line.
    #[test]
    fn concurrent_first_use_learns_one_key() {
        let dir = std::env::temp_dir().join(format!("sk-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for round in 0..50u8 {
            let path = dir.join(format!("known_peers.{round}"));
            let threads = 6u8;
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads.into()));
            let results: Vec<_> = (0..threads)
                .map(|i| {
                    let path = path.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let kp = KnownPeers::new(path);
                        barrier.wait();
                        kp.verify("server.example:7000", &key(10 + i), true)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let learned = results
                .iter()
                .filter(|r| matches!(r, Ok(HostKey::Learned)))
                .count();
            let changed = results
                .iter()
                .filter(|r| matches!(r, Err(TrustError::KeyChanged(_))))
                .count();
            let text = fs::read_to_string(&path).unwrap();
            assert_eq!(
                (learned, changed, text.lines().count()),
                (1, usize::from(threads) - 1, 1),
                "round {round}: {results:?}\n{text}"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// Found by the `trust_files` fuzz target's grammar property (an accepted line spells
    /// `TYPE BASE64 [comment]` word for word): the TLS type word glued to its key was read as
    /// that key, and the comment lost its first word.
    #[test]
    fn a_type_word_glued_to_its_key_is_refused() {
        let tls = PeerKey::TlsSpki([0x32; 32]);
        let line = tls.to_line("bob");
        let glued = line.replacen(' ', "", 1);
        assert_eq!(line.parse::<PeerKey>().unwrap(), tls);
        assert!(glued.parse::<PeerKey>().is_err(), "{glued}");
        let path = Path::new("authorized_peers");
        let err = AuthorizedPeers::parse(path, &format!("{line}\n{glued}\n")).unwrap_err();
        assert!(matches!(err, TrustError::Syntax { line: 2, .. }), "{err}");
        let known = KnownPeers::new("known_peers");
        let text = format!("[203.0.113.5]:7000 {glued}\n");
        assert!(known.lookup_in(&text, "203.0.113.5:7000", &tls).is_err());
    }

    #[test]
    fn authorized_peers_grammar() {
        let dir = std::env::temp_dir().join(format!("sk-auth-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("authorized_peers");
        fs::write(
            &path,
            format!(
                "# team\n\n{}\n  {} bob\n",
                key(3).to_line("alice"),
                key(4).to_line("")
            ),
        )
        .unwrap();
        let ap = AuthorizedPeers::load(&path).unwrap();
        assert!(ap.contains(&key(3)) && ap.contains(&key(4)) && !ap.contains(&key(5)));
        fs::write(&path, "no-agent-forwarding sessionkey-x25519 AAAA\n").unwrap();
        let err = AuthorizedPeers::load(&path).unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
