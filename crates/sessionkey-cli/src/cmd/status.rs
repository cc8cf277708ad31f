//! `sessionkey status`: the live sessions of running tunnel processes.

use anyhow::Result;
use serde_json::Value;

/// Arguments of `sessionkey status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: &Args) -> Result<()> {
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
