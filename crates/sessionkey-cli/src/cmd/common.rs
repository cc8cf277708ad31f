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
use sessionkey::tls::{
    CertSource, CertifiedKey, TlsClient, TlsClientOptions, TlsServer, TlsServerOptions, TlsTrust,
};
use sessionkey::trust::{AuthorizedPeers, KnownPeers, LivePeers, PeerKey, TLS_SPKI_TYPE};
use sessionkey::tunnel::{ClientTransport, NativeClient, ServerTransport, ServerTrust};

/// A configuration mistake: what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub(crate) String);

pub(crate) fn config_error(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}

/// A usage mistake on the command line (exit 64): what is wrong and what is valid.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// An output file or directory that cannot be created (exit 73).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CannotCreate(pub(crate) String);

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
    /// both sides need the same one. Make one with: (umask 077; head -c 32 /dev/urandom | base64 > FILE)
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) psk: Option<PathBuf>,
    /// Update the sending key after this many bytes (default 1 GiB; at least one 16 KiB
    /// record). Native sessions ratchet; TLS sessions send a TLS 1.3 KeyUpdate.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(16384..))]
    #[serde(default)]
    pub(crate) key_update_bytes: Option<u64>,
    /// INSECURE: session records under DES or 3DES (CBC, HMAC-SHA256), for a peer that has
    /// nothing better. Both sides must name it; a server then also accepts it beside the
    /// modern suites. The handshake stays hybrid and AES-256-GCM; keys rotate every 4 MiB
    /// (half the 2^20-block cap). DES falls to exhaustive key search.
    #[cfg(feature = "legacy-ciphers")]
    #[arg(long, value_name = "des|3des", value_parser = parse_legacy)]
    #[serde(skip)]
    pub(crate) insecure_legacy_cipher: Option<Suite>,
}

#[cfg(feature = "legacy-ciphers")]
pub(crate) fn parse_legacy(s: &str) -> Result<Suite, String> {
    use sessionkey::proto::crypto::legacy::{InsecureLegacyCipher, LegacySuite};
    let suite = match s {
        "des" => LegacySuite::DesCbcHmacSha256,
        "3des" => LegacySuite::TripleDesEdeCbcHmacSha256,
        _ => return Err(format!("unknown legacy cipher {s:?}; choose des or 3des")),
    };
    Ok(Suite::insecure_legacy(
        suite,
        InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken(),
    ))
}

/// A suite by name; an unknown name is a usage error listing the valid ones.
pub(crate) fn parse_suite(s: &str) -> Result<Suite, String> {
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
        if let Some(legacy) = self.legacy() {
            return legacy;
        }
        self.suite.unwrap_or_else(Suite::default_for_this_cpu)
    }

    /// The legacy suite chosen with `--insecure-legacy-cipher`.
    pub(crate) fn legacy(&self) -> Option<Suite> {
        #[cfg(feature = "legacy-ciphers")]
        return self.insecure_legacy_cipher;
        #[cfg(not(feature = "legacy-ciphers"))]
        None
    }

    /// The legacy suite for a native session, with the warning it deserves; an error for
    /// TLS, which has no such suite.
    pub(crate) fn legacy_for(&self, native: bool) -> Result<Option<Suite>> {
        let Some(suite) = self.legacy() else {
            return Ok(None);
        };
        if !native {
            return Err(config_error(
                "--insecure-legacy-cipher is for the native transport: TLS 1.3 has no DES or 3DES",
            ));
        }
        tracing::warn!(
            suite = %suite,
            "--insecure-legacy-cipher: session records use a broken 64-bit block cipher \
             (Sweet32; DES also falls to key search); only for a peer with nothing better"
        );
        Ok(Some(suite))
    }

    pub(crate) fn psk(&self) -> Result<Option<[u8; 32]>> {
        self.psk.as_deref().map(read_psk).transpose()
    }

    /// The rotation policy: the defaults, with what the options change.
    pub(crate) fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::default();
        if let Some(bytes) = self.key_update_bytes {
            config.key_update_bytes = bytes;
        }
        config
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
            "pre-shared key {} is not base64; make one with: (umask 077; head -c 32 /dev/urandom | base64 > FILE)",
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

