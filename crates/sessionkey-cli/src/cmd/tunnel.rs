//! `sessionkey tunnel`: server and client sides, or several from a TOML file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sessionkey::admission::{self, Limits};
use sessionkey::status::{self, Registry};
use sessionkey::tunnel::{self, ClientConfig, ServerConfig, ServerTransport, TunnelError};
use tokio::net::TcpListener;

use sessionkey::fleet::db::redact_url;
use sessionkey::fleet::gateway::{check_group, FleetPeers, PeersOptions};
use sessionkey::fleet::DEFAULT_GROUP;
use sessionkey::trust::{LivePeers, LiveSessions};

use super::common::{
    config_error, ClientSide, ClientTransportOpts, DatabasePeers, ServerSide, ServerTransportOpts,
    SessionOpts,
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
    /// Serve Prometheus metrics at http://ADDR/metrics (sessions, handshakes, bytes and
    /// records by tunnel; never keys or addresses). Bind it to a private address.
    #[arg(long, value_name = "ADDR", global = true)]
    metrics: Option<String>,
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
    /// Take the authorized peers from this PostgreSQL database (postgres://USER@HOST/DB;
    /// a password may come from PGPASSWORD), shared by a fleet of gateways and kept with
    /// `sessionkey peers`. Removed keys are refused and their sessions closed at once.
    #[arg(long, value_name = "URL", conflicts_with_all = ["authorized_peers", "allow", "any_client"])]
    #[serde(default)]
    peers_database: Option<String>,
    /// The group of peers in --peers-database this tunnel admits (default: "default").
    #[arg(long, value_name = "NAME", requires = "peers_database")]
    #[serde(default)]
    peers_group: Option<String>,
    /// While --peers-database cannot be reached, refuse every new session (default:
    /// fail-static, keep admitting the last list read; live sessions go on either way).
    #[arg(long, requires = "peers_database")]
    #[serde(default)]
    fail_closed: bool,
    /// Admit any client, with or without a key or certificate. Anyone who can reach the
    /// listening address reaches the target.
    #[arg(long, visible_alias = "insecure-anonymous")]
    #[serde(default, alias = "insecure_anonymous")]
    any_client: bool,
    /// Connections in their handshake at once; more are reset at once (default: from the
    /// open-files limit, at most 1024).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(default)]
    max_handshakes: Option<u32>,
    /// Connections in their handshake at once from one address (IPv6: one /64)
    /// (default: a quarter of max-handshakes, at least 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(default)]
    max_handshakes_per_source: Option<u32>,
    /// Established sessions at once; more are refused (default: no bound but the
    /// open-files limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(default)]
    max_connections: Option<u32>,
    /// New handshakes a second from one address, twice that at once; more are reset at
    /// once (default: 200). Bounds what a replayed hello can make the server compute.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(default)]
    handshakes_per_second_per_source: Option<u32>,
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
    /// Serve Prometheus metrics here, as `--metrics` (the flag wins).
    #[serde(default)]
    metrics: Option<String>,
    tunnel: Vec<TunnelTable>,
}

impl ServerArgs {
    /// The configuration, admitting the keys of `peers` when the table names a peers
    /// database (for `sessionkey check`: an empty set, nothing is connected).
    pub(crate) fn build(&self, peers: LivePeers) -> Result<ServerConfig> {
        let database = self.fleet_options()?.map(|o| DatabasePeers {
            peers,
            source: format!(
                "group {} of the peers database {}",
                o.group,
                redact_url(&o.url)
            ),
            group: o.group,
        });
        Ok(ServerConfig {
            name: self.name.clone(),
            target: self.to.clone(),
            session: self.opts.session_config(),
            transport: self.tls.build(ServerSide {
                key: self.key.as_deref(),
                opts: &self.opts,
                authorized: self.authorized_peers.as_deref(),
                allow: &self.allow,
                insecure_anonymous: self.any_client,
                database,
            })?,
            limits: self.limits(),
            sessions: LiveSessions::default(),
        })
    }

