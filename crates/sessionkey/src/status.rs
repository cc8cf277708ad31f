//! Live sessions of a running process, and the owner-only control socket that shows them
//! to `sessionkey status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::metrics::histogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::StatusCell;

/// A live session as the status view shows it: fingerprints and counters, never keys.
pub trait SessionView: Send + Sync + std::fmt::Debug {
    /// The session's fields, or `None` before it is established.
    fn json(&self) -> Option<Value>;
}

impl SessionView for StatusCell {
    fn json(&self) -> Option<Value> {
        let info = self.get()?;
        let mut v = json!({
            "transport": "native",
            "session": format!("{:016x}", info.id),
            "fingerprint": info.fingerprint.to_string(),
            "peer": info.peer.map(|p| p.fingerprint().to_string()),
            "suite": info.suite.name(),
            "pattern": info.pattern.name(),
            "hybrid": info.hybrid,
            "rehandshakes": info.rehandshakes,
        });
        for (name, d) in [("send", info.send), ("receive", info.receive)] {
            v[name] = json!({
                "epoch": d.epoch,
                "key": d.key_fingerprint.short(),
                "bytes": d.bytes,
                "records": d.records,
                "records_this_key": d.records_this_key,
            });
        }
        v["next_rehandshake_secs"] = json!(info.next_rehandshake.map(|t| t
            .saturating_duration_since(std::time::Instant::now())
            .as_secs()));
        v["key_age_secs"] = json!(self.key_age().map(|a| a.as_secs_f64()));
        v["failed_decryptions"] = json!(info.failed_decryptions);
        v["forced_key_updates"] = json!(self.forced_updates());
        // How much of the sending key's AEAD limit is used (it is replaced at half).
        let limit = self.record_limit().unwrap_or(u64::MAX).max(1);
        v["aead_limit_used"] = json!(info.send.records_this_key as f64 / limit as f64);
        Some(v)
    }
}

/// One live session.
#[derive(Debug, Clone)]
struct Entry {
    tunnel: String,
    role: &'static str,
    remote: SocketAddr,
    started: SystemTime,
    view: Arc<dyn SessionView>,
    close: Arc<CloseRequest>,
}

/// An operator's request to close one session ([`Registry::close_session`]).
#[derive(Debug, Default)]
struct CloseRequest {
    requested: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

/// The live sessions of this process.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<u64, Entry>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
    /// What ended sessions carried, by tunnel, role and transport: folded in when each
    /// session ends, so that the metrics' totals never go down.
    ended: Arc<Mutex<BTreeMap<SeriesKey, Counts>>>,
    /// Handshakes by tunnel, result and reason (see [`Registry::count_handshake`]).
    handshakes: Arc<Mutex<BTreeMap<HandshakeKey, u64>>>,
    /// The fleet databases servers take their peers from (see [`Registry::add_fleet`]).
    fleets: Arc<Mutex<BTreeMap<String, crate::fleet::gateway::FleetPeers>>>,
    /// When the running configuration was loaded (at start, then at each reload).
    loaded: Arc<Mutex<Option<SystemTime>>>,
    /// Failed `accept` calls by tunnel (out of descriptors, aborted connections).
    accept_errors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Server handshake durations by tunnel and result (`ok`, `failed`).
    handshake_durations: Arc<Mutex<BTreeMap<(String, &'static str), Histogram>>>,
}

/// Buckets of the handshake duration histogram, in seconds: 1 ms to about 8 s.
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14)
}

/// The labels of a handshake count: tunnel name, result (`ok`, `failed`, `refused`) and
/// reason (`none`, or a fixed word such as `key_not_authorized` or `max_handshakes`).
pub type HandshakeKey = (String, &'static str, &'static str);

