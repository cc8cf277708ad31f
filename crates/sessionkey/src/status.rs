//! Live sessions of a running process, and the owner-only control socket that shows them
//! to `sessionkey status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
}

/// The live sessions of this process.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<u64, Entry>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// Removes its session from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.inner.lock() {
            map.remove(&self.key);
        }
    }
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
        if let Ok(mut map) = self.inner.lock() {
            map.insert(
                key,
                Entry {
                    tunnel: tunnel.to_string(),
                    role,
                    remote,
                    started: SystemTime::now(),
                    view,
                },
            );
        }
        Registration {
            registry: self.clone(),
            key,
        }
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
        json!({ "pid": std::process::id(), "sessions": sessions })
    }
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
