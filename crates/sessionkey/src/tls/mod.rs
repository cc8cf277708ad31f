//! TLS 1.3 transport (rustls with the aws-lc-rs provider): the same tunnels and pipes,
//! reachable by standard TLS clients.
//!
//! - Key exchange X25519MLKEM768 preferred, X25519 accepted; TLS 1.3 only.
//! - Certificates from PEM files, or a self-signed pair made on first start and kept
//!   ([`CertifiedKey::self_signed`]). Clients check servers against the system roots, a CA
//!   file, or a public-key pin (given, or in the known-peers file of native mode).
//! - Clients are authenticated by mutual TLS: a `--client-ca`, or `tls-spki-sha256` lines
//!   in the authorized-peers file. Without either, this library admits any TLS client (as
//!   the messaging relay wants: its clients authenticate inside); the command line refuses
//!   to start such a server unless `--any-client` is given.
//! - A client checking against CA certificates also accepts a server certificate that is
//!   byte for byte one of them (a self-signed certificate as its own trust anchor), and
//!   tells every certificate failure in words, with the fix ([`CertProblem`]).
//! - Keys rotate by the native byte, record and time policy ([`KeyUpdatePolicy`]); tickets
//!   resume sessions (with a fresh ECDHE, `psk_dhe_ke`) and their keys rotate every 6 hours;
//!   the exporter gives the session fingerprint ([`TlsInfo::fingerprint`]).
//!
//! ```
//! use sessionkey::proto::session::SessionConfig;
//! use sessionkey::tls::{
//!     CertSource, TlsClient, TlsClientOptions, TlsServer, TlsServerOptions, TlsTrust,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("sessionkey-doc-{}", std::process::id()));
//! let server = TlsServer::new(TlsServerOptions::new(CertSource::SelfSigned { dir: dir.clone() }))?;
//! # let result =
//! tokio::runtime::Runtime::new()?.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?.to_string();
//!     // The client pins the server's certificate key.
//!     let client = TlsClient::new(TlsClientOptions::new(&addr, TlsTrust::Pinned(server.pin())))?;
//!     let config = SessionConfig::default();
//!     let (accepted, connected) = tokio::join!(
//!         async { server.accept(listener.accept().await?.0, &config).await },
//!         async { client.connect(tokio::net::TcpStream::connect(&addr).await?, &config).await },
//!     );
//!     let (accepted, connected) = (accepted?, connected?);
//!     // Both ends see the same session fingerprint, from the TLS exporter.
//!     assert_eq!(accepted.info().fingerprint, connected.info().fingerprint);
//!     assert_eq!(connected.info().group, "X25519MLKEM768");
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # ; std::fs::remove_dir_all(dir)?; result
//! # }
//! ```

mod cert;
mod keylog;
mod stream;
mod verify;
pub(crate) use verify::utc;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use sessionkey_proto::session::SessionConfig;
use sessionkey_proto::suite::Suite;
use tokio::io::{AsyncRead, AsyncWrite};

pub use rustls;

pub use cert::{load_certs, load_roots, self_signed_paths, spki_pin, system_roots, CertifiedKey};
pub use keylog::KeyLogFile;
pub use stream::{KeyUpdatePolicy, TlsInfo, TlsStatusCell, TlsStream, FINGERPRINT_LABEL};

use crate::trust::{HostKey, KnownPeers, LivePeers, PeerKey, TrustError};
pub use verify::CertProblem;
use verify::{CaServer, ClientAuth, Pin, PinnedServer};

/// rustls's record plaintext limit (RFC 8446 5.1).
const MAX_FRAGMENT: usize = 16 * 1024;

/// A TLS setup problem, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file did not hold what it should.
    #[error("{}: {why}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The options do not make a working configuration.
    #[error("{0}")]
    Config(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Config(format!("TLS configuration: {e}"))
    }
}

/// The provider: TLS 1.3 suites with `first` preferred; X25519MLKEM768 then X25519, or only
/// X25519 when `classic`.
fn provider(first: Suite, classic: bool) -> Arc<CryptoProvider> {
    let wanted = match first {
        Suite::Aes128Gcm => cipher_suite::TLS13_AES_128_GCM_SHA256,
        Suite::ChaCha20Poly1305 => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        _ => cipher_suite::TLS13_AES_256_GCM_SHA384,
    };
    let mut suites = vec![wanted];
    suites.extend(
        [
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ]
        .into_iter()
        .filter(|s| s.suite() != wanted.suite()),
    );
    let kx_groups = if classic {
        vec![kx_group::X25519]
    } else {
        vec![kx_group::X25519MLKEM768, kx_group::X25519]
    };
    Arc::new(CryptoProvider {
        cipher_suites: suites,
        kx_groups,
        ..provider::default_provider()
    })
}