/// Authorized peers kept by a fleet database ([`sessionkey::fleet`]): the live set its
/// gateway fills, and how to name and add to it in messages.
#[derive(Debug, Clone)]
pub(crate) struct DatabasePeers {
    pub(crate) peers: LivePeers,
    /// `group G of the peers database URL`.
    pub(crate) source: String,
    /// The `--group` argument for `sessionkey peers add`.
    pub(crate) group: String,
}

/// A server's responder: policy from the options, admitted keys from the file and --allow,
/// or from the fleet database.
pub(crate) fn responder(
    identity: Arc<Identity>,
    opts: &SessionOpts,
    side: &ServerSide<'_>,
) -> Result<Arc<Responder>> {
    let (authorized, allow, insecure_anonymous) =
        (side.authorized, side.allow, side.insecure_anonymous);
    let mut peers = AuthorizedPeers::default();
    if let Some(path) = authorized {
        peers = AuthorizedPeers::load(path)?;
    }
    for key in allow {
        peers.allow(parse_key(key)?.into());
    }
    if side.database.is_none() && peers.native_keys() == 0 && !insecure_anonymous {
        return Err(config_error(
            "no client key is authorized: give --authorized-peers FILE or --allow PUBKEY \
             (or --any-client to admit anyone)",
        ));
    }
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
    let (peers, source, group) = match &side.database {
        Some(db) => (db.peers.clone(), db.source.clone(), Some(db.group.clone())),
        None => (
            LivePeers::from(&peers),
            authorized
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "--allow".into()),
            None,
        ),
    };
    let mut responder = Responder::new(policy, Some(identity), psk);
    if !insecure_anonymous {
        // A peer chooses its key: without a budget, random keys would flood the log.
        let budget = sessionkey::admission::LogBudget::default();
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

static STATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Record the global `--state DIR` (called once, before any command runs).
pub(crate) fn set_state_dir(dir: Option<PathBuf>) {
    let dir = dir.unwrap_or_else(|| {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/var/lib"));
        data.join("sessionkey")
    });
    let _ = STATE_DIR.set(dir);
}

/// The state directory: `--state DIR`, `$SESSIONKEY_STATE`, or the user's data directory.
pub(crate) fn state_dir() -> PathBuf {
    STATE_DIR.get().cloned().unwrap_or_else(|| {
        set_state_dir(None);
        STATE_DIR.get().cloned().unwrap_or_default()
    })
}

/// The protocol on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// sessionkey's own protocol (Noise, hybrid ML-KEM-768).
    #[default]
    Native,
    /// TLS 1.3, reachable by standard TLS clients.
    Tls,
}

/// `--transport` and the TLS options of a server.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
pub(crate) struct ServerTransportOpts {
    /// The protocol on the wire.
    #[arg(long, value_enum, default_value = "native")]
    #[serde(default)]
    pub(crate) transport: Transport,
    /// TLS: the certificate chain (PEM). Default: a self-signed certificate, made on first
    /// start and kept in the state directory.
    #[arg(long, value_name = "FILE", requires = "cert_key")]
    #[serde(default)]
    pub(crate) cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires = "cert")]
    #[serde(default)]
    pub(crate) cert_key: Option<PathBuf>,
    /// TLS: mutual TLS; admit client certificates signed by a CA in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) client_ca: Option<PathBuf>,
    /// TLS: write session secrets to FILE in the NSS key log format (for Wireshark).
    /// Anyone who reads FILE can decrypt the sessions: debugging only.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) keylog: Option<PathBuf>,
}

