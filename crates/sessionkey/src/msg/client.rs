//! The messaging client: one device's identity, sessions and contacts, kept encrypted in
//! the [`Store`], talking to one relay through [`RelayClient`].

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hyper::Method;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::api::{
    self, Ack, BundleResponse, DeviceStatus, Inbox, RegisterRequest, UploadPrekeys, B64,
};
use super::relay::{RelayClient, RelayError};
use super::store::{Store, StoreError};
use crate::proto::crypto::{SecureRandom, SystemRandom};
use crate::proto::keys::{read_private_key, write_keypair, Identity};
use crate::proto::msg::{
    Address, Device, Envelope, IdentityKey, MsgError, PrekeyBundle, Session, Timestamp, Trust,
};
use crate::proto::suite::Suite;
use crate::tls::{TlsClient, TlsClientOptions, TlsTrust};
use crate::trust::{KnownPeers, PeerKey};

/// One-time prekeys of each kind made and uploaded at a time.
pub const PREKEY_BATCH: usize = 50;
/// Replenish when the relay holds fewer one-time prekeys of a kind than this.
pub const PREKEY_LOW_WATER: u64 = 20;
/// File data per message.
pub const FILE_CHUNK: usize = 64 * 1024;

const PAYLOAD_TEXT: u8 = 0x01;
const PAYLOAD_FILE_CHUNK: u8 = 0x02;

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
#[derive(Debug, Clone, Serialize)]
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
    /// A contact's identity changed: its messages wait on the relay until `msg verify --accept`.
    IdentityChanged {
        /// The contact.
        from: String,
        /// The new fingerprint.
        fingerprint: String,
    },
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

fn encode_text(text: &str) -> Vec<u8> {
    [&[PAYLOAD_TEXT][..], text.as_bytes()].concat()
}

struct FileChunk<'a> {
    transfer: [u8; 16],
    index: u32,
    count: u32,
    size: u64,
    name: &'a str,
    data: &'a [u8],
}

fn encode_chunk(c: &FileChunk<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + c.name.len() + c.data.len());
    out.push(PAYLOAD_FILE_CHUNK);
    out.extend_from_slice(&c.transfer);
    out.extend_from_slice(&c.index.to_be_bytes());
    out.extend_from_slice(&c.count.to_be_bytes());
    out.extend_from_slice(&c.size.to_be_bytes());
    let name = &c.name.as_bytes()[..c.name.len().min(255)];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(c.data);
    out
}

fn decode_chunk(p: &[u8]) -> Option<FileChunk<'_>> {
    let transfer = p.get(..16)?.try_into().ok()?;
    let index = u32::from_be_bytes(p.get(16..20)?.try_into().ok()?);
    let count = u32::from_be_bytes(p.get(20..24)?.try_into().ok()?);
    let size = u64::from_be_bytes(p.get(24..32)?.try_into().ok()?);
    let name_len = usize::from(u16::from_be_bytes(p.get(32..34)?.try_into().ok()?));
    let name = std::str::from_utf8(p.get(34..34 + name_len)?).ok()?;
    let data = p.get(34 + name_len..)?;
    (index < count).then_some(FileChunk {
        transfer,
        index,
        count,
        size,
        name,
        data,
    })
}

/// A received file's name made safe: its last path component, no leading dot.
fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TransferState {
    next: u32,
    written: u64,
}