/// Where a server's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files given by the user.
    Files {
        /// The certificate chain.
        chain: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// The self-signed pair kept in this directory, made on first start.
    SelfSigned {
        /// The directory.
        dir: PathBuf,
    },
}

/// What a TLS server needs.
#[derive(Debug, Clone)]
pub struct TlsServerOptions {
    /// The certificate.
    pub cert: CertSource,
    /// Mutual TLS: admit client certificates that chain to this CA file.
    pub client_ca: Option<PathBuf>,
    /// Mutual TLS: admit client certificates whose key is in the set (`tls-spki-sha256`
    /// lines), consulted at each handshake (it may change while the server runs), and where
    /// the keys came from (for messages).
    pub client_keys: Option<(LivePeers, String)>,
    /// Write session secrets here (NSS key log format). For debugging only.
    pub keylog: Option<PathBuf>,
    /// The preferred record suite.
    pub suite: Suite,
    /// Session tickets from this ticketer (a fleet's shared keys) instead of keys of this
    /// process alone.
    pub ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
}

impl TlsServerOptions {
    /// Defaults: any client, AES-256-GCM (or ChaCha20-Poly1305 without hardware AES) first.
    pub fn new(cert: CertSource) -> Self {
        Self {
            cert,
            client_ca: None,
            client_keys: None,
            keylog: None,
            suite: Suite::default_for_this_cpu(),
            ticketer: None,
        }
    }
}

/// A TLS server's configuration, shared by every connection it accepts.
#[derive(Debug, Clone)]
pub struct TlsServer {
    config: Arc<rustls::ServerConfig>,
    /// The certificate served, replaceable ([`TlsServer::reload_certificate`]).
    cert: Arc<LiveCert>,
    source: CertSource,
    provider: Arc<CryptoProvider>,
    generated: bool,
    /// The client-certificate check, when clients must present one.
    client_auth: Option<Arc<ClientAuth>>,
}

/// The certificate a server presents, and its key's pin; swapped by a reload.
#[derive(Debug)]
struct LiveCert(std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, PeerKey)>);

impl LiveCert {
    fn get(&self) -> (Arc<rustls::sign::CertifiedKey>, PeerKey) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get().0)
    }
}

impl TlsServer {
    /// Load or make the certificate and build the configuration.
    pub fn new(opts: TlsServerOptions) -> Result<Self, TlsError> {
        let (certified, generated) = match &opts.cert {
            CertSource::Files { chain, key } => (CertifiedKey::load(chain, key)?, false),
            CertSource::SelfSigned { dir } => CertifiedKey::self_signed(dir, &[])?,
        };
        let pin = certified.pin()?;
        let provider = provider(opts.suite, false);
        let cert = Arc::new(LiveCert(std::sync::RwLock::new((
            Arc::new(rustls::sign::CertifiedKey::from_der(
                certified.chain,
                certified.key,
                &provider,
            )?),
            pin,
        ))));
        let algorithms = provider.signature_verification_algorithms;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let ca = match &opts.client_ca {
            Some(path) => Some(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(path)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Config(format!("--client-ca {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let mutual = ca.is_some() || opts.client_keys.is_some();
        let client_auth = mutual.then(|| {
            let (peers, source) = opts.client_keys.clone().unwrap_or_default();
            Arc::new(ClientAuth {
                ca,
                peers,
                source,
                algorithms,
                log_budget: Default::default(),
            })
        });
        let builder = match &client_auth {
            Some(auth) => builder.with_client_cert_verifier(auth.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.ignore_client_order = true;
        config.ticketer = match opts.ticketer.clone() {
            Some(shared) => shared,
            None => provider::Ticketer::new()?,
        };
        if let Some(path) = &opts.keylog {
            config.key_log = Arc::new(KeyLogFile::open(path)?);
        }
        Ok(Self {
            config: Arc::new(config),
            cert,
            source: opts.cert,
            provider,
            generated,
            client_auth,
        })
    }

    /// The pin of the server certificate's public key (for clients' `--server-key`).
    pub fn pin(&self) -> PeerKey {
        self.cert.get().1
    }

    /// Read the certificate chain and key files again and serve them to the next
    /// handshakes (SIGHUP; sessions under way keep theirs); returns the pin of the new
    /// certificate's key. A self-signed certificate is kept as it is. On an error the
    /// certificate in use stays.
    pub fn reload_certificate(&self) -> Result<PeerKey, TlsError> {
        let CertSource::Files { chain, key } = &self.source else {
            return Ok(self.pin());
        };
        let certified = CertifiedKey::load(chain, key)?;
        let pin = certified.pin()?;
        let key =
            rustls::sign::CertifiedKey::from_der(certified.chain, certified.key, &self.provider)?;
        *self.cert.0.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(key), pin);
        Ok(pin)
    }

    /// Whether the self-signed certificate was made just now.
    pub fn generated(&self) -> bool {
        self.generated
    }

    /// The rustls configuration, for servers built on other stacks (an HTTPS server).
    pub fn rustls_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Whether client certificates chaining to a `--client-ca` are admitted.
    pub fn has_client_ca(&self) -> bool {
        self.client_auth.as_ref().is_some_and(|a| a.ca.is_some())
    }

    /// Whether clients must present an admitted certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_auth.is_some()
    }

    /// Run the server side of a handshake over `io`, within the handshake timeout.
    pub async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: T,
        session: &SessionConfig,
    ) -> io::Result<TlsStream<T>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let stream = tokio::time::timeout(session.handshake_timeout, acceptor.accept(io))
            .await
            .map_err(|_| handshake_timeout(session))??;
        let conn = stream.get_ref().1;
        if let (Some(auth), Some(rustls::HandshakeKind::Resumed)) =
            (&self.client_auth, conn.handshake_kind())
        {
            use rustls::server::danger::ClientCertVerifier;
            // A resumed session skips the certificate check, but the client's key may have
            // been removed since its ticket was issued: check the chain the ticket carried.
            let chain = conn.peer_certificates().unwrap_or_default();
            let checked = match chain.split_first() {
                Some((leaf, rest)) => auth
                    .verify_client_cert(leaf, rest, rustls::pki_types::UnixTime::now())
                    .map(drop),
                None => Err(rustls::Error::NoCertificatesPresented),
            };
            if let Err(e) = checked {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
            }
        }
        Ok(TlsStream::new(stream.into(), session.into()))
    }
}

fn handshake_timeout(session: &SessionConfig) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the TLS handshake did not complete within {:?}",
            session.handshake_timeout
        ),
    )
}

