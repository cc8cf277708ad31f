//! The tunnel file (docs/CONFIG.md): `[[tunnel]]` tables, each a server or a client, with
//! the fields of `tunnel server` and `tunnel client`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ServerSide;
use super::{invalid, rebase, ClientSide, ClientTransportOpts, ConfigError, DatabasePeers};
use super::{ServerTransportOpts, SessionOpts};
use crate::admission::Limits;
use crate::fleet::db::redact_url;
use crate::fleet::gateway::{check_group, PeersOptions};
use crate::fleet::DEFAULT_GROUP;
use crate::trust::LivePeers;
use crate::tunnel::{ClientConfig, ServerConfig};

/// `tunnel server` options (also the fields of a `role = "server"` table).
#[derive(Debug, Clone, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    /// A name for logs and status.
    #[cfg_attr(feature = "clap", arg(long, default_value = "server"))]
    #[serde(default = "default_server_name")]
    pub name: String,
    /// Address to accept sessions on.
    #[cfg_attr(feature = "clap", arg(long))]
    pub listen: String,
    /// Where to forward the plain bytes.
    #[cfg_attr(feature = "clap", arg(long))]
    pub to: String,
    /// The server's private key (native transport).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Keys allowed to connect, one `sessionkey-x25519 BASE64 comment` a line.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub authorized_peers: Option<PathBuf>,
    /// A key allowed to connect (repeatable).
    #[cfg_attr(feature = "clap", arg(long, value_name = "PUBKEY"))]
    #[serde(default)]
    pub allow: Vec<String>,
    /// Admit any client, with or without a key or certificate. Anyone who can reach the
    /// listening address reaches the target.
    #[cfg_attr(feature = "clap", arg(long, visible_alias = "insecure-anonymous"))]
    #[serde(default, alias = "insecure_anonymous")]
    pub any_client: bool,
    /// Take the authorized peers from this PostgreSQL database (postgres://USER@HOST/DB;
    /// a password may also come from PGPASSWORD), shared by a fleet of gateways and kept
    /// with `sessionkey peers`: added keys are admitted, removed ones refused and their
    /// sessions closed, at once.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "URL", conflicts_with_all = ["authorized_peers", "allow", "any_client"])
    )]
    #[serde(default)]
    pub peers_database: Option<String>,
    /// The group of peers in --peers-database this tunnel admits (default: "default").
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "NAME", requires = "peers_database")
    )]
    #[serde(default)]
    pub peers_group: Option<String>,
    /// While --peers-database cannot be reached, refuse every new session (default:
    /// fail-static, keep admitting the last list read; live sessions go on either way).
    #[cfg_attr(feature = "clap", arg(long, requires = "peers_database"))]
    #[serde(default)]
    pub fail_closed: bool,
    /// TLS: share session-ticket keys with the other gateways through --peers-database,
    /// sealed under the key-encryption key in FILE (32 random bytes in base64, mode 0600,
    /// the same file on every gateway), so a client resumes on any of them.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "FILE", requires = "peers_database")
    )]
    #[serde(default)]
    pub ticket_key_file: Option<PathBuf>,
    /// Connections in their handshake at once; more are reset at once (default: from the
    /// open-files limit, at most 1024).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))
    )]
    #[serde(default)]
    pub max_handshakes: Option<u32>,
    /// Connections in their handshake at once from one address (IPv6: one /64)
    /// (default: a quarter of max-handshakes, at least 2).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))
    )]
    #[serde(default)]
    pub max_handshakes_per_source: Option<u32>,
    /// Established sessions at once; more are refused (default: no bound but the
    /// open-files limit).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))
    )]
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// New handshakes a second from one address, twice that at once; more are reset at
    /// once (default: 200). Bounds what a replayed hello can make the server compute.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))
    )]
    #[serde(default)]
    pub handshakes_per_second_per_source: Option<u32>,
    /// Session options.
    #[cfg_attr(feature = "clap", command(flatten))]
    #[serde(flatten)]
    pub opts: SessionOpts,
    /// Transport options.
    #[cfg_attr(feature = "clap", command(flatten))]
    #[serde(flatten)]
    pub tls: ServerTransportOpts,
}

