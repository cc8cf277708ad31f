//! The client side of the relay API: signed HTTP/1.1 requests over one kept-alive TLS
//! connection to a pinned relay, and the WebSocket push channel.

use std::io;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::api::{self, AuthHeaders, ErrorBody};
use crate::proto::crypto::{SecureRandom, SystemRandom};
use crate::proto::msg::Device;
use crate::proto::session::SessionConfig;
use crate::tls::{self, TlsClient, TlsStream};

/// The largest answer read from the relay: a full fetch (100 envelopes of at most 96 KiB,
/// in base64 JSON) with room to spare. Larger answers are refused unread.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A relay request failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay could not be reached or the connection broke.
    #[error("cannot reach the relay at {addr}: {source}; is it running?")]
    Unreachable {
        /// The relay's address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The relay's certificate is not the pinned one.
    #[error("the relay at {addr} presented a different certificate than the one pinned at `msg init`: {detail}")]
    CertificateChanged {
        /// The relay's address.
        addr: String,
        /// The trust check's words.
        detail: String,
    },
    /// The relay answered with an error.
    #[error("the relay refused: {message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The relay's sentence.
        message: String,
    },
    /// The relay's answer was not what the API says.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    /// Signing the request failed.
    #[error("signing the request failed: {0}")]
    Sign(String),
}

impl RelayError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one relay, as one device.
pub struct RelayClient {
    addr: String,
    tls: TlsClient,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RelayClient {
    /// A client for the relay at `addr` (`host:port`), checked by `tls`.
    pub fn new(addr: impl Into<String>, tls: TlsClient) -> Self {
        Self {
            addr: addr.into(),
            tls,
            conn: Mutex::new(None),
        }
    }

    /// The relay's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Open a TLS connection to the relay (the pin or known-peers check runs here).
    pub async fn connect_tls(&self) -> Result<TlsStream<TcpStream>, RelayError> {
        let unreachable = |source| RelayError::Unreachable {
            addr: self.addr.clone(),
            source,
        };
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.addr))
            .await
            .map_err(|_| unreachable(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        self.tls
            .connect(tcp, &SessionConfig::default())
            .await
            .map_err(|e| match tls::trust_failure(&e) {
                Some(t) => RelayError::CertificateChanged {
                    addr: self.addr.clone(),
                    // `msg` has no --server-key: word the pin mismatch for messaging.
                    detail: match t {
                        crate::trust::TrustError::PinMismatch {
                            pinned,
                            presented,
                            line,
                        } => format!(
                            "it presented {presented}, the pin is {pinned}. If the relay's \
                             certificate changed on purpose, confirm its new pin ({line}) with \
                             the relay's operator, then run `sessionkey msg init --relay \
                             https://{} --relay-key '{line}'` with a new --state directory",
                            self.addr
                        ),
                        other => other.to_string(),
                    },
                },
                None => unreachable(e),
            })
    }

    async fn sender<'a>(
        &self,
        slot: &'a mut Option<SendRequest<Full<Bytes>>>,
    ) -> Result<&'a mut SendRequest<Full<Bytes>>, RelayError> {
        let alive = match slot.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            let stream = self.connect_tls().await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| RelayError::Unreachable {
                    addr: self.addr.clone(),
                    source: io::Error::other(e),
                })?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            *slot = Some(sender);
        }
        slot.as_mut()
            .ok_or_else(|| RelayError::Protocol("no connection".into()))
    }

    /// The four authentication headers for a request.
    pub fn sign(
        device: &Device,
        name: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<AuthHeaders, RelayError> {
        let mut nonce = [0u8; 16];
        SystemRandom
            .fill(&mut nonce)
            .map_err(|e| RelayError::Sign(e.to_string()))?;
        AuthHeaders::sign(device, name, method, path, unix_now(), nonce, body)
            .map_err(|e| RelayError::Sign(e.to_string()))
    }

    /// Send a signed request; returns the body of a success answer.
    pub async fn request(
        &self,
        device: &Device,
        name: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
        json: bool,
    ) -> Result<Bytes, RelayError> {
        let auth = Self::sign(device, name, method.as_str(), path, &body)?;
        self.send_signed(&auth, method, path, body, json).await
    }

    /// Send a request with these authentication headers as they are (tests use it to replay
    /// or forge requests); returns the body of a success answer.
    pub async fn send_signed(
        &self,
        auth: &AuthHeaders,
        method: Method,
        path: &str,
        body: Vec<u8>,
        json: bool,
    ) -> Result<Bytes, RelayError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(
                hyper::header::CONTENT_TYPE,
                if json {
                    "application/json"
                } else {
                    "application/octet-stream"
                },
            );
        for (h, v) in auth.to_pairs() {
            builder = builder.header(h, v);
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| RelayError::Protocol(e.to_string()))?;
        let mut slot = self.conn.lock().await;
        let sender = self.sender(&mut slot).await?;
        let broken = |e: hyper::Error| RelayError::Unreachable {
            addr: self.addr.clone(),
            source: io::Error::other(e),
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                *slot = None;
                return Err(broken(e));
            }
        };
        let status = resp.status();
        let bytes = match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                *slot = None;
                return Err(RelayError::Protocol(format!(
                    "the relay's answer is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            Err(e) => {
                *slot = None;
                return Err(RelayError::Unreachable {
                    addr: self.addr.clone(),
                    source: io::Error::other(e),
                });
            }
        };
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        Err(RelayError::Refused { status, message })
    }

    /// [`RelayClient::request`] with a JSON answer.
    pub async fn request_json<T: DeserializeOwned>(
        &self,
        device: &Device,
        name: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, RelayError> {
        let bytes = self.request(device, name, method, path, body, true).await?;
        serde_json::from_slice(&bytes).map_err(|e| RelayError::Protocol(e.to_string()))
    }

    /// Open the push channel (`GET /v1/ws`).
    pub async fn push_channel(
        &self,
        device: &Device,
        name: &str,
    ) -> Result<PushChannel, RelayError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let stream = self.connect_tls().await?;
        let mut req = format!("wss://{}/v1/ws", self.addr)
            .into_client_request()
            .map_err(|e| RelayError::Protocol(e.to_string()))?;
        let auth = Self::sign(device, name, "GET", "/v1/ws", &[])?;
        for (h, v) in auth.to_pairs() {
            let v = HeaderValue::from_str(&v).map_err(|e| RelayError::Protocol(e.to_string()))?;
            req.headers_mut().insert(h, v);
        }
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => RelayError::Refused {
                    status: resp.status(),
                    message: "push channel refused".into(),
                },
                e => RelayError::Protocol(format!("push channel: {e}")),
            })?;
        Ok(PushChannel { ws })
    }
}

/// The WebSocket over which the relay says that messages wait.
pub struct PushChannel {
    ws: tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
}

impl std::fmt::Debug for PushChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushChannel").finish_non_exhaustive()
    }
}

impl PushChannel {
    /// Wait for the next push; `Ok(None)` when the relay closed the channel.
    pub async fn next(&mut self) -> Result<Option<api::Push>, RelayError> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(RelayError::Protocol(format!("push channel: {e}"))),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map(Some)
                        .map_err(|e| RelayError::Protocol(e.to_string()))
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
