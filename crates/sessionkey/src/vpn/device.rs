//! The state the VPN's threads share: the TUN device, the UDP socket, the peers (each behind
//! its own lock), the routing table, the receiver-index table and the counters.
//!
//! Lock order: the index table may be held while locking a peer (only the index sweep
//! does); a peer's lock is never held while taking the index table. The data threads take
//! one lock at a time.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use sessionkey_proto::crypto::{SecureRandom, SystemRandom};
use sessionkey_proto::keys::{Identity, PublicKey};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::{AllowedIps, Cidr, Local, Mac1Verifier, Peer, PeerConfig, Timing};
use tun_rs::{InterruptEvent, SyncDevice};

use super::config::VpnConfig;
use super::udp::Udp;
use super::VpnError;

/// Packets kept per peer while its handshake runs (WireGuard keeps 128 too).
pub(crate) const MAX_STAGED: usize = 128;

/// A peer's lock-protected state.
pub(crate) struct PeerState {
    pub(crate) peer: Peer,
    /// Packets waiting for a session.
    pub(crate) staged: VecDeque<Vec<u8>>,
}

/// A peer and what does not change.
pub(crate) struct PeerSlot {
    pub(crate) state: Mutex<PeerState>,
    pub(crate) public_key: PublicKey,
    pub(crate) allowed_ips: Vec<Cidr>,
    /// Whether a pre-shared key is configured (shown, never the key).
    pub(crate) has_psk: bool,
    /// The persistent keepalive interval, for `vpn show`.
    pub(crate) persistent_keepalive: Option<Duration>,
}

impl PeerSlot {
    /// The state, even if a thread panicked while holding it (the state machine stays
    /// consistent: every method leaves it valid).
    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Events counted across the interface (shown by `vpn show`).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $($(#[$doc])* pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn to_json(&self) -> Value {
                json!({ $(stringify!($name): self.$name.load(Ordering::Relaxed),)* })
            }
        }
    };
}

counters!(
    /// Handshakes from a static key that is no configured peer.
    unknown_peer,
    /// Packets for a receiver index no session has.
    unknown_index,
    /// Handshake messages with a wrong mac1 (dropped in the receiving thread, uncopied).
    bad_mac,
    /// Cookie replies that did not open or were addressed to no handshake of ours.
    cookie_refused,
    /// Cookie replies sent (under load).
    cookies_sent,
    /// Handshake messages refused by the per-address rate limit.
    rate_limited,
    /// Handshake messages that failed (Noise, replay, flood).
    handshake_failed,
    /// Decrypted packets whose inner source is not the sending peer's.
    spoofed_source,
    /// Outgoing packets whose destination no peer's allowed IPs hold.
    no_route,
    /// Outgoing packets to a peer whose endpoint is unknown.
    no_endpoint,
    /// Packets dropped while waiting for a handshake (queue full or gave up).
    staged_dropped,
    /// Handshake messages dropped because the handshake queue was full.
    handshake_queue_full,
    /// Datagrams of no known type.
    malformed,
    /// Data packets that failed to open (replay, forgery, expired key).
    rejected,
);

/// Everything the threads share.
pub(crate) struct Device {
    pub(crate) name: String,
    pub(crate) identity: Arc<Identity>,
    pub(crate) hybrid: bool,
    pub(crate) suite: Suite,
    pub(crate) mtu: u16,
    pub(crate) addresses: Vec<Cidr>,
    pub(crate) tun: SyncDevice,
    pub(crate) tun_interrupt: InterruptEvent,
    pub(crate) udp: Udp,
    pub(crate) peers: Vec<PeerSlot>,
    pub(crate) by_key: HashMap<PublicKey, usize>,
    pub(crate) routes: AllowedIps<usize>,
    pub(crate) indexes: RwLock<HashMap<u32, usize>>,
    pub(crate) counters: Counters,
    /// Handshake messages waiting in the handshake thread's queue.
    pub(crate) queued: AtomicUsize,
    /// The mac1 check the receiving thread runs before copying a handshake message.
    pub(crate) mac1: Mac1Verifier,
    /// The earliest peer deadline, which any thread can bring nearer.
    pub(crate) timers: TimerWake,
    stop: AtomicBool,
    started: SystemTime,
}

