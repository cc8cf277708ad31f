//! The control socket of a running VPN, for `sessionkey vpn show` and `vpn down`: an
//! owner-only Unix socket `<control dir>/vpn/NAME.sock` (the directory of
//! [`status::control_dir`](crate::status::control_dir)). A client sends one line, `show` or
//! `down`; the VPN answers with JSON (public keys, fingerprints, counters; never keys).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use super::device::Device;

/// Where the VPNs' control sockets live.
pub fn vpn_control_dir() -> PathBuf {
    crate::status::control_dir().join("vpn")
}

fn socket_path(name: &str) -> PathBuf {
    vpn_control_dir().join(format!("{name}.sock"))
}

/// A running control socket; removed when dropped.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serve `dev`'s status; `down` notifies `stop`. The socket holds the device weakly, so the
/// device (and its interface) goes away when its owner drops it.
pub(crate) async fn serve(dev: &Arc<Device>, stop: Arc<Notify>) -> io::Result<ControlSocket> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = vpn_control_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = socket_path(&dev.name);
    if UnixStream::connect(&path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "a VPN named {} is already running (control socket {}); stop it with: \
                 sessionkey vpn down {}",
                dev.name,
                path.display(),
                dev.name
            ),
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let weak = Arc::downgrade(dev);
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let dev = weak.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = answer(conn, &dev, &stop).await;
            });
        }
    });
    Ok(ControlSocket { path, task })
}

async fn answer(conn: UnixStream, dev: &Weak<Device>, stop: &Notify) -> io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    BufReader::new(read.take(64)).read_line(&mut line).await?;
    let Some(dev) = dev.upgrade() else {
        return Ok(());
    };
    let body = match line.trim() {
        "show" => dev.snapshot().to_string(),
        "down" => {
            stop.notify_one();
            serde_json::json!({ "interface": dev.name, "stopping": true }).to_string()
        }
        other => serde_json::json!({ "error": format!("unknown command {other:?}") }).to_string(),
    };
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

async fn ask(path: &Path, command: &str) -> io::Result<Value> {
    let mut conn = UnixStream::connect(path).await?;
    conn.write_all(format!("{command}\n").as_bytes()).await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    serde_json::from_str(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The status of the running VPN `name`, or of every running VPN.
pub async fn show(name: Option<&str>) -> io::Result<Vec<Value>> {
    let mut paths = Vec::new();
    match name {
        Some(n) => paths.push(socket_path(n)),
        None => match std::fs::read_dir(vpn_control_dir()) {
            Ok(entries) => paths.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "sock")),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        },
    }
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        match ask(&path, "show").await {
            Ok(v) => out.push(v),
            Err(e) if name.is_some() => return Err(not_running(name.unwrap_or_default(), e)),
            // A process that died without cleaning up.
            Err(_) => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(out)
}

/// No VPN of that name is running (its control socket is missing or dead). Carried inside
/// an [`io::Error`] of kind `NotFound`; the CLI exits with 69 (unavailable) for it.
#[derive(Debug, thiserror::Error)]
#[error("no running VPN named {name} ({cause}); `sessionkey vpn show` lists the running ones")]
pub struct NotRunning {
    /// The name asked for.
    pub name: String,
    /// Why its control socket did not answer.
    pub cause: io::Error,
}

fn not_running(name: &str, e: io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        NotRunning {
            name: name.to_string(),
            cause: e,
        },
    )
}

/// Ask the running VPN `name` to stop, and wait until its control socket is gone (it has
/// removed its interface by then).
pub async fn down(name: &str) -> io::Result<()> {
    let path = socket_path(name);
    ask(&path, "down").await.map_err(|e| not_running(name, e))?;
    for _ in 0..100 {
        if !path.exists() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the VPN {name} was asked to stop but is still running after 5 s"),
    ))
}
