//! The handshake thread: answers and starts handshakes, runs the peers' timers (retransmits,
//! keepalives, rekeys, key expiry), sends the packets kept while a handshake ran, and sweeps
//! receiver indexes no longer used. It is the only thread that does Diffie-Hellman and
//! ML-KEM work, so a handshake flood cannot stall the data threads; the cookie checks in
//! front of that work keep the flood cheap ([`HandshakeGate`]).
//!
//! It sleeps until the earliest deadline of all peers ([`TimerWake`](super::device::TimerWake)),
//! which the data threads bring nearer (and wake it) when they arm a timer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::record::datagram::HEADER_LEN;
use sessionkey_proto::vpn::handshake::read_initiation;
use sessionkey_proto::vpn::message::{self, Message, COOKIE_REPLY_LEN, MAX_HANDSHAKE_LEN};
use sessionkey_proto::vpn::ratelimit::DEFAULT_LOAD_THRESHOLD;
use sessionkey_proto::vpn::{HandshakeGate, Screen, SealError};

use super::datapath::{flush_staged, slot_len, Job};
use super::device::{unix_nanos, Device, PeerSlot, PeerState, Table};

/// Logs a repeated event at debug level at most once a second, with its count.
struct Throttle(Option<Instant>);

impl Throttle {
    fn log(&mut self, now: Instant, counter: &AtomicU64, what: impl FnOnce(u64) -> String) {
        if self
            .0
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.0 = Some(now);
            tracing::debug!("{}", what(counter.load(Ordering::Relaxed)));
        }
    }
}

struct Handshaker<'a> {
    dev: &'a Device,
    gate: HandshakeGate,
    rng: SystemRandom,
    out: Vec<u8>,
    reply: [u8; COOKIE_REPLY_LEN],
    seal_buf: Vec<u8>,
    unknown_peer_log: Throttle,
    bad_mac_log: Throttle,
    failed_log: Throttle,
}