impl Device {
    /// Create the interface and the socket, and the peers from `config`.
    pub(crate) fn new(config: VpnConfig) -> Result<Self, VpnError> {
        let now = Instant::now();
        let udp = Udp::bind(config.listen_port).map_err(|e| VpnError::Udp {
            port: config.listen_port,
            source: e,
        })?;
        let tun = super::tun::create(&config.name, &config.addresses, config.mtu, config.offload)?;
        let tun_interrupt = InterruptEvent::new().map_err(VpnError::Io)?;
        let local = Local {
            identity: config.identity.clone(),
            suite: config.suite,
            hybrid: config.hybrid,
            timing: Timing::with_rekey_interval(config.rekey_interval),
        };
        let mut peers = Vec::new();
        let mut by_key = HashMap::new();
        let mut routes = AllowedIps::new();
        for (i, p) in config.peers.into_iter().enumerate() {
            for net in &p.allowed_ips {
                if let Some(other) = routes.insert(*net, i) {
                    if other != i {
                        tracing::warn!(
                            "allowed_ips {net} of peer {} also belonged to peer {}; the later peer gets it",
                            i + 1,
                            other + 1
                        );
                    }
                }
            }
            by_key.insert(p.public_key, i);
            let (has_psk, persistent_keepalive) = (p.psk.is_some(), p.persistent_keepalive);
            let peer = Peer::new(
                local.clone(),
                PeerConfig {
                    public_key: p.public_key,
                    psk: p.psk,
                    endpoint: p.endpoint,
                    persistent_keepalive: p.persistent_keepalive,
                },
                now,
            )
            .map_err(VpnError::Protocol)?;
            peers.push(PeerSlot {
                state: Mutex::new(PeerState {
                    peer,
                    staged: VecDeque::new(),
                }),
                public_key: p.public_key,
                allowed_ips: p.allowed_ips,
                has_psk,
                persistent_keepalive,
            });
        }
        Ok(Self {
            name: config.name,
            identity: config.identity.clone(),
            hybrid: config.hybrid,
            suite: config.suite,
            mtu: config.mtu,
            addresses: config.addresses,
            tun,
            tun_interrupt,
            udp,
            peers,
            by_key,
            routes,
            indexes: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            queued: AtomicUsize::new(0),
            mac1: Mac1Verifier::new(config.identity.public_key()),
            timers: TimerWake::new(now),
            stop: AtomicBool::new(false),
            started: SystemTime::now(),
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ask every thread to stop, and wake the one blocked on the TUN device.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.tun_interrupt.trigger();
    }

    pub(crate) fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The peer that owns receiver index `index`.
    pub(crate) fn peer_of_index(&self, index: u32) -> Option<usize> {
        self.indexes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .copied()
    }

    /// A fresh random receiver index for peer `peer`, registered at once.
    pub(crate) fn fresh_index(&self, peer: usize) -> u32 {
        let mut map = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut b = [0u8; 4];
            if SystemRandom.fill(&mut b).is_err() {
                // aws-lc's generator does not fail in practice; fall back to a counter.
                b = (map.len() as u32 + 1).to_be_bytes();
            }
            let index = u32::from_be_bytes(b);
            if index != 0 && !map.contains_key(&index) {
                map.insert(index, peer);
                return index;
            }
        }
    }

    /// Forget indexes no session or handshake uses any more.
    pub(crate) fn sweep_indexes(&self) {
        let mut map = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|index, peer| {
            self.peers
                .get(*peer)
                .is_some_and(|slot| slot.lock().peer.owns_index(*index))
        });
    }

