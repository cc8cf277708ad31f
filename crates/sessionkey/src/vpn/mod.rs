//! `sessionkey vpn`: IP packets over UDP with fresh session keys, on a Linux TUN interface
//! (docs/VPN.md; the wire format is docs/PROTOCOL.md section 12).
//!
//! The sans-IO core (`sessionkey_proto::vpn`) decides; this module moves packets:
//!
//! - [`config`]: the TOML file, validated, with file, line and field in every error;
//! - `tun` and `udp`: the interface (tun-rs, with offloads) and the socket (quinn-udp:
//!   recvmmsg, GSO, GRO; buffers sized by the VPN itself);
//! - `datapath`: one thread per direction, batched, no allocation per packet;
//! - `handshaker`: one thread for handshakes and timers (the only one doing public-key work);
//! - [`control`]: the socket behind `vpn show`, `set`, `syncconf` and `down`.
//!
//! [`run`] brings the interface up and keeps it until SIGTERM, SIGINT or `vpn down`, then
//! stops the threads and removes the interface.

pub mod config;
pub mod control;
mod datapath;
mod device;
mod handshaker;
mod privileges;
mod routes;
mod tun;
mod udp;

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use tokio::sync::Notify;

pub use config::{ConfigError, Hooks, PeerEntry, PeerText, VpnConfig, VpnConfigText};
pub use control::{down, set, show, syncconf, vpn_control_dir, NotRunning};
pub use device::PeerChange;
pub use tun::TunError;

use datapath::{Job, HANDSHAKE_QUEUE};
use device::Device;

/// Why the VPN could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VpnError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TUN interface could not be created.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on UDP port {port}: {source}")]
    Udp {
        /// The port.
        port: u16,
        /// The cause (kind `AddrInUse` when another socket holds the port; its message
        /// then names the process if it can be found).
        source: std::io::Error,
    },
    /// The protocol core refused (a key could not be used).
    #[error(transparent)]
    Protocol(sessionkey_proto::Error),
    /// An I/O failure while running (the control socket, a dead device).
    #[error(transparent)]
    Io(std::io::Error),
    /// A `pre_up`/`post_up`/`pre_down`/`post_down` command failed.
    #[error("{stage} command `{command}` {detail}")]
    Hook {
        /// The hook.
        stage: &'static str,
        /// The command, with `%i` replaced.
        command: String,
        /// How it failed.
        detail: String,
    },
    /// Root could not be dropped after setup (`user`).
    #[error("{0}")]
    Privileges(String),
    /// A route could not be added (`routes = "auto"`).
    #[error("{0}; set routes = \"off\" in [interface] to add routes yourself")]
    Route(String),
}

/// What stops a running VPN, besides SIGTERM and SIGINT.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<Notify>);

