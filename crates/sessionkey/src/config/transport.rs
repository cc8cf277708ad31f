//! The protocol on the wire and what each side needs for it: the native responder and its
//! authorized keys, the client's check of the server, the TLS options of both sides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sessionkey_proto::handshake::{Policy, Responder};
use sessionkey_proto::keys::{Identity, Psk, PublicKey};
use sessionkey_proto::noise::Pattern;

use super::{invalid, load_identity, parse_key, parse_peer_key, rebase, ConfigError, SessionOpts};
use crate::tls::{
    CertSource, CertifiedKey, TlsClient, TlsClientOptions, TlsServer, TlsServerOptions, TlsTrust,
};
use crate::trust::{AuthorizedPeers, KnownPeers, LivePeers, PeerKey, TLS_SPKI_TYPE};
use crate::tunnel::{ClientTransport, NativeClient, ServerTransport, ServerTrust};

/// The protocol on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// sessionkey's own protocol (Noise, hybrid ML-KEM-768).
    #[default]
    Native,
    /// TLS 1.3, reachable by standard TLS clients.
    Tls,
}

/// `--transport` and the TLS options of a server.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ServerTransportOpts {
    /// The protocol on the wire.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value = "native"))]
    #[serde(default)]
    pub transport: Transport,
    /// TLS: the certificate chain (PEM). Default: a self-signed certificate, made on first
    /// start and kept in the state directory.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "FILE", requires = "cert_key")
    )]
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM, mode 0600).
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE", requires = "cert"))]
    #[serde(default)]
    pub cert_key: Option<PathBuf>,
    /// TLS: mutual TLS; admit client certificates signed by a CA in FILE (PEM).
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// TLS: write session secrets to FILE in the NSS key log format (for Wireshark).
    /// Anyone who reads FILE can decrypt the sessions: debugging only.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub keylog: Option<PathBuf>,
}

/// `--transport` and the TLS options of a client.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ClientTransportOpts {
    /// The protocol on the wire.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value = "native"))]
    #[serde(default)]
    pub transport: Transport,
    /// TLS: check the server against the CA certificates in FILE (PEM) instead of the
    /// system's.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// TLS: mutual TLS; this client's certificate chain (PEM).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "FILE", requires = "cert_key")
    )]
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM, mode 0600).
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE", requires = "cert"))]
    #[serde(default)]
    pub cert_key: Option<PathBuf>,
    /// TLS: the server name to send and check (default: the host of the server address).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    #[serde(default)]
    pub sni: Option<String>,
    /// TLS: write session secrets to FILE in the NSS key log format (for Wireshark).
    /// Anyone who reads FILE can decrypt the sessions: debugging only.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub keylog: Option<PathBuf>,
}

/// The authorized keys of a server: the file's, then those given with `--allow`; and where
/// they came from, for messages.
fn authorized(
    path: Option<&Path>,
    allow: &[String],
) -> Result<(AuthorizedPeers, String), ConfigError> {
    let mut peers = AuthorizedPeers::default();
    if let Some(path) = path {
        peers = AuthorizedPeers::load(path)?;
    }
    for key in allow {
        peers.allow(parse_peer_key(key)?);
    }
    let source = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--allow".into());
    Ok((peers, source))
}

/// A server's responder: policy from the options; admitted keys from the file and
/// `--allow`, consulted at each handshake through the returned [`LivePeers`] (`None` with
/// `insecure_anonymous`, which admits anyone).
pub fn responder(
    identity: Arc<Identity>,
    opts: &SessionOpts,
    authorized_file: Option<&Path>,
    allow: &[String],
    insecure_anonymous: bool,
) -> Result<(Arc<Responder>, Option<LivePeers>), ConfigError> {
    let mut peers = AuthorizedPeers::default();
    if let Some(path) = authorized_file {
        peers = AuthorizedPeers::load(path)?;
    }
    for key in allow {
        peers.allow(parse_key(key)?.into());
    }
    if peers.native_keys() == 0 && !insecure_anonymous {
        return Err(invalid(
            "no client key is authorized: give --authorized-peers FILE or --allow PUBKEY \
             (or --any-client to admit anyone)",
        ));
    }
    let source = authorized_file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--allow".into());
    let admitted = (!insecure_anonymous).then(|| (LivePeers::from(&peers), source, None));
    native_responder(identity, opts, admitted)
}

