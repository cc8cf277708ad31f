//! The responder's front door for handshake messages (docs/PROTOCOL.md section 12.4): the
//! cheap checks that run before any Diffie-Hellman, in this order:
//!
//! 1. `mac1` (one HMAC): wrong means the sender does not know our public key; drop.
//! 2. Load: more than a threshold of handshake messages a second, or a long queue.
//! 3. Under load, `mac2` (one more HMAC) against the cookie for the source address; without
//!    it, a cookie reply (one AES-GCM seal) and nothing else.
//! 4. Under load, a token bucket for the (now proven) source address.
//!
//! Nothing is allocated for a message before step 4 passes, and step 4 allocates one small
//! bucket per proven address (bounded). Only then does the caller run the Noise handshake.

use std::net::SocketAddr;
use std::time::Instant;

use crate::crypto::SecureRandom;
use crate::keys::PublicKey;
use crate::Error;

use super::cookie::{CookieChecker, MacVerdict};
use super::message::COOKIE_REPLY_LEN;
use super::ratelimit::{LoadMeter, RateLimiter};

/// What to do with a handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Go on with the handshake.
    Proceed,
    /// Send the cookie reply written into the caller's buffer, and nothing else.
    SendCookie,
    /// Drop the message: its `mac1` is wrong.
    BadMac,
    /// Drop the message: its source address exceeded its rate under load.
    RateLimited,
}

/// The cheap checks before a handshake, with their state: one cookie secret, the load
/// meter, and token buckets for proven addresses.
#[derive(Debug)]
pub struct HandshakeGate {
    checker: CookieChecker,
    limiter: RateLimiter,
    load: LoadMeter,
    under_load: bool,
}

impl HandshakeGate {
    /// A gate for messages to `local`, under load above `load_threshold` handshake messages
    /// per second.
    pub fn new(local: &PublicKey, load_threshold: u32) -> Result<Self, Error> {
        Ok(Self {
            checker: CookieChecker::new(local)?,
            limiter: RateLimiter::new(),
            load: LoadMeter::new(load_threshold),
            under_load: false,
        })
    }

    /// Screen a whole handshake message (initiation or response) from `source`, whose
    /// sender index is `sender_index`, with `queued` more messages waiting. On
    /// [`Screen::SendCookie`], `reply` holds the cookie reply to send to `source`.
    #[allow(clippy::too_many_arguments)]
    pub fn screen(
        &mut self,
        now: Instant,
        rng: &mut dyn SecureRandom,
        message: &[u8],
        source: SocketAddr,
        sender_index: u32,
        queued: usize,
        reply: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Result<Screen, Error> {
        self.under_load = self.load.record(now, queued);
        let verdict = self.checker.check(
            now,
            rng,
            message,
            source,
            sender_index,
            self.under_load,
            reply,
        )?;
        Ok(match verdict {
            MacVerdict::BadMac1 => Screen::BadMac,
            MacVerdict::SendCookie => Screen::SendCookie,
            MacVerdict::Proceed if self.under_load && !self.limiter.allow(now, source.ip()) => {
                Screen::RateLimited
            }
            MacVerdict::Proceed => Screen::Proceed,
        })
    }

    /// Whether the last screened message found the responder under load.
    pub fn under_load(&self) -> bool {
        self.under_load
    }

    /// Source addresses with a token bucket now.
    pub fn tracked_sources(&self) -> usize {
        self.limiter.len()
    }
}