/// One device's messaging client.
pub struct Messenger {
    dir: PathBuf,
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
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
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
            store,
            device,
            config,
            relay,
        };
        me.register().await?;
        me.replenish(true).await?;
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

    /// Upload fresh one-time prekeys if the relay runs low (or `force`). The device is stored
    /// before the upload, so the relay never hands out a key this side does not hold.
    pub async fn replenish(&mut self, force: bool) -> Result<DeviceStatus, ClientError> {
        let status: DeviceStatus = self.call(Method::GET, "/v1/self", Vec::new()).await?;
        let need_otk = force || status.one_time_prekeys < PREKEY_LOW_WATER;
        let need_kem = force || status.kem_prekeys < PREKEY_LOW_WATER;
        if !need_otk && !need_kem {
            return Ok(status);
        }
        let rng = &mut SystemRandom;
        let mut upload = UploadPrekeys::default();
        if need_otk {
            upload.one_time = self
                .device
                .new_one_time_prekeys(PREKEY_BATCH, rng)?
                .iter()
                .map(|k| B64(k.to_bytes()))
                .collect();
        }
        if need_kem {
            upload.kem = self
                .device
                .new_kem_prekeys(PREKEY_BATCH, now())?
                .iter()
                .map(|k| B64(k.to_bytes()))
                .collect();
        }
        self.store
            .set_meta("device", &self.device.to_bytes()?)
            .await?;
        self.call(Method::POST, "/v1/prekeys", Self::json(&upload))
            .await
    }

    async fn contact_record(&self, name: &str) -> Result<Option<ContactRecord>, ClientError> {
        Ok(match self.store.contact(name).await? {
            Some(v) => Some(
                serde_json::from_slice(&v).map_err(|_| MsgError::CorruptState("contact record"))?,
            ),
            None => None,
        })
    }

    async fn save_contact(&self, name: &str, rec: &ContactRecord) -> Result<(), ClientError> {
        Ok(self.store.set_contact(name, &Self::json(rec)).await?)
    }

    fn trust_for(rec: Option<&ContactRecord>) -> Result<Trust, ClientError> {
        Ok(match rec {
            Some(r) => Trust::Pinned(IdentityKey::from_bytes(&r.identity.0)?),
            None => Trust::OnFirstUse,
        })
    }

    /// Record a changed identity as waiting for `msg verify --accept`.
    async fn mark_changed(
        &self,
        name: &str,
        new: &IdentityKey,
    ) -> Result<ClientError, ClientError> {
        if let Some(mut rec) = self.contact_record(name).await? {
            rec.pending = Some(B64(new.to_bytes().to_vec()));
            self.save_contact(name, &rec).await?;
        }
        Ok(ClientError::IdentityChanged {
            name: name.to_string(),
            fingerprint: new.fingerprint().to_string(),
        })
    }

    /// Encrypt `payload` for `to` on the latest session (setting one up from a fresh bundle if
    /// there is none), store the new ratchet state, then hand the envelope to the relay. The
    /// state is stored first: a message key is never used twice, even after a crash.
    async fn send_payload(&mut self, to: &str, payload: &[u8]) -> Result<(), ClientError> {
        if !api::valid_name(to) {
            return Err(ClientError::Invalid(format!("{to:?} is not a valid name")));
        }
        let contact = self.contact_record(to).await?;
        if let Some(pending) = contact.as_ref().and_then(|c| c.pending.as_ref()) {
            let id = IdentityKey::from_bytes(&pending.0)?;
            return Err(ClientError::IdentityChanged {
                name: to.to_string(),
                fingerprint: id.fingerprint().to_string(),
            });
        }
        let t = now_i64();
        let (row, mut session) = match self.store.sessions(to).await?.into_iter().next() {
            Some(row) => {
                let s = Session::from_bytes(&row.state)?;
                (row.id, s)
            }
            None => {
                let bundle: BundleResponse = self
                    .call(Method::POST, &format!("/v1/bundles/{to}"), Vec::new())
                    .await?;
                let bundle = PrekeyBundle::from_bytes(&bundle.bundle.0)?;
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
                        return Err(self.mark_changed(to, &bundle.identity).await?)
                    }
                    Err(e) => return Err(e.into()),
                };
                if contact.is_none() {
                    self.save_contact(
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
                let id = self
                    .store
                    .insert_session(to, session.base_key(), &session.to_bytes(), None, t)
                    .await?;
                (id, session)
            }
        };
        let envelope = session.encrypt(payload)?;
        self.store
            .update_session(row, &session.to_bytes(), t)
            .await?;
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

    /// Decrypt one envelope from `from`. `Ok(None)`: the sender's identity changed (the
    /// message stays queued).
    async fn open_envelope(
        &mut self,
        from: &str,
        body: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, ClientError> {
        let rng = &mut SystemRandom;
        let t = now();
        let envelope = Envelope::parse(body)?;
        match &envelope {
            Envelope::Initial(initial) => {
                if let Some(row) = self
                    .store
                    .session_by_base_key(from, initial.base_key())
                    .await?
                {
                    let mut s = Session::from_bytes(&row.state)?;
                    let plain = Zeroizing::new(s.decrypt(&envelope, t, rng)?);
                    self.store
                        .update_session(row.id, &s.to_bytes(), now_i64())
                        .await?;
                    return Ok(Some(plain));
                }
                let contact = self.contact_record(from).await?;
                if contact.as_ref().is_some_and(|c| c.pending.is_some()) {
                    return Ok(None);
                }
                let result = Session::respond(
                    &mut self.device,
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
                        self.mark_changed(from, initial.identity()).await?;
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                };
                let plain = Zeroizing::new(plain);
                if contact.is_none() {
                    self.save_contact(
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
                self.store
                    .insert_session(
                        from,
                        session.base_key(),
                        &session.to_bytes(),
                        Some(&self.device.to_bytes()?),
                        now_i64(),
                    )
                    .await?;
                Ok(Some(plain))
            }
            Envelope::Ratchet(_) => {
                let mut last = MsgError::InvalidMessage("no session with this sender");
                for row in self.store.sessions(from).await? {
                    let mut s = Session::from_bytes(&row.state)?;
                    match s.decrypt(&envelope, t, rng) {
                        Ok(plain) => {
                            let plain = Zeroizing::new(plain);
                            self.store
                                .update_session(row.id, &s.to_bytes(), now_i64())
                                .await?;
                            return Ok(Some(plain));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last.into())
            }
            _ => Err(MsgError::InvalidMessage("unknown envelope").into()),
        }
    }

    async fn handle_payload(
        &mut self,
        from: &str,
        sent: i64,
        payload: &[u8],
    ) -> Result<Option<Received>, ClientError> {
        match payload.split_first() {
            Some((&PAYLOAD_TEXT, text)) => Ok(Some(Received::Text {
                from: from.to_string(),
                sent,
                text: String::from_utf8_lossy(text).into_owned(),
            })),
            Some((&PAYLOAD_FILE_CHUNK, rest)) => {
                let Some(chunk) = decode_chunk(rest) else {
                    return Ok(Some(Received::Dropped {
                        from: from.to_string(),
                        reason: "malformed file chunk".into(),
                    }));
                };
                self.file_chunk(from, &chunk).await
            }
            _ => Ok(Some(Received::Dropped {
                from: from.to_string(),
                reason: "unknown payload type".into(),
            })),
        }
    }

    async fn file_chunk(
        &mut self,
        from: &str,
        chunk: &FileChunk<'_>,
    ) -> Result<Option<Received>, ClientError> {
        let id: String = chunk.transfer.iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.dir.join("files").join(from);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(&dir))?;
        let part = dir.join(format!(".{id}.part"));
        let key = format!("transfer/{from}/{id}");
        let state = match self.store.meta(&key).await? {
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
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(io_err(&part))?;
        if chunk.index == 0 {
            f.set_len(0).await.map_err(io_err(&part))?;
        }
        f.write_all(chunk.data).await.map_err(io_err(&part))?;
        f.flush().await.map_err(io_err(&part))?;
        let written = state.map_or(0, |s| s.written) + chunk.data.len() as u64;
        if chunk.index + 1 < chunk.count {
            let s = TransferState {
                next: chunk.index + 1,
                written,
            };
            self.store.set_meta(&key, &Self::json(&s)).await?;
            return Ok(None);
        }
        self.store
            .set_meta(
                &key,
                &Self::json(&TransferState {
                    next: chunk.count,
                    written,
                }),
            )
            .await?;
        if written != chunk.size {
            return Ok(Some(Received::Dropped {
                from: from.to_string(),
                reason: format!(
                    "file {:?}: {written} bytes arrived, {} announced",
                    chunk.name, chunk.size
                ),
            }));
        }
        let name = safe_file_name(chunk.name);
        let mut dest = dir.join(&name);
        let mut n = 1;
        while dest.exists() {
            dest = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        tokio::fs::rename(&part, &dest)
            .await
            .map_err(io_err(&dest))?;
        Ok(Some(Received::File {
            from: from.to_string(),
            name: chunk.name.to_string(),
            path: dest,
            bytes: written,
        }))
    }

    /// Fetch one batch (waiting up to `wait_secs` for the first message), decrypt, report each
    /// through `on`, store the new states, then acknowledge what was handled. Returns how many
    /// messages were handled and whether some wait on a changed identity.
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
        let mut acked = Vec::new();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut setups = false;
        for m in inbox.messages {
            if blocked.contains(&m.sender) {
                continue;
            }
            setups |= m.body.0.first() == Some(&crate::proto::msg::ENVELOPE_INITIAL);
            match self.open_envelope(&m.sender, &m.body.0).await {
                Ok(Some(plain)) => {
                    if let Some(event) = self.handle_payload(&m.sender, m.sent, &plain).await? {
                        on(event);
                    }
                    acked.push(m.id);
                }
                Ok(None) => {
                    let rec = self.contact_record(&m.sender).await?;
                    let fingerprint = rec
                        .and_then(|r| r.pending)
                        .and_then(|p| IdentityKey::from_bytes(&p.0).ok())
                        .map(|k| k.fingerprint().to_string())
                        .unwrap_or_default();
                    on(Received::IdentityChanged {
                        from: m.sender.clone(),
                        fingerprint,
                    });
                    blocked.insert(m.sender);
                }
                Err(ClientError::Msg(e)) => {
                    if e != MsgError::Duplicated {
                        on(Received::Dropped {
                            from: m.sender.clone(),
                            reason: e.to_string(),
                        });
                    }
                    acked.push(m.id);
                }
                Err(e) => {
                    self.ack(&acked).await?;
                    return Err(e);
                }
            }
        }
        self.ack(&acked).await?;
        if setups {
            self.replenish(false).await?;
        }
        Ok((acked.len(), !blocked.is_empty()))
    }

    async fn ack(&self, ids: &[i64]) -> Result<(), ClientError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: Ack = self
            .call(
                Method::POST,
                "/v1/ack",
                Self::json(&Ack { ids: ids.to_vec() }),
            )
            .await?;
        Ok(())
    }

    /// Everything queued now: batches until the queue is empty (or only messages of changed
    /// identities are left).
    pub async fn receive_all(
        &mut self,
        on: &mut (dyn FnMut(Received) + Send),
    ) -> Result<usize, ClientError> {
        let mut total = 0;
        loop {
            let (n, blocked) = self.receive_batch(0, on).await?;
            total += n;
            if n == 0 || blocked {
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
        let mut out = Vec::new();
        for (name, value) in self.store.contacts().await? {
            let rec: ContactRecord = serde_json::from_slice(&value)
                .map_err(|_| MsgError::CorruptState("contact record"))?;
            let fp = |b: &B64| -> Result<String, ClientError> {
                Ok(IdentityKey::from_bytes(&b.0)?.fingerprint().to_string())
            };
            out.push(ContactInfo {
                fingerprint: fp(&rec.identity)?,
                verified: rec.verified,
                changed_to: rec.pending.as_ref().map(fp).transpose()?,
                sessions: self.store.sessions(&name).await?.len(),
                name,
            });
        }
        Ok(out)
    }

    /// The safety number with `name`; with `accept`, mark the contact verified, taking a
    /// changed identity as the new one (its old sessions are kept; new ones set up with the
    /// new identity).
    pub async fn verify(&self, name: &str, accept: bool) -> Result<Verification, ClientError> {
        let mut rec = self
            .contact_record(name)
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
            self.save_contact(name, &rec).await?;
        }
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

    #[test]
    fn chunks_round_trip_and_names_are_tamed() {
        let c = FileChunk {
            transfer: [9; 16],
            index: 2,
            count: 3,
            size: 10,
            name: "a.txt",
            data: b"xyz",
        };
        let enc = encode_chunk(&c);
        let d = decode_chunk(&enc[1..]).unwrap();
        assert_eq!(
            (d.index, d.count, d.size, d.name, d.data),
            (2, 3, 10, "a.txt", &b"xyz"[..])
        );
        assert!(decode_chunk(&enc[1..20]).is_none());
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name(""), "file");
    }
}
