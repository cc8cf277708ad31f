//! TCP tunnels: the server side accepts sessions and forwards each to a target; the client
//! side listens locally and carries each connection through its own session (one session
//! per connection, as spiped does).
//!
//! Each side speaks the native protocol or TLS 1.3 ([`crate::tls`]).
//!
//! A session that ends in error (tampering, truncation, a vanished peer, a limit) aborts the
//! plain TCP connection on that side with a reset, so the application sees an error, never
//! a clean end of file. A clean close of the session closes the plain side cleanly.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sessionkey_proto::handshake::{Header, Initiator, Refusal, Responder};
use sessionkey_proto::keys::{Identity, Psk, PublicKey};
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::session::SessionConfig;
use sessionkey_proto::suite::Suite;
use sessionkey_proto::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::admission::{self, Gate, Limits, Reporter};
use crate::status::{Registry, SessionView};
use crate::tls::{TlsClient, TlsServer, TlsStream};
use crate::trust::{
    HostKey, KnownPeers, LivePeers, LiveSession, LiveSessions, PeerKey, TrustError,
};
use crate::SecureStream;

/// How a client decides the server is the right one.
#[derive(Debug)]
pub enum ServerTrust {
    /// The server's key is given: IK, one round trip.
    Pinned(PublicKey),
    /// Keys by host in a known-peers file; XX so that a changed key can be shown.
    KnownPeers {
        /// The file.
        file: KnownPeers,
        /// Learn a key not yet on record (trust on first use).
        accept_new: bool,
    },
    /// No check at all (`--insecure-anonymous`).
    InsecureNone,
}

/// What a tunnel client needs.
#[derive(Debug)]
pub struct ClientConfig {
    /// A name for logs and status.
    pub name: String,
    /// The server's address.
    pub server: String,
    /// Rotation and lifetime policy.
    pub session: SessionConfig,
    /// The protocol on the wire.
    pub transport: ClientTransport,
}

/// A client's protocol on the wire.
#[derive(Debug)]
pub enum ClientTransport {
    /// The native protocol.
    Native(NativeClient),
    /// TLS 1.3.
    Tls(TlsClient),
}

/// What a native-protocol client needs.
#[derive(Debug)]
pub struct NativeClient {
    /// This side's identity.
    pub identity: Arc<Identity>,
    /// How to check the server.
    pub trust: ServerTrust,
    /// The record suite to offer.
    pub suite: Suite,
    /// Offer the hybrid X25519 + ML-KEM-768 exchange.
    pub hybrid: bool,
    /// A pre-shared key, mixed into the handshake.
    pub psk: Option<[u8; 32]>,
}

/// What a tunnel server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A name for logs and status.
    pub name: String,
    /// Where to forward each session's plain bytes.
    pub target: String,
    /// Rotation and lifetime policy.
    pub session: SessionConfig,
    /// The protocol on the wire.
    pub transport: ServerTransport,
    /// Bounds on connections in their handshake and on established sessions.
    pub limits: Limits,
    /// The authorized keys the transport consults at each handshake (`None`: any client,
    /// or only a TLS `--client-ca`). Replace its contents to change who may connect
    /// ([`LivePeers::replace`] returns the removed keys, whose sessions
    /// [`LiveSessions::revoke`] closes).
    pub peers: Option<LivePeers>,
}

/// A server's protocol on the wire.
#[derive(Debug, Clone)]
pub enum ServerTransport {
    /// The native protocol: policy, identity, authorized keys.
    Native(Arc<Responder>),
    /// TLS 1.3.
    Tls(TlsServer),
}

impl ServerConfig {
    /// Whether a session that authenticated `key` may go on under the current authorized
    /// set. A key admitted otherwise (a TLS `--client-ca`) is not judged here.
    pub fn still_admits(&self, key: &PeerKey) -> bool {
        let listed_only = match &self.transport {
            ServerTransport::Native(_) => true,
            ServerTransport::Tls(tls) => !tls.has_client_ca(),
        };
        match &self.peers {
            Some(peers) if listed_only => peers.contains(key),
            _ => true,
        }
    }

