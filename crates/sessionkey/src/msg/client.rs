//! The messaging client: one device's identity, sessions and contacts, kept encrypted in
//! the [`Store`], talking to one relay through [`RelayClient`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hyper::Method;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use zeroize::{Zeroize, Zeroizing};

use super::api::{
    self, Ack, BundleResponse, DeviceStatus, Inbox, RegisterRequest, RetirePrekeys, UploadPrekeys,
    B64,
};
use super::payload::{
    decode_chunk, encode_chunk, encode_text, pad, safe_file_name, unpad, FileChunk,
    PAYLOAD_FILE_CHUNK, PAYLOAD_TEXT,
};
use super::relay::{RelayClient, RelayError};
use super::store::{Store, StoreError, Txn};
use crate::proto::crypto::{SecureRandom, SystemRandom};
use crate::proto::keys::{read_private_key, write_keypair, Identity};
use crate::proto::msg::{
    Address, Device, Envelope, IdentityKey, MsgError, PrekeyBundle, PrekeyId, PrekeyKind, Session,
    Timestamp, Trust,
};
use crate::proto::suite::Suite;
use crate::tls::{TlsClient, TlsClientOptions, TlsTrust};
use crate::trust::{KnownPeers, PeerKey};

/// One-time prekeys of each kind made and uploaded at a time.
pub const PREKEY_BATCH: usize = 50;
/// Replenish when the relay holds fewer one-time prekeys of a kind than this.
pub const PREKEY_LOW_WATER: u64 = 20;
/// File data per message: a chunk with its header and the longest name fits the 64 KiB
/// padding bucket (docs/MESSAGING.md, "Padding").
pub const FILE_CHUNK: usize = 64 * 1024 - 512;
/// The signed prekey and the last-resort ML-KEM prekey are replaced this often (7 days).
pub const PREKEY_ROTATION_SECS: u64 = 7 * 24 * 60 * 60;
/// A replaced signed or last-resort prekey is kept this long after its replacement was due
/// (30 days: a setup message may wait on the relay that long), then erased.
pub const PREKEY_GRACE_SECS: u64 = api::MESSAGE_EXPIRY_SECS;
/// One-time prekeys still unused this long after their upload (60 days) are retired: deleted
/// from the relay, their secrets erased, and replaced.
pub const ONE_TIME_PREKEY_RETENTION_SECS: u64 = 2 * api::MESSAGE_EXPIRY_SECS;
/// The store's record of prekey uploads: (Unix seconds, last one-time id, last KEM id).
const PREKEY_BATCHES: &str = "prekey_batches";
/// How long a command waits for another process using the same state directory.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);
/// Messages of one contact set aside while its changed identity waits for `msg verify`;
/// more are dropped (and reported).
pub const MAX_HELD_PER_SENDER: usize = 1000;
/// Sessions kept per contact (the most recently used); older ones are deleted.
pub const MAX_SESSIONS_PER_CONTACT: usize = 20;
/// The environment variable naming a failpoint: the process aborts there (tests inject
/// crashes with it: `before-store`, `after-store`, `after-show`).
pub const FAILPOINT_ENV: &str = "SESSIONKEY_FAILPOINT";

/// A messaging client failure; each says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No state in the directory yet.
    #[error("no messaging identity in {0}; run `sessionkey msg init --relay HOST:PORT` first (or pass --state DIR)")]
    NotInitialized(PathBuf),
    /// `init` found one already.
    #[error(
        "a messaging identity already exists in {0}; use another --state DIR for another identity"
    )]
    AlreadyInitialized(PathBuf),
    /// A peer's identity is not the one on record.
    #[error("{name}'s identity key changed (new fingerprint {fingerprint}); messages to and from {name} are refused until you compare safety numbers and run `sessionkey msg verify {name} --accept`")]
    IdentityChanged {
        /// The contact.
        name: String,
        /// The new identity's fingerprint.
        fingerprint: String,
    },
    /// No such contact.
    #[error("no contact named {0:?}; contacts appear after the first message sent or received")]
    UnknownContact(String),
    /// A name or relay address is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The relay failed or refused.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The messaging core refused.
    #[error("messaging: {0}")]
    Msg(#[from] MsgError),
    /// The key file.
    #[error(transparent)]
    KeyFile(#[from] crate::proto::Error),
    /// State on disk others could read or write.
    #[error("{path} is mode {mode:04o}: other users could read or change the messaging state; run `chmod {want:o} {path}`")]
    Permissions {
        /// The directory or file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// The mode it should have (0700 for directories, 0600 for files).
        want: u32,
    },
    /// Another process holds the state directory.
    #[error("another sessionkey process is using {dir} (waited {waited_secs} s for it); run one command at a time per --state directory, or try again when it is done")]
    Busy {
        /// The state directory.
        dir: PathBuf,
        /// How long this one waited.
        waited_secs: u64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the relay is and how it is recognised.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    relay: String,
    name: String,
    relay_pin: String,
}

/// What the client knows of one contact.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContactRecord {
    identity: B64,
    verified: bool,
    pending: Option<B64>,
    first_seen: u64,
}

/// A contact as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ContactInfo {
    /// The name on the relay.
    pub name: String,
    /// The identity fingerprint on record.
    pub fingerprint: String,
    /// Whether its safety number was accepted with `msg verify --accept`.
    pub verified: bool,
    /// The fingerprint of a changed identity that waits for `msg verify`, if any.
    pub changed_to: Option<String>,
    /// Sessions held with it.
    pub sessions: usize,
}

/// The result of `msg verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The contact.
    pub name: String,
    /// Sixty digits in twelve groups; both people see the same.
    pub safety_number: String,
    /// This device's fingerprint.
    pub own_fingerprint: String,
    /// The contact's fingerprint (the changed one if a change waits).
    pub their_fingerprint: String,
    /// Whether the number shown is for a changed identity not yet accepted.
    pub changed: bool,
    /// Whether the contact is now marked verified.
    pub verified: bool,
}

/// Something that happened while receiving.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Received {
    /// A text message.
    Text {
        /// The sender.
        from: String,
        /// When the relay accepted it, Unix seconds.
        sent: i64,
        /// The text.
        text: String,
    },
    /// A whole file arrived.
    File {
        /// The sender.
        from: String,
        /// The name the sender gave.
        name: String,
        /// Where it was written.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
    },
    /// A message was dropped (forged, corrupted, duplicated or undecryptable).
    Dropped {
        /// The claimed sender.
        from: String,
        /// Why.
        reason: String,
    },
    /// A contact's identity changed: its messages are set aside until `msg verify --accept`.
    IdentityChanged {
        /// The contact.
        from: String,
        /// The new fingerprint.
        fingerprint: String,
    },
    /// Messages of a contact that can no longer be decrypted when they arrive: their keys
    /// were dropped (too far out of order) or expired.
    Undecryptable {
        /// The contact.
        from: String,
        /// How many.
        count: u32,
        /// Why.
        reason: String,
    },
}

