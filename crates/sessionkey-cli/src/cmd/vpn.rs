//! `sessionkey vpn up CONFIG | down NAME | show [NAME|all] [dump] [--json]`: the VPN
//! (docs/VPN.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;
use sessionkey::vpn::{self, StopHandle, VpnConfig, VpnError};

use super::common::config_error;

/// The `vpn` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Bring up the VPN described by CONFIG and run it in the foreground (systemd-friendly)
    /// until SIGTERM, Ctrl-C or `sessionkey vpn down NAME`; the interface is removed on exit.
    Up(UpArgs),
    /// Stop the running VPN NAME (its interface is removed).
    Down(DownArgs),
    /// Show the running VPNs: peers, endpoints, latest handshakes, traffic, counters.
    Show(ShowArgs),
    /// Add, change or remove a peer of a running VPN without touching the others (as `wg
    /// set`): `vpn set NAME peer PUBKEY [allowed-ips NET[,NET...]] [endpoint HOST:PORT]
    /// [persistent-keepalive SECS|off] [remove]`. allowed-ips replaces the peer's list.
    Set(SetArgs),
    /// Make a running VPN's peers those of CONFIG (as `wg syncconf`): new peers added,
    /// missing ones removed, the others changed in place, their sessions kept. Interface
    /// settings in CONFIG are not applied (restart for those).
    Syncconf(SyncconfArgs),
}

/// Arguments of `vpn set`.
#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// The interface name.
    name: String,
    /// `peer PUBKEY` then settings, as `wg set`.
    #[arg(num_args = 2.., required = true, allow_hyphen_values = true)]
    settings: Vec<String>,
}

/// Arguments of `vpn syncconf`.
#[derive(Debug, clap::Args)]
pub(crate) struct SyncconfArgs {
    /// The interface name.
    name: String,
    /// The configuration file (the same format as for `vpn up`).
    config: PathBuf,
}

/// Arguments of `vpn up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// The configuration file (TOML; see docs/VPN.md). The interface is named after the file
    /// unless it sets `name`.
    config: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (per peer: latest handshake, bytes,
    /// handshakes, rejected packets; labelled by fingerprint prefix, never a key). Bind it
    /// to a private address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// Arguments of `vpn down`.
#[derive(Debug, clap::Args)]
pub(crate) struct DownArgs {
    /// The interface name.
    name: String,
}

/// Arguments of `vpn show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// Only this interface (`all` or nothing: every running one).
    name: Option<String>,
    /// `dump`: tab-separated lines in `wg show dump`'s format, for scripts and WireGuard
    /// exporters: the interface line (private-key, public-key, listen-port, fwmark), then
    /// one per peer (public-key, preshared-key, endpoint, allowed-ips, latest-handshake as
    /// Unix seconds, transfer-rx, transfer-tx, persistent-keepalive). Keys are shown as
    /// `(hidden)`; with `all` each line starts with the interface name.
    #[arg(value_parser = ["dump"])]
    format: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Up(args) => up(args).await,
        Command::Down(args) => {
            vpn::down(&args.name).await?;
            eprintln!("vpn {} stopped; its interface is removed", args.name);
            Ok(())
        }
        Command::Show(args) => show(args).await,
        Command::Set(args) => {
            let change = parse_set(&args.settings).map_err(config_error)?;
            let done = vpn::set(&args.name, &change).await?;
            eprintln!("vpn {}: {done}", args.name);
            Ok(())
        }
        Command::Syncconf(args) => {
            // Read here (as the caller, who may read root-only key files; the VPN may have
            // dropped root), so mistakes come back with file, line and field.
            let config = VpnConfig::load(&args.config).map_err(|e| config_error(e.to_string()))?;
            let done = vpn::syncconf(&args.name, &config).await?;
            eprintln!("vpn {}: {done}", args.name);
            Ok(())
        }
    }
}

