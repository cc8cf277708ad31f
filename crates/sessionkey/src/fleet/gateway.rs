//! A gateway's live copy of its group's authorized peers, kept from the fleet database.
//!
//! Fail-static: at start the list comes from the database, or (when it cannot be reached)
//! from the cache file the gateway wrote the last time it could; with neither, the gateway
//! does not start. While running, the gateway keeps the last list it read through an
//! outage, retries with backoff, and logs the outage and the recovery. With `fail_closed`
//! it refuses every new session while the database is away instead.
//!
//! Changes arrive by `LISTEN`: each notice for the group makes the gateway read the whole
//! list again and put it in its [`LivePeers`] (consulted at each handshake); keys that left
//! it go to [`LiveSessions::revoke`], which closes their live sessions. After a reconnect
//! the whole list is read before anything else is trusted.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::census;
use super::db::{FleetDb, FleetError, KickTarget, Notice, PeerRecord};
use super::tickets::{FleetTicketer, Kek};
use crate::status::Registry;
use crate::trust::{AuthorizedPeers, LivePeers, LiveSessions, PeerKey, TrustError};

/// How long a gateway waits for the database at start before it tries its cache.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a running gateway reads the whole list even without a notice: it notices a
/// silent outage that way, and catches up on any notice it missed.
pub const RECHECK: Duration = Duration::from_secs(5);

/// What a gateway needs to take its peers from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersOptions {
    /// `postgres://...`.
    pub url: String,
    /// The group of peers this gateway admits.
    pub group: String,
    /// Where the last list read is kept (mode 0600), for a start while the database is away.
    pub cache: PathBuf,
    /// Refuse every new session while the database cannot be reached.
    pub fail_closed: bool,
    /// The tunnel's name, for logs.
    pub tunnel: String,
    /// TLS: share session-ticket keys with the fleet, sealed under the key-encryption key
    /// in this file ([`super::tickets`]).
    pub ticket_key_file: Option<PathBuf>,
}

impl PeersOptions {
    /// The default cache file for `group` in the state directory `dir`.
    pub fn default_cache(dir: &Path, group: &str) -> PathBuf {
        dir.join(format!("fleet-peers-{group}.cache"))
    }
}

/// Whether a group name is one a gateway can use: 1 to 64 of `A-Z a-z 0-9 . _ -` (it
/// names the cache file).
pub fn check_group(group: &str) -> Result<(), String> {
    let ok = !group.is_empty()
        && group.len() <= 64
        && !group.starts_with('.')
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "group {group:?}: use 1 to 64 letters, digits, '.', '_' or '-' (not starting with '.')"
        ))
    }
}

