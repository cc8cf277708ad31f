//! `sessionkey tunnel`: server and client sides, or several from a TOML file.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use sessionkey::admission;
use sessionkey::config::{ClientTable, ServerTable, TunnelFile, TunnelTable};
use sessionkey::fleet::census;
use sessionkey::fleet::gateway::FleetPeers;
use sessionkey::fleet::FleetDb;
use sessionkey::status::{self, Registry};
use sessionkey::tunnel::{self, ServerTransport, TunnelError};
use tokio::net::TcpListener;

use super::common::{config_error, state_dir};

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
    Server(ServerTable),
    /// Listen locally; carry each connection through its own session to the server.
    Client(ClientTable),
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let mut metrics = args.metrics.clone();
    let tables = match (args.side, args.config) {
        (Some(Side::Server(s)), None) => vec![TunnelTable::Server(s)],
        (Some(Side::Client(c)), None) => vec![TunnelTable::Client(c)],
        (None, Some(path)) => {
            let file = TunnelFile::load(&path)?;
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
    // Databases this process reports its sessions to, to leave on a clean stop.
    let mut fleet_urls: Vec<String> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    for table in tables {
        match table {
            TunnelTable::Server(s) => {
                let config = s.build(&state_dir())?;
                if let (Some(options), Some(peers)) =
                    (s.fleet_options(&state_dir())?, config.peers.clone())
                {
                    let url = options.url.clone();
                    let fleet = FleetPeers::start(options, peers, config.sessions.clone()).await?;
                    tokio::spawn(close_kicked(fleet.session_kicks(), registry.clone()));
                    registry.add_fleet(fleet);
                    tokio::spawn(census::report(
                        url.clone(),
                        census::gateway_name(),
                        config.name.clone(),
                        registry.clone(),
                    ));
                    fleet_urls.push(url);
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
                leave_fleets(&fleet_urls).await;
                return Ok(());
            }
            _ = terminate() => {
                tracing::info!("terminated; stopping");
                leave_fleets(&fleet_urls).await;
                return Ok(());
            }
        }
    }
    Err(anyhow::anyhow!(
        last_error.unwrap_or_else(|| "no tunnel is left".into())
    ))
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

/// Take this gateway's sessions out of the fleet status (best effort, bounded): a gateway
/// that stops cleanly does not linger there as stale.
async fn leave_fleets(urls: &[String]) {
    let gateway = census::gateway_name();
    for url in urls {
        let left = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let db = FleetDb::open(url, std::time::Duration::from_secs(2)).await?;
            db.leave(&gateway).await
        })
        .await;
        if let Ok(Err(e)) = left {
            tracing::debug!("cannot take this gateway out of the fleet status: {e}");
        }
    }
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