/// A message as the relay delivered it (and as it is set aside).
#[derive(Serialize, Deserialize)]
struct Incoming {
    relay_id: i64,
    sender: String,
    sent: i64,
    body: B64,
}

/// What waits in the inbox to be shown: a decrypted payload or a notice.
#[derive(Serialize, Deserialize)]
enum InboxItem {
    Payload {
        from: String,
        sent: i64,
        payload: B64,
    },
    Notice(Received),
}

/// What decrypting an envelope gave.
enum Opened {
    /// The plaintext, and the skipped keys the session dropped: (evicted, expired).
    Plain(Zeroizing<Vec<u8>>, (u32, u32)),
    /// The sender's identity changed; the message waits for `msg verify --accept`.
    Pending,
}

/// What handling a message did.
enum TakenIn {
    /// Stored in the inbox (or dropped with a notice there).
    Done,
    /// Set aside: its sender's identity changed.
    Held,
    /// A message set aside earlier is still waiting.
    StillHeld,
}

/// Abort the process here if `SESSIONKEY_FAILPOINT` names this point (crash tests).
fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        tracing::warn!(failpoint = name, "aborting at a failpoint");
        std::process::abort();
    }
}

/// The exclusive lock of a state directory (`flock` on `DIR/lock`), held while a command
/// reads or changes the store; released when dropped.
struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// Take `dir`'s lock, waiting up to `wait` for another process to release it (in a blocking
/// `flock` on a worker thread, so the kernel hands the lock over as soon as it is free).
async fn lock_state(dir: &Path, wait: Duration) -> Result<StateLock, ClientError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    let os_err = |e: nix::errno::Errno| io_err(&path)(io::Error::from_raw_os_error(e as i32));
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(StateLock { _file: lock }),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => f,
        Err((_, e)) => return Err(os_err(e)),
    };
    tracing::info!(dir = %dir.display(), "waiting for another sessionkey process on this state directory");
    // If the wait times out, the thread still takes the lock when it comes free and drops
    // it at once (the task's output is dropped with its abandoned handle).
    let waiter = tokio::task::spawn_blocking(move || {
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)
    });
    match tokio::time::timeout(wait, waiter).await {
        Ok(Ok(Ok(lock))) => Ok(StateLock { _file: lock }),
        Ok(Ok(Err(e))) => Err(os_err(e)),
        Ok(Err(e)) => Err(io_err(&path)(io::Error::other(e))),
        Err(_) => Err(ClientError::Busy {
            dir: dir.to_path_buf(),
            waited_secs: wait.as_secs(),
        }),
    }
}

/// Link `part` into `dir` under `name` (or `name.1`, `name.2`, ... if taken), never replacing
/// an existing file; a name already linked to `part` (a crash after linking) is reused.
fn link_new_name(part: &Path, dir: &Path, name: &str) -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::MetadataExt;
    let source = std::fs::metadata(part).map_err(io_err(part))?;
    for n in 0u32.. {
        let dest = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}.{n}"))
        };
        match std::fs::hard_link(part, &dest) {
            Ok(()) => return Ok(dest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if let Ok(m) = std::fs::symlink_metadata(&dest) {
                    if m.dev() == source.dev() && m.ino() == source.ino() {
                        return Ok(dest);
                    }
                }
            }
            Err(e) => return Err(io_err(&dest)(e)),
        }
    }
    Err(ClientError::Invalid("no free file name".into()))
}

/// What `init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// This device's name on the relay.
    pub name: String,
    /// The relay's address.
    pub relay: String,
    /// The relay certificate's pin.
    pub relay_pin: String,
    /// This device's identity fingerprint.
    pub fingerprint: String,
    /// The key file guarding the store.
    pub key_file: PathBuf,
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn now_i64() -> i64 {
    i64::try_from(now().unix_secs()).unwrap_or(i64::MAX)
}

/// Paths inside a messaging state directory.
fn key_path(dir: &Path) -> PathBuf {
    dir.join("key")
}
fn store_path(dir: &Path) -> PathBuf {
    dir.join("store.db")
}

/// Create `dir` (and missing parents) as 0700; an existing one is left as it is (and
/// checked by [`check_private`]).
fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Create `path` empty as 0600 if it does not exist, so that what is written to it later
/// (SQLite, received files) is never readable by others, whatever the umask.
fn create_private_file(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Refuse state others can read or write: directories must be 0700 (or stricter), files
/// 0600, as the key file is (`read_private_key`).
fn check_private(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ClientError::Permissions {
            path: path.to_path_buf(),
            mode,
            want: if meta.is_dir() { 0o700 } else { 0o600 },
        });
    }
    Ok(())
}

/// `host:port` from `https://host:port[/]`, `host:port`.
pub fn relay_addr(url: &str) -> Result<String, ClientError> {
    let rest = url
        .strip_prefix("https://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if url.starts_with("http://") {
        return Err(ClientError::Invalid(format!(
            "{url}: the relay speaks TLS only; give https://HOST:PORT or HOST:PORT"
        )));
    }
    let ok = rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        && !rest.contains('/');
    if !ok {
        return Err(ClientError::Invalid(format!(
            "{url}: give the relay as https://HOST:PORT or HOST:PORT"
        )));
    }
    Ok(rest.to_string())
}

/// A safety number for two identities: per side 30 digits from 5,200 rounds of SHA-512 over
/// the identity's keys and name (as Signal's numeric fingerprint), the two halves in sorted
/// order, shown as twelve groups of five digits.
pub fn safety_number(a_name: &str, a: &IdentityKey, b_name: &str, b: &IdentityKey) -> String {
    fn half(name: &str, id: &IdentityKey) -> String {
        use aws_lc_rs::digest::{digest, SHA512};
        let keys = &id.to_bytes()[..66];
        let mut h = digest(&SHA512, &[&[0u8, 0][..], keys, name.as_bytes()].concat());
        for _ in 0..5200 {
            h = digest(&SHA512, &[h.as_ref(), keys].concat());
        }
        let bytes = h.as_ref();
        (0..6)
            .map(|i| {
                let chunk = &bytes[i * 5..i * 5 + 5];
                let n = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                format!("{:05}", n % 100_000)
            })
            .collect()
    }
    let (x, y) = (half(a_name, a), half(b_name, b));
    let (first, second) = if x <= y { (x, y) } else { (y, x) };
    let digits = first + &second;
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How [`Received::Dropped`] names a sender whose name from the relay is not valid.
pub const INVALID_SENDER: &str = "(invalid sender name)";

/// `DIR/files/SENDER`, built only from a name that passes [`api::valid_name`] and is one
/// normal path component: a name from the network never chooses where a file goes.
fn sender_dir(dir: &Path, from: &str) -> Result<PathBuf, ClientError> {
    let mut parts = Path::new(from).components();
    let one_normal = matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    );
    if !api::valid_name(from) || !one_normal {
        return Err(ClientError::Invalid(format!(
            "{from:?} is not a valid sender name"
        )));
    }
    Ok(dir.join("files").join(from))
}

