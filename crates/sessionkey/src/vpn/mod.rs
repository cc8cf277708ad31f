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
    let name = config.name.clone();
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
    // The last reference: closing the TUN device removes the interface.
    drop(dev);
    drop(control);
    tracing::info!("vpn {name} down: interface removed");
    if let Err(e) = routes::run_hooks("post_down", &hooks.post_down, &name) {
        tracing::warn!("vpn {name}: {e}");
    }
    result
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