    /// Run the server side of a handshake over an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Secure> {
        match &self.transport {
            ServerTransport::Native(responder) => {
                SecureStream::accept(tcp, responder.clone(), self.session.clone())
                    .await
                    .map(|s| Secure::Native(Box::new(s)))
            }
            ServerTransport::Tls(tls) => tls
                .accept(tcp, &self.session)
                .await
                .map(|s| Secure::Tls(Box::new(s))),
        }
    }
}

/// An established session of either transport over TCP.
// Boxed: a session's task moves it from the handshake's result into the forwarding future,
// and each move leaves a copy in the task's state for as long as the session lives (four
// copies of the TLS stream's 1.5 KiB in an idle tunnel server task before).
#[derive(Debug)]
pub enum Secure {
    /// The native protocol.
    Native(Box<SecureStream<TcpStream>>),
    /// TLS 1.3.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Secure {
    /// The TCP connection, giving up the session (to reset it).
    pub fn into_tcp(self) -> TcpStream {
        match self {
            Self::Native(s) => s.into_inner(),
            Self::Tls(s) => s.into_inner(),
        }
    }

    /// The TCP connection.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Native(s) => s.get_ref(),
            Self::Tls(s) => s.get_ref(),
        }
    }

    /// The key the peer authenticated with: its sessionkey identity, or its certificate's
    /// key; `None` for an anonymous peer.
    pub fn peer_key(&self) -> Option<PeerKey> {
        match self {
            Self::Native(s) => s.info().and_then(|i| i.peer).map(PeerKey::Native),
            Self::Tls(s) => s.info().peer,
        }
    }

    /// A live view of the session for `status`.
    pub fn status_view(&mut self) -> Arc<dyn SessionView> {
        match self {
            Self::Native(s) => Arc::new(s.status_cell()),
            Self::Tls(s) => Arc::new(s.status_cell()),
        }
    }
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Secure::Native($s) => $e,
            Secure::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Secure {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Secure {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A session-level failure, with what to tell the user.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The peer could not be reached.
    #[error("cannot reach {addr}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The handshake failed (refused, wrong key, timeout, garbage).
    #[error("handshake with {addr} failed")]
    Handshake {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The server's key failed the known-peers check.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The server could not decrypt a hello sealed to the pinned key: it has another key.
    #[error(
        "{addr} could not decrypt the hello sealed to the pinned server key {pinned}: that is \
         not the server's key. Run `sessionkey pubkey KEYFILE` on the server and pass its \
         output to --server-key"
    )]
    PinRejected {
        /// The address.
        addr: String,
        /// The pinned key's fingerprint.
        pinned: String,
    },
}

impl NativeClient {
    fn header(&self) -> Header {
        let pattern = match self.trust {
            ServerTrust::Pinned(_) => Pattern::IK,
            _ => Pattern::XX,
        };
        Header {
            pattern,
            suite: self.suite,
            hybrid: self.hybrid,
            psk: self.psk.is_some(),
        }
    }
}