/// How a TLS client recognises its server.
#[derive(Debug)]
pub enum TlsTrust {
    /// The operating system's CA certificates, and the server's name.
    SystemRoots,
    /// The CAs in this PEM file, and the server's name.
    CaFile(PathBuf),
    /// Exactly this public key (`--server-key tls-spki-sha256 ...`).
    Pinned(PeerKey),
    /// The key on record for the server in a known-peers file.
    KnownPeers {
        /// The file.
        file: KnownPeers,
        /// Learn a key not yet on record (trust on first use).
        accept_new: bool,
    },
    /// No check at all (`--insecure-anonymous`).
    InsecureNone,
}

/// What a TLS client needs.
#[derive(Debug)]
pub struct TlsClientOptions {
    /// The server's `host:port`.
    pub server: String,
    /// The name to ask for (SNI) and check; default: the host of `server`.
    pub server_name: Option<String>,
    /// How to check the server.
    pub trust: TlsTrust,
    /// Mutual TLS: this side's certificate.
    pub client_cert: Option<CertifiedKey>,
    /// Write session secrets here (NSS key log format). For debugging only.
    pub keylog: Option<PathBuf>,
    /// The preferred record suite.
    pub suite: Suite,
    /// X25519 only, no ML-KEM-768.
    pub classic: bool,
}

impl TlsClientOptions {
    /// Defaults for `server` checked by `trust`.
    pub fn new(server: impl Into<String>, trust: TlsTrust) -> Self {
        Self {
            server: server.into(),
            server_name: None,
            trust,
            client_cert: None,
            keylog: None,
            suite: Suite::default_for_this_cpu(),
            classic: false,
        }
    }
}

/// A TLS client's configuration, shared by every connection it opens (so later ones resume
/// from tickets).
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    server: String,
    learn: Option<Arc<KnownPeers>>,
}

