//! The control socket of a running VPN, for `sessionkey vpn show`, `set`, `syncconf` and
//! `down`: an owner-only Unix socket `<control dir>/vpn/NAME.sock` (the directory of
//! [`status::control_dir`](crate::status::control_dir)). A client sends one line: `show`,
//! `down`, `set {JSON}` or `syncconf {JSON}`; the VPN answers with JSON (public keys,
//! fingerprints, counters; never keys). `syncconf` carries the peers of a configuration
//! file the client read (it may be root-only, and the VPN may have dropped root), with
//! their pre-shared keys: only root can connect (the socket is 0600 in a 0700 directory),
//! as with WireGuard's control socket, and both sides hold that line in zeroized buffers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use sessionkey_proto::keys::PublicKey;
use sessionkey_proto::vpn::Cidr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use super::device::{Device, PeerChange};
use super::{PeerEntry, VpnConfig};

/// The longest command line a client may send.
const MAX_COMMAND: u64 = 64 << 10;

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
    // May hold pre-shared keys (syncconf): zeroized, and sized so it never reallocates.
    let mut line = Zeroizing::new(String::with_capacity(MAX_COMMAND as usize + 1));
    BufReader::new(read.take(MAX_COMMAND))
        .read_line(&mut line)
        .await?;
    let Some(dev) = dev.upgrade() else {
        return Ok(());
    };
    let (command, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let body = match command {
        "show" => dev.snapshot().to_string(),
        "down" => {
            stop.notify_one();
            json!({ "interface": dev.name, "stopping": true }).to_string()
        }
        "set" => {
            let r = reply(parse_change(arg).and_then(|c| dev.set_peer(c)));
            // A new or changed peer may want a handshake or keepalive now.
            dev.timers.arm(std::time::Instant::now());
            r
        }
        "syncconf" => {
            let r = reply(parse_peers(arg).and_then(|peers| dev.sync_peers(peers)));
            dev.timers.arm(std::time::Instant::now());
            r
        }
        other => json!({ "error": format!("unknown command {other:?}") }).to_string(),
    };
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

fn reply(result: Result<String, String>) -> String {
    match result {
        Ok(done) => json!({ "ok": done }).to_string(),
        Err(e) => json!({ "error": e }).to_string(),
    }
}

/// A `set` command's JSON, as [`change_json`] writes it.
fn parse_change(arg: &str) -> Result<PeerChange, String> {
    let v: Value = serde_json::from_str(arg).map_err(|e| format!("bad set command: {e}"))?;
    let public_key: PublicKey = v["public_key"]
        .as_str()
        .ok_or("set needs a public_key")?
        .parse()
        .map_err(|e| format!("public key: {e}"))?;
    let allowed_ips = match &v["allowed_ips"] {
        Value::Null => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|c| {
                    c.as_str()
                        .unwrap_or_default()
                        .parse::<Cidr>()
                        .map_err(|e| format!("allowed-ips {c}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => return Err("allowed_ips must be a list".into()),
    };
    let endpoint = match &v["endpoint"] {
        Value::Null => None,
        e => Some(
            e.as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e| format!("endpoint: {e}"))?,
        ),
    };
    let persistent_keepalive = v["persistent_keepalive"]
        .as_u64()
        .map(|s| (s > 0).then(|| std::time::Duration::from_secs(s)));
    Ok(PeerChange {
        public_key: Some(public_key),
        remove: v["remove"].as_bool().unwrap_or(false),
        allowed_ips,
        endpoint,
        persistent_keepalive,
        endpoint_host: v["endpoint_host"].as_str().map(str::to_string),
    })
}

/// One peer of a `syncconf` line, borrowed from the (zeroized) line: the pre-shared key is
/// never copied before it is decoded.
#[derive(serde::Deserialize)]
struct SyncPeer<'a> {
    public_key: &'a str,
    #[serde(borrow)]
    psk: Option<&'a str>,
    endpoint: Option<String>,
    endpoint_host: Option<String>,
    #[serde(borrow)]
    allowed_ips: Vec<&'a str>,
    persistent_keepalive: Option<u64>,
}

#[derive(serde::Deserialize)]
struct SyncPeers<'a> {
    #[serde(borrow)]
    peers: Vec<SyncPeer<'a>>,
}

/// A `syncconf` line's peers, as [`syncconf`] writes them.
fn parse_peers(arg: &str) -> Result<Vec<PeerEntry>, String> {
    let sync: SyncPeers<'_> =
        serde_json::from_str(arg).map_err(|e| format!("bad syncconf command: {e}"))?;
    let mut peers = Vec::new();
    for p in sync.peers {
        let psk = match p.psk {
            None => None,
            Some(b64) => {
                let bytes = Zeroizing::new(
                    STANDARD
                        .decode(b64)
                        .map_err(|_| "a pre-shared key is not base64".to_string())?,
                );
                let key: [u8; 32] = bytes[..]
                    .try_into()
                    .map_err(|_| "a pre-shared key is not 32 bytes".to_string())?;
                let psk = sessionkey_proto::keys::Psk::from_bytes(key);
                let mut key = key;
                zeroize::Zeroize::zeroize(&mut key);
                Some(psk)
            }
        };
        peers.push(PeerEntry {
            public_key: p
                .public_key
                .parse()
                .map_err(|e| format!("public key {}: {e}", p.public_key))?,
            endpoint: p
                .endpoint
                .map(|e| e.parse().map_err(|err| format!("endpoint {e}: {err}")))
                .transpose()?,
            endpoint_host: p.endpoint_host,
            allowed_ips: p
                .allowed_ips
                .iter()
                .map(|c| {
                    c.parse::<Cidr>()
                        .map_err(|e| format!("allowed ip {c}: {e}"))
                })
                .collect::<Result<_, _>>()?,
            psk,
            psk_file: None,
            persistent_keepalive: p.persistent_keepalive.map(std::time::Duration::from_secs),
        });
    }
    Ok(peers)
}

fn change_json(change: &PeerChange) -> Value {
    json!({
        "public_key": change.public_key.map(|k| k.to_base64()),
        "remove": change.remove,
        "allowed_ips": change.allowed_ips.as_ref().map(|a| a.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
        "endpoint": change.endpoint.map(|e| e.to_string()),
        "endpoint_host": change.endpoint_host,
        "persistent_keepalive": change.persistent_keepalive.map(|k| k.map_or(0, |d| d.as_secs())),
    })
}

/// What a change command answered: its summary, or the VPN's refusal as an error of kind
/// `InvalidInput`.
fn answered(v: Value) -> io::Result<String> {
    match (v["ok"].as_str(), v["error"].as_str()) {
        (Some(ok), _) => Ok(ok.to_string()),
        (_, Some(e)) => Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {v}"),
        )),
    }
}

