//! The state the VPN's threads share: the TUN device, the UDP socket, the peers (each behind
//! its own lock), the routing table, the receiver-index table and the counters.
//!
//! Lock order: the index table may be held while locking a peer (only the index sweep
//! does); a peer's lock is never held while taking the index table. The data threads take
//! one lock at a time.
//!
//! The peers and their routes are a [`Table`] behind an `Arc`, replaced whole by runtime
//! changes (`vpn set`, `vpn syncconf`): readers take a snapshot once per batch, and a
//! peer that stays keeps its `PeerSlot` (its sessions and kept packets) across changes.
//! Peer ids are positions in the table; a removed peer leaves an empty place, so ids in
//! the index table never point to another peer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use sessionkey_proto::crypto::{SecureRandom, SystemRandom};
use sessionkey_proto::keys::{Identity, Psk, PublicKey};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::{AllowedIps, Cidr, Local, Mac1Verifier, Peer, PeerConfig, Timing};
use tun_rs::{InterruptEvent, SyncDevice};

use super::config::VpnConfig;
use super::routes::RoutePolicy;
use super::udp::Udp;
use super::VpnError;

/// Packets kept per peer while its handshake runs (WireGuard keeps 128 too).
pub(crate) const MAX_STAGED: usize = 128;

/// A peer's lock-protected state.
pub(crate) struct PeerState {
    pub(crate) peer: Peer,
    /// Packets waiting for a session.
    pub(crate) staged: VecDeque<Vec<u8>>,
    /// The endpoint as configured when it is a DNS name, resolved again while handshakes
    /// fail.
    pub(crate) endpoint_host: Option<String>,
    /// When the name was last resolved again.
    pub(crate) resolved_at: Option<Instant>,
}

/// A peer: its lock-protected state and its public key.
pub(crate) struct PeerSlot {
    pub(crate) state: Mutex<PeerState>,
    pub(crate) public_key: PublicKey,
}

/// A peer's place in the [`Table`]: the slot and its configuration as shown.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) slot: Arc<PeerSlot>,
    pub(crate) allowed_ips: Vec<Cidr>,
    /// Whether a pre-shared key is configured (shown, never the key).
    pub(crate) has_psk: bool,
    /// The persistent keepalive interval, for `vpn show`.
    pub(crate) persistent_keepalive: Option<Duration>,
}

/// The peers and the routes to them; replaced whole on a change.
#[derive(Default)]
pub(crate) struct Table {
    /// By peer id; `None` where a peer was removed.
    pub(crate) entries: Vec<Option<Entry>>,
    pub(crate) by_key: HashMap<PublicKey, usize>,
    pub(crate) routes: AllowedIps<usize>,
}

impl Table {
    /// The peer with id `id`, if it is still configured.
    pub(crate) fn peer(&self, id: usize) -> Option<&Arc<PeerSlot>> {
        self.entries.get(id)?.as_ref().map(|e| &e.slot)
    }

    /// The peer whose allowed IPs hold `ip` (longest prefix).
    pub(crate) fn route(&self, ip: std::net::IpAddr) -> Option<usize> {
        self.routes.get(ip).copied()
    }

    /// Whether `packet`, opened from peer `id`, has an inner source that peer was given.
    pub(crate) fn inbound_allowed(&self, packet: &[u8], id: usize) -> bool {
        self.routes.inbound_allowed(packet, &id)
    }

    /// A table of `entries`, with its key index and routes rebuilt; a prefix listed by two
    /// peers goes to the later one (with a warning).
    fn build(entries: Vec<Option<Entry>>) -> Self {
        let mut by_key = HashMap::new();
        let mut routes = AllowedIps::new();
        for (i, e) in entries.iter().enumerate() {
            let Some(e) = e else { continue };
            by_key.insert(e.slot.public_key, i);
            for net in &e.allowed_ips {
                if let Some(other) = routes.insert(*net, i) {
                    if other != i {
                        tracing::warn!(
                            "allowed_ips {net} of peer {} also belonged to peer {}; the later \
                             peer gets it",
                            i + 1,
                            other + 1
                        );
                    }
                }
            }
        }
        Self {
            entries,
            by_key,
            routes,
        }
    }
}

