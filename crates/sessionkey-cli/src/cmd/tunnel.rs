//! `sessionkey tunnel`: server and client sides, or several from a TOML file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sessionkey::status::{self, Registry};
use sessionkey::tunnel::{self, ClientConfig, ServerConfig, ServerTransport};
use tokio::net::TcpListener;

use super::common::{
    config_error, ClientSide, ClientTransportOpts, ServerSide, ServerTransportOpts, SessionOpts,
};

/// Arguments of `sessionkey tunnel`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    side: Option<Side>,
    /// Run every tunnel of a TOML file (see docs/CONFIG.md).
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Side {
    /// Accept sessions and forward each authenticated connection to a target.
    Server(ServerArgs),
    /// Listen locally; carry each connection through its own session to the server.
    Client(ClientArgs),
}

/// `tunnel server` options (also the fields of a `role = "server"` table).
#[derive(Debug, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerArgs {
    /// A name for logs and status.
    #[arg(long, default_value = "server")]
    #[serde(default = "default_server_name")]
    name: String,
    /// Address to accept sessions on.
    #[arg(long)]
    listen: String,
    /// Where to forward the plain bytes.
    #[arg(long)]
    to: String,
    /// The server's private key (native transport).
    #[arg(long)]
    #[serde(default)]
    key: Option<PathBuf>,
    /// Keys allowed to connect, one `sessionkey-x25519 BASE64 comment` a line.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    authorized_peers: Option<PathBuf>,
    /// A key allowed to connect (repeatable).
    #[arg(long, value_name = "PUBKEY")]
    #[serde(default)]
    allow: Vec<String>,
    /// Admit any client, with or without a key. Insecure.
    #[arg(long)]
    #[serde(default)]
    insecure_anonymous: bool,
    #[command(flatten)]
    #[serde(flatten)]
    opts: SessionOpts,
    #[command(flatten)]
    #[serde(flatten)]
    tls: ServerTransportOpts,
}

/// `tunnel client` options (also the fields of a `role = "client"` table).
#[derive(Debug, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientArgs {
    /// A name for logs and status.
    #[arg(long, default_value = "client")]
    #[serde(default = "default_client_name")]
    name: String,
    /// Local address to accept plain connections on.
    #[arg(long)]
    listen: String,
    /// The tunnel server's address.
    #[arg(long)]
    server: String,
    /// This client's private key (native transport; TLS clients need none).
    #[arg(long)]
    #[serde(default)]
    key: Option<PathBuf>,
    /// The server's public key (pins it; fastest handshake).
    #[arg(long, value_name = "PUBKEY")]
    #[serde(default)]
    server_key: Option<String>,
    /// Server keys by host, in ssh's known_hosts grammar.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    known_peers: Option<PathBuf>,
    /// Learn an unknown server's key into --known-peers (trust on first use).
    #[arg(long, requires = "known_peers")]
    #[serde(default)]
    accept_new: bool,
    /// Do not check the server's key at all. Insecure.
    #[arg(long)]
    #[serde(default)]
    insecure_anonymous: bool,
    #[command(flatten)]
    #[serde(flatten)]
    opts: SessionOpts,
    #[command(flatten)]
    #[serde(flatten)]
    tls: ClientTransportOpts,
}

fn default_server_name() -> String {
    "server".into()
}

fn default_client_name() -> String {
    "client".into()
}

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum TunnelTable {
    Server(ServerArgs),
    Client(ClientArgs),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    tunnel: Vec<TunnelTable>,
}

impl ServerArgs {
    pub(crate) fn build(&self) -> Result<ServerConfig> {
        Ok(ServerConfig {
            name: self.name.clone(),
            target: self.to.clone(),
            session: self.opts.session_config(),
            transport: self.tls.build(ServerSide {
                key: self.key.as_deref(),
                opts: &self.opts,
                authorized: self.authorized_peers.as_deref(),
                allow: &self.allow,
                insecure_anonymous: self.insecure_anonymous,
            })?,
        })
    }
}

impl ClientArgs {
    pub(crate) fn build(&self) -> Result<ClientConfig> {
        Ok(ClientConfig {
            name: self.name.clone(),
            server: self.server.clone(),
            session: self.opts.session_config(),
            transport: self.tls.build(ClientSide {
                server: &self.server,
                key: self.key.as_deref(),
                opts: &self.opts,
                server_key: self.server_key.as_deref(),
                known_peers: self.known_peers.as_deref(),
                accept_new: self.accept_new,
                insecure_anonymous: self.insecure_anonymous,
            })?,
        })
    }
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

fn load_config(path: &Path) -> Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| config_error(format!("{}: {e}", path.display())))
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let tables = match (args.side, args.config) {
        (Some(Side::Server(s)), None) => vec![TunnelTable::Server(s)],
        (Some(Side::Client(c)), None) => vec![TunnelTable::Client(c)],
        (None, Some(path)) => load_config(&path)?.tunnel,
        _ => {
            return Err(config_error(
                "give `tunnel server ...`, `tunnel client ...` or `tunnel --config FILE`",
            ))
        }
    };
    if tables.is_empty() {
        return Err(config_error("the configuration has no [[tunnel]] tables"));
    }
    let registry = Registry::default();
    let control = status::serve(registry.clone());
    match &control {
        Ok(c) => tracing::debug!(socket = %c.path().display(), "status on the control socket"),
        Err(e) => tracing::warn!("no control socket for `sessionkey status`: {e}"),
    }
    let mut tasks = tokio::task::JoinSet::new();
    for table in tables {
        match table {
            TunnelTable::Server(s) => {
                let config = s.build()?;
                let listener = bind(&s.listen).await?;
                let transport = match &config.transport {
                    ServerTransport::Native(_) => "native".to_string(),
                    ServerTransport::Tls(tls) => {
                        format!("tls, certificate key {}", tls.pin().to_line(""))
                    }
                };
                tracing::info!(
                    tunnel = %config.name,
                    listen = %tunnel::local_addr(&listener),
                    to = %config.target,
                    %transport,
                    "tunnel server ready"
                );
                tasks.spawn(tunnel::run_server(listener, config, registry.clone()));
            }
            TunnelTable::Client(c) => {
                let config = Arc::new(c.build()?);
                let listener = bind(&c.listen).await?;
                tracing::info!(
                    tunnel = %config.name,
                    listen = %tunnel::local_addr(&listener),
                    server = %config.server,
                    "tunnel client ready"
                );
                tasks.spawn(tunnel::run_client(listener, config, registry.clone()));
            }
        }
    }
    tokio::select! {
        Some(done) = tasks.join_next() => {
            done.context("tunnel task failed")?.context("tunnel stopped")?;
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = terminate() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
