//! Admission control for servers under abuse, as OpenSSH's `MaxStartups` and
//! `PerSourceMaxStartups` do it: a bound on connections still in their handshake (per
//! tunnel, and per source address), an optional bound on established sessions, accept
//! errors (out of descriptors, buffers, aborted connections) that back off and never end a
//! server, and failure logs that stay a few lines a minute however hard the flood.
//!
//! A connection beyond a bound is reset at once, before any handshake work: an idle flood
//! holds at most [`Limits::max_handshakes`] descriptors, each for at most the handshake
//! timeout, and an authorized client is served as soon as the flood stops.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessionkey_proto::vpn::ratelimit::{RateLimiter, MAX_ENTRIES};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often the summaries of failures are logged.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Failures logged one by one in each [`REPORT_INTERVAL`]; the rest are summarised.
const DETAILED_PER_INTERVAL: u32 = 3;

/// Distinct source addresses counted for a summary (beyond it: "at least").
const MAX_COUNTED_SOURCES: usize = 4096;

/// Descriptors kept back from the pre-authentication bound for the runtime, the listeners,
/// the control socket and the established sessions' targets.
const RESERVED_DESCRIPTORS: u64 = 32;

/// Default of [`Limits::handshakes_per_second_per_source`]: about 5% of a core spent on
/// hybrid handshakes (about 0.25 ms each for the responder), with room for a tunnel client
/// that carries a few hundred application connections at once from one address.
pub const DEFAULT_HANDSHAKE_RATE: u32 = 200;

/// Bounds on a server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections in their handshake at once; beyond it new ones are reset at once.
    pub max_handshakes: usize,
    /// Connections in their handshake at once from one source (an IPv4 address, or an
    /// IPv6 /64).
    pub max_handshakes_per_source: usize,
    /// Established sessions at once; `None`: bounded only by the descriptor limit.
    pub max_connections: Option<usize>,
    /// New handshakes a second from one source (burst: twice as many). A recorded hello
    /// replayed in a loop costs the server a DH and a KEM decapsulation each time, even
    /// though it never opens a session: this bounds what one source can make it spend.
    pub handshakes_per_second_per_source: u32,
}

impl Limits {
    /// The defaults for a process allowed `open_files` descriptors: a quarter of them
    /// (after a reserve) for handshakes, between 4 and 1024, and a quarter of that (at
    /// least 2) per source; established sessions unbounded.
    pub fn for_open_files(open_files: u64) -> Self {
        let usable = open_files.saturating_sub(RESERVED_DESCRIPTORS);
        let max_handshakes = usize::try_from(usable / 4)
            .unwrap_or(usize::MAX)
            .clamp(4, 1024);
        Self {
            max_handshakes,
            max_handshakes_per_source: (max_handshakes / 4).max(2),
            max_connections: None,
            handshakes_per_second_per_source: DEFAULT_HANDSHAKE_RATE,
        }
    }
}

impl Default for Limits {
    /// [`Limits::for_open_files`] of this process's current (soft) limit.
    fn default() -> Self {
        Self::for_open_files(open_files_limit().map_or(1024, |(soft, _)| soft))
    }
}

/// This process's open-files limit: (soft, hard).
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

/// Raise the soft open-files limit to the hard limit (as a server should: every connection
/// is a descriptor). Returns the limit before and after.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{setrlimit, Resource};
    let (soft, hard) = open_files_limit()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    Ok((soft, hard))
}

/// The key that per-source bounds count by: the IPv4 address, or the IPv6 /64 (one host's
/// usual share).
fn source_of(addr: &SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Why a connection was reset before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// [`Limits::max_handshakes`] handshakes were in progress.
    Handshakes(usize),
    /// [`Limits::max_handshakes_per_source`] handshakes from this source were in progress.
    PerSource(usize),
    /// [`Limits::max_connections`] sessions were established.
    Connections(usize),
    /// This source started [`Limits::handshakes_per_second_per_source`] handshakes a
    /// second.
    Rate(u32),
}

impl Refusal {
    /// The limit that refused, as a metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Handshakes(_) => "max_handshakes",
            Self::PerSource(_) => "max_handshakes_per_source",
            Self::Connections(_) => "max_connections",
            Self::Rate(_) => "handshakes_per_second_per_source",
        }
    }
}