#[derive(Debug, Serialize, Deserialize)]
struct TransferState {
    next: u32,
    written: u64,
}

/// One device's messaging client.
pub struct Messenger {
    dir: PathBuf,
    lock_wait: Duration,
    store: Store,
    device: Device,
    config: Config,
    relay: RelayClient,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("name", &self.config.name)
            .field("relay", &self.config.relay)
            .field("identity", self.device.identity())
            .finish_non_exhaustive()
    }
}

impl Messenger {
    /// Create the state in `dir`: a key file (0600), the encrypted store, a device with its
    /// prekeys; pin the relay's certificate on first use (or check `relay_pin`), register
    /// `name` and upload the prekeys.
    ///
    /// Atomic: the state is built in a temporary directory beside `dir` and renamed to `dir`
    /// only when everything succeeded, so a failed init (relay down, name taken) leaves
    /// nothing that blocks the retry. A `dir` without a key or store (what an older failed
    /// init left) is replaced.
    pub async fn init(
        dir: &Path,
        relay_url: &str,
        name: &str,
        relay_pin: Option<PeerKey>,
    ) -> Result<InitReport, ClientError> {
        if store_path(dir).exists() || key_path(dir).exists() {
            return Err(ClientError::AlreadyInitialized(dir.to_path_buf()));
        }
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let leaf = dir
            .file_name()
            .map_or("msg".into(), |n| n.to_string_lossy());
        let tmp = parent.join(format!(".{leaf}.init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = Self::init_in(&tmp, relay_url, name, relay_pin).await;
        let mut report = match result {
            Ok(report) => report,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        report.key_file = key_path(dir);
        Ok(report)
    }

    async fn init_in(
        dir: &Path,
        relay_url: &str,
        name: &str,
        relay_pin: Option<PeerKey>,
    ) -> Result<InitReport, ClientError> {
        if !api::valid_name(name) {
            return Err(ClientError::Invalid(format!(
                "{name:?} is not a valid name: 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit"
            )));
        }
        let addr = relay_addr(relay_url)?;
        if store_path(dir).exists() || key_path(dir).exists() {
            return Err(ClientError::AlreadyInitialized(dir.to_path_buf()));
        }
        create_private_dir(dir)?;
        check_private(dir)?;
        let _lock = lock_state(dir, LOCK_WAIT).await?;
        if store_path(dir).exists() || key_path(dir).exists() {
            return Err(ClientError::AlreadyInitialized(dir.to_path_buf()));
        }
        // Learn (or check) the relay's certificate before anything is written.
        let (trust, learned) = match relay_pin {
            Some(pin) => (TlsTrust::Pinned(pin), false),
            None => (
                TlsTrust::KnownPeers {
                    file: KnownPeers::new(dir.join("known_peers")),
                    accept_new: true,
                },
                true,
            ),
        };
        let probe = RelayClient::new(
            addr.clone(),
            TlsClient::new(TlsClientOptions::new(addr.clone(), trust))
                .map_err(|e| ClientError::Invalid(e.to_string()))?,
        );
        let stream = probe.connect_tls().await?;
        let pin = match (relay_pin, stream.info().peer) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(
                    RelayError::Protocol("the relay presented no certificate".into()).into(),
                )
            }
        };
        drop(stream);
        if learned {
            tracing::info!(relay = %addr, pin = %pin.fingerprint(), "pinned the relay's certificate on first use");
        }
        let rng = &mut SystemRandom;
        let key_file = Identity::generate(rng)?;
        write_keypair(&key_path(dir), &key_file, "sessionkey msg store key")?;
        create_private_file(&store_path(dir))?;
        let store = Store::open(&store_path(dir), &key_file).await?;
        let t = now();
        let mut device = Device::generate(rng)?;
        device.new_signed_prekey(t, rng)?;
        device.new_last_resort_kem_prekey(t)?;
        let config = Config {
            relay: addr.clone(),
            name: name.to_string(),
            relay_pin: pin.to_line(""),
        };
        store
            .set_meta(
                "config",
                &serde_json::to_vec(&config).map_err(|e| ClientError::Invalid(e.to_string()))?,
            )
            .await?;
        store.set_meta("device", &device.to_bytes()?).await?;
        let relay = Self::relay_client(&config)?;
        let mut me = Self {
            dir: dir.to_path_buf(),
            lock_wait: LOCK_WAIT,
            store,
            device,
            config,
            relay,
        };
        me.register().await?;
        me.replenish_locked(true, t).await?;
        Ok(InitReport {
            name: name.to_string(),
            relay: addr,
            relay_pin: pin.to_line("").trim().to_string(),
            fingerprint: me.device.identity().fingerprint().to_string(),
            key_file: key_path(dir),
        })
    }

    fn relay_client(config: &Config) -> Result<RelayClient, ClientError> {
        let pin: PeerKey = config
            .relay_pin
            .trim()
            .parse()
            .map_err(|_| ClientError::Invalid("the stored relay pin is unreadable".into()))?;
        let tls = TlsClient::new(TlsClientOptions::new(
            config.relay.clone(),
            TlsTrust::Pinned(pin),
        ))
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(RelayClient::new(config.relay.clone(), tls))
    }

    /// Open the state in `dir` (made by [`Messenger::init`]).
    pub async fn open(dir: &Path) -> Result<Self, ClientError> {
        if !key_path(dir).exists() || !store_path(dir).exists() {
            return Err(ClientError::NotInitialized(dir.to_path_buf()));
        }
        for path in [dir.to_path_buf(), store_path(dir), dir.join("files")] {
            check_private(&path)?;
        }
        let key_file = read_private_key(&key_path(dir))?;
        let store = Store::open(&store_path(dir), &key_file).await?;
        let config: Config = serde_json::from_slice(
            &store
                .meta("config")
                .await?
                .ok_or_else(|| ClientError::NotInitialized(dir.to_path_buf()))?,
        )
        .map_err(|_| MsgError::CorruptState("client configuration"))?;
        let device = Device::from_bytes(
            &store
                .meta("device")
                .await?
                .ok_or_else(|| ClientError::NotInitialized(dir.to_path_buf()))?,
        )?;
        let relay = Self::relay_client(&config)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lock_wait: LOCK_WAIT,
            store,
            device,
            config,
            relay,
        })
    }

    /// This device's name on the relay.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// This device's identity.
    pub fn identity(&self) -> &IdentityKey {
        self.device.identity()
    }

    /// The relay's address.
    pub fn relay_addr(&self) -> &str {
        &self.config.relay
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        Ok(self
            .relay
            .request_json(&self.device, &self.config.name, method, path, body)
            .await?)
    }

    fn json<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_default()
    }

    async fn register(&self) -> Result<DeviceStatus, ClientError> {
        let spk = self
            .device
            .signed_prekey()
            .ok_or(MsgError::CorruptState("no signed prekey"))?;
        let kem = self
            .device
            .last_resort_kem_prekey()
            .ok_or(MsgError::CorruptState("no last-resort KEM prekey"))?;
        let req = RegisterRequest {
            identity: B64(self.device.identity().to_bytes().to_vec()),
            signed_prekey: B64(spk.to_bytes()),
            last_resort_kem: B64(kem.to_bytes()),
        };
        let path = format!("/v1/devices/{}", self.config.name);
        self.call(Method::PUT, &path, Self::json(&req)).await
    }

    /// Take the state directory's lock, waiting for another process to let go of it.
    async fn lock(&self) -> Result<StateLock, ClientError> {
        lock_state(&self.dir, self.lock_wait).await
    }

    /// How long a command waits for another process on the same state directory before it
    /// gives up with [`ClientError::Busy`] (default [`LOCK_WAIT`]).
    pub fn set_lock_wait(&mut self, wait: Duration) {
        self.lock_wait = wait;
    }

    /// The device as stored (the copy in memory only signs requests: every change starts
    /// from the stored one, inside the transaction that writes it back).
    async fn load_device(tx: &mut Txn<'_>) -> Result<Device, ClientError> {
        let bytes = tx
            .meta("device")
            .await?
            .ok_or(MsgError::CorruptState("no device in the store"))?;
        Ok(Device::from_bytes(&bytes)?)
    }

    /// Upload fresh one-time prekeys if the relay runs low (or `force`). The device is stored
    /// before the upload, so the relay never hands out a key this side does not hold.
    pub async fn replenish(&mut self, force: bool) -> Result<DeviceStatus, ClientError> {
        let _lock = self.lock().await?;
        self.replenish_locked(force, now()).await
    }

    async fn replenish_locked(
        &mut self,
        force: bool,
        at: Timestamp,
    ) -> Result<DeviceStatus, ClientError> {
        let status: DeviceStatus = self.call(Method::GET, "/v1/self", Vec::new()).await?;
        let need_otk = force || status.one_time_prekeys < PREKEY_LOW_WATER;
        let need_kem = force || status.kem_prekeys < PREKEY_LOW_WATER;
        if !need_otk && !need_kem {
            return Ok(status);
        }
        let rng = &mut SystemRandom;
        let mut upload = UploadPrekeys::default();
        let mut tx = self.store.begin().await?;
        let mut device = Self::load_device(&mut tx).await?;
        if need_otk {
            upload.one_time = device
                .new_one_time_prekeys(PREKEY_BATCH, rng)?
                .iter()
                .map(|k| B64(k.to_bytes()))
                .collect();
        }
        if need_kem {
            upload.kem = device
                .new_kem_prekeys(PREKEY_BATCH, at)?
                .iter()
                .map(|k| B64(k.to_bytes()))
                .collect();
        }
        // Remember when keys up to these ids went out, to retire them unused later.
        let mut batches = Self::prekey_batches(&mut tx).await?;
        batches.push((
            at.unix_secs(),
            device.last_prekey_id(PrekeyKind::OneTime).0,
            device.last_prekey_id(PrekeyKind::Kem).0,
        ));
        tx.set_meta(PREKEY_BATCHES, &Self::json(&batches)).await?;
        tx.set_meta("device", &device.to_bytes()?).await?;
        tx.commit().await?;
        self.device = device;
        self.call(Method::POST, "/v1/prekeys", Self::json(&upload))
            .await
    }

    /// Rotate the signed prekey and the last-resort ML-KEM prekey if [`PREKEY_ROTATION_SECS`]
    /// have passed at `now` (registering the new ones with the relay), erase replaced ones
    /// older than their grace period ([`PREKEY_GRACE_SECS`]), and retire one-time prekeys
    /// unused for [`ONE_TIME_PREKEY_RETENTION_SECS`]. `now` is a parameter so
    /// that the schedule can be tested on a virtual clock; `receive_batch` calls it with the
    /// system's. Returns whether it rotated.
    pub async fn maintain_prekeys(&mut self, now: Timestamp) -> Result<bool, ClientError> {
        let _lock = self.lock().await?;
        self.maintain_prekeys_locked(now).await
    }

    async fn prekey_batches(tx: &mut Txn<'_>) -> Result<Vec<(u64, u32, u32)>, ClientError> {
        Ok(match tx.meta(PREKEY_BATCHES).await? {
            Some(v) => {
                serde_json::from_slice(&v).map_err(|_| MsgError::CorruptState("prekey batches"))?
            }
            None => Vec::new(),
        })
    }

    /// One-time prekeys held on this device: (X25519, ML-KEM).
    pub fn one_time_prekeys_held(&self) -> (usize, usize) {
        (
            self.device.one_time_prekey_count(),
            self.device.kem_prekey_count(),
        )
    }

    /// Retire the one-time prekeys uploaded more than [`ONE_TIME_PREKEY_RETENTION_SECS`]
    /// before `now` and still unused: the relay deletes them first (it must never hand out a
    /// key whose secret is gone), then the device erases their secrets, then the stock is
    /// refilled. Returns how many secrets were erased.
    async fn retire_prekeys_locked(&mut self, now: Timestamp) -> Result<usize, ClientError> {
        let mut tx = self.store.begin().await?;
        let batches = Self::prekey_batches(&mut tx).await?;
        drop(tx);
        let (old, keep): (Vec<_>, Vec<_>) = batches.into_iter().partition(|(at, _, _)| {
            now.unix_secs() >= at.saturating_add(ONE_TIME_PREKEY_RETENTION_SECS)
        });
        let (Some(one_time), Some(kem)) =
            (old.iter().map(|b| b.1).max(), old.iter().map(|b| b.2).max())
        else {
            return Ok(0);
        };
        let retire = RetirePrekeys {
            one_time_through: one_time,
            kem_through: kem,
        };
        let _: DeviceStatus = self
            .call(Method::POST, "/v1/prekeys/retire", Self::json(&retire))
            .await?;
        let mut tx = self.store.begin().await?;
        let mut device = Self::load_device(&mut tx).await?;
        let erased = device.retire_one_time_prekeys(PrekeyId(one_time), PrekeyId(kem));
        tx.set_meta("device", &device.to_bytes()?).await?;
        tx.set_meta(PREKEY_BATCHES, &Self::json(&keep)).await?;
        tx.commit().await?;
        self.device = device;
        tracing::info!(erased, "retired unused one-time prekeys");
        self.replenish_locked(false, now).await?;
        Ok(erased)
    }

    async fn maintain_prekeys_locked(&mut self, now: Timestamp) -> Result<bool, ClientError> {
        let rotated = self.rotate_prekeys_locked(now).await?;
        self.retire_prekeys_locked(now).await?;
        Ok(rotated)
    }

    async fn rotate_prekeys_locked(&mut self, now: Timestamp) -> Result<bool, ClientError> {
        let due = |created: Option<Timestamp>| {
            created.is_none_or(|c| {
                now.unix_secs() >= c.unix_secs().saturating_add(PREKEY_ROTATION_SECS)
            })
        };
        let cutoff = Timestamp::from_unix_secs(
            now.unix_secs()
                .saturating_sub(PREKEY_ROTATION_SECS + PREKEY_GRACE_SECS),
        );
        // A cheap look at the copy in memory first: most calls have nothing to do.
        if !due(self.device.signed_prekey_created())
            && !due(self.device.last_resort_kem_prekey_created())
            && !self.device.has_replaced_prekeys_before(cutoff)
        {
            return Ok(false);
        }
        let mut tx = self.store.begin().await?;
        let mut device = Self::load_device(&mut tx).await?;
        let rotate_spk = due(device.signed_prekey_created());
        let rotate_kem = due(device.last_resort_kem_prekey_created());
        device.remove_signed_prekeys_before(cutoff);
        device.remove_last_resort_kem_prekeys_before(cutoff);
        if rotate_spk {
            device.new_signed_prekey(now, &mut SystemRandom)?;
        }
        if rotate_kem {
            device.new_last_resort_kem_prekey(now)?;
        }
        tx.set_meta("device", &device.to_bytes()?).await?;
        tx.commit().await?;
        self.device = device;
        let rotated = rotate_spk || rotate_kem;
        if rotated {
            // The device is stored first: the relay never hands out a key this side lacks.
            self.register().await?;
            tracing::info!("rotated the signed and last-resort prekeys");
        }
        Ok(rotated)
    }

    async fn contact_record(
        tx: &mut Txn<'_>,
        name: &str,
    ) -> Result<Option<ContactRecord>, ClientError> {
        Ok(match tx.contact(name).await? {
            Some(v) => Some(
                serde_json::from_slice(&v).map_err(|_| MsgError::CorruptState("contact record"))?,
            ),
            None => None,
        })
    }

    async fn save_contact(
        tx: &mut Txn<'_>,
        name: &str,
        rec: &ContactRecord,
    ) -> Result<(), ClientError> {
        Ok(tx.set_contact(name, &Self::json(rec)).await?)
    }

    fn trust_for(rec: Option<&ContactRecord>) -> Result<Trust, ClientError> {
        Ok(match rec {
            Some(r) => Trust::Pinned(IdentityKey::from_bytes(&r.identity.0)?),
            None => Trust::OnFirstUse,
        })
    }

    /// Record a changed identity as waiting for `msg verify --accept`.
    async fn mark_changed(
        tx: &mut Txn<'_>,
        name: &str,
        new: &IdentityKey,
    ) -> Result<ClientError, ClientError> {
        if let Some(mut rec) = Self::contact_record(tx, name).await? {
            rec.pending = Some(B64(new.to_bytes().to_vec()));
            Self::save_contact(tx, name, &rec).await?;
        }
        Ok(ClientError::IdentityChanged {
            name: name.to_string(),
            fingerprint: new.fingerprint().to_string(),
        })
    }

    /// Encrypt `payload` for `to` on the latest session (setting one up from a fresh bundle if
    /// there is none), store the new ratchet state, then hand the envelope to the relay. The
    /// state is stored first, in one transaction with the read it started from and under the
    /// state directory's lock: a message key is never used twice, even after a crash or with
    /// another process on the same directory.
    async fn send_payload(&mut self, to: &str, payload: &[u8]) -> Result<(), ClientError> {
        if !api::valid_name(to) {
            return Err(ClientError::Invalid(format!("{to:?} is not a valid name")));
        }
        let lock = self.lock().await?;
        let t = now_i64();
        let mut tx = self.store.begin().await?;
        let contact = Self::contact_record(&mut tx, to).await?;
        if let Some(pending) = contact.as_ref().and_then(|c| c.pending.as_ref()) {
            let id = IdentityKey::from_bytes(&pending.0)?;
            return Err(ClientError::IdentityChanged {
                name: to.to_string(),
                fingerprint: id.fingerprint().to_string(),
            });
        }
        let (row, mut session) = match tx.sessions(to).await?.into_iter().next() {
            Some(row) => {
                let s = Session::from_bytes(&row.state)?;
                (row, s)
            }
            None => {
                // No transaction stays open across a request to the relay (the lock does).
                drop(tx);
                let bundle: BundleResponse = self
                    .call(Method::POST, &format!("/v1/bundles/{to}"), Vec::new())
                    .await?;
                let bundle = PrekeyBundle::from_bytes(&bundle.bundle.0)?;
                tx = self.store.begin().await?;
                let session = match Session::initiate(
                    &self.device,
                    &Address::new(self.config.name.as_bytes())?,
                    &Address::new(to.as_bytes())?,
                    &bundle,
                    Self::trust_for(contact.as_ref())?,
                    Suite::default_for_this_cpu(),
                    &mut SystemRandom,
                ) {
                    Ok(s) => s,
                    Err(MsgError::UntrustedIdentity) => {
                        let e = Self::mark_changed(&mut tx, to, &bundle.identity).await?;
                        tx.commit().await?;
                        return Err(e);
                    }
                    Err(e) => return Err(e.into()),
                };
                if contact.is_none() {
                    Self::save_contact(
                        &mut tx,
                        to,
                        &ContactRecord {
                            identity: B64(session.peer_identity().to_bytes().to_vec()),
                            verified: false,
                            pending: None,
                            first_seen: now().unix_secs(),
                        },
                    )
                    .await?;
                }
                let row = tx
                    .insert_session(to, session.base_key(), &session.to_bytes(), None, t)
                    .await?;
                tx.prune_sessions(to, MAX_SESSIONS_PER_CONTACT).await?;
                (row, session)
            }
        };
        let envelope = session.encrypt(&pad(payload))?;
        tx.update_session(&row, &session.to_bytes(), t).await?;
        tx.commit().await?;
        // Stored: the relay request needs no lock, and another process may go on meanwhile.
        drop(lock);
        let _: api::SendResponse = self
            .relay
            .request_json(
                &self.device,
                &self.config.name,
                Method::POST,
                &format!("/v1/messages/{to}"),
                envelope,
            )
            .await?;
        Ok(())
    }

    /// Send a text message.
    pub async fn send_text(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        let payload = Zeroizing::new(encode_text(text));
        self.send_payload(to, &payload).await
    }

    /// Send a file in chunks of [`FILE_CHUNK`] bytes; `progress(sent, total)` after each.
    pub async fn send_file(
        &mut self,
        to: &str,
        path: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
        let size = file.metadata().await.map_err(io_err(path))?.len();
        let count = u32::try_from(size.div_ceil(FILE_CHUNK as u64).max(1))
            .map_err(|_| ClientError::Invalid(format!("{}: too large to send", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let mut transfer = [0u8; 16];
        SystemRandom.fill(&mut transfer).map_err(MsgError::from)?;
        let mut buf = vec![0u8; FILE_CHUNK];
        let mut sent = 0u64;
        for index in 0..count {
            let mut filled = 0;
            while filled < FILE_CHUNK {
                let n = file.read(&mut buf[filled..]).await.map_err(io_err(path))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            let payload = Zeroizing::new(encode_chunk(&FileChunk {
                transfer,
                index,
                count,
                size,
                name: &name,
                data: &buf[..filled],
            }));
            self.send_payload(to, &payload).await?;
            sent += filled as u64;
            progress(sent, size);
        }
        Ok(sent)
    }

    /// Decrypt one envelope from `from` inside `tx`, writing the advanced session (and, for a
    /// setup, the device whose prekeys it used) in the same transaction.
    async fn open_envelope(
        &self,
        tx: &mut Txn<'_>,
        from: &str,
        body: &[u8],
    ) -> Result<Opened, ClientError> {
        let rng = &mut SystemRandom;
        let t = now();
        let envelope = Envelope::parse(body)?;
        match &envelope {
            Envelope::Initial(initial) => {
                if let Some(row) = tx.session_by_base_key(from, initial.base_key()).await? {
                    let mut s = Session::from_bytes(&row.state)?;
                    let plain = Zeroizing::new(s.decrypt(&envelope, t, rng)?);
                    tx.update_session(&row, &s.to_bytes(), now_i64()).await?;
                    return Ok(Opened::Plain(plain, s.dropped_skipped_keys()));
                }
                let contact = Self::contact_record(tx, from).await?;
                if contact.as_ref().is_some_and(|c| c.pending.is_some()) {
                    return Ok(Opened::Pending);
                }
                let mut device = Self::load_device(tx).await?;
                let result = Session::respond(
                    &mut device,
                    &Address::new(self.config.name.as_bytes())?,
                    &Address::new(from.as_bytes())?,
                    initial,
                    Self::trust_for(contact.as_ref())?,
                    t,
                    rng,
                );
                let (session, plain) = match result {
                    Ok(r) => r,
                    Err(MsgError::UntrustedIdentity) => {
                        Self::mark_changed(tx, from, initial.identity()).await?;
                        return Ok(Opened::Pending);
                    }
                    Err(e) => return Err(e.into()),
                };
                let plain = Zeroizing::new(plain);
                if contact.is_none() {
                    Self::save_contact(
                        tx,
                        from,
                        &ContactRecord {
                            identity: B64(session.peer_identity().to_bytes().to_vec()),
                            verified: false,
                            pending: None,
                            first_seen: t.unix_secs(),
                        },
                    )
                    .await?;
                }
                tx.insert_session(
                    from,
                    session.base_key(),
                    &session.to_bytes(),
                    Some(&device.to_bytes()?),
                    now_i64(),
                )
                .await?;
                tx.prune_sessions(from, MAX_SESSIONS_PER_CONTACT).await?;
                Ok(Opened::Plain(plain, session.dropped_skipped_keys()))
            }
            Envelope::Ratchet(_) => {
                let mut last = MsgError::InvalidMessage("no session with this sender");
                for row in tx.sessions(from).await? {
                    let mut s = Session::from_bytes(&row.state)?;
                    match s.decrypt(&envelope, t, rng) {
                        Ok(plain) => {
                            let plain = Zeroizing::new(plain);
                            tx.update_session(&row, &s.to_bytes(), now_i64()).await?;
                            return Ok(Opened::Plain(plain, s.dropped_skipped_keys()));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last.into())
            }
            _ => Err(MsgError::InvalidMessage("unknown envelope").into()),
        }
    }

    /// Handle one message inside `tx`: decrypt it and store the plaintext in the inbox (with
    /// notices of messages that can no longer be decrypted), set it aside while its sender's
    /// identity change waits, or store why it was dropped. A relay message handled before
    /// (`received`) is skipped: it is acknowledged, never shown twice. `held`: the row of a
    /// message set aside earlier, now taken back.
    async fn take_in(
        &self,
        tx: &mut Txn<'_>,
        m: &Incoming,
        held: Option<i64>,
    ) -> Result<TakenIn, ClientError> {
        if held.is_none() && !tx.mark_received(m.relay_id, now_i64()).await? {
            return Ok(TakenIn::Done);
        }
        if !api::valid_name(&m.sender) {
            // A name from the network is data: one that fails the name rule is never used
            // (as a contact, an address or a path); the message is dropped.
            let notice = InboxItem::Notice(Received::Dropped {
                from: INVALID_SENDER.into(),
                reason: "the relay gave a sender name that is not valid; message dropped".into(),
            });
            tx.push_inbox(&Self::json(&notice)).await?;
            return Ok(TakenIn::Done);
        }
        let from = m.sender.clone();
        let outcome = match self.open_envelope(tx, &m.sender, &m.body.0).await {
            Ok(Opened::Plain(plain, (evicted, expired))) => {
                let item = InboxItem::Payload {
                    from: from.clone(),
                    sent: m.sent,
                    payload: B64(plain.to_vec()),
                };
                let stored = Zeroizing::new(Self::json(&item));
                if let InboxItem::Payload { mut payload, .. } = item {
                    payload.0.zeroize();
                }
                tx.push_inbox(&stored).await?;
                for (count, reason) in [
                    (
                        evicted,
                        "too far out of order (their keys were dropped to bound the stored state)",
                    ),
                    (
                        expired,
                        "they would arrive more than 14 days late (their keys expired)",
                    ),
                ] {
                    if count > 0 {
                        let notice = InboxItem::Notice(Received::Undecryptable {
                            from: from.clone(),
                            count,
                            reason: reason.into(),
                        });
                        tx.push_inbox(&Self::json(&notice)).await?;
                    }
                }
                TakenIn::Done
            }
            Ok(Opened::Pending) => {
                if held.is_some() {
                    return Ok(TakenIn::StillHeld);
                }
                if tx.held_count(&from).await? < MAX_HELD_PER_SENDER {
                    tx.hold(&from, &Self::json(m)).await?;
                } else {
                    let notice = InboxItem::Notice(Received::Dropped {
                        from: from.clone(),
                        reason: format!("{MAX_HELD_PER_SENDER} messages already wait on this contact's changed identity"),
                    });
                    tx.push_inbox(&Self::json(&notice)).await?;
                }
                TakenIn::Held
            }
            Err(ClientError::Msg(e)) => {
                let reason = if e == MsgError::Duplicated {
                    "could not be decrypted: a repeat of a message already read, or one whose key expired or was dropped".to_string()
                } else {
                    e.to_string()
                };
                let notice = InboxItem::Notice(Received::Dropped { from, reason });
                tx.push_inbox(&Self::json(&notice)).await?;
                TakenIn::Done
            }
            Err(e) => return Err(e),
        };
        if let Some(seq) = held {
            tx.delete_held(seq).await?;
        }
        Ok(outcome)
    }

    /// Take back messages set aside for contacts whose changed identity has been accepted.
    async fn release_held(&mut self) -> Result<(), ClientError> {
        let mut tx = self.store.begin().await?;
        for sender in tx.held_senders().await? {
            let pending = Self::contact_record(&mut tx, &sender)
                .await?
                .is_some_and(|c| c.pending.is_some());
            if pending {
                continue;
            }
            for row in tx.held(&sender, MAX_HELD_PER_SENDER).await? {
                let m: Incoming = serde_json::from_slice(&row.value)
                    .map_err(|_| MsgError::CorruptState("message set aside"))?;
                if let TakenIn::StillHeld = self.take_in(&mut tx, &m, Some(row.seq)).await? {
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Show what waits in the inbox, oldest first: each is shown (a file chunk written), then
    /// deleted in one transaction with what showing it changed.
    async fn show_inbox(
        &mut self,
        on: &mut (dyn FnMut(Received) + Send),
    ) -> Result<(), ClientError> {
        loop {
            let mut tx = self.store.begin().await?;
            let Some(row) = tx.inbox(1).await?.into_iter().next() else {
                return Ok(());
            };
            let item: InboxItem = serde_json::from_slice(&row.value)
                .map_err(|_| MsgError::CorruptState("inbox item"))?;
            let event = match item {
                InboxItem::Notice(e) => Some(e),
                InboxItem::Payload {
                    from,
                    sent,
                    mut payload,
                } => {
                    let e = self.handle_payload(&mut tx, &from, sent, &payload.0).await;
                    payload.0.zeroize();
                    e?
                }
            };
            if let Some(e) = event {
                on(e);
            }
            failpoint("after-show");
            tx.delete_inbox(row.seq).await?;
            tx.commit().await?;
        }
    }

    async fn handle_payload(
        &self,
        tx: &mut Txn<'_>,
        from: &str,
        sent: i64,
        padded: &[u8],
    ) -> Result<Option<Received>, ClientError> {
        let dropped = |reason: &str| {
            Ok(Some(Received::Dropped {
                from: from.to_string(),
                reason: reason.into(),
            }))
        };
        let Some(payload) = unpad(padded) else {
            return dropped("malformed padding");
        };
        match payload.split_first() {
            Some((&PAYLOAD_TEXT, text)) => Ok(Some(Received::Text {
                from: from.to_string(),
                sent,
                text: String::from_utf8_lossy(text).into_owned(),
            })),
            Some((&PAYLOAD_FILE_CHUNK, rest)) => {
                let Some(chunk) = decode_chunk(rest) else {
                    return dropped("malformed file chunk");
                };
                self.file_chunk(tx, from, &chunk).await
            }
            _ => dropped("unknown payload type"),
        }
    }

    /// Write a file chunk at its offset in `files/FROM/.ID.part` (so writing it again after a
    /// crash changes nothing) and record the transfer's progress in `tx`. The last chunk links
    /// the part file to its final name, never over an existing file.
    async fn file_chunk(
        &self,
        tx: &mut Txn<'_>,
        from: &str,
        chunk: &FileChunk<'_>,
    ) -> Result<Option<Received>, ClientError> {
        use tokio::io::AsyncSeekExt;
        let id: String = chunk.transfer.iter().map(|b| format!("{b:02x}")).collect();
        let dir = sender_dir(&self.dir, from)?;
        create_private_dir(&self.dir.join("files"))?;
        create_private_dir(&dir)?;
        let part = dir.join(format!(".{id}.part"));
        let key = format!("transfer/{from}/{id}");
        let state = match tx.meta(&key).await? {
            Some(v) => serde_json::from_slice::<TransferState>(&v).ok(),
            None => None,
        };
        let expected = state.as_ref().map_or(0, |s| s.next);
        if chunk.index != expected {
            return Ok(Some(Received::Dropped {
                from: from.to_string(),
                reason: format!(
                    "file chunk {} out of order (expected {expected})",
                    chunk.index
                ),
            }));
        }
        let offset = state.as_ref().map_or(0, |s| s.written);
        let mut f = tokio::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(io_err(&part))?;
        f.set_len(offset).await.map_err(io_err(&part))?;
        f.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(io_err(&part))?;
        f.write_all(chunk.data).await.map_err(io_err(&part))?;
        f.sync_data().await.map_err(io_err(&part))?;
        drop(f);
        let written = offset + chunk.data.len() as u64;
        let last = chunk.index + 1 == chunk.count;
        tx.set_meta(
            &key,
            &Self::json(&TransferState {
                next: chunk.index + 1,
                written,
            }),
        )
        .await?;
        if !last {
            return Ok(None);
        }
        if written != chunk.size {
            let _ = std::fs::remove_file(&part);
            return Ok(Some(Received::Dropped {
                from: from.to_string(),
                reason: format!(
                    "file {:?}: {written} bytes arrived, {} announced",
                    chunk.name, chunk.size
                ),
            }));
        }
        let dest = link_new_name(&part, &dir, &safe_file_name(chunk.name))?;
        // The part file's name goes once the transfer's end is committed (by the caller);
        // after a crash before that, the chunk is written and linked again to the same file.
        let _ = std::fs::remove_file(&part);
        Ok(Some(Received::File {
            from: from.to_string(),
            name: chunk.name.to_string(),
            path: dest,
            bytes: written,
        }))
    }

    /// Fetch one batch (waiting up to `wait_secs` for the first message), then under the state
    /// directory's lock: take back messages set aside for accepted identities; decrypt the
    /// batch into the store in one transaction with the ratchet states; show what waits in
    /// the inbox through `on`; acknowledge. Returns how many relay messages were handled and
    /// whether some were set aside for a changed identity.
    pub async fn receive_batch(
        &mut self,
        wait_secs: u64,
        on: &mut (dyn FnMut(Received) + Send),
    ) -> Result<(usize, bool), ClientError> {
        let inbox: Inbox = self
            .call(
                Method::GET,
                &format!("/v1/messages?wait={wait_secs}"),
                Vec::new(),
            )
            .await?;
        let _lock = self.lock().await?;
        self.release_held().await?;
        // Upkeep must not keep messages from being read: a failure is logged and retried at
        // the next batch.
        if let Err(e) = self.maintain_prekeys_locked(now()).await {
            tracing::warn!(error = %e, "prekey upkeep failed; will retry");
        }
        let mut ids = Vec::with_capacity(inbox.messages.len());
        let mut changed: Vec<String> = Vec::new();
        let mut tx = self.store.begin().await?;
        for m in inbox.messages {
            ids.push(m.id);
            let m = Incoming {
                relay_id: m.id,
                sender: m.sender,
                sent: m.sent,
                body: m.body,
            };
            if let TakenIn::Held = self.take_in(&mut tx, &m, None).await? {
                if !changed.contains(&m.sender) {
                    changed.push(m.sender);
                }
            }
        }
        failpoint("before-store");
        tx.commit().await?;
        failpoint("after-store");
        if !changed.is_empty() {
            let mut tx = self.store.begin().await?;
            for from in &changed {
                let fingerprint = Self::contact_record(&mut tx, from)
                    .await?
                    .and_then(|r| r.pending)
                    .and_then(|p| IdentityKey::from_bytes(&p.0).ok())
                    .map(|k| k.fingerprint().to_string())
                    .unwrap_or_default();
                on(Received::IdentityChanged {
                    from: from.clone(),
                    fingerprint,
                });
            }
        }
        self.show_inbox(on).await?;
        self.ack(&ids).await?;
        if !ids.is_empty() {
            let mut tx = self.store.begin().await?;
            tx.forget_received(&ids, now_i64() - api::MESSAGE_EXPIRY_SECS as i64)
                .await?;
            tx.commit().await?;
        }
        // Refill when the relay says its stock runs low (not guessed from envelope bytes).
        if inbox.status.is_some_and(|st| {
            st.one_time_prekeys < PREKEY_LOW_WATER || st.kem_prekeys < PREKEY_LOW_WATER
        }) {
            self.replenish_locked(false, now()).await?;
        }
        Ok((ids.len(), !changed.is_empty()))
    }

    async fn ack(&self, ids: &[i64]) -> Result<(), ClientError> {
        for chunk in ids.chunks(api::MAX_MESSAGES_PER_FETCH) {
            let _: Ack = self
                .call(
                    Method::POST,
                    "/v1/ack",
                    Self::json(&Ack {
                        ids: chunk.to_vec(),
                    }),
                )
                .await?;
        }
        Ok(())
    }

    /// Everything queued now: batches until the relay's queue is empty (messages of changed
    /// identities are set aside, so they never hold the others back).
    pub async fn receive_all(
        &mut self,
        on: &mut (dyn FnMut(Received) + Send),
    ) -> Result<usize, ClientError> {
        let mut total = 0;
        loop {
            let (n, _) = self.receive_batch(0, on).await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// The relay's push channel for this device.
    pub async fn push_channel(&self) -> Result<super::relay::PushChannel, ClientError> {
        Ok(self
            .relay
            .push_channel(&self.device, &self.config.name)
            .await?)
    }

    /// Every contact.
    pub async fn contacts(&self) -> Result<Vec<ContactInfo>, ClientError> {
        let _lock = self.lock().await?;
        let mut tx = self.store.begin().await?;
        let mut out = Vec::new();
        for (name, value) in tx.contacts().await? {
            let rec: ContactRecord = serde_json::from_slice(&value)
                .map_err(|_| MsgError::CorruptState("contact record"))?;
            let fp = |b: &B64| -> Result<String, ClientError> {
                Ok(IdentityKey::from_bytes(&b.0)?.fingerprint().to_string())
            };
            out.push(ContactInfo {
                fingerprint: fp(&rec.identity)?,
                verified: rec.verified,
                changed_to: rec.pending.as_ref().map(fp).transpose()?,
                sessions: tx.session_count(&name).await?,
                name,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The safety number with `name`; with `accept`, mark the contact verified, taking a
    /// changed identity as the new one (its old sessions are kept; new ones set up with the
    /// new identity; messages set aside are read at the next receive).
    pub async fn verify(&self, name: &str, accept: bool) -> Result<Verification, ClientError> {
        let _lock = self.lock().await?;
        let mut tx = self.store.begin().await?;
        let mut rec = Self::contact_record(&mut tx, name)
            .await?
            .ok_or_else(|| ClientError::UnknownContact(name.to_string()))?;
        let changed = rec.pending.is_some();
        let theirs = IdentityKey::from_bytes(&rec.pending.as_ref().unwrap_or(&rec.identity).0)?;
        let number = safety_number(&self.config.name, self.device.identity(), name, &theirs);
        if accept {
            if let Some(p) = rec.pending.take() {
                rec.identity = p;
            }
            rec.verified = true;
            Self::save_contact(&mut tx, name, &rec).await?;
        }
        tx.commit().await?;
        Ok(Verification {
            name: name.to_string(),
            safety_number: number,
            own_fingerprint: self.device.identity().fingerprint().to_string(),
            their_fingerprint: theirs.fingerprint().to_string(),
            changed: changed && !accept,
            verified: rec.verified,
        })
    }

    /// Close the store.
    pub async fn close(self) {
        self.store.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses() {
        assert_eq!(
            relay_addr("https://127.0.0.1:8443/").unwrap(),
            "127.0.0.1:8443"
        );
        assert_eq!(
            relay_addr("relay.example:443").unwrap(),
            "relay.example:443"
        );
        assert_eq!(relay_addr("[::1]:443").unwrap(), "[::1]:443");
        for bad in ["http://x:1", "x", "https://x:port", "x:1/path"] {
            assert!(relay_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sender_dirs_stay_inside() {
        let d = Path::new("/state/msg");
        assert_eq!(
            sender_dir(d, "bob").unwrap(),
            Path::new("/state/msg/files/bob")
        );
        for bad in [
            "/etc",
            "..",
            ".",
            "../x",
            "a/b",
            "",
            "/home/u/.config/autostart",
        ] {
            assert!(sender_dir(d, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn safety_numbers_agree_and_differ() {
        let a = Device::generate(&mut SystemRandom).unwrap();
        let b = Device::generate(&mut SystemRandom).unwrap();
        let c = Device::generate(&mut SystemRandom).unwrap();
        let ab = safety_number("alice", a.identity(), "bob", b.identity());
        assert_eq!(
            ab,
            safety_number("bob", b.identity(), "alice", a.identity())
        );
        assert_eq!(ab.len(), 12 * 5 + 11);
        assert!(ab.chars().all(|ch| ch.is_ascii_digit() || ch == ' '));
        assert_ne!(
            ab,
            safety_number("alice", a.identity(), "bob", c.identity())
        );
    }
}
