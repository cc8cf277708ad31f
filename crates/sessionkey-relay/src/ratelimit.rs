//! Token buckets for bundle requests, per requester and per (requester, target): a client
//! cannot drain another device's one-time prekeys faster than the buckets refill.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests allowed in a burst.
    pub burst: u32,
    /// One request more every this long.
    pub refill: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets keyed by string; keys whose bucket is full again are forgotten when the table
/// grows large.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

const PRUNE_ABOVE: usize = 100_000;

impl RateLimiter {
    /// Buckets of `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token from `key`'s bucket at `now`; `false` if it is empty.
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        let per_sec = 1.0 / self.rate.refill.as_secs_f64().max(1e-9);
        let burst = f64::from(self.rate.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + refilled).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(Rate {
            burst: 3,
            refill: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.allow("a", t0)));
        assert!(!rl.allow("a", t0));
        assert!(rl.allow("b", t0), "buckets are per key");
        assert!(!rl.allow("a", t0 + Duration::from_secs(9)));
        assert!(rl.allow("a", t0 + Duration::from_secs(11)));
        assert!(!rl.allow("a", t0 + Duration::from_secs(11)));
    }
}