impl Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handshakes(n) => write!(f, "{n} handshakes in progress (max_handshakes)"),
            Self::PerSource(n) => write!(
                f,
                "{n} handshakes in progress from this source (max_handshakes_per_source)"
            ),
            Self::Connections(n) => write!(f, "{n} sessions established (max_connections)"),
            Self::Rate(n) => write!(
                f,
                "more than {n} handshakes a second from this source \
                 (handshakes_per_second_per_source)"
            ),
        }
    }
}

/// One server's bounds, shared by its accept loop and its connection tasks.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: Limits,
    handshakes: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    rate: Mutex<RateLimiter>,
    established: Option<Arc<Semaphore>>,
}

/// A connection's place among the handshakes in progress; given back when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    gate: Arc<Gate>,
    source: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.gate.per_source.lock() {
            if let Some(n) = map.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.source);
                }
            }
        }
    }
}

/// An established session's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Gate {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes.max(1))),
            per_source: Mutex::new(HashMap::new()),
            rate: Mutex::new(RateLimiter::with_rate(
                limits.handshakes_per_second_per_source.into(),
                2 * u64::from(limits.handshakes_per_second_per_source),
            )),
            established: limits
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
        })
    }

    /// Admit a new connection to its handshake, or say why not.
    pub(crate) fn admit(self: &Arc<Self>, from: &SocketAddr) -> Result<HandshakeSlot, Refusal> {
        if let Some(sessions) = &self.established {
            if sessions.available_permits() == 0 {
                return Err(Refusal::Connections(
                    self.limits.max_connections.unwrap_or_default(),
                ));
            }
        }
        let rate = self.limits.handshakes_per_second_per_source;
        let mut limiter = self.rate.lock().map_err(|_| Refusal::Rate(rate))?;
        // With the table full (thousands of sources at once) the bounds on handshakes in
        // progress still hold; refusing every new source would lock everyone out.
        if limiter.len() < MAX_ENTRIES && !limiter.allow(std::time::Instant::now(), from.ip()) {
            return Err(Refusal::Rate(rate));
        }
        drop(limiter);
        let source = source_of(from);
        let mut map = self
            .per_source
            .lock()
            .map_err(|_| Refusal::Handshakes(self.limits.max_handshakes))?;
        // The map holds only sources with a handshake in progress (at most
        // max_handshakes entries), so many refused sources cannot grow it.
        if map.get(&source).copied().unwrap_or(0) >= self.limits.max_handshakes_per_source.max(1) {
            return Err(Refusal::PerSource(self.limits.max_handshakes_per_source));
        }
        let permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Handshakes(self.limits.max_handshakes))?;
        *map.entry(source).or_insert(0) += 1;
        drop(map);
        Ok(HandshakeSlot {
            gate: self.clone(),
            source,
            _permit: permit,
        })
    }

    /// Take an established session's place, or say why not.
    pub(crate) fn establish(&self) -> Result<SessionSlot, Refusal> {
        match &self.established {
            None => Ok(SessionSlot(None)),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| SessionSlot(Some(p)))
                .map_err(|_| Refusal::Connections(self.limits.max_connections.unwrap_or_default())),
        }
    }
}

/// A budget for log lines that a peer can cause (a refused key, a refused certificate):
/// at most a few per [`REPORT_INTERVAL`], the rest dropped (the tunnel's summary counts
/// the failed handshakes).
#[derive(Debug, Default)]
pub struct LogBudget {
    window: Mutex<Option<(std::time::Instant, u32)>>,
}

impl LogBudget {
    /// Whether one more line may be logged now.
    pub fn allow(&self) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        match &mut *w {
            Some((start, used)) if now.duration_since(*start) < REPORT_INTERVAL => {
                *used += 1;
                *used <= DETAILED_PER_INTERVAL
            }
            _ => {
                *w = Some((now, 1));
                true
            }
        }
    }
}

/// What happened in the current interval, for the summary.
#[derive(Debug, Default)]
struct Window {
    detailed: u32,
    suppressed: u64,
    failed: u64,
    failed_sources: HashSet<IpAddr>,
    refused: u64,
    refused_sources: HashSet<IpAddr>,
    last_refusal: Option<Refusal>,
    accept_errors: u64,
    last_accept_error: Option<String>,
}

