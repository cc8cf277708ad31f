//! Configuration as a library: the tunnel file (docs/CONFIG.md) and its tables, the
//! session and transport options they share with the command line, and how they become a
//! running server's or client's [`ServerConfig`](crate::tunnel::ServerConfig) and
//! [`ClientConfig`](crate::tunnel::ClientConfig): keys loaded, trust files read, the
//! responder and the TLS configuration built. The CLI only parses flags into these
//! structures (with the `clap` feature they derive `clap::Args`), dispatches and renders.
//!
//! Pre-shared key files are in [`crate::psk`], authorized-peers and known-peers files in
//! [`crate::trust`], VPN files in [`crate::vpn::VpnConfig`], field-by-field checks for
//! `sessionkey check` in [`crate::check`].

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sessionkey_proto::keys::{read_private_key, Identity, PublicKey};

use crate::tls::TlsError;
use crate::trust::{PeerKey, TrustError};

mod session;
mod transport;
mod tunnel;

#[cfg(feature = "legacy-ciphers")]
pub use session::parse_legacy;
pub use session::{parse_suite, SessionOpts};
pub use transport::{
    responder, server_trust, ClientSide, ClientTransportOpts, DatabasePeers, ServerSide,
    ServerTransportOpts, Transport,
};
pub use tunnel::{build_table, ClientTable, ServerTable, TunnelFile, TunnelTable};

/// Why a configuration cannot be used. Its message says what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A mistake in the configuration or the options.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read (the cause says why).
    #[error("{what}")]
    Read {
        /// Which file, and what it is for.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listening address could not be bound (the cause says why: in use, not local).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An authorized-peers or known-peers file.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A key file.
    #[error(transparent)]
    Key(#[from] sessionkey_proto::Error),
    /// A certificate, its key, a CA file, or the TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A gateway's peers database and its cache (`peers_database`).
    #[error(transparent)]
    Fleet(Box<crate::fleet::gateway::StartError>),
}

impl ConfigError {
    /// The error this one stands for, when it wraps one transparently (a trust, key-file or
    /// TLS error): what a caller classifying errors (exit codes) should look at.
    pub fn wrapped(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Trust(e) => Some(e),
            Self::Key(e) => Some(e),
            Self::Tls(e) => Some(e),
            Self::Fleet(e) => Some(e.as_ref()),
            Self::Invalid(_) | Self::Read { .. } | Self::Listen { .. } => None,
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// A sessionkey public key; a bad one is a configuration mistake quoting the input.
pub fn parse_key(s: &str) -> Result<PublicKey, ConfigError> {
    s.parse().map_err(|e| invalid(format!("{e} (from {s:?})")))
}

/// A sessionkey key or a TLS pin; a bad one is a configuration mistake quoting the input.
pub fn parse_peer_key(s: &str) -> Result<PeerKey, ConfigError> {
    s.parse().map_err(|e| invalid(format!("{e} (from {s:?})")))
}

/// A private key file (mode 0600).
pub fn load_identity(path: &Path) -> Result<Arc<Identity>, ConfigError> {
    Ok(Arc::new(read_private_key(path)?))
}

/// Make a relative path from a configuration file relative to the file's directory.
pub fn rebase(path: &mut Option<PathBuf>, base: &Path) {
    if let Some(p) = path {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}
