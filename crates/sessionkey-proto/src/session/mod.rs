//! An established session over a byte stream, sans-IO: handshake, records, rotation,
//! limits, close, events and timers (docs/PROTOCOL.md sections 2, 9 and 10).
//!
//! # Call order
//!
//! The caller owns the sockets, the clock and the buffers, and drives a [`Session`]:
//!
//! 1. Whenever it can write: call [`poll_transmit`](Session::poll_transmit) until it returns
//!    `None`, sending each frame; then seal application data with
//!    [`seal_data`](Session::seal_data) (which copies) or
//!    [`seal_in_place`](Session::seal_in_place) (which does not).
//! 2. Whenever bytes arrive: append them to a receive buffer and call
//!    [`read`](Session::read) on it until it reports [`Received::Incomplete`]; deliver
//!    [`Received::Data`] and drop each frame's bytes from the buffer.
//! 3. When the transport reaches end of stream: [`handle_eof`](Session::handle_eof). It fails
//!    unless the peer's authenticated close arrived first.
//! 4. At [`poll_timeout`](Session::poll_timeout): [`handle_timeout`](Session::handle_timeout).
//! 5. After each of these: drain [`poll_event`](Session::poll_event).
//!
//! Any error closes the session; its [`Event::Closed`] carries the reason.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use sessionkey_proto::crypto::SystemRandom;
//! use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
//! use sessionkey_proto::keys::Identity;
//! use sessionkey_proto::noise::Pattern;
//! use sessionkey_proto::record::MAX_FRAME;
//! use sessionkey_proto::session::{Received, Session, SessionConfig};
//! use sessionkey_proto::suite::Suite;
//!
//! let now = Instant::now();
//! let server_id = Arc::new(Identity::generate(&mut SystemRandom)?);
//! let client_id = Arc::new(Identity::generate(&mut SystemRandom)?);
//! let header = Header { pattern: Pattern::IK, suite: Suite::Aes256Gcm, hybrid: true, psk: false };
//! let initiator = Initiator::new(header, Some(client_id), Some(*server_id.public_key()), None)?;
//! let responder = Arc::new(Responder::new(Policy::default(), Some(server_id), None));
//! let mut client = Session::client(now, initiator, SessionConfig::default(), Box::new(SystemRandom));
//! let mut server = Session::server(now, responder, SessionConfig::default(), Box::new(SystemRandom));
//!
//! // Move every pending frame from one side to the other until both are quiet.
//! fn pump(from: &mut Session, to: &mut Session, now: Instant) -> Vec<u8> {
//!     let (mut out, mut delivered) = (vec![0; MAX_FRAME], Vec::new());
//!     while let Some(n) = from.poll_transmit(now, &mut out).unwrap() {
//!         let mut frame = out[..n].to_vec();
//!         match to.read(now, &mut frame).unwrap() {
//!             Received::Data { content, .. } => delivered.extend_from_slice(&frame[content]),
//!             _ => {}
//!         }
//!     }
//!     delivered
//! }
//! pump(&mut client, &mut server, now); // hello
//! pump(&mut server, &mut client, now); // reply: the client has authenticated the server
//! assert!(client.is_established() && !server.is_established());
//! pump(&mut client, &mut server, now); // key confirmation: a replayed hello never gets here
//! assert!(server.is_established());
//!
//! let mut out = vec![0; MAX_FRAME];
//! let (consumed, n) = client.seal_data(now, b"hello", &mut out)?;
//! assert_eq!(consumed, 5);
//! let mut frame = out[..n].to_vec();
//! let Received::Data { content, .. } = server.read(now, &mut frame)? else { panic!() };
//! assert_eq!(&frame[content], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cipher;
mod config;
mod direction;
mod event;
pub(crate) mod rekey;
pub(crate) mod schedule;
mod timer;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

pub use config::SessionConfig;
pub use event::{CloseReason, Direction, DirectionStats, Event, SessionInfo};

use crate::crypto::SecureRandom;
use crate::error::{ApiMisuse, Limit, PeerMisbehaved, Timeout};
use crate::handshake::{Accepted, Header, Initiator, Refusal, Responder, REFUSAL_LEN};
use crate::keys::{Fingerprint, Identity, PublicKey, SecretKey};
use crate::noise::{HandshakeState, Pattern};
use crate::record::{self, Frame, RecordType, LEN_PREFIX, MAX_CONTENT, MIN_RECORD_BODY};
use crate::suite::{Suite, UsageLimits};
use crate::Error;

use direction::{RecvDirection, SendDirection, Totals};
use rekey::Rekey;
use timer::{Timer, Timers};

/// The handshake's role of this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This side connected.
    Initiator,
    /// This side accepted.
    Responder,
}

/// What [`Session::read`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The buffer does not hold a whole frame yet: `needed` bytes in total are required.
    Incomplete {
        /// Total bytes the next frame needs, counted from the start of the buffer.
        needed: usize,
    },
    /// A data record: deliver `buf[content]`, then drop `frame_len` bytes from the buffer.
    Data {
        /// Length of the whole frame.
        frame_len: usize,
        /// Where the decrypted content is in the buffer.
        content: Range<usize>,
    },
    /// A frame for the protocol itself; drop `frame_len` bytes from the buffer.
    Control {
        /// Length of the whole frame.
        frame_len: usize,
    },
}

/// How long the peer has to close its direction after this side's lifetime close.
pub const LIFETIME_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A session: the handshake, then records in both directions with automatic rotation.
pub struct Session {
    role: Role,
    config: SessionConfig,
    state: State,
    rng: Box<dyn SecureRandom>,
    timers: Timers,
    events: VecDeque<Event>,
    started: Instant,
    /// The session as it was when it closed (boxed: 232 bytes that a live session, the one
    /// kept by the thousand, never uses).
    final_info: Option<Box<SessionInfo>>,
    /// After a clean close whose own close the peer has not acknowledged yet: the receiving
    /// direction, kept to open that one acknowledgement (PROTOCOL.md 9.3).
    trailing: Option<Box<Trailing>>,
    /// Data bytes the peer confirmed it received, all of them, with its acknowledgement.
    acknowledged: Option<u64>,
}

/// What a closed session keeps to read the peer's acknowledgement of its close.
struct Trailing {
    recv: RecvDirection,
    sent: Totals,
}

#[allow(clippy::large_enum_variant)]
enum State {
    Handshaking(Box<Handshaking>),
    /// The responder wrote the last handshake message: it waits for the initiator's
    /// confirmation record before it believes anyone is there (a hello can be replayed).
    Confirming(Box<Established>),
    Established(Box<Established>),
    Closed(CloseReason),
}