struct Shared {
    options: PeersOptions,
    /// The last list read (from the database, or the cache at start).
    keys: RwLock<Arc<HashSet<PeerKey>>>,
    /// What handshakes consult: the list, or nothing while a fail-closed gateway has lost
    /// its database.
    admitted: LivePeers,
    sessions: LiveSessions,
    /// Session ids kicked fleet-wide, for whoever holds the sessions' registry.
    kicks: tokio::sync::broadcast::Sender<String>,
    up: AtomicBool,
    /// Seconds since 1970 of the list in use: its read from the database, or the cache's
    /// modification time.
    loaded_at: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("group", &self.options.group)
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

/// Stops a task when dropped.
#[derive(Debug)]
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A gateway's authorized peers from the fleet database (cheap to clone). Its tasks (the
/// follower of the database, the status heartbeat, the kicks) stop with the last handle.
#[derive(Debug, Clone)]
pub struct FleetPeers {
    shared: Arc<Shared>,
    ticketer: Option<Arc<FleetTicketer>>,
    _tasks: Arc<Vec<StopOnDrop>>,
}

impl FleetPeers {
    /// Read the list (from the database, else the cache) and start following changes:
    /// the list goes into `admitted`, and the sessions of each key that leaves it (in
    /// `sessions`) are closed. The tunnel's live sessions in `registry` are reported to the
    /// fleet status, and `sessionkey peers kick SESSION` closes them there. Fails when the
    /// database cannot be reached and there is no usable cache.
    pub async fn start(
        options: PeersOptions,
        admitted: LivePeers,
        sessions: LiveSessions,
        registry: Registry,
    ) -> Result<Self, StartError> {
        // A bad key file is a configuration mistake, found before anything is connected.
        let kek = options
            .ticket_key_file
            .as_deref()
            .map(Kek::read)
            .transpose()
            .map_err(StartError::TicketKey)?;
        let (db, keys, loaded_at) = match load_from_db(&options).await {
            Ok((db, records)) => {
                let keys = key_set(&records);
                write_cache(&options, &db, &records).map_err(StartError::Cache)?;
                tracing::info!(
                    tunnel = %options.tunnel,
                    group = %options.group,
                    peers = keys.len(),
                    "authorized peers read from the peers database {}",
                    db.url()
                );
                (Some(db), keys, now_secs(SystemTime::now()))
            }
            Err(e) if e.is_unreachable() => {
                let (keys, at) = match read_cache(&options.cache) {
                    Ok(cached) => cached,
                    Err(why) => {
                        return Err(StartError::NoDatabaseNoCache {
                            database: e,
                            cache: options.cache.clone(),
                            why,
                        })
                    }
                };
                tracing::warn!(
                    tunnel = %options.tunnel,
                    group = %options.group,
                    peers = keys.len(),
                    cache = %options.cache.display(),
                    "the peers database cannot be reached ({e}); starting with the cached list \
                     of {} (it is {}s old){}",
                    keys.len(),
                    now_secs(SystemTime::now()).saturating_sub(at),
                    if options.fail_closed {
                        "; fail_closed: no new session is admitted until the database is back"
                    } else {
                        ""
                    }
                );
                (None, keys, at)
            }
            Err(e) => return Err(StartError::Database(e)),
        };
        let up = db.is_some();
        admitted.replace(if up || !options.fail_closed {
            keys.clone()
        } else {
            HashSet::new()
        });
        let shared = Arc::new(Shared {
            up: AtomicBool::new(up),
            keys: RwLock::new(Arc::new(keys)),
            admitted,
            sessions,
            kicks: tokio::sync::broadcast::channel(64).0,
            loaded_at: AtomicU64::new(loaded_at),
            options,
        });
        let mut tasks = Vec::new();
        let mut ticketer = None;
        if let Some(kek) = kek {
            let shared_tickets = Arc::new(FleetTicketer::default());
            if let Some(db) = &db {
                let n = shared_tickets
                    .refresh(db, &kek)
                    .await
                    .map_err(StartError::Database)?;
                tracing::info!(tunnel = %shared.options.tunnel, keys = n, "TLS ticket keys read from the peers database");
            }
            let task = tokio::spawn(refresh_tickets(
                shared.options.clone(),
                shared_tickets.clone(),
                kek,
            ));
            tasks.push(StopOnDrop(task.abort_handle()));
            ticketer = Some(shared_tickets);
        }
        let kicks = shared.kicks.subscribe();
        let watcher = tokio::spawn(watch(shared.clone(), db));
        let heartbeat = tokio::spawn(census::report(
            shared.options.url.clone(),
            census::gateway_name(),
            shared.options.tunnel.clone(),
            registry.clone(),
        ));
        let kicker = tokio::spawn(close_kicked(kicks, registry));
        tasks.extend([watcher, heartbeat, kicker].map(|t| StopOnDrop(t.abort_handle())));
        Ok(Self {
            shared,
            ticketer,
            _tasks: Arc::new(tasks),
        })
    }

    /// The TLS ticketer shared with the fleet, when `ticket_key_file` is set.
    pub fn ticketer(&self) -> Option<Arc<FleetTicketer>> {
        self.ticketer.clone()
    }

    /// The set handshakes consult (filled from the database).
    pub fn peers(&self) -> &LivePeers {
        &self.shared.admitted
    }

    /// The sessions by key that a removal or a kick closes.
    pub fn sessions(&self) -> &LiveSessions {
        &self.shared.sessions
    }

    /// What it was started with.
    pub fn options(&self) -> &PeersOptions {
        &self.shared.options
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.shared.options.url
    }

    /// Whether `key` may open a session now.
    pub fn admits(&self, key: &PeerKey) -> bool {
        self.shared.admitted.contains(key)
    }

    /// Whether the database is reachable (as of the last attempt).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// How old the list in use is at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_secs(
            now_secs(now).saturating_sub(self.shared.loaded_at.load(Ordering::Relaxed)),
        )
    }

    /// How many keys are on the list.
    pub fn len(&self) -> usize {
        self.shared.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tunnel's name.
    pub fn tunnel(&self) -> &str {
        &self.shared.options.tunnel
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.shared.options.group
    }

    /// Whether new sessions are refused while the database is away.
    pub fn fail_closed(&self) -> bool {
        self.shared.options.fail_closed
    }
}