/// Add, change or remove one peer of the running VPN `name` (`vpn set`); the other peers'
/// sessions are untouched. Returns what was done.
pub async fn set(name: &str, change: &PeerChange) -> io::Result<String> {
    let path = socket_path(name);
    let v = ask(&path, &format!("set {}", change_json(change)))
        .await
        .map_err(|e| not_running(name, e))?;
    answered(v)
}

/// Make the running VPN `name`'s peers those of `config` (`vpn syncconf`): new peers
/// added, missing ones removed, the others changed in place with their sessions kept.
/// Interface settings are not sent. The line carries the pre-shared keys; it is built in
/// a zeroized buffer sized so it never reallocates.
pub async fn syncconf(name: &str, config: &VpnConfig) -> io::Result<String> {
    let text = |s: Option<String>| serde_json::to_string(&s).unwrap_or_else(|_| "null".into());
    let mut heads = Vec::new();
    for p in &config.peers {
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        heads.push(format!(
            "{{\"public_key\":\"{}\",\"endpoint\":{},\"endpoint_host\":{},\"allowed_ips\":{},\
             \"persistent_keepalive\":{},\"psk\":",
            p.public_key.to_base64(),
            text(p.endpoint.map(|e| e.to_string())),
            text(p.endpoint_host.clone()),
            serde_json::to_string(&ips).unwrap_or_else(|_| "[]".into()),
            p.persistent_keepalive
                .map_or("null".to_string(), |d| d.as_secs().to_string()),
        ));
    }
    let capacity = 64 + heads.iter().map(|h| h.len() + 64).sum::<usize>();
    let mut line = Zeroizing::new(String::with_capacity(capacity));
    line.push_str("syncconf {\"peers\":[");
    for (i, (head, p)) in heads.iter().zip(&config.peers).enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(head);
        match &p.psk_file {
            // The file's base64 text, as VpnConfig::load validated it (no JSON escapes).
            Some(file) if p.psk.is_some() => {
                let b64 = Zeroizing::new(std::fs::read_to_string(file)?);
                let b64 = b64.trim();
                if b64.len() != 44
                    || !b64
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} changed while being read", file.display()),
                    ));
                }
                line.push('"');
                line.push_str(b64);
                line.push('"');
            }
            _ => line.push_str("null"),
        }
        line.push('}');
    }
    line.push_str("]}");
    let path = socket_path(name);
    let v = ask(&path, &line).await.map_err(|e| not_running(name, e))?;
    answered(v)
}

async fn ask(path: &Path, command: &str) -> io::Result<Value> {
    let mut conn = UnixStream::connect(path).await?;
    conn.write_all(command.as_bytes()).await?;
    conn.write_all(b"\n").await?;
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

/// Ask the running VPN `name` to stop, and wait until its control socket is gone or
/// refuses connections (it has removed its interface by then). A VPN that dropped root
/// cannot remove its socket file from the root-owned directory; this removes it then.
pub async fn down(name: &str) -> io::Result<()> {
    let path = socket_path(name);
    ask(&path, "down").await.map_err(|e| not_running(name, e))?;
    for _ in 0..100 {
        if !path.exists() {
            return Ok(());
        }
        if UnixStream::connect(&path).await.is_err() {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the VPN {name} was asked to stop but is still running after 5 s"),
    ))
}