/// The responder: policy from the options; `admitted` (the keys, where they come from, and
/// the fleet group when a database keeps them) consulted at each handshake, or anyone.
fn native_responder(
    identity: Arc<Identity>,
    opts: &SessionOpts,
    admitted: Option<(LivePeers, String, Option<String>)>,
) -> Result<(Arc<Responder>, Option<LivePeers>), ConfigError> {
    let insecure_anonymous = admitted.is_none();
    let mut policy = Policy {
        require_hybrid: !opts.classic,
        ..Policy::default()
    };
    policy.suites.extend(opts.legacy_for(true)?);
    if insecure_anonymous {
        tracing::warn!(
            "--any-client: any client is admitted, with or without a key; anyone who can \
             reach this address reaches the target"
        );
        policy.allow_anonymous = true;
        policy.patterns.extend([Pattern::NK, Pattern::NN]);
    }
    let psk = opts.psk()?.map(Psk::from_bytes);
    let mut responder = Responder::new(policy, Some(identity), psk);
    let mut live = None;
    if let Some((peers, source, group)) = admitted {
        live = Some(peers.clone());
        // A peer chooses its key: without a budget, random keys would flood the log.
        let budget = crate::admission::LogBudget::default();
        responder = responder.with_authorizer(Arc::new(move |key: &PublicKey| {
            let ok = peers.contains(&(*key).into());
            if !ok && budget.allow() {
                match &group {
                    Some(group) => tracing::warn!(
                        "refused peer key {}: not in {source}; to admit it, run:\n  \
                         sessionkey peers add '{}' --group {group} --database URL",
                        key.fingerprint(),
                        key.to_line("")
                    ),
                    None => tracing::warn!(
                        "refused peer key {}: not in {source}; to admit it, add this line:\n  {}",
                        key.fingerprint(),
                        key.to_line("")
                    ),
                }
            }
            ok
        }));
    }
    Ok((Arc::new(responder), live))
}

/// Authorized peers kept in a fleet database ([`crate::fleet`]): the live set its gateway
/// fills ([`crate::fleet::gateway::FleetPeers`]), and how to name it in messages.
#[derive(Debug, Clone)]
pub struct DatabasePeers {
    /// The set handshakes consult.
    pub peers: LivePeers,
    /// `group G of the peers database URL` (password removed).
    pub source: String,
    /// The group (for the `sessionkey peers add` hint).
    pub group: String,
    /// TLS: the fleet's shared session-ticket keys.
    pub ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
}

/// A client's server check from the options.
pub fn server_trust(
    server_key: Option<&str>,
    known_peers: Option<&Path>,
    accept_new: bool,
    insecure_anonymous: bool,
) -> Result<ServerTrust, ConfigError> {
    match (server_key, known_peers) {
        (Some(k), None) => Ok(ServerTrust::Pinned(parse_key(k)?)),
        (None, Some(file)) => Ok(ServerTrust::KnownPeers {
            file: KnownPeers::new(file),
            accept_new,
        }),
        (None, None) if insecure_anonymous => Ok(ServerTrust::InsecureNone),
        (None, None) => Err(invalid(
            "the server's key is not pinned: give --server-key PUBKEY or --known-peers FILE \
             (with --accept-new to learn it on first use)",
        )),
        (Some(_), Some(_)) => Err(invalid("give --server-key or --known-peers, not both")),
    }
}

fn warn_keylog(path: &Path) {
    tracing::warn!(
        "--keylog writes TLS session secrets to {}; anyone who can read it can decrypt \
         these sessions. Use it for debugging only.",
        path.display()
    );
}

fn native_only(transport: Transport, what: &[(&str, bool)]) -> Result<(), ConfigError> {
    if transport == Transport::Tls {
        return Ok(());
    }
    match what.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(invalid(format!(
            "{flag} is a TLS option; add --transport tls, or leave it out"
        ))),
        None => Ok(()),
    }
}

fn need_key(key: Option<&Path>) -> Result<&Path, ConfigError> {
    key.ok_or_else(|| {
        invalid(
            "give this side's private key with --key FILE (make one with: sessionkey keygen -o FILE), \
             or use --transport tls",
        )
    })
}

