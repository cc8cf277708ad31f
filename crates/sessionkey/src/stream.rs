//! `SecureStream`: a [`Session`] over any async byte stream, itself `AsyncRead + AsyncWrite`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Initiator, Responder};
use sessionkey_proto::record::{LEN_PREFIX, MAX_FRAME};
use sessionkey_proto::session::{
    CloseReason, Event, Received, Session, SessionConfig, SessionInfo, MAX_CONTROL_FRAME,
};
use sessionkey_proto::suite::UsageLimits;
use sessionkey_proto::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::error::to_io;

/// Asks a stream, from another task, to rotate its keys: applied at its next read or write.
#[derive(Debug, Clone, Default)]
pub struct RotationHandle(Arc<RotationFlags>);

#[derive(Debug, Default)]
struct RotationFlags {
    update: std::sync::atomic::AtomicBool,
    rehandshake: std::sync::atomic::AtomicBool,
}

impl RotationHandle {
    /// Update the sending key (one-way ratchet).
    pub fn update_keys(&self) {
        self.0
            .update
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Run a fresh ephemeral exchange for both directions.
    pub fn rehandshake(&self) {
        self.0
            .rehandshake
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The latest snapshot of a session, shared with whoever shows status.
#[derive(Debug, Clone, Default)]
pub struct StatusCell(Arc<std::sync::Mutex<Cell>>);

#[derive(Debug, Default)]
struct Cell {
    info: Option<SessionInfo>,
    /// When the sending key last changed (handshake, key update, re-handshake).
    key_since: Option<Instant>,
    /// Sending-key updates made because the key reached half its AEAD usage limit.
    forced_updates: u64,
    /// The session's usage limits when configured (else the suite's).
    limits: Option<UsageLimits>,
}

impl StatusCell {
    fn set(&self, info: Option<SessionInfo>) {
        if let Ok(mut slot) = self.0.lock() {
            slot.info = info;
        }
    }

    /// Note a key event (only events: the data path never comes here).
    fn key_event(&self, event: &Event, now: Instant) {
        use sessionkey_proto::session::Direction;
        let Ok(mut slot) = self.0.lock() else {
            return;
        };
        match event {
            Event::Established(_) | Event::Rehandshaken(_) => slot.key_since = Some(now),
            Event::KeyUpdated {
                direction: Direction::Send,
                info,
            } => {
                slot.key_since = Some(now);
                // The records under the old key, as last published before this update.
                let used = slot.info.as_ref().map_or(0, |i| i.send.records_this_key);
                let limit = slot.limits.unwrap_or_else(|| info.suite.limits()).records;
                if used >= limit / 2 {
                    slot.forced_updates += 1;
                }
            }
            _ => {}
        }
    }

    /// The snapshot, if the session was established.
    pub fn get(&self) -> Option<SessionInfo> {
        self.0.lock().ok().and_then(|s| s.info.clone())
    }

    /// Records one key may seal (the configured usage limit, else the suite's).
    pub fn record_limit(&self) -> Option<u64> {
        let slot = self.0.lock().ok()?;
        let suite = slot.info.as_ref()?.suite;
        Some(slot.limits.unwrap_or_else(|| suite.limits()).records)
    }

    /// How long the current sending key has been in use.
    pub fn key_age(&self) -> Option<std::time::Duration> {
        let since = self.0.lock().ok()?.key_since?;
        Some(since.elapsed())
    }

    /// Sending-key updates forced by the AEAD usage limit (half of it) rather than by the
    /// configured interval.
    pub fn forced_updates(&self) -> u64 {
        self.0.lock().map_or(0, |s| s.forced_updates)
    }
}

/// Receive buffer: room for a whole frame plus what arrived after it.
const READ_BUF: usize = 2 * MAX_FRAME;
/// Send buffer: a control frame and a data record can wait together.
const WRITE_BUF: usize = 2 * MAX_FRAME;

/// An encrypted, authenticated, self-rotating byte stream.
///
/// Reads deliver only authenticated data; a tampered, truncated or otherwise broken stream
/// is an `io::Error` (the [`sessionkey_proto::Error`] inside says which), never a clean end
/// of file. `shutdown` sends the authenticated close record. Keys rotate by the session's
/// policy while the stream is read or written.
pub struct SecureStream<T> {
    io: T,
    session: Session,
    /// Allocated when first needed (a relay frees it while idle).
    rbuf: Vec<u8>,
    /// Unprocessed received bytes are `rbuf[rpos..rlen]`.
    rpos: usize,
    rlen: usize,
    /// Decrypted data not yet handed to the reader, and the frame to drop after it.
    plain: std::ops::Range<usize>,
    plain_frame_end: usize,
    wbuf: Vec<u8>,
    /// Sealed bytes not yet written are `wbuf[wpos..wlen]`.
    wpos: usize,
    wlen: usize,
    timer: Pin<Box<Sleep>>,
    events: Option<mpsc::UnboundedSender<Event>>,
    status: Option<StatusCell>,
    rotation: Option<RotationHandle>,
    read_eof: bool,
    close_sent: bool,
    /// The configured usage limits, for the status cell.
    limits: Option<UsageLimits>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> SecureStream<T> {
    /// Connect: run the initiator's handshake over `io`, within the config's handshake
    /// timeout.
    pub async fn connect(io: T, initiator: Initiator, config: SessionConfig) -> io::Result<Self> {
        let (timeout, limits) = (config.handshake_timeout, config.usage_limits);
        let session = Session::client(Instant::now(), initiator, config, Box::new(SystemRandom));
        Self::handshake(io, session, timeout, limits).await
    }

    /// Accept: run the responder's handshake over `io`.
    pub async fn accept(
        io: T,
        responder: Arc<Responder>,
        config: SessionConfig,
    ) -> io::Result<Self> {
        let (timeout, limits) = (config.handshake_timeout, config.usage_limits);
        let session = Session::server(Instant::now(), responder, config, Box::new(SystemRandom));
        Self::handshake(io, session, timeout, limits).await
    }

    async fn handshake(
        io: T,
        session: Session,
        timeout: std::time::Duration,
        limits: Option<UsageLimits>,
    ) -> io::Result<Self> {
        let mut stream = Self::new(io, session);
        stream.limits = limits;
        let run = async {
            loop {
                stream.queue_transmit()?;
                stream.flush_wbuf().await?;
                if stream.session.is_established() {
                    return Ok(());
                }
                if let Some(reason) = stream.session.close_reason() {
                    return Err(to_io(reason_error(reason)));
                }
                stream.process_handshake_input().await?;
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(to_io(sessionkey_proto::Timeout::Handshake(timeout).into())),
        }
    }

    async fn process_handshake_input(&mut self) -> io::Result<()> {
        loop {
            match self
                .session
                .read(Instant::now(), &mut self.rbuf[self.rpos..self.rlen])
            {
                Ok(Received::Incomplete { needed }) => {
                    self.make_room(needed);
                    let n = self.io.read(&mut self.rbuf[self.rlen..]).await?;
                    if n == 0 {
                        return Err(to_io(
                            self.session.handle_eof(Instant::now()).err().unwrap_or(
                                sessionkey_proto::PeerMisbehaved::StreamTruncated.into(),
                            ),
                        ));
                    }
                    self.rlen += n;
                }
                Ok(Received::Control { frame_len }) => {
                    self.rpos += frame_len;
                    return Ok(());
                }
                Ok(Received::Data { .. }) => {
                    unreachable!("no data records during the handshake")
                }
                Err(e) => return Err(to_io(e)),
            }
        }
    }

    /// Wait until the peer confirms it received every byte this side sent (PROTOCOL.md 9.3):
    /// call after `shutdown`, once reads have reached end of stream. Returns the data bytes
    /// confirmed; fails if the connection ends first or the counts differ, which means the
    /// peer (or its application) did not take everything.
    pub async fn acknowledged(&mut self) -> io::Result<u64> {
        loop {
            // Our own acknowledgement of the peer's close may still wait to be written.
            self.queue_transmit()?;
            self.flush_wbuf().await?;
            if let Some(bytes) = self.session.acknowledged() {
                return Ok(bytes);
            }
            self.failed()?;
            if !self.session.awaits_acknowledgement() && !self.session.is_established() {
                return Err(not_acknowledged());
            }
            match self
                .session
                .read(Instant::now(), &mut self.rbuf[self.rpos..self.rlen])
            {
                Ok(Received::Incomplete { needed }) => {
                    self.make_room(needed);
                    // A reset is the peer going away without acknowledging, as an end of
                    // stream is.
                    let n = self.io.read(&mut self.rbuf[self.rlen..]).await.unwrap_or(0);
                    if n == 0 {
                        let _ = self.session.handle_eof(Instant::now());
                        self.drain_events();
                        self.failed()?;
                        if self.session.acknowledged().is_none() {
                            return Err(not_acknowledged());
                        }
                    }
                    self.rlen += n;
                }
                Ok(Received::Control { frame_len }) => {
                    self.rpos += frame_len;
                    self.drain_events();
                }
                Ok(Received::Data { .. }) => {
                    return Err(io::Error::other(
                        "data arrived while waiting for the acknowledgement: read to the end first",
                    ))
                }
                Err(e) => {
                    self.drain_events();
                    return Err(to_io(e));
                }
            }
        }
    }

    async fn flush_wbuf(&mut self) -> io::Result<()> {
        if self.wpos < self.wlen {
            self.io.write_all(&self.wbuf[self.wpos..self.wlen]).await?;
        }
        self.wpos = 0;
        self.wlen = 0;
        self.io.flush().await
    }
}

impl<T> std::fmt::Debug for SecureStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("session", &self.session.info().map(|i| i.fingerprint))
            .finish_non_exhaustive()
    }
}

impl<T> SecureStream<T> {
    fn new(io: T, session: Session) -> Self {
        Self {
            io,
            session,
            rbuf: Vec::new(),
            rpos: 0,
            rlen: 0,
            plain: 0..0,
            plain_frame_end: 0,
            wbuf: Vec::new(),
            wpos: 0,
            wlen: 0,
            timer: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(3600))),
            events: None,
            status: None,
            rotation: None,
            read_eof: false,
            close_sent: false,
            limits: None,
        }
    }

    /// The session: fingerprints, epochs, counters.
    pub fn info(&self) -> Option<SessionInfo> {
        self.session.info()
    }

    /// Lifecycle events from now on. Only one receiver exists; a second call replaces it.
    pub fn events(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = Some(tx);
        rx
    }

    /// A cell that always holds the session's latest snapshot (for status views). Kept up to
    /// date as records flow.
    pub fn status_cell(&mut self) -> StatusCell {
        let cell = self.status.get_or_insert_with(StatusCell::default).clone();
        cell.set(self.session.info());
        if let Ok(mut slot) = cell.0.lock() {
            // Made after the handshake: its key dates from about now.
            slot.key_since.get_or_insert_with(Instant::now);
            slot.limits = self.limits;
        }
        cell
    }

    fn publish(&self) {
        if let Some(cell) = &self.status {
            cell.set(self.session.info());
        }
    }

    /// A handle that asks this stream to rotate keys from another task (for instance while
    /// the stream is split into halves).
    pub fn rotation_handle(&mut self) -> RotationHandle {
        self.rotation
            .get_or_insert_with(RotationHandle::default)
            .clone()
    }

    /// Update the sending key now (it is also done automatically by policy).
    pub fn update_keys(&mut self) {
        self.session.update_keys();
    }

    /// Start a re-handshake now: a fresh ephemeral exchange (also done by policy).
    pub fn rehandshake(&mut self) {
        self.session.rehandshake();
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The underlying transport, giving up the session (for instance to reset it).
    pub fn into_inner(self) -> T {
        self.io
    }

    /// The underlying transport, mutably (for socket options; never write to it).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    fn drain_events(&mut self) {
        // Events first, so a key update is judged against the snapshot from before it.
        self.log_events();
        self.publish();
    }

    /// Log the session's events, date key updates in the status cell and pass the events on,
    /// without publishing a status snapshot.
    fn log_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            log_event(&event);
            if let Some(cell) = &self.status {
                cell.key_event(&event, Instant::now());
            }
            if let Some(tx) = &self.events {
                if tx.send(event).is_err() {
                    self.events = None;
                }
            }
        }
        self.publish();
    }

    /// Make sure `rbuf[rpos..]` can grow to `needed` bytes.
    fn make_room(&mut self, needed: usize) {
        if self.rbuf.is_empty() {
            self.rbuf = vec![0; READ_BUF];
        } else if self.rbuf.len() < READ_BUF {
            self.rbuf.resize(READ_BUF, 0);
        }
        if self.rpos + needed > self.rbuf.len() || self.rpos == self.rlen {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
    }

    /// Move pending control frames into the send buffer. Returns whether the session has
    /// nothing more to send (false: the buffer filled first).
    fn queue_transmit(&mut self) -> io::Result<bool> {
        if self.wbuf.len() < WRITE_BUF {
            // Empty (never used, or freed by a relay) and so nothing pending in it.
            self.wbuf = vec![0; WRITE_BUF];
        }
        let now = Instant::now();
        let mut drained = false;
        while self.wbuf.len() - self.wlen >= MAX_FRAME {
            match self.session.poll_transmit(now, &mut self.wbuf[self.wlen..]) {
                Ok(Some(n)) => self.wlen += n,
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    self.drain_events();
                    return Err(to_io(e));
                }
            }
        }
        self.drain_events();
        Ok(drained)
    }

    /// The session's error, once it failed: every later call reports it.
    fn failed(&self) -> io::Result<()> {
        match self.session.close_reason() {
            Some(CloseReason::Error(e)) => Err(to_io(e.clone())),
            _ => Ok(()),
        }
    }
}