fn count_source(set: &mut HashSet<IpAddr>, from: &SocketAddr) {
    if set.len() < MAX_COUNTED_SOURCES {
        set.insert(from.ip());
    }
}

fn sources(set: &HashSet<IpAddr>) -> String {
    let n = set.len();
    let at_least = if n >= MAX_COUNTED_SOURCES {
        "at least "
    } else {
        ""
    };
    match n {
        1 => "from 1 address".into(),
        n => format!("from {at_least}{} addresses", thousands(n as u64)),
    }
}

/// `1532` as `1,532`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rate-limited logs of a server's failures: the first few of each interval in full, the
/// rest as one summary line per interval
/// ("1,532 failed handshakes from 12 addresses in the last 10 s").
#[derive(Debug)]
pub(crate) struct Reporter {
    tunnel: String,
    window: Mutex<Window>,
    /// Where accept errors are counted for metrics.
    registry: crate::status::Registry,
}

impl Reporter {
    /// A reporter for `tunnel` that also counts accept errors in `registry` (metrics).
    pub(crate) fn new(tunnel: &str, registry: crate::status::Registry) -> Arc<Self> {
        Arc::new(Self {
            tunnel: tunnel.to_string(),
            window: Mutex::new(Window::default()),
            registry,
        })
    }

    /// Whether this event may be logged in full.
    fn detail(w: &mut Window) -> bool {
        if w.detailed < DETAILED_PER_INTERVAL {
            w.detailed += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// A handshake failed (refused key, garbage, timeout, the peer went away).
    pub(crate) fn handshake_failed(&self, from: &SocketAddr, error: &dyn Display) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.failed += 1;
        count_source(&mut w.failed_sources, from);
        if Self::detail(&mut w) {
            tracing::warn!(tunnel = %self.tunnel, remote = %from, "handshake failed: {error}");
        }
    }

    /// A connection was reset before its handshake.
    pub(crate) fn refused(&self, from: &SocketAddr, why: Refusal) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.refused += 1;
        count_source(&mut w.refused_sources, from);
        w.last_refusal = Some(why);
        if Self::detail(&mut w) {
            tracing::warn!(
                tunnel = %self.tunnel,
                remote = %from,
                "connection refused: {why}"
            );
        }
    }

    /// `accept` failed.
    pub(crate) fn accept_failed(&self, error: &io::Error) {
        self.registry.count_accept_error(&self.tunnel);
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.accept_errors += 1;
        w.last_accept_error = Some(accept_hint(error));
        if Self::detail(&mut w) {
            tracing::warn!(tunnel = %self.tunnel, "cannot accept a connection: {}", accept_hint(error));
        }
    }

    /// Log what the interval summarised, and start the next.
    pub(crate) fn flush(&self) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let w = std::mem::take(&mut *w);
        if w.suppressed == 0 {
            // Everything was logged in full already.
            return;
        }
        let secs = REPORT_INTERVAL.as_secs();
        if w.failed > 0 {
            tracing::warn!(
                tunnel = %self.tunnel,
                "{} failed handshakes {} in the last {secs} s",
                thousands(w.failed),
                sources(&w.failed_sources)
            );
        }
        if w.refused > 0 {
            let why = w.last_refusal.map(|r| r.to_string()).unwrap_or_default();
            tracing::warn!(
                tunnel = %self.tunnel,
                "{} connections refused {} in the last {secs} s \
                 (last: {why})",
                thousands(w.refused),
                sources(&w.refused_sources)
            );
        }
        if w.accept_errors > 0 {
            tracing::warn!(
                tunnel = %self.tunnel,
                "{} failed accepts in the last {secs} s (last: {})",
                thousands(w.accept_errors),
                w.last_accept_error.unwrap_or_default()
            );
        }
    }

    /// Flush every [`REPORT_INTERVAL`] until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Ticker {
        let me = self.clone();
        Ticker(tokio::spawn(async move {
            let mut interval = tokio::time::interval(REPORT_INTERVAL);
            interval.tick().await;
            loop {
                interval.tick().await;
                me.flush();
            }
        }))
    }
}