impl ClientConfig {
    /// Open one session to the server and check its key.
    pub async fn connect(&self) -> Result<Secure, TunnelError> {
        let tcp =
            TcpStream::connect(&self.server)
                .await
                .map_err(|source| TunnelError::Unreachable {
                    addr: self.server.clone(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        let handshake_err = |source| TunnelError::Handshake {
            addr: self.server.clone(),
            source,
        };
        let native = match &self.transport {
            ClientTransport::Native(native) => native,
            ClientTransport::Tls(tls) => {
                return match tls.connect(tcp, &self.session).await {
                    Ok(s) => Ok(Secure::Tls(Box::new(s))),
                    Err(e) => Err(match crate::tls::trust_failure(&e) {
                        Some(t) => TunnelError::Trust(t),
                        None => handshake_err(e),
                    }),
                };
            }
        };
        let remote = match native.trust {
            ServerTrust::Pinned(key) => Some(key),
            _ => None,
        };
        let psk = native.psk.map(Psk::from_bytes);
        let mut initiator =
            Initiator::new(native.header(), Some(native.identity.clone()), remote, psk)
                .map_err(|e| handshake_err(crate::error::to_io(e)))?;
        // XX: the server's key is judged after its message proves it and before ours
        // reveals this client's key, so an impostor learns nothing about who connected.
        let refused: Arc<std::sync::Mutex<Option<TrustError>>> = Arc::default();
        if let ServerTrust::KnownPeers { file, accept_new } = &native.trust {
            let (file, accept_new, host) = (file.clone(), *accept_new, self.server.clone());
            let refused = refused.clone();
            initiator = initiator.with_responder_check(Box::new(move |key| {
                match file.verify(&host, &(*key).into(), accept_new) {
                    Ok(HostKey::Learned) => {
                        tracing::warn!(server = %host, key = %key.fingerprint(), "learned a new server key");
                        Ok(())
                    }
                    Ok(HostKey::Known) => Ok(()),
                    Err(e) => {
                        let text = e.to_string();
                        if let Ok(mut slot) = refused.lock() {
                            *slot = Some(e);
                        }
                        Err(text.into())
                    }
                }
            }));
        }
        match SecureStream::connect(tcp, initiator, self.session.clone()).await {
            Ok(stream) => Ok(Secure::Native(Box::new(stream))),
            Err(e) => {
                if let Some(t) = refused.lock().ok().and_then(|mut slot| slot.take()) {
                    return Err(TunnelError::Trust(t));
                }
                let undecryptable = matches!(
                    crate::protocol_error(&e),
                    Some(Error::Refused(Refusal::UndecryptableHello))
                );
                match (&native.trust, undecryptable) {
                    (ServerTrust::Pinned(key), true) => Err(TunnelError::PinRejected {
                        addr: self.server.clone(),
                        pinned: key.fingerprint().to_string(),
                    }),
                    _ => Err(handshake_err(e)),
                }
            }
        }
    }
}

impl TunnelError {
    /// Whether the server's key (or certificate) was refused or has changed: a pin that is
    /// not the server's, a known-peers mismatch, an unknown server without
    /// `--accept-new`, a certificate that fails verification. Retrying cannot help, and a
    /// changed key may be an attack; a tunnel client stops on it.
    pub fn is_key_refusal(&self) -> bool {
        match self {
            Self::PinRejected { .. } => true,
            Self::Trust(t) => matches!(
                t,
                TrustError::KeyChanged(_)
                    | TrustError::UnknownHost { .. }
                    | TrustError::PinMismatch { .. }
            ),
            Self::Handshake { source, .. } => {
                matches!(
                    crate::protocol_error(source),
                    Some(Error::PeerKeyRejected(_))
                ) || matches!(
                    crate::tls::rustls_error(source),
                    Some(rustls::Error::InvalidCertificate(_))
                )
            }
            Self::Unreachable { .. } => false,
        }
    }
}

/// Run a tunnel client: listen on `listen`, one session per local connection.
///
/// It runs until the task is dropped, except when the server's key is refused or has
/// changed ([`TunnelError::is_key_refusal`]): then it stops with that error (the CLI exits
/// 77), since every later connection would fail the same way.
pub async fn run_client(
    listener: TcpListener,
    config: Arc<ClientConfig>,
    registry: Registry,
) -> io::Result<()> {
    serve_client(
        Arc::new(listener),
        config,
        TunnelSessions::default(),
        registry,
    )
    .await
}

/// [`run_client`] on a shared listener, with its sessions in `sessions`: a reload restarts
/// this loop with a new configuration on the same listener, and the sessions carry on
/// until [`TunnelSessions::stop`].
pub async fn serve_client(
    listener: Arc<TcpListener>,
    config: Arc<ClientConfig>,
    sessions: TunnelSessions,
    registry: Registry,
) -> io::Result<()> {
    let report = Reporter::new(&config.name, registry.clone());
    let _ticker = report.start();
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::channel::<TunnelError>(1);
    loop {
        let (local, from) = tokio::select! {
            accepted = admission::accept(&listener, &report) => accepted,
            Some(refused) = refused_rx.recv() => {
                return Err(io::Error::other(refused));
            }
        };
        let config = config.clone();
        let registry = registry.clone();
        let sessions = sessions.clone();
        let refused_tx = refused_tx.clone();
        tokio::spawn(async move {
            let _ = local.set_nodelay(true);
            // Boxed, as the server's handshake is (see there).
            let mut secure = match Box::pin(config.connect()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(tunnel = %config.name, local = %from, "{}", chain(&e));
                    abort(local);
                    if e.is_key_refusal() {
                        let _ = refused_tx.try_send(e);
                    }
                    return;
                }
            };
            let remote = secure.tcp().peer_addr().unwrap_or(from);
            let live = secure.peer_key().map(|k| sessions.by_key.register(k));
            let _reg = registry.register(&config.name, "client", remote, secure.status_view());
            let cut = std::pin::pin!(sessions.cut(live.as_ref()));
            forward(secure, local, &config.name, cut).await;
        });
    }
}

/// Run a tunnel server: accept sessions on `listener`, forward each to the target.
///
/// It runs until the task is dropped: accept errors (out of descriptors, an aborted
/// connection) are logged, rate-limited, and retried after a pause. Connections beyond
/// [`ServerConfig::limits`] are reset before their handshake; failed handshakes are logged
/// in full a few times per interval, then summarised.
pub async fn run_server(
    listener: TcpListener,
    config: ServerConfig,
    registry: Registry,
) -> io::Result<()> {
    serve_server(
        Arc::new(listener),
        Arc::new(config),
        TunnelSessions::default(),
        registry,
    )
    .await
}

/// [`run_server`] on a shared listener, with its sessions in `sessions` by the key each
/// peer authenticated: [`LiveSessions::revoke`] on `sessions.by_key` closes a key's
/// sessions at once, and a reload restarts this loop with a new configuration on the same
/// listener while the sessions carry on.
pub async fn serve_server(
    listener: Arc<TcpListener>,
    config: Arc<ServerConfig>,
    sessions: TunnelSessions,
    registry: Registry,
) -> io::Result<()> {
    let gate = Gate::new(config.limits);
    let report = Reporter::new(&config.name, registry.clone());
    let _ticker = report.start();
    loop {
        let (tcp, from) = admission::accept(&listener, &report).await;
        let slot = match gate.admit(&from) {
            Ok(slot) => slot,
            Err(why) => {
                registry.count_handshake(&config.name, "refused", why.label());
                report.refused(&from, why);
                abort(tcp);
                continue;
            }
        };
        let config = config.clone();
        let registry = registry.clone();
        let sessions = sessions.clone();
        let gate = gate.clone();
        let report = report.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let started = std::time::Instant::now();
            // Boxed: the handshake's state (2 KiB) is larger than the forwarding's, and an
            // unboxed one would set the size of the task for the life of the session.
            let accepted = Box::pin(config.accept(tcp)).await;
            registry.observe_handshake(&config.name, accepted.is_ok(), started.elapsed());
            drop(slot);
            let mut secure = match accepted {
                Ok(s) => s,
                Err(e) => {
                    registry.count_handshake(
                        &config.name,
                        "failed",
                        crate::metrics::failure_reason(&e),
                    );
                    report.handshake_failed(&from, &e);
                    return;
                }
            };
            let _session_slot = match gate.establish() {
                Ok(s) => s,
                Err(why) => {
                    registry.count_handshake(&config.name, "refused", why.label());
                    report.refused(&from, why);
                    abort(secure.into_tcp());
                    return;
                }
            };
            let peer = secure.peer_key();
            let live = peer.map(|k| sessions.by_key.register(k));
            if let Some(key) = peer.filter(|k| !config.still_admits(k)) {
                // Removed by a reload during its handshake, after the revocation ran.
                tracing::warn!(tunnel = %config.name, key = %key.fingerprint(), "key no longer authorized; closing its new session");
                abort(secure.into_tcp());
                return;
            }
            let target = match TcpStream::connect(&config.target).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(tunnel = %config.name, target = %config.target, "cannot reach the target: {e}");
                    abort(secure.into_tcp());
                    return;
                }
            };
            let _ = target.set_nodelay(true);
            registry.count_handshake(&config.name, "ok", "none");
            let reg = registry.register(&config.name, "server", from, secure.status_view());
            // Also cut when an operator kicks it (`sessionkey peers kick SESSION`). Built in
            // place and pinned here, so that no copy of it stays in the task's state.
            let cut = std::pin::pin!(async {
                tokio::select! {
                    () = sessions.cut(live.as_ref()) => {}
                    () = reg.close_requested() => {}
                }
            });
            forward(secure, target, &config.name, cut).await;
        });
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "its key is no longer authorized, or its tunnel stopped",
    )
}

