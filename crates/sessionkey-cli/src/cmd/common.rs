//! Options and loading shared by the commands that open sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sessionkey::proto::handshake::{Policy, Responder};
use sessionkey::proto::keys::{read_private_key, Identity, Psk, PublicKey};
use sessionkey::proto::noise::Pattern;
use sessionkey::proto::session::SessionConfig;
use sessionkey::proto::suite::Suite;
use sessionkey::trust::{AuthorizedPeers, KnownPeers};
use sessionkey::tunnel::ServerTrust;

/// A configuration mistake: what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub(crate) String);

pub(crate) fn config_error(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}

/// Session options common to every command that opens sessions.
#[derive(Debug, Clone, clap::Args, serde::Deserialize, Default)]
pub(crate) struct SessionOpts {
    /// Record cipher suite (default: AES-256-GCM with hardware AES, else ChaCha20-Poly1305).
    #[arg(long, value_parser = parse_suite)]
    #[serde(default, deserialize_with = "de_suite")]
    pub(crate) suite: Option<Suite>,
    /// Classical X25519 only, no ML-KEM-768 (on a server: also accept classical clients).
    #[arg(long)]
    #[serde(default)]
    pub(crate) classic: bool,
    /// A pre-shared key file (32 random bytes in base64, mode 0600), mixed into every handshake;
    /// both sides need the same one. Make one with: head -c 32 /dev/urandom | base64 > FILE
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) psk: Option<PathBuf>,
}

fn parse_suite(s: &str) -> Result<Suite, String> {
    Suite::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
        format!("unknown suite {s:?}; choose one of: {}", names.join(", "))
    })
}

fn de_suite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Suite>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| parse_suite(&s).map_err(serde::de::Error::custom))
        .transpose()
}

impl SessionOpts {
    pub(crate) fn suite(&self) -> Suite {
        self.suite.unwrap_or_else(Suite::default_for_this_cpu)
    }

    pub(crate) fn psk(&self) -> Result<Option<[u8; 32]>> {
        self.psk.as_deref().map(read_psk).transpose()
    }
}

fn read_psk(path: &Path) -> Result<[u8; 32]> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("pre-shared key {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(config_error(format!(
            "pre-shared key {} is readable by group or others; fix it with: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("pre-shared key {}", path.display()))?;
    let bytes = STANDARD.decode(text.trim()).map_err(|_| {
        config_error(format!(
            "pre-shared key {} is not base64; make one with: head -c 32 /dev/urandom | base64 > FILE",
            path.display()
        ))
    })?;
    bytes.try_into().map_err(|_| {
        config_error(format!(
            "pre-shared key {} must hold exactly 32 bytes",
            path.display()
        ))
    })
}

pub(crate) fn load_identity(path: &Path) -> Result<Arc<Identity>> {
    Ok(Arc::new(read_private_key(path)?))
}

pub(crate) fn parse_key(s: &str) -> Result<PublicKey> {
    s.parse()
        .map_err(|e| config_error(format!("{e} (from {s:?})")))
}

/// A server's responder: policy from the options, admitted keys from the file and --allow.
pub(crate) fn responder(
    identity: Arc<Identity>,
    opts: &SessionOpts,
    authorized: Option<&Path>,
    allow: &[String],
    insecure_anonymous: bool,
) -> Result<Arc<Responder>> {
    let mut peers = AuthorizedPeers::default();
    if let Some(path) = authorized {
        peers = AuthorizedPeers::load(path)?;
    }
    for key in allow {
        peers.allow(parse_key(key)?);
    }
    if peers.is_empty() && !insecure_anonymous {
        return Err(config_error(
            "no client key is authorized: give --authorized-peers FILE or --allow PUBKEY \
             (or --insecure-anonymous to admit anyone)",
        ));
    }
    let mut policy = Policy {
        require_hybrid: !opts.classic,
        ..Policy::default()
    };
    if insecure_anonymous {
        policy.allow_anonymous = true;
        policy.patterns.extend([Pattern::NK, Pattern::NN]);
    }
    let psk = opts.psk()?.map(Psk::from_bytes);
    let source = authorized
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--allow".into());
    let mut responder = Responder::new(policy, Some(identity), psk);
    if !insecure_anonymous {
        let peers = Arc::new(peers);
        responder = responder.with_authorizer(Arc::new(move |key: &PublicKey| {
            let ok = peers.contains(key);
            if !ok {
                tracing::warn!(
                    "refused peer key {}: not in {source}; to admit it, add this line:\n  {}",
                    key.fingerprint(),
                    key.to_line("")
                );
            }
            ok
        }));
    }
    Ok(Arc::new(responder))
}

/// A client's server check from the options.
pub(crate) fn server_trust(
    server_key: Option<&str>,
    known_peers: Option<&Path>,
    accept_new: bool,
    insecure_anonymous: bool,
) -> Result<ServerTrust> {
    match (server_key, known_peers) {
        (Some(k), None) => Ok(ServerTrust::Pinned(parse_key(k)?)),
        (None, Some(file)) => Ok(ServerTrust::KnownPeers {
            file: KnownPeers::new(file),
            accept_new,
        }),
        (None, None) if insecure_anonymous => Ok(ServerTrust::InsecureNone),
        (None, None) => Err(config_error(
            "the server's key is not pinned: give --server-key PUBKEY or --known-peers FILE \
             (with --accept-new to learn it on first use)",
        )),
        (Some(_), Some(_)) => Err(config_error("give --server-key or --known-peers, not both")),
    }
}

pub(crate) fn session_config() -> SessionConfig {
    SessionConfig::default()
}