enum Handshaking {
    Client {
        initiator: Initiator,
        hello_sent: bool,
        reply_read: bool,
    },
    Server {
        responder: Arc<Responder>,
        accepted: Option<Accepted>,
    },
    /// The responder refused: send the refusal, then close. After the last handshake
    /// message (XX) keys exist, and the refusal goes sealed under them.
    Refusing {
        refusal: Refusal,
        sealed: Option<SendDirection>,
    },
}

/// Flags for control records waiting to be sent.
#[derive(Debug, Default)]
struct Pending {
    confirm: bool,
    key_update: bool,
    rehandshake: bool,
    ping: bool,
    close: bool,
    /// The peer's close arrived: acknowledge these totals.
    ack: Option<Totals>,
}

struct Established {
    id: u64,
    fingerprint: Fingerprint,
    suite: Suite,
    pattern: Pattern,
    hybrid: bool,
    peer: Option<PublicKey>,
    /// This side's static identity: re-handshakes mix it in (PROTOCOL.md 10.2).
    local: Option<Arc<Identity>>,
    send: SendDirection,
    recv: RecvDirection,
    salt: SecretKey,
    rekey: Rekey,
    pending: Pending,
    rehandshakes: u32,
    /// Data bytes sent when the last re-handshake (or the handshake) completed.
    sent_at_rehandshake: u64,
    /// This side's totals in its close record.
    closed_totals: Totals,
    /// Set when a policy ends the session: the reason reported once both sides closed.
    ending: Option<Error>,
}

impl Established {
    /// Whether this side has sent enough since the last re-handshake to ask for another.
    fn wants_rehandshake(&self, after_bytes: Option<u64>) -> bool {
        after_bytes.is_some_and(|limit| {
            self.send.totals.bytes - self.sent_at_rehandshake >= limit
                && matches!(self.rekey, Rekey::Idle)
                && self.recv.open
                && !self.pending.close
                && !self.pending.rehandshake
        })
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id,
            fingerprint: self.fingerprint,
            suite: self.suite,
            pattern: self.pattern,
            hybrid: self.hybrid,
            peer: self.peer,
            send: self.send.stats(),
            receive: self.recv.stats(),
            rehandshakes: self.rehandshakes,
            failed_decryptions: self.recv.failures(),
            next_rehandshake: None,
        }
    }
}

/// Handshake payloads are not used by this version; a small one is tolerated and ignored.
const MAX_HANDSHAKE_PAYLOAD: usize = 256;

/// The largest control frame: a re-handshake request with an X25519 and an ML-KEM key.
/// [`Session::poll_transmit`] needs this much room.
pub const MAX_CONTROL_FRAME: usize = LEN_PREFIX + 32 + 1184 + MIN_RECORD_BODY;

/// Seal the acknowledgement of the peer's close: its totals as received.
fn seal_ack(est: &mut Established, ack: Totals, out: &mut [u8]) -> Result<usize, Error> {
    out[LEN_PREFIX..LEN_PREFIX + 8].copy_from_slice(&ack.records.to_be_bytes());
    out[LEN_PREFIX + 8..LEN_PREFIX + 16].copy_from_slice(&ack.bytes.to_be_bytes());
    est.send.seal_in_place(RecordType::Ack, out, 16)
}

/// Open the frame at the start of `buf`, which must be an acknowledgement: what was read,
/// and the totals it acknowledges (`None` while the frame is incomplete).
fn open_ack(
    recv: &mut RecvDirection,
    buf: &mut [u8],
    max: usize,
) -> Result<(Received, Option<Totals>), Error> {
    let len = match record::frame(buf, MIN_RECORD_BODY, max)? {
        Frame::Incomplete(needed) => return Ok((Received::Incomplete { needed }, None)),
        Frame::Complete(len) => len,
    };
    let frame_len = LEN_PREFIX + len;
    let (kind, clen) = recv.open_in_place(&mut buf[..frame_len])?;
    if kind != RecordType::Ack {
        return Err(PeerMisbehaved::UnexpectedRecord("record after the peer's close").into());
    }
    let acked = read_totals(
        &buf[LEN_PREFIX..LEN_PREFIX + clen],
        "malformed acknowledgement",
    )?;
    Ok((Received::Control { frame_len }, Some(acked)))
}

/// Read the 16 bytes of totals that close and acknowledgement records carry.
fn read_totals(content: &[u8], what: &'static str) -> Result<Totals, Error> {
    let Ok(totals) = <[u8; 16]>::try_from(content) else {
        return Err(PeerMisbehaved::UnexpectedRecord(what).into());
    };
    let (records, bytes) = totals.split_at(8);
    Ok(Totals {
        records: u64::from_be_bytes(records.try_into().unwrap_or_default()),
        bytes: u64::from_be_bytes(bytes.try_into().unwrap_or_default()),
    })
}

impl Session {
    /// A session that connects: the first [`poll_transmit`](Self::poll_transmit) yields the
    /// hello.
    pub fn client(
        now: Instant,
        initiator: Initiator,
        config: SessionConfig,
        rng: Box<dyn SecureRandom>,
    ) -> Self {
        let hs = Handshaking::Client {
            initiator,
            hello_sent: false,
            reply_read: false,
        };
        Self::new(now, Role::Initiator, hs, config, rng)
    }

    /// A session that accepts: it waits for a hello and judges it with `responder`'s policy.
    pub fn server(
        now: Instant,
        responder: Arc<Responder>,
        config: SessionConfig,
        rng: Box<dyn SecureRandom>,
    ) -> Self {
        let hs = Handshaking::Server {
            responder,
            accepted: None,
        };
        Self::new(now, Role::Responder, hs, config, rng)
    }

    fn new(
        now: Instant,
        role: Role,
        hs: Handshaking,
        config: SessionConfig,
        rng: Box<dyn SecureRandom>,
    ) -> Self {
        let mut timers = Timers::default();
        timers.set(Timer::Handshake, now + config.handshake_timeout);
        Self {
            role,
            config,
            state: State::Handshaking(Box::new(hs)),
            rng,
            timers,
            events: VecDeque::new(),
            started: now,
            final_info: None,
            trailing: None,
            acknowledged: None,
        }
    }