impl TlsClient {
    /// Build the configuration.
    pub fn new(opts: TlsClientOptions) -> Result<Self, TlsError> {
        let host = match &opts.server_name {
            Some(n) => n.clone(),
            None => host_of(&opts.server),
        };
        let name = ServerName::try_from(host.clone()).map_err(|_| {
            TlsError::Config(format!(
                "{host:?} is not a valid server name; give --sni NAME"
            ))
        })?;
        let provider = provider(opts.suite, opts.classic);
        let algorithms = provider.signature_verification_algorithms;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let pinned = |pin| {
            builder
                .clone()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServer { pin, algorithms }))
        };
        let by_ca = |roots: rustls::RootCertStore, anchors, source| {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Config(format!("{source}: {e}")))?;
            Ok::<_, TlsError>(
                builder
                    .clone()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CaServer {
                        inner,
                        anchors,
                        source,
                    })),
            )
        };
        let mut learn = None;
        let builder = match opts.trust {
            TlsTrust::SystemRoots => by_ca(
                system_roots()?,
                Vec::new(),
                "the system's CA certificates".into(),
            )?,
            TlsTrust::CaFile(path) => by_ca(
                load_roots(&path)?,
                load_certs(&path)?,
                format!("--ca {}", path.display()),
            )?,
            TlsTrust::Pinned(key) => pinned(Pin::Key(key)),
            TlsTrust::InsecureNone => pinned(Pin::Any),
            TlsTrust::KnownPeers { file, accept_new } => {
                let file = Arc::new(file);
                if accept_new {
                    learn = Some(file.clone());
                }
                pinned(Pin::Known {
                    file,
                    host: opts.server.clone(),
                    accept_new,
                })
            }
        };
        let mut config = match opts.client_cert {
            Some(c) => builder.with_client_auth_cert(c.chain, c.key)?,
            None => builder.with_no_client_auth(),
        };
        if let Some(path) = &opts.keylog {
            config.key_log = Arc::new(KeyLogFile::open(path)?);
        }
        Ok(Self {
            config: Arc::new(config),
            name,
            server: opts.server,
            learn,
        })
    }

    /// The rustls configuration (server checks as configured, tickets shared), for clients
    /// built on other stacks (an HTTPS client). Note that trust on first use learns a key
    /// only through [`TlsClient::connect`].
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Run the client side of a handshake over `io`, within the handshake timeout. A server
    /// key that fails the pin or known-peers check is a [`TrustError`] inside the
    /// `io::Error` (see [`trust_failure`]).
    pub async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: T,
        session: &SessionConfig,
    ) -> io::Result<TlsStream<T>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = tokio::time::timeout(
            session.handshake_timeout,
            connector.connect(self.name.clone(), io),
        )
        .await
        .map_err(|_| handshake_timeout(session))?
        .map_err(explain)?;
        let stream = TlsStream::new(stream.into(), session.into());
        // Trust on first use: learn the key only now that the handshake has proved it.
        if let (Some(file), Some(key)) = (&self.learn, stream.info().peer) {
            if file
                .verify(&self.server, &key, true)
                .map_err(io::Error::other)?
                == HostKey::Learned
            {
                tracing::warn!(server = %self.server, key = %key.fingerprint(), "learned a new server key");
            }
        }
        Ok(stream)
    }
}

/// The host part of `host:port` (IPv6 in brackets).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// The known-peers or pin failure inside a TLS handshake error, if that is what it is.
pub fn trust_failure(e: &io::Error) -> Option<TrustError> {
    let inner = e.get_ref()?;
    if let Some(t) = inner.downcast_ref::<TrustError>() {
        return Some(t.duplicate());
    }
    match inner.downcast_ref::<rustls::Error>()? {
        rustls::Error::Other(o) => o.0.downcast_ref::<TrustError>().map(TrustError::duplicate),
        _ => None,
    }
}

/// Add what to do next to the TLS failures people meet (during the handshake, or at the
/// first read when the server refuses a client certificate after the client finished).
pub(crate) fn explain(e: io::Error) -> io::Error {
    let Some(rustls_error) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e;
    };
    if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) = rustls_error {
        if let Some(problem) = o.0.downcast_ref::<CertProblem>() {
            return io::Error::new(
                e.kind(),
                TlsFailure {
                    error: rustls_error.clone(),
                    text: problem.to_string(),
                },
            );
        }
    }
    let hint = match rustls_error {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        ) => {
            "the server's certificate is not signed by a trusted CA; give --ca FILE, or pin \
             its key with --server-key or --known-peers FILE --accept-new"
        }
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is for another name; give the right one with --sni NAME",
        rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::AccessDenied
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::UnknownCA,
        ) => {
            "the server refused this client's certificate; give one it admits with --cert FILE \
             --cert-key FILE"
        }
        rustls::Error::PeerIncompatible(_) => {
            "the server speaks no TLS 1.3 suite or group in common (sessionkey offers TLS 1.3 \
             with X25519MLKEM768 or X25519)"
        }
        _ => return e,
    };
    io::Error::new(
        e.kind(),
        TlsFailure {
            error: rustls_error.clone(),
            text: format!("{rustls_error}: {hint}"),
        },
    )
}

/// A TLS failure in words, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct TlsFailure {
    /// What rustls reported.
    pub error: rustls::Error,
    text: String,
}

/// The rustls error inside an `io::Error` from a TLS stream, if there is one.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    let inner = e.get_ref()?;
    inner
        .downcast_ref::<TlsFailure>()
        .map(|f| &f.error)
        .or_else(|| inner.downcast_ref::<rustls::Error>())
}
