//! MAC1, MAC2 and cookie replies (docs/PROTOCOL.md section 12.3), in the spirit of
//! WireGuard's (paper section 5.4.4-5.4.7), with the core's SHA-256 and AES-256-GCM.
//!
//! Every handshake message ends with `mac1 || mac2`:
//!
//! ```text
//! mac1 = HMAC-SHA256(SHA-256("sessionkey v1 vpn mac1" || receiver's static key), msg_a)[..16]
//! mac2 = HMAC-SHA256(cookie, msg_b)[..16], or 16 zero bytes without a fresh cookie
//! ```
//!
//! where `msg_a` is the message up to `mac1` and `msg_b` up to `mac2`. `mac1` proves the
//! sender knows the receiver's public key: a scan of the port gets silence. Under load the
//! receiver also wants a valid `mac2`; without one it answers with a cookie reply instead of
//! doing any Diffie-Hellman, and keeps no state for it:
//!
//! ```text
//! cookie = HMAC-SHA256(secret, source IP || source port)[..16]      secret: random, 2 minutes
//! reply  = 3 | 0 0 0 | receiver index | nonce (12, random) |
//!          AES-256-GCM(SHA-256("sessionkey v1 vpn cookie" || responder's static key),
//!                      nonce, aad = the message's mac1, cookie)
//! ```
//!
//! The cookie proves the sender can receive at its source address, so spoofed floods cost
//! the responder one HMAC and one AES-GCM seal each, and rate limiting by address
//! ([`RateLimiter`](super::ratelimit::RateLimiter)) can then work.
//!
//! On the random nonce: the cookie key is fixed per responder identity and the nonce is 12
//! random bytes, sent in clear. A repeated nonce becomes likely only after about 2^32
//! replies under one identity (NIST SP 800-38D section 8.3's bound for random 96-bit
//! nonces), far beyond what a responder sends: replies go out only under load, at most one
//! per handshake message received. Even a repeat would expose only cookies (which are
//! bound to an address and expire in two minutes) and let someone forge cookie replies,
//! which makes an initiator send a useless `mac2`: a denial of service that anyone on the
//! path can cause anyway. No traffic key or identity depends on it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::crypto::aead::{AeadAlg, AeadKey, TAG_LEN};
use crate::crypto::hash::{ct_eq, hmac_sha256, sha256};
use crate::crypto::SecureRandom;
use crate::error::PeerMisbehaved;
use crate::keys::PublicKey;
use crate::Error;

use super::message::{write_cookie_reply_header, CookieReply, COOKIE_REPLY_LEN};

/// Length of each MAC.
pub const MAC_LEN: usize = 16;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of a cookie reply's nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a sealed cookie with its tag.
pub const SEALED_COOKIE_LEN: usize = COOKIE_LEN + TAG_LEN;
/// How long the responder keeps one cookie secret (WireGuard's 120 s).
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie it received: a little less than the secret's
/// lifetime, so it is not used just as the responder replaces the secret.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(115);

const LABEL_MAC1: &[u8] = b"sessionkey v1 vpn mac1";
const LABEL_COOKIE: &[u8] = b"sessionkey v1 vpn cookie";

/// The MAC1 key and cookie key of one static public key (the receiver's).
struct Keys {
    mac1: [u8; 32],
    cookie: AeadKey,
}

impl Keys {
    fn of(key: &PublicKey) -> Result<Self, Error> {
        Ok(Self {
            mac1: sha256(&[LABEL_MAC1, key.as_bytes()]),
            cookie: AeadKey::new(AeadAlg::Aes256Gcm, &sha256(&[LABEL_COOKIE, key.as_bytes()]))?,
        })
    }
}

fn mac(key: &[u8], msg: &[u8]) -> [u8; MAC_LEN] {
    let full = hmac_sha256(key, &[msg]);
    let mut out = [0; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// The `mac1` check alone, for the threads that receive datagrams: it holds only the
/// `mac1` key (derived from a public key, so not secret) and can be cloned into each of
/// them, so a message is checked where it lies in the receive buffer, before it is copied
/// or queued anywhere.
#[derive(Clone)]
pub struct Mac1Verifier {
    key: [u8; 32],
}

impl Mac1Verifier {
    /// A verifier for messages sent to `local` (this side's static public key).
    pub fn new(local: &PublicKey) -> Self {
        Self {
            key: sha256(&[LABEL_MAC1, local.as_bytes()]),
        }
    }

    /// Whether the `mac1` of a whole handshake message (ending with `mac1 || mac2`) is
    /// right: one HMAC, no allocation, constant-time comparison.
    pub fn verify(&self, message: &[u8]) -> bool {
        let len = message.len();
        len >= 2 * MAC_LEN
            && ct_eq(
                &mac(&self.key, &message[..len - 2 * MAC_LEN]),
                &message[len - 2 * MAC_LEN..len - MAC_LEN],
            )
    }
}

impl fmt::Debug for Mac1Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mac1Verifier").finish_non_exhaustive()
    }
}

/// What the responder should do with a handshake message after the MAC checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacVerdict {
    /// The MACs are good enough: go on with the (expensive) handshake.
    Proceed,
    /// `mac1` is wrong: drop the message silently.
    BadMac1,
    /// Under load without a valid `mac2`: send the cookie reply written by
    /// [`CookieChecker::check`] and do nothing else.
    SendCookie,
}

/// The responder side: checks `mac1`/`mac2` of messages sent to this identity, and writes
/// cookie replies. Holds one random secret, replaced every two minutes; nothing per sender.
pub struct CookieChecker {
    keys: Keys,
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Instant>,
}

