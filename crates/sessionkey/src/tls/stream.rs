//! [`TlsStream`]: a TLS 1.3 connection that rotates its keys by sessionkey's policy and
//! reports itself like a native session (logs, `status`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sessionkey_proto::keys::Fingerprint;
use sessionkey_proto::session::SessionConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::cert::spki_pin;
use crate::status::SessionView;
use crate::trust::PeerKey;

/// RFC 8446 7.5 exporter label for the session fingerprint both ends compute.
pub const FINGERPRINT_LABEL: &[u8] = b"EXPORTER-sessionkey-session-fingerprint";

/// When a TLS connection updates its keys (a TLS 1.3 KeyUpdate that also asks the peer to
/// update its own): the byte and record counts of native sessions, and their re-handshake
/// interval as a time limit (TLS 1.3 has no re-handshake; a key update is its rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUpdatePolicy {
    /// Update after this many application bytes sent under one key.
    pub bytes: u64,
    /// Update after this many records sent under one key.
    pub records: u64,
    /// Update this often.
    pub interval: Option<Duration>,
}

impl From<&SessionConfig> for KeyUpdatePolicy {
    fn from(c: &SessionConfig) -> Self {
        Self {
            bytes: c.key_update_bytes,
            records: c.key_update_records,
            interval: c.rehandshake_interval,
        }
    }
}

/// What a TLS session shows: negotiated parameters, fingerprints and counters, no secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// A short id for logs, from the fingerprint.
    pub id: u64,
    /// The session fingerprint: the TLS exporter (RFC 8446 7.5) with label
    /// [`FINGERPRINT_LABEL`], 32 bytes. Both ends compute the same value.
    pub fingerprint: Fingerprint,
    /// Protocol version, `TLSv1.3`.
    pub version: &'static str,
    /// The TLS cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: &'static str,
    /// The key-exchange group, e.g. `X25519MLKEM768`.
    pub group: &'static str,
    /// Whether the key exchange is hybrid post-quantum.
    pub hybrid: bool,
    /// Whether the session was resumed from a ticket.
    pub resumed: bool,
    /// The peer certificate's public key, if it sent one.
    pub peer: Option<PeerKey>,
    /// Key updates this side has sent (its sending key epoch).
    pub send_epoch: u32,
    /// Application bytes sent.
    pub bytes_sent: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Records sent under the current key.
    pub records_this_key: u64,
    /// Application bytes received.
    pub bytes_received: u64,
    /// When the next key update is due by time.
    pub next_key_update: Option<Instant>,
    /// When the sending key last changed (the handshake, or a key update).
    pub key_since: Instant,
}

/// The latest [`TlsInfo`] of a stream, shared with whoever shows status.
#[derive(Debug, Clone, Default)]
pub struct TlsStatusCell(Arc<Mutex<Option<TlsInfo>>>);

impl TlsStatusCell {
    /// The snapshot.
    pub fn get(&self) -> Option<TlsInfo> {
        self.0.lock().ok().and_then(|s| *s)
    }

    fn set(&self, info: TlsInfo) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(info);
        }
    }
}

impl SessionView for TlsStatusCell {
    fn json(&self) -> Option<Value> {
        let i = self.get()?;
        Some(json!({
            "transport": "tls",
            "session": format!("{:016x}", i.id),
            "fingerprint": i.fingerprint.to_string(),
            "peer": i.peer.map(|p| p.fingerprint().to_string()),
            "suite": i.cipher_suite,
            "version": i.version,
            "group": i.group,
            "hybrid": i.hybrid,
            "resumed": i.resumed,
            "send": {
                "epoch": i.send_epoch,
                "bytes": i.bytes_sent,
                "records": i.records_sent,
                "records_this_key": i.records_this_key,
            },
            // TLS does not tell a receiver when the peer's keys change.
            "receive": { "epoch": null, "bytes": i.bytes_received },
            "next_key_update_secs": i.next_key_update
                .map(|t| t.saturating_duration_since(Instant::now()).as_secs()),
            "key_age_secs": i.key_since.elapsed().as_secs_f64(),
        }))
    }
}

/// Logs the end of a session once, however the stream goes away.
#[derive(Debug)]
struct Lifecycle {
    info: TlsInfo,
    sent_close: bool,
    got_close: bool,
    error: Option<String>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        let reason = match (&self.error, self.sent_close && self.got_close) {
            (Some(e), _) => e.as_str(),
            (None, true) => "closed cleanly",
            (None, false) => "closed before both sides sent close_notify",
        };
        tracing::info!(
            session = format_args!("{:016x}", self.info.id),
            sent = self.info.bytes_sent,
            received = self.info.bytes_received,
            %reason,
            "session closed"
        );
    }
}