/// `tunnel client` options (also the fields of a `role = "client"` table).
#[derive(Debug, Clone, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct ClientTable {
    /// A name for logs and status.
    #[cfg_attr(feature = "clap", arg(long, default_value = "client"))]
    #[serde(default = "default_client_name")]
    pub name: String,
    /// Local address to accept plain connections on.
    #[cfg_attr(feature = "clap", arg(long))]
    pub listen: String,
    /// The tunnel server's address.
    #[cfg_attr(feature = "clap", arg(long))]
    pub server: String,
    /// This client's private key (native transport; TLS clients need none).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The server's public key (pins it; fastest handshake).
    #[cfg_attr(feature = "clap", arg(long, value_name = "PUBKEY"))]
    #[serde(default)]
    pub server_key: Option<String>,
    /// Server keys by host, in ssh's known_hosts grammar.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub known_peers: Option<PathBuf>,
    /// Learn an unknown server's key into --known-peers (trust on first use).
    #[cfg_attr(feature = "clap", arg(long, requires = "known_peers"))]
    #[serde(default)]
    pub accept_new: bool,
    /// Do not check the server's key at all. Insecure.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub insecure_anonymous: bool,
    /// Session options.
    #[cfg_attr(feature = "clap", command(flatten))]
    #[serde(flatten)]
    pub opts: SessionOpts,
    /// Transport options.
    #[cfg_attr(feature = "clap", command(flatten))]
    #[serde(flatten)]
    pub tls: ClientTransportOpts,
}

fn default_server_name() -> String {
    "server".into()
}

fn default_client_name() -> String {
    "client".into()
}

/// One `[[tunnel]]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum TunnelTable {
    /// `role = "server"`.
    Server(ServerTable),
    /// `role = "client"`.
    Client(ClientTable),
}

/// A tunnel file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// Serve Prometheus metrics here, as `--metrics` (the flag wins).
    #[serde(default)]
    pub metrics: Option<String>,
    /// The tunnels.
    pub tunnel: Vec<TunnelTable>,
}