/// What a server needs to accept sessions on its transport.
#[derive(Debug, Clone, Copy)]
pub struct ServerSide<'a> {
    /// The server's private key (native transport).
    pub key: Option<&'a Path>,
    /// Session options.
    pub opts: &'a SessionOpts,
    /// The authorized-peers file.
    pub authorized: Option<&'a Path>,
    /// Keys admitted besides the file's.
    pub allow: &'a [String],
    /// Admit any client.
    pub insecure_anonymous: bool,
    /// Where a self-signed TLS certificate is made and kept.
    pub state_dir: &'a Path,
    /// The peers come from a fleet database instead of `authorized` and `allow`.
    pub database: Option<&'a DatabasePeers>,
}

impl ServerTransportOpts {
    /// Load keys and trust files and build the server's transport, with the authorized
    /// keys it consults at each handshake (`None` when it admits any client, or only
    /// certificates of a `--client-ca`).
    pub fn build(
        &self,
        side: ServerSide<'_>,
    ) -> Result<(ServerTransport, Option<LivePeers>), ConfigError> {
        native_only(
            self.transport,
            &[
                ("--cert", self.cert.is_some()),
                ("--client-ca", self.client_ca.is_some()),
                ("--keylog", self.keylog.is_some()),
            ],
        )?;
        if let (Transport::Native, Some(db)) = (self.transport, side.database) {
            let identity = load_identity(need_key(side.key)?)?;
            let admitted = (db.peers.clone(), db.source.clone(), Some(db.group.clone()));
            let (responder, peers) = native_responder(identity, side.opts, Some(admitted))?;
            return Ok((ServerTransport::Native(responder), peers));
        }
        if self.transport == Transport::Native {
            let identity = load_identity(need_key(side.key)?)?;
            let (responder, peers) = responder(
                identity,
                side.opts,
                side.authorized,
                side.allow,
                side.insecure_anonymous,
            )?;
            return Ok((ServerTransport::Native(responder), peers));
        }
        if side.opts.psk.is_some() {
            return Err(invalid(
                "--psk is for the native transport; TLS admits clients by certificate \
                 (--client-ca FILE or tls-spki-sha256 lines in --authorized-peers)",
            ));
        }
        if side.database.is_some() && self.client_ca.is_some() {
            return Err(invalid(
                "--client-ca and --peers-database both decide who is admitted; give one",
            ));
        }
        let (peers, source) = authorized(side.authorized, side.allow)?;
        let (peers, source) = match side.database {
            Some(db) => (db.peers.clone(), db.source.clone()),
            None => (LivePeers::from(&peers), source),
        };
        if side.database.is_none()
            && !peers.is_empty()
            && peers.tls_keys() == 0
            && self.client_ca.is_none()
        {
            return Err(invalid(format!(
                "{source} lists no TLS client keys (`{TLS_SPKI_TYPE} BASE64` lines), so no \
                 client could connect; add them, or give --client-ca FILE"
            )));
        }
        let authenticates =
            self.client_ca.is_some() || peers.tls_keys() > 0 || side.database.is_some();
        match (authenticates, side.insecure_anonymous) {
            (false, false) => {
                return Err(invalid(format!(
                    "a TLS server must authenticate its clients, or anyone who can reach it \
                     reaches the target; give one of:\n  \
                     --client-ca FILE: admit client certificates signed by a CA in FILE\n  \
                     --allow '{TLS_SPKI_TYPE} BASE64' (or such lines in --authorized-peers \
                     FILE): admit client certificates with these keys\n  \
                     --any-client: admit any client, unauthenticated"
                )))
            }
            (true, true) => {
                return Err(invalid(
                    "--any-client admits every client, so --client-ca and the authorized keys \
                     would do nothing; leave out one or the other",
                ))
            }
            (false, true) => tracing::warn!(
                "--any-client: any TLS client is admitted, with or without a certificate; \
                 anyone who can reach this address reaches the target"
            ),
            (true, false) => {}
        }
        let cert = match (&self.cert, &self.cert_key) {
            (Some(chain), Some(key)) => CertSource::Files {
                chain: chain.clone(),
                key: key.clone(),
            },
            _ => CertSource::SelfSigned {
                dir: side.state_dir.to_path_buf(),
            },
        };
        if let Some(path) = &self.keylog {
            warn_keylog(path);
        }
        side.opts.legacy_for(false)?;
        let live = (!peers.is_empty() || side.database.is_some()).then_some(peers);
        let server = TlsServer::new(TlsServerOptions {
            cert,
            client_ca: self.client_ca.clone(),
            client_keys: live.clone().map(|l| (l, source)),
            keylog: self.keylog.clone(),
            suite: side.opts.suite(),
            ticketer: side.database.and_then(|db| db.ticketer.clone()),
        })?;
        if server.generated() {
            let (cert, _) = crate::tls::self_signed_paths(side.state_dir);
            tracing::warn!(
                "made a self-signed certificate {}; clients pin it with --server-key '{}'",
                cert.display(),
                server.pin().to_line("")
            );
        }
        Ok((ServerTransport::Tls(server), live))
    }