/// The labels of one series: tunnel name, role, transport. Never a key or an address.
pub type SeriesKey = (String, &'static str, String);

/// Session counters summed over sessions (live or ended) of one [`SeriesKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sessions (live ones in [`Registry::series`]; ended ones in its totals).
    pub sessions: u64,
    /// Established sessions since start, live and ended.
    pub established: u64,
    /// Plaintext bytes sent.
    pub bytes_sent: u64,
    /// Plaintext bytes received.
    pub bytes_received: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Records received.
    pub records_received: u64,
    /// Re-handshakes (native transport).
    pub rehandshakes: u64,
    /// Sending-key updates (not counting re-handshakes).
    pub key_updates_sent: u64,
    /// Receiving-key updates (native transport; TLS does not tell).
    pub key_updates_received: u64,
    /// Sending-key updates forced by the AEAD usage limit.
    pub forced_key_updates: u64,
    /// Records that failed to decrypt (native transport; TLS ends the session at the first).
    pub failed_decryptions: u64,
}

impl Counts {
    fn add_view(&mut self, v: &Value) {
        let n = |x: &Value| x.as_u64().unwrap_or(0);
        let rehandshakes = n(&v["rehandshakes"]);
        self.bytes_sent += n(&v["send"]["bytes"]);
        self.bytes_received += n(&v["receive"]["bytes"]);
        self.records_sent += n(&v["send"]["records"]);
        self.records_received += n(&v["receive"]["records"]);
        self.rehandshakes += rehandshakes;
        // An epoch moves at each key update and each re-handshake.
        self.key_updates_sent += n(&v["send"]["epoch"]).saturating_sub(rehandshakes);
        self.key_updates_received += n(&v["receive"]["epoch"]).saturating_sub(rehandshakes);
        self.forced_key_updates += n(&v["forced_key_updates"]);
        self.failed_decryptions += n(&v["failed_decryptions"]);
    }
}

/// One series of [`Registry::series`]: live sessions and the totals since start.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Tunnel, role, transport.
    pub key: SeriesKey,
    /// Live sessions now.
    pub live: u64,
    /// Totals over live and ended sessions (its `sessions` field: ended sessions).
    pub totals: Counts,
    /// The age of the oldest sending key among live sessions, in seconds.
    pub oldest_key_secs: f64,
    /// The largest share of its AEAD limit a live sending key has used (native).
    pub aead_limit_used: f64,
}

/// Removes its session from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    key: u64,
    close: Arc<CloseRequest>,
}

impl Registration {
    /// Resolves once the session is asked to close ([`Registry::close_session`]); the
    /// session's task waits on it beside its data.
    pub async fn close_requested(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.close.notify.notified();
            tokio::pin!(notified);
            // A waiter before the flag is read: no request is missed.
            notified.as_mut().enable();
            if self.close.requested.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let entry = match self.registry.inner.lock() {
            Ok(mut map) => map.remove(&self.key),
            Err(_) => None,
        };
        // Fold what the session carried into the totals (outside the sessions' lock).
        if let Some(e) = entry {
            let view = e.view.json();
            let key = series_key(&e, view.as_ref());
            if let Ok(mut ended) = self.registry.ended.lock() {
                let counts = ended.entry(key).or_default();
                counts.sessions += 1;
                if let Some(v) = &view {
                    counts.established += 1;
                    counts.add_view(v);
                }
            }
        }
    }
}

fn series_key(e: &Entry, view: Option<&Value>) -> SeriesKey {
    let transport = view
        .and_then(|v| v["transport"].as_str())
        .unwrap_or("native")
        .to_string();
    (e.tunnel.clone(), e.role, transport)
}

impl Registry {
    /// Register a session until the returned guard is dropped.
    pub fn register(
        &self,
        tunnel: &str,
        role: &'static str,
        remote: SocketAddr,
        view: Arc<dyn SessionView>,
    ) -> Registration {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = Arc::new(CloseRequest::default());
        if let Ok(mut map) = self.inner.lock() {
            map.insert(
                key,
                Entry {
                    tunnel: tunnel.to_string(),
                    role,
                    remote,
                    started: SystemTime::now(),
                    view,
                    close: close.clone(),
                },
            );
        }
        Registration {
            registry: self.clone(),
            key,
            close,
        }
    }