/// `peer PUBKEY [allowed-ips ...] [endpoint ...] [persistent-keepalive ...] [remove]`.
fn parse_set(words: &[String]) -> Result<vpn::PeerChange, String> {
    let usage = "usage: vpn set NAME peer PUBKEY [allowed-ips NET[,NET...]] \
                 [endpoint HOST:PORT] [persistent-keepalive SECS|off] [remove]";
    let mut it = words.iter().map(String::as_str);
    if it.next() != Some("peer") {
        return Err(usage.into());
    }
    let key = it.next().ok_or(usage)?;
    let mut change = vpn::PeerChange {
        public_key: Some(key.parse().map_err(|e| format!("peer {key:?}: {e}"))?),
        ..vpn::PeerChange::default()
    };
    while let Some(word) = it.next() {
        match word {
            "remove" => change.remove = true,
            "allowed-ips" => {
                let list = it.next().ok_or(usage)?;
                change.allowed_ips = Some(
                    list.split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(|c| c.parse().map_err(|e| format!("allowed-ips {c:?}: {e}")))
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
            "endpoint" => {
                let e = it.next().ok_or(usage)?;
                change.endpoint_host = e
                    .parse::<std::net::SocketAddr>()
                    .is_err()
                    .then(|| e.to_string());
                change.endpoint = Some(
                    std::net::ToSocketAddrs::to_socket_addrs(e)
                        .map_err(|err| format!("endpoint {e:?}: {err} (write HOST:PORT)"))?
                        .next()
                        .ok_or_else(|| format!("endpoint {e:?}: no address"))?,
                );
            }
            "persistent-keepalive" => {
                let k = it.next().ok_or(usage)?;
                change.persistent_keepalive = Some(match k {
                    "off" | "0" => None,
                    k => Some(std::time::Duration::from_secs(k.parse().map_err(|_| {
                        format!("persistent-keepalive {k:?}: seconds or off")
                    })?)),
                });
            }
            other => return Err(format!("unknown setting {other:?}; {usage}")),
        }
    }
    Ok(change)
}

/// The exit code of a VPN failure in an error chain's link, if it is one the generic
/// mapping does not know: 69 (unavailable) when no VPN of the name runs (`vpn down nosuch`)
/// or the UDP port is in use; 77 (no permission) when root could not be dropped.
pub(crate) fn exit_code(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    const UNAVAILABLE: u8 = 69;
    const NOPERM: u8 = 77;
    match cause.downcast_ref::<VpnError>() {
        Some(VpnError::Udp { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            return Some(UNAVAILABLE)
        }
        Some(VpnError::Privileges(_)) => return Some(NOPERM),
        _ => {}
    }
    let io = cause.downcast_ref::<std::io::Error>()?;
    if io
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<vpn::NotRunning>().is_some())
    {
        return Some(UNAVAILABLE);
    }
    None
}

async fn up(args: UpArgs) -> Result<()> {
    let config = VpnConfig::load(&args.config).map_err(|e| config_error(e.to_string()))?;
    let name = config.name.clone();
    let ready_name = name.clone();
    let ready = move || super::service::ready(&format!("vpn {ready_name} up"));
    let metrics = match &args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(
                "metrics at http://{}/metrics",
                sessionkey::tunnel::local_addr(&listener)
            );
            Some(listener)
        }
        None => None,
    };
    // SIGHUP reads the file again (as `vpn syncconf`).
    match vpn::run_reloadable(
        config,
        args.config.clone(),
        metrics,
        StopHandle::new(),
        ready,
    )
    .await
    {
        Ok(()) => Ok(()),
        Err(VpnError::Config(e)) => Err(config_error(e.to_string())),
        Err(e) => Err(e).with_context(|| format!("vpn {name}")),
    }
}