    /// Relative paths against `base`, a configuration file's directory.
    pub fn rebase(&mut self, base: &Path) {
        for p in [
            &mut self.cert,
            &mut self.cert_key,
            &mut self.client_ca,
            &mut self.keylog,
        ] {
            rebase(p, base);
        }
    }
}

/// What a client needs to open sessions on its transport.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The server's address.
    pub server: &'a str,
    /// This side's private key (native transport).
    pub key: Option<&'a Path>,
    /// Session options.
    pub opts: &'a SessionOpts,
    /// The server's pinned key.
    pub server_key: Option<&'a str>,
    /// Server keys by host.
    pub known_peers: Option<&'a Path>,
    /// Learn an unknown server's key.
    pub accept_new: bool,
    /// Do not check the server.
    pub insecure_anonymous: bool,
}

impl ClientTransportOpts {
    /// Load keys and trust files and build the client's transport.
    pub fn build(&self, side: ClientSide<'_>) -> Result<ClientTransport, ConfigError> {
        native_only(
            self.transport,
            &[
                ("--ca", self.ca.is_some()),
                ("--cert", self.cert.is_some()),
                ("--sni", self.sni.is_some()),
                ("--keylog", self.keylog.is_some()),
            ],
        )?;
        side.opts.legacy_for(self.transport == Transport::Native)?;
        if self.transport == Transport::Native {
            return Ok(ClientTransport::Native(NativeClient {
                identity: load_identity(need_key(side.key)?)?,
                trust: server_trust(
                    side.server_key,
                    side.known_peers,
                    side.accept_new,
                    side.insecure_anonymous,
                )?,
                suite: side.opts.suite(),
                hybrid: !side.opts.classic,
                psk: side.opts.psk()?,
            }));
        }
        if side.opts.psk.is_some() {
            return Err(invalid("--psk is for the native transport, not TLS"));
        }
        let trust = match (&self.ca, side.server_key, side.known_peers) {
            (None, None, None) if side.insecure_anonymous => TlsTrust::InsecureNone,
            (None, None, None) => TlsTrust::SystemRoots,
            (Some(ca), None, None) => TlsTrust::CaFile(ca.clone()),
            (None, Some(k), None) => match parse_peer_key(k)? {
                pin @ PeerKey::TlsSpki(_) => TlsTrust::Pinned(pin),
                PeerKey::Native(_) => {
                    return Err(invalid(format!(
                        "--server-key {k:?} is a sessionkey key; over TLS pin the server's \
                         certificate key instead (`{TLS_SPKI_TYPE} BASE64`, printed by the \
                         server at start)"
                    )))
                }
            },
            (None, None, Some(file)) => TlsTrust::KnownPeers {
                file: KnownPeers::new(file),
                accept_new: side.accept_new,
            },
            _ => {
                return Err(invalid(
                    "give one of --ca, --server-key and --known-peers, not several",
                ))
            }
        };
        let client_cert = match (&self.cert, &self.cert_key) {
            (Some(chain), Some(key)) => Some(CertifiedKey::load(chain, key)?),
            _ => None,
        };
        if let Some(path) = &self.keylog {
            warn_keylog(path);
        }
        Ok(ClientTransport::Tls(TlsClient::new(TlsClientOptions {
            server: side.server.to_string(),
            server_name: self.sni.clone(),
            trust,
            client_cert,
            keylog: self.keylog.clone(),
            suite: side.opts.suite(),
            classic: side.opts.classic,
        })?))
    }

    /// Relative paths against `base`, a configuration file's directory.
    pub fn rebase(&mut self, base: &Path) {
        for p in [
            &mut self.ca,
            &mut self.cert,
            &mut self.cert_key,
            &mut self.keylog,
        ] {
            rebase(p, base);
        }
    }
}