/// A change to one peer (`vpn set NAME peer KEY ...`): fields left `None` keep their value.
#[derive(Debug, Default)]
pub struct PeerChange {
    /// The peer's public key; a new key adds a peer.
    pub public_key: Option<PublicKey>,
    /// Remove the peer (its sessions and kept packets go with it).
    pub remove: bool,
    /// Replace its allowed IPs (and so the routes to it).
    pub allowed_ips: Option<Vec<Cidr>>,
    /// Set its endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Set its persistent keepalive (`Some(None)`: off).
    pub persistent_keepalive: Option<Option<Duration>>,
    /// The endpoint as written when it is a DNS name (`syncconf`).
    pub endpoint_host: Option<String>,
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
    table: RwLock<Arc<Table>>,
    /// Serialises changes to the table (readers never wait for it).
    changes: Mutex<()>,
    local: Local,
    /// Where automatic routes go (`routes = "auto"`), and those added.
    route_policy: Option<RoutePolicy>,
    routed: Mutex<BTreeSet<Cidr>>,
    /// The firewall mark of the UDP socket, for `vpn show`.
    pub(crate) fwmark: Option<u32>,
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
    /// When the running peers were loaded: at start, then at each reload.
    loaded: Mutex<SystemTime>,
}

impl Device {
    /// Create the interface and the socket, and the peers from `config`.
    pub(crate) fn new(config: VpnConfig) -> Result<Self, VpnError> {
        let now = Instant::now();
        let udp = Udp::bind(config.listen_port, config.fwmark).map_err(|e| VpnError::Udp {
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
        let mut entries = Vec::new();
        for p in config.peers {
            let host = p.endpoint_host.clone();
            let e = new_entry(
                &local,
                p.public_key,
                p.psk,
                p.endpoint,
                p.persistent_keepalive,
                p.allowed_ips,
                now,
            )
            .map_err(VpnError::Protocol)?;
            e.slot.lock().endpoint_host = host;
            entries.push(Some(e));
        }
        let route_policy = config.routes.then(|| RoutePolicy {
            name: config.name.clone(),
            table: config.table.clone(),
            own: config.addresses.clone(),
        });
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
            table: RwLock::new(Arc::new(Table::build(entries))),
            changes: Mutex::new(()),
            local,
            route_policy,
            routed: Mutex::new(BTreeSet::new()),
            fwmark: config.fwmark,
            indexes: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            queued: AtomicUsize::new(0),
            mac1: Mac1Verifier::new(config.identity.public_key()),
            timers: TimerWake::new(now),
            stop: AtomicBool::new(false),
            started: SystemTime::now(),
            loaded: Mutex::new(SystemTime::now()),
        })
    }

    /// Record a reload of the configuration (shown by `vpn show`).
    pub(crate) fn set_loaded(&self, at: SystemTime) {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = at;
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

    /// Forget indexes no session or handshake uses any more (or whose peer was removed).
    pub(crate) fn sweep_indexes(&self) {
        let table = self.table();
        let mut map = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|index, peer| {
            table
                .peer(*peer)
                .is_some_and(|slot| slot.lock().peer.owns_index(*index))
        });
    }

    /// A snapshot of the peers and routes; take one per batch.
    pub(crate) fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply `edit` to a copy of the table's entries and install the result. Peers that
    /// stay keep their slots (sessions, timers, kept packets).
    fn change(
        &self,
        edit: impl FnOnce(&mut Vec<Option<Entry>>) -> Result<(), String>,
    ) -> Result<(), String> {
        let _one_at_a_time = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = self.table().entries.clone();
        edit(&mut entries)?;
        let table = Arc::new(Table::build(entries));
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table.clone();
        if let Err(e) = self.sync_routes(&table) {
            tracing::warn!("vpn {}: {e}", self.name);
        }
        Ok(())
    }