/// Read the fleet's ticket keys every [`REFRESH`](super::tickets::REFRESH), rotating when
/// due; a failure keeps the keys in hand and is retried.
async fn refresh_tickets(options: PeersOptions, ticketer: Arc<FleetTicketer>, kek: Kek) {
    let mut db: Option<FleetDb> = None;
    let mut tick = tokio::time::interval(super::tickets::REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if db.is_none() {
            db = FleetDb::open(&options.url, CONNECT_TIMEOUT).await.ok();
        }
        let Some(conn) = &db else { continue };
        if let Err(e) = ticketer.refresh(conn, &kek).await {
            tracing::warn!(tunnel = %options.tunnel, "cannot read the fleet's TLS ticket keys: {e}; keeping those in hand");
            if e.is_unreachable() {
                db = None;
            }
        }
    }
}

/// Close the sessions `peers kick SESSION` names, if this process holds them.
async fn close_kicked(mut kicks: tokio::sync::broadcast::Receiver<String>, registry: Registry) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match kicks.recv().await {
            Ok(id) => {
                if registry.close_session(&id) {
                    tracing::warn!(session = %id, "session {id} kicked by the operator: closed");
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} session kicks arrived faster than they were read; skipped")
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Why a gateway could not start with database peers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database is away and there is no usable cache.
    #[error(
        "{database}; and there is no usable cached list to start with ({}). A gateway \
         starts without its database only from the list it cached the last time it could \
         reach it",
        crate::tunnel::chain(why)
    )]
    NoDatabaseNoCache {
        /// The database's failure.
        database: FleetError,
        /// The cache file.
        cache: PathBuf,
        /// The cache's problem.
        why: TrustError,
    },
    /// The database refused a statement.
    #[error(transparent)]
    Database(FleetError),
    /// The cache file could not be written.
    #[error("cannot write the peers cache: {0}")]
    Cache(TrustError),
    /// The TLS ticket key-encryption key file is missing, open to others or malformed.
    #[error("{0}")]
    TicketKey(String),
}

impl StartError {
    /// Whether the database could not be reached (the CLI exits 69).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::NoDatabaseNoCache { .. } => true,
            Self::Database(e) => e.is_unreachable(),
            Self::Cache(_) | Self::TicketKey(_) => false,
        }
    }
}

fn now_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key_set(records: &[PeerRecord]) -> HashSet<PeerKey> {
    records.iter().map(|r| r.key).collect()
}

async fn load_from_db(options: &PeersOptions) -> Result<(FleetDb, Vec<PeerRecord>), FleetError> {
    let db = FleetDb::open(&options.url, CONNECT_TIMEOUT).await?;
    let records = db.peers(&options.group).await?;
    Ok((db, records))
}

/// Write the list as an authorized-peers file, mode 0600, replacing the old one at once.
fn write_cache(
    options: &PeersOptions,
    db: &FleetDb,
    records: &[PeerRecord],
) -> Result<(), TrustError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = &options.cache;
    let io = |source| TrustError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut text = format!(
        "# sessionkey: the authorized peers of group {:?} from {}, written by the gateway\n\
         # each time it reads them; used only when the database cannot be reached at start.\n",
        options.group,
        db.url()
    );
    for r in records {
        text.push_str(&r.key.to_line(&r.comment.replace(['\n', '\r'], " ")));
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The cached list and its age (modification time). A cache others may write is refused:
/// it decides who gets in.
fn read_cache(path: &Path) -> Result<(HashSet<PeerKey>, u64), TrustError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(TrustError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "group or others may read or write it; fix it with: chmod 600 {}",
                path.display()
            )),
        });
    }
    let peers = AuthorizedPeers::load(path)?;
    let at = meta.modified().map(now_secs).unwrap_or(0);
    Ok((peers.keys().copied().collect(), at))
}

