//! One VPN peer: its handshakes, its keys and its timers (docs/PROTOCOL.md section 12.5),
//! sans-IO. The caller passes every `Instant`, every received message and the randomness;
//! the peer says what to send.
//!
//! # Keys
//!
//! A peer holds up to three sessions ([`DatagramSession`]), each with its own receiver
//! index (chosen by the caller, unique on the interface) and key epoch:
//!
//! - **current**: seals outgoing packets and opens incoming ones;
//! - **previous**: the one before, opening only, kept for [`Timing::grace`] after the switch
//!   so packets sealed before the peer switched still arrive;
//! - **next**: a responder's new session, opening only until the initiator's first packet
//!   under it arrives (key confirmation: the initiator surely has the keys), which makes it
//!   current. An initiator's new session becomes current as soon as the response is read.
//!
//! When handshakes cross (both sides initiate at once, or one initiates while the other's
//! new session awaits confirmation), both sides keep the same session: the one with the
//! later epoch, or with equal epochs the one the smaller static key initiated
//! (docs/PROTOCOL.md section 12.2).
//!
//! # Timers (WireGuard paper section 6, with a backoff)
//!
//! | timer | armed | fires |
//! | --- | --- | --- |
//! | retransmit | an initiation sent | a new initiation, after 1 s, 2 s, 4 s, 8 s, 8 s... plus up to 25% random jitter |
//! | give up | the first initiation of an attempt | after 90 s without a response: stop; the next packet starts again |
//! | keepalive | data received, nothing sent since | an empty packet after 10 s, so the sender knows the path works |
//! | new handshake | data sent, nothing received under the current session since | a handshake after 15 s (keepalive + 5 s): the peer may have lost its keys or moved |
//! | persistent keepalive | anything sent (if configured) | an empty packet after the configured interval, to keep NAT mappings |
//!
//! Rekeying: the side that initiated the current session starts a new handshake when it
//! sends and the session is older than [`Timing::rekey_interval`] (default 120 s), or the
//! key reached half its usage limits or its receiving key its forgery threshold; the
//! responder does the same at [`Timing::responder_rekey_after`] (165 s by default, 15 s
//! before reject-after) in case the initiator went quiet. A session older than [`Timing::reject_after`] is
//! neither used nor accepted.
//!
//! # Call order
//!
//! 1. After any input, and at [`poll_timeout`](Peer::poll_timeout), call
//!    [`handle_timeout`](Peer::handle_timeout).
//! 2. If [`wants_initiation`](Peer::wants_initiation): pick a fresh index and call
//!    [`create_initiation`](Peer::create_initiation); send it.
//! 3. Data out: [`seal`](Peer::seal). [`SealError::NoSession`]: keep the packet until the
//!    handshake completes (a handshake is now wanted). If
//!    [`wants_keepalive`](Peer::wants_keepalive), seal an empty payload.
//! 4. Data in: [`open`](Peer::open), then check the inner source against the peer's allowed
//!    networks. Handshake messages: [`accept_initiation`](Peer::accept_initiation),
//!    [`handle_response`](Peer::handle_response), [`handle_cookie_reply`](Peer::handle_cookie_reply).
//! 5. Indexes no longer [`owned`](Peer::owns_index) can be forgotten by the caller.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::SecureRandom;
use crate::error::{ApiMisuse, PeerMisbehaved};
use crate::keys::{Fingerprint, Identity, Psk, PublicKey};
use crate::noise::HandshakeState;
use crate::record::datagram::{peek_receiver_index, DatagramConfig, DatagramSession};
use crate::suite::Suite;
use crate::Error;

use super::cookie::CookieJar;
use super::handshake::{
    finish_initiator, read_response, write_initiation, write_response, ReadInitiation,
};
use super::message::{
    initiation_len, response_len, write_response_header, CookieReply, Response, MACS_LEN,
    RESPONSE_HEADER_LEN,
};

