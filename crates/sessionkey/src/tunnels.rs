//! The running tunnels of one configuration, and reloading it in place (SIGHUP to
//! `tunnel --config` and `tunnel server`).
//!
//! [`Tunnels::apply`] takes the configuration's tables. It builds every one first (keys,
//! trust files, certificates are read) and binds every new address; if anything fails,
//! nothing changes and the error says why. Otherwise: tunnels no longer named stop (their
//! listener closes and their sessions are cut); new ones start; every other tunnel gets its
//! new configuration on the listener it has when its address is unchanged (its sessions
//! carry on), or on a new one; and the live sessions of keys a server no longer authorizes
//! are cut at once, with a log line naming each key's fingerprint.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinError, JoinSet};

use crate::config::{ConfigError, TunnelTable};
use crate::fleet::gateway::{FleetPeers, PeersOptions};
use crate::status::Registry;
use crate::trust::LivePeers;
use crate::tunnel::{self, ClientConfig, ServerConfig, ServerTransport, TunnelSessions};

/// One running tunnel.
#[derive(Debug)]
struct Running {
    server: bool,
    listen: String,
    listener: Arc<TcpListener>,
    task: AbortHandle,
    sessions: TunnelSessions,
    /// The authorized set its server's transport consults (servers only).
    peers: Option<LivePeers>,
    /// The follower of its peers database (servers with `peers_database`).
    fleet: Option<FleetPeers>,
}

/// A table built, ready to start.
enum Built {
    Server(ServerConfig, Option<FleetPeers>),
    Client(ClientConfig),
}

/// What [`Tunnels::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Tunnels started (new names).
    pub started: Vec<String>,
    /// Tunnels given their configuration again (same name), on their listener.
    pub reloaded: Vec<String>,
    /// Tunnels stopped (names no longer in the configuration).
    pub stopped: Vec<String>,
    /// Live sessions cut because their key is no longer authorized.
    pub revoked_sessions: usize,
}

/// The running tunnels of a process.
#[derive(Debug)]
pub struct Tunnels {
    registry: Registry,
    state_dir: PathBuf,
    running: BTreeMap<String, Running>,
    tasks: JoinSet<io::Result<()>>,
    /// The tunnel of each task still wanted (an aborted task's id is removed).
    names: HashMap<tokio::task::Id, String>,
}

