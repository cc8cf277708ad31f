//! `sessionkey peers add|remove|list --database URL`: the authorized peers of a fleet of
//! tunnel gateways, in PostgreSQL (docs/OPERATIONS.md, "A fleet of gateways").

use anyhow::{Context, Result};
use sessionkey::fleet::db::{Added, KickTarget};
use sessionkey::fleet::gateway::{check_group, CONNECT_TIMEOUT};
use sessionkey::fleet::{FleetDb, PeerRecord, PeerSelector, DEFAULT_GROUP};
use sessionkey::trust::PeerKey;

use super::common::UsageError;
use super::msg::escape_controls;

/// `sessionkey peers ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Authorize a key on every gateway of a group (each admits it within a second).
    ///
    /// Example: sessionkey peers add "$(cat alice.pub)" --database postgres://admin@db/fleet
    Add(AddArgs),
    /// Remove a key: every gateway of the group closes its live sessions and refuses it
    /// from then on, within a second.
    ///
    /// Example: sessionkey peers remove SHA256:3fGh... --database postgres://admin@db/fleet
    Remove(RemoveArgs),
    /// List the authorized keys of a group.
    List(ListArgs),
    /// Close live sessions on every gateway: all of a key's (it stays authorized, so its
    /// client may connect again), or one session by the id `status --database` shows.
    ///
    /// Example: sessionkey peers kick 1bfc33a749cf7b72 --database postgres://admin@db/fleet
    Kick(KickArgs),
}

/// `peers kick` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct KickArgs {
    /// A session id (16 hex digits, as `status --database` shows it), or a key (its line,
    /// .pub file or fingerprint `SHA256:...`).
    target: String,
    /// The fleet's PostgreSQL database (postgres://USER:PASSWORD@HOST/DB); from
    /// SESSIONKEY_PEERS_DATABASE when not given.
    #[arg(
        long,
        value_name = "URL",
        env = "SESSIONKEY_PEERS_DATABASE",
        hide_env_values = true
    )]
    database: String,
}

/// The database and group every `peers` command takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The fleet's PostgreSQL database (postgres://USER:PASSWORD@HOST/DB); from
    /// SESSIONKEY_PEERS_DATABASE when not given.
    #[arg(
        long,
        value_name = "URL",
        env = "SESSIONKEY_PEERS_DATABASE",
        hide_env_values = true
    )]
    database: String,
    /// The group of peers (one database serves several tunnels, one group each).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_GROUP)]
    group: String,
}

/// `peers add` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The key as trust files hold it (`sessionkey-x25519 BASE64 [comment]` or
    /// `tls-spki-sha256 BASE64 [comment]`), or a .pub file holding that line.
    key: String,
    /// What the key belongs to (default: the comment of the key line).
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Who adds it (default: the login name, $USER).
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// `peers remove` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct RemoveArgs {
    /// The key (as trust files hold it, or a .pub file), or its fingerprint `SHA256:...`
    /// as logs and `peers list` show it.
    key: String,
    #[command(flatten)]
    target: Target,
}

/// `peers list` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

impl Target {
    async fn open(&self) -> Result<FleetDb> {
        check_group(&self.group).map_err(UsageError)?;
        Ok(FleetDb::open(&self.database, CONNECT_TIMEOUT).await?)
    }
}

/// A key argument: the line itself, or a file holding it.
fn key_text(arg: &str) -> Result<String> {
    // Base64 may hold '/', never '.': a key is a file only if it names one or ends in .pub.
    let looks_like_file = !arg.contains(char::is_whitespace)
        && !arg.starts_with("SHA256:")
        && (arg.ends_with(".pub") || std::path::Path::new(arg).is_file());
    if looks_like_file {
        return std::fs::read_to_string(arg)
            .with_context(|| format!("cannot read the key file {arg}"));
    }
    Ok(arg.to_string())
}

/// Split `TYPE BASE64 [comment]` into the key and its comment.
fn parse_line(text: &str) -> Result<(PeerKey, String)> {
    let text = text.trim();
    let key: PeerKey = text.parse().map_err(|e| {
        UsageError(format!(
            "{e} (from {text:?}); give the key as `sessionkey pubkey` prints it, or a .pub file"
        ))
    })?;
    let comment = text
        .split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ");
    Ok((key, comment))
}