impl StopHandle {
    /// A new handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop the VPN.
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

/// Bring the VPN of `config` up and run it in the foreground until SIGTERM, SIGINT,
/// `sessionkey vpn down NAME` or `stop`; then remove the interface and return.
pub async fn run(config: VpnConfig, stop: StopHandle) -> Result<(), VpnError> {
    run_with_ready(config, stop, || {}).await
}

/// [`run`], calling `ready` once the interface, its routes, the sockets and the packet
/// threads are up (and privileges dropped): the moment a service manager may be told the
/// VPN is ready (systemd's `READY=1`).
pub async fn run_with_ready(
    config: VpnConfig,
    stop: StopHandle,
    ready: impl FnOnce() + Send,
) -> Result<(), VpnError> {
    run_inner(config, None, None, stop, ready).await
}

/// [`run_with_ready`] for the configuration read from `path`: SIGHUP reads it again and
/// makes the running peers its peers, as `vpn syncconf NAME PATH` does (interface settings
/// are not changed). A file that does not load is rejected with its error logged, and the
/// running peers kept. A VPN that dropped root may not be able to read the file (or its
/// key files) any more; the log then says to run `vpn syncconf` as root.
///
/// With `metrics`, Prometheus text is served there at `/metrics` (see
/// [`crate::metrics`]): per peer the latest handshake and bytes, by fingerprint prefix.
pub async fn run_reloadable(
    config: VpnConfig,
    path: PathBuf,
    metrics: Option<tokio::net::TcpListener>,
    stop: StopHandle,
    ready: impl FnOnce() + Send,
) -> Result<(), VpnError> {
    run_inner(config, Some(path), metrics, stop, ready).await
}

async fn run_inner(
    config: VpnConfig,
    source: Option<PathBuf>,
    metrics: Option<tokio::net::TcpListener>,
    stop: StopHandle,
    ready: impl FnOnce() + Send,
) -> Result<(), VpnError> {
    let name = config.name.clone();
    // Installed first: from now on SIGHUP reloads (or, without a file, is logged) instead
    // of killing the process.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(VpnError::Io)?;
    let peers = config.peers.len();
    let hooks = config.hooks.clone();
    let user = config.user.clone();
    routes::run_hooks("pre_up", &hooks.pre_up, &name)?;
    let dev = Arc::new(Device::new(config)?);
    dev.install_routes()?;
    if let Err(e) = routes::run_hooks("post_up", &hooks.post_up, &name) {
        dev.remove_routes();
        return Err(e);
    }
    let control = control::serve(&dev, stop.0.clone())
        .await
        .map_err(VpnError::Io)?;
    let metrics = metrics.map(|listener| {
        let dev = Arc::downgrade(&dev);
        tokio::spawn(crate::metrics::serve_with(listener, move || {
            // A weak reference: the interface goes away with the last strong one.
            std::future::ready(
                dev.upgrade()
                    .map(|d| crate::metrics::render_vpn(d.snapshot()))
                    .unwrap_or_default(),
            )
        }))
    });
    // Everything privileged is done: the interface, its routes, the sockets.
    match privileges::drop_to(&user) {
        Ok(privileges::Dropped::To { user, uid }) => {
            tracing::info!("vpn {name}: running as user {user} (uid {uid}), without privileges")
        }
        Ok(privileges::Dropped::KeptRoot) => tracing::warn!(
            "vpn {name}: keeps running as root (user = \"root\"); the default, user = \"nobody\", \
             drops root once the interface is up"
        ),
        Ok(privileges::Dropped::NotRoot) => {}
        Err(e) => {
            dev.remove_routes();
            return Err(e);
        }
    }
    tracing::info!(
        "vpn {name} up: public key {}, UDP port {}, {peers} peer(s), suite {}, {}; offloads: TUN {}, \
         UDP GSO x{}, GRO x{}; receive buffer {} KiB",
        dev.identity.public_key().to_base64(),
        dev.udp.port(),
        dev.suite.name(),
        if dev.hybrid { "hybrid X25519+ML-KEM-768" } else { "classical X25519 (hybrid accepted)" },
        if dev.tun.tcp_gso() { "on" } else { "off" },
        dev.udp.max_gso_segments(),
        dev.udp.gro_segments(),
        dev.udp.recv_buffer() / 1024,
    );

    let (jobs_tx, jobs_rx) = sync_channel::<Job>(HANDSHAKE_QUEUE);
    let (died_tx, mut died_rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
    let mut threads = Vec::new();
    {
        let (d, tx, died) = (dev.clone(), jobs_tx.clone(), died_tx.clone());
        threads.push(spawn("sk-vpn-out", move || {
            if let Err(e) = datapath::outbound(&d, &tx) {
                let _ = died.send(("outbound", e.to_string()));
            }
        })?);
    }
    {
        let (d, tx, died) = (dev.clone(), jobs_tx.clone(), died_tx.clone());
        threads.push(spawn("sk-vpn-in", move || {
            if let Err(e) = datapath::inbound(&d, &tx) {
                let _ = died.send(("inbound", e.to_string()));
            }
        })?);
    }
    {
        let (d, died) = (dev.clone(), died_tx.clone());
        threads.push(spawn("sk-vpn-hs", move || {
            if let Err(e) = handshaker::run(&d, jobs_rx) {
                let _ = died.send(("handshake", e.to_string()));
            }
        })?);
    }
    // Start handshakes wanted from the start (persistent keepalives).
    let _ = jobs_tx.try_send(Job::Wake);
    ready();

    let mut result = Ok(());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(VpnError::Io)?;
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("vpn {name}: SIGTERM, stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("vpn {name}: interrupted, stopping"),
            _ = stop.0.notified() => tracing::info!("vpn {name}: stop requested, stopping"),
            Some((which, e)) = died_rx.recv() => {
                tracing::error!("vpn {name}: the {which} thread failed: {e}");
                result = Err(VpnError::Io(std::io::Error::other(format!(
                    "the {which} thread failed: {e}"
                ))));
            }
            Some(()) = hangups.recv() => {
                match &source {
                    Some(path) => reload(&dev, path),
                    None => tracing::warn!("vpn {name}: SIGHUP: no configuration file to read again; nothing changed"),
                }
                continue;
            }
        }
        break;
    }
    dev.request_stop();
    let _ = jobs_tx.try_send(Job::Wake);
    drop(jobs_tx);
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!("vpn {name}: a thread did not stop cleanly");
    }
    if let Err(e) = routes::run_hooks("pre_down", &hooks.pre_down, &name) {
        tracing::warn!("vpn {name}: {e}");
    }
    dev.remove_routes();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // The last reference: closing the TUN device removes the interface.
    drop(dev);
    drop(control);
    tracing::info!("vpn {name} down: interface removed");
    if let Err(e) = routes::run_hooks("post_down", &hooks.post_down, &name) {
        tracing::warn!("vpn {name}: {e}");
    }
    result
}

/// SIGHUP: the peers of the file at `path` become the running peers (`vpn syncconf`).
fn reload(dev: &Device, path: &Path) {
    let name = &dev.name;
    let rejected = |why: String| {
        // Without root, root-only files cannot be read any more: say what works.
        let hint = if nix::unistd::geteuid().is_root() {
            String::new()
        } else {
            format!(
                "; this VPN dropped root, so apply the file as root with: sessionkey vpn \
                 syncconf {name} {} (systemctl reload does)",
                path.display()
            )
        };
        tracing::error!("vpn {name}: reload rejected, the running peers are kept: {why}{hint}");
    };
    let config = match VpnConfig::load(path) {
        Ok(config) => config,
        Err(e) => return rejected(e.to_string()),
    };
    if config.name != *name {
        return rejected(format!(
            "the file names the interface {:?}, not {name:?}; a new name needs a restart",
            config.name
        ));
    }
    match dev.sync_peers(config.peers) {
        Ok(done) => {
            dev.timers.arm(std::time::Instant::now());
            dev.set_loaded(std::time::SystemTime::now());
            tracing::info!(
                "vpn {name}: configuration reloaded from {}: {done}",
                path.display()
            );
        }
        Err(e) => rejected(e),
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, VpnError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(VpnError::Io)
}
