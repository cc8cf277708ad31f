//! `sessionkey relay serve --listen ADDR [--database URL]`: the messaging relay
//! (docs/MESSAGING.md, "Relay API").

use std::path::PathBuf;

use anyhow::{Context, Result};
use sessionkey::tls::{CertSource, TlsServer, TlsServerOptions};
use sessionkey_relay::{RelayConfig, Storage};

use super::common::{config_error, state_dir};

/// The relay's subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Serve the relay API over TLS until interrupted.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:8443 (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Storage: sqlite://PATH (default: STATE/relay/relay.db) or postgres://USER@HOST/DB
    /// (several relay processes may share one PostgreSQL database). From the environment
    /// too, so that a password in the URL stays out of the process list.
    #[arg(
        long,
        value_name = "URL",
        env = "SESSIONKEY_RELAY_DATABASE",
        hide_env_values = true
    )]
    database: Option<String>,
    /// The TLS certificate chain (PEM). Default: a self-signed certificate kept in
    /// STATE/relay/tls, which clients pin at `msg init`.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Print the start line as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let relay_dir = state_dir().join("relay");
    let database = match &args.database {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&relay_dir)
                .with_context(|| format!("creating {}", relay_dir.display()))?;
            format!("sqlite://{}", relay_dir.join("relay.db").display())
        }
    };
    let cert = match (args.cert, args.key) {
        (Some(chain), Some(key)) => CertSource::Files { chain, key },
        _ => CertSource::SelfSigned {
            dir: relay_dir.join("tls"),
        },
    };
    let tls = TlsServer::new(TlsServerOptions::new(cert)).context("TLS certificate")?;
    let storage = Storage::open(&database).await.map_err(|e| {
        config_error(format!(
            "cannot open the relay database: {e}; check --database (sqlite://PATH or postgres://USER@HOST/DB)"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut running = sessionkey_relay::serve(
        listener,
        tls.rustls_config(),
        storage.clone(),
        RelayConfig::default(),
    )
    .context("starting the relay")?;
    let pin = tls.pin();
    let backend = match storage.backend() {
        sessionkey_relay::Backend::Sqlite => "sqlite",
        sessionkey_relay::Backend::Postgres => "postgres",
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "listen": running.local_addr.to_string(),
                "pin": pin.to_line("").trim(),
                "fingerprint": pin.fingerprint().to_string(),
                "storage": backend,
            })
        );
    } else {
        println!(
            "relay listening on {} ({backend} storage)",
            running.local_addr
        );
        println!("certificate {}", pin.fingerprint());
        println!(
            "clients pin it at `sessionkey msg init --relay https://{}`",
            running.local_addr
        );
    }
    super::service::ignore_hangups("relay");
    super::service::ready(&format!("relay listening on {}", running.local_addr));
    tokio::select! {
        () = running.wait() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        () = terminate() => tracing::info!("terminated; stopping"),
    }
    running.stop();
    storage.close().await;
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