/// A TLS 1.3 stream (client or server side) with automatic key updates.
///
/// Reads deliver only authenticated data; a connection cut without the peer's close_notify
/// is an `io::Error` of kind `UnexpectedEof`, never a clean end of file.
pub struct TlsStream<T> {
    inner: tokio_rustls::TlsStream<T>,
    policy: KeyUpdatePolicy,
    key_since: Instant,
    bytes_this_key: u64,
    timer: Pin<Box<Sleep>>,
    status: Option<TlsStatusCell>,
    life: Lifecycle,
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsStream<T> {
    pub(crate) fn new(inner: tokio_rustls::TlsStream<T>, policy: KeyUpdatePolicy) -> Self {
        let now = Instant::now();
        let conn = inner.get_ref().1;
        let mut exported = [0u8; 32];
        let exporter = match &inner {
            tokio_rustls::TlsStream::Client(s) => {
                s.get_ref()
                    .1
                    .export_keying_material(&mut exported, FINGERPRINT_LABEL, None)
            }
            tokio_rustls::TlsStream::Server(s) => {
                s.get_ref()
                    .1
                    .export_keying_material(&mut exported, FINGERPRINT_LABEL, None)
            }
        };
        // The exporter only fails before the handshake completes, and this is after it.
        debug_assert!(exporter.is_ok());
        let group = conn.negotiated_key_exchange_group().map(|g| g.name());
        let info = TlsInfo {
            id: u64::from_be_bytes(exported[..8].try_into().unwrap_or_default()),
            fingerprint: Fingerprint::from_sha256(exported),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                _ => "TLS",
            },
            cipher_suite: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            group: group.and_then(|g| g.as_str()).unwrap_or("unknown"),
            hybrid: group == Some(rustls::NamedGroup::X25519MLKEM768),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            peer: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(spki_pin),
            send_epoch: 0,
            bytes_sent: 0,
            records_sent: 0,
            records_this_key: 0,
            bytes_received: 0,
            next_key_update: policy.interval.map(|i| now + i),
            key_since: now,
        };
        tracing::info!(
            session = format_args!("{:016x}", info.id),
            fingerprint = %info.fingerprint,
            suite = info.cipher_suite,
            group = info.group,
            hybrid = info.hybrid,
            resumed = info.resumed,
            peer = %info
                .peer
                .map_or_else(|| "none".to_string(), |p| p.fingerprint().to_string()),
            "TLS session established"
        );
        let deadline = info
            .next_key_update
            .unwrap_or(now + Duration::from_secs(86_400));
        Self {
            inner,
            policy,
            key_since: now,
            bytes_this_key: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            status: None,
            life: Lifecycle {
                info,
                sent_close: false,
                got_close: false,
                error: None,
            },
        }
    }
}

impl<T> std::fmt::Debug for TlsStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("session", &self.life.info.fingerprint)
            .finish_non_exhaustive()
    }
}

impl<T> TlsStream<T> {
    /// The session's parameters and counters.
    pub fn info(&self) -> TlsInfo {
        self.life.info
    }