    /// Ask the live session whose id (as `status` shows it) is `id` to close; whether this
    /// process has it.
    pub fn close_session(&self, id: &str) -> bool {
        let entries: Vec<Entry> = self
            .inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut found = false;
        for e in entries {
            if e.view.json().is_some_and(|v| v["session"] == id) {
                e.close
                    .requested
                    .store(true, std::sync::atomic::Ordering::Release);
                e.close.notify.notify_waiters();
                found = true;
            }
        }
        found
    }

    /// Count a failed `accept` of `tunnel`.
    pub fn count_accept_error(&self, tunnel: &str) {
        if let Ok(mut map) = self.accept_errors.lock() {
            *map.entry(tunnel.to_string()).or_default() += 1;
        }
    }

    /// Failed `accept` calls by tunnel since start.
    pub fn accept_errors(&self) -> Vec<(String, u64)> {
        self.accept_errors
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Record how long a server handshake of `tunnel` took (once per handshake).
    pub fn observe_handshake(&self, tunnel: &str, ok: bool, took: std::time::Duration) {
        let result = if ok { "ok" } else { "failed" };
        if let Ok(mut map) = self.handshake_durations.lock() {
            map.entry((tunnel.to_string(), result))
                .or_insert_with(|| Histogram::new(duration_buckets()))
                .observe(took.as_secs_f64());
        }
    }

    /// The handshake duration histograms by tunnel and result (clones share the counts).
    pub fn handshake_durations(&self) -> Vec<((String, &'static str), Histogram)> {
        self.handshake_durations
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Record when the running configuration was loaded (shown by `status`).
    pub fn set_loaded(&self, at: SystemTime) {
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = Some(at);
        }
    }

    /// When the running configuration was loaded, if this process has one.
    pub fn loaded(&self) -> Option<SystemTime> {
        self.loaded.lock().ok().and_then(|l| *l)
    }

    /// Count one handshake of `tunnel`: `result` and `reason` are fixed words, never a
    /// key or an address (they become metric labels).
    pub fn count_handshake(&self, tunnel: &str, result: &'static str, reason: &'static str) {
        if let Ok(mut map) = self.handshakes.lock() {
            *map.entry((tunnel.to_string(), result, reason)).or_default() += 1;
        }
    }

    /// Show a server's fleet database (up or not, the age of its list) in status and
    /// metrics, in place of the tunnel's previous one.
    pub fn add_fleet(&self, fleet: crate::fleet::gateway::FleetPeers) {
        if let Ok(mut fleets) = self.fleets.lock() {
            fleets.insert(fleet.tunnel().to_string(), fleet);
        }
    }

    /// Stop showing (and holding) the fleet database of `tunnel` (it stopped).
    pub fn remove_fleet(&self, tunnel: &str) {
        if let Ok(mut fleets) = self.fleets.lock() {
            fleets.remove(tunnel);
        }
    }

    /// The fleet databases servers take their peers from.
    pub fn fleets(&self) -> Vec<crate::fleet::gateway::FleetPeers> {
        self.fleets
            .lock()
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The handshake counts since start.
    pub fn handshakes(&self) -> Vec<(HandshakeKey, u64)> {
        self.handshakes
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Live sessions and totals since start, by tunnel, role and transport (for metrics:
    /// read at scrape time from the counters sessions keep anyway, so the data path pays
    /// nothing for them).
    pub fn series(&self) -> Vec<Series> {
        let live = self.inner.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out: BTreeMap<SeriesKey, Series> = BTreeMap::new();
        if let Ok(ended) = self.ended.lock() {
            for (key, counts) in ended.iter() {
                out.insert(
                    key.clone(),
                    Series {
                        key: key.clone(),
                        live: 0,
                        totals: *counts,
                        oldest_key_secs: 0.0,
                        aead_limit_used: 0.0,
                    },
                );
            }
        }
        for e in live.values() {
            let view = e.view.json();
            let key = series_key(e, view.as_ref());
            let series = out.entry(key.clone()).or_insert_with(|| Series {
                key,
                live: 0,
                totals: Counts::default(),
                oldest_key_secs: 0.0,
                aead_limit_used: 0.0,
            });
            if let Some(v) = &view {
                series.live += 1;
                series.totals.established += 1;
                series.totals.add_view(v);
                let f = |x: &Value| x.as_f64().unwrap_or(0.0);
                series.oldest_key_secs = series.oldest_key_secs.max(f(&v["key_age_secs"]));
                series.aead_limit_used = series.aead_limit_used.max(f(&v["aead_limit_used"]));
            }
        }
        out.into_values().collect()
    }

    /// Every live session as JSON (fingerprints and counters, never keys).
    pub fn snapshot(&self) -> Value {
        let now = SystemTime::now();
        let map = self.inner.lock().map(|m| m.clone()).unwrap_or_default();
        let sessions: Vec<Value> = map
            .values()
            .map(|e| {
                let age = now.duration_since(e.started).unwrap_or_default().as_secs();
                let mut v = json!({
                    "tunnel": e.tunnel,
                    "role": e.role,
                    "remote": e.remote.to_string(),
                    "age_secs": age,
                });
                if let (Some(Value::Object(fields)), Value::Object(base)) = (e.view.json(), &mut v)
                {
                    base.extend(fields);
                }
                v
            })
            .collect();
        let fleets: Vec<Value> = self
            .fleets()
            .iter()
            .map(|f| {
                json!({
                    "tunnel": f.tunnel(),
                    "group": f.group(),
                    "database_up": f.is_up(),
                    "list_age_secs": f.age(now).as_secs(),
                    "peers": f.len(),
                    "fail_closed": f.fail_closed(),
                })
            })
            .collect();

        let mut v =
            json!({ "pid": std::process::id(), "sessions": sessions, "peers_databases": fleets });
        if let Some(at) = self.loaded() {
            let unix = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            v["config_loaded_unix"] = json!(unix);
            v["config_loaded"] = json!(utc_text(unix));
        }
        v
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (days to a civil date as in Howard
/// Hinnant's `civil_from_days`).
pub fn utc_text(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The directory of control sockets: `$XDG_RUNTIME_DIR/sessionkey`, else
/// `/run/sessionkey` (root) or `/tmp/sessionkey-UID`.
pub fn control_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("sessionkey");
    }
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    match uid {
        Ok(0) => PathBuf::from("/run/sessionkey"),
        Ok(uid) => PathBuf::from(format!("/tmp/sessionkey-{uid}")),
        Err(_) => PathBuf::from("/tmp/sessionkey"),
    }
}

/// Refuse a control directory that is not this user's own: a directory another user made
/// first (in `/tmp`, anyone can) could hold their sockets, or let them replace ours.
pub fn check_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("not a directory (a symbolic link?); remove it".into());
    }
    if meta.uid() != me {
        return refuse(format!(
            "owned by uid {}, not by this user (uid {me}); someone else made it: remove it, \
             or set XDG_RUNTIME_DIR to a private directory",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o700 {
        return refuse(format!(
            "mode {mode:03o}, but it must be private; fix it with: chmod 700 {}",
            dir.display()
        ));
    }
    Ok(())
}

/// Serve `registry` on an owner-only Unix socket in [`control_dir`]; returns its path. The
/// socket is removed when the returned guard is dropped.
pub fn serve(registry: Registry) -> std::io::Result<ControlSocket> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = control_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    check_private_dir(&dir)?;
    let path = dir.join(format!("{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = registry.snapshot().to_string();
            tokio::spawn(async move {
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(ControlSocket { path, task })
}

/// A running control socket.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Ask every running process's control socket for its sessions.
pub async fn query_all() -> std::io::Result<Vec<Value>> {
    use tokio::io::AsyncReadExt;
    let dir = control_dir();
    let mut out = Vec::new();
    match check_private_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        let Ok(mut conn) = tokio::net::UnixStream::connect(&path).await else {
            // A process that died without cleaning up.
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let mut body = String::new();
        conn.read_to_string(&mut body).await?;
        if let Ok(v) = serde_json::from_str(&body) {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_matches_known_dates() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        // date -u -d @951782400: the leap day of a century divisible by 400.
        assert_eq!(utc_text(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_text(1_796_526_045), "2026-12-06T03:00:45Z");
    }
}