impl CookieChecker {
    /// A checker for messages sent to `local` (this side's static public key).
    pub fn new(local: &PublicKey) -> Result<Self, Error> {
        Ok(Self {
            keys: Keys::of(local)?,
            secret: Zeroizing::new([0; 32]),
            secret_born: None,
        })
    }

    /// The cookie for `source` at `now`, replacing the secret first if it is too old.
    fn cookie(
        &mut self,
        now: Instant,
        rng: &mut dyn SecureRandom,
        source: SocketAddr,
    ) -> Result<[u8; COOKIE_LEN], Error> {
        let fresh = self
            .secret_born
            .is_some_and(|born| now.saturating_duration_since(born) < COOKIE_SECRET_LIFETIME);
        if !fresh {
            rng.fill(&mut self.secret[..])?;
            self.secret_born = Some(now);
        }
        let mut addr = [0u8; 18];
        let n = match source.ip() {
            IpAddr::V4(ip) => {
                addr[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                addr[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        addr[n..n + 2].copy_from_slice(&source.port().to_be_bytes());
        Ok(mac(&self.secret[..], &addr[..n + 2]))
    }

    /// Whether the `mac1` of a whole handshake message is right (one HMAC).
    pub fn mac1_valid(&self, message: &[u8]) -> bool {
        let len = message.len();
        len >= 2 * MAC_LEN
            && ct_eq(
                &mac(&self.keys.mac1, &message[..len - 2 * MAC_LEN]),
                &message[len - 2 * MAC_LEN..len - MAC_LEN],
            )
    }

    /// Check a whole handshake message (`message` ends with `mac1 || mac2`) received from
    /// `source`. When the verdict is [`MacVerdict::SendCookie`], the cookie reply to send
    /// back to `source` is in `reply` (addressed to `sender_index`, the message's sender).
    /// Allocates nothing; costs one or two HMACs, plus one AES-GCM seal for a reply.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &mut self,
        now: Instant,
        rng: &mut dyn SecureRandom,
        message: &[u8],
        source: SocketAddr,
        sender_index: u32,
        under_load: bool,
        reply: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Result<MacVerdict, Error> {
        if !self.mac1_valid(message) {
            return Ok(MacVerdict::BadMac1);
        }
        let len = message.len();
        let mac1 = &message[len - 2 * MAC_LEN..len - MAC_LEN];
        if !under_load {
            return Ok(MacVerdict::Proceed);
        }
        let cookie = self.cookie(now, rng, source)?;
        let mac2 = &message[len - MAC_LEN..];
        if ct_eq(&mac(&cookie, &message[..len - MAC_LEN]), mac2) {
            return Ok(MacVerdict::Proceed);
        }
        write_cookie_reply_header(&mut reply[..], sender_index);
        let (nonce, sealed) = reply[8..].split_at_mut(NONCE_LEN);
        rng.fill(nonce)?;
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        sealed[..COOKIE_LEN].copy_from_slice(&cookie);
        let tag = self
            .keys
            .cookie
            .seal_in_place(n, mac1, &mut sealed[..COOKIE_LEN])?;
        sealed[COOKIE_LEN..].copy_from_slice(&tag);
        Ok(MacVerdict::SendCookie)
    }
}

impl fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieChecker").finish_non_exhaustive()
    }
}

/// The sender side, per peer: writes `mac1` and `mac2` on handshake messages to that peer,
/// and takes the cookies it sends back.
pub struct CookieJar {
    keys: Keys,
    cookie: Option<([u8; COOKIE_LEN], Instant)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl CookieJar {
    /// A jar for messages to the peer whose static key is `peer`.
    pub fn new(peer: &PublicKey) -> Result<Self, Error> {
        Ok(Self {
            keys: Keys::of(peer)?,
            cookie: None,
            last_mac1: None,
        })
    }

    /// Write `mac1` and `mac2` into the last 32 bytes of `message`, as of `now`.
    pub fn stamp(&mut self, now: Instant, message: &mut [u8]) {
        let len = message.len();
        if len < 2 * MAC_LEN {
            return;
        }
        let mac1 = mac(&self.keys.mac1, &message[..len - 2 * MAC_LEN]);
        message[len - 2 * MAC_LEN..len - MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match self.cookie {
            Some((cookie, received))
                if now.saturating_duration_since(received) < COOKIE_LIFETIME =>
            {
                mac(&cookie, &message[..len - MAC_LEN])
            }
            _ => [0; MAC_LEN],
        };
        message[len - MAC_LEN..].copy_from_slice(&mac2);
    }

    /// Take a cookie reply to the last message stamped: decrypt it with that message's
    /// `mac1` as associated data and keep the cookie for [`COOKIE_LIFETIME`]. A reply that
    /// does not open changes nothing.
    pub fn handle_reply(&mut self, now: Instant, reply: &CookieReply<'_>) -> Result<(), Error> {
        let aad = self.last_mac1.ok_or(PeerMisbehaved::UnexpectedRecord(
            "cookie reply to nothing sent",
        ))?;
        let mut buf = *reply.sealed;
        let cookie = self
            .keys
            .cookie
            .open_in_place(*reply.nonce, &aad, &mut buf)?;
        let mut c = [0; COOKIE_LEN];
        c.copy_from_slice(&cookie[..COOKIE_LEN]);
        self.cookie = Some((c, now));
        Ok(())
    }

    /// Whether a cookie is held and still fresh at `now`.
    pub fn has_cookie(&self, now: Instant) -> bool {
        self.cookie
            .is_some_and(|(_, t)| now.saturating_duration_since(t) < COOKIE_LIFETIME)
    }
}

impl fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}