/// The interface-wide timing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Start a fresh handshake when the current session is this old (default 120 s, as
    /// WireGuard's REKEY_AFTER_TIME).
    pub rekey_interval: Duration,
    /// Refuse a session this old (default 180 s, WireGuard's REJECT_AFTER_TIME).
    pub reject_after: Duration,
    /// The first retransmission of an unanswered initiation (default 1 s); each next one
    /// waits twice as long, up to [`retransmit_max`](Self::retransmit_max).
    pub retransmit_initial: Duration,
    /// The longest wait between retransmissions (default 8 s).
    pub retransmit_max: Duration,
    /// Stop retransmitting after this long without a response (default 90 s).
    pub give_up_after: Duration,
    /// Passive keepalive: answer received data with an empty packet if nothing was sent for
    /// this long (default 10 s).
    pub keepalive: Duration,
    /// How long the previous session keeps opening packets after a switch (default 10 s).
    pub grace: Duration,
    /// Initiations from one peer closer together than this are refused (default 20 ms:
    /// WireGuard's 50 a second).
    pub min_initiation_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self::with_rekey_interval(Duration::from_secs(120))
    }
}

impl Timing {
    /// The defaults with another rekey interval; sessions are refused 60 s after it.
    pub fn with_rekey_interval(rekey_interval: Duration) -> Self {
        Self {
            rekey_interval,
            reject_after: rekey_interval.saturating_add(Duration::from_secs(60)),
            retransmit_initial: Duration::from_secs(1),
            retransmit_max: Duration::from_secs(8),
            give_up_after: Duration::from_secs(90),
            keepalive: Duration::from_secs(10),
            grace: Duration::from_secs(10),
            min_initiation_interval: Duration::from_millis(20),
        }
    }

    /// The age at which the responder of a session starts a new handshake when it sends,
    /// in case the initiator went quiet: 1.5 times the rekey interval, but at least the
    /// new-handshake time ([`keepalive`](Self::keepalive) + 5 retransmit intervals, 15 s
    /// by default) before [`reject_after`](Self::reject_after), so the handshake has time
    /// to finish before the session expires. 165 s at the defaults (1.5 x 120 s would be
    /// reject-after itself: too late to ever fire).
    pub fn responder_rekey_after(&self) -> Duration {
        let margin = self
            .keepalive
            .saturating_add(self.retransmit_initial.saturating_mul(5));
        self.rekey_interval
            .saturating_add(self.rekey_interval / 2)
            .min(self.reject_after.saturating_sub(margin))
            .max(self.rekey_interval)
    }

    /// The new-handshake time: data sent and nothing received for this long starts a
    /// handshake (15 s by default: the keepalive interval plus 5 s).
    pub fn new_handshake_after(&self) -> Duration {
        self.keepalive
            .saturating_add(self.retransmit_initial.saturating_mul(5))
    }

    /// The wait before retransmission number `attempt` (0 for the first), without jitter.
    pub fn retransmit_delay(&self, attempt: u32) -> Duration {
        self.retransmit_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.retransmit_max)
    }
}

/// A peer's configuration.
pub struct PeerConfig {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// An optional pre-shared key, mixed into every handshake with this peer.
    pub psk: Option<Psk>,
    /// Where to send, until the peer's authenticated packets say otherwise.
    pub endpoint: Option<SocketAddr>,
    /// Send an empty packet after this long without sending anything (NAT keepalive).
    pub persistent_keepalive: Option<Duration>,
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &self.public_key.fingerprint())
            .field("psk", &self.psk.is_some())
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

