//! `sessionkey tunnel`: server and client sides, or several from a TOML file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sessionkey::admission;
use sessionkey::config::{ClientTable, ServerTable, TunnelFile, TunnelTable};
use sessionkey::fleet::census;
use sessionkey::fleet::FleetDb;
use sessionkey::status::{self, Registry};
use sessionkey::tunnel::{self, TunnelError};
use sessionkey::tunnels::Tunnels;
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
    /// Serve Prometheus metrics at http://ADDR/metrics (sessions, handshakes and their
    /// duration, bytes, records, key updates and key ages by tunnel; never keys or
    /// addresses). Bind it to a private address.
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

/// Where the tunnels come from: the flags (read again on SIGHUP: trust and key files
/// change), or a file.
enum Source {
    Flags(Box<TunnelTable>),
    File(PathBuf),
}

impl Source {
    /// The tables, and the file's metrics address.
    fn load(&self) -> Result<(Vec<TunnelTable>, Option<String>)> {
        Ok(match self {
            Self::Flags(table) => (vec![(**table).clone()], None),
            Self::File(path) => {
                let file = TunnelFile::load(path)?;
                (file.tunnel, file.metrics)
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Self::Flags(_) => "the command line's files".into(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// SIGHUP: read the configuration again and apply it; a configuration that does not load
/// or build is rejected, and the running one kept.
async fn reload(source: &Source, tunnels: &mut Tunnels) {
    tracing::info!("SIGHUP: reloading {}", source.describe());
    let tables = match source.load() {
        Ok((tables, _)) => tables,
        Err(e) => {
            tracing::error!("reload rejected, the running configuration is kept: {e:#}");
            return;
        }
    };
    match tunnels.apply(tables).await {
        Ok(done) => tracing::info!(
            started = ?done.started,
            reloaded = ?done.reloaded,
            stopped = ?done.stopped,
            revoked_sessions = done.revoked_sessions,
            "configuration reloaded from {}",
            source.describe()
        ),
        Err(e) => tracing::error!(
            "reload rejected, the running configuration is kept: {:#}",
            anyhow::Error::new(e)
        ),
    }
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let source = match (args.side, args.config) {
        (Some(Side::Server(s)), None) => Source::Flags(Box::new(TunnelTable::Server(s))),
        (Some(Side::Client(c)), None) => Source::Flags(Box::new(TunnelTable::Client(c))),
        (None, Some(path)) => Source::File(path),
        _ => {
            return Err(config_error(
                "give `tunnel server ...`, `tunnel client ...` or `tunnel --config FILE`",
            ))
        }
    };
    let (tables, file_metrics) = source.load()?;
    let metrics = args.metrics.or(file_metrics);
    match admission::raise_open_files_limit() {
        Ok((before, now)) if now > before => {
            tracing::info!("open-files limit raised from {before} to {now} (the hard limit)")
        }
        Ok((_, now)) => tracing::info!("open-files limit {now} (the hard limit)"),
        Err(e) => tracing::warn!("cannot read or raise the open-files limit: {e}"),
    }
    let mut hangups = super::service::hangups("tunnel");
    let registry = Registry::default();
    let control = status::serve(registry.clone());
    match &control {
        Ok(c) => tracing::debug!(socket = %c.path().display(), "status on the control socket"),
        Err(e) => tracing::warn!("`sessionkey status` is disabled for this process: {e}"),
    }
    let mut tunnels = Tunnels::new(registry.clone(), state_dir());
    tunnels.apply(tables).await?;
    if let Some(addr) = metrics {
        let listener = bind(&addr).await?;
        tracing::info!(
            "metrics at http://{}/metrics",
            tunnel::local_addr(&listener)
        );
        tokio::spawn(sessionkey::metrics::serve(listener, registry.clone()));
    }
    super::service::ready(&format!("{} tunnel(s) listening", tunnels.len()));
    // A tunnel's task does not end on network errors; if one ends anyway (a bug), the
    // others keep running, and the process ends with the last one.
    let mut last_error = None;
    loop {
        tokio::select! {
            done = tunnels.join_next() => {
                let Some((name, done)) = done else { break };
                // A refused or changed server key stops the process: exit 77.
                let done = match done {
                    Ok(Err(e)) if is_key_refusal(&e) => {
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
                let why = match done {
                    Ok(Ok(())) => "ended".to_string(),
                    Ok(Err(e)) => format!("stopped: {e}"),
                    Err(e) => format!("failed: {e}"),
                };
                let rest = match tunnels.len() {
                    0 => "it was the last one",
                    _ => "the others keep running",
                };
                tracing::error!(tunnel = %name, remaining = tunnels.len(), "tunnel {why}; {rest}");
                last_error = Some(format!("tunnel {name} {why}"));
                if tunnels.is_empty() {
                    break;
                }
            }
            Some(()) = hangups.recv() => reload(&source, &mut tunnels).await,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                leave_fleets(&registry).await;
                return Ok(());
            }
            _ = terminate() => {
                tracing::info!("terminated; stopping");
                leave_fleets(&registry).await;
                return Ok(());
            }
        }
    }
    Err(anyhow::anyhow!(
        last_error.unwrap_or_else(|| "no tunnel is left".into())
    ))
}

/// Take this gateway's sessions out of the fleet status (best effort, bounded): a gateway
/// that stops cleanly does not linger there as stale.
async fn leave_fleets(registry: &Registry) {
    let gateway = census::gateway_name();
    for fleet in registry.fleets() {
        let left = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let db = FleetDb::open(fleet.url(), std::time::Duration::from_secs(2)).await?;
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