/// Stops a [`Reporter`]'s ticks when dropped.
#[derive(Debug)]
pub(crate) struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn accept_hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::EMFILE) => format!(
            "{e}; the process is out of descriptors (raise `ulimit -n`, or lower \
             max_connections and max_handshakes)"
        ),
        Some(nix::libc::ENFILE) => {
            format!("{e}; the system is out of descriptors (raise fs.file-max)")
        }
        Some(nix::libc::ENOBUFS | nix::libc::ENOMEM) => format!("{e}; out of memory"),
        _ => e.to_string(),
    }
}

/// Accept the next connection; errors are logged (rate-limited) and retried after a pause
/// that grows while they last (10 ms to 1 s), so a server never stops on them.
pub(crate) async fn accept(listener: &TcpListener, report: &Reporter) -> (TcpStream, SocketAddr) {
    let mut pause = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                report.accept_failed(&e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_follow_the_descriptor_limit() {
        let small = Limits::for_open_files(64);
        assert_eq!(small.max_handshakes, 8);
        assert_eq!(small.max_handshakes_per_source, 2);
        assert_eq!(small.max_connections, None);
        assert_eq!(Limits::for_open_files(1024).max_handshakes, 248);
        assert_eq!(Limits::for_open_files(1 << 20).max_handshakes, 1024);
        assert_eq!(Limits::for_open_files(10).max_handshakes, 4);
    }

    #[tokio::test]
    async fn handshakes_are_bounded_in_all_and_per_source() {
        let gate = Gate::new(Limits {
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            max_connections: Some(1),
            handshakes_per_second_per_source: 1000,
        });
        let a1 = gate.admit(&addr("192.0.2.1:1000")).unwrap();
        let a2 = gate.admit(&addr("192.0.2.1:1001")).unwrap();
        assert_eq!(
            gate.admit(&addr("192.0.2.1:1002")).unwrap_err(),
            Refusal::PerSource(2)
        );
        // One IPv6 /64 is one source.
        let b1 = gate.admit(&addr("[2001:db8::1]:1")).unwrap();
        assert_eq!(
            gate.admit(&addr("[2001:db8::2]:1")).unwrap_err(),
            Refusal::Handshakes(3)
        );
        drop(a1);
        let a3 = gate.admit(&addr("192.0.2.1:1003")).unwrap();
        let s1 = gate.establish().unwrap();
        assert_eq!(gate.establish().unwrap_err(), Refusal::Connections(1));
        assert_eq!(
            gate.admit(&addr("192.0.2.9:1")).unwrap_err(),
            Refusal::Connections(1)
        );
        drop(s1);
        assert!(gate.establish().is_ok());
        // Refused sources leave nothing behind; finished handshakes neither.
        for i in 0..100u16 {
            let from = SocketAddr::from(([198, 51, 100, (i % 250) as u8], i));
            assert!(gate.admit(&from).is_err());
        }
        assert_eq!(gate.per_source.lock().unwrap().len(), 2);
        drop((a2, b1, a3));
        assert_eq!(gate.per_source.lock().unwrap().len(), 0);
    }

    #[test]
    fn one_source_cannot_start_handshakes_faster_than_its_rate() {
        // A replayed hello in a loop: each attempt ends at once, so only the rate holds it.
        let gate = Gate::new(Limits {
            handshakes_per_second_per_source: 10,
            ..Limits::for_open_files(1 << 20)
        });
        let admitted = (0..100u16)
            .filter(|i| {
                gate.admit(&addr(&format!("192.0.2.7:{}", 1000 + i)))
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 20, "burst is twice the rate");
        assert_eq!(
            gate.admit(&addr("192.0.2.7:2000")).unwrap_err(),
            Refusal::Rate(10)
        );
        // Another source is not held back by the first.
        assert!(gate.admit(&addr("192.0.2.8:1000")).is_ok());
    }

    #[test]
    fn log_budget_allows_a_few_lines() {
        let budget = LogBudget::default();
        let allowed = (0..100).filter(|_| budget.allow()).count();
        assert_eq!(allowed, DETAILED_PER_INTERVAL as usize);
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1532), "1,532");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