/// The interface-wide settings a peer's handshakes use.
#[derive(Clone)]
pub struct Local {
    /// This side's identity.
    pub identity: Arc<Identity>,
    /// The record suite this side offers when it initiates.
    pub suite: Suite,
    /// Whether this side's handshakes are hybrid.
    pub hybrid: bool,
    /// The timing policy.
    pub timing: Timing,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("identity", &self.identity)
            .field("suite", &self.suite)
            .field("hybrid", &self.hybrid)
            .field("timing", &self.timing)
            .finish()
    }
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No usable session: keep the packet; a handshake is wanted.
    #[error("no session with the peer yet")]
    NoSession,
    /// The peer's address is unknown (no endpoint configured, nothing received yet).
    #[error("the peer's endpoint is unknown")]
    NoEndpoint,
    /// The session refused (a usage limit).
    #[error(transparent)]
    Failed(Error),
}

/// An initiation ready to send.
#[derive(Debug, Clone, Copy)]
pub struct Initiated {
    /// Its length in the caller's buffer.
    pub len: usize,
    /// Where to send it.
    pub endpoint: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Retransmit,
    GiveUp,
    Keepalive,
    NewHandshake,
    Persistent,
}

const TIMERS: usize = 5;

struct Keypair {
    session: DatagramSession,
    created: Instant,
    initiator: bool,
    /// The epoch its initiation proposed: with the initiator, it orders handshakes that
    /// crossed (see [`Peer::outranks`]).
    epoch: u8,
    /// When the first packet under it opened here: the peer surely has it.
    confirmed: Option<Instant>,
    /// When it stops opening packets (sooner for a previous or superseded session).
    expires: Instant,
}

impl Keypair {
    fn new(
        session: DatagramSession,
        now: Instant,
        initiator: bool,
        epoch: u8,
        timing: &Timing,
    ) -> Self {
        Self {
            session,
            created: now,
            initiator,
            epoch,
            confirmed: None,
            expires: now.checked_add(timing.reject_after).unwrap_or(now),
        }
    }

    /// Whether the peer had this session before `t`: it was confirmed no later than `t`.
    /// A handshake started after that is a successor, not a crossing one.
    fn confirmed_by(&self, t: Instant) -> bool {
        self.confirmed.is_some_and(|c| c <= t)
    }

    /// Whether sealing under this session at `now` should start a new handshake: its age
    /// reached the rekey time of its role ([`Timing::responder_rekey_after`] for the
    /// responder), or its keys their thresholds ([`DatagramSession::needs_rekey`]).
    fn rekey_due(&self, now: Instant, timing: &Timing) -> bool {
        let age = now.saturating_duration_since(self.created);
        let rekey_at = if self.initiator {
            timing.rekey_interval
        } else {
            timing.responder_rekey_after()
        };
        age >= rekey_at || self.session.needs_rekey()
    }
}

struct Pending {
    state: HandshakeState,
    local_index: u32,
    epoch: u8,
    sent: Instant,
}

/// Counters of one peer, for `vpn show`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Payload bytes sealed.
    pub tx_bytes: u64,
    /// Packets sealed (keepalives included).
    pub tx_packets: u64,
    /// Payload bytes opened.
    pub rx_bytes: u64,
    /// Packets opened (keepalives included).
    pub rx_packets: u64,
    /// Handshakes completed, both roles.
    pub handshakes: u64,
    /// Initiations sent, retransmissions included.
    pub initiations_sent: u64,
    /// Packets that failed to open (replays, forgeries, expired keys).
    pub rejected: u64,
    /// Handshake responses refused (forged, altered, or for no initiation in flight); the
    /// handshake in flight, if any, is untouched by them.
    pub responses_refused: u64,
    /// Cookie replies refused (forged, or for nothing sent).
    pub cookie_replies_refused: u64,
}

/// What `vpn show` prints of a peer: no key material, only fingerprints.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// The current session's key epoch.
    pub epoch: Option<u8>,
    /// Fingerprint of the current sending key.
    pub send_key: Option<Fingerprint>,
    /// Whether a previous session is still kept.
    pub previous_kept: bool,
    /// Whether a handshake is in progress (as initiator).
    pub handshaking: bool,
    /// The counters.
    pub stats: PeerStats,
}

