//! `sessionkey check FILE`: validate a tunnel or VPN configuration without starting
//! anything; every problem as `FILE:LINE: field: what and the fix`.

use std::path::PathBuf;

use anyhow::Result;
use sessionkey::check::{self, Kind, Problem};
use sessionkey::config::build_table;
use sessionkey::vpn::VpnConfig;

use super::common::{config_error, state_dir};

/// Arguments of `sessionkey check`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A tunnel configuration (`[[tunnel]]` tables, docs/CONFIG.md) or a VPN configuration
    /// (`[interface]` and `[[peer]]`, docs/VPN.md). Exit 0 when clean, 78 otherwise.
    file: PathBuf,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let path = &args.file;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let p = Problem {
                path: path.clone(),
                line: 0,
                field: "file".into(),
                message: format!("cannot read it: {e}; check the path and its permissions"),
            };
            return report(&[p], "");
        }
    };
    match check::kind_of(&text) {
        Kind::Vpn => match VpnConfig::parse(path, &text) {
            Ok(config) => {
                println!(
                    "{}: ok: VPN {} with {} peer(s)",
                    path.display(),
                    config.name,
                    config.peers.len()
                );
                Ok(())
            }
            Err(e) => {
                let p = Problem {
                    path: e.path,
                    line: e.line,
                    field: e.field,
                    message: e.message,
                };
                // The VPN's parser stops at its first mistake.
                report(
                    &[p],
                    " (fix it and check again: later ones are not checked yet)",
                )
            }
        },
        Kind::Tunnel => {
            let mut found = check::tunnel_file(path, &text);
            for table in found.clean {
                let tls = table.table.get("transport").and_then(|v| v.as_str()) == Some("tls");
                let server = table.table.get("role").and_then(|v| v.as_str()) == Some("server");
                // Building these would make a self-signed certificate or a key log file:
                // `check` changes nothing, so their fields were checked above only.
                if tls
                    && ((server && !table.table.contains_key("cert"))
                        || table.table.contains_key("keylog"))
                {
                    continue;
                }
                let base = path.parent().unwrap_or(std::path::Path::new(""));
                if let Err(e) = build_table(table.table, base, &state_dir()) {
                    found.problems.push(Problem {
                        path: path.clone(),
                        line: table.line,
                        field: format!("tunnel[{}]", table.index),
                        message: format!("{e:#}"),
                    });
                }
            }
            if found.problems.is_empty() {
                println!("{}: ok: {} tunnel(s)", path.display(), found.tables);
                return Ok(());
            }
            found.problems.sort_by_key(|p| p.line);
            report(&found.problems, "")
        }
    }
}

/// Prints each problem on standard error; the error (exit 78) counts them.
fn report(problems: &[Problem], note: &str) -> Result<()> {
    for p in problems {
        eprintln!("{p}");
    }
    let n = problems.len();
    let s = if n == 1 { "" } else { "s" };
    Err(config_error(format!(
        "{}: {n} problem{s}{note}",
        problems
            .first()
            .map(|p| p.path.display().to_string())
            .unwrap_or_default()
    )))
}