async fn show(args: ShowArgs) -> Result<()> {
    let name = args.name.as_deref().filter(|n| *n != "all");
    let all = vpn::show(name).await?;
    if args.format.is_some() {
        for v in &all {
            for line in dump_lines(v, name.is_none()) {
                println!("{line}");
            }
        }
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(all))?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "no running sessionkey VPN (control sockets in {})",
            vpn::vpn_control_dir().display()
        );
        return Ok(());
    }
    for (i, v) in all.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_interface(v);
    }
    Ok(())
}

/// `wg show dump`'s lines for one interface (wg's src/show.c, `dump_print`), with keys
/// that must not leave the process shown as `(hidden)` (wg prints those only as root; this
/// VPN never prints them) and absent values as `(none)`, `0` or `off` as wg does.
pub(crate) fn dump_lines(v: &Value, with_interface: bool) -> Vec<String> {
    let prefix = if with_interface {
        format!("{}\t", text(&v["interface"]))
    } else {
        String::new()
    };
    let or = |x: &Value, none: &str| match x {
        Value::Null => none.to_string(),
        other => text(other),
    };
    let mut lines = vec![format!(
        "{prefix}(hidden)\t{}\t{}\t{}",
        text(&v["public_key"]),
        text(&v["listen_port"]),
        or(&v["fwmark"], "off"),
    )];
    for p in v["peers"].as_array().into_iter().flatten() {
        let ips: Vec<String> = p["allowed_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        lines.push(format!(
            "{prefix}{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            text(&p["public_key"]),
            if p["preshared_key"].as_bool() == Some(true) {
                "(hidden)"
            } else {
                "(none)"
            },
            or(&p["endpoint"], "(none)"),
            if ips.is_empty() {
                "(none)".to_string()
            } else {
                ips.join(",")
            },
            p["latest_handshake_unix"].as_u64().unwrap_or(0),
            p["rx_bytes"].as_u64().unwrap_or(0),
            p["tx_bytes"].as_u64().unwrap_or(0),
            or(&p["persistent_keepalive_secs"], "off"),
        ));
    }
    lines
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn bytes(v: &Value) -> String {
    let b = v.as_u64().unwrap_or(0) as f64;
    match b {
        b if b >= 1024.0 * 1024.0 * 1024.0 => format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0)),
        b if b >= 1024.0 * 1024.0 => format!("{:.2} MiB", b / (1024.0 * 1024.0)),
        b if b >= 1024.0 => format!("{:.2} KiB", b / 1024.0),
        b => format!("{b} B"),
    }
}

fn print_interface(v: &Value) {
    println!(
        "interface: {} (pid {})",
        text(&v["interface"]),
        text(&v["pid"])
    );
    println!("  public key: {}", text(&v["public_key"]));
    println!("  listening port: {}", text(&v["listen_port"]));
    let addrs: Vec<String> = v["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    println!("  addresses: {}  mtu {}", addrs.join(", "), text(&v["mtu"]));
    println!(
        "  suite: {}, {}",
        text(&v["suite"]),
        if v["hybrid"].as_bool() == Some(true) {
            "hybrid X25519 + ML-KEM-768"
        } else {
            "classical X25519"
        }
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        println!();
        println!("peer: {}", text(&p["public_key"]));
        println!("  endpoint: {}", text(&p["endpoint"]));
        let ips: Vec<String> = p["allowed_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!("  allowed ips: {}", ips.join(", "));
        match p["latest_handshake_secs_ago"].as_f64() {
            Some(s) => println!(
                "  latest handshake: {s:.0} s ago (key epoch {}, {} handshakes, send key {})",
                text(&p["epoch"]),
                text(&p["handshakes"]),
                text(&p["send_key"]),
            ),
            None => println!("  latest handshake: none yet"),
        }
        println!(
            "  transfer: {} received, {} sent",
            bytes(&p["rx_bytes"]),
            bytes(&p["tx_bytes"])
        );
    }
    let counters: Vec<String> = v["counters"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !counters.is_empty() {
        println!();
        println!("dropped or refused: {}", counters.join(", "));
    }
}