    /// What `vpn show` prints: public keys, fingerprints and counters, never keys.
    pub(crate) fn snapshot(&self) -> Value {
        let now = Instant::now();
        let wall = SystemTime::now();
        let peers: Vec<Value> = self
            .peers
            .iter()
            .map(|slot| {
                let st = slot.lock();
                let s = st.peer.status(now);
                json!({
                    "public_key": s.public_key.to_base64(),
                    "fingerprint": s.public_key.fingerprint().to_string(),
                    "endpoint": s.endpoint.map(|e: SocketAddr| e.to_string()),
                    "allowed_ips": slot.allowed_ips.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "latest_handshake_secs_ago": s.last_handshake.map(|d| d.as_secs_f64()),
                    // As `wg show dump`: seconds since the Unix epoch, 0 for never.
                    "latest_handshake_unix": s.last_handshake
                        .and_then(|ago| wall.checked_sub(ago))
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                    "preshared_key": slot.has_psk,
                    "persistent_keepalive_secs": slot.persistent_keepalive.map(|d| d.as_secs()),
                    "epoch": s.epoch,
                    "send_key": s.send_key.map(|f| f.short()),
                    "previous_key_kept": s.previous_kept,
                    "handshaking": s.handshaking,
                    "handshakes": s.stats.handshakes,
                    "initiations_sent": s.stats.initiations_sent,
                    "tx_bytes": s.stats.tx_bytes,
                    "tx_packets": s.stats.tx_packets,
                    "rx_bytes": s.stats.rx_bytes,
                    "rx_packets": s.stats.rx_packets,
                    "rejected": s.stats.rejected,
                    "responses_refused": s.stats.responses_refused,
                    "cookie_replies_refused": s.stats.cookie_replies_refused,
                    "staged": st.staged.len(),
                })
            })
            .collect();
        let uptime = SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default()
            .as_secs();
        json!({
            "interface": self.name,
            "pid": std::process::id(),
            "public_key": self.identity.public_key().to_base64(),
            "fingerprint": self.identity.public_key().fingerprint().to_string(),
            "listen_port": self.udp.port(),
            "addresses": self.addresses.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "mtu": self.mtu,
            "suite": self.suite.name(),
            "hybrid": self.hybrid,
            "offload": { "tun": self.tun.tcp_gso(), "udp_gso_segments": self.udp.max_gso_segments(),
                         "udp_gro_segments": self.udp.gro_segments() },
            "udp_recv_buffer": self.udp.recv_buffer(),
            "uptime_secs": uptime,
            "peers": peers,
            "counters": self.counters.to_json(),
        })
    }
}

/// Wall-clock nanoseconds since the Unix epoch, for initiation timestamps.
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The earliest deadline of any peer's timers, shared by the threads: the data threads arm
/// timers (passive keepalive after receiving, new handshake after sending) and bring this
/// nearer; the handshake thread sleeps until it and is woken when it comes nearer.
///
/// Deadlines are nanoseconds since an origin, in one atomic (`u64::MAX`: none). A data
/// thread that brings the deadline nearer also raises `rescan`, so a full scan by the
/// handshake thread that overwrote it with a later value is followed by another.
#[derive(Debug)]
pub(crate) struct TimerWake {
    origin: Instant,
    next: AtomicU64,
    rescan: AtomicBool,
}

impl TimerWake {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            next: AtomicU64::new(u64::MAX),
            rescan: AtomicBool::new(false),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A peer's earliest deadline is now `at`. Returns whether it is nearer than what the
    /// handshake thread sleeps until: then the caller wakes it (`Job::Wake`). Costs one
    /// relaxed load when it is not (the common case, per packet).
    pub(crate) fn arm(&self, at: Instant) -> bool {
        let n = self.nanos(at);
        if n >= self.next.load(Ordering::Relaxed) {
            return false;
        }
        let before = self.next.fetch_min(n, Ordering::AcqRel);
        if n < before {
            self.rescan.store(true, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// The handshake thread scanned every peer: their earliest deadline is `at`.
    pub(crate) fn set(&self, at: Option<Instant>) {
        let n = at.map_or(u64::MAX, |t| self.nanos(t));
        self.next.store(n, Ordering::Release);
    }

    /// The earliest deadline known.
    pub(crate) fn get(&self) -> Option<Instant> {
        match self.next.load(Ordering::Acquire) {
            u64::MAX => None,
            n => Some(self.origin + Duration::from_nanos(n)),
        }
    }

    /// Whether a thread brought the deadline nearer since the last call.
    pub(crate) fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::TimerWake;

    #[test]
    fn only_a_nearer_deadline_wakes_the_handshake_thread() {
        let t0 = std::time::Instant::now();
        let w = TimerWake::new(t0);
        assert_eq!(w.get(), None);
        assert!(
            w.arm(t0 + Duration::from_secs(10)),
            "a first deadline wakes"
        );
        assert!(w.take_rescan());
        assert!(!w.arm(t0 + Duration::from_secs(15)), "a later one does not");
        assert!(!w.take_rescan());
        assert!(w.arm(t0 + Duration::from_secs(5)), "a nearer one does");
        assert_eq!(w.get(), Some(t0 + Duration::from_secs(5)));
        // A full scan that missed the nearer deadline is followed by another (rescan).
        w.set(Some(t0 + Duration::from_secs(20)));
        assert!(w.take_rescan());
        assert!(!w.take_rescan());
        w.set(None);
        assert_eq!(w.get(), None);
    }
}