impl Tunnels {
    /// No tunnel yet; sessions show in `registry`; self-signed TLS certificates are made
    /// in `state_dir`.
    pub fn new(registry: Registry, state_dir: PathBuf) -> Self {
        Self {
            registry,
            state_dir,
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// Number of running tunnels.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether no tunnel runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Run exactly `tables` (see the module documentation); on an error nothing changed.
    pub async fn apply(&mut self, tables: Vec<TunnelTable>) -> Result<Applied, ConfigError> {
        if tables.is_empty() {
            return Err(ConfigError::Invalid(
                "the configuration has no [[tunnel]] tables".into(),
            ));
        }
        // Build everything before touching what runs.
        let mut built = Vec::with_capacity(tables.len());
        let (mut names, mut addrs) = (Vec::new(), Vec::new());
        for table in tables {
            let name = table.name().to_string();
            if names.contains(&name) {
                return Err(ConfigError::Invalid(format!(
                    "two tunnels are named {name:?}; names must differ (logs and status use them)"
                )));
            }
            if addrs.iter().any(|a| a == table.listen()) {
                return Err(ConfigError::Invalid(format!(
                    "two tunnels listen on {}; give each tunnel its own address",
                    table.listen()
                )));
            }
            names.push(name.clone());
            addrs.push(table.listen().to_string());
            let config = match &table {
                TunnelTable::Server(s) => match s.fleet_options(&self.state_dir)? {
                    None => Built::Server(s.build(&self.state_dir)?, None),
                    Some(options) => {
                        let fleet = self.fleet_for(&name, options).await?;
                        let ticketer = fleet.ticketer().map(|t| t as Arc<_>);
                        let config =
                            s.build_with(&self.state_dir, fleet.peers().clone(), ticketer)?;
                        Built::Server(config, Some(fleet))
                    }
                },
                TunnelTable::Client(c) => Built::Client(c.build()?),
            };
            built.push((name, table.listen().to_string(), config));
        }
        // Then the listeners: an unchanged address keeps its socket (and its backlog).
        let mut listeners = Vec::with_capacity(built.len());
        for (_, listen, _) in &built {
            let kept = self
                .running
                .values()
                .find(|r| &r.listen == listen)
                .map(|r| r.listener.clone());
            let listener = match kept {
                Some(l) => l,
                None => Arc::new(TcpListener::bind(listen).await.map_err(|source| {
                    ConfigError::Listen {
                        addr: listen.clone(),
                        source,
                    }
                })?),
            };
            listeners.push(listener);
        }
        // Nothing can fail from here on.
        let mut applied = Applied::default();
        let wanted: Vec<&String> = built.iter().map(|(name, _, _)| name).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.running.remove(&name) {
                self.stop(&old);
                tracing::info!(tunnel = %name, "tunnel removed from the configuration; stopped");
                applied.stopped.push(name);
            }
        }
        for ((name, listen, config), listener) in built.into_iter().zip(listeners) {
            let old = self.running.remove(&name);
            let server = matches!(config, Built::Server(..));
            let mut sessions = match &old {
                Some(old) if old.server == server => {
                    self.names.remove(&old.task.id());
                    old.task.abort();
                    applied.reloaded.push(name.clone());
                    old.sessions.clone()
                }
                Some(old) => {
                    self.stop(old);
                    applied.reloaded.push(name.clone());
                    TunnelSessions::default()
                }
                None => {
                    applied.started.push(name.clone());
                    TunnelSessions::default()
                }
            };
            let (task, peers, fleet) = match config {
                Built::Server(config, fleet) => {
                    if let Some(fleet) = &fleet {
                        // The database's removals and kicks close this tunnel's sessions.
                        sessions.by_key = fleet.sessions().clone();
                        self.registry.add_fleet(fleet.clone());
                    } else {
                        self.registry.remove_fleet(&name);
                    }
                    let revoke = match (old.as_ref().and_then(|o| o.peers.as_ref()), &config.peers)
                    {
                        // The old set's holders (handshakes under way) see the new one too.
                        (Some(old), Some(new)) => old.replace(new.snapshot().iter().copied()),
                        _ => Vec::new(),
                    };
                    let peers = config.peers.clone();
                    log_server(&config, &listener);
                    let config = Arc::new(config);
                    let task = self.tasks.spawn(tunnel::serve_server(
                        listener.clone(),
                        config.clone(),
                        sessions.clone(),
                        self.registry.clone(),
                    ));
                    for key in revoke.iter().filter(|k| !config.still_admits(k)) {
                        applied.revoked_sessions += sessions.by_key.revoke(key);
                    }
                    (task, peers, fleet)
                }
                Built::Client(config) => {
                    tracing::info!(
                        tunnel = %config.name,
                        listen = %tunnel::local_addr(&listener),
                        server = %config.server,
                        "tunnel client ready"
                    );
                    let task = self.tasks.spawn(tunnel::serve_client(
                        listener.clone(),
                        Arc::new(config),
                        sessions.clone(),
                        self.registry.clone(),
                    ));
                    self.registry.remove_fleet(&name);
                    (task, None, None)
                }
            };
            self.names.insert(task.id(), name.clone());
            self.running.insert(
                name,
                Running {
                    server,
                    listen,
                    listener,
                    task,
                    sessions,
                    peers,
                    fleet,
                },
            );
        }
        self.registry.set_loaded(SystemTime::now());
        Ok(applied)
    }

    fn stop(&mut self, old: &Running) {
        self.names.remove(&old.task.id());
        old.task.abort();
        old.sessions.stop();
        if old.fleet.is_some() {
            self.registry
                .remove_fleet(old.fleet.as_ref().map_or("", |f| f.tunnel()));
        }
    }

    /// The follower of `options`' database for tunnel `name`: the running one when a
    /// reload leaves its options as they were (its list and sessions carry on), else a new
    /// one on the tunnel's sessions (read from the database, or its cache, before anything
    /// changes).
    async fn fleet_for(
        &self,
        name: &str,
        options: PeersOptions,
    ) -> Result<FleetPeers, ConfigError> {
        let old = self.running.get(name);
        if let Some(fleet) = old
            .and_then(|r| r.fleet.as_ref())
            .filter(|f| f.options() == &options)
        {
            return Ok(fleet.clone());
        }
        let sessions = old
            .filter(|r| r.server)
            .map(|r| r.sessions.by_key.clone())
            .unwrap_or_default();
        FleetPeers::start(
            options,
            LivePeers::default(),
            sessions,
            self.registry.clone(),
        )
        .await
        .map_err(|e| ConfigError::Fleet(Box::new(e)))
    }

    /// The next tunnel whose task ended by itself (a client whose server's key was
    /// refused, or a bug): its name and how it ended. `None` once no task is left.
    /// Tasks stopped by [`Tunnels::apply`] are not reported.
    pub async fn join_next(&mut self) -> Option<(String, Result<io::Result<()>, JoinError>)> {
        loop {
            let done = self.tasks.join_next_with_id().await?;
            let id = match &done {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            let Some(name) = self.names.remove(&id) else {
                continue;
            };
            self.running.remove(&name);
            return Some((name, done.map(|(_, result)| result)));
        }
    }
}

fn log_server(config: &ServerConfig, listener: &TcpListener) {
    let transport = match &config.transport {
        ServerTransport::Native(_) => "native".to_string(),
        ServerTransport::Tls(tls) => format!("tls, certificate key {}", tls.pin().to_line("")),
    };
    tracing::info!(
        tunnel = %config.name,
        listen = %tunnel::local_addr(listener),
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
}