    /// `routes = "auto"`: add the routes for every peer's allowed IPs (at start).
    pub(crate) fn install_routes(&self) -> Result<(), VpnError> {
        self.sync_routes(&self.table())
    }

    /// Make the routes added those `table`'s allowed IPs want: add the new, delete the
    /// ones no peer holds any more.
    fn sync_routes(&self, table: &Table) -> Result<(), VpnError> {
        let Some(policy) = &self.route_policy else {
            return Ok(());
        };
        let wanted = policy.wanted(table.entries.iter().flatten().flat_map(|e| &e.allowed_ips));
        let mut routed = self.routed.lock().unwrap_or_else(|p| p.into_inner());
        let stale: BTreeSet<Cidr> = routed.difference(&wanted).copied().collect();
        policy.delete(&stale);
        routed.retain(|n| !stale.contains(n));
        let new: BTreeSet<Cidr> = wanted.difference(&routed).copied().collect();
        let added = policy.add(&new)?;
        routed.extend(added);
        Ok(())
    }

    /// Delete the routes added (at down; the kernel would delete them with the device).
    pub(crate) fn remove_routes(&self) {
        if let Some(policy) = &self.route_policy {
            let mut routed = self.routed.lock().unwrap_or_else(|p| p.into_inner());
            policy.delete(&routed);
            routed.clear();
        }
    }

    /// `vpn set`: add, change or remove one peer; the others are untouched.
    pub(crate) fn set_peer(&self, change: PeerChange) -> Result<String, String> {
        let key = change.public_key.ok_or("no peer public key given")?;
        let now = Instant::now();
        let mut what = String::new();
        self.change(|entries| {
            let at = entries
                .iter()
                .position(|e| e.as_ref().is_some_and(|e| e.slot.public_key == key));
            if change.remove {
                let Some(i) = at else {
                    return Err(format!("no peer {} to remove", key.to_base64()));
                };
                entries[i] = None;
                what = format!("peer {} removed", key.fingerprint());
                return Ok(());
            }
            if key == *self.identity.public_key() {
                return Err("this is the interface's own key; give the peer's public key".into());
            }
            match at {
                Some(i) => {
                    let Some(e) = entries[i].as_mut() else {
                        return Err("peer vanished".into());
                    };
                    apply_change(e, &change, now);
                    what = format!("peer {} changed", key.fingerprint());
                }
                None => {
                    let e = new_entry(
                        &self.local,
                        key,
                        None,
                        change.endpoint,
                        change.persistent_keepalive.flatten(),
                        change.allowed_ips.clone().unwrap_or_default(),
                        now,
                    )
                    .map_err(|e| e.to_string())?;
                    entries.push(Some(e));
                    what = format!("peer {} added", key.fingerprint());
                }
            }
            Ok(())
        })?;
        tracing::info!("vpn {}: {what}", self.name);
        Ok(what)
    }

    /// `vpn syncconf`: make the peers those of a configuration file (interface settings
    /// are not changed): add the new, remove the missing, change the rest in place (allowed IPs,
    /// endpoint when the file gives one, keepalive, pre-shared key for the next
    /// handshake) without touching their sessions.
    pub(crate) fn sync_peers(
        &self,
        peers: Vec<super::config::PeerEntry>,
    ) -> Result<String, String> {
        let now = Instant::now();
        let (mut added, mut removed, mut kept) = (0, 0, 0);
        self.change(|entries| {
            let mut wanted: HashMap<PublicKey, super::config::PeerEntry> =
                peers.into_iter().map(|p| (p.public_key, p)).collect();
            for slot in entries.iter_mut() {
                let Some(e) = slot else { continue };
                match wanted.remove(&e.slot.public_key) {
                    None => {
                        *slot = None;
                        removed += 1;
                    }
                    Some(p) => {
                        let change = PeerChange {
                            public_key: Some(p.public_key),
                            remove: false,
                            allowed_ips: Some(p.allowed_ips),
                            endpoint: p.endpoint,
                            persistent_keepalive: Some(p.persistent_keepalive),
                            endpoint_host: p.endpoint_host,
                        };
                        apply_change(e, &change, now);
                        e.has_psk = p.psk.is_some();
                        e.slot.lock().peer.set_psk(p.psk);
                        kept += 1;
                    }
                }
            }
            for p in wanted.into_values() {
                let host = p.endpoint_host.clone();
                let e = new_entry(
                    &self.local,
                    p.public_key,
                    p.psk,
                    p.endpoint,
                    p.persistent_keepalive,
                    p.allowed_ips,
                    now,
                )
                .map_err(|e| e.to_string())?;
                e.slot.lock().endpoint_host = host;
                entries.push(Some(e));
                added += 1;
            }
            Ok(())
        })?;
        let what = format!("{added} peer(s) added, {removed} removed, {kept} kept");
        tracing::info!("vpn {}: syncconf: {what}", self.name);
        Ok(what)
    }