fn login_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Add(a) => {
            let (key, line_comment) = parse_line(&key_text(&a.key)?)?;
            let comment = a.comment.unwrap_or(line_comment);
            let db = a.target.open().await?;
            let by = a.by.unwrap_or_else(login_name);
            match db.add_peer(&a.target.group, &key, &comment, &by).await? {
                Added::New => println!(
                    "added {} to group {} ({}); every gateway of the group admits it now",
                    key.fingerprint(),
                    a.target.group,
                    db.url()
                ),
                Added::Already(p) => println!(
                    "{} is already in group {} (added by {} on {}); nothing changed",
                    key.fingerprint(),
                    a.target.group,
                    escape_controls(&p.added_by, false),
                    sessionkey::fleet::db::utc(p.added_at)
                ),
            }
        }
        Command::Remove(a) => {
            let text = key_text(&a.key)?;
            let selector: PeerSelector = text.trim().parse().map_err(|e| {
                UsageError(format!(
                    "{e} (from {:?}); give the key's line, its .pub file, or its fingerprint \
                     SHA256:... as `sessionkey peers list` shows it",
                    text.trim()
                ))
            })?;
            let db = a.target.open().await?;
            let removed = db.remove_peer(&a.target.group, &selector).await?;
            if removed.is_empty() {
                return Err(UsageError(format!(
                    "no such key in group {} of {}; `sessionkey peers list --group {}` shows \
                     the keys there",
                    a.target.group,
                    db.url(),
                    a.target.group
                ))
                .into());
            }
            for p in &removed {
                println!(
                    "removed {} from group {}; every gateway of the group closes its sessions \
                     and refuses it now",
                    p.fingerprint, a.target.group
                );
            }
        }
        Command::Kick(a) => kick(a).await?,
        Command::List(a) => {
            let db = a.target.open().await?;
            let peers = db.peers(&a.target.group).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
            } else {
                print_table(&peers, &a.target.group);
            }
        }
    }
    Ok(())
}

async fn kick(a: KickArgs) -> Result<()> {
    let is_session = a.target.len() == 16 && a.target.bytes().all(|b| b.is_ascii_hexdigit());
    let target = if is_session {
        KickTarget::Session(a.target.to_ascii_lowercase())
    } else {
        let text = key_text(&a.target)?;
        let fingerprint = match text.trim().parse::<PeerSelector>() {
            Ok(PeerSelector::Fingerprint(f)) => f,
            Ok(PeerSelector::Key(k)) => k.fingerprint().to_string(),
            Err(e) => {
                return Err(UsageError(format!(
                    "{e} (from {:?}); give a session id (16 hex digits, as `sessionkey status \
                     --database` shows it), a key line, a .pub file or a fingerprint SHA256:...",
                    text.trim()
                ))
                .into())
            }
        };
        KickTarget::Key(fingerprint)
    };
    let db = FleetDb::open(&a.database, CONNECT_TIMEOUT).await?;
    let census = db.census().await?;
    let holders: Vec<&str> = census
        .iter()
        .filter(|g| {
            g.sessions.iter().any(|s| match &target {
                KickTarget::Session(id) => &s.session == id,
                KickTarget::Key(f) => s.peer.as_deref() == Some(f.as_str()),
            })
        })
        .map(|g| g.gateway.as_str())
        .collect();
    if let (KickTarget::Session(id), true) = (&target, holders.is_empty()) {
        return Err(UsageError(format!(
            "no gateway reports a live session {id} to {}; `sessionkey status --database URL` \
             lists them",
            db.url()
        ))
        .into());
    }
    db.kick(target.clone()).await?;
    match target {
        KickTarget::Session(id) => println!("session {id} closed on {}", holders.join(", ")),
        KickTarget::Key(f) => println!(
            "the sessions of {f} are closed on every gateway (reported on: {}); the key \
             stays authorized (`sessionkey peers remove` revokes it)",
            if holders.is_empty() {
                "none".to_string()
            } else {
                holders.join(", ")
            }
        ),
    }
    Ok(())
}

fn print_table(peers: &[PeerRecord], group: &str) {
    if peers.is_empty() {
        println!("no peers in group {group}");
        return;
    }
    println!(
        "{:<52} {:<16} {:<23} comment",
        "fingerprint", "added by", "added"
    );
    for p in peers {
        println!(
            "{:<52} {:<16} {:<23} {}",
            p.fingerprint,
            escape_controls(&p.added_by, false),
            sessionkey::fleet::db::utc(p.added_at),
            escape_controls(&p.comment, false)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::key_text;

    #[test]
    fn a_key_with_a_slash_is_a_key_not_a_file() {
        let bare = "gpvQldPukpNFNJ3BYjq7RWsX7OR0yu9o/OU11eSHAgU=";
        assert_eq!(key_text(bare).unwrap(), bare);
        assert_eq!(key_text("SHA256:a/b").unwrap(), "SHA256:a/b");
        // A .pub name that does not exist is a file that cannot be read, said as such.
        let e = key_text("/nonexistent/alice.pub").unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the key file"),
            "{e:#}"
        );
    }
}