/// `--transport` and the TLS options of a client.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
pub(crate) struct ClientTransportOpts {
    /// The protocol on the wire.
    #[arg(long, value_enum, default_value = "native")]
    #[serde(default)]
    pub(crate) transport: Transport,
    /// TLS: check the server against the CA certificates in FILE (PEM) instead of the
    /// system's.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) ca: Option<PathBuf>,
    /// TLS: mutual TLS; this client's certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "cert_key")]
    #[serde(default)]
    pub(crate) cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires = "cert")]
    #[serde(default)]
    pub(crate) cert_key: Option<PathBuf>,
    /// TLS: the server name to send and check (default: the host of the server address).
    #[arg(long, value_name = "NAME")]
    #[serde(default)]
    pub(crate) sni: Option<String>,
    /// TLS: write session secrets to FILE in the NSS key log format (for Wireshark).
    /// Anyone who reads FILE can decrypt the sessions: debugging only.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) keylog: Option<PathBuf>,
}

fn warn_keylog(path: &Path) {
    eprintln!(
        "sessionkey: warning: --keylog writes TLS session secrets to {}; anyone who can read \
         it can decrypt these sessions. Use it for debugging only.",
        path.display()
    );
}

fn native_only(transport: Transport, what: &[(&str, bool)]) -> Result<()> {
    if transport == Transport::Tls {
        return Ok(());
    }
    match what.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(config_error(format!(
            "{flag} is a TLS option; add --transport tls, or leave it out"
        ))),
        None => Ok(()),
    }
}

fn need_key(key: Option<&Path>) -> Result<&Path> {
    key.ok_or_else(|| {
        config_error(
            "give this side's private key with --key FILE (make one with: sessionkey keygen -o FILE), \
             or use --transport tls",
        )
    })
}

/// What a server needs to accept sessions on its transport.
pub(crate) struct ServerSide<'a> {
    pub(crate) key: Option<&'a Path>,
    pub(crate) opts: &'a SessionOpts,
    pub(crate) authorized: Option<&'a Path>,
    pub(crate) allow: &'a [String],
    pub(crate) insecure_anonymous: bool,
    /// The peers come from a fleet database instead of `authorized` and `allow`.
    pub(crate) database: Option<DatabasePeers>,
}

