//! The responder's front door for handshake messages (docs/PROTOCOL.md section 12.4): the
//! cheap checks that run before any Diffie-Hellman, in this order:
//!
//! 0. In the receiving thread, [`prescreen`]: the type and exact length, then `mac1`, on
//!    the datagram where it lies in the receive buffer. Only a message that passes is
//!    copied and queued for the handshake thread; a flood of junk costs one HMAC each and
//!    neither memory nor queue slots.
//! 1. `mac1` (one HMAC): wrong means the sender does not know our public key; drop. A
//!    message that fails here does not count toward the load.
//! 2. Load: more than a threshold of handshake messages with a valid `mac1` a second, or a
//!    long queue.
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

use super::cookie::{CookieChecker, Mac1Verifier, MacVerdict};
use super::message::{self, Message, COOKIE_REPLY_LEN};
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
        // Only messages from senders who know our public key count toward the load: junk
        // must not push genuine peers into the cookie round trip.
        if !self.checker.mac1_valid(message) {
            return Ok(Screen::BadMac);
        }
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

/// What the receiving thread does with a datagram, decided in place (no copy, no
/// allocation) by [`prescreen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prescreen {
    /// A data packet (type 4): open it on this thread.
    Data,
    /// An initiation or response whose `mac1` is right: copy it and queue it for the
    /// handshake thread.
    Handshake,
    /// A cookie reply for receiver index `receiver_index`: hand it to the peer that owns
    /// the index (an AEAD open, no public-key work); drop it if none does.
    CookieReply {
        /// The index the reply is addressed to.
        receiver_index: u32,
    },
    /// An initiation or response with a wrong `mac1`: drop.
    BadMac,
    /// No known type, wrong length or reserved bits: drop.
    Malformed,
}

/// Classify a received datagram where it lies and check a handshake message's `mac1`,
/// before anything is copied or queued (docs/PROTOCOL.md 12.4). Costs at most one HMAC.
pub fn prescreen(mac1: &Mac1Verifier, datagram: &[u8]) -> Prescreen {
    if datagram.first() == Some(&message::TYPE_DATA) {
        return Prescreen::Data;
    }
    match message::parse(datagram) {
        Ok(Message::Initiation(_) | Message::Response(_)) if mac1.verify(datagram) => {
            Prescreen::Handshake
        }
        Ok(Message::Initiation(_) | Message::Response(_)) => Prescreen::BadMac,
        Ok(Message::CookieReply(c)) => Prescreen::CookieReply {
            receiver_index: c.receiver_index,
        },
        Ok(Message::Data) => Prescreen::Data,
        Err(_) => Prescreen::Malformed,
    }
}
