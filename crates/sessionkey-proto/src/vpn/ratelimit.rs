//! Handshake rate limiting: a load meter that says when to demand cookies, and token
//! buckets per source address for the handshakes that passed the cookie check
//! (docs/PROTOCOL.md section 12.4; WireGuard's `ratelimiter.c` numbers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshake messages per second, per source address, once under load (WireGuard: 20).
pub const PACKETS_PER_SECOND: u64 = 20;
/// Burst allowed per source address (WireGuard: 5).
pub const PACKETS_BURST: u64 = 5;
/// Source addresses tracked at most; beyond, new addresses are refused until idle ones age
/// out. Entries are made only for senders that proved their address with a cookie.
pub const MAX_ENTRIES: usize = 8192;

const IDLE: Duration = Duration::from_secs(1);

/// Token buckets keyed by source address (an IPv6 address by its /64, as one host usually
/// holds a whole /64).
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<[u8; 16], (Instant, u64)>,
    last_sweep: Option<Instant>,
    nanos_per_token: u64,
    burst_nanos: u64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&v4.octets());
            k[4] = 4;
            k
        }
        IpAddr::V6(v6) => {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&v6.octets()[..8]);
            k[8] = 6;
            k
        }
    }
}

impl RateLimiter {
    /// An empty limiter with WireGuard's numbers ([`PACKETS_PER_SECOND`], [`PACKETS_BURST`]).
    pub fn new() -> Self {
        Self::with_rate(PACKETS_PER_SECOND, PACKETS_BURST)
    }

    /// An empty limiter allowing `per_second` a second from each source, `burst` at once.
    pub fn with_rate(per_second: u64, burst: u64) -> Self {
        let nanos_per_token = 1_000_000_000 / per_second.clamp(1, 1_000_000_000);
        Self {
            buckets: HashMap::new(),
            last_sweep: None,
            nanos_per_token,
            burst_nanos: nanos_per_token.saturating_mul(burst.max(1)),
        }
    }

    /// Whether a handshake message from `ip` may be processed at `now`; takes a token.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        // An entry idle this long has its whole burst back: forgetting it changes nothing.
        let idle = Duration::from_nanos(self.burst_nanos).max(IDLE);
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= idle)
        {
            self.buckets
                .retain(|_, (last, _)| now.saturating_duration_since(*last) < idle);
            self.last_sweep = Some(now);
        }
        let k = key(ip);
        let room = self.buckets.len() < MAX_ENTRIES;
        match self.buckets.get_mut(&k) {
            Some((last, tokens)) => {
                let elapsed = now.saturating_duration_since(*last).as_nanos();
                let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
                *tokens = tokens.saturating_add(elapsed).min(self.burst_nanos);
                *last = now;
                if *tokens >= self.nanos_per_token {
                    *tokens -= self.nanos_per_token;
                    true
                } else {
                    false
                }
            }
            None if room => {
                self.buckets
                    .insert(k, (now, self.burst_nanos - self.nanos_per_token));
                true
            }
            None => false,
        }
    }

    /// Source addresses tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Decides when the responder is under load and must demand cookies: when more than
/// `threshold` handshake messages arrived within one second, or the caller's queue of
/// handshake messages waiting is long; the state lasts one second after the last reason
/// (WireGuard's `UNDER_LOAD_AFTER_TIME`).
#[derive(Debug)]
pub struct LoadMeter {
    threshold: u32,
    window_start: Option<Instant>,
    count: u32,
    until: Option<Instant>,
}

/// Handshake messages per second above which the responder is under load, by default.
/// A responder here completes thousands of hybrid handshakes per second; genuine peers
/// send one every two minutes each.
pub const DEFAULT_LOAD_THRESHOLD: u32 = 128;
/// Waiting handshake messages above which the responder is under load.
pub const QUEUE_LOAD_THRESHOLD: usize = 64;

impl LoadMeter {
    /// A meter that trips above `threshold` handshake messages per second.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold,
            window_start: None,
            count: 0,
            until: None,
        }
    }

    /// Record one handshake message at `now`, with `queued` more waiting behind it; returns
    /// whether the responder is under load.
    pub fn record(&mut self, now: Instant, queued: usize) -> bool {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.count = self.count.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.count = 1;
            }
        }
        if self.count > self.threshold || queued > QUEUE_LOAD_THRESHOLD {
            self.until = now.checked_add(Duration::from_secs(1));
        }
        self.until.is_some_and(|u| now < u)
    }
}

impl Default for LoadMeter {
    fn default() -> Self {
        Self::new(DEFAULT_LOAD_THRESHOLD)
    }
}
