//! `sessionkey status`: the live sessions of running tunnel processes.

use anyhow::Result;
use serde_json::Value;

/// Arguments of `sessionkey status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show every gateway of a fleet from its PostgreSQL database (the sessions each
    /// reports with its heartbeat) instead of this machine's processes.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

/// `status --database URL`: every gateway's sessions in one table.
async fn fleet(url: &str, json: bool) -> Result<()> {
    use sessionkey::fleet::{census, FleetDb};
    let db = FleetDb::open(url, sessionkey::fleet::gateway::CONNECT_TIMEOUT).await?;
    let gateways = db.census().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&gateways)?);
        return Ok(());
    }
    if gateways.is_empty() {
        println!("no gateway reports to {}", db.url());
        return Ok(());
    }
    println!(
        "{:<24} {:<6} {:<10} {:<16} {:<16} {:<7} {:<22} {:>5} {:>5} {:>12} {:>12} {:>6}",
        "gateway",
        "state",
        "tunnel",
        "session",
        "peer",
        "proto",
        "suite",
        "tx-ep",
        "rx-ep",
        "sent",
        "received",
        "age"
    );
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    for g in &gateways {
        let state = if g.stale {
            format!("stale {}s", g.heartbeat_age_secs)
        } else {
            "live".to_string()
        };
        if g.sessions.is_empty() {
            println!("{:<24} {:<6} (no sessions)", g.gateway, state);
        }
        for s in &g.sessions {
            let peer = s.peer.as_deref().map_or("-", |f| &f[..f.len().min(16)]);
            println!(
                "{:<24} {:<6} {:<10} {:<16} {:<16} {:<7} {:<22} {:>5} {:>5} {:>12} {:>12} {:>6}",
                g.gateway,
                state,
                s.tunnel,
                s.session,
                peer,
                s.transport,
                s.suite,
                opt(s.send_epoch),
                opt(s.receive_epoch),
                s.bytes_sent,
                s.bytes_received,
                format!("{}s", s.age_secs),
            );
        }
    }
    let stale = gateways.iter().filter(|g| g.stale).count();
    if stale > 0 {
        println!(
            "{stale} gateway(s) stale: no heartbeat for over {}s (stopped, cut off, or killed); \
             their rows go after {}s",
            census::STALE_AFTER.as_secs(),
            census::REMOVE_AFTER.as_secs()
        );
    }
    Ok(())
}

pub(crate) async fn run(args: &Args) -> Result<()> {
    if let Some(url) = &args.database {
        return fleet(url, args.json).await;
    }
    let processes = sessionkey::status::query_all().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(processes))?
        );
        return Ok(());
    }
    if processes.is_empty() {
        println!(
            "no running sessionkey tunnel (control sockets in {})",
            sessionkey::status::control_dir().display()
        );
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for p in &processes {
        if let (Some(at), Some(unix)) = (
            p["config_loaded"].as_str(),
            p["config_loaded_unix"].as_u64(),
        ) {
            println!(
                "pid {}: configuration loaded {at} ({}s ago)",
                p["pid"],
                now.saturating_sub(unix)
            );
        }
    }
    println!(
        "{:<8} {:<10} {:<7} {:<22} {:<16} {:>6} {:<24} {:>5} {:>5} {:>12} {:>12} {:>9}",
        "pid",
        "tunnel",
        "role",
        "remote",
        "peer",
        "age",
        "suite",
        "tx-ep",
        "rx-ep",
        "sent",
        "received",
        "rotate-in"
    );
    for p in &processes {
        for s in p["sessions"].as_array().into_iter().flatten() {
            let peer = s["peer"]
                .as_str()
                .map(|f| &f[..f.len().min(16)])
                .unwrap_or("-");
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!(
                "{:<8} {:<10} {:<7} {:<22} {:<16} {:>6} {:<24} {:>5} {:>5} {:>12} {:>12} {:>9}",
                text(&p["pid"]),
                text(&s["tunnel"]),
                text(&s["role"]),
                text(&s["remote"]),
                peer,
                format!("{}s", text(&s["age_secs"])),
                text(&s["suite"]),
                text(&s["send"]["epoch"]),
                text(&s["receive"]["epoch"]),
                text(&s["send"]["bytes"]),
                text(&s["receive"]["bytes"]),
                // Native: the next re-handshake; TLS: the next key update by time.
                s["next_rehandshake_secs"]
                    .as_u64()
                    .or_else(|| s["next_key_update_secs"].as_u64())
                    .map(|v| format!("{v}s"))
                    .unwrap_or("-".into()),
            );
        }
    }
    Ok(())
}