impl ServerTransportOpts {
    pub(crate) fn build(&self, side: ServerSide<'_>) -> Result<ServerTransport> {
        native_only(
            self.transport,
            &[
                ("--cert", self.cert.is_some()),
                ("--client-ca", self.client_ca.is_some()),
                ("--keylog", self.keylog.is_some()),
            ],
        )?;
        if self.transport == Transport::Native {
            let identity = load_identity(need_key(side.key)?)?;
            return Ok(ServerTransport::Native(responder(
                identity, side.opts, &side,
            )?));
        }
        if side.opts.psk.is_some() {
            return Err(config_error(
                "--psk is for the native transport; TLS admits clients by certificate \
                 (--client-ca FILE or tls-spki-sha256 lines in --authorized-peers)",
            ));
        }
        if let Some(db) = &side.database {
            if self.client_ca.is_some() {
                return Err(config_error(
                    "--client-ca and --peers-database both decide who is admitted; give one",
                ));
            }
            side.opts.legacy_for(false)?;
            return self.tls_server(side.opts, Some((db.peers.clone(), db.source.clone())));
        }
        let mut peers = AuthorizedPeers::default();
        if let Some(path) = side.authorized {
            peers = AuthorizedPeers::load(path)?;
        }
        for key in side.allow {
            peers.allow(parse_peer_key(key)?);
        }
        let source = side
            .authorized
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "--allow".into());
        if !peers.is_empty() && peers.tls_keys() == 0 && self.client_ca.is_none() {
            return Err(config_error(format!(
                "{source} lists no TLS client keys (`{TLS_SPKI_TYPE} BASE64` lines), so no \
                 client could connect; add them, or give --client-ca FILE"
            )));
        }
        let authenticates = self.client_ca.is_some() || peers.tls_keys() > 0;
        match (authenticates, side.insecure_anonymous) {
            (false, false) => {
                return Err(config_error(format!(
                    "a TLS server must authenticate its clients, or anyone who can reach it \
                     reaches the target; give one of:\n  \
                     --client-ca FILE: admit client certificates signed by a CA in FILE\n  \
                     --allow '{TLS_SPKI_TYPE} BASE64' (or such lines in --authorized-peers \
                     FILE): admit client certificates with these keys\n  \
                     --any-client: admit any client, unauthenticated"
                )))
            }
            (true, true) => {
                return Err(config_error(
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
        side.opts.legacy_for(false)?;
        self.tls_server(
            side.opts,
            (!peers.is_empty()).then(|| (LivePeers::from(&peers), source)),
        )
    }

    /// The TLS server, admitting the keys of `client_keys` (and `--client-ca`).
    fn tls_server(
        &self,
        opts: &SessionOpts,
        client_keys: Option<(LivePeers, String)>,
    ) -> Result<ServerTransport> {
        let cert = match (&self.cert, &self.cert_key) {
            (Some(chain), Some(key)) => CertSource::Files {
                chain: chain.clone(),
                key: key.clone(),
            },
            _ => CertSource::SelfSigned { dir: state_dir() },
        };
        if let Some(path) = &self.keylog {
            warn_keylog(path);
        }
        let server = TlsServer::new(TlsServerOptions {
            cert,
            client_ca: self.client_ca.clone(),
            client_keys,
            keylog: self.keylog.clone(),
            suite: opts.suite(),
        })?;
        if server.generated() {
            let (cert, _) = sessionkey::tls::self_signed_paths(&state_dir());
            tracing::warn!(
                "made a self-signed certificate {}; clients pin it with --server-key '{}'",
                cert.display(),
                server.pin().to_line("")
            );
        }
        Ok(ServerTransport::Tls(server))
    }
}

/// What a client needs to open sessions on its transport.
pub(crate) struct ClientSide<'a> {
    pub(crate) server: &'a str,
    pub(crate) key: Option<&'a Path>,
    pub(crate) opts: &'a SessionOpts,
    pub(crate) server_key: Option<&'a str>,
    pub(crate) known_peers: Option<&'a Path>,
    pub(crate) accept_new: bool,
    pub(crate) insecure_anonymous: bool,
}

impl ClientTransportOpts {
    pub(crate) fn build(&self, side: ClientSide<'_>) -> Result<ClientTransport> {
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
            return Err(config_error("--psk is for the native transport, not TLS"));
        }
        let trust = match (&self.ca, side.server_key, side.known_peers) {
            (None, None, None) if side.insecure_anonymous => TlsTrust::InsecureNone,
            (None, None, None) => TlsTrust::SystemRoots,
            (Some(ca), None, None) => TlsTrust::CaFile(ca.clone()),
            (None, Some(k), None) => match parse_peer_key(k)? {
                pin @ PeerKey::TlsSpki(_) => TlsTrust::Pinned(pin),
                PeerKey::Native(_) => {
                    return Err(config_error(format!(
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
                return Err(config_error(
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
}

pub(crate) fn parse_peer_key(s: &str) -> Result<PeerKey> {
    s.parse()
        .map_err(|e| config_error(format!("{e} (from {s:?})")))
}

/// Make a relative path from a configuration file relative to the file's directory.
pub(crate) fn rebase(path: &mut Option<PathBuf>, base: &Path) {
    if let Some(p) = path {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

impl SessionOpts {
    /// Relative paths (the pre-shared key) against `base`, a configuration file's directory.
    pub(crate) fn rebase(&mut self, base: &Path) {
        rebase(&mut self.psk, base);
    }
}

impl ServerTransportOpts {
    /// Relative paths against `base`, a configuration file's directory.
    pub(crate) fn rebase(&mut self, base: &Path) {
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

impl ClientTransportOpts {
    /// Relative paths against `base`, a configuration file's directory.
    pub(crate) fn rebase(&mut self, base: &Path) {
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