/// One peer of a VPN interface: see the [module documentation](self).
pub struct Peer {
    local: Local,
    public_key: PublicKey,
    psk: Option<Psk>,
    persistent_keepalive: Option<Duration>,
    jar: CookieJar,
    endpoint: Option<SocketAddr>,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    next: Option<Keypair>,
    pending: Option<Pending>,
    attempt: u32,
    epoch: u8,
    last_sent_timestamp: u64,
    last_timestamp: Option<u64>,
    last_initiation: Option<Instant>,
    last_handshake: Option<Instant>,
    timers: [Option<Instant>; TIMERS],
    want_initiation: bool,
    want_keepalive: bool,
    gave_up: bool,
    stats: PeerStats,
}

impl Peer {
    /// A peer with no session yet, as of `now`.
    pub fn new(local: Local, config: PeerConfig, now: Instant) -> Result<Self, Error> {
        let mut peer = Self {
            jar: CookieJar::new(&config.public_key)?,
            local,
            public_key: config.public_key,
            psk: config.psk,
            persistent_keepalive: config.persistent_keepalive,
            endpoint: config.endpoint,
            current: None,
            previous: None,
            next: None,
            pending: None,
            attempt: 0,
            epoch: 0,
            last_sent_timestamp: 0,
            last_timestamp: None,
            last_initiation: None,
            last_handshake: None,
            timers: [None; TIMERS],
            want_initiation: false,
            want_keepalive: false,
            gave_up: false,
            stats: PeerStats::default(),
        };
        if peer.persistent_keepalive.is_some() && peer.endpoint.is_some() {
            // As WireGuard: with a persistent keepalive, bring the tunnel up at once.
            peer.set(Timer::Persistent, Some(now));
        }
        Ok(peer)
    }

    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.timers[t as usize] = at;
    }

    fn get(&self, t: Timer) -> Option<Instant> {
        self.timers[t as usize]
    }

    fn arm_if_idle(&mut self, t: Timer, at: Option<Instant>) {
        if self.get(t).is_none() {
            self.set(t, at);
        }
    }

    /// The peer's static public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Where packets to the peer go now.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Change where packets to the peer go (`vpn set ... endpoint`, a re-resolved DNS
    /// name); the peer's authenticated packets move it again as usual. Keeps the sessions.
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    /// Change the persistent keepalive interval as of `now` (`None`: off). Keeps the
    /// sessions; with an interval, an empty packet is wanted at once if the peer's
    /// endpoint is known (as at start).
    pub fn set_persistent_keepalive(&mut self, now: Instant, interval: Option<Duration>) {
        self.persistent_keepalive = interval;
        let at = match (interval, self.endpoint) {
            (Some(_), Some(_)) => Some(now),
            _ => None,
        };
        self.set(Timer::Persistent, at);
    }

    /// Change the pre-shared key. The current sessions go on; the next handshake (at the
    /// next rekey, at most [`Timing::rekey_interval`] later) uses the new key, as
    /// WireGuard does.
    pub fn set_psk(&mut self, psk: Option<Psk>) {
        self.psk = psk;
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keys = [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.expires);
        self.timers.iter().flatten().copied().chain(keys).min()
    }

    /// Run the timers due at `now`; does nothing when called early.
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            if slot.as_ref().is_some_and(|k| k.expires <= now) {
                *slot = None;
            }
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.get(Timer::GiveUp)) {
            self.pending = None;
            self.set(Timer::GiveUp, None);
            self.set(Timer::Retransmit, None);
            self.want_initiation = false;
            self.attempt = 0;
            self.gave_up = true;
        }
        if due(self.get(Timer::Retransmit)) {
            self.set(Timer::Retransmit, None);
            self.want_initiation = true;
        }
        if due(self.get(Timer::Keepalive)) {
            self.set(Timer::Keepalive, None);
            if self.current.is_some() {
                self.want_keepalive = true;
            }
        }
        if due(self.get(Timer::NewHandshake)) {
            self.set(Timer::NewHandshake, None);
            self.want_initiation_now();
        }
        if due(self.get(Timer::Persistent)) {
            self.set(
                Timer::Persistent,
                self.persistent_keepalive.and_then(|d| now.checked_add(d)),
            );
            self.want_keepalive = true;
        }
    }

    fn want_initiation_now(&mut self) {
        if self.pending.is_none() && self.get(Timer::Retransmit).is_none() {
            self.want_initiation = true;
        }
    }

    /// Initiations sent for the handshake in progress without a response (0 when none is
    /// in progress): 4 means about 15 s of silence with the default backoff, when a
    /// driver may resolve a DNS endpoint again.
    pub fn handshake_attempts(&self) -> u32 {
        self.attempt
    }

    /// Whether a new initiation should be sent now.
    pub fn wants_initiation(&self) -> bool {
        self.want_initiation
    }

    /// Whether an empty packet should be sealed and sent now.
    pub fn wants_keepalive(&self) -> bool {
        self.want_keepalive
    }

    /// Whether the last handshake attempt was abandoned since the last call (the caller
    /// drops the packets it kept for the peer).
    pub fn take_gave_up(&mut self) -> bool {
        std::mem::take(&mut self.gave_up)
    }

    /// Whether `index` belongs to one of this peer's sessions or its handshake in progress.
    pub fn owns_index(&self, index: u32) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.local_index == index)
            || [&self.current, &self.previous, &self.next]
                .into_iter()
                .flatten()
                .any(|k| k.session.local_index() == index)
    }

    /// Write a new initiation into `out` (at least
    /// [`MAX_HANDSHAKE_LEN`](super::message::MAX_HANDSHAKE_LEN) bytes) with the fresh
    /// receiver index `local_index`; `unix_nanos` is the wall clock (the timestamp that
    /// makes replays fail). Returns `None`, and wants nothing more, if the peer's endpoint is
    /// unknown: it must contact us first.
    pub fn create_initiation(
        &mut self,
        now: Instant,
        unix_nanos: u64,
        local_index: u32,
        rng: &mut dyn SecureRandom,
        out: &mut [u8],
    ) -> Result<Option<Initiated>, Error> {
        self.want_initiation = false;
        let Some(endpoint) = self.endpoint else {
            return Ok(None);
        };
        let len = initiation_len(self.local.hybrid);
        let have = out.len();
        let out = out
            .get_mut(..len)
            .ok_or(ApiMisuse::BufferTooSmall { needed: len, have })?;
        let timestamp = unix_nanos.max(self.last_sent_timestamp.saturating_add(1));
        let epoch = self.epoch.wrapping_add(1);
        let state = write_initiation(
            self.local.identity.clone(),
            self.public_key,
            self.psk.as_ref(),
            self.local.suite,
            self.local.hybrid,
            local_index,
            timestamp,
            epoch,
            out,
        )?;
        self.jar.stamp(now, out);
        self.last_sent_timestamp = timestamp;
        self.epoch = epoch;
        self.pending = Some(Pending {
            state,
            local_index,
            epoch,
            sent: now,
        });
        if self.get(Timer::GiveUp).is_none() {
            self.set(
                Timer::GiveUp,
                now.checked_add(self.local.timing.give_up_after),
            );
        }
        let delay = self.local.timing.retransmit_delay(self.attempt);
        let mut r = [0u8; 4];
        rng.fill(&mut r)?;
        // Up to a quarter more, so peers that started together drift apart.
        let jitter = delay.mul_f64(f64::from(u32::from_be_bytes(r)) / f64::from(u32::MAX) / 4.0);
        self.set(Timer::Retransmit, now.checked_add(delay + jitter));
        self.attempt = self.attempt.saturating_add(1);
        self.stats.initiations_sent += 1;
        Ok(Some(Initiated { len, endpoint }))
    }

    /// As responder: answer an initiation from this peer (read by
    /// [`read_initiation`](super::handshake::read_initiation)) received from `source`. Writes
    /// the response with the fresh receiver index `local_index` into `out` and returns its
    /// length. The new session waits for the initiator's first packet before it seals
    /// anything. Refuses a replayed initiation (its timestamp is not newer than the last
    /// one's) and initiations closer together than
    /// [`Timing::min_initiation_interval`].
    pub fn accept_initiation(
        &mut self,
        now: Instant,
        read: ReadInitiation,
        source: SocketAddr,
        local_index: u32,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if read.initiator != self.public_key {
            return Err(ApiMisuse::UnexpectedKey("initiation from another peer").into());
        }
        if self.last_timestamp.is_some_and(|t| read.timestamp <= t) {
            return Err(PeerMisbehaved::Replay.into());
        }
        if self.last_initiation.is_some_and(|t| {
            now.saturating_duration_since(t) < self.local.timing.min_initiation_interval
        }) {
            return Err(PeerMisbehaved::UnexpectedRecord("initiations too frequent").into());
        }
        let len = response_len(read.hybrid);
        let have = out.len();
        let out = out
            .get_mut(..len)
            .ok_or(ApiMisuse::BufferTooSmall { needed: len, have })?;
        let (timestamp, epoch, remote_index, suite) =
            (read.timestamp, read.epoch, read.sender_index, read.suite);
        write_response_header(out, local_index, remote_index);
        let (n, secrets, _hash) = write_response(
            read,
            self.psk.as_ref(),
            local_index,
            &mut out[RESPONSE_HEADER_LEN..len - MACS_LEN],
        )?;
        debug_assert_eq!(RESPONSE_HEADER_LEN + n + MACS_LEN, len);
        self.jar.stamp(now, out);
        let session = DatagramSession::new(
            suite,
            local_index,
            remote_index,
            epoch,
            secrets.r2i,
            secrets.i2r,
            self.datagram_config(),
        )?;
        self.next = Some(Keypair::new(session, now, false, epoch, &self.local.timing));
        self.last_timestamp = Some(timestamp);
        self.last_initiation = Some(now);
        self.last_handshake = Some(now);
        self.endpoint = Some(source);
        self.epoch = epoch;
        self.stats.handshakes += 1;
        Ok(len)
    }

    /// As initiator: read the response to the initiation in progress, received from
    /// `source`. On success the new session is current at once, the old one is kept as
    /// previous for the grace period, and an empty packet is wanted (so the responder
    /// learns the keys work) unless data goes first.
    ///
    /// State changes only on success (as wireguard-go's): a response that fails (forged,
    /// altered, a wrong psk, or for no initiation in flight) is counted in
    /// [`PeerStats::responses_refused`] and leaves the handshake in flight as it was, so
    /// an attacker who saw the initiation cannot block the genuine response by racing it.
    pub fn handle_response(
        &mut self,
        now: Instant,
        msg: &Response<'_>,
        source: SocketAddr,
    ) -> Result<(), Error> {
        let read = match self.pending.as_mut() {
            Some(p) if p.local_index == msg.receiver_index => read_response(&mut p.state, msg),
            _ => Err(PeerMisbehaved::UnexpectedRecord("response to no initiation of ours").into()),
        };
        if let Err(e) = read {
            self.stats.responses_refused += 1;
            return Err(e);
        }
        let Some(pending) = self.pending.take() else {
            return Err(
                PeerMisbehaved::UnexpectedRecord("response to no initiation of ours").into(),
            );
        };
        let (secrets, _hash) = finish_initiator(pending.state)?;
        let session = DatagramSession::new(
            self.local.suite,
            pending.local_index,
            msg.sender_index,
            pending.epoch,
            secrets.i2r,
            secrets.r2i,
            self.datagram_config(),
        )?;
        let new = Keypair::new(session, now, true, pending.epoch, &self.local.timing);
        // A session of the peer's, confirmed here after this initiation went out, crossed
        // it: keep whichever of the two ranks higher, as the peer does. Otherwise each side
        // would move to the other's session and both would end up on superseded ones.
        let keep_current = self.current.as_ref().is_some_and(|c| {
            !c.initiator && !c.confirmed_by(pending.sent) && self.outranks(c, &new)
        });
        if !keep_current {
            self.install_current(now, new);
            self.want_keepalive = true;
        }
        self.set(Timer::Retransmit, None);
        self.set(Timer::GiveUp, None);
        self.attempt = 0;
        self.last_handshake = Some(now);
        self.endpoint = Some(source);
        self.stats.handshakes += 1;
        Ok(())
    }

    /// Take a cookie reply addressed to the initiation in progress. The next initiation
    /// (at the retransmission timer) carries `mac2`. A reply that does not open changes
    /// nothing and is counted in [`PeerStats::cookie_replies_refused`].
    pub fn handle_cookie_reply(
        &mut self,
        now: Instant,
        reply: &CookieReply<'_>,
    ) -> Result<(), Error> {
        self.jar
            .handle_reply(now, reply)
            .inspect_err(|_| self.stats.cookie_replies_refused += 1)
    }

    fn datagram_config(&self) -> DatagramConfig {
        DatagramConfig {
            grace: self.local.timing.grace,
            ..DatagramConfig::default()
        }
    }

    /// Whether the static key of `a`'s initiator wins over `b`'s: sessions with the same
    /// epoch come from handshakes that crossed, and the one the smaller key (as bytes)
    /// initiated wins. Both sides compute the same answer.
    fn outranks(&self, a: &Keypair, b: &Keypair) -> bool {
        // Serial-number order: epochs wrap, and crossing ones are a few apart at most.
        let ahead = a.epoch.wrapping_sub(b.epoch) as i8;
        if ahead != 0 || a.initiator == b.initiator {
            return ahead > 0;
        }
        let mine = self.local.identity.public_key().as_bytes() < self.public_key.as_bytes();
        a.initiator == mine
    }

    /// Whether the peer's new session (`next`, just confirmed by a packet) replaces
    /// `current`: always, unless `current` is ours and the two handshakes crossed (ours
    /// was not yet confirmed when the peer's arrived), where the higher-ranked one stays.
    fn promotes_next(&self) -> bool {
        match (&self.current, &self.next) {
            (Some(c), Some(n)) if c.initiator && !c.confirmed_by(n.created) => self.outranks(n, c),
            _ => true,
        }
    }

    fn install_current(&mut self, now: Instant, keypair: Keypair) {
        if let Some(mut old) = self.current.replace(keypair) {
            old.expires = old
                .expires
                .min(now.checked_add(self.local.timing.grace).unwrap_or(now));
            self.previous = Some(old);
        }
    }

    /// Seal the payload at `buf[HEADER_LEN..HEADER_LEN + payload_len]` (an empty one is a
    /// keepalive) under the current session; returns the packet length and where to send
    /// it. Allocates nothing.
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<(usize, SocketAddr), SealError> {
        let timing = self.local.timing;
        let usable = self.current.as_ref().is_some_and(|k| k.expires > now);
        if !usable {
            self.want_initiation_now();
            return Err(SealError::NoSession);
        }
        let Some(endpoint) = self.endpoint else {
            return Err(SealError::NoEndpoint);
        };
        let Some(current) = self.current.as_mut() else {
            return Err(SealError::NoSession);
        };
        // Decided before sealing, so a key that can no longer seal still asks for a new
        // handshake instead of failing quietly until a timer.
        let rekey = current.rekey_due(now, &timing);
        let sealed = current.session.seal_in_place(buf, payload_len);
        let len = match sealed {
            Ok(len) => len,
            Err(e) => {
                self.want_initiation_now();
                return Err(SealError::Failed(e));
            }
        };
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += payload_len as u64;
        self.want_keepalive = false;
        self.set(Timer::Keepalive, None);
        if payload_len > 0 {
            self.arm_if_idle(
                Timer::NewHandshake,
                now.checked_add(timing.new_handshake_after()),
            );
        }
        if let Some(interval) = self.persistent_keepalive {
            self.set(Timer::Persistent, now.checked_add(interval));
        }
        if rekey {
            self.want_initiation_now();
        }
        Ok((len, endpoint))
    }

    /// Open a data packet received from `source` in place; returns its payload (empty for
    /// a keepalive). On success the peer's endpoint becomes `source` (roaming). The caller
    /// must still check the payload's inner source address against the peer's networks.
    pub fn open<'a>(
        &mut self,
        now: Instant,
        source: SocketAddr,
        packet: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        let Some(index) = peek_receiver_index(packet) else {
            self.stats.rejected += 1;
            return Err(PeerMisbehaved::Truncated {
                needed: 8,
                got: packet.len(),
            }
            .into());
        };
        let matches = |k: &Option<Keypair>| {
            k.as_ref()
                .is_some_and(|k| k.session.local_index() == index && k.expires > now)
        };
        let (slot, is_current, is_next) = if matches(&self.current) {
            (&mut self.current, true, false)
        } else if matches(&self.next) {
            (&mut self.next, false, true)
        } else if matches(&self.previous) {
            (&mut self.previous, false, false)
        } else {
            self.stats.rejected += 1;
            return Err(PeerMisbehaved::UnexpectedRecord("no live session for this index").into());
        };
        let Some(keypair) = slot.as_mut() else {
            return Err(PeerMisbehaved::UnexpectedRecord("no live session for this index").into());
        };
        let payload = match keypair.session.open_in_place(now, packet) {
            Ok(p) => p,
            Err(e) => {
                // Forgeries count against the key; past its threshold the key is replaced
                // by a new handshake (never an outage: sealing goes on meanwhile).
                let rekey = !is_next && keypair.session.needs_rekey();
                self.stats.rejected += 1;
                if rekey {
                    self.want_initiation_now();
                }
                return Err(e);
            }
        };
        keypair.confirmed.get_or_insert(now);
        let mut under_current = is_current;
        if is_next {
            if self.promotes_next() {
                if let Some(next) = self.next.take() {
                    self.install_current(now, next);
                }
                under_current = true;
            } else if let Some(next) = self.next.as_mut() {
                // A crossing handshake that lost: it opens what the peer sealed before it
                // moved to ours, for the grace period.
                next.expires = next
                    .expires
                    .min(now.checked_add(self.local.timing.grace).unwrap_or(now));
            }
        }
        self.endpoint = Some(source);
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += payload.len() as u64;
        if under_current {
            // Only the current session proves the peer can read what we send: packets
            // under a superseded one leave the new-handshake timer running.
            self.set(Timer::NewHandshake, None);
        }
        if !payload.is_empty() {
            self.arm_if_idle(
                Timer::Keepalive,
                now.checked_add(self.local.timing.keepalive),
            );
        }
        Ok(payload)
    }

    /// The counters.
    pub fn stats(&self) -> PeerStats {
        self.stats
    }

    /// A snapshot for `vpn show`, as of `now`.
    pub fn status(&self, now: Instant) -> PeerStatus {
        PeerStatus {
            public_key: self.public_key,
            endpoint: self.endpoint,
            last_handshake: self
                .last_handshake
                .map(|t| now.saturating_duration_since(t)),
            epoch: self.current.as_ref().map(|k| k.session.epoch()),
            send_key: self.current.as_ref().map(|k| k.session.send_fingerprint()),
            previous_kept: self.previous.is_some(),
            handshaking: self.pending.is_some(),
            stats: self.stats,
        }
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &self.public_key.fingerprint())
            .field("endpoint", &self.endpoint)
            .field("has_session", &self.current.is_some())
            .field("handshaking", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}