    /// This side's handshake role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake completed, the peer proved it holds the keys, and the session is
    /// not closed. A responder becomes established only when the initiator's first record
    /// confirms the keys (PROTOCOL.md 9.1): a replayed hello never gets this far.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Whether the peer closed its direction with its authenticated close record: nothing
    /// more will arrive, and end of stream is clean.
    pub fn is_peer_closed(&self) -> bool {
        match &self.state {
            State::Established(est) => !est.recv.open,
            State::Closed(CloseReason::Clean) => true,
            _ => false,
        }
    }

    /// Whether the session is closed, and why.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// A snapshot of the session, once established (after closing: as it was at the end).
    pub fn info(&self) -> Option<SessionInfo> {
        match &self.state {
            State::Established(est) => Some(SessionInfo {
                next_rehandshake: self.timers.get(Timer::Rehandshake),
                ..est.info()
            }),
            _ => self.final_info.as_deref().cloned(),
        }
    }

    /// The next lifecycle event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if self.events.is_empty() {
            // Events are rare (establishment, key updates, the end): an idle session should
            // not keep the queue's room for four of them (1.1 KiB).
            self.events = VecDeque::new();
        }
        event
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Ask for a key update of the sending direction (sent at the next transmit).
    pub fn update_keys(&mut self) {
        if let State::Established(est) = &mut self.state {
            est.pending.key_update = true;
        }
    }

    /// Ask for a re-handshake: a fresh ephemeral exchange for both directions.
    pub fn rehandshake(&mut self) {
        if let State::Established(est) = &mut self.state {
            est.pending.rehandshake = true;
        }
    }

    /// Queue a ping, which keeps an idle peer's timer from expiring.
    pub fn ping(&mut self) {
        if let State::Established(est) = &mut self.state {
            est.pending.ping = true;
        }
    }

    /// Close the sending direction: the close record, with this side's totals, is sent at the
    /// next transmit. Before the handshake completes this abandons the session.
    pub fn close(&mut self) {
        match &mut self.state {
            State::Established(est) => est.pending.close = true,
            State::Handshaking(_) | State::Confirming(_) => {
                self.fail(ApiMisuse::NotEstablished.into())
            }
            State::Closed(_) => {}
        }
    }

    /// Whether this side's close record has been written (to `poll_transmit`'s buffer), or
    /// the session is closed.
    pub fn is_send_closed(&self) -> bool {
        match &self.state {
            State::Established(est) => !est.send.open,
            State::Closed(_) => true,
            _ => false,
        }
    }

    /// The data bytes the peer confirmed receiving, once its acknowledgement of this side's
    /// close arrived and matched what was sent: every byte was delivered. `None` until then.
    pub fn acknowledged(&self) -> Option<u64> {
        self.acknowledged
    }

    /// Whether the peer's acknowledgement of this side's close can still arrive: the session
    /// closed cleanly but the acknowledgement has not been read yet.
    pub fn awaits_acknowledgement(&self) -> bool {
        self.trailing.is_some()
    }

    /// End the session with `error`, and report it.
    fn fail(&mut self, error: Error) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        let info = self.info();
        self.final_info = info.clone().map(Box::new);
        self.state = State::Closed(CloseReason::Error(error.clone()));
        self.trailing = None;
        self.timers.clear();
        self.events.push_back(Event::Closed {
            reason: CloseReason::Error(error),
            info,
        });
    }

    fn fail_with<T>(&mut self, error: Error) -> Result<T, Error> {
        self.fail(error.clone());
        Err(error)
    }

    /// Close once both directions are closed and the peer's close is acknowledged.
    fn maybe_finish(&mut self) {
        let State::Established(est) = &mut self.state else {
            return;
        };
        if est.send.open || est.recv.open || est.pending.ack.is_some() {
            return;
        }
        let info = est.info();
        let reason = match est.ending.take() {
            Some(e) => CloseReason::Error(e),
            None => CloseReason::Clean,
        };
        self.final_info = Some(Box::new(info.clone()));
        let State::Established(est) =
            std::mem::replace(&mut self.state, State::Closed(reason.clone()))
        else {
            unreachable!()
        };
        if self.acknowledged.is_none() && matches!(reason, CloseReason::Clean) {
            let est = *est;
            self.trailing = Some(Box::new(Trailing {
                recv: est.recv,
                sent: est.closed_totals,
            }));
        }
        self.timers.clear();
        self.events.push_back(Event::Closed {
            reason,
            info: Some(info),
        });
    }

    /// The limits for every key of this session.
    fn usage_limits(&self, suite: Suite) -> UsageLimits {
        self.config.usage_limits.unwrap_or_else(|| suite.limits())
    }

    /// The handshake is complete: derive the keys. `wrote_last` says whether this side
    /// wrote the last handshake message; if it is the responder, it must wait for the
    /// initiator's confirmation, and an initiator that read the last message sends one.
    fn establish(
        &mut self,
        now: Instant,
        state: HandshakeState,
        header: Header,
        wrote_last: bool,
    ) -> Result<(), Error> {
        let local = state.local_identity();
        let mut est = self.keys_from(state, header)?;
        est.local = local;
        if self.role == Role::Responder && wrote_last {
            self.state = State::Confirming(est);
        } else {
            est.pending.confirm = self.role == Role::Initiator && !wrote_last;
            self.enter_established(now, est);
        }
        Ok(())
    }

    /// Split a finished handshake into the session's directions (PROTOCOL.md 10).
    fn keys_from(&self, state: HandshakeState, header: Header) -> Result<Box<Established>, Error> {
        let split = state.split()?;
        let secrets = schedule::initial(
            &split.initiator_to_responder,
            &split.responder_to_initiator,
            &split.handshake_hash,
        );
        let (send, recv) = split_secrets(
            self.role,
            secrets.initiator_to_responder,
            secrets.responder_to_initiator,
        );
        let limits = self.usage_limits(header.suite);
        let fingerprint = Fingerprint::of_session(&split.handshake_hash);
        let mut id = [0u8; 8];
        id.copy_from_slice(&fingerprint.as_bytes()[..8]);
        let est = Established {
            id: u64::from_be_bytes(id),
            fingerprint,
            suite: header.suite,
            pattern: header.pattern,
            hybrid: header.hybrid,
            peer: split.remote_static,
            local: None,
            send: SendDirection::new(header.suite, send, limits)?,
            recv: RecvDirection::new(header.suite, recv, limits)?,
            salt: secrets.rehandshake,
            rekey: Rekey::Idle,
            pending: Pending::default(),
            rehandshakes: 0,
            sent_at_rehandshake: 0,
            closed_totals: Totals::default(),
            ending: None,
        };
        Ok(Box::new(est))
    }

    /// The peer is known to hold the keys: report the session and start its timers.
    fn enter_established(&mut self, now: Instant, est: Box<Established>) {
        self.events.push_back(Event::Established(est.info()));
        self.state = State::Established(est);
        self.timers.stop(Timer::Handshake);
        self.schedule_rehandshake(now);
        if let Some(life) = self.config.max_lifetime {
            self.timers.set(Timer::Lifetime, self.started + life);
        }
        if let Some(idle) = self.config.idle_timeout {
            self.timers.set(Timer::Idle, now + idle);
        }
    }

    /// Arm the next timed re-handshake. Both roles keep one; the responder's runs an eighth
    /// longer so that normally only the initiator asks, and the responder's is the backstop.
    fn schedule_rehandshake(&mut self, now: Instant) {
        if let Some(every) = self.config.rehandshake_interval {
            let every = match self.role {
                Role::Initiator => every,
                Role::Responder => every + every / 8,
            };
            self.timers.set(Timer::Rehandshake, now + every);
        }
    }

    /// Write the next frame this side must send into `out` (at least
    /// [`MAX_FRAME`](crate::record::MAX_FRAME) bytes is always enough); `None` when nothing
    /// is pending.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        // A buffer too small is the caller's mistake, found before anything changes: the
        // session goes on, and the caller can retry with a larger one.
        let needed = match &self.state {
            State::Established(_) => MAX_CONTROL_FRAME,
            _ => LEN_PREFIX + MIN_RECORD_BODY + REFUSAL_LEN,
        };
        if out.len() < needed {
            return Err(ApiMisuse::BufferTooSmall {
                needed,
                have: out.len(),
            }
            .into());
        }
        let result = match &self.state {
            State::Handshaking(_) => self.transmit_handshake(now, out),
            // The common case, checked once per record: nothing to send.
            State::Established(_) if !self.must_transmit_first() => return Ok(None),
            State::Established(_) => self.transmit_control(now, out),
            State::Confirming(_) | State::Closed(_) => Ok(None),
        };
        match result {
            // Handshake messages are checked against the buffer before they are written.
            Err(e @ Error::ApiMisuse(ApiMisuse::BufferTooSmall { .. })) => Err(e),
            Err(e) => self.fail_with(e),
            ok => ok,
        }
    }

    #[inline(never)] // rare: keeps the per-record path small
    fn transmit_handshake(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let State::Handshaking(hs) = &mut self.state else {
            return Ok(None);
        };
        let body = &mut out[LEN_PREFIX..];
        let (n, finished) = match &mut **hs {
            Handshaking::Client {
                initiator,
                hello_sent,
                ..
            } => {
                if !*hello_sent {
                    let n = initiator.write_hello(&[], body)?;
                    *hello_sent = true;
                    (n, initiator.state.is_finished())
                } else if initiator.state.is_my_turn() {
                    let n = initiator.state.write_message(&[], body)?;
                    (n, initiator.state.is_finished())
                } else {
                    return Ok(None);
                }
            }
            Handshaking::Server {
                accepted: Some(acc),
                ..
            } if acc.state.is_my_turn() => {
                let n = acc.state.write_message(&[], body)?;
                (n, acc.state.is_finished())
            }
            Handshaking::Server { .. } => return Ok(None),
            Handshaking::Refusing { refusal, sealed } => {
                let refusal = *refusal;
                let n = match sealed {
                    Some(send) => {
                        out[LEN_PREFIX..LEN_PREFIX + REFUSAL_LEN]
                            .copy_from_slice(&refusal.encode());
                        send.seal_in_place(RecordType::Refusal, out, REFUSAL_LEN)?
                    }
                    None => {
                        body[..REFUSAL_LEN].copy_from_slice(&refusal.encode());
                        record::write_prefix(out, REFUSAL_LEN);
                        LEN_PREFIX + REFUSAL_LEN
                    }
                };
                self.fail(refusal.into());
                return Ok(Some(n));
            }
        };
        record::write_prefix(out, n);
        if finished {
            self.finish_handshake(now, true)?;
        }
        Ok(Some(LEN_PREFIX + n))
    }

    fn finish_handshake(&mut self, now: Instant, wrote_last: bool) -> Result<(), Error> {
        let State::Handshaking(hs) =
            std::mem::replace(&mut self.state, State::Closed(CloseReason::Clean))
        else {
            return Ok(());
        };
        let (state, header) = match *hs {
            Handshaking::Client { initiator, .. } => (initiator.state, initiator.header),
            Handshaking::Server {
                accepted: Some(acc),
                ..
            } => (acc.state, acc.header),
            _ => unreachable!("finish_handshake called without a handshake"),
        };
        self.establish(now, state, header, wrote_last)
    }

    #[inline(never)] // rare: keeps the per-record path small
    fn transmit_control(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let cfg_records = self.config.key_update_records;
        let cfg_bytes = self.config.key_update_bytes;
        let rehandshake_bytes = self.config.rehandshake_bytes;
        // Computed where a deadline is armed, not per record.
        let deadline = || now + self.config.rehandshake_deadline;
        let State::Established(est) = &mut self.state else {
            return Ok(None);
        };
        if !est.send.open {
            // After its close a side sends one record more: its acknowledgement of the
            // peer's close, when that came later (PROTOCOL.md 9.3).
            let Some(ack) = est.pending.ack.take() else {
                return Ok(None);
            };
            let n = seal_ack(est, ack, out)?;
            self.maybe_finish();
            return Ok(Some(n));
        }
        if est.send.wants_update(cfg_records, cfg_bytes) {
            est.pending.key_update = true;
        }
        if est.wants_rehandshake(rehandshake_bytes) {
            est.pending.rehandshake = true;
        }
        if est.pending.confirm {
            est.pending.confirm = false;
            return est
                .send
                .seal_in_place(RecordType::Confirm, out, 0)
                .map(Some);
        }
        if let Some(ack) = est.pending.ack.take() {
            return seal_ack(est, ack, out).map(Some);
        }
        let rekey = std::mem::replace(&mut est.rekey, Rekey::Idle);
        let n = match rekey {
            Rekey::Replying { reply, send, recv } => {
                out[LEN_PREFIX..LEN_PREFIX + reply.len()].copy_from_slice(&reply);
                let n = est
                    .send
                    .seal_in_place(RecordType::RehandshakeReply, out, reply.len())?;
                est.send.install(&send)?;
                if est.recv.open {
                    est.rekey = Rekey::AwaitingFinish { recv };
                    self.timers
                        .set_if_unset(Timer::RehandshakeDeadline, deadline());
                } else {
                    // The requester closed after asking: it will send no finish, and its
                    // records stay under the old key.
                    self.timers.stop(Timer::RehandshakeDeadline);
                }
                self.events.push_back(Event::KeyUpdated {
                    direction: Direction::Send,
                    info: est.info(),
                });
                n
            }
            Rekey::Finishing { send } => {
                let n = est
                    .send
                    .seal_in_place(RecordType::RehandshakeFinish, out, 0)?;
                est.send.install(&send)?;
                est.rehandshakes += 1;
                est.sent_at_rehandshake = est.send.totals.bytes;
                self.events.push_back(Event::KeyUpdated {
                    direction: Direction::Send,
                    info: est.info(),
                });
                self.events.push_back(Event::Rehandshaken(est.info()));
                self.timers.stop(Timer::RehandshakeDeadline);
                self.schedule_rehandshake(now);
                n
            }
            Rekey::Idle if est.pending.rehandshake && est.recv.open && !est.pending.close => {
                est.pending.rehandshake = false;
                let requested = rekey::request(self.rng.as_mut(), est.hybrid)?;
                let Rekey::Requested { request, .. } = &requested else {
                    unreachable!()
                };
                out[LEN_PREFIX..LEN_PREFIX + request.len()].copy_from_slice(request);
                let n =
                    est.send
                        .seal_in_place(RecordType::RehandshakeRequest, out, request.len())?;
                est.rekey = requested;
                self.timers
                    .set_if_unset(Timer::RehandshakeDeadline, deadline());
                n
            }
            other => {
                est.rekey = other;
                if est.pending.key_update {
                    est.pending.key_update = false;
                    let n = est.send.seal_in_place(RecordType::KeyUpdate, out, 0)?;
                    let next = schedule::ratchet(est.send.secret());
                    est.send.install(&next)?;
                    self.events.push_back(Event::KeyUpdated {
                        direction: Direction::Send,
                        info: est.info(),
                    });
                    n
                } else if est.pending.ping {
                    est.pending.ping = false;
                    est.send.seal_in_place(RecordType::Ping, out, 0)?
                } else if est.pending.close {
                    est.pending.close = false;
                    est.pending.rehandshake = false;
                    let totals = est.send.totals;
                    out[LEN_PREFIX..LEN_PREFIX + 8].copy_from_slice(&totals.records.to_be_bytes());
                    out[LEN_PREFIX + 8..LEN_PREFIX + 16]
                        .copy_from_slice(&totals.bytes.to_be_bytes());
                    let n = est.send.seal_in_place(RecordType::Close, out, 16)?;
                    est.send.open = false;
                    est.closed_totals = totals;
                    // A request of ours can no longer be finished (its reply is still read);
                    // a finish we await still comes.
                    if !matches!(est.rekey, Rekey::AwaitingFinish { .. }) {
                        self.timers.stop(Timer::RehandshakeDeadline);
                    }
                    self.maybe_finish();
                    n
                } else {
                    return Ok(None);
                }
            }
        };
        Ok(Some(n))
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) may have a record to send now (a
    /// control record: key update, re-handshake, close, acknowledgement, ping). A caller
    /// that is otherwise idle can skip preparing a buffer for it while this is false.
    pub fn wants_transmit(&self) -> bool {
        self.must_transmit_first()
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to send.
    #[inline]
    fn must_transmit_first(&self) -> bool {
        let State::Established(est) = &self.state else {
            return false;
        };
        let p = &est.pending;
        matches!(est.rekey, Rekey::Replying { .. } | Rekey::Finishing { .. })
            || (p.rehandshake && matches!(est.rekey, Rekey::Idle) && est.recv.open)
            || est.wants_rehandshake(self.config.rehandshake_bytes)
            || p.confirm
            || p.ack.is_some()
            || p.key_update
            || p.ping
            || p.close
            || est
                .send
                .wants_update(self.config.key_update_records, self.config.key_update_bytes)
    }

    #[inline]
    fn check_can_send(&self) -> Result<(), Error> {
        match &self.state {
            State::Established(est) if est.send.open && !est.pending.close => {
                if let Some(e) = &est.ending {
                    return Err(e.clone());
                }
                Ok(())
            }
            State::Established(est) => {
                Err(est.ending.clone().unwrap_or(ApiMisuse::SendClosed.into()))
            }
            State::Handshaking(_) | State::Confirming(_) => Err(ApiMisuse::NotEstablished.into()),
            State::Closed(CloseReason::Error(e)) => Err(e.clone()),
            State::Closed(CloseReason::Clean) => Err(ApiMisuse::SendClosed.into()),
        }
    }

    /// Seal a data record whose content the caller already put at
    /// `buf[LEN_PREFIX..LEN_PREFIX + len]`, with room after it for the type byte and tag
    /// ([`MIN_RECORD_BODY`] bytes); returns the frame length. Call
    /// [`poll_transmit`](Self::poll_transmit) until `None` first: control records go out
    /// before data.
    pub fn seal_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, Error> {
        let _ = now;
        self.check_can_send()?;
        if self.must_transmit_first() {
            return Err(
                ApiMisuse::OutOfOrder("seal data before the pending control records").into(),
            );
        }
        let State::Established(est) = &mut self.state else {
            return Err(ApiMisuse::NotEstablished.into());
        };
        let max = est.send.record_sizes().0;
        if len > max {
            return Err(ApiMisuse::PayloadTooLarge { len, max }.into());
        }
        match est.send.seal_in_place(RecordType::Data, buf, len) {
            Ok(n) => Ok(n),
            Err(e @ Error::LimitReached(_)) => self.fail_with(e),
            Err(e) => Err(e),
        }
    }

    /// The most content a data record carries, and the most its body adds to the content
    /// (AEAD suites: 65518 and 17): [`seal_in_place`](Self::seal_in_place) needs
    /// `LEN_PREFIX + content + overhead` bytes for a record of `content` bytes.
    pub fn record_sizes(&self) -> (usize, usize) {
        match &self.state {
            State::Established(est) => est.send.record_sizes(),
            _ => (MAX_CONTENT, MIN_RECORD_BODY),
        }
    }

    /// Seal up to one record of `data` into `out`, sending pending control records first.
    /// Returns `(consumed, written)`: how much of `data` went out, and the frame length in
    /// `out`. Call again with the rest until all is consumed.
    pub fn seal_data(
        &mut self,
        now: Instant,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), Error> {
        self.check_can_send()?;
        if let Some(n) = self.poll_transmit(now, out)? {
            return Ok((0, n));
        }
        let (max, overhead) = self.record_sizes();
        let room = out.len().saturating_sub(LEN_PREFIX + overhead);
        let len = data.len().min(max).min(room);
        if len == 0 && !data.is_empty() {
            return Err(ApiMisuse::BufferTooSmall {
                needed: LEN_PREFIX + overhead + 1,
                have: out.len(),
            }
            .into());
        }
        out[LEN_PREFIX..LEN_PREFIX + len].copy_from_slice(&data[..len]);
        let n = self.seal_in_place(now, out, len)?;
        Ok((len, n))
    }

    /// Process the frame at the start of `buf`, decrypting in place. Returns what was found;
    /// on any error the session is closed and nothing of the frame is delivered.
    pub fn read(&mut self, now: Instant, buf: &mut [u8]) -> Result<Received, Error> {
        let result = match &self.state {
            State::Handshaking(_) => self.read_handshake(now, buf),
            State::Confirming(_) => self.read_confirmation(now, buf),
            State::Established(_) => self.read_record(now, buf),
            State::Closed(CloseReason::Error(e)) => Err(e.clone()),
            State::Closed(CloseReason::Clean) if buf.is_empty() => {
                Ok(Received::Incomplete { needed: 1 })
            }
            State::Closed(CloseReason::Clean) if self.trailing.is_some() => {
                self.read_trailing_ack(buf)
            }
            State::Closed(CloseReason::Clean) => {
                Err(PeerMisbehaved::UnexpectedRecord("data after the session closed").into())
            }
        };
        match result {
            Err(e) => self.fail_with(e),
            ok => ok,
        }
    }

    fn max_body(&self) -> usize {
        self.config.max_record_len.min(record::MAX_BODY)
    }

    #[inline(never)] // rare: keeps the per-record path small
    fn read_handshake(&mut self, now: Instant, buf: &mut [u8]) -> Result<Received, Error> {
        let len = match record::frame(buf, 1, self.max_body())? {
            Frame::Incomplete(needed) => return Ok(Received::Incomplete { needed }),
            Frame::Complete(len) => len,
        };
        let body = &buf[LEN_PREFIX..LEN_PREFIX + len];
        let mut payload = [0u8; MAX_HANDSHAKE_PAYLOAD + crate::crypto::aead::TAG_LEN];
        let State::Handshaking(hs) = &mut self.state else {
            unreachable!()
        };
        let read = |state: &mut HandshakeState, msg: &[u8], payload: &mut [u8]| {
            state.read_message(msg, payload).map_err(|e| match e {
                Error::ApiMisuse(ApiMisuse::BufferTooSmall { .. }) => PeerMisbehaved::Oversized {
                    len: msg.len(),
                    max: MAX_HANDSHAKE_PAYLOAD,
                }
                .into(),
                e => e,
            })
        };
        let mut refused_after_last = None;
        let finished = match &mut **hs {
            Handshaking::Client {
                initiator,
                hello_sent,
                reply_read,
            } => {
                if !*hello_sent || initiator.state.is_my_turn() {
                    return Err(
                        PeerMisbehaved::UnexpectedRecord("handshake message out of turn").into(),
                    );
                }
                if *reply_read {
                    read(&mut initiator.state, body, &mut payload)?;
                } else {
                    *reply_read = true;
                    initiator.read_reply(body, &mut payload)?;
                }
                // The responder's key is proven now: judge it before writing anything more.
                initiator.check_responder()?;
                initiator.state.is_finished()
            }
            Handshaking::Server {
                responder,
                accepted,
            } => match accepted {
                None => match responder.read_hello(body, &mut payload) {
                    Ok((acc, _)) => {
                        *accepted = Some(acc);
                        false
                    }
                    Err(Error::Refused(refusal)) => {
                        **hs = Handshaking::Refusing {
                            refusal,
                            sealed: None,
                        };
                        false
                    }
                    Err(e) => return Err(e),
                },
                Some(acc) => {
                    if acc.state.is_my_turn() {
                        return Err(PeerMisbehaved::UnexpectedRecord(
                            "handshake message out of turn",
                        )
                        .into());
                    }
                    read(&mut acc.state, body, &mut payload)?;
                    // Where the initiator's key arrived only now (XX), judge it now; the
                    // refusal goes sealed in place of the first record.
                    let refused = acc.state.is_finished()
                        && acc
                            .state
                            .remote_static()
                            .is_some_and(|k| !responder.authorizes(k));
                    if refused {
                        refused_after_last = Some(acc.header);
                        false
                    } else {
                        acc.state.is_finished()
                    }
                }
            },
            Handshaking::Refusing { .. } => {
                return Err(PeerMisbehaved::UnexpectedRecord("message after a refusal").into())
            }
        };
        if let Some(header) = refused_after_last {
            let State::Handshaking(hs) =
                std::mem::replace(&mut self.state, State::Closed(CloseReason::Clean))
            else {
                unreachable!()
            };
            let Handshaking::Server {
                accepted: Some(acc),
                ..
            } = *hs
            else {
                unreachable!()
            };
            let est = self.keys_from(acc.state, header)?;
            self.state = State::Handshaking(Box::new(Handshaking::Refusing {
                refusal: Refusal::KeyNotAuthorized,
                sealed: Some(est.send),
            }));
        }
        if finished {
            self.finish_handshake(now, false)?;
        }
        Ok(Received::Control {
            frame_len: LEN_PREFIX + len,
        })
    }

    /// The responder's first record from the initiator must be its key confirmation.
    #[inline(never)] // rare: keeps the per-record path small
    fn read_confirmation(&mut self, now: Instant, buf: &mut [u8]) -> Result<Received, Error> {
        let max = self.max_body();
        let State::Confirming(est) = &mut self.state else {
            unreachable!()
        };
        let len = match record::frame(buf, MIN_RECORD_BODY, max)? {
            Frame::Incomplete(needed) => return Ok(Received::Incomplete { needed }),
            Frame::Complete(len) => len,
        };
        let frame_len = LEN_PREFIX + len;
        let (kind, clen) = est.recv.open_in_place(&mut buf[..frame_len])?;
        if kind != RecordType::Confirm || clen != 0 {
            return Err(PeerMisbehaved::UnexpectedRecord(
                "the initiator's first record is not its key confirmation",
            )
            .into());
        }
        let State::Confirming(est) =
            std::mem::replace(&mut self.state, State::Closed(CloseReason::Clean))
        else {
            unreachable!()
        };
        self.enter_established(now, est);
        Ok(Received::Control { frame_len })
    }

    /// After a clean close: the peer's acknowledgement of this side's close, nothing else.
    #[inline(never)] // rare: keeps the per-record path small
    fn read_trailing_ack(&mut self, buf: &mut [u8]) -> Result<Received, Error> {
        let max = self.max_body();
        let Some(trailing) = self.trailing.as_mut() else {
            unreachable!()
        };
        let sent = trailing.sent;
        let (received, acked) = match open_ack(&mut trailing.recv, buf, max)? {
            (received, Some(acked)) => (received, acked),
            (incomplete, None) => return Ok(incomplete),
        };
        self.trailing = None;
        self.acknowledge(sent, acked)?;
        Ok(received)
    }

    /// The peer acknowledged `acked` of what this side's close said it sent.
    fn acknowledge(&mut self, sent: Totals, acked: Totals) -> Result<(), Error> {
        if self.acknowledged.is_some() {
            return Err(PeerMisbehaved::UnexpectedRecord("a second acknowledgement").into());
        }
        if (acked.records, acked.bytes) != (sent.records, sent.bytes) {
            return Err(PeerMisbehaved::AckMismatch {
                sent_bytes: sent.bytes,
                acked_bytes: acked.bytes,
            }
            .into());
        }
        self.acknowledged = Some(sent.bytes);
        Ok(())
    }

    fn read_record(&mut self, now: Instant, buf: &mut [u8]) -> Result<Received, Error> {
        let max = self.max_body();
        let State::Established(est) = &mut self.state else {
            unreachable!()
        };
        if !est.recv.open {
            return self.read_after_close(buf, max);
        }
        let len = match record::frame(buf, MIN_RECORD_BODY, max)? {
            Frame::Incomplete(needed) => return Ok(Received::Incomplete { needed }),
            Frame::Complete(len) => len,
        };
        let frame_len = LEN_PREFIX + len;
        let first = est.recv.totals.records == 0;
        let (kind, clen) = est.recv.open_in_place(&mut buf[..frame_len])?;
        if let Some(idle) = self.config.idle_timeout {
            self.timers.set(Timer::Idle, now + idle);
        }
        if kind == RecordType::Data {
            let content = LEN_PREFIX..LEN_PREFIX + clen;
            return Ok(Received::Data { frame_len, content });
        }
        self.read_control(now, buf, frame_len, kind, clen, first)
    }

    /// A record after the peer's close: only the acknowledgement of this side's close.
    #[inline(never)] // rare: keeps the per-record path small
    fn read_after_close(&mut self, buf: &mut [u8], max: usize) -> Result<Received, Error> {
        let State::Established(est) = &mut self.state else {
            unreachable!()
        };
        if buf.is_empty() {
            return Ok(Received::Incomplete { needed: 1 });
        }
        // Except one: when both closed at once, the peer's acknowledgement of this
        // side's close follows its own close (PROTOCOL.md 9.3), and can arrive before
        // this side sent its own acknowledgement.
        if est.send.open || self.acknowledged.is_some() {
            return Err(PeerMisbehaved::UnexpectedRecord("record after the peer's close").into());
        }
        let sent = est.closed_totals;
        let (received, acked) = match open_ack(&mut est.recv, buf, max)? {
            (received, Some(acked)) => (received, acked),
            (incomplete, None) => return Ok(incomplete),
        };
        self.acknowledge(sent, acked)?;
        Ok(received)
    }

    /// A control record, already opened in place: its content is at
    /// `buf[LEN_PREFIX..LEN_PREFIX + clen]`.
    #[inline(never)] // rare: keeps the per-record path small
    fn read_control(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        frame_len: usize,
        kind: RecordType,
        clen: usize,
        first: bool,
    ) -> Result<Received, Error> {
        let role = self.role;
        // Computed where a deadline is armed, not per record.
        let deadline = || now + self.config.rehandshake_deadline;
        let State::Established(est) = &mut self.state else {
            unreachable!()
        };
        let content = LEN_PREFIX..LEN_PREFIX + clen;
        let empty = |what| {
            if clen == 0 {
                Ok(())
            } else {
                Err(Error::from(PeerMisbehaved::UnexpectedRecord(what)))
            }
        };
        match kind {
            RecordType::Data => return Ok(Received::Data { frame_len, content }),
            RecordType::Ping => empty("ping with content")?,
            // Sealed under the session keys, so only the responder can have sent it; it may
            // only replace the responder's first record (PROTOCOL.md 4).
            RecordType::Refusal if first && role == Role::Initiator => {
                return Err(match Refusal::decode(&buf[content]) {
                    Some(refusal) => refusal.into(),
                    None => PeerMisbehaved::UnexpectedRecord("malformed refusal").into(),
                });
            }
            RecordType::Refusal => {
                return Err(PeerMisbehaved::UnexpectedRecord("refusal after the handshake").into())
            }
            RecordType::Confirm => {
                return Err(
                    PeerMisbehaved::UnexpectedRecord("key confirmation out of place").into(),
                )
            }
            RecordType::Ack => {
                if est.send.open {
                    return Err(PeerMisbehaved::UnexpectedRecord(
                        "acknowledgement of a close that was not sent",
                    )
                    .into());
                }
                let acked = read_totals(&buf[content], "malformed acknowledgement")?;
                let sent = est.closed_totals;
                self.acknowledge(sent, acked)?;
            }
            RecordType::KeyUpdate => {
                empty("key update with content")?;
                let next = schedule::ratchet(est.recv.secret());
                est.recv.install(&next)?;
                self.events.push_back(Event::KeyUpdated {
                    direction: Direction::Receive,
                    info: est.info(),
                });
            }
            RecordType::RehandshakeRequest => {
                let ours_wins = role == Role::Initiator;
                match &est.rekey {
                    // A closed side cannot reply; the requester gives up when our close
                    // arrives.
                    _ if !est.send.open || est.pending.close => {}
                    Rekey::Requested { .. } if ours_wins => {} // the peer answers ours instead
                    Rekey::Idle | Rekey::Requested { .. } => {
                        let statics = rekey::Statics::new(role, est.local.as_deref(), est.peer);
                        let (reply, secrets) = rekey::answer(
                            self.rng.as_mut(),
                            est.hybrid,
                            &est.salt,
                            &statics,
                            &buf[content],
                        )?;
                        let (send, recv) = split_secrets(
                            role,
                            secrets.initiator_to_responder,
                            secrets.responder_to_initiator,
                        );
                        est.salt = secrets.rehandshake;
                        est.rekey = Rekey::Replying {
                            reply,
                            send: Box::new(send),
                            recv: Box::new(recv),
                        };
                        est.pending.rehandshake = false;
                        self.timers
                            .set_if_unset(Timer::RehandshakeDeadline, deadline());
                    }
                    _ => {
                        return Err(PeerMisbehaved::UnexpectedRecord(
                            "re-handshake request during a re-handshake",
                        )
                        .into())
                    }
                }
            }
            RecordType::RehandshakeReply => {
                let Rekey::Requested { e, kem, request } = &est.rekey else {
                    return Err(PeerMisbehaved::UnexpectedRecord(
                        "re-handshake reply without a request",
                    )
                    .into());
                };
                let statics = rekey::Statics::new(role, est.local.as_deref(), est.peer);
                let secrets = rekey::complete(
                    e,
                    kem.as_deref(),
                    &est.salt,
                    &statics,
                    request,
                    &buf[content],
                )?;
                let (send, recv) = split_secrets(
                    role,
                    secrets.initiator_to_responder,
                    secrets.responder_to_initiator,
                );
                est.salt = secrets.rehandshake;
                est.recv.install(&recv)?;
                if est.send.open {
                    est.rekey = Rekey::Finishing {
                        send: Box::new(send),
                    };
                } else {
                    // We closed after asking: the peer's records now use the new key, ours
                    // have ended.
                    est.rekey = Rekey::Idle;
                }
                self.events.push_back(Event::KeyUpdated {
                    direction: Direction::Receive,
                    info: est.info(),
                });
            }
            RecordType::RehandshakeFinish => {
                empty("re-handshake finish with content")?;
                let Rekey::AwaitingFinish { .. } = &est.rekey else {
                    return Err(PeerMisbehaved::UnexpectedRecord(
                        "re-handshake finish without a reply",
                    )
                    .into());
                };
                let Rekey::AwaitingFinish { recv } = std::mem::replace(&mut est.rekey, Rekey::Idle)
                else {
                    unreachable!()
                };
                est.recv.install(&recv)?;
                est.rehandshakes += 1;
                est.sent_at_rehandshake = est.send.totals.bytes;
                self.events.push_back(Event::KeyUpdated {
                    direction: Direction::Receive,
                    info: est.info(),
                });
                self.events.push_back(Event::Rehandshaken(est.info()));
                self.timers.stop(Timer::RehandshakeDeadline);
                self.schedule_rehandshake(now);
            }
            RecordType::Close => {
                let sent = read_totals(&buf[content], "close record of the wrong length")?;
                // The close record itself is not in the sender's totals.
                let received_records = est.recv.totals.records - 1;
                let received_bytes = est.recv.totals.bytes;
                if (sent.records, sent.bytes) != (received_records, received_bytes) {
                    return Err(PeerMisbehaved::CloseMismatch {
                        sent_records: sent.records,
                        sent_bytes: sent.bytes,
                        received_records,
                        received_bytes,
                    }
                    .into());
                }
                est.recv.open = false;
                est.pending.ack = Some(sent);
                // A re-handshake needs both directions: what the peer can no longer finish
                // or answer is dropped (the open direction keeps rotating by key updates).
                match est.rekey {
                    Rekey::AwaitingFinish { .. } | Rekey::Requested { .. } => {
                        est.rekey = Rekey::Idle;
                        self.timers.stop(Timer::RehandshakeDeadline);
                    }
                    _ => {}
                }
                est.pending.rehandshake = false;
                self.timers.stop(Timer::Idle);
                self.maybe_finish();
            }
        }
        Ok(Received::Control { frame_len })
    }

    /// The transport reached end of stream. Clean only after the peer's close record;
    /// otherwise the stream was truncated, and the session closes with that error.
    pub fn handle_eof(&mut self, now: Instant) -> Result<(), Error> {
        let _ = now;
        match &self.state {
            State::Established(est) if !est.recv.open => Ok(()),
            State::Closed(CloseReason::Clean) => {
                // No acknowledgement can come any more; `acknowledged` stays as it is.
                self.trailing = None;
                Ok(())
            }
            State::Closed(CloseReason::Error(e)) => Err(e.clone()),
            _ => self.fail_with(PeerMisbehaved::StreamTruncated.into()),
        }
    }

    /// Act on the deadlines due at `now`; does nothing when called early.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.expired(Timer::Handshake, now) {
            return self.fail(Timeout::Handshake(self.config.handshake_timeout).into());
        }
        if self.timers.expired(Timer::Idle, now) {
            let idle = self.config.idle_timeout.unwrap_or_default();
            return self.fail(Timeout::Idle(idle).into());
        }
        if self.timers.expired(Timer::RehandshakeDeadline, now) {
            return self.fail(Timeout::Rehandshake(self.config.rehandshake_deadline).into());
        }
        let State::Established(est) = &mut self.state else {
            return;
        };
        if self.timers.expired(Timer::Lifetime, now) {
            if est.ending.is_some() {
                // The peer had its grace period to close in turn.
                return self.fail(Timeout::LifetimeClose(LIFETIME_GRACE).into());
            }
            self.timers.set(Timer::Lifetime, now + LIFETIME_GRACE);
            self.timers.stop(Timer::Rehandshake);
            let life = self.config.max_lifetime.unwrap_or_default();
            est.ending = Some(Limit::Lifetime(life).into());
            est.pending.close = true;
        }
        if self.timers.expired(Timer::Rehandshake, now) {
            self.timers.stop(Timer::Rehandshake);
            if est.send.open && est.recv.open {
                est.pending.rehandshake = true;
                let deadline = now + self.config.rehandshake_deadline;
                self.timers
                    .set_if_unset(Timer::RehandshakeDeadline, deadline);
            } else if est.send.open {
                // Half closed: no re-handshake is possible, so rotate what is left by time.
                est.pending.key_update = true;
            }
            self.schedule_rehandshake(now);
        }
    }
}

/// (send, receive) secrets for `role` from the initiator-to-responder and reverse secrets.
fn split_secrets(role: Role, i2r: SecretKey, r2i: SecretKey) -> (SecretKey, SecretKey) {
    match role {
        Role::Initiator => (i2r, r2i),
        Role::Responder => (r2i, i2r),
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Handshaking(_) => "handshaking",
            State::Confirming(_) => "confirming",
            State::Established(est) if est.send.open && est.recv.open => "established",
            State::Established(_) => "closing",
            State::Closed(_) => "closed",
        };
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &state)
            .field("info", &self.info())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