fn not_acknowledged() -> io::Error {
    to_io(sessionkey_proto::PeerMisbehaved::NotAcknowledged.into())
}

fn reason_error(reason: &CloseReason) -> Error {
    match reason {
        CloseReason::Error(e) => e.clone(),
        CloseReason::Clean => sessionkey_proto::ApiMisuse::SendClosed.into(),
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Established(info) => tracing::info!(
            session = format_args!("{:016x}", info.id),
            fingerprint = %info.fingerprint,
            suite = %info.suite,
            pattern = info.pattern.name(),
            hybrid = info.hybrid,
            peer = %info.peer.map_or_else(|| "anonymous".to_string(), |p| p.fingerprint().to_string()),
            "session established"
        ),
        Event::KeyUpdated { direction, info } => {
            let d = match direction {
                sessionkey_proto::session::Direction::Send => info.send,
                sessionkey_proto::session::Direction::Receive => info.receive,
            };
            tracing::debug!(
                session = format_args!("{:016x}", info.id),
                ?direction,
                epoch = d.epoch,
                key = %d.key_fingerprint.short(),
                records = d.records,
                bytes = d.bytes,
                "key updated"
            )
        }
        Event::Rehandshaken(info) => tracing::debug!(
            session = format_args!("{:016x}", info.id),
            rehandshakes = info.rehandshakes,
            "re-handshake complete"
        ),
        // A handshake that failed made no session: its caller logs the one line for it.
        Event::Closed { info: None, .. } => {}
        Event::Closed {
            reason,
            info: Some(info),
        } => tracing::info!(
            session = format_args!("{:016x}", info.id),
            sent = info.send.bytes,
            received = info.receive.bytes,
            %reason,
            "session closed"
        ),
        _ => {}
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> SecureStream<T> {
    /// Write out as much of the send buffer as the transport takes now.
    fn poll_flush_wbuf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wlen {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..self.wlen]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wpos = 0;
        self.wlen = 0;
        Poll::Ready(Ok(()))
    }

    /// Fire due timers, send what the session wants sent, and arm the timer for later.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.poll_timers(cx);
        self.queue_transmit()?;
        match self.poll_flush_wbuf(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Apply rotation requests, fire due timers, and arm the timer for later.
    fn poll_timers(&mut self, cx: &mut Context<'_>) {
        if let Some(handle) = &self.rotation {
            use std::sync::atomic::Ordering::Relaxed;
            if handle.0.update.swap(false, Relaxed) {
                self.session.update_keys();
            }
            if handle.0.rehandshake.swap(false, Relaxed) {
                self.session.rehandshake();
            }
        }
        while let Some(deadline) = self.session.poll_timeout() {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            if self.timer.as_mut().poll(cx).is_pending() {
                break;
            }
            self.session.handle_timeout(Instant::now());
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for SecureStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.rbuf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                if this.plain.is_empty() {
                    this.rpos = this.plain_frame_end;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof || (this.session.is_peer_closed() && this.rpos == this.rlen) {
                return Poll::Ready(Ok(()));
            }
            this.poll_drive(cx)?;
            let now = Instant::now();
            let result = this.session.read(now, &mut this.rbuf[this.rpos..this.rlen]);
            // Replies (key updates, re-handshakes) may now be due, whatever was read.
            this.drain_events();
            match result {
                Ok(Received::Data { frame_len, content }) => {
                    this.plain = this.rpos + content.start..this.rpos + content.end;
                    this.plain_frame_end = this.rpos + frame_len;
                    if this.plain.is_empty() {
                        this.rpos = this.plain_frame_end;
                    }
                }
                Ok(Received::Control { frame_len }) => {
                    this.rpos += frame_len;
                    this.poll_drive(cx)?;
                }
                Ok(Received::Incomplete { needed }) => {
                    this.make_room(needed);
                    let mut buf = ReadBuf::new(&mut this.rbuf[this.rlen..]);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf))?;
                    let n = buf.filled().len();
                    if n == 0 {
                        // End of stream: clean only after the peer's close record.
                        let r = this.session.handle_eof(Instant::now());
                        this.drain_events();
                        r.map_err(to_io)?;
                        this.read_eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    this.rlen += n;
                }
                Err(e) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SecureStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.failed()?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.poll_drive(cx)?;
        loop {
            // Backpressure: take new data only when a whole record fits in the send buffer.
            if this.wbuf.len() - this.wlen < MAX_FRAME {
                ready!(this.poll_flush_wbuf(cx))?;
            }
            let now = Instant::now();
            let (consumed, n) = this
                .session
                .seal_data(now, data, &mut this.wbuf[this.wlen..])
                .map_err(|e| {
                    this.drain_events();
                    to_io(e)
                })?;
            this.wlen += n;
            this.drain_events();
            if consumed > 0 {
                // Start writing now; what the transport does not take stays buffered.
                if let Poll::Ready(Err(e)) = this.poll_flush_wbuf(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(consumed));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.failed()?;
        loop {
            let drained = this.queue_transmit()?;
            ready!(this.poll_flush_wbuf(cx))?;
            if drained {
                break;
            }
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends the close record, then shuts the transport's writing side down. Returns only
    /// once the close record (and everything before it) is written: a `shutdown` that
    /// returns `Ok` never leaves the peer with a truncated stream.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.failed()?;
        if !this.close_sent {
            this.session.close();
            this.close_sent = true;
        }
        // Under backpressure the send buffer fills before the close record is queued: write,
        // queue again, until the session has nothing left and the buffer is on the wire.
        loop {
            let drained = this.queue_transmit()?;
            ready!(this.poll_flush_wbuf(cx))?;
            if drained && this.session.is_send_closed() {
                break;
            }
        }
        this.failed()?;
        // The transport stays open for writing while the peer's direction is: this side
        // still owes it the acknowledgement of its close (PROTOCOL.md 9.3).
        if this.session.close_reason().is_none() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Records per batch while relaying: up to this many are read from the plain side with one
/// system call, sealed where they lie and written with one; the no-crypto relay that is the
/// ceiling moves 256 KiB per call as well.
const RELAY_RECORDS: usize = 4;
/// The relay's receive buffer: as many whole frames.
const RELAY_RBUF: usize = RELAY_RECORDS * MAX_FRAME;
/// The relay's buffers start this small (requests and replies, interactive traffic: no
/// large allocation per connection) and grow to the full size once a read fills one.
const RELAY_SMALL: usize = 4 * 1024;
/// Decrypted records handed to one vectored write to the plain side.
const RELAY_IOVECS: usize = 16;
/// Rounds of a relay poll before it yields to other tasks.
const RELAY_ROUNDS: usize = 32;
/// A relay that moved nothing for this long frees its full-size buffers (an idle session
/// then holds no buffer at all); they come back with the next byte.
const RELAY_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a relay whose both directions ended waits for the peer to acknowledge its close.
const RELAY_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

impl SecureStream<TcpStream> {
    /// Carry bytes both ways between this session and `plain` until both directions end:
    /// what `plain` sends is sealed and sent, what arrives is opened and written to
    /// `plain`. The end of `plain`'s input sends the close record; the peer's close ends
    /// `plain`'s output with a FIN. Any session error ends it with that error (the caller
    /// resets both connections).
    ///
    /// One poll drives both directions (no split halves behind a lock, no second task).
    /// Plaintext is read straight into the record slots it is sealed in and decrypted where
    /// it arrived, and several records go out with one vectored write: no copy in user
    /// space. Buffers are allocated only when bytes are ready to be read, start small, and
    /// are freed when idle (small ones at once, full-size ones after a second).
    pub async fn relay(&mut self, plain: &mut TcpStream) -> io::Result<()> {
        self.flush_wbuf().await?;
        // The handshake's buffers: the relay allocates its own while data flows.
        self.wbuf = Vec::new();
        if self.rpos == self.rlen && self.plain.is_empty() {
            self.rbuf = Vec::new();
            (self.rpos, self.rlen) = (0, 0);
        }
        let mut relay = Relay::new(self);
        std::future::poll_fn(|cx| relay.poll(self, plain, cx)).await?;
        drop(relay);
        // Stay until the peer acknowledges this side's close (or goes away): closing first
        // would reset the connection under the acknowledgement the peer still owes.
        if self.session.awaits_acknowledgement() && !self.read_eof {
            // Boxed: only a closing session needs this state, and unboxed it would be the
            // largest part of every relay's future (so of an idle session's task).
            match Box::pin(tokio::time::timeout(RELAY_LINGER, self.acknowledged())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!("the close was not acknowledged: {e}"),
                Err(_) => tracing::debug!("no acknowledgement of the close in {RELAY_LINGER:?}"),
            }
        }
        if self.session.close_reason().is_some() {
            self.io.shutdown().await?;
        }
        Ok(())
    }
}

/// The state of [`SecureStream::relay`].
struct Relay {
    /// The most content of one record, and the most a record adds to it.
    full_max: usize,
    overhead: usize,
    /// The slots in use: content per slot and space per slot (small until a read fills
    /// them, then full records).
    max: usize,
    stride: usize,
    /// A read filled that direction's small buffer: the next allocation is full size.
    bulk_send: bool,
    bulk_recv: bool,
    /// Plaintext read from the plain side, record `i`'s content at
    /// `slots[i * stride + LEN_PREFIX..]`, sealed there in place. Empty while idle.
    slots: Vec<u8>,
    /// Content length of each slot read, how many were read, and the next to seal.
    lens: [usize; RELAY_RECORDS],
    filled: usize,
    next: usize,
    /// Sealed bytes of `slots` not yet written, then control frames (written after them).
    sealed: std::ops::Range<usize>,
    control: Vec<u8>,
    ctl: std::ops::Range<usize>,
    /// The plain side ended its input; the close record is out.
    plain_eof: bool,
    send_done: bool,
    /// Decrypted content in the stream's receive buffer, to write to the plain side in
    /// order, from `ready[ready_pos]` on.
    ready: Vec<std::ops::Range<usize>>,
    ready_pos: usize,
    /// The peer closed and everything it sent is written: the plain side got its FIN.
    recv_done: bool,
    /// When bytes last moved, and the timer that frees the buffers after
    /// [`RELAY_RELEASE`] without traffic (only while buffers are held).
    last_active: Instant,
    release: Option<Pin<Box<Sleep>>>,
}

impl Relay {
    fn new(s: &mut SecureStream<TcpStream>) -> Self {
        let (max, overhead) = s.session.record_sizes();
        let mut ready = Vec::new();
        // Plaintext the stream already opened for a reader goes first.
        if !s.plain.is_empty() {
            ready.push(s.plain.clone());
            s.plain = 0..0;
            s.rpos = s.plain_frame_end;
        }
        Self {
            full_max: max,
            overhead,
            max,
            stride: LEN_PREFIX + max + overhead,
            bulk_send: false,
            bulk_recv: false,
            slots: Vec::new(),
            lens: [0; RELAY_RECORDS],
            filled: 0,
            next: 0,
            sealed: 0..0,
            control: Vec::new(),
            ctl: 0..0,
            plain_eof: false,
            send_done: false,
            ready,
            ready_pos: 0,
            recv_done: s.read_eof,
            last_active: Instant::now(),
            release: None,
        }
    }

    fn poll(
        &mut self,
        s: &mut SecureStream<TcpStream>,
        plain: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let result = self.poll_rounds(s, plain, cx);
        s.log_events();
        // One status snapshot per poll, not per record.
        s.publish();
        if result.is_pending() {
            self.poll_release(s, cx);
        }
        result
    }

    fn poll_rounds(
        &mut self,
        s: &mut SecureStream<TcpStream>,
        plain: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        for round in 0..RELAY_ROUNDS {
            s.poll_timers(cx);
            let sent = self.poll_send(s, plain, cx)?;
            let received = self.poll_recv(s, plain, cx)?;
            s.log_events();
            if sent || received {
                continue;
            }
            if round > 0 {
                self.last_active = Instant::now();
            }
            // Nothing moved: every path that can move registered for a wake-up, or both
            // directions are over.
            if !(self.send_done && self.recv_done) {
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        self.last_active = Instant::now();
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Free the buffers when nothing is pending in them: small ones at once (they cost
    /// little to get back), full-size ones once nothing moved for [`RELAY_RELEASE`].
    fn poll_release(&mut self, s: &mut SecureStream<TcpStream>, cx: &mut Context<'_>) {
        let idle = self.sealed.is_empty()
            && self.ctl.is_empty()
            && self.next == self.filled
            && self.ready_pos == self.ready.len()
            && s.rpos == s.rlen;
        let held = [self.slots.len(), self.control.len(), s.rbuf.len()];
        if !idle || held == [0; 3] {
            self.release = None;
            return;
        }
        if held
            .iter()
            .any(|&len| len > RELAY_SMALL + MAX_CONTROL_FRAME)
        {
            let due = tokio::time::Instant::from_std(self.last_active + RELAY_RELEASE);
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
        (self.bulk_send, self.bulk_recv) = (false, false);
        (self.sealed, self.ctl, self.next, self.filled) = (0..0, 0..0, 0, 0);
        self.slots = Vec::new();
        self.control = Vec::new();
        self.ready = Vec::new();
        self.ready_pos = 0;
        s.rbuf = Vec::new();
        (s.rpos, s.rlen) = (0, 0);
        self.release = None;
    }

    /// Queue the control frames the session wants sent (after what is sealed already).
    fn queue_control<T>(&mut self, s: &mut SecureStream<T>) -> io::Result<()> {
        self.ctl = 0..0;
        if !s.session.wants_transmit() {
            return Ok(());
        }
        if self.control.is_empty() {
            self.control = vec![0; 4 * MAX_CONTROL_FRAME];
        }
        let now = Instant::now();
        let mut len = 0;
        while self.control.len() - len >= MAX_CONTROL_FRAME {
            match s.session.poll_transmit(now, &mut self.control[len..]) {
                Ok(Some(n)) => len += n,
                Ok(None) => break,
                Err(e) => return Err(to_io(e)),
            }
        }
        self.ctl = 0..len;
        Ok(())
    }

    /// Seal the slots read, in order, while they stay contiguous and no control frame must
    /// go first.
    fn seal_slots<T>(&mut self, s: &mut SecureStream<T>) -> io::Result<()> {
        let now = Instant::now();
        while self.next < self.filled {
            self.queue_control(s)?;
            if !self.ctl.is_empty() {
                return Ok(());
            }
            let start = self.next * self.stride;
            if !self.sealed.is_empty() && self.sealed.end != start {
                return Ok(());
            }
            let n = s
                .session
                .seal_in_place(
                    now,
                    &mut self.slots[start..start + self.stride],
                    self.lens[self.next],
                )
                .map_err(to_io)?;
            if self.sealed.is_empty() {
                self.sealed = start..start;
            }
            self.sealed.end = start + n;
            self.next += 1;
        }
        Ok(())
    }

    /// Plain side to session. Returns whether anything moved; if not, a wake-up is
    /// registered for what it waits on (or the sending direction is over).
    fn poll_send(
        &mut self,
        s: &mut SecureStream<TcpStream>,
        plain: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        let mut moved = false;
        loop {
            if self.ctl.is_empty() {
                self.queue_control(s)?;
            }
            if self.ctl.is_empty() {
                self.seal_slots(s)?;
            }
            if !self.sealed.is_empty() || !self.ctl.is_empty() {
                let bufs = [
                    io::IoSlice::new(&self.slots[self.sealed.clone()]),
                    io::IoSlice::new(&self.control[self.ctl.clone()]),
                ];
                let n = match Pin::new(&mut s.io).poll_write_vectored(cx, &bufs) {
                    Poll::Pending => return Ok(moved),
                    Poll::Ready(r) => r?,
                };
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let from_sealed = n.min(self.sealed.len());
                self.sealed.start += from_sealed;
                self.ctl.start += n - from_sealed;
                moved = true;
                continue;
            }
            if self.next < self.filled {
                continue;
            }
            // Everything read is on the wire.
            if self.plain_eof {
                if !s.close_sent {
                    s.session.close();
                    s.close_sent = true;
                    continue;
                }
                self.send_done = s.session.is_send_closed();
                return Ok(moved);
            }
            match self.poll_read_slots(plain, cx)? {
                Poll::Pending => return Ok(moved),
                Poll::Ready(0) => self.plain_eof = true,
                Poll::Ready(n) => {
                    self.filled = n.div_ceil(self.max);
                    for (i, len) in self.lens[..self.filled].iter_mut().enumerate() {
                        *len = (n - i * self.max).min(self.max);
                    }
                    self.next = 0;
                }
            }
            moved = true;
        }
    }

    /// Read plaintext into the record slots, each slot's content in place.
    fn poll_read_slots(
        &mut self,
        plain: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> io::Result<Poll<usize>> {
        loop {
            if plain.poll_read_ready(cx)?.is_pending() {
                return Ok(Poll::Pending);
            }
            // Every slot is free here: size them for the traffic seen.
            let records = if self.bulk_send {
                self.max = self.full_max;
                RELAY_RECORDS
            } else {
                self.max = (RELAY_SMALL - LEN_PREFIX - self.overhead).min(self.full_max);
                1
            };
            self.stride = LEN_PREFIX + self.max + self.overhead;
            if self.slots.len() != records * self.stride {
                self.slots = vec![0; records * self.stride];
            }
            let mut bufs: [io::IoSliceMut<'_>; RELAY_RECORDS] = {
                let mut chunks = self
                    .slots
                    .chunks_mut(self.stride)
                    .map(|slot| io::IoSliceMut::new(&mut slot[LEN_PREFIX..LEN_PREFIX + self.max]));
                std::array::from_fn(|_| {
                    chunks
                        .next()
                        .unwrap_or_else(|| io::IoSliceMut::new(&mut []))
                })
            };
            match plain.try_read_vectored(&mut bufs) {
                Ok(n) => {
                    self.bulk_send |= n == records * self.max;
                    return Ok(Poll::Ready(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Session to plain side. Returns whether anything moved; if not, a wake-up is
    /// registered for what it waits on (or the receiving direction is over).
    fn poll_recv(
        &mut self,
        s: &mut SecureStream<TcpStream>,
        plain: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        let mut moved = false;
        loop {
            if self.recv_done {
                return Ok(moved);
            }
            if self.ready_pos < self.ready.len() {
                let pending = &self.ready[self.ready_pos..];
                let mut bufs = [io::IoSlice::new(&[]); RELAY_IOVECS];
                for (buf, range) in bufs.iter_mut().zip(pending) {
                    *buf = io::IoSlice::new(&s.rbuf[range.clone()]);
                }
                let n = match Pin::new(&mut *plain)
                    .poll_write_vectored(cx, &bufs[..pending.len().min(RELAY_IOVECS)])
                {
                    Poll::Pending => return Ok(moved),
                    Poll::Ready(r) => r?,
                };
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let mut left = n;
                while left > 0 {
                    let range = &mut self.ready[self.ready_pos];
                    let k = left.min(range.len());
                    range.start += k;
                    left -= k;
                    if range.start == range.end {
                        self.ready_pos += 1;
                    }
                }
                moved = true;
                continue;
            }
            self.ready.clear();
            self.ready_pos = 0;
            if s.read_eof || (s.session.is_peer_closed() && s.rpos == s.rlen) {
                if Pin::new(&mut *plain).poll_shutdown(cx)?.is_pending() {
                    return Ok(moved);
                }
                self.recv_done = true;
                return Ok(true);
            }
            // Open every whole frame received, in place.
            let now = Instant::now();
            let mut needed = None;
            let mut control = false;
            while self.ready.len() < RELAY_IOVECS {
                match s
                    .session
                    .read(now, &mut s.rbuf[s.rpos..s.rlen])
                    .map_err(to_io)?
                {
                    Received::Data { frame_len, content } => {
                        if !content.is_empty() {
                            self.ready
                                .push(s.rpos + content.start..s.rpos + content.end);
                        }
                        s.rpos += frame_len;
                    }
                    Received::Control { frame_len } => {
                        s.rpos += frame_len;
                        control = true;
                    }
                    Received::Incomplete { needed: n } => {
                        needed = Some(n);
                        break;
                    }
                }
                moved = true;
            }
            let Some(needed) = needed.filter(|_| self.ready.is_empty()) else {
                continue;
            };
            if control {
                // A control frame may want an answer: let the sending side run first.
                return Ok(true);
            }
            match poll_read_frames(s, needed, &mut self.bulk_recv, cx)? {
                Poll::Pending => return Ok(moved),
                Poll::Ready(0) => {
                    // End of stream: clean only after the peer's close record.
                    s.session.handle_eof(Instant::now()).map_err(to_io)?;
                    s.read_eof = true;
                }
                Poll::Ready(n) => s.rlen += n,
            }
            moved = true;
        }
    }
}

/// Read what the transport has into the receive buffer, allocated only once bytes are
/// there: [`RELAY_SMALL`] until a read fills it (`bulk`), then [`RELAY_RBUF`]; always with
/// room for a frame of `needed` bytes.
fn poll_read_frames(
    s: &mut SecureStream<TcpStream>,
    needed: usize,
    bulk: &mut bool,
    cx: &mut Context<'_>,
) -> io::Result<Poll<usize>> {
    loop {
        if s.io.poll_read_ready(cx)?.is_pending() {
            return Ok(Poll::Pending);
        }
        let size = if *bulk || needed > RELAY_SMALL {
            RELAY_RBUF
        } else {
            RELAY_SMALL
        };
        if s.rbuf.len() < size {
            let mut grown = vec![0; size];
            grown[..s.rlen - s.rpos].copy_from_slice(&s.rbuf[s.rpos..s.rlen]);
            s.rbuf = grown;
            (s.rpos, s.rlen) = (0, s.rlen - s.rpos);
        } else if s.rpos + needed > s.rbuf.len() || s.rpos == s.rlen {
            s.rbuf.copy_within(s.rpos..s.rlen, 0);
            (s.rpos, s.rlen) = (0, s.rlen - s.rpos);
        }
        let room = s.rbuf.len() - s.rlen;
        match s.io.try_read(&mut s.rbuf[s.rlen..]) {
            Ok(n) => {
                *bulk |= n == room;
                return Ok(Poll::Ready(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionkey_proto::keys::Fingerprint;
    use sessionkey_proto::noise::Pattern;
    use sessionkey_proto::session::{Direction, DirectionStats};
    use sessionkey_proto::suite::Suite;

    fn info(records_this_key: u64, epoch: u32) -> SessionInfo {
        let d = DirectionStats {
            epoch,
            key_fingerprint: Fingerprint::from_sha256([7; 32]),
            records: 100,
            bytes: 100,
            records_this_key,
            open: true,
        };
        SessionInfo {
            id: 1,
            fingerprint: Fingerprint::from_sha256([1; 32]),
            suite: Suite::ChaCha20Poly1305,
            pattern: Pattern::IK,
            hybrid: true,
            peer: None,
            send: d,
            receive: d,
            rehandshakes: 0,
            failed_decryptions: 0,
            next_rehandshake: None,
        }
    }

    #[test]
    fn a_key_update_at_half_the_aead_limit_counts_as_forced() {
        let cell = StatusCell::default();
        cell.0.lock().unwrap().limits = Some(UsageLimits {
            records: 100,
            blocks: u64::MAX,
            failed_decryptions: 10,
        });
        let start = Instant::now();
        cell.key_event(&Event::Established(info(0, 0)), start);
        // By the policy, well below the limit: not forced.
        cell.set(Some(info(10, 0)));
        let update = |epoch| Event::KeyUpdated {
            direction: Direction::Send,
            info: info(0, epoch),
        };
        cell.key_event(&update(1), start);
        assert_eq!(cell.forced_updates(), 0);
        // At half the limit: forced.
        cell.set(Some(info(50, 1)));
        let later = start + std::time::Duration::from_secs(5);
        cell.key_event(&update(2), later);
        assert_eq!(cell.forced_updates(), 1);
        // A receiving-key update neither counts nor dates the sending key.
        cell.set(Some(info(60, 2)));
        cell.key_event(
            &Event::KeyUpdated {
                direction: Direction::Receive,
                info: info(60, 2),
            },
            later + std::time::Duration::from_secs(5),
        );
        assert_eq!(cell.forced_updates(), 1);
        assert_eq!(cell.0.lock().unwrap().key_since, Some(later));
        assert_eq!(cell.record_limit(), Some(100));
    }
}