impl TunnelFile {
    /// Read a tunnel file; its relative paths are made relative to its directory (as in a
    /// VPN configuration), not to the working directory. A file that does not parse is
    /// reported with every problem [`crate::check::tunnel_file`] finds, each at its line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: format!("cannot read {}", path.display()),
            source,
        })?;
        let mut file: Self = toml::from_str(&text).map_err(|e| {
            let problems = crate::check::tunnel_file(path, &text).problems;
            if problems.is_empty() {
                return invalid(format!("{}: {e}", path.display()));
            }
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            invalid(lines.join("\n"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for table in &mut file.tunnel {
            table.rebase(base);
        }
        Ok(file)
    }
}

impl TunnelTable {
    /// The table's name (for logs, status and metrics).
    pub fn name(&self) -> &str {
        match self {
            Self::Server(s) => &s.name,
            Self::Client(c) => &c.name,
        }
    }

    /// The address it listens on.
    pub fn listen(&self) -> &str {
        match self {
            Self::Server(s) => &s.listen,
            Self::Client(c) => &c.listen,
        }
    }

    /// Make the table's relative paths relative to `base`, the configuration file's
    /// directory.
    pub fn rebase(&mut self, base: &Path) {
        match self {
            Self::Server(s) => {
                rebase(&mut s.key, base);
                rebase(&mut s.authorized_peers, base);
                rebase(&mut s.ticket_key_file, base);
                s.opts.rebase(base);
                s.tls.rebase(base);
            }
            Self::Client(c) => {
                rebase(&mut c.key, base);
                rebase(&mut c.known_peers, base);
                c.opts.rebase(base);
                c.tls.rebase(base);
            }
        }
    }
}

/// Builds one `[[tunnel]]` table as `tunnel --config` does, without binding anything (for
/// `sessionkey check`); relative paths are taken from `base`, the file's directory.
pub fn build_table(table: toml::Table, base: &Path, state_dir: &Path) -> Result<(), ConfigError> {
    let mut table: TunnelTable = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| invalid(e.message().trim().to_string()))?;
    table.rebase(base);
    match table {
        TunnelTable::Server(s) => s.build(state_dir).map(drop),
        TunnelTable::Client(c) => c.build().map(drop),
    }
}

impl ServerTable {
    /// Load its keys and trust files and build the server's configuration; a self-signed
    /// TLS certificate is made in (or read from) `state_dir`.
    ///
    /// With `peers_database` the admitted keys start empty (as `sessionkey check` builds
    /// a table); [`ServerTable::build_with`] gives them.
    pub fn build(&self, state_dir: &Path) -> Result<ServerConfig, ConfigError> {
        self.build_with(state_dir, LivePeers::default(), None)
    }

    /// [`ServerTable::build`], admitting the keys of `database_peers` when the table names
    /// a peers database (the set a running [`FleetPeers`](crate::fleet::gateway::FleetPeers)
    /// keeps), and (TLS) issuing tickets with `ticketer`.
    pub fn build_with(
        &self,
        state_dir: &Path,
        database_peers: LivePeers,
        ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    ) -> Result<ServerConfig, ConfigError> {
        let database = self.fleet_options(state_dir)?.map(|o| DatabasePeers {
            peers: database_peers,
            source: format!(
                "group {} of the peers database {}",
                o.group,
                redact_url(&o.url)
            ),
            group: o.group,
            ticketer,
        });
        let (transport, peers) = self.tls.build(ServerSide {
            key: self.key.as_deref(),
            opts: &self.opts,
            authorized: self.authorized_peers.as_deref(),
            allow: &self.allow,
            insecure_anonymous: self.any_client,
            state_dir,
            database: database.as_ref(),
        })?;
        Ok(ServerConfig {
            name: self.name.clone(),
            target: self.to.clone(),
            session: self.opts.session_config(),
            transport,
            limits: self.limits(),
            peers,
        })
    }

    /// Where the peers come from when `peers_database` is set (the cache file in
    /// `state_dir`).
    pub fn fleet_options(&self, state_dir: &Path) -> Result<Option<PeersOptions>, ConfigError> {
        let Some(url) = &self.peers_database else {
            if self.peers_group.is_some() || self.fail_closed {
                return Err(invalid(
                    "peers_group and fail_closed go with peers_database; add it or leave them out",
                ));
            }
            return Ok(None);
        };
        if self.authorized_peers.is_some() || !self.allow.is_empty() || self.any_client {
            return Err(invalid(
                "peers_database decides who is admitted: leave out authorized_peers, allow \
                 and any_client",
            ));
        }
        if self.ticket_key_file.is_some() && self.tls.transport != super::Transport::Tls {
            return Err(invalid(
                "ticket_key_file shares TLS session tickets: it goes with transport = \"tls\"",
            ));
        }
        let group = self
            .peers_group
            .clone()
            .unwrap_or_else(|| DEFAULT_GROUP.into());
        check_group(&group).map_err(invalid)?;
        Ok(Some(PeersOptions {
            url: url.clone(),
            cache: PeersOptions::default_cache(state_dir, &group),
            group,
            fail_closed: self.fail_closed,
            tunnel: self.name.clone(),
            ticket_key_file: self.ticket_key_file.clone(),
        }))
    }

    /// The defaults for this process's open-files limit, with what the options change.
    pub fn limits(&self) -> Limits {
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

impl ClientTable {
    /// Load its keys and trust files and build the client's configuration.
    pub fn build(&self) -> Result<ClientConfig, ConfigError> {
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
