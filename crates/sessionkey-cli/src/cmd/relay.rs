//! `sessionkey relay serve --listen ADDR [--database URL]`: the messaging relay
//! (docs/MESSAGING.md, "Relay API").

use std::path::PathBuf;

use anyhow::{Context, Result};
use sessionkey::tls::{CertSource, TlsServer, TlsServerOptions};
use std::time::Duration;

use sessionkey_relay::ratelimit::Rate;
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
    /// Serve Prometheus metrics at http://ADDR/metrics (messages queued, delivered,
    /// expired, waiting; devices by prekeys left, bucketed; never a name or an address).
    /// Bind it to a private address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(flatten)]
    quotas: Quotas,
}

/// The relay's quotas (docs/MESSAGING.md); each defaults to `RelayConfig::default()`'s.
#[derive(Debug, clap::Args)]
struct Quotas {
    /// Messages waiting per recipient; more are refused until it fetches (default 10000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_queue_per_recipient: Option<u64>,
    /// One-time prekeys held per device and kind (default 10000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_prekeys_per_device: Option<u64>,
    /// Push connections (WebSocket and waiting long-polls) per account (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_push_per_account: Option<u64>,
    /// Push connections in all (default 10000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_push_total: Option<u64>,
    /// New names registered per source address per hour (default 20).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    registrations_per_hour: Option<u32>,
    /// Messages a sender may send per second, with a burst of twice that (default 500,
    /// burst 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    sends_per_second: Option<u32>,
}

impl Quotas {
    fn config(&self) -> RelayConfig {
        let mut config = RelayConfig::default();
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = self.max_queue_per_recipient {
            config.max_queue_per_recipient = n;
        }
        if let Some(n) = self.max_prekeys_per_device {
            config.max_prekeys_per_device = n;
        }
        if let Some(n) = self.max_push_per_account {
            config.max_push_per_account = size(n);
        }
        if let Some(n) = self.max_push_total {
            config.max_push_total = size(n);
        }
        if let Some(n) = self.registrations_per_hour {
            config.registrations_per_address = Rate {
                burst: n,
                refill: Duration::from_secs(3600) / n,
            };
        }
        if let Some(n) = self.sends_per_second {
            config.sends_per_sender = Rate {
                burst: n.saturating_mul(2),
                refill: Duration::from_secs(1) / n,
            };
        }
        config
    }
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
        args.quotas.config(),
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
    if let Some(addr) = &args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(
            "metrics at http://{}/metrics",
            sessionkey::tunnel::local_addr(&listener)
        );
        let (counters, storage) = (running.counters.clone(), storage.clone());
        tokio::spawn(sessionkey::metrics::serve_with(listener, move || {
            let (counters, storage) = (counters.clone(), storage.clone());
            async move { relay_metrics(&counters, &storage).await }
        }));
    }
    let mut hangups = super::service::hangups("relay");
    super::service::ready(&format!("relay listening on {}", running.local_addr));
    loop {
        tokio::select! {
            () = running.wait() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            () = terminate() => tracing::info!("terminated; stopping"),
            Some(()) = hangups.recv() => {
                reload_certificate(&tls, pin);
                continue;
            }
        }
        break;
    }
    running.stop();
    storage.close().await;
    Ok(())
}

/// The relay's metrics now: its counters, and what its database holds (three counting
/// queries a scrape).
async fn relay_metrics(counters: &sessionkey_relay::server::Counters, storage: &Storage) -> String {
    use sessionkey_relay::storage::PREKEY_BUCKETS;
    use std::sync::atomic::Ordering::Relaxed;
    let mut m = sessionkey::metrics::RelayMetrics {
        registrations: counters.registrations.load(Relaxed),
        prekeys_uploaded: counters.prekeys_uploaded.load(Relaxed),
        bundles: counters.bundles.load(Relaxed),
        messages_queued: counters.messages_queued.load(Relaxed),
        messages_fetched: counters.messages_fetched.load(Relaxed),
        messages_delivered: counters.messages_acked.load(Relaxed),
        messages_expired: counters.messages_expired.load(Relaxed),
        auth_refused: counters.auth_refused.load(Relaxed),
        rate_limited: counters.rate_limited.load(Relaxed),
        ..Default::default()
    };
    match storage.holdings().await {
        Ok(h) => {
            m.devices = Some(h.devices);
            m.messages_waiting = Some(h.messages_waiting);
            for (kind, buckets) in ["x25519", "mlkem"].into_iter().zip(h.prekey_buckets) {
                for (i, devices) in buckets.into_iter().enumerate() {
                    let label = match PREKEY_BUCKETS.get(i + 1) {
                        Some(next) if next - PREKEY_BUCKETS[i] == 1 => {
                            PREKEY_BUCKETS[i].to_string()
                        }
                        Some(next) => format!("{}-{}", PREKEY_BUCKETS[i], next - 1),
                        None => format!("{}+", PREKEY_BUCKETS[i]),
                    };
                    m.prekeys.push((kind, label, devices));
                }
            }
        }
        // The counters still go out; the gauges are left out until the database answers.
        Err(e) => tracing::warn!("metrics: cannot count what the database holds: {e}"),
    }
    sessionkey::metrics::render_relay(m)
}

/// SIGHUP: the certificate and key files (`--cert`, `--key`) are read again and serve the
/// next connections. The quotas and the database are flags: a restart changes them.
fn reload_certificate(tls: &TlsServer, first: sessionkey::trust::PeerKey) {
    match tls.reload_certificate() {
        Ok(pin) if pin == first => tracing::info!(
            "SIGHUP: certificate reloaded, same key {} (quotas and the database need a restart)",
            pin.fingerprint()
        ),
        Ok(pin) => tracing::warn!(
            "SIGHUP: certificate reloaded with a new key {} (was {}): clients that pinned the \
             old one at `msg init` will refuse this relay until they pin the new one",
            pin.fingerprint(),
            first.fingerprint()
        ),
        Err(e) => tracing::error!(
            "SIGHUP: reload rejected, the certificate in use is kept: {:#}",
            anyhow::Error::new(e)
        ),
    }
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