    /// Where the peers come from when `peers_database` is set.
    fn fleet_options(&self) -> Result<Option<PeersOptions>> {
        let Some(url) = &self.peers_database else {
            if self.peers_group.is_some() || self.fail_closed {
                return Err(config_error(
                    "peers_group and fail_closed go with peers_database; add it or leave them out",
                ));
            }
            return Ok(None);
        };
        if self.authorized_peers.is_some() || !self.allow.is_empty() || self.any_client {
            return Err(config_error(
                "peers_database decides who is admitted: leave out authorized_peers, allow \
                 and any_client",
            ));
        }
        let group = self
            .peers_group
            .clone()
            .unwrap_or_else(|| DEFAULT_GROUP.into());
        check_group(&group).map_err(config_error)?;
        Ok(Some(PeersOptions {
            url: url.clone(),
            cache: PeersOptions::default_cache(&super::common::state_dir(), &group),
            group,
            fail_closed: self.fail_closed,
            tunnel: self.name.clone(),
        }))
    }

    /// The defaults for this process's open-files limit, with what the options change.
    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        if let Some(v) = self.max_handshakes {
            limits.max_handshakes = n(v);
            if self.max_handshakes_per_source.is_none() {
                limits.max_handshakes_per_source = (n(v) / 4).max(2).min(n(v));
            }
        }
        if let Some(v) = self.max_handshakes_per_source {
            limits.max_handshakes_per_source = n(v);
        }
        limits.max_connections = self.max_connections.map(n);
        if let Some(v) = self.handshakes_per_second_per_source {
            limits.handshakes_per_second_per_source = v;
        }
        limits
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

/// Read a configuration file; its relative paths are made relative to its directory (as
/// in a VPN configuration), not to the working directory.
fn load_config(path: &Path) -> Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut file: ConfigFile = toml::from_str(&text).map_err(|e| {
        // The field checks of `sessionkey check` locate each mistake at its own line.
        let problems = sessionkey::check::tunnel_file(path, &text).problems;
        if problems.is_empty() {
            return config_error(format!("{}: {e}", path.display()));
        }
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        config_error(lines.join("\n"))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for table in &mut file.tunnel {
        rebase_table(table, base);
    }
    Ok(file)
}

/// Make a table's relative paths relative to `base`, the configuration file's directory.
fn rebase_table(table: &mut TunnelTable, base: &Path) {
    match table {
        TunnelTable::Server(s) => {
            super::common::rebase(&mut s.key, base);
            super::common::rebase(&mut s.authorized_peers, base);
            s.opts.rebase(base);
            s.tls.rebase(base);
        }
        TunnelTable::Client(c) => {
            super::common::rebase(&mut c.key, base);
            super::common::rebase(&mut c.known_peers, base);
            c.opts.rebase(base);
            c.tls.rebase(base);
        }
    }
}

/// Builds one `[[tunnel]]` table as `tunnel --config` does, without binding anything (for
/// `sessionkey check`); relative paths are taken from `base`, the file's directory.
pub(crate) fn build_table(table: toml::Table, base: &Path) -> Result<()> {
    let mut table: TunnelTable = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| config_error(e.message().trim().to_string()))?;
    rebase_table(&mut table, base);
    match table {
        TunnelTable::Server(s) => s.build(LivePeers::default()).map(drop),
        TunnelTable::Client(c) => c.build().map(drop),
    }
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let mut metrics = args.metrics.clone();
    let tables = match (args.side, args.config) {
        (Some(Side::Server(s)), None) => vec![TunnelTable::Server(s)],
        (Some(Side::Client(c)), None) => vec![TunnelTable::Client(c)],
        (None, Some(path)) => {
            let file = load_config(&path)?;
            metrics = metrics.or(file.metrics);
            file.tunnel
        }
        _ => {
            return Err(config_error(
                "give `tunnel server ...`, `tunnel client ...` or `tunnel --config FILE`",
            ))
        }
    };
    if tables.is_empty() {
        return Err(config_error("the configuration has no [[tunnel]] tables"));
    }
    match admission::raise_open_files_limit() {
        Ok((before, now)) if now > before => {
            tracing::info!("open-files limit raised from {before} to {now} (the hard limit)")
        }
        Ok((_, now)) => tracing::info!("open-files limit {now} (the hard limit)"),
        Err(e) => tracing::warn!("cannot read or raise the open-files limit: {e}"),
    }
    super::service::ignore_hangups("tunnel");
    let registry = Registry::default();
    let control = status::serve(registry.clone());
    match &control {
        Ok(c) => tracing::debug!(socket = %c.path().display(), "status on the control socket"),
        Err(e) => tracing::warn!("`sessionkey status` is disabled for this process: {e}"),
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    // The gateways' database followers, kept as long as their tunnels run.
    let mut fleets = Vec::new();
    for table in tables {
        match table {
            TunnelTable::Server(s) => {
                let peers = LivePeers::default();
                let config = s.build(peers.clone())?;
                if let Some(options) = s.fleet_options()? {
                    fleets.push(FleetPeers::start(options, peers, config.sessions.clone()).await?);
                }
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
                let limits = config.limits;
                tracing::debug!(
                    tunnel = %config.name,
                    max_handshakes = limits.max_handshakes,
                    max_handshakes_per_source = limits.max_handshakes_per_source,
                    max_connections = ?limits.max_connections,
                    "limits"
                );
                let name = config.name.clone();
                let task = tasks.spawn(tunnel::run_server(listener, config, registry.clone()));
                names.insert(task.id(), name);
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
                let name = config.name.clone();
                let task = tasks.spawn(tunnel::run_client(listener, config, registry.clone()));
                names.insert(task.id(), name);
            }
        }
    }
    if let Some(addr) = metrics {
        let listener = bind(&addr).await?;
        tracing::info!(
            "metrics at http://{}/metrics",
            tunnel::local_addr(&listener)
        );
        tokio::spawn(sessionkey::metrics::serve(listener, registry.clone()));
    }
    super::service::ready(&format!("{} tunnel(s) listening", tasks.len()));
    // A tunnel's task does not end on network errors; if one ends anyway (a bug), the
    // others keep running, and the process ends with the last one.
    let mut last_error = None;
    loop {
        tokio::select! {
            done = tasks.join_next_with_id() => {
                let Some(done) = done else { break };
                // A refused or changed server key stops the process: exit 77.
                let done = match done {
                    Ok((id, Err(e))) if is_key_refusal(&e) => {
                        let name = names.remove(&id).unwrap_or_default();
                        tracing::error!(tunnel = %name, "the server's key was refused; stopping");
                        let refused = e.into_inner().and_then(|b| b.downcast::<TunnelError>().ok());
                        return Err(match refused {
                            Some(refused) => anyhow::Error::new(*refused),
                            None => anyhow::anyhow!("the server's key was refused"),
                        }
                        .context(format!("tunnel {name} stopped")));
                    }
                    other => other,
                };
                let (id, why) = match done {
                    Ok((id, Ok(()))) => (id, "ended".to_string()),
                    Ok((id, Err(e))) => (id, format!("stopped: {e}")),
                    Err(e) => (e.id(), format!("failed: {e}")),
                };
                let name = names.remove(&id).unwrap_or_default();
                let rest = match tasks.len() {
                    0 => "it was the last one",
                    _ => "the others keep running",
                };
                tracing::error!(tunnel = %name, remaining = tasks.len(), "tunnel {why}; {rest}");
                last_error = Some(format!("tunnel {name} {why}"));
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                return Ok(());
            }
            _ = terminate() => {
                tracing::info!("terminated; stopping");
                return Ok(());
            }
        }
    }
    Err(anyhow::anyhow!(
        last_error.unwrap_or_else(|| "no tunnel is left".into())
    ))
}

/// Whether a tunnel task ended because the server's key was refused.
fn is_key_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<TunnelError>())
        .is_some_and(TunnelError::is_key_refusal)
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