    /// A cell that always holds the latest [`TlsInfo`], for status views.
    pub fn status_cell(&mut self) -> TlsStatusCell {
        let cell = self
            .status
            .get_or_insert_with(TlsStatusCell::default)
            .clone();
        cell.set(self.life.info);
        cell
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &T {
        self.inner.get_ref().0
    }

    /// The underlying transport, giving up the session (for instance to reset it).
    pub fn into_inner(self) -> T {
        match self.inner {
            tokio_rustls::TlsStream::Client(s) => s.into_inner().0,
            tokio_rustls::TlsStream::Server(s) => s.into_inner().0,
        }
    }

    /// Send a key update now (it is also done automatically by policy).
    pub fn update_keys(&mut self) -> io::Result<()> {
        let refreshed = match &mut self.inner {
            tokio_rustls::TlsStream::Client(s) => s.get_mut().1.refresh_traffic_keys(),
            tokio_rustls::TlsStream::Server(s) => s.get_mut().1.refresh_traffic_keys(),
        };
        refreshed.map_err(io::Error::other)?;
        let now = Instant::now();
        let info = &mut self.life.info;
        info.send_epoch += 1;
        info.records_this_key = 0;
        info.next_key_update = self.policy.interval.map(|i| now + i);
        info.key_since = now;
        self.bytes_this_key = 0;
        self.key_since = now;
        if let Some(next) = info.next_key_update {
            self.timer.as_mut().reset(next.into());
        }
        tracing::debug!(
            session = format_args!("{:016x}", info.id),
            direction = "Send",
            epoch = info.send_epoch,
            "key updated"
        );
        self.publish();
        Ok(())
    }

    fn due(&self, now: Instant) -> bool {
        self.bytes_this_key >= self.policy.bytes
            || self.life.info.records_this_key >= self.policy.records
            || self
                .policy
                .interval
                .is_some_and(|i| now.duration_since(self.key_since) >= i)
    }

    fn publish(&self) {
        if let Some(cell) = &self.status {
            cell.set(self.life.info);
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        let e = super::explain(e);
        if self.life.error.is_none() {
            self.life.error = Some(e.to_string());
        }
        e
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // An idle connection still rotates by time; the key update goes out with the next
        // flush.
        if this.timer.as_mut().poll(cx).is_ready() && this.due(Instant::now()) {
            this.update_keys().map_err(|e| this.fail(e))?;
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
        }
        let before = buf.filled().len();
        match ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
            Ok(()) => {
                let n = buf.filled().len() - before;
                if n == 0 && buf.remaining() > 0 {
                    this.life.got_close = true;
                }
                this.life.info.bytes_received += n as u64;
                this.publish();
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(this.fail(e))),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.due(Instant::now()) {
            this.update_keys().map_err(|e| this.fail(e))?;
        }
        // No key carries more than the policy's bytes: a write that would cross the limit
        // stops at it, and the next one starts under a new key.
        let room = this.policy.bytes.saturating_sub(this.bytes_this_key).max(1);
        let data = &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        match ready!(Pin::new(&mut this.inner).poll_write(cx, data)) {
            Ok(n) => {
                // rustls seals each write in records of at most 16 KiB of plaintext.
                let records = n.div_ceil(super::MAX_FRAGMENT) as u64;
                let info = &mut this.life.info;
                info.bytes_sent += n as u64;
                info.records_sent += records;
                info.records_this_key += records;
                this.bytes_this_key += n as u64;
                this.publish();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(this.fail(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_flush(cx)
            .map_err(|e| this.fail(e))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
        this.life.sent_close = true;
        Poll::Ready(r.map_err(|e| this.fail(e)))
    }
}

/// What a relay buffer holds first, and until a read fills it.
const RELAY_SMALL: usize = 4 * 1024;
/// A relay buffer once a read filled the small one: whole TLS records, so a full read
/// never leaves a small tail record.
const RELAY_FULL: usize = 16 * super::MAX_FRAGMENT;
/// Full-size buffers stay this long after the last bytes moved (bulk traffic would
/// otherwise allocate them again at every pause).
const RELAY_RELEASE: Duration = Duration::from_secs(1);
/// Rounds of one poll before the relay yields to other tasks.
const RELAY_ROUNDS: usize = 32;

/// One direction of [`TlsStream::relay`]: bytes read and not yet written, in a buffer that
/// exists only while bytes flow.
#[derive(Default)]
struct Pipe {
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// A read filled the small buffer: the next one is full size.
    bulk: bool,
    /// The source ended.
    eof: bool,
    /// The end is passed on too (close_notify or FIN): the direction is over.
    done: bool,
}

impl Pipe {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    /// An empty buffer to read into, sized for the traffic seen.
    fn space(&mut self) -> &mut [u8] {
        let want = if self.bulk { RELAY_FULL } else { RELAY_SMALL };
        if self.buf.len() != want {
            self.buf = vec![0; want];
        }
        (self.pos, self.len) = (0, 0);
        &mut self.buf
    }

    /// Write some of what is pending to `to`.
    fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        to: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let n = std::task::ready!(Pin::new(to).poll_write(cx, self.pending()))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.pos += n;
        Poll::Ready(Ok(()))
    }

    fn filled(&mut self, n: usize) {
        self.len = n;
        self.bulk |= n == self.buf.len();
    }

    fn release(&mut self) {
        self.buf = Vec::new();
        (self.pos, self.len) = (0, 0);
        self.bulk = false;
    }
}

/// The state of [`TlsStream::relay`].
#[derive(Default)]
struct Relay {
    /// Plain side to TLS, and whether the TLS side owes a flush of what was written.
    up: Pipe,
    flush: bool,
    /// TLS side to plain.
    down: Pipe,
    /// When bytes last moved, and the timer that frees full-size buffers after
    /// [`RELAY_RELEASE`] without traffic (only while they are held).
    last_active: Option<Instant>,
    release: Option<Pin<Box<Sleep>>>,
}

impl TlsStream<tokio::net::TcpStream> {
    /// Carry bytes between this session and `plain`, both ways, in one poll loop, until
    /// both directions end: the end of `plain`'s input sends close_notify (and FIN), the
    /// peer's close_notify closes `plain`'s sending side. Errors (a cut without
    /// close_notify included) end it at once; the caller resets the connections.
    ///
    /// Buffers exist only while bytes flow: 4 KiB first, full size once a read fills one,
    /// freed when idle, so an idle session holds none.
    pub async fn relay(&mut self, plain: &mut tokio::net::TcpStream) -> io::Result<()> {
        let mut relay = Relay::default();
        std::future::poll_fn(|cx| relay.poll(self, plain, cx)).await
    }
}

impl Relay {
    fn poll(
        &mut self,
        s: &mut TlsStream<tokio::net::TcpStream>,
        plain: &mut tokio::net::TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        for _ in 0..RELAY_ROUNDS {
            let up = self.poll_up(s, plain, cx)?;
            let down = self.poll_down(s, plain, cx)?;
            if self.up.done && self.down.done {
                return Poll::Ready(Ok(()));
            }
            if !(up || down) {
                // Nothing moved: each direction registered for the wake-up it waits on.
                self.poll_release(cx);
                return Poll::Pending;
            }
            self.last_active = Some(Instant::now());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Plain side to TLS. Returns whether anything moved; if not, a wake-up is registered.
    fn poll_up(
        &mut self,
        s: &mut TlsStream<tokio::net::TcpStream>,
        plain: &mut tokio::net::TcpStream,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        let mut moved = false;
        while !self.up.done {
            if !self.up.pending().is_empty() {
                if self.up.poll_write_to(&mut *s, cx)?.is_pending() {
                    break;
                }
                self.flush = true;
                moved = true;
            } else if self.flush {
                // Interactive traffic must not wait in a buffer for more to come.
                match Pin::new(&mut *s).poll_flush(cx) {
                    Poll::Pending => break,
                    Poll::Ready(r) => r?,
                }
                self.flush = false;
            } else if self.up.eof {
                match Pin::new(&mut *s).poll_shutdown(cx) {
                    Poll::Pending => break,
                    Poll::Ready(r) => r?,
                }
                self.up.done = true;
                moved = true;
            } else {
                // Wait for readiness first: no buffer for a read that would block.
                if plain.poll_read_ready(cx)?.is_pending() {
                    break;
                }
                match plain.try_read(self.up.space()) {
                    Ok(0) => self.up.eof = true,
                    Ok(n) => self.up.filled(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
                moved = true;
            }
        }
        Ok(moved)
    }

    /// TLS side to plain. Returns whether anything moved; if not, a wake-up is registered.
    fn poll_down(
        &mut self,
        s: &mut TlsStream<tokio::net::TcpStream>,
        plain: &mut tokio::net::TcpStream,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        let mut moved = false;
        while !self.down.done {
            if !self.down.pending().is_empty() {
                if self.down.poll_write_to(&mut *plain, cx)?.is_pending() {
                    break;
                }
                moved = true;
            } else if self.down.eof {
                match Pin::new(&mut *plain).poll_shutdown(cx) {
                    Poll::Pending => break,
                    Poll::Ready(r) => r?,
                }
                self.down.done = true;
                moved = true;
            } else {
                // A read also drives the timed key update, so it is polled even when idle.
                let mut buf = ReadBuf::new(self.down.space());
                match Pin::new(&mut *s).poll_read(cx, &mut buf) {
                    Poll::Pending => break,
                    Poll::Ready(r) => r?,
                }
                // Zero bytes into a non-empty buffer: the peer's close_notify.
                match buf.filled().len() {
                    0 => self.down.eof = true,
                    n => self.down.filled(n),
                }
                moved = true;
            }
        }
        Ok(moved)
    }

    /// Free the buffers when nothing is pending in them: small ones at once (they cost
    /// little to get back), full-size ones once nothing moved for [`RELAY_RELEASE`].
    fn poll_release(&mut self, cx: &mut Context<'_>) {
        let idle = self.up.pending().is_empty() && self.down.pending().is_empty();
        let held = self.up.buf.len().max(self.down.buf.len());
        if !idle || held == 0 {
            self.release = None;
            return;
        }
        if held > RELAY_SMALL {
            let last = *self.last_active.get_or_insert_with(Instant::now);
            let due = tokio::time::Instant::from_std(last + RELAY_RELEASE);
            let timer = self
                .release
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
        }
        self.up.release();
        self.down.release();
        self.release = None;
    }
}