/// Delays between reconnection attempts: doubling from a quarter second up to five.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    /// A fresh schedule.
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Follow the database: notices, rechecks, outages and reconnects.
async fn watch(shared: Arc<Shared>, mut db: Option<FleetDb>) {
    let options = shared.options.clone();
    let mut backoff = Backoff::new();
    let mut down_since: Option<SystemTime> =
        (!shared.up.load(Ordering::Relaxed)).then(SystemTime::now);
    let mut attempts = 0u32;
    loop {
        // (Re)connect: LISTEN first, then read the whole list, so no change falls between.
        let connected = async {
            let conn = match db.take() {
                Some(d) => d,
                None => FleetDb::open(&options.url, CONNECT_TIMEOUT).await?,
            };
            let listener = conn.listen().await?;
            let records = conn.peers(&options.group).await?;
            Ok::<_, FleetError>((conn, listener, records))
        }
        .await;
        let (conn, listener, records) = match connected {
            Ok(c) => c,
            Err(e) => {
                set_down(&shared);
                attempts += 1;
                let delay = backoff.next_delay();
                // Every attempt at first, then one line in ten: an outage is visible without
                // flooding the log.
                if attempts <= 3 || attempts % 10 == 0 {
                    tracing::warn!(
                        tunnel = %options.tunnel,
                        group = %options.group,
                        attempts,
                        "peers database unreachable: {e}; keeping the last list ({} peers){}; \
                         retrying in {delay:?}",
                        shared.keys.read().map(|k| k.len()).unwrap_or(0),
                        if options.fail_closed { ", refusing new sessions (fail_closed)" } else { "" },
                    );
                }
                down_since.get_or_insert_with(SystemTime::now);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        apply(&shared, &records);
        if let Err(e) = write_cache(&options, &conn, &records) {
            tracing::warn!(tunnel = %options.tunnel, "cannot write the peers cache: {e}");
        }
        shared.up.store(true, Ordering::Relaxed);
        if let Some(since) = down_since.take() {
            tracing::warn!(
                tunnel = %options.tunnel,
                group = %options.group,
                peers = records.len(),
                "peers database reachable again after {}s; the whole list was read again",
                SystemTime::now().duration_since(since).unwrap_or_default().as_secs()
            );
        }
        backoff = Backoff::new();
        attempts = 0;
        let lost = follow(&shared, &conn, listener).await;
        set_down(&shared);
        down_since = Some(SystemTime::now());
        tracing::warn!(
            tunnel = %options.tunnel,
            group = %options.group,
            "lost the peers database: {lost}; keeping the last list{}",
            if options.fail_closed { ", refusing new sessions (fail_closed)" } else { "" },
        );
        // The pool may hold broken connections: start from a fresh one.
        conn.pool().close().await;
    }
}

/// Handle notices and rechecks until the connection is lost; returns why.
async fn follow(shared: &Shared, db: &FleetDb, mut listener: sqlx::postgres::PgListener) -> String {
    // try_recv is not cancel-safe: it runs in a task of its own, feeding a channel.
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let reader = tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if tx.send(n.payload().to_string()).await.is_err() {
                        return String::new();
                    }
                }
                Ok(None) => return "the notification connection closed".to_string(),
                Err(e) => return e.to_string(),
            }
        }
    });
    let _stop = StopOnDrop(reader.abort_handle());
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    loop {
        let reload = tokio::select! {
            payload = rx.recv() => match payload {
                Some(p) => handle(shared, &p, db.schema()),
                None => break,
            },
            _ = recheck.tick() => true,
        };
        if reload {
            match db.peers(&shared.options.group).await {
                Ok(records) => {
                    apply(shared, &records);
                    if let Err(e) = write_cache(&shared.options, db, &records) {
                        tracing::warn!(tunnel = %shared.options.tunnel, "cannot write the peers cache: {e}");
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
    }
    reader.await.unwrap_or_else(|e| e.to_string())
}

/// Act on a notice; whether the list must be read again (a change to this gateway's
/// schema and group). A payload that does not parse is logged and read as a reason to
/// reload (the recheck would anyway).
fn handle(shared: &Shared, payload: &str, schema: &str) -> bool {
    let notice = match serde_json::from_str::<Notice>(payload) {
        Ok(n) if n.schema() != schema => return false,
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("peers database: an unreadable notice ({e}); reading the list again");
            return true;
        }
    };
    match notice {
        Notice::Peers { group, .. } => group == shared.options.group,
        Notice::Kick {
            target: KickTarget::Key(fingerprint),
            ..
        } => {
            let keys = shared.keys.read().map(|k| k.clone()).unwrap_or_default();
            for key in keys
                .iter()
                .filter(|k| k.fingerprint().to_string() == fingerprint)
            {
                let closed = shared.sessions.revoke(key);
                tracing::warn!(
                    tunnel = %shared.options.tunnel,
                    key = %fingerprint,
                    closed,
                    "kicked: {closed} live session(s) of {fingerprint} closed (the key stays authorized)"
                );
            }
            false
        }
        Notice::Kick {
            target: KickTarget::Session(id),
            ..
        } => {
            // No receiver: nothing holds sessions to close.
            let _ = shared.kicks.send(id);
            false
        }
    }
}

/// The database is away: a fail-closed gateway admits no one until it is back (live
/// sessions go on).
fn set_down(shared: &Shared) {
    let was_up = shared.up.swap(false, Ordering::Relaxed);
    if was_up && shared.options.fail_closed {
        // Not revoked: the keys are not known to be removed, only unconfirmed.
        shared.admitted.replace([]);
    }
}

/// Put a freshly read list in place; the live sessions of keys that left it are closed.
fn apply(shared: &Shared, records: &[PeerRecord]) {
    let new = Arc::new(key_set(records));
    let old = match shared.keys.write() {
        Ok(mut keys) => std::mem::replace(&mut *keys, new.clone()),
        Err(_) => return,
    };
    shared.admitted.replace(new.iter().copied());
    shared
        .loaded_at
        .store(now_secs(SystemTime::now()), Ordering::Relaxed);
    for key in old.difference(&new) {
        let closed = shared.sessions.revoke(key);
        tracing::warn!(
            tunnel = %shared.options.tunnel,
            group = %shared.options.group,
            key = %key.fingerprint(),
            closed,
            "peer key {} removed from the peers database: refused from now on, {closed} live \
             session(s) closed",
            key.fingerprint()
        );
    }
    for key in new.difference(&old) {
        tracing::info!(
            tunnel = %shared.options.tunnel,
            group = %shared.options.group,
            key = %key.fingerprint(),
            "peer key {} added in the peers database: admitted from now on",
            key.fingerprint()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn group_names_are_file_name_safe() {
        for ok in ["default", "web-1", "eu.west_2"] {
            assert!(check_group(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "with space", &"x".repeat(65)] {
            assert!(check_group(bad).is_err(), "{bad:?}");
        }
    }

    fn shared(group: &str, keys: &[PeerKey]) -> Shared {
        Shared {
            options: PeersOptions {
                url: String::new(),
                group: group.into(),
                cache: PathBuf::new(),
                fail_closed: false,
                tunnel: "t".into(),
                ticket_key_file: None,
            },
            keys: RwLock::new(Arc::new(keys.iter().copied().collect())),
            admitted: LivePeers::from_keys(keys.iter().copied()),
            sessions: LiveSessions::default(),
            kicks: tokio::sync::broadcast::channel(4).0,
            up: AtomicBool::new(true),
            loaded_at: AtomicU64::new(0),
        }
    }

    fn key(b: u8) -> PeerKey {
        PeerKey::Native(sessionkey_proto::keys::PublicKey::from_bytes([b; 32]))
    }

    fn json(n: &Notice) -> String {
        serde_json::to_string(n).unwrap()
    }

    #[test]
    fn notices_of_other_schemas_and_groups_are_ignored() {
        let s = shared("web", &[]);
        let n = |schema: &str, group: &str| {
            json(&Notice::Peers {
                schema: schema.into(),
                group: group.into(),
            })
        };
        assert!(handle(&s, &n("s1", "web"), "s1"));
        assert!(!handle(&s, &n("s2", "web"), "s1"));
        assert!(!handle(&s, &n("s1", "db"), "s1"));
        assert!(handle(&s, "not json", "s1"));
    }

    #[test]
    fn a_kick_closes_the_sessions_of_its_key_or_names_its_session() {
        let s = shared("web", &[key(1), key(2)]);
        let (a, b) = (s.sessions.register(key(1)), s.sessions.register(key(2)));
        let kick = |target| {
            json(&Notice::Kick {
                schema: "s1".into(),
                target,
            })
        };
        let fingerprint = key(1).fingerprint().to_string();
        assert!(!handle(
            &s,
            &kick(KickTarget::Key(fingerprint.clone())),
            "s2"
        ));
        assert!(!a.is_revoked(), "another schema's kick");
        assert!(!handle(&s, &kick(KickTarget::Key(fingerprint)), "s1"));
        assert!(a.is_revoked() && !b.is_revoked());
        // Still authorized: a kick is not a removal.
        assert!(s.admitted.contains(&key(1)));
        let mut ids = s.kicks.subscribe();
        assert!(!handle(&s, &kick(KickTarget::Session("00ff".into())), "s1"));
        assert_eq!(ids.try_recv().unwrap(), "00ff");
    }
}