    /// What `vpn show` prints: public keys, fingerprints and counters, never keys.
    pub(crate) fn snapshot(&self) -> Value {
        let now = Instant::now();
        let wall = SystemTime::now();
        let table = self.table();
        let peers: Vec<Value> = table
            .entries
            .iter()
            .flatten()
            .map(|entry| {
                let slot = &entry.slot;
                let st = slot.lock();
                let s = st.peer.status(now);
                json!({
                    "public_key": s.public_key.to_base64(),
                    "fingerprint": s.public_key.fingerprint().to_string(),
                    "endpoint": s.endpoint.map(|e: SocketAddr| e.to_string()),
                    "allowed_ips": entry.allowed_ips.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "latest_handshake_secs_ago": s.last_handshake.map(|d| d.as_secs_f64()),
                    // As `wg show dump`: seconds since the Unix epoch, 0 for never.
                    "latest_handshake_unix": s.last_handshake
                        .and_then(|ago| wall.checked_sub(ago))
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                    "preshared_key": entry.has_psk,
                    "persistent_keepalive_secs": entry.persistent_keepalive.map(|d| d.as_secs()),
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
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .duration_since(SystemTime::UNIX_EPOCH)
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
            "fwmark": self.fwmark,
            "routes": self.routed.lock().unwrap_or_else(|p| p.into_inner())
                .iter().map(ToString::to_string).collect::<Vec<_>>(),
            "uptime_secs": uptime,
            "config_loaded": crate::status::utc_text(loaded),
            "config_loaded_unix": loaded,
            "peers": peers,
            "counters": self.counters.to_json(),
        })
    }
}

/// A new peer's place in the table.
fn new_entry(
    local: &Local,
    public_key: PublicKey,
    psk: Option<Psk>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<Duration>,
    allowed_ips: Vec<Cidr>,
    now: Instant,
) -> Result<Entry, sessionkey_proto::Error> {
    let has_psk = psk.is_some();
    let peer = Peer::new(
        local.clone(),
        PeerConfig {
            public_key,
            psk,
            endpoint,
            persistent_keepalive,
        },
        now,
    )?;
    Ok(Entry {
        slot: Arc::new(PeerSlot {
            state: Mutex::new(PeerState {
                peer,
                staged: VecDeque::new(),
                endpoint_host: None,
                resolved_at: None,
            }),
            public_key,
        }),
        allowed_ips,
        has_psk,
        persistent_keepalive,
    })
}

/// Change an existing peer in place: its sessions go on.
fn apply_change(e: &mut Entry, change: &PeerChange, now: Instant) {
    if let Some(ips) = &change.allowed_ips {
        e.allowed_ips.clone_from(ips);
    }
    let mut st = e.slot.lock();
    if let Some(endpoint) = change.endpoint {
        st.peer.set_endpoint(endpoint);
        st.endpoint_host.clone_from(&change.endpoint_host);
    }
    if let Some(keepalive) = change.persistent_keepalive {
        e.persistent_keepalive = keepalive;
        st.peer.set_persistent_keepalive(now, keepalive);
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