/// Run until the device stops or the queue closes.
pub(crate) fn run(dev: &Device, jobs: Receiver<Job>) -> Result<(), sessionkey_proto::Error> {
    let mut h = Handshaker {
        dev,
        gate: HandshakeGate::new(dev.identity.public_key(), DEFAULT_LOAD_THRESHOLD)?,
        rng: SystemRandom,
        out: vec![0u8; MAX_HANDSHAKE_LEN],
        reply: [0u8; COOKIE_REPLY_LEN],
        seal_buf: vec![0u8; slot_len(dev.mtu)],
        unknown_peer_log: Throttle(None),
        bad_mac_log: Throttle(None),
        failed_log: Throttle(None),
    };
    let mut next_sweep = Instant::now() + Duration::from_secs(1);
    h.scan(Instant::now());
    while !dev.stopping() {
        let now = Instant::now();
        // The shared deadline: data threads bring it nearer and wake us when they do.
        let wake_at = dev.timers.get().map_or(next_sweep, |d| d.min(next_sweep));
        let wait = wake_at
            .saturating_duration_since(now)
            .min(Duration::from_millis(500));
        let job = jobs.recv_timeout(wait);
        let now = Instant::now();
        let woken = matches!(job, Ok(Job::Wake));
        match job {
            Ok(Job::Message { bytes, from }) => {
                dev.queued.fetch_sub(1, Ordering::Relaxed);
                let table = dev.table();
                if let Some((peer, slot)) = h.handle_message(&table, now, &bytes, from) {
                    if let Some(t) = h.service(peer, slot, now) {
                        dev.timers.arm(t);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(Job::Wake) => {}
        }
        // A wake-up (a peer wants a handshake or a keepalive, or a nearer deadline), a
        // deadline that came nearer, or one that passed: look at every peer.
        if woken || dev.timers.take_rescan() || dev.timers.get().is_some_and(|d| d <= now) {
            h.scan(now);
        }
        if now >= next_sweep {
            dev.sweep_indexes();
            next_sweep = now + Duration::from_secs(1);
        }
    }
    Ok(())
}

/// Handshakes without a response after which a DNS endpoint is resolved again (about 15 s
/// with the default backoff: 1 + 2 + 4 + 8 s).
const RESOLVE_AFTER_ATTEMPTS: u32 = 4;
/// At most this often per peer.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// A peer configured with a DNS name whose handshakes keep failing (or gave up): resolve
/// the name again, on its own thread (a resolver can block for seconds), and point the
/// peer at the new address if it changed (the endpoint's host may have moved, as
/// wg-quick's reresolve-dns does).
fn maybe_resolve_again(slot: &Arc<PeerSlot>, st: &mut PeerState, gave_up: bool, now: Instant) {
    let Some(host) = st.endpoint_host.clone() else {
        return;
    };
    let failing = gave_up || st.peer.handshake_attempts() >= RESOLVE_AFTER_ATTEMPTS;
    let due = st
        .resolved_at
        .is_none_or(|t| now.saturating_duration_since(t) >= RESOLVE_INTERVAL);
    if !failing || !due {
        return;
    }
    st.resolved_at = Some(now);
    let slot = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("sk-vpn-dns".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            match host.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(addr)) => {
                    let mut st = slot.lock();
                    if st.peer.endpoint() != Some(addr) {
                        tracing::info!(
                            "peer {}: {host} now resolves to {addr}; using it",
                            slot.public_key.fingerprint()
                        );
                        st.peer.set_endpoint(addr);
                    }
                }
                Ok(None) => tracing::debug!("{host} resolves to no address"),
                Err(e) => tracing::debug!("cannot resolve {host} again: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("cannot start a resolver thread: {e}");
    }
}

pub(crate) fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Handshaker<'_> {
    /// Service every peer and publish their earliest deadline.
    fn scan(&mut self, now: Instant) {
        let mut next = None;
        let table = self.dev.table();
        for (i, e) in table.entries.iter().enumerate() {
            if let Some(e) = e {
                next = min_opt(next, self.service(i, &e.slot, now));
            }
        }
        self.dev.timers.set(next);
    }

    /// Run peer `i`'s timers and send what it wants; returns its next deadline. Runs again
    /// when sending (a kept packet, a keepalive) made the peer want a handshake, so that
    /// one leaves now rather than at the next deadline.
    fn service(&mut self, i: usize, slot: &Arc<PeerSlot>, now: Instant) -> Option<Instant> {
        for _ in 0..3 {
            if !self.service_once(i, slot, now) {
                break;
            }
        }
        slot.lock().peer.poll_timeout()
    }

    /// One pass of [`service`](Self::service); returns whether the peer wants an
    /// initiation again.
    fn service_once(&mut self, i: usize, slot: &Arc<PeerSlot>, now: Instant) -> bool {
        let dev = self.dev;
        let wants_initiation = {
            let mut st = slot.lock();
            st.peer.handle_timeout(now);
            let gave_up = st.peer.take_gave_up();
            maybe_resolve_again(slot, &mut st, gave_up, now);
            if gave_up {
                let dropped = st.staged.len() as u64;
                st.staged.clear();
                dev.counters
                    .staged_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                tracing::debug!(
                    "peer {}: no handshake response for 90 s; dropped {dropped} waiting packets",
                    slot.public_key.fingerprint()
                );
            }
            st.peer.wants_initiation()
        };
        if wants_initiation {
            // The index table is never taken while a peer is locked.
            let index = dev.fresh_index(i);
            let mut st = slot.lock();
            match st
                .peer
                .create_initiation(now, unix_nanos(), index, &mut self.rng, &mut self.out)
            {
                Ok(Some(sent)) => {
                    drop(st);
                    tracing::debug!(
                        "peer {}: handshake initiation to {}",
                        slot.public_key.fingerprint(),
                        sent.endpoint
                    );
                    dev.udp.send(sent.endpoint, &self.out[..sent.len], None);
                }
                Ok(None) => tracing::debug!(
                    "peer {}: no endpoint known; waiting for it to reach us",
                    slot.public_key.fingerprint()
                ),
                Err(e) => tracing::warn!(
                    "peer {}: cannot start a handshake: {e}",
                    slot.public_key.fingerprint()
                ),
            }
        }
        let mut st = slot.lock();
        // Packets kept during the handshake, then a keepalive if still wanted.
        flush_staged(dev, &mut st, now, &mut self.seal_buf);
        if st.peer.wants_keepalive() {
            match st.peer.seal(now, &mut self.seal_buf[..HEADER_LEN + 16], 0) {
                Ok((n, to)) => dev.udp.send(to, &self.seal_buf[..n], None),
                Err(SealError::NoSession) => {}
                Err(e) => tracing::debug!("keepalive not sealed: {e}"),
            }
        }
        st.peer.wants_initiation()
    }

    /// Handle one handshake message; returns the peer it concerned, if any.
    fn handle_message<'t>(
        &mut self,
        table: &'t Table,
        now: Instant,
        bytes: &[u8],
        from: SocketAddr,
    ) -> Option<(usize, &'t Arc<PeerSlot>)> {
        let dev = self.dev;
        let Ok(msg) = message::parse(bytes) else {
            dev.count(&dev.counters.malformed);
            return None;
        };
        let sender = match &msg {
            Message::Initiation(m) => m.sender_index,
            Message::Response(m) => m.sender_index,
            // The receiving thread handles those itself.
            Message::CookieReply(_) | Message::Data => return None,
        };
        let queued = dev.queued.load(Ordering::Relaxed);
        match self.gate.screen(
            now,
            &mut self.rng,
            bytes,
            from,
            sender,
            queued,
            &mut self.reply,
        ) {
            Ok(Screen::Proceed) => {}
            Ok(Screen::SendCookie) => {
                dev.count(&dev.counters.cookies_sent);
                dev.udp.send(from, &self.reply, None);
                return None;
            }
            Ok(Screen::BadMac) => {
                dev.count(&dev.counters.bad_mac);
                self.bad_mac_log.log(now, &dev.counters.bad_mac, |n| {
                    format!("handshake message with a wrong mac1 from {from} (not for our key; {n} so far)")
                });
                return None;
            }
            Ok(Screen::RateLimited) => {
                dev.count(&dev.counters.rate_limited);
                return None;
            }
            Err(e) => {
                tracing::debug!("handshake gate: {e}");
                return None;
            }
        }
        match msg {
            Message::Initiation(init) => {
                let read = match read_initiation(&dev.identity, &init, !dev.hybrid) {
                    Ok(r) => r,
                    Err(e) => {
                        dev.count(&dev.counters.handshake_failed);
                        self.failed_log
                            .log(now, &dev.counters.handshake_failed, |n| {
                                format!("handshake initiation from {from} failed: {e} ({n} so far)")
                            });
                        return None;
                    }
                };
                let Some((peer, slot)) = table
                    .by_key
                    .get(&read.initiator)
                    .and_then(|&id| Some((id, table.peer(id)?)))
                else {
                    dev.count(&dev.counters.unknown_peer);
                    let who = read.initiator;
                    self.unknown_peer_log
                        .log(now, &dev.counters.unknown_peer, |n| {
                            format!(
                                "handshake from unknown peer {} at {from} ignored ({n} so far); \
                             to admit it, add a [[peer]] with public_key = \"{}\"",
                                who.fingerprint(),
                                who.to_base64()
                            )
                        });
                    return None;
                };
                let index = dev.fresh_index(peer);
                let mut st = slot.lock();
                match st
                    .peer
                    .accept_initiation(now, read, from, index, &mut self.out)
                {
                    Ok(n) => {
                        drop(st);
                        dev.udp.send(from, &self.out[..n], None);
                        tracing::debug!(
                            "peer {}: handshake answered ({from})",
                            slot.public_key.fingerprint()
                        );
                    }
                    Err(e) => {
                        drop(st);
                        dev.count(&dev.counters.handshake_failed);
                        self.failed_log
                            .log(now, &dev.counters.handshake_failed, |n| {
                                format!("initiation from {from} refused: {e} ({n} so far)")
                            });
                    }
                }
                Some((peer, slot))
            }
            Message::Response(resp) => {
                let Some((peer, slot)) = dev
                    .peer_of_index(resp.receiver_index)
                    .and_then(|id| Some((id, table.peer(id)?)))
                else {
                    dev.count(&dev.counters.unknown_index);
                    return None;
                };
                let result = slot.lock().peer.handle_response(now, &resp, from);
                match result {
                    Ok(()) => tracing::debug!(
                        "peer {}: handshake complete ({from})",
                        slot.public_key.fingerprint()
                    ),
                    Err(e) => {
                        dev.count(&dev.counters.handshake_failed);
                        self.failed_log
                            .log(now, &dev.counters.handshake_failed, |n| {
                                format!(
                                "handshake response from {from} failed: {e} ({n} so far); do both \
                                 sides have the same preshared_key and each other's public key?"
                            )
                            });
                    }
                }
                Some((peer, slot))
            }
            Message::CookieReply(_) | Message::Data => None,
        }
    }
}