/// An error and its causes, as one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Reset a TCP connection: linger zero, then close, so the peer gets RST, not FIN.
pub fn abort(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// The sessions of one tunnel, shared by the accept loops a reload starts in turn: by
/// peer key (for revocation), and a stop signal for them all (the tunnel was removed).
#[derive(Debug, Clone)]
pub struct TunnelSessions {
    /// Sessions by the key their peer authenticated (anonymous ones are not in it).
    pub by_key: LiveSessions,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for TunnelSessions {
    fn default() -> Self {
        Self {
            by_key: LiveSessions::default(),
            stop: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl TunnelSessions {
    /// Cut every session of the tunnel, anonymous ones too.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        self.by_key.close_all();
    }

    /// Resolves when this session must be cut: its key revoked, or the tunnel stopped.
    fn cut<'a>(&self, live: Option<&'a LiveSession>) -> impl std::future::Future<Output = ()> + 'a {
        let mut stop = self.stop.subscribe();
        async move {
            tokio::select! {
                () = async {
                    match live {
                        Some(live) => live.revoked().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
        }
    }
}

/// Carry bytes both ways until both directions end. On any session error both TCP
/// connections are reset.
///
/// When `cut` resolves (the key's authorization was withdrawn, or the tunnel stopped), the
/// session is cut at once the same way: both connections reset, so that neither
/// application mistakes the cut for a clean end of its stream (the protocol's close record
/// would say exactly that). Pass `std::future::pending()` for a session nothing cuts.
pub async fn forward(
    secure: Secure,
    plain: TcpStream,
    name: &str,
    cut: impl std::future::Future<Output = ()>,
) {
    let mut stream = match secure {
        Secure::Native(stream) => stream,
        // Boxed: its state would otherwise set the size of every native session's task too.
        Secure::Tls(tls) => return Box::pin(forward_tls(tls, plain, name, cut)).await,
    };
    let mut plain = plain;
    let result = tokio::select! {
        result = stream.relay(&mut plain) => result,
        () = cut => Err(cut_error()),
    };
    if let Err(e) = result {
        tracing::warn!(tunnel = %name, "session ended in error, resetting the connection: {e}");
        abort(plain);
        abort(stream.into_inner());
    }
}

/// [`forward`] for a TLS session: [`TlsStream::relay`].
async fn forward_tls(
    mut stream: Box<TlsStream<TcpStream>>,
    mut plain: TcpStream,
    name: &str,
    cut: impl std::future::Future<Output = ()>,
) {
    let result = tokio::select! {
        result = stream.relay(&mut plain) => result,
        () = cut => Err(cut_error()),
    };
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::PermissionDenied {
            tracing::info!(tunnel = %name, "session cut, resetting the connection: {e}");
        } else {
            tracing::warn!(tunnel = %name, "session ended in error, resetting the connection: {e}");
        }
        abort(plain);
        abort(stream.into_inner());
    }
}

/// The address a listener is bound to, for messages.
pub fn local_addr(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default()
}
